//! vfio-user transport: serves one controller as a PCI function on a UNIX
//! socket, using the `vfio_user` crate's server.
//!
//! Regions: BAR0 (index 0, registers and doorbells, every access a socket
//! message) and PCI configuration space (index 7). Interrupts: MSI-X only
//! (index 2), one eventfd per vector. DMA: the client's memory file
//! descriptors, mapped `MAP_SHARED` into [`DmaRegions`].

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use log::{debug, info, warn};
use vfio_bindings::bindings::vfio::{
    vfio_region_info, VFIO_IRQ_INFO_EVENTFD, VFIO_IRQ_SET_DATA_EVENTFD, VFIO_IRQ_SET_DATA_NONE,
    VFIO_PCI_BAR0_REGION_INDEX, VFIO_PCI_CONFIG_REGION_INDEX, VFIO_PCI_ERR_IRQ_INDEX,
    VFIO_PCI_MSIX_IRQ_INDEX, VFIO_PCI_NUM_IRQS, VFIO_PCI_NUM_REGIONS, VFIO_PCI_REQ_IRQ_INDEX,
    VFIO_REGION_INFO_FLAG_READ, VFIO_REGION_INFO_FLAG_WRITE,
};
use vfio_user::{DmaMapFlags, DmaUnmapFlags, IrqInfo, Server, ServerBackend, ServerRegion};

use crate::controller::Controller;
use crate::guest_memory::DmaRegions;
use crate::interrupts::MsixEventFds;
use crate::pci_config::{PciConfig, CONFIG_SPACE_SIZE, TEST_HOOK_HANG, TEST_HOOK_HOSTILE};

/// One PCI function: its controller and the transport state QEMU drives.
pub struct Function {
    /// The controller core.
    pub controller: Arc<Controller>,
    /// Guest memory as the client mapped it.
    pub memory: Arc<DmaRegions>,
    /// MSI-X vector routes.
    pub msix: Arc<MsixEventFds>,
    /// PCI device ID.
    pub device_id: u16,
    /// PCI subsystem device ID (identifies an SSD function's index).
    pub subsystem_id: u16,
    /// PCI class code.
    pub class_code: u32,
    /// Socket path.
    pub socket: PathBuf,
}

struct Backend {
    name: String,
    controller: Arc<Controller>,
    memory: Arc<DmaRegions>,
    msix: Arc<MsixEventFds>,
    config: PciConfig,
    /// The test-hook register turned hostile mode on (so clearing the bit
    /// turns it off, and a `--hostile` from the command line stays on).
    hostile_by_hook: bool,
}

impl Backend {
    /// Hands what configuration space controls to the controller: Bus
    /// Master Enable (clearing it returns only once no guest-memory access
    /// is in progress, before the client sees the write complete) and the
    /// hang test hook.
    fn apply_config(&mut self) {
        self.controller.set_bus_master(self.config.bus_master());
        let hooks = self.config.test_hooks();
        self.controller.set_hung(hooks & TEST_HOOK_HANG != 0);
        // Hostile mode is process-wide, but only the accelerator is
        // hostile; its own register switches it.
        if self.controller.is_accelerator() && hooks & TEST_HOOK_HOSTILE != 0 {
            crate::controller::hostile::set_active(true);
        } else if self.controller.is_accelerator() && self.hostile_by_hook {
            crate::controller::hostile::set_active(false);
        }
        self.hostile_by_hook = self.controller.is_accelerator() && hooks & TEST_HOOK_HOSTILE != 0;
    }
}

fn einval() -> io::Error {
    io::Error::from_raw_os_error(libc::EINVAL)
}

fn bar0_access(offset: u64, len: usize) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= nvme_shim::pci::BAR0_SIZE => Ok(()),
        _ => Err(einval()),
    }
}

impl ServerBackend for Backend {
    fn region_read(&mut self, region: u32, offset: u64, data: &mut [u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_BAR0_REGION_INDEX => {
                bar0_access(offset, data.len())?;
                self.controller.mmio_read(offset, data);
                Ok(())
            }
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config.read(offset, data);
                Ok(())
            }
            _ => Err(einval()),
        }
    }

    fn region_write(&mut self, region: u32, offset: u64, data: &[u8]) -> io::Result<()> {
        match region {
            VFIO_PCI_BAR0_REGION_INDEX => {
                bar0_access(offset, data.len())?;
                self.controller.mmio_write(offset, data);
                Ok(())
            }
            VFIO_PCI_CONFIG_REGION_INDEX => {
                self.config.write(offset, data);
                self.apply_config();
                Ok(())
            }
            _ => Err(einval()),
        }
    }

    fn dma_map(
        &mut self,
        flags: DmaMapFlags,
        offset: u64,
        address: u64,
        size: u64,
        fd: Option<File>,
    ) -> io::Result<()> {
        let Some(fd) = fd else {
            // ROM and other areas the client cannot share: accepted, and any
            // device access there fails as outside guest memory.
            debug!(
                "{}: DMA map {address:#x}+{size:#x} without fd ignored",
                self.name
            );
            return Ok(());
        };
        let writable = flags.contains(DmaMapFlags::WRITE);
        self.memory
            .map(address, size, &fd, offset, writable)
            .inspect_err(|e| warn!("{}: DMA map {address:#x}+{size:#x} failed: {e}", self.name))?;
        debug!(
            "{}: DMA map {address:#x}+{size:#x} at file offset {offset:#x}{}",
            self.name,
            if writable { "" } else { " (read-only)" }
        );
        Ok(())
    }

    fn dma_unmap(&mut self, flags: DmaUnmapFlags, address: u64, size: u64) -> io::Result<()> {
        if flags.contains(DmaUnmapFlags::UNMAP_ALL) {
            self.memory.clear();
        } else {
            let n = self.memory.unmap(address, size);
            debug!(
                "{}: DMA unmap {address:#x}+{size:#x} ({n} regions)",
                self.name
            );
        }
        Ok(())
    }

    fn reset(&mut self) -> io::Result<()> {
        info!("{}: device reset", self.name);
        self.controller.transport_reset();
        Ok(())
    }

    fn set_irqs(
        &mut self,
        index: u32,
        flags: u32,
        start: u32,
        count: u32,
        fds: Vec<File>,
    ) -> io::Result<()> {
        if index == VFIO_PCI_ERR_IRQ_INDEX || index == VFIO_PCI_REQ_IRQ_INDEX {
            // The device never reports errors or requests release; the
            // client's notifiers are accepted and never signalled.
            return Ok(());
        }
        if index != VFIO_PCI_MSIX_IRQ_INDEX {
            // INTx and MSI have no vectors; disabling them is a no-op.
            return if count == 0 { Ok(()) } else { Err(einval()) };
        }
        if flags & VFIO_IRQ_SET_DATA_NONE != 0 && count == 0 {
            self.msix.clear();
            debug!("{}: MSI-X disabled", self.name);
            return Ok(());
        }
        if flags & (VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_DATA_NONE) == 0 {
            return Err(einval());
        }
        let received = fds.len();
        if !self.msix.set(start, count, fds) {
            return Err(einval());
        }
        debug!(
            "{}: MSI-X vectors {start}..{} routed ({received} eventfds)",
            self.name,
            start.saturating_add(count)
        );
        Ok(())
    }
}

fn regions() -> Vec<ServerRegion> {
    (0..VFIO_PCI_NUM_REGIONS)
        .map(|index| {
            let mut info = vfio_region_info {
                argsz: std::mem::size_of::<vfio_region_info>() as u32,
                index,
                ..Default::default()
            };
            let size = match index {
                VFIO_PCI_BAR0_REGION_INDEX => nvme_shim::pci::BAR0_SIZE,
                VFIO_PCI_CONFIG_REGION_INDEX => CONFIG_SPACE_SIZE as u64,
                _ => 0,
            };
            if size != 0 {
                info.size = size;
                info.flags = VFIO_REGION_INFO_FLAG_READ | VFIO_REGION_INFO_FLAG_WRITE;
            }
            ServerRegion {
                region_info: info,
                sparse_areas: Vec::new(),
                mmap_fd: None,
            }
        })
        .collect()
}

fn irqs(vectors: u16) -> Vec<IrqInfo> {
    (0..VFIO_PCI_NUM_IRQS)
        .map(|index| {
            let count = match index {
                VFIO_PCI_MSIX_IRQ_INDEX => u32::from(vectors),
                VFIO_PCI_ERR_IRQ_INDEX | VFIO_PCI_REQ_IRQ_INDEX => 1,
                _ => 0,
            };
            IrqInfo {
                index,
                flags: if count > 0 { VFIO_IRQ_INFO_EVENTFD } else { 0 },
                count,
            }
        })
        .collect()
}

/// Removes a stale socket left by an earlier run (only if it is a socket).
pub fn remove_stale_socket(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => std::fs::remove_file(path),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} exists and is not a socket", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Binds the function's socket. The server is then run by [`serve`].
pub fn listen(function: &Function) -> io::Result<Server> {
    remove_stale_socket(&function.socket)?;
    let vectors = function.controller.config().vectors;
    Server::new(&function.socket, true, irqs(vectors), regions())
        .map_err(|e| io::Error::other(format!("{}: {e}", function.socket.display())))
}

/// Serves clients one after another, forever. Between clients the
/// controller is reset and the client's memory and interrupts forgotten.
pub fn serve(function: &Function, server: Server) {
    let controller = &function.controller;
    let name = controller.config().name.clone();
    let mut backend = Backend {
        name: name.clone(),
        controller: Arc::clone(controller),
        memory: Arc::clone(&function.memory),
        msix: Arc::clone(&function.msix),
        config: PciConfig::new(
            function.device_id,
            function.subsystem_id,
            function.class_code,
            controller.config().vectors,
        ),
        hostile_by_hook: false,
    };
    // A function comes out of reset with bus mastering off.
    backend.apply_config();
    loop {
        match server.run(&mut backend) {
            Ok(()) => info!("{name}: client disconnected"),
            Err(e) => {
                warn!("{name}: client connection ended: {e}");
                // Do not spin if accepting itself fails.
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
        }
        controller.transport_reset();
        function.memory.clear();
        function.msix.clear();
        backend.config = PciConfig::new(
            function.device_id,
            function.subsystem_id,
            function.class_code,
            controller.config().vectors,
        );
        backend.apply_config();
    }
}

#[cfg(test)]
mod tests {
    //! End to end over a real vfio-user socket, with the `vfio_user` crate's
    //! client playing QEMU: guest RAM is a memfd, interrupts are eventfds.

    use super::*;
    use crate::controller::{ControllerConfig, NamespaceSlot, Personality, Stats};
    use crate::namespace::FileNamespace;
    use crate::ownership::SsdOwnership;
    use nvme_shim::cqe::CompletionEntry;
    use nvme_shim::opcode::{cns, io};
    use nvme_shim::registers::{
        self as regs, shadow_doorbell_needs_mmio, Aqa, Cc, Csts, DoorbellKind,
    };
    use nvme_shim::sqe::{
        BlockRange, CreateIoCq, CreateIoSq, DoorbellBufferConfig, Identify, SubmissionEntry,
    };
    use nvme_shim::status::Status;
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    use std::os::unix::fs::FileExt;
    use std::time::{Duration, Instant};
    use vfio_bindings::bindings::vfio::VFIO_IRQ_SET_ACTION_TRIGGER;
    use vfio_user::Client;

    const IOVA: u64 = 0x1_0000_0000;
    const RAM: u64 = 4 << 20;
    const ASQ: u64 = IOVA;
    const ACQ: u64 = IOVA + 0x1000;
    const SQ1: u64 = IOVA + 0x10000;
    const CQ1: u64 = IOVA + 0x20000;
    const SHADOW: u64 = IOVA + 0x30000;
    const EVENT_IDX: u64 = IOVA + 0x31000;
    const BUF: u64 = IOVA + 0x100000;

    fn memfd(len: u64) -> File {
        // SAFETY: The name is a NUL-terminated literal; memfd_create has no
        // other memory-safety preconditions.
        let fd = unsafe { libc::memfd_create(c"dpuemu-test".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        let file = unsafe { File::from_raw_fd(fd) };
        file.set_len(len).unwrap();
        file
    }

    fn eventfd() -> File {
        // SAFETY: eventfd has no memory-safety preconditions.
        let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) };
        assert!(fd >= 0);
        // SAFETY: `fd` is a fresh descriptor owned by nobody else.
        unsafe { File::from_raw_fd(fd) }
    }

    fn events(fd: &File) -> u64 {
        let mut b = [0u8; 8];
        let mut f: &File = fd;
        match f.read(&mut b) {
            Ok(8) => u64::from_ne_bytes(b),
            _ => 0,
        }
    }

    struct Guest {
        ram: File,
        client: Client,
        acq_head: u32,
        cid: u16,
    }

    impl Guest {
        fn put(&self, iova: u64, data: &[u8]) {
            self.ram.write_all_at(data, iova - IOVA).unwrap();
        }
        fn get(&self, iova: u64, len: usize) -> Vec<u8> {
            let mut v = vec![0u8; len];
            self.ram.read_exact_at(&mut v, iova - IOVA).unwrap();
            v
        }
        fn mmio_write(&mut self, offset: usize, value: u32) {
            self.client
                .region_write(
                    VFIO_PCI_BAR0_REGION_INDEX,
                    offset as u64,
                    &value.to_le_bytes(),
                )
                .unwrap();
        }
        fn mmio_read(&mut self, offset: usize) -> u32 {
            let mut b = [0u8; 4];
            self.client
                .region_read(VFIO_PCI_BAR0_REGION_INDEX, offset as u64, &mut b)
                .unwrap();
            u32::from_le_bytes(b)
        }
        /// Waits for the completion in slot `index` of the CQ at `base`.
        fn wait_cqe(&self, base: u64, index: u32, phase: bool) -> CompletionEntry {
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                let mut b = [0u8; 16];
                b.copy_from_slice(&self.get(base + u64::from(index) * 16, 16));
                let cqe = CompletionEntry::from_bytes(&b);
                if cqe.phase() == phase {
                    return cqe;
                }
                assert!(Instant::now() < deadline, "no completion");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        fn admin(&mut self, mut sqe: SubmissionEntry) -> CompletionEntry {
            self.cid += 1;
            sqe.set_cid(self.cid);
            let slot = self.acq_head;
            self.put(ASQ + u64::from(slot) * 64, &sqe.to_bytes());
            self.mmio_write(
                regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0),
                slot + 1,
            );
            let cqe = self.wait_cqe(ACQ, slot, true);
            assert_eq!(cqe.command_id(), self.cid);
            self.acq_head += 1;
            self.mmio_write(
                regs::doorbell_offset(0, DoorbellKind::CompletionHead, 0),
                self.acq_head,
            );
            cqe
        }
    }

    #[test]
    fn serves_an_ssd_over_vfio_user() {
        let dir = std::env::temp_dir().join(format!("dpuemu-vfio-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("ssd.img");
        let _ = std::fs::remove_file(&image);
        let ns = Arc::new(FileNamespace::open(&image, Some(8 << 20)).unwrap());
        let memory = Arc::new(DmaRegions::new());
        let msix = Arc::new(MsixEventFds::new(3));
        let config = ControllerConfig {
            name: "ssd0".into(),
            serial: "TEST".into(),
            model: "test".into(),
            subnqn: "nqn.test".into(),
            io_queues: 2,
            vectors: 3,
            workers: 1,
        };
        let controller = Controller::new(
            config,
            Personality::Ssd {
                ownership: Arc::new(SsdOwnership::new()),
            },
            vec![NamespaceSlot {
                backend: ns,
                ssd: None,
                stats: Stats::default(),
            }],
            memory.clone(),
            msix.clone(),
        );
        let function = Arc::new(Function {
            controller: controller.clone(),
            memory,
            msix,
            device_id: nvme_shim::pci::SSD_DEVICE_ID,
            subsystem_id: nvme_shim::pci::SSD_SUBSYSTEM_ID_BASE,
            class_code: nvme_shim::pci::SSD_CLASS_CODE,
            socket: dir.join("ssd0.sock"),
        });
        let server = listen(&function).unwrap();
        // A polling window far longer than the guest's think time below
        // (a millisecond between looks at the completion queue), so a
        // descheduled test thread does not make the worker sleep.
        let poll = Duration::from_millis(50);
        let workers =
            crate::worker::spawn_with(&controller, crate::worker::Polling { window: poll });
        let f = function.clone();
        std::thread::spawn(move || serve(&f, server));

        let ram = memfd(RAM);
        let mut client = Client::new(&function.socket).unwrap();
        let mut id = [0u8; 4];
        client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 0, &mut id)
            .unwrap();
        assert_eq!(u32::from_le_bytes(id), 0x10f1_1af4);
        let mut class = [0u8; 4];
        client
            .region_read(VFIO_PCI_CONFIG_REGION_INDEX, 8, &mut class)
            .unwrap();
        assert_eq!(u32::from_le_bytes(class) >> 8, 0x010802);
        client.dma_map(0, IOVA, RAM, ram.as_raw_fd()).unwrap();
        // Memory space and bus mastering, as the host driver enables them.
        client
            .region_write(VFIO_PCI_CONFIG_REGION_INDEX, 4, &0x0006u16.to_le_bytes())
            .unwrap();
        let irqs: Vec<File> = (0..3).map(|_| eventfd()).collect();
        let raw: Vec<i32> = irqs.iter().map(|f| f.as_raw_fd()).collect();
        client
            .set_irqs(
                VFIO_PCI_MSIX_IRQ_INDEX,
                VFIO_IRQ_SET_DATA_EVENTFD | VFIO_IRQ_SET_ACTION_TRIGGER,
                0,
                3,
                &raw,
            )
            .unwrap();
        let mut guest = Guest {
            ram,
            client,
            acq_head: 0,
            cid: 0,
        };

        guest.mmio_write(regs::AQA, Aqa::new(32, 32).0);
        guest.mmio_write(regs::ASQ, ASQ as u32);
        guest.mmio_write(regs::ASQ + 4, (ASQ >> 32) as u32);
        guest.mmio_write(regs::ACQ, ACQ as u32);
        guest.mmio_write(regs::ACQ + 4, (ACQ >> 32) as u32);
        guest.mmio_write(regs::CC, Cc::enable_default().0);
        assert_eq!(guest.mmio_read(regs::CSTS), Csts::RDY);

        let ident = Identify {
            cns: cns::CONTROLLER,
            cntid: 0,
            nsid: 0,
            prp1: BUF,
            prp2: 0,
        };
        assert_eq!(guest.admin(ident.encode(0)).status(), Status::SUCCESS);
        assert_eq!(&guest.get(BUF, 2), &[0xf4, 0x1a]);
        assert!(events(&irqs[0]) >= 1);

        let cq = CreateIoCq {
            qid: 1,
            entries: 16,
            base: CQ1,
            contiguous: true,
            interrupts: true,
            vector: 1,
        };
        assert!(guest.admin(cq.encode(0)).status().is_success());
        let sq = CreateIoSq {
            qid: 1,
            entries: 16,
            base: SQ1,
            contiguous: true,
            priority: 0,
            cqid: 1,
        };
        assert!(guest.admin(sq.encode(0)).status().is_success());

        // Write 4 KiB through MMIO doorbells, then read it back.
        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7 + 3) as u8).collect();
        guest.put(BUF, &data);
        let mut w = BlockRange {
            nsid: 1,
            slba: 16,
            blocks: 8,
            fua: true,
            deallocate: false,
        }
        .encode(io::WRITE, 1);
        w.prp1.set(BUF);
        guest.put(SQ1, &w.to_bytes());
        guest.mmio_write(regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0), 1);
        let cqe = guest.wait_cqe(CQ1, 0, true);
        assert_eq!((cqe.command_id(), cqe.status()), (1, Status::SUCCESS));
        guest.mmio_write(regs::doorbell_offset(1, DoorbellKind::CompletionHead, 0), 1);
        let mut on_disk = vec![0u8; 4096];
        File::open(&image)
            .unwrap()
            .read_exact_at(&mut on_disk, 16 * 512)
            .unwrap();
        assert_eq!(on_disk, data);
        assert!(events(&irqs[1]) >= 1);

        // Shadow doorbells: the host writes the shadow tail and rings MMIO
        // only when EventIdx asks for it, as Linux does.
        let dbbuf = DoorbellBufferConfig {
            shadow: SHADOW,
            event_idx: EVENT_IDX,
        };
        assert!(guest.admin(dbbuf.encode(0)).status().is_success());
        let tail_off = regs::doorbell_array_offset(1, DoorbellKind::SubmissionTail, 0) as u64;
        let head_off = regs::doorbell_array_offset(1, DoorbellKind::CompletionHead, 0) as u64;
        let mut tail = 1u32;
        let mut cq_head = 1u32;
        let mut phase = true;
        let mut mmio_rings = 0;
        let mut rings_per_round = Vec::new();
        for i in 0..80u32 {
            if i == 40 {
                // Past the polling window the worker arms EventIdx and
                // sleeps: the next submission must ring, and still complete.
                rings_per_round.push(mmio_rings);
                mmio_rings = 0;
                std::thread::sleep(poll * 3);
            }
            let mut r = BlockRange {
                nsid: 1,
                slba: 16,
                blocks: 8,
                fua: false,
                deallocate: false,
            }
            .encode(io::READ, 100 + i as u16);
            let dst = BUF + 0x10000 + u64::from(i % 4) * 0x1000;
            r.prp1.set(dst);
            guest.put(SQ1 + u64::from(tail) * 64, &r.to_bytes());
            let old = tail;
            tail = (tail + 1) % 16;
            guest.put(SHADOW + tail_off, &tail.to_le_bytes());
            std::sync::atomic::fence(std::sync::atomic::Ordering::SeqCst);
            let ei = u32::from_le_bytes(guest.get(EVENT_IDX + tail_off, 4).try_into().unwrap());
            if shadow_doorbell_needs_mmio(ei as u16, tail as u16, old as u16) {
                guest.mmio_write(
                    regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0),
                    tail,
                );
                mmio_rings += 1;
            }
            let cqe = guest.wait_cqe(CQ1, cq_head, phase);
            assert_eq!(
                (cqe.command_id(), cqe.status()),
                (100 + i as u16, Status::SUCCESS)
            );
            assert_eq!(guest.get(dst, 4096), data);
            cq_head += 1;
            if cq_head == 16 {
                cq_head = 0;
                phase = !phase;
            }
            guest.put(SHADOW + head_off, &cq_head.to_le_bytes());
        }
        rings_per_round.push(mmio_rings);
        // Each round starts with the worker asleep (the first after the
        // MMIO-driven write, the second after the pause): its first
        // submission rings; while the worker polls, the shadow doorbell is
        // all it takes. (A few more rings are tolerated for a test thread
        // descheduled longer than the window; none was lost either way.)
        for rings in rings_per_round {
            assert!(
                (1..=5).contains(&rings),
                "{rings} MMIO rings in 40 submissions"
            );
        }

        // Disconnect: the controller is reset for the next client.
        drop(guest);
        let deadline = Instant::now() + Duration::from_secs(5);
        while controller.csts().rdy() {
            assert!(
                Instant::now() < deadline,
                "controller not reset after disconnect"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        controller.stop_workers();
        for w in workers {
            w.join().unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
