//! Checks and key handling both pool formats share.

use std::sync::Arc;

use super::crypt::{Cipher, VolumeKey, CHECK_VALUE_LEN};
use super::{VolumeError, BLOCK_SIZE};
use crate::media::MediaError;

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
