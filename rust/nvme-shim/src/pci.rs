//! PCI identity of the accelerator and local SSD functions, and the BAR0
//! layout both share.

/// PCI vendor ID of every dpublk function. With the device IDs below it lies
/// in the range QEMU sets aside for experimental devices (1af4:10f0-10ff);
/// see Documentation/device-interface.rst.
pub const VENDOR_ID: u16 = 0x1af4;

/// PCI device ID of the storage accelerator function.
pub const ACCELERATOR_DEVICE_ID: u16 = 0x10f0;

/// PCI device ID of a local SSD function.
pub const SSD_DEVICE_ID: u16 = 0x10f1;

/// PCI subsystem device ID of local SSD function N is this plus N, so the
/// host driver can tell which of the accelerator's SSDs a PCI function is
/// (the accelerator function's subsystem device ID repeats its device ID).
pub const SSD_SUBSYSTEM_ID_BASE: u16 = 0x0100;

/// Class code (base class, subclass, programming interface) of the
/// accelerator: mass storage, "other". Deliberately not the NVMe class, so
/// the stock nvme driver never binds the accelerator.
pub const ACCELERATOR_CLASS_CODE: u32 = 0x01_80_00;

/// Class code of a local SSD function: mass storage, non-volatile memory
/// controller, NVM Express I/O controller. The stock nvme driver binds it.
pub const SSD_CLASS_CODE: u32 = 0x01_08_02;

/// Size of BAR0 (64-bit, non-prefetchable memory BAR).
pub const BAR0_SIZE: u64 = 0x4000;

/// Offset of the MSI-X table in BAR0 (BIR 0).
pub const MSIX_TABLE_OFFSET: u32 = 0x2000;

/// Offset of the MSI-X pending bit array in BAR0 (BIR 0).
pub const MSIX_PBA_OFFSET: u32 = 0x3000;

/// Most MSI-X vectors a function can expose: the table must fit between
/// `MSIX_TABLE_OFFSET` and `MSIX_PBA_OFFSET` at 16 bytes per entry.
pub const MSIX_MAX_VECTORS: u16 = ((MSIX_PBA_OFFSET - MSIX_TABLE_OFFSET) / 16) as u16;

/// Splits a 24-bit class code into (base class, subclass, programming
/// interface).
pub const fn class_code_bytes(class_code: u32) -> (u8, u8, u8) {
    (
        (class_code >> 16) as u8,
        (class_code >> 8) as u8,
        class_code as u8,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn class_codes() {
        assert_eq!(class_code_bytes(ACCELERATOR_CLASS_CODE), (0x01, 0x80, 0x00));
        assert_eq!(class_code_bytes(SSD_CLASS_CODE), (0x01, 0x08, 0x02));
        assert_ne!(ACCELERATOR_CLASS_CODE, SSD_CLASS_CODE);
        assert_eq!(MSIX_MAX_VECTORS, 256);
        assert!(u64::from(MSIX_PBA_OFFSET) + 32 <= BAR0_SIZE);
    }
}
