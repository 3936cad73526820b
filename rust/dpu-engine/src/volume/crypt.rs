//! Volume encryption: AES-XTS-256 over stored records.
//!
//! Encryption is the last transform before the media: a block is
//! deduplicated and compressed first, then the stored bytes (a whole raw
//! block, or one compressed slot of a packed block) are encrypted as one XTS
//! data unit. The tweak is the record's *physical* location in the pool, not
//! the logical sector: a deduplicated or snapshot-shared record is read
//! through many logical sectors, and a logical tweak would leave it
//! decryptable from only one of them.

use aes::cipher::KeyInit;
use aes::Aes256;
use std::fmt;
use xts_mode::{get_tweak_default, Xts128};
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

/// The expanded key schedule of an unlocked volume.
///
/// The AES round keys are wiped on drop (the `aes` crate's `zeroize`
/// feature) and so is the fingerprint key.
pub(crate) struct Cipher {
    xts: Xts128<Aes256>,
    fingerprint_key: Zeroizing<[u8; 32]>,
}

impl Cipher {
    pub(crate) fn new(key: &VolumeKey) -> Result<Self, VolumeError> {
        let data = Aes256::new_from_slice(&key.bytes[..KEY_LEN / 2])
            .map_err(|_| VolumeError::InvalidKey("bad AES-256 data key"))?;
        let tweak = Aes256::new_from_slice(&key.bytes[KEY_LEN / 2..])
            .map_err(|_| VolumeError::InvalidKey("bad AES-256 tweak key"))?;
        Ok(Cipher {
            xts: Xts128::new(data, tweak),
            fingerprint_key: Zeroizing::new(blake3::derive_key(
                FINGERPRINT_CONTEXT,
                &key.bytes[..],
            )),
        })
    }

    /// Encrypts one data unit (at least 16 bytes) stored at `location`.
    pub(crate) fn encrypt(&self, unit: &mut [u8], location: u64) {
        if unit.len() >= 16 {
            self.xts
                .encrypt_sector(unit, get_tweak_default(u128::from(location)));
        }
    }

    /// Decrypts one data unit (at least 16 bytes) stored at `location`.
    pub(crate) fn decrypt(&self, unit: &mut [u8], location: u64) {
        if unit.len() >= 16 {
            self.xts
                .decrypt_sector(unit, get_tweak_default(u128::from(location)));
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
    fn short_and_unaligned_units_round_trip() {
        let cipher = Cipher::new(&key(3)).unwrap();
        let plain: Vec<u8> = (0..48u8).collect();
        let mut unit = plain.clone();
        cipher.encrypt(&mut unit, 99);
        assert_ne!(unit, plain);
        cipher.decrypt(&mut unit, 99);
        assert_eq!(unit, plain);
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
