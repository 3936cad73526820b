//! The pool's state in either metadata format, behind one interface.

use std::sync::Arc;

use super::crypt::{Cipher, VolumeKey};
use super::paged::{
    CommitStep, Dedup, Journal, PagedOptions, PagedState, Placement, ReadStep, WriteStep,
};
use super::state::{OpenedVolume, PoolState, Prepared};
use super::{PoolStats, Services, VolumeError, VolumeInfo, VolumeStats, BLOCK_SIZE};
use crate::media::{Media, MediaError};
use crate::metadata::transaction::SUPERBLOCK_MAGIC;

pub(crate) enum Engine {
    InMemory(Box<PoolState>),
    Paged(Box<PagedState>),
}

/// Calls the same method on whichever state the pool has.
macro_rules! both {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Engine::InMemory($s) => $call,
            Engine::Paged($s) => $call,
        }
    };
}

impl Engine {
    /// Opens the pool on `media` in the format its superblocks say.
    pub(crate) fn open(media: Arc<dyn Media>, options: &PagedOptions) -> Result<Self, VolumeError> {
        match PoolState::open(media.clone()) {
            Err(VolumeError::NotFormatted) => {}
            other => return other.map(|s| Engine::InMemory(Box::new(s))),
        }
        // No format 1 superblock: a paged pool's superblocks start with
        // the metadata magic; without one the media holds no pool.
        let mut paged = false;
        for slot in 0..2u64 {
            let mut block = vec![0u8; BLOCK_SIZE];
            media.read_at(slot * BLOCK_SIZE as u64, &mut block)?;
            paged |= block[..4] == SUPERBLOCK_MAGIC.to_le_bytes();
        }
        if !paged {
            return Err(VolumeError::NotFormatted);
        }
        let state = PagedState::open(media, options).map_err(|e| match e {
            VolumeError::Corrupt(why) => {
                VolumeError::Corrupt(format!("paged pool (format 2) does not open: {why}"))
            }
            e => e,
        })?;
        Ok(Engine::Paged(Box::new(state)))
    }

    /// The generation that must be durable before the operation just run
    /// is acknowledged (paged pools; format 1 commits as it goes).
    pub(crate) fn take_commit_request(&mut self) -> Option<u64> {
        match self {
            Engine::InMemory(_) => None,
            Engine::Paged(s) => s.take_commit_request(),
        }
    }

    /// The journal record the operation just run needs durable before it
    /// is acknowledged (paged pools' journaled snapshots).
    pub(crate) fn take_journal_request(&mut self) -> Option<(Arc<Journal>, u64)> {
        match self {
            Engine::InMemory(_) => None,
            Engine::Paged(s) => s.take_journal_request(),
        }
    }

    /// The media flush the operation just run needs before it is
    /// acknowledged (paged pools; format 1 flushes as it goes).
    pub(crate) fn take_media_flush(&mut self) -> Option<Arc<dyn Media>> {
        match self {
            Engine::InMemory(_) => None,
            Engine::Paged(s) => s.take_media_flush(),
        }
    }

    /// A media flush failed: the pool fails until reopened.
    pub(crate) fn media_flush_failed(&mut self) {
        if let Engine::Paged(s) = self {
            s.media_flush_failed();
        }
    }

    /// A journal record write failed: the pool fails until reopened.
    pub(crate) fn journal_failed(&mut self) {
        if let Engine::Paged(s) = self {
            s.journal_failed();
        }
    }

    /// One step towards generation `needed` being durable (see
    /// [`PagedState::commit_step`]).
    pub(crate) fn commit_step(&mut self, needed: u64) -> Result<CommitStep, VolumeError> {
        match self {
            Engine::InMemory(_) => Ok(CommitStep::Done),
            Engine::Paged(s) => s.commit_step(needed),
        }
    }

    pub(crate) fn create_volume(
        &mut self,
        name: &str,
        size_bytes: u64,
        services: Services,
        key: Option<&VolumeKey>,
    ) -> Result<(), VolumeError> {
        both!(self, s => s.create_volume(name, size_bytes, services, key))
    }

    pub(crate) fn open_volume(
        &self,
        name: &str,
        key: Option<&VolumeKey>,
    ) -> Result<OpenedVolume, VolumeError> {
        both!(self, s => s.open_volume(name, key))
    }

    pub(crate) fn snapshot(&mut self, origin: &str, name: &str) -> Result<(), VolumeError> {
        both!(self, s => s.snapshot(origin, name))
    }

    pub(crate) fn clone_snapshot(&mut self, snapshot: &str, name: &str) -> Result<(), VolumeError> {
        both!(self, s => s.clone_snapshot(snapshot, name))
    }

    pub(crate) fn revert(&mut self, volume: &str, snapshot: &str) -> Result<(), VolumeError> {
        both!(self, s => s.revert(volume, snapshot))
    }

    pub(crate) fn resize(&mut self, name: &str, size_bytes: u64) -> Result<(), VolumeError> {
        both!(self, s => s.resize(name, size_bytes))
    }

    pub(crate) fn delete(&mut self, name: &str) -> Result<(), VolumeError> {
        both!(self, s => s.delete(name))
    }

    pub(crate) fn grow(&mut self) -> Result<u64, VolumeError> {
        both!(self, s => s.grow())
    }

    pub(crate) fn flush(&mut self) -> Result<(), VolumeError> {
        both!(self, s => s.flush())
    }

    pub(crate) fn set_write_cache(&mut self, enabled: bool) {
        both!(self, s => s.set_write_cache(enabled))
    }

    pub(crate) fn write_cache(&self) -> bool {
        both!(self, s => s.write_cache())
    }

    pub(crate) fn volume_infos(&self) -> Vec<VolumeInfo> {
        both!(self, s => s.volume_infos())
    }

    pub(crate) fn stats(&self) -> PoolStats {
        both!(self, s => s.stats())
    }

    pub(crate) fn volume_stats(&mut self, name: &str) -> Result<VolumeStats, VolumeError> {
        both!(self, s => s.volume_stats(name))
    }

    pub(crate) fn mapped_bytes(&mut self, name: &str) -> Result<u64, VolumeError> {
        match self {
            Engine::InMemory(s) => s.volume_stats(name).map(|v| v.mapped_bytes),
            Engine::Paged(s) => s.mapped_bytes(name),
        }
    }

    pub(crate) fn check(&mut self) -> Result<(), VolumeError> {
        both!(self, s => s.check())
    }

    pub(crate) fn size_blocks(&self, id: u32) -> Result<u64, VolumeError> {
        both!(self, s => s.size_blocks(id))
    }

    /// Writes one block, or (paged pools, new raw blocks) prepares it to
    /// be written without the pool lock: see [`PagedState::write_block_begin`].
    pub(crate) fn write_block_begin(
        &mut self,
        vol: u32,
        lba: u64,
        block: &Prepared<'_>,
        cipher: Option<&Cipher>,
        dedup: Dedup,
    ) -> Result<WriteStep, VolumeError> {
        match self {
            Engine::InMemory(s) => s
                .write_block(vol, lba, block, cipher)
                .map(|()| WriteStep::Done),
            Engine::Paged(s) => s.write_block_begin(vol, lba, block, cipher, dedup),
        }
    }

    /// Finishes a block write begun by [`Engine::write_block_begin`].
    pub(crate) fn write_block_end(
        &mut self,
        vol: u32,
        lba: u64,
        placement: Placement,
        written: Result<(), MediaError>,
    ) -> Result<(), VolumeError> {
        match self {
            Engine::InMemory(_) => Err(VolumeError::InvalidArgument(
                "a format 1 pool has no block writes in two halves".into(),
            )),
            Engine::Paged(s) => s.write_block_end(vol, lba, placement, written),
        }
    }

    pub(crate) fn complete_write(&mut self) -> Result<(), VolumeError> {
        both!(self, s => s.complete_write())
    }

    /// Reads one block (format 1), or (paged pools) looks it up and says
    /// which record to read without the pool lock.
    pub(crate) fn read_begin(
        &mut self,
        vol: u32,
        lba: u64,
        out: &mut [u8],
        cipher: Option<&Cipher>,
    ) -> Result<ReadStep, VolumeError> {
        match self {
            Engine::InMemory(s) => s.read_block(vol, lba, out, cipher).map(|()| ReadStep::Done),
            Engine::Paged(s) => s.read_begin(vol, lba, out, cipher),
        }
    }

    pub(crate) fn discard(&mut self, vol: u32, lba: u64, count: u64) -> Result<(), VolumeError> {
        both!(self, s => s.discard(vol, lba, count))
    }

    /// The format 1 state (tests that damage it on purpose).
    #[cfg(test)]
    pub(crate) fn in_memory(&mut self) -> Option<&mut PoolState> {
        match self {
            Engine::InMemory(s) => Some(s),
            Engine::Paged(_) => None,
        }
    }
}
