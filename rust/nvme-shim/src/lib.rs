//! The dpublk device interface (placeholder until filled in).
#![no_std]
