// SPDX-License-Identifier: GPL-2.0

//! Strict parsers for configfs attribute values.
//!
//! A value is the bytes written to the attribute, with at most one trailing
//! newline (what `echo` adds). Anything else — empty values, leading or
//! trailing spaces, control and non-ASCII bytes (NUL included), signs,
//! leading zeros (`010` could be meant as octal), hexadecimal, trailing
//! garbage, numbers that overflow 64 bits — is refused, so a typo never
//! becomes a setting. Each parser says why it refused, for the dmesg line.

use super::nvmf;
use kernel::prelude::*;

/// Why a value was refused (shown in the kernel log).
pub(crate) type Refusal = &'static str;

/// The value without its one optional trailing newline.
pub(crate) fn value(page: &[u8]) -> Result<&[u8], Refusal> {
    value_within(page, MAX_VALUE)
}

/// The longest value of an attribute, but for a remote SSD's `device`
/// ([`MAX_DEVICE`]).
pub(crate) const MAX_VALUE: usize = 256;

/// [`value`] for attributes whose values can be longer (at most `max`
/// bytes): an SSD handle's `device` may hold a 223-byte NQN.
pub(crate) fn value_within(page: &[u8], max: usize) -> Result<&[u8], Refusal> {
    let text = page.strip_suffix(b"\n").unwrap_or(page);
    if text.is_empty() {
        return Err("empty value");
    }
    if text.len() > max {
        return Err("value too long");
    }
    if text.iter().any(|&b| !b.is_ascii_graphic() && b != b' ') {
        return Err("value contains control or non-ASCII bytes");
    }
    if text.first() == Some(&b' ') || text.last() == Some(&b' ') {
        return Err("value has leading or trailing spaces");
    }
    Ok(text)
}

/// `0` or `1`.
pub(crate) fn boolean(page: &[u8]) -> Result<bool, Refusal> {
    match value(page)? {
        b"0" => Ok(false),
        b"1" => Ok(true),
        _ => Err("expected 0 or 1"),
    }
}

/// A decimal number without sign, at most `u64::MAX`.
pub(crate) fn number(page: &[u8]) -> Result<u64, Refusal> {
    digits(value(page)?)
}

fn digits(text: &[u8]) -> Result<u64, Refusal> {
    if text.is_empty() {
        return Err("expected a number");
    }
    if text.len() > 1 && text[0] == b'0' {
        return Err("a number may not start with 0");
    }
    let mut n: u64 = 0;
    for &b in text {
        if !b.is_ascii_digit() {
            return Err("expected a decimal number");
        }
        n = n
            .checked_mul(10)
            .and_then(|n| n.checked_add(u64::from(b - b'0')))
            .ok_or("number too large")?;
    }
    Ok(n)
}

/// A size in bytes: a decimal number with an optional binary suffix `K`,
/// `M`, `G` or `T`.
pub(crate) fn size(page: &[u8]) -> Result<u64, Refusal> {
    let text = value(page)?;
    let (number, shift) = match text.last() {
        Some(b'K' | b'k') => (&text[..text.len() - 1], 10),
        Some(b'M' | b'm') => (&text[..text.len() - 1], 20),
        Some(b'G' | b'g') => (&text[..text.len() - 1], 30),
        Some(b'T' | b't') => (&text[..text.len() - 1], 40),
        _ => (text, 0),
    };
    let n = digits(number)?;
    n.checked_mul(1u64 << shift).ok_or("size too large")
}

/// One of `choices`, returned as its index.
pub(crate) fn choice(page: &[u8], choices: &[&str]) -> Result<usize, Refusal> {
    let text = value(page)?;
    choices
        .iter()
        .position(|c| c.as_bytes() == text)
        .ok_or("unknown value")
}

/// Longest object name (volumes, snapshots, SSD handles): the device's name
/// fields hold 31 bytes and a NUL.
pub(crate) const MAX_NAME: usize = 31;

/// An object name: 1 to 31 bytes of letters, digits, `.`, `_` and `-`.
pub(crate) fn name(text: &[u8]) -> Result<&[u8], Refusal> {
    if text.is_empty() {
        return Err("empty name");
    }
    if text.len() > MAX_NAME {
        return Err("name longer than 31 bytes");
    }
    if !text
        .iter()
        .all(|&b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
    {
        return Err("name may hold only letters, digits, '.', '_' and '-'");
    }
    if text == b"." || text == b".." {
        return Err("reserved name");
    }
    Ok(text)
}

/// A PCI address `dddd:bb:ss.f` (or `bb:ss.f` in domain 0), hexadecimal.
pub(crate) fn pci_address(text: &[u8]) -> Option<(u32, u8, u8, u8)> {
    fn hex(field: &[u8], max_width: usize) -> Option<u32> {
        if field.is_empty() || field.len() > max_width {
            return None;
        }
        field
            .iter()
            .try_fold(0u32, |n, &b| Some(n * 16 + (b as char).to_digit(16)?))
    }
    let mut halves = text.splitn(2, |&b| b == b'.');
    let head = halves.next()?;
    let function = hex(halves.next()?, 1)?;
    let mut fields = [&b""[..]; 3];
    let mut count = 0;
    for field in head.split(|&b| b == b':') {
        *fields.get_mut(count)? = field;
        count += 1;
    }
    let (domain, bus, slot) = match count {
        2 => (0, hex(fields[0], 2)?, hex(fields[1], 2)?),
        3 => (hex(fields[0], 4)?, hex(fields[1], 2)?, hex(fields[2], 2)?),
        _ => return None,
    };
    if slot > 31 || function > 7 {
        return None;
    }
    Some((domain, bus as u8, slot as u8, function as u8))
}

/// The longest `device` value: `tcp`, an IPv6 literal (45 bytes), a
/// service, an NQN (223 bytes), an NSID and the spaces between them.
pub(crate) const MAX_DEVICE: usize = 300;

/// A namespace of a remote NVMe/TCP subsystem, as written to an SSD
/// handle's `device`: `tcp ADDRESS SERVICE SUBNQN [NSID]`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RemoteNamespace<'a> {
    /// An IPv4 or IPv6 literal (no host names: the accelerator resolves
    /// nothing).
    pub(crate) address: &'a [u8],
    pub(crate) ipv6: bool,
    /// The TCP port, 1 to 65535.
    pub(crate) service: u16,
    /// The subsystem's NQN (not the discovery subsystem's).
    pub(crate) subnqn: &'a [u8],
    /// The namespace in the subsystem, 1 to FFFFFFFDh (1 when not written).
    pub(crate) nsid: u32,
}

/// The transport word that starts a remote namespace's `device` value.
const TCP: &[u8] = b"tcp";
/// Highest NSID a remote namespace may have (FFFFFFFEh and FFFFFFFFh are
/// not namespaces).
const MAX_REMOTE_NSID: u64 = 0xffff_fffd;

/// Whether a `device` value names a remote namespace (its first word is
/// the transport) rather than a local SSD (a PCI address or a serial
/// number, which have no spaces).
pub(crate) fn is_remote(text: &[u8]) -> bool {
    text == TCP || text.starts_with(b"tcp ")
}

/// Parses `tcp ADDRESS SERVICE SUBNQN [NSID]`: one space between words,
/// an address the accelerator can connect to (not unspecified, not
/// multicast), the rules of `nvmf/` for addresses and NQNs.
pub(crate) fn remote_namespace(text: &[u8]) -> Result<RemoteNamespace<'_>, Refusal> {
    const USAGE: Refusal = "expected 'tcp ADDRESS SERVICE SUBNQN [NSID]'";
    let mut words = [&b""[..]; 5];
    let mut count = 0;
    for word in text.split(|&b| b == b' ') {
        if word.is_empty() {
            return Err("words are separated by exactly one space");
        }
        *words
            .get_mut(count)
            .ok_or("trailing words after the NSID")? = word;
        count += 1;
    }
    let [transport, address, service, subnqn, nsid] = words;
    if transport != TCP || count < 4 {
        return Err(USAGE);
    }
    let ipv6 = if nvmf::ipv4(address) {
        false
    } else if nvmf::ipv6(address) {
        true
    } else {
        return Err("ADDRESS is not an IPv4 or IPv6 literal");
    };
    if address.iter().all(|&b| matches!(b, b'0' | b'.' | b':')) {
        return Err("ADDRESS is the unspecified address: nothing to connect to");
    }
    if is_multicast(address, ipv6) {
        return Err("ADDRESS is a multicast address: nothing to connect to");
    }
    let service = u16::try_from(digits(service)?)
        .ok()
        .filter(|&s| s != 0)
        .ok_or("SERVICE is a TCP port, 1-65535")?;
    let subnqn = nvmf::subsystem_nqn(subnqn)?;
    let nsid = if count == 5 {
        match digits(nsid)? {
            n @ 1..=MAX_REMOTE_NSID => n as u32,
            _ => return Err("NSID is 1 to 4294967293"),
        }
    } else {
        1
    };
    Ok(RemoteNamespace {
        address,
        ipv6,
        service,
        subnqn,
        nsid,
    })
}

/// Whether a checked address literal is multicast: 224.0.0.0/4, ff00::/8.
fn is_multicast(address: &[u8], ipv6: bool) -> bool {
    if ipv6 {
        // The first group, unless the address starts with `::`; four
        // digits starting `ff` are ff00 or more.
        let first = address.split(|&b| b == b':').next().unwrap_or(b"");
        first.len() == 4 && first[..2].eq_ignore_ascii_case(b"ff")
    } else {
        let first = address.split(|&b| b == b'.').next().unwrap_or(b"");
        digits(first).is_ok_and(|n| (224..=239).contains(&n))
    }
}

/// An AES-XTS-256 key: 128 hexadecimal digits (64 bytes). The two 256-bit
/// halves must differ (XTS with equal halves is weak) and the key must not
/// be all zeroes.
pub(crate) fn xts_key(page: &[u8], key: &mut [u8; 64]) -> Result<(), Refusal> {
    let text = page.strip_suffix(b"\n").unwrap_or(page);
    if text.len() != 128 {
        return Err("key must be 128 hexadecimal digits (64 bytes)");
    }
    for (i, pair) in text.chunks_exact(2).enumerate() {
        let hi = (pair[0] as char)
            .to_digit(16)
            .ok_or("key must be hexadecimal")?;
        let lo = (pair[1] as char)
            .to_digit(16)
            .ok_or("key must be hexadecimal")?;
        key[i] = (hi << 4 | lo) as u8;
    }
    if key.iter().all(|&b| b == 0) {
        return Err("key is all zeroes");
    }
    if key[..32] == key[32..] {
        return Err("the two halves of an XTS key must differ");
    }
    Ok(())
}

#[kunit_tests(dpublk_configfs_parse)]
mod tests {
    use super::*;

    #[test]
    fn booleans() {
        assert_eq!(boolean(b"1\n"), Ok(true));
        assert_eq!(boolean(b"0"), Ok(false));
        for bad in [&b""[..], b"\n", b"2", b"yes", b"1\n\n", b" 1", b"01", b"-1"] {
            assert!(boolean(bad).is_err());
        }
    }

    #[test]
    fn values() {
        assert_eq!(value(b"lz4\n"), Ok(&b"lz4"[..]));
        assert_eq!(value(b"a b"), Ok(&b"a b"[..]));
        for bad in [
            &b""[..],
            b"\n",
            b" lz4",
            b"lz4 ",
            b"lz4 \n",
            b"l\0z4",
            b"lz4\t",
            b"lz4\r\n",
            b"lz4\n\n",
            b"\x1b[0m",
            b"l\xc3\xa9",
            b"\xff",
            &[b'a'; 257],
        ] {
            assert!(value(bad).is_err());
        }
        assert!(value(&[b'a'; 256]).is_ok());
    }

    #[test]
    fn numbers_and_sizes() {
        assert_eq!(number(b"0\n"), Ok(0));
        assert_eq!(number(b"18446744073709551615"), Ok(u64::MAX));
        assert!(number(b"18446744073709551616").is_err());
        assert!(number(b"-5").is_err());
        assert!(number(b"+5").is_err());
        assert!(number(b"5x").is_err());
        assert!(number(b"0x10").is_err());
        assert!(number(b"010").is_err());
        assert!(number(b"00").is_err());
        assert!(number(b" 5").is_err());
        assert!(number(b"5 ").is_err());
        assert!(number(b"5\t").is_err());
        assert!(number(b"5\0").is_err());
        assert!(number(b"5\n\n").is_err());
        assert!(number(b"5\r\n").is_err());
        assert!(number(&[b'5', 0xc3, 0xa9]).is_err());
        assert!(number(b"4294967296").is_ok());
        assert_eq!(size(b"64M\n"), Ok(64 << 20));
        assert_eq!(size(b"4096"), Ok(4096));
        assert_eq!(size(b"1t"), Ok(1 << 40));
        assert!(size(b"M").is_err());
        assert!(size(b"16777216T").is_err());
        assert!(size(b"1.5G").is_err());
        assert!(size(b"1P").is_err());
        assert!(size(b"064M").is_err());
        assert!(size(b"0M").is_ok());
        assert!(size(b"17179869184G").is_err());
        assert!(size(&[b'1'; 257]).is_err());
    }

    #[test]
    fn names() {
        assert!(name(b"vol-0.a_b").is_ok());
        assert!(name(b"").is_err());
        assert!(name(b"a/b").is_err());
        assert!(name(b"a b").is_err());
        assert!(name(b"..").is_err());
        assert!(name(&[b'a'; 32]).is_err());
        assert!(name(&[b'a'; 31]).is_ok());
    }

    #[test]
    fn pci_addresses() {
        assert_eq!(pci_address(b"0000:01:00.0"), Some((0, 1, 0, 0)));
        assert_eq!(pci_address(b"00:1f.7"), Some((0, 0, 31, 7)));
        assert_eq!(pci_address(b"0001:ff:1f.7"), Some((1, 0xff, 31, 7)));
        for bad in [
            &b"01:00"[..],
            b"0000:01:00.8",
            b"0000:01:20.0",
            b"x:01:00.0",
            b"0000:001:00.0",
            b"01:00.0.1",
            b"",
        ] {
            assert_eq!(pci_address(bad), None);
        }
    }

    #[test]
    fn remote_namespaces() {
        fn parsed(text: &str) -> Result<RemoteNamespace<'_>, Refusal> {
            remote_namespace(text.as_bytes())
        }
        let nqn = "nqn.2026-12.org.example:shelf";
        let r = parsed("tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf").unwrap();
        assert_eq!(r.address, b"10.0.2.2");
        assert!(!r.ipv6);
        assert_eq!((r.service, r.subnqn, r.nsid), (4420, nqn.as_bytes(), 1));
        let r = parsed("tcp fe80::1 1 nqn.2026-12.org.example:shelf 4294967293").unwrap();
        assert!(r.ipv6);
        assert_eq!((r.service, r.nsid), (1, 0xffff_fffd));
        assert!(parsed("tcp 10.0.2.2 65535 nqn.2026-12.org.example:shelf 7").is_ok());
        assert!(is_remote(b"tcp"));
        assert!(is_remote(b"tcp 1.2.3.4"));
        assert!(!is_remote(b"tcpserial"));
        assert!(!is_remote(b"0000:01:00.0"));
        for bad in [
            "tcp",
            "tcp 10.0.2.2",
            "tcp 10.0.2.2 4420",
            "rdma 10.0.2.2 4420 nqn.2026-12.org.example:shelf",
            "tcp  10.0.2.2 4420 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2  4420 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf  1",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf 1 2",
            "tcp localhost 4420 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.256 4420 nqn.2026-12.org.example:shelf",
            "tcp [::1] 4420 nqn.2026-12.org.example:shelf",
            "tcp 0.0.0.0 4420 nqn.2026-12.org.example:shelf",
            "tcp :: 4420 nqn.2026-12.org.example:shelf",
            "tcp 0:0:0:0:0:0:0:0 4420 nqn.2026-12.org.example:shelf",
            "tcp 224.0.0.1 4420 nqn.2026-12.org.example:shelf",
            "tcp ff02::1 4420 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 0 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 65536 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 04420 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 0x10 nqn.2026-12.org.example:shelf",
            "tcp 10.0.2.2 4420 shelf",
            "tcp 10.0.2.2 4420 nqn.2014-08.org.nvmexpress.discovery",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf 0",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf 4294967294",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf -1",
            "tcp 10.0.2.2 4420 nqn.2026-12.org.example:shelf 01",
        ] {
            assert!(parsed(bad).is_err());
        }
        assert!(value_within(&[b'a'; MAX_DEVICE], MAX_DEVICE).is_ok());
        assert!(value_within(&[b'a'; MAX_DEVICE + 1], MAX_DEVICE).is_err());
    }

    #[test]
    fn keys() {
        let mut key = [0u8; 64];
        let mut text = [b'0'; 128];
        assert!(xts_key(&text, &mut key).is_err());
        text[0] = b'1';
        assert!(xts_key(&text, &mut key).is_ok());
        assert_eq!(key[0], 0x10);
        text[64] = b'1';
        assert!(xts_key(&text, &mut key).is_err());
        text[64] = b'2';
        assert!(xts_key(&text, &mut key).is_ok());
        assert!(xts_key(&text[..127], &mut key).is_err());
        text[5] = b'g';
        assert!(xts_key(&text, &mut key).is_err());
    }
}
