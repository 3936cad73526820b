//! Volume encryption: AES-XTS-256 over stored records.
//!
//! Encryption is the last transform before the media: a block is
//! deduplicated and compressed first, then the stored bytes (a whole raw
//! block, or one compressed slot of a packed block) are encrypted as one XTS
//! data unit. The tweak is the stored record's id, not the logical sector:
//! a deduplicated or snapshot-shared record is read through many logical
//! sectors, and a logical tweak would leave it decryptable from only one of
//! them. Record ids are never reused, so each stored unit has a tweak of its
//! own, and unlike a physical address the id stays the same when the record
//! is moved, so compaction can relocate ciphertext without the key.

use aes::cipher::{Array, BlockCipherDecrypt, BlockCipherEncrypt, KeyInit};
use aes::Aes256;
use std::fmt;
use zeroize::Zeroizing;

use super::VolumeError;

/// Length of a volume key: two AES-256 keys (data key, tweak key).
pub const KEY_LEN: usize = 64;

/// Length of the key check value kept in the pool's metadata.
pub const CHECK_VALUE_LEN: usize = 16;

/// Key-derivation contexts. They are fixed forever: changing one makes every
/// existing encrypted volume refuse its key.
const CHECK_VALUE_CONTEXT: &str = "dpublk 2026-11 volume key check value";
const FINGERPRINT_CONTEXT: &str = "dpublk 2026-11 dedup fingerprint key";

/// A volume's AES-XTS-256 key, as handed in by the caller.
///
/// The bytes live in memory that is wiped when the key is dropped, and the
/// key never reaches the media: the pool stores only a check value derived
/// from it with a one-way function.
pub struct VolumeKey {
    bytes: Zeroizing<[u8; KEY_LEN]>,
}

impl VolumeKey {
    /// Copies `bytes` (exactly 64) into a key; the caller should wipe its own
    /// copy afterwards.
    ///
    /// Refuses a key whose two halves are equal: XTS with equal data and
    /// tweak keys is weak, and IEEE 1619 and FIPS both forbid it.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, VolumeError> {
        if bytes.len() != KEY_LEN {
            return Err(VolumeError::InvalidKey("an AES-XTS-256 key is 64 bytes"));
        }
        if bytes[..KEY_LEN / 2] == bytes[KEY_LEN / 2..] {
            return Err(VolumeError::InvalidKey(
                "the two halves of an AES-XTS key must differ",
            ));
        }
        let mut key = Zeroizing::new([0u8; KEY_LEN]);
        key.copy_from_slice(bytes);
        Ok(VolumeKey { bytes: key })
    }

    /// The value stored in metadata to recognise this key at open.
    pub(crate) fn check_value(&self) -> [u8; CHECK_VALUE_LEN] {
        let derived = Zeroizing::new(blake3::derive_key(CHECK_VALUE_CONTEXT, &self.bytes[..]));
        let mut value = [0u8; CHECK_VALUE_LEN];
        value.copy_from_slice(&derived[..CHECK_VALUE_LEN]);
        value
    }
}

impl fmt::Debug for VolumeKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The key must never end up in a log line.
        f.write_str("VolumeKey(..)")
    }
}

/// Largest data unit: one block, 256 AES blocks.
const MAX_UNIT_BLOCKS: usize = super::BLOCK_SIZE / 16;

/// The expanded key schedule of an unlocked volume.
///
/// The AES round keys are wiped on drop (the `aes` crate's `zeroize`
/// feature) and so is the fingerprint key.
///
/// XTS itself is the few lines below rather than the `xts-mode` crate: that
/// crate encrypts one AES block at a time, while handing `aes` all blocks
/// of a unit at once lets it pipeline AES-NI over eight blocks, which is
/// several times faster. The tests check both give the same ciphertext.
pub(crate) struct Cipher {
    data: Aes256,
    tweak: Aes256,
    fingerprint_key: Zeroizing<[u8; 32]>,
}

impl Cipher {
    pub(crate) fn new(key: &VolumeKey) -> Result<Self, VolumeError> {
        let data = Aes256::new_from_slice(&key.bytes[..KEY_LEN / 2])
            .map_err(|_| VolumeError::InvalidKey("bad AES-256 data key"))?;
        let tweak = Aes256::new_from_slice(&key.bytes[KEY_LEN / 2..])
            .map_err(|_| VolumeError::InvalidKey("bad AES-256 tweak key"))?;
        Ok(Cipher {
            data,
            tweak,
            fingerprint_key: Zeroizing::new(blake3::derive_key(
                FINGERPRINT_CONTEXT,
                &key.bytes[..],
            )),
        })
    }

    /// XORs every AES block of a unit with its XTS tweak: the encrypted
    /// unit number (the sector number of dm-crypt), multiplied by α once
    /// more for each block (IEEE 1619).
    fn whiten(&self, blocks: &mut [Array<u8, aes::cipher::consts::U16>], unit_number: u64) {
        let mut tweak = Array(u128::from(unit_number).to_le_bytes());
        self.tweak.encrypt_block(&mut tweak);
        let mut t = u128::from_le_bytes(tweak.0);
        for block in blocks {
            let x = u128::from_le_bytes(block.0) ^ t;
            block.0 = x.to_le_bytes();
            // Multiplication by α in GF(2^128) with the XTS polynomial.
            t = (t << 1) ^ ((t >> 127) * 0x87);
        }
    }

    /// Splits `unit` into AES blocks; `None` unless it is a whole number
    /// of them, from one up to a block's worth (every stored unit is).
    fn blocks(unit: &mut [u8]) -> Option<&mut [Array<u8, aes::cipher::consts::U16>]> {
        let (blocks, rest) = Array::slice_as_chunks_mut(unit);
        (rest.is_empty() && !blocks.is_empty() && blocks.len() <= MAX_UNIT_BLOCKS).then_some(blocks)
    }

    /// Encrypts data unit `unit_number`. Units are whole AES
    /// blocks by construction (raw blocks, or packed slots of 16-byte
    /// units); anything else is a bug and is left as it is.
    pub(crate) fn encrypt(&self, unit: &mut [u8], unit_number: u64) {
        debug_assert!(unit.len().is_multiple_of(16) && !unit.is_empty());
        if let Some(blocks) = Self::blocks(unit) {
            self.whiten(blocks, unit_number);
            self.data.encrypt_blocks(blocks);
            self.whiten(blocks, unit_number);
        }
    }

    /// Decrypts data unit `unit_number`.
    pub(crate) fn decrypt(&self, unit: &mut [u8], unit_number: u64) {
        if let Some(blocks) = Self::blocks(unit) {
            self.whiten(blocks, unit_number);
            self.data.decrypt_blocks(blocks);
            self.whiten(blocks, unit_number);
        }
    }

    /// A keyed content fingerprint for dedup in an encrypted domain.
    ///
    /// Keyed so that the fingerprints stored in clear in the metadata do not
    /// let someone holding the raw media confirm a guessed plaintext.
    pub(crate) fn fingerprint(&self, data: &[u8]) -> [u8; 32] {
        *blake3::keyed_hash(&self.fingerprint_key, data).as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> VolumeKey {
        let bytes: Vec<u8> = (0..KEY_LEN as u8)
            .map(|i| i.wrapping_mul(7) ^ seed)
            .collect();
        VolumeKey::from_slice(&bytes).unwrap()
    }

    #[test]
    fn round_trip_depends_on_location_and_key() {
        let cipher = Cipher::new(&key(1)).unwrap();
        let plain: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let mut a = plain.clone();
        cipher.encrypt(&mut a, 10);
        let mut b = plain.clone();
        cipher.encrypt(&mut b, 11);
        assert_ne!(a, plain);
        assert_ne!(a, b, "the tweak must change the ciphertext");
        let other = Cipher::new(&key(2)).unwrap();
        let mut c = plain.clone();
        other.encrypt(&mut c, 10);
        assert_ne!(a, c);
        cipher.decrypt(&mut a, 10);
        assert_eq!(a, plain);
    }

    #[test]
    fn matches_the_xts_mode_crate() {
        use xts_mode::{get_tweak_default, Xts128};
        let k = key(3);
        let cipher = Cipher::new(&k).unwrap();
        let reference = Xts128::new(
            Aes256::new_from_slice(&k.bytes[..32]).unwrap(),
            Aes256::new_from_slice(&k.bytes[32..]).unwrap(),
        );
        for (len, unit_number) in [(16, 0u64), (48, 99), (1024, 1 << 40), (4096, 7 << 8 | 3)] {
            let plain: Vec<u8> = (0..len).map(|i| (i * 31 % 256) as u8).collect();
            let mut ours = plain.clone();
            cipher.encrypt(&mut ours, unit_number);
            let mut theirs = plain.clone();
            reference.encrypt_sector(&mut theirs, get_tweak_default(u128::from(unit_number)));
            assert_eq!(ours, theirs, "len {len}");
            cipher.decrypt(&mut ours, unit_number);
            assert_eq!(ours, plain);
        }
    }

    #[test]
    fn bad_keys_are_refused_and_never_printed() {
        assert!(VolumeKey::from_slice(&[1u8; 32]).is_err());
        assert!(VolumeKey::from_slice(&[5u8; 64]).is_err());
        let k = key(4);
        assert_eq!(format!("{k:?}"), "VolumeKey(..)");
        assert_ne!(k.check_value(), key(5).check_value());
        assert_eq!(k.check_value(), key(4).check_value());
    }
}
