//! Checks and key handling both pool formats share.

use std::sync::Arc;

use super::crypt::{Cipher, VolumeKey, CHECK_VALUE_LEN};
use super::{VolumeError, BLOCK_SIZE};
use crate::media::{Media, MediaError};

const BS: u64 = BLOCK_SIZE as u64;

/// Longest volume name (bytes); configfs names are shorter still.
pub(crate) const MAX_NAME: usize = 255;

/// Refuses a name that cannot name a volume (`exists`: another volume has
/// it).
pub(crate) fn check_new_name(name: &str, exists: bool) -> Result<(), VolumeError> {
    if name.is_empty() || name.len() > MAX_NAME || name.contains(['/', '\0']) {
        return Err(VolumeError::InvalidArgument(format!(
            "bad volume name {name:?}"
        )));
    }
    if exists {
        return Err(VolumeError::Exists(name.to_string()));
    }
    Ok(())
}

/// A volume size in blocks, refusing sizes that are not whole blocks.
pub(crate) fn size_blocks(size_bytes: u64) -> Result<u64, VolumeError> {
    if size_bytes == 0 || !size_bytes.is_multiple_of(BS) {
        return Err(VolumeError::InvalidArgument(format!(
            "volume size {size_bytes} is not a positive multiple of {BLOCK_SIZE}"
        )));
    }
    Ok(size_bytes / BS)
}

/// The error of an I/O of `len` bytes at block `lba` past a volume of
/// `size_blocks`.
pub(crate) fn out_of_range(lba: u64, len: u64, size_blocks: u64) -> VolumeError {
    VolumeError::Media(MediaError::OutOfRange {
        offset: lba.saturating_mul(BS),
        len,
        size: size_blocks * BS,
    })
}

/// The cipher of a key domain for an I/O: the caller's, which must exist
/// exactly when the domain is encrypted.
pub(crate) fn domain_cipher(
    encrypted: bool,
    cipher: Option<&Cipher>,
) -> Result<Option<&Cipher>, VolumeError> {
    match (encrypted, cipher) {
        (true, None) => Err(VolumeError::KeyRequired),
        (true, Some(c)) => Ok(Some(c)),
        (false, _) => Ok(None),
    }
}

/// The cipher a volume handle gets for `key` in a domain that is
/// `encrypted` with `check_value`, or why the key does not fit.
pub(crate) fn handle_cipher(
    encrypted: bool,
    check_value: &[u8; CHECK_VALUE_LEN],
    key: Option<&VolumeKey>,
) -> Result<Option<Arc<Cipher>>, VolumeError> {
    match (encrypted, key) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err(VolumeError::NotEncrypted),
        (true, None) => Err(VolumeError::KeyRequired),
        (true, Some(key)) => {
            if key.check_value() != *check_value {
                return Err(VolumeError::WrongKey);
            }
            Ok(Some(Arc::new(Cipher::new(key)?)))
        }
    }
}

/// Reads a record's stored bytes at `offset` into `stored` and checks them
/// against the record's CRC32C `crc`. On a mismatch, a media that keeps
/// several copies (a mirror) is asked for each copy alone: the first that
/// passes is returned and written over every copy that failed (read
/// repair, counted in the array's statistics), so a stale or damaged copy
/// neither fails the read nor waits for a scrub. `what` names the record
/// for the error when no copy passes. The caller holds the pool lock, so
/// the record's bytes cannot be rewritten while they are repaired.
pub(crate) fn read_checked(
    media: &dyn Media,
    offset: u64,
    stored: &mut [u8],
    crc: u32,
    what: impl FnOnce() -> String,
) -> Result<(), VolumeError> {
    media.read_at(offset, stored)?;
    if crc32c::crc32c(stored) == crc {
        return Ok(());
    }
    let mut good: Option<Vec<u8>> = None;
    let mut bad = Vec::new();
    for copy in 0..media.copies() {
        let mut bytes = vec![0u8; stored.len()];
        // A copy that cannot be read (its member failed, or is not in
        // service for this row) is the array's business, not a repair's.
        if media.read_copy_at(copy, offset, &mut bytes).is_err() {
            continue;
        }
        if crc32c::crc32c(&bytes) != crc {
            bad.push(copy);
        } else if good.is_none() {
            good = Some(bytes);
        }
    }
    let Some(good) = good else {
        return Err(VolumeError::Media(MediaError::Io(format!(
            "{} fails its checksum",
            what()
        ))));
    };
    for copy in bad {
        // A repair that fails leaves that copy as bad as it was (and the
        // array fails a member that cannot take a write); the read still
        // returns the good bytes.
        let _ = media.repair_copy_at(copy, offset, &good);
    }
    stored.copy_from_slice(&good);
    Ok(())
}
