//! Who owns an SSD's media: the host (through the SSD's own NVMe function)
//! or the accelerator. Two owners never write one SSD.

use std::sync::Mutex;

use nvme_shim::vendor::status as vendor_status;

#[derive(Default)]
struct OwnershipState {
    /// The host has the SSD function's controller enabled (CC.EN=1, ready).
    host_enabled: bool,
    /// The SSD is attached to the accelerator.
    attached: bool,
    /// An accelerator namespace stores data on the SSD.
    in_use: bool,
}

/// The ownership state of one SSD, shared by its own function and the
/// accelerator. One lock orders every transition.
#[derive(Default)]
pub struct SsdOwnership {
    state: Mutex<OwnershipState>,
}

/// A snapshot of an SSD's ownership, for listings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnershipView {
    /// The host has the SSD's own controller enabled.
    pub host_enabled: bool,
    /// The SSD is attached to the accelerator.
    pub attached: bool,
    /// An accelerator namespace stores data on the SSD.
    pub in_use: bool,
}

impl SsdOwnership {
    /// An SSD owned by the host.
    pub fn new() -> Self {
        Self::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut OwnershipState) -> T) -> T {
        match self.state.lock() {
            Ok(mut guard) => f(&mut guard),
            Err(poisoned) => f(&mut poisoned.into_inner()),
        }
    }

    /// The host sets CC.EN=1 on the SSD function. Returns `false` (the
    /// controller must not become ready) while the accelerator owns it.
    pub fn host_enable(&self) -> bool {
        self.with(|s| {
            if s.attached {
                false
            } else {
                s.host_enabled = true;
                true
            }
        })
    }

    /// The host cleared CC.EN (or the function was reset).
    pub fn host_disable(&self) {
        self.with(|s| s.host_enabled = false)
    }

    /// Attaches the SSD to the accelerator, or returns the vendor status.
    pub fn attach(&self) -> Result<(), u8> {
        self.with(|s| {
            if s.attached {
                Err(vendor_status::SSD_ALREADY_ATTACHED)
            } else if s.host_enabled {
                Err(vendor_status::SSD_BUSY)
            } else {
                s.attached = true;
                Ok(())
            }
        })
    }

    /// Detaches the SSD from the accelerator, or returns the vendor status.
    pub fn detach(&self) -> Result<(), u8> {
        self.with(|s| {
            if !s.attached {
                Err(vendor_status::SSD_NOT_ATTACHED)
            } else if s.in_use {
                Err(vendor_status::SSD_IN_USE)
            } else {
                s.attached = false;
                Ok(())
            }
        })
    }

    /// Attaches the SSD at startup for a namespace that stores data on it
    /// (`--passthrough-ssd`). The host never had it enabled yet.
    pub fn attach_in_use(&self) {
        self.with(|s| {
            s.attached = true;
            s.in_use = true;
        })
    }

    /// Marks an attached SSD as storing data of a volume family, or returns
    /// the vendor status (not attached, or already used by another family).
    pub fn claim(&self) -> Result<(), u8> {
        self.with(|s| {
            if !s.attached {
                Err(vendor_status::SSD_NOT_ATTACHED)
            } else if s.in_use {
                Err(vendor_status::SSD_IN_USE)
            } else {
                s.in_use = true;
                Ok(())
            }
        })
    }

    /// The volume family on the SSD is gone: it stays attached, and SSD
    /// Detach works again.
    pub fn release(&self) {
        self.with(|s| s.in_use = false)
    }

    /// Whether the accelerator owns the SSD (its own function must not
    /// touch the media).
    pub fn is_attached(&self) -> bool {
        self.with(|s| s.attached)
    }

    /// The current state.
    pub fn view(&self) -> OwnershipView {
        self.with(|s| OwnershipView {
            host_enabled: s.host_enabled,
            attached: s.attached,
            in_use: s.in_use,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_owners_never() {
        let o = SsdOwnership::new();
        assert!(o.host_enable());
        assert_eq!(o.attach(), Err(vendor_status::SSD_BUSY));
        o.host_disable();
        assert_eq!(o.attach(), Ok(()));
        assert_eq!(o.attach(), Err(vendor_status::SSD_ALREADY_ATTACHED));
        assert!(!o.host_enable());
        assert!(!o.view().host_enabled);
        assert_eq!(o.detach(), Ok(()));
        assert_eq!(o.detach(), Err(vendor_status::SSD_NOT_ATTACHED));
        assert!(o.host_enable());
        o.host_disable();
        o.attach_in_use();
        assert_eq!(o.detach(), Err(vendor_status::SSD_IN_USE));
        assert!(!o.host_enable());
        o.release();
        assert_eq!(o.claim(), Ok(()));
        assert_eq!(o.claim(), Err(vendor_status::SSD_IN_USE));
        o.release();
        assert_eq!(o.detach(), Ok(()));
        assert_eq!(o.claim(), Err(vendor_status::SSD_NOT_ATTACHED));
    }
}
