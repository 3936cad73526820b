// SPDX-License-Identifier: GPL-2.0

//! Controller registers in BAR0.
//!
//! The register layout and bit fields are defined once, in the shared
//! interface (`shim::registers`); this module only moves those typed values
//! in and out of the BAR. 64-bit registers are accessed as two 32-bit
//! halves, low half first, which every NVMe-style controller must accept.

use crate::shim::registers::{self, Aqa, Cap, Cc, Csts, DoorbellKind};
use kernel::{io::Io, pci, prelude::*};

/// Bytes of BAR0 the driver maps: controller properties and doorbells (the
/// MSI-X table behind them belongs to the PCI core).
pub(crate) const BAR0_SIZE: usize = registers::DOORBELL_END;

/// The mapped BAR0.
pub(crate) type Bar0 = pci::Bar<'static, BAR0_SIZE>;

/// Typed access to the controller registers of one mapped BAR0.
pub(crate) struct Registers<'a, 'b>(pub(crate) &'a pci::Bar<'b, BAR0_SIZE>);

impl Registers<'_, '_> {
    fn read_u64(&self, offset: usize) -> Result<u64> {
        let lo = self.0.try_read32(offset)?;
        let hi = self.0.try_read32(offset + 4)?;
        Ok(u64::from(lo) | u64::from(hi) << 32)
    }

    fn write_u64(&self, offset: usize, value: u64) -> Result {
        self.0.try_write32(value as u32, offset)?;
        self.0.try_write32((value >> 32) as u32, offset + 4)
    }

    /// Controller Capabilities.
    pub(crate) fn cap(&self) -> Result<Cap> {
        self.read_u64(registers::CAP).map(Cap)
    }

    /// Version.
    pub(crate) fn version(&self) -> Result<u32> {
        self.0.try_read32(registers::VS)
    }

    /// Controller Configuration.
    pub(crate) fn cc(&self) -> Result<Cc> {
        self.0.try_read32(registers::CC).map(Cc)
    }

    /// Writes Controller Configuration.
    pub(crate) fn set_cc(&self, cc: Cc) -> Result {
        self.0.try_write32(cc.0, registers::CC)
    }

    /// Controller Status.
    pub(crate) fn csts(&self) -> Result<Csts> {
        self.0.try_read32(registers::CSTS).map(Csts)
    }

    /// Programs the admin queue pair's sizes and bus addresses.
    pub(crate) fn set_admin_queues(&self, aqa: Aqa, asq: u64, acq: u64) -> Result {
        self.0.try_write32(aqa.0, registers::AQA)?;
        self.write_u64(registers::ASQ, asq)?;
        self.write_u64(registers::ACQ, acq)
    }

    /// Writes a doorbell: the new tail of submission queue `qid`, or the new
    /// head of completion queue `qid`.
    pub(crate) fn ring(&self, qid: u16, kind: DoorbellKind, dstrd: u8, value: u16) -> Result {
        let offset = registers::doorbell_offset(qid, kind, dstrd);
        self.0.try_write32(u32::from(value), offset)
    }
}
