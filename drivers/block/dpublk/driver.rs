// SPDX-License-Identifier: GPL-2.0

//! PCI glue: binds the accelerator function, brings the controller up and
//! turns its namespaces into disks; takes it all down again on unbind.

use crate::{
    blk_mq::{Limits, TagSet},
    device_memory::DeviceMemory,
    management::Management,
    controller::Controller,
    disk::{BlockOps, IoQueues},
    io_queue::{IoQueue, QueueIrq, MAX_QUEUE_ENTRIES, MAX_SEGMENTS, MAX_TRANSFER},
    pci_id,
    pci_irq::QueueInterrupts,
    regs::{Registers, BAR0_SIZE},
    reset::ControllerReset,
    shim::{
        identify::{self, IdentifyController, IDENTIFY_BYTES},
        opcode::cns,
        sqe::{self, Identify},
        wire::Wire,
    },
};
use kernel::{
    device::{self, Core},
    devres::DevresLt,
    dma::{Coherent, Device as _, DmaMask},
    pci,
    prelude::*,
    sync::aref::ARef,
    sync::Arc,
    types::ScopeGuard,
};

/// PCI vendor ID of the emulated accelerator (see
/// Documentation/device-interface.rst).
///
/// Other functions speaking the interface (real silicon, or QEMU's
/// `-device nvme` during driver development) bind through
/// `driver_override`: a Rust PCI driver's ID table keeps a pointer in
/// `driver_data`, so `new_id` (which wants an existing `driver_data`) is
/// refused with EINVAL.
pub(crate) const ACCEL_VENDOR_ID: u16 = crate::shim::pci::VENDOR_ID;
/// PCI device ID of the accelerator function.
pub(crate) const ACCEL_DEVICE_ID: u16 = crate::shim::pci::ACCELERATOR_DEVICE_ID;

/// Entries per I/O queue, if the controller allows that many.
const IO_QUEUE_ENTRIES: u16 = 256;
/// Most I/O queue pairs per controller.
const MAX_IO_QUEUES: u32 = 64;
/// Time a request may spend on the device before it is aborted; after a
/// second such period the controller is reset.
const IO_TIMEOUT_MS: u32 = 30_000;

pub(crate) struct AcceleratorDriver;

/// Per-device state while bound.
///
/// Field order is drop order, and it matters: the reset machinery (idle by
/// then: `Drop` disarmed it) and the management side (with the disks,
/// whose removal drains their I/O) first, then the tag set, then
/// the queues; the interrupt handlers go before the vectors (inside `irqs`)
/// and the controller last. `Drop` first stops controller resets (waiting
/// for one in progress), then retires the management side and shuts the
/// controller down before any ring is freed.
pub(crate) struct Accelerator<'bound> {
    reset: Arc<ControllerReset>,
    management: Arc<Management>,
    tagset: Option<Arc<TagSet<BlockOps>>>,
    queues: Arc<IoQueues>,
    _irqs: QueueInterrupts<'bound, QueueIrq>,
    ctrl: Arc<Controller>,
    pdev: &'bound pci::Device,
}

kernel::pci_device_table!(
    PCI_TABLE,
    <AcceleratorDriver as pci::Driver>::IdInfo,
    [(pci_id::device_id(ACCEL_VENDOR_ID, ACCEL_DEVICE_ID), ())]
);

impl pci::Driver for AcceleratorDriver {
    type IdInfo = ();
    type Data<'bound> = Accelerator<'bound>;

    const ID_TABLE: pci::IdTable<Self::IdInfo> = &PCI_TABLE;

    fn probe<'bound>(
        pdev: &'bound pci::Device<Core<'_>>,
        _info: Option<&'bound Self::IdInfo>,
    ) -> impl PinInit<Self::Data<'bound>, Error> + 'bound {
        Accelerator::probe(pdev)
    }
}

/// What the driver keeps from Identify Controller.
#[derive(Clone, Copy)]
struct ControllerInfo {
    sqes: u8,
    cqes: u8,
    mdts: u8,
    vwc: u8,
    nn: u32,
    oncs: u16,
}

/// Reads an Identify data structure into a fresh DMA buffer and hands its
/// bytes to `f` in place (the structures are 4 KiB: too big for the kernel
/// stack).
fn identify_bytes<R>(
    ctrl: &Controller,
    dev: &device::Device<device::Bound>,
    cns: u8,
    nsid: u32,
    f: impl FnOnce(&[u8]) -> R,
) -> Result<R> {
    // If the command never completes, the buffer stays lent to the device
    // and is not freed while it might still write it.
    let buf = DeviceMemory::buffer(
        Coherent::zeroed_slice(dev, IDENTIFY_BYTES, GFP_KERNEL)?,
        ctrl.access().clone(),
    );
    let cmd = Identify {
        cns,
        cntid: 0,
        nsid,
        prp1: buf.dma_address(),
        prp2: 0,
    };
    ctrl.admin_command_with(cmd.encode(0), &buf)?;
    // SAFETY: The command's own completion came back, so the device is done
    // writing the buffer (the interface posts a completion after the
    // command's last data transfer), and nothing else refers to it: it was
    // allocated here and only its bus address was handed out.
    Ok(f(unsafe { buf.as_ref() }))
}

/// Reads an Identify data structure of type `T` and hands it to `f` in
/// place.
fn identify<T: Wire, R>(
    ctrl: &Controller,
    dev: &device::Device<device::Bound>,
    cns: u8,
    nsid: u32,
    f: impl FnOnce(&T) -> R,
) -> Result<R> {
    identify_bytes(ctrl, dev, cns, nsid, |bytes| {
        if bytes.len() < core::mem::size_of::<T>() {
            return Err(EIO);
        }
        // SAFETY: `bytes` holds at least `size_of::<T>()` bytes, and a `Wire`
        // type has alignment 1 and no invalid bit patterns, so they are a
        // valid `T`, borrowed for as long as `bytes` is.
        Ok(f(unsafe { &*bytes.as_ptr().cast::<T>() }))
    })?
}

impl<'bound> Accelerator<'bound> {
    fn probe(pdev: &'bound pci::Device<Core<'_>>) -> Result<Self> {
        pdev.enable_device_mem()
            .inspect_err(|e| dev_err!(pdev, "cannot enable the function: {e:?}\n"))?;
        pdev.set_master();
        // SAFETY: No DMA allocation or mapping exists yet for this device.
        unsafe { pdev.dma_set_mask_and_coherent(DmaMask::new::<64>()) }
            .inspect_err(|e| dev_err!(pdev, "no 64-bit DMA: {e:?}\n"))?;
        let bar = pdev
            .iomap_region_sized::<BAR0_SIZE>(0, c"dpublk")
            .inspect_err(|e| dev_err!(pdev, "cannot map BAR0: {e:?}\n"))?;
        let version = Registers(&bar).version()?;
        dev_info!(
            pdev,
            "accelerator found, interface version {}.{}.{}\n",
            version >> 16,
            (version >> 8) & 0xff,
            version & 0xff
        );
        let bar: DevresLt<_> = bar.into_devres()?;
        let dev: &device::Device<device::Bound> = pdev.as_ref();

        let ctrl = Arc::pin_init(Controller::new(pdev, bar)?, GFP_KERNEL)?;
        ctrl.enable(dev)?;

        // Everything the device may DMA into lives in `ctrl` and
        // `keep_alive`, declared before the guard: on failure the guard
        // disables the controller before they are freed.
        let mut keep_alive: KVec<Arc<IoQueue>> = KVec::new();
        let mut irqs = QueueInterrupts::<QueueIrq>::alloc(pdev, 2, MAX_IO_QUEUES + 1)
            .inspect_err(|e| dev_err!(pdev, "cannot allocate MSI-X vectors: {e:?}\n"))?;
        let disable_on_error = ScopeGuard::new(|| {
            ctrl.fail();
        });

        let id = identify(&ctrl, dev, cns::CONTROLLER, 0, |id: &IdentifyController| {
            ControllerInfo {
                sqes: id.sqes,
                cqes: id.cqes,
                mdts: id.mdts,
                vwc: id.vwc,
                nn: id.nn.get(),
                oncs: id.oncs.get(),
            }
        })
        .inspect_err(|e| dev_err!(pdev, "Identify Controller failed: {e:?}\n"))?;
        // Entry sizes: the minimum (required) sizes must fit ours.
        if id.sqes & 0xf > 6 || id.cqes & 0xf > 4 {
            dev_err!(
                pdev,
                "unsupported queue entry sizes {:#x}/{:#x}\n",
                id.sqes,
                id.cqes
            );
            return Err(ENODEV);
        }

        // One I/O queue pair per CPU, as far as the device and the
        // interrupt vectors (one is kept for the admin queue) go.
        let wanted = kernel::cpu::nr_cpu_ids()
            .clamp(1, MAX_IO_QUEUES)
            .min(irqs.count() - 1);
        let nr_queues = ctrl.request_io_queues(wanted)?;
        if nr_queues == 0 {
            return Err(ENODEV);
        }

        let entries = u32::from(IO_QUEUE_ENTRIES)
            .min(ctrl.caps().max_queue_entries)
            .min(u32::from(MAX_QUEUE_ENTRIES)) as u16;
        let mut list = KVec::with_capacity(nr_queues as usize, GFP_KERNEL)?;
        keep_alive.reserve(nr_queues as usize, GFP_KERNEL)?;
        for qid in 1..=nr_queues as u16 {
            let queue = IoQueue::new(ctrl.clone(), dev, qid, entries)?;
            keep_alive.push(queue.clone(), GFP_KERNEL)?;
            irqs.register(u32::from(qid), c"dpublk", QueueIrq(queue.clone()))?;
            queue.create_on_device()?;
            list.push(queue, GFP_KERNEL)?;
        }
        let reset = ControllerReset::new(ctrl.clone(), &list)?;
        let queues = Arc::new(
            IoQueues {
                ctrl: ctrl.clone(),
                queues: list,
                reset: reset.clone(),
            },
            GFP_KERNEL,
        )?;
        let parent: &device::Device = dev;
        let irq_dev: ARef<device::Device> = parent.into();
        let tagset = Arc::pin_init(
            TagSet::new(
                queues.clone(),
                nr_queues,
                u32::from(entries - 1),
                IO_TIMEOUT_MS,
                Some(irq_dev),
                1,
            ),
            GFP_KERNEL,
        )?;

        let management = Management::new(ctrl.clone(), dev, tagset.clone(), Self::limits(&id), id.nn)?;
        // From the first disk on, a lost command resets the controller. On
        // failure, resets stop before the disks go (dropped before them).
        reset.arm(tagset.clone(), management.clone());
        let disarm_on_error = ScopeGuard::new(|| reset.disarm());
        let disks = management
            .add_active_namespaces()
            .inspect_err(|e| dev_err!(pdev, "cannot list namespaces: {e:?}\n"))?;
        dev_info!(
            pdev,
            "{} I/O queue pairs of {} entries, {} disks\n",
            nr_queues,
            entries,
            disks
        );
        disarm_on_error.dismiss();
        disable_on_error.dismiss();
        drop(keep_alive);
        management.publish();
        Ok(Self {
            reset,
            management,
            tagset: Some(tagset),
            queues,
            _irqs: irqs,
            ctrl,
            pdev,
        })
    }

    /// Queue limits shared by all namespaces of the controller.
    fn limits(id: &ControllerInfo) -> Limits {
        let mut max_transfer = MAX_TRANSFER;
        if id.mdts != 0 && id.mdts < 20 {
            max_transfer = max_transfer.min(4096u32 << id.mdts);
        }
        let oncs = id.oncs;
        Limits {
            logical_block_size: 512,
            physical_block_size: 512,
            max_hw_sectors: max_transfer >> 9,
            max_segments: MAX_SEGMENTS as u16,
            virt_boundary_mask: crate::prp::PAGE - 1,
            dma_alignment: 3,
            write_cache: id.vwc & identify::VWC_PRESENT != 0,
            fua: true,
            max_discard_sectors: if oncs & identify::ONCS_DSM != 0 {
                u32::MAX
            } else {
                0
            },
            max_write_zeroes_sectors: if oncs & identify::ONCS_WRITE_ZEROES != 0 {
                1
            } else {
                0
            },
        }
    }

}

impl Drop for Accelerator<'_> {
    fn drop(&mut self) {
        // No reset may run while the device goes: wait for one in progress
        // (it ends with the controller reset or failed) and refuse new ones,
        // so a timeout from here on fails the controller as before.
        self.reset.disarm();
        // Disks first: `del_gendisk` waits for their I/O to finish (or to
        // time out, which fails the controller). A controller that failed or
        // was removed under us will not finish anything: `retire` fails its
        // I/O first and lets its disks fail new I/O at once.
        let queues = self.queues.clone();
        self.management.retire(move || queues.fail_all());
        self.tagset = None;
        if self.ctrl.is_usable() {
            for q in self.queues.queues.iter().rev() {
                let _ = self
                    .ctrl
                    .admin_command(sqe::delete_queue(q.qid(), false, 0));
                let _ = self.ctrl.admin_command(sqe::delete_queue(q.qid(), true, 0));
            }
        }
        self.ctrl.shutdown();
        // Nothing should be left; if the device kept anything, it is
        // disabled now and the requests can end.
        for q in self.queues.queues.iter() {
            q.cancel_all(EIO);
        }
        dev_info!(self.pdev, "accelerator released\n");
    }
}
