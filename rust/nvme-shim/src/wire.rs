//! Little-endian field wrappers and byte-exact access to wire structures.

/// Defines a little-endian integer wrapper with alignment 1.
macro_rules! le_int {
    ($name:ident, $int:ty, $n:expr) => {
        /// A little-endian integer as stored in device-visible memory.
        #[repr(transparent)]
        #[derive(Clone, Copy, Default, PartialEq, Eq, Hash)]
        pub struct $name([u8; $n]);

        impl $name {
            /// Stores `value` in little-endian byte order.
            pub const fn new(value: $int) -> Self {
                Self(value.to_le_bytes())
            }

            /// Returns the value in host byte order.
            pub const fn get(self) -> $int {
                <$int>::from_le_bytes(self.0)
            }

            /// Replaces the stored value.
            pub fn set(&mut self, value: $int) {
                self.0 = value.to_le_bytes();
            }
        }

        impl From<$int> for $name {
            fn from(value: $int) -> Self {
                Self::new(value)
            }
        }

        impl core::fmt::Debug for $name {
            fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                write!(f, "{:#x}", self.get())
            }
        }
    };
}

le_int!(Le16, u16, 2);
le_int!(Le32, u32, 4);
le_int!(Le64, u64, 8);

const _: () = assert!(core::mem::size_of::<Le16>() == 2);
const _: () = assert!(core::mem::size_of::<Le32>() == 4);
const _: () = assert!(core::mem::size_of::<Le64>() == 8);
const _: () = assert!(core::mem::align_of::<Le64>() == 1);

/// A structure whose in-memory representation is its wire format.
///
/// # Safety
///
/// Implementors must be `#[repr(C)]` (or `#[repr(transparent)]`), consist
/// only of `u8`, arrays of `u8` and other `Wire` types, and therefore have
/// alignment 1, no padding bytes, and no invalid bit patterns.
pub unsafe trait Wire: Copy + Sized {
    /// The structure's size in bytes on the wire.
    const SIZE: usize = core::mem::size_of::<Self>();

    /// Views the structure as its wire bytes.
    fn as_bytes(&self) -> &[u8] {
        // SAFETY: By the trait's contract `Self` has no padding, so all
        // `size_of::<Self>()` bytes behind `self` are initialized, and `u8`
        // has no alignment requirement. The slice borrows `self`.
        unsafe {
            core::slice::from_raw_parts(
                (self as *const Self).cast::<u8>(),
                core::mem::size_of::<Self>(),
            )
        }
    }

    /// Views the structure as mutable wire bytes.
    fn as_bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: As in `as_bytes`; in addition every bit pattern is a valid
        // `Self` (trait contract), so arbitrary writes through the slice keep
        // `*self` valid. The slice borrows `self` mutably.
        unsafe {
            core::slice::from_raw_parts_mut(
                (self as *mut Self).cast::<u8>(),
                core::mem::size_of::<Self>(),
            )
        }
    }

    /// Decodes the structure from the first `SIZE` bytes of `bytes`.
    ///
    /// Returns `None` if `bytes` is too short. Any byte content is accepted:
    /// the fields are validated by whoever interprets them.
    fn read_from(bytes: &[u8]) -> Option<Self> {
        let src = bytes.get(..core::mem::size_of::<Self>())?;
        // SAFETY: `src` holds exactly `size_of::<Self>()` initialized bytes,
        // every bit pattern is a valid `Self` (trait contract), and
        // `read_unaligned` has no alignment requirement.
        Some(unsafe { core::ptr::read_unaligned(src.as_ptr().cast::<Self>()) })
    }

    /// Encodes the structure into the first `SIZE` bytes of `out`.
    ///
    /// Returns `false` (and writes nothing) if `out` is too short.
    fn write_to(&self, out: &mut [u8]) -> bool {
        match out.get_mut(..core::mem::size_of::<Self>()) {
            Some(dst) => {
                dst.copy_from_slice(self.as_bytes());
                true
            }
            None => false,
        }
    }

    /// Returns the all-zero value (valid for every `Wire` type).
    fn zeroed() -> Self {
        // SAFETY: Every bit pattern, including all zeroes, is a valid `Self`
        // (trait contract).
        unsafe { core::mem::zeroed() }
    }
}

/// Copies `text` into a space-padded ASCII field, as NVMe uses for serial
/// number, model and firmware revision. Longer text is truncated.
pub fn ascii_field(field: &mut [u8], text: &[u8]) {
    for (i, byte) in field.iter_mut().enumerate() {
        *byte = text.get(i).copied().unwrap_or(b' ');
    }
}

/// Copies `text` into a NUL-padded field (NQNs and names). The last byte is
/// always NUL, so the field stays a terminated string.
pub fn c_string_field(field: &mut [u8], text: &[u8]) {
    let room = field.len().saturating_sub(1);
    for (i, byte) in field.iter_mut().enumerate() {
        *byte = if i < room {
            text.get(i).copied().unwrap_or(0)
        } else {
            0
        };
    }
}

/// Returns the bytes of a NUL-padded field up to the first NUL.
pub fn c_string_bytes(field: &[u8]) -> &[u8] {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    field.get(..end).unwrap_or(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Pair {
        a: Le32,
        b: Le16,
        c: u8,
        d: u8,
    }
    // SAFETY: repr(C), only Wire fields and u8, no padding (size 8 = 4+2+1+1).
    unsafe impl Wire for Pair {}

    #[test]
    fn le_round_trip() {
        let v = Le64::new(0x0102_0304_0506_0708);
        assert_eq!(v.get(), 0x0102_0304_0506_0708);
        let mut p = Pair::zeroed();
        p.a.set(0xdead_beef);
        p.b = Le16::new(0x1234);
        p.c = 7;
        assert_eq!(p.as_bytes(), &[0xef, 0xbe, 0xad, 0xde, 0x34, 0x12, 7, 0]);
        let q = Pair::read_from(&[1, 0, 0, 0, 2, 0, 3, 4, 99]).unwrap();
        assert_eq!((q.a.get(), q.b.get(), q.c, q.d), (1, 2, 3, 4));
        assert!(Pair::read_from(&[0; 7]).is_none());
        let mut out = [0u8; 8];
        assert!(q.write_to(&mut out));
        assert_eq!(out, [1, 0, 0, 0, 2, 0, 3, 4]);
        assert!(!q.write_to(&mut [0u8; 3]));
        p.as_bytes_mut()[6] = 9;
        assert_eq!(p.c, 9);
    }

    #[test]
    fn string_fields() {
        let mut f = [0u8; 6];
        ascii_field(&mut f, b"abc");
        assert_eq!(&f, b"abc   ");
        ascii_field(&mut f, b"abcdefgh");
        assert_eq!(&f, b"abcdef");
        c_string_field(&mut f, b"abcdefgh");
        assert_eq!(&f, b"abcde\0");
        assert_eq!(c_string_bytes(&f), b"abcde");
        c_string_field(&mut f, b"x");
        assert_eq!(c_string_bytes(&f), b"x");
        assert_eq!(c_string_bytes(b"full"), b"full");
    }
}
