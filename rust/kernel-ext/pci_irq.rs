// SPDX-License-Identifier: GPL-2.0

//! MSI-X vectors spread over the CPUs, one interrupt handler per vector.
//!
//! `kernel::pci::Device::alloc_irq_vectors` cannot ask for managed affinity
//! (`PCI_IRQ_AFFINITY` with `struct irq_affinity`), which is what places one
//! completion queue per CPU group and lets blk-mq map hardware queues to the
//! CPUs their interrupt fires on. [`QueueInterrupts`] owns the vector
//! allocation and the handlers registered on it, and frees them in the right
//! order.

use core::{marker::PhantomPinned, pin::Pin};
use kernel::{
    bindings, device,
    error::to_result,
    irq::{Handler, IrqReturn},
    pci,
    prelude::*,
};

/// Raw `struct pci_dev` of a PCI device.
fn raw_pci<Ctx: device::DeviceContext>(pdev: &pci::Device<Ctx>) -> *mut bindings::pci_dev {
    // `pci::Device` is a `#[repr(transparent)]` wrapper of
    // `Opaque<bindings::pci_dev>`, itself transparent over the C struct.
    core::ptr::from_ref(pdev).cast_mut().cast()
}

/// One registered interrupt handler.
///
/// # Invariants
///
/// While `self` exists, `handler` is registered for `irq` with `self` as the
/// cookie.
#[pin_data(PinnedDrop)]
struct IrqHandler<T: Handler> {
    irq: u32,
    #[pin]
    handler: T,
    #[pin]
    _pin: PhantomPinned,
}

#[pinned_drop]
impl<T: Handler> PinnedDrop for IrqHandler<T> {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `irq` is registered with this cookie (type invariant);
        // `free_irq` waits for running handlers, so none refers to `self`
        // once it returns.
        unsafe {
            bindings::free_irq(self.irq, core::ptr::from_ref(&*self).cast_mut().cast());
        }
    }
}

/// The interrupt handler registered for every vector.
///
/// # Safety
///
/// Called by the interrupt core only, for an interrupt registered by
/// `QueueInterrupts::register` with `cookie` the pinned `IrqHandler<T>`
/// passed there, which stays alive until `free_irq` (in its drop) has
/// waited for this call to return.
unsafe extern "C" fn handle_irq<T: Handler>(
    _irq: i32,
    cookie: *mut c_void,
) -> bindings::irqreturn_t {
    // SAFETY: `cookie` is the pinned `IrqHandler<T>` registered in
    // `QueueInterrupts::register`, alive until `free_irq`.
    let this = unsafe { &*cookie.cast::<IrqHandler<T>>() };
    let ret = this.handler.handle();
    bindings::irqreturn_t(match ret {
        IrqReturn::None => bindings::irqreturn::IRQ_NONE.0,
        IrqReturn::Handled => bindings::irqreturn::IRQ_HANDLED.0,
    })
}

/// MSI-X vectors of a function and the handlers registered on them.
///
/// Vector 0 is left out of the affinity spreading (the admin queue's); the
/// others are spread over all CPUs by the interrupt core.
///
/// # Invariants
///
/// `pdev` has `count` vectors allocated, freed in `drop` after every
/// handler in `handlers` was unregistered.
pub(crate) struct QueueInterrupts<'a, T: Handler> {
    // Field order is drop order: handlers before the vectors they use.
    handlers: KVec<Pin<KBox<IrqHandler<T>>>>,
    pdev: &'a pci::Device<device::Bound>,
    count: u32,
}

impl<'a, T: Handler + 'static> QueueInterrupts<'a, T> {
    /// Allocates between `min` and `max` MSI-X vectors; all but the first
    /// get managed affinity.
    pub(crate) fn alloc(pdev: &'a pci::Device<device::Bound>, min: u32, max: u32) -> Result<Self> {
        let mut affinity = bindings::irq_affinity {
            pre_vectors: 1,
            ..Default::default()
        };
        let flags = bindings::PCI_IRQ_MSIX
            | if max > 1 {
                bindings::PCI_IRQ_AFFINITY
            } else {
                0
            };
        // SAFETY: `pdev` is bound; `affinity` is valid for the call (the
        // PCI core copies what it needs).
        let ret = unsafe {
            bindings::pci_alloc_irq_vectors_affinity(raw_pci(pdev), min, max, flags, &mut affinity)
        };
        to_result(ret)?;
        // INVARIANT: `ret` vectors were allocated.
        Ok(Self {
            handlers: KVec::new(),
            pdev,
            count: ret as u32,
        })
    }

    /// Number of vectors allocated.
    pub(crate) fn count(&self) -> u32 {
        self.count
    }

    /// Registers `handler` on vector `index`.
    pub(crate) fn register(&mut self, index: u32, name: &'static CStr, handler: T) -> Result {
        if index >= self.count {
            return Err(EINVAL);
        }
        // SAFETY: `index` is below the allocated count.
        let irq = unsafe { bindings::pci_irq_vector(raw_pci(self.pdev), index) };
        if irq < 0 {
            return Err(Error::from_errno(irq));
        }
        let irq = irq as u32;
        let init = try_pin_init!(&this in IrqHandler {
            irq,
            handler,
            _pin: PhantomPinned,
            _: {
                // SAFETY: The cookie is the handler's final, pinned address;
                // it stays registered until `IrqHandler::drop` frees it. If
                // this fails, initialization fails and `drop` never runs.
                to_result(unsafe {
                    bindings::request_threaded_irq(
                        *irq,
                        Some(handle_irq::<T>),
                        None,
                        0,
                        name.as_char_ptr(),
                        this.as_ptr().cast::<c_void>(),
                    )
                })?;
            },
        }? Error);
        // INVARIANT: The handler is registered with its own address as
        // cookie once `pin_init` succeeds.
        let boxed = KBox::pin_init(init, GFP_KERNEL)?;
        // If `push` fails the box is dropped, which unregisters the handler.
        self.handlers.push(boxed, GFP_KERNEL)?;
        Ok(())
    }
}

impl<T: Handler> Drop for QueueInterrupts<'_, T> {
    fn drop(&mut self) {
        // Unregister every handler before the vectors go away.
        self.handlers.clear();
        // SAFETY: `count` vectors are allocated for `pdev` (type invariant)
        // and no handler is registered on them any more.
        unsafe { bindings::pci_free_irq_vectors(raw_pci(self.pdev)) };
    }
}
