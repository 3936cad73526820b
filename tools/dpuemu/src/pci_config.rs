//! PCI configuration space of a function: a type 0 header with one 64-bit
//! memory BAR (BAR0), an MSI-X capability whose table and PBA live in BAR0
//! (QEMU emulates both; the device only sees vector eventfds), and a PCI
//! Express capability describing a Gen3 x4 endpoint, like a real card, and
//! a vendor-specific capability holding the emulator's test-hook register
//! (bit 0: the controller's firmware hangs, see `controller/hang.rs`; bit 1:
//! hostile mode, see `controller/hostile.rs`).

use nvme_shim::pci;

/// Size of the configuration space served (conventional PCI).
pub const CONFIG_SPACE_SIZE: usize = 256;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const BAR1: usize = 0x14;
const CAPABILITIES_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
const MSIX_CAP: usize = 0x40;
const MSIX_CAP_ID: u8 = 0x11;
const PCIE_CAP: usize = 0x50;
const PCIE_CAP_ID: u8 = 0x10;
/// Vendor-specific capability: ID, next pointer, length, then the
/// test-hook register (a dword) at `TEST_HOOK_REGISTER`.
const VENDOR_CAP: usize = 0x90;
const VENDOR_CAP_ID: u8 = 0x09;
const VENDOR_CAP_LEN: u8 = 8;
/// The test-hook register (Documentation/device-interface.rst).
pub const TEST_HOOK_REGISTER: usize = VENDOR_CAP + 4;
/// Test-hook bit: the controller hangs while it is set.
pub const TEST_HOOK_HANG: u32 = 1 << 0;
/// Test-hook bit: hostile mode (`controller/hostile.rs`) while it is set.
pub const TEST_HOOK_HOSTILE: u32 = 1 << 1;
/// Command register: Bus Master Enable.
const COMMAND_BUS_MASTER: u16 = 1 << 2;
const STATUS_CAP_LIST: u16 = 1 << 4;
/// Command register bits the host may set: memory space, bus master,
/// interrupt disable.
const COMMAND_WRITABLE: u16 = (1 << 1) | (1 << 2) | (1 << 10);
/// MSI-X Message Control bits the host may set: function mask, enable.
const MSIX_CONTROL_WRITABLE: u16 = (1 << 14) | (1 << 15);

/// A function's configuration space with per-byte write masks.
pub struct PciConfig {
    bytes: [u8; CONFIG_SPACE_SIZE],
    writable: [u8; CONFIG_SPACE_SIZE],
}

impl PciConfig {
    /// Builds the configuration space of a function.
    pub fn new(device_id: u16, subsystem_id: u16, class_code: u32, vectors: u16) -> Self {
        let mut c = Self {
            bytes: [0; CONFIG_SPACE_SIZE],
            writable: [0; CONFIG_SPACE_SIZE],
        };
        let (class, subclass, prog_if) = pci::class_code_bytes(class_code);
        c.put16(0x00, pci::VENDOR_ID);
        c.put16(0x02, device_id);
        c.put16(STATUS, STATUS_CAP_LIST);
        c.bytes[0x08] = 1; // Revision.
        c.bytes[0x09] = prog_if;
        c.bytes[0x0a] = subclass;
        c.bytes[0x0b] = class;
        c.put16(0x2c, pci::VENDOR_ID);
        c.put16(0x2e, subsystem_id);
        c.bytes[CAPABILITIES_POINTER] = MSIX_CAP as u8;
        // BAR0: 64-bit, non-prefetchable memory.
        c.put32(BAR0, 0x4);
        let size_mask = !(pci::BAR0_SIZE - 1);
        c.mask32(BAR0, size_mask as u32 & !0xf);
        c.mask32(BAR1, (size_mask >> 32) as u32);
        c.mask16(COMMAND, COMMAND_WRITABLE);
        c.writable[0x0c] = 0xff; // Cache line size.
        c.writable[INTERRUPT_LINE] = 0xff;
        // MSI-X capability.
        let vectors = vectors.clamp(1, pci::MSIX_MAX_VECTORS);
        c.bytes[MSIX_CAP] = MSIX_CAP_ID;
        c.bytes[MSIX_CAP + 1] = PCIE_CAP as u8;
        c.put16(MSIX_CAP + 2, vectors - 1);
        c.mask16(MSIX_CAP + 2, MSIX_CONTROL_WRITABLE);
        c.put32(MSIX_CAP + 4, pci::MSIX_TABLE_OFFSET);
        c.put32(MSIX_CAP + 8, pci::MSIX_PBA_OFFSET);
        // PCI Express capability (version 2, endpoint).
        c.bytes[PCIE_CAP] = PCIE_CAP_ID;
        c.bytes[PCIE_CAP + 1] = VENDOR_CAP as u8;
        c.put16(PCIE_CAP + 0x02, 0x0002);
        // Device capabilities: 256-byte max payload, role-based errors.
        c.put32(PCIE_CAP + 0x04, 0x1 | 1 << 15);
        // Device control: relaxed ordering, no snoop, 512-byte read requests.
        c.put16(PCIE_CAP + 0x08, 0x2810);
        c.mask16(PCIE_CAP + 0x08, 0x7fff);
        // Link capabilities / status: 8 GT/s, x4.
        c.put32(PCIE_CAP + 0x0c, 0x3 | 4 << 4);
        c.mask16(PCIE_CAP + 0x10, 0x00cb);
        c.put16(PCIE_CAP + 0x12, 0x3 | 4 << 4);
        // Link capabilities 2 (2.5, 5 and 8 GT/s) and control 2 (8 GT/s).
        c.put32(PCIE_CAP + 0x2c, 0x0e);
        c.put16(PCIE_CAP + 0x30, 0x3);
        // Vendor-specific capability, the last in the list.
        c.bytes[VENDOR_CAP] = VENDOR_CAP_ID;
        c.bytes[VENDOR_CAP + 1] = 0;
        c.bytes[VENDOR_CAP + 2] = VENDOR_CAP_LEN;
        c.mask32(TEST_HOOK_REGISTER, TEST_HOOK_HANG | TEST_HOOK_HOSTILE);
        c
    }

    fn get16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.bytes[at], self.bytes[at + 1]])
    }

    /// Whether the host set Bus Master Enable: the function may access
    /// guest memory.
    pub fn bus_master(&self) -> bool {
        self.get16(COMMAND) & COMMAND_BUS_MASTER != 0
    }

    /// The test-hook register.
    pub fn test_hooks(&self) -> u32 {
        let at = TEST_HOOK_REGISTER;
        u32::from_le_bytes([
            self.bytes[at],
            self.bytes[at + 1],
            self.bytes[at + 2],
            self.bytes[at + 3],
        ])
    }

    fn put16(&mut self, at: usize, v: u16) {
        self.bytes[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put32(&mut self, at: usize, v: u32) {
        self.bytes[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }

    fn mask16(&mut self, at: usize, m: u16) {
        self.writable[at..at + 2].copy_from_slice(&m.to_le_bytes());
    }

    fn mask32(&mut self, at: usize, m: u32) {
        self.writable[at..at + 4].copy_from_slice(&m.to_le_bytes());
    }

    /// Reads configuration space; bytes past its end read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| self.bytes.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    /// Writes configuration space through the write masks.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            let Some(o) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) else {
                continue;
            };
            if let (Some(cur), Some(&mask)) = (self.bytes.get_mut(o), self.writable.get(o)) {
                *cur = *cur & !mask | byte & mask;
            }
        }
    }

    /// Whether the host enabled MSI-X.
    #[cfg(test)]
    pub fn msix_enabled(&self) -> bool {
        self.bytes[MSIX_CAP + 3] & 0x80 != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read32(c: &PciConfig, at: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn header_and_msix_capability() {
        let mut c = PciConfig::new(
            pci::ACCELERATOR_DEVICE_ID,
            pci::ACCELERATOR_DEVICE_ID,
            pci::ACCELERATOR_CLASS_CODE,
            5,
        );
        assert_eq!(read32(&c, 0x2c), 0x10f0_1af4);
        assert_eq!(read32(&c, 0), 0x10f0_1af4);
        assert_eq!(read32(&c, 8) >> 8, pci::ACCELERATOR_CLASS_CODE);
        assert_eq!(read32(&c, 0x34) & 0xff, 0x40);
        assert_eq!(read32(&c, 0x40) & 0xff, 0x11);
        assert_eq!(read32(&c, 0x40) >> 16 & 0x7ff, 4);
        assert_eq!(read32(&c, 0x44), pci::MSIX_TABLE_OFFSET);
        assert_eq!(read32(&c, 0x48), pci::MSIX_PBA_OFFSET);
        assert_eq!(read32(&c, 0x40) >> 8 & 0xff, 0x50);
        assert_eq!(read32(&c, 0x50) & 0xff, 0x10);
        assert_eq!(read32(&c, 0x50) >> 16 & 0xff, 0x02);
        // The vendor-specific capability follows and ends the list.
        assert_eq!(read32(&c, 0x50) >> 8 & 0xff, 0x90);
        assert_eq!(read32(&c, 0x90) & 0xffffff, 0x08_00_09);
        // Bus Master Enable and the hang hook follow the host's writes;
        // other test-hook bits are read-only zeroes.
        assert!(!c.bus_master());
        c.write(0x04, &0x0006u16.to_le_bytes());
        assert!(c.bus_master());
        c.write(0x04, &0x0002u16.to_le_bytes());
        assert!(!c.bus_master());
        assert_eq!(c.test_hooks(), 0);
        c.write(TEST_HOOK_REGISTER as u64, &[0xff; 4]);
        assert_eq!(c.test_hooks(), TEST_HOOK_HANG | TEST_HOOK_HOSTILE);
        c.write(TEST_HOOK_REGISTER as u64, &[0; 1]);
        assert_eq!(c.test_hooks(), 0);
        // BAR sizing: all ones reads back the size mask.
        c.write(0x10, &[0xff; 4]);
        c.write(0x14, &[0xff; 4]);
        let lo = read32(&c, 0x10);
        assert_eq!(lo & 0xf, 0x4);
        assert_eq!(!(lo & !0xf) + 1, pci::BAR0_SIZE as u32);
        assert_eq!(read32(&c, 0x14), 0xffff_ffff);
        c.write(0x10, &0xfebf_0000u32.to_le_bytes());
        assert_eq!(read32(&c, 0x10), 0xfebf_0004);
        // Read-only fields stay put; MSI-X enable is writable.
        c.write(0, &[0; 4]);
        assert_eq!(read32(&c, 0), 0x10f0_1af4);
        assert!(!c.msix_enabled());
        c.write(0x42, &0x8000u16.to_le_bytes());
        assert!(c.msix_enabled());
        assert_eq!(read32(&c, 0x40) >> 16 & 0x7ff, 4);
        let mut b = [0u8; 4];
        c.read(0xfe, &mut b);
        assert_eq!(b, [0, 0, 0, 0]);
        c.write(u64::MAX, &[1, 2]);
        let ssd = PciConfig::new(
            pci::SSD_DEVICE_ID,
            pci::SSD_SUBSYSTEM_ID_BASE + 2,
            pci::SSD_CLASS_CODE,
            3,
        );
        assert_eq!(read32(&ssd, 0x2c), 0x0102_1af4);
        assert_eq!(read32(&ssd, 8) >> 8, 0x010802);
    }
}
