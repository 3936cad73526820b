//! An engine volume as a namespace of the accelerator.

use std::io;

use dpu_engine::volume::{Volume, VolumeError, BLOCK_SIZE};

use crate::namespace::Namespace;

/// Log2 of the logical block size of every volume namespace.
pub const VOLUME_LBA_SHIFT: u8 = 12;

const BS: u64 = BLOCK_SIZE as u64;

/// A volume, snapshot clone or thin volume as an NVMe namespace with 4 KiB
/// blocks. The controller checked every range against `size()` and the
/// block size, so offsets and lengths are whole blocks.
pub struct VolumeNamespace {
    volume: Volume,
}

impl VolumeNamespace {
    pub fn new(volume: Volume) -> Self {
        Self { volume }
    }
}

/// A full pool is `StorageFull` (the controller answers Capacity Exceeded);
/// everything else is a plain I/O error.
fn to_io(e: VolumeError) -> io::Error {
    match e {
        VolumeError::NoSpace => io::Error::new(io::ErrorKind::StorageFull, "pool is full"),
        e => io::Error::other(e.to_string()),
    }
}

fn whole_blocks(offset: u64, len: u64) -> io::Result<()> {
    if !offset.is_multiple_of(BS) || !len.is_multiple_of(BS) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "volume I/O must be whole 4 KiB blocks",
        ));
    }
    Ok(())
}

impl Namespace for VolumeNamespace {
    fn size(&self) -> u64 {
        self.volume.size_blocks() * BS
    }

    fn used(&self) -> u64 {
        self.volume.stats().map_or(0, |s| s.mapped_bytes)
    }

    fn lba_shift(&self) -> u8 {
        VOLUME_LBA_SHIFT
    }

    fn is_volume(&self) -> bool {
        true
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        whole_blocks(offset, buf.len() as u64)?;
        self.volume.read_blocks(offset / BS, buf).map_err(to_io)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        whole_blocks(offset, data.len() as u64)?;
        self.volume.write_blocks(offset / BS, data).map_err(to_io)
    }

    fn flush(&self) -> io::Result<()> {
        self.volume.flush().map_err(to_io)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> io::Result<()> {
        self.deallocate(offset, len)
    }

    /// Unmapped blocks read as zeroes, and their space returns to the pool.
    fn deallocate(&self, offset: u64, len: u64) -> io::Result<()> {
        whole_blocks(offset, len)?;
        self.volume
            .discard_blocks(offset / BS, len / BS)
            .map_err(to_io)
    }
}
