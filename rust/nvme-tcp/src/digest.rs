//! Header and data digests: CRC32C, sent little-endian after the header or
//! after the data of a PDU.

/// Bytes of a header or data digest on the wire.
pub const DIGEST_BYTES: usize = 4;

/// CRC32C (Castagnoli) of `bytes`, as NVMe/TCP's digests define it.
pub fn crc32c(bytes: &[u8]) -> u32 {
    crc32c::crc32c(bytes)
}

/// Continues a CRC32C over more bytes (for data sent in pieces).
pub fn crc32c_append(crc: u32, bytes: &[u8]) -> u32 {
    crc32c::crc32c_append(crc, bytes)
}

/// Whether the 4 bytes of `digest` are the CRC32C of `covered`.
pub fn matches(covered: &[u8], digest: &[u8]) -> bool {
    match <[u8; DIGEST_BYTES]>::try_from(digest) {
        Ok(d) => u32::from_le_bytes(d) == crc32c(covered),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // The check value of CRC-32C (RFC 3720, appendix B.4): "123456789".
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        // 32 bytes of zeroes, from the same appendix.
        assert_eq!(crc32c(&[0u8; 32]), 0x8a91_36aa);
        let split = crc32c_append(crc32c(b"1234"), b"56789");
        assert_eq!(split, 0xe306_9283);
        assert!(matches(b"123456789", &0xe306_9283u32.to_le_bytes()));
        assert!(!matches(b"123456789", &0xe306_9284u32.to_le_bytes()));
        assert!(!matches(b"123456789", &[0x83, 0x92]));
    }
}
