//! dpuemu's initiator against a remote that lies: a proxy between the
//! initiator and a real target corrupts what the target sends (a flipped
//! byte, a wild length, a cut stream) at a seeded place in each session.
//! The initiator must answer with an error or carry on, never panic or
//! hang, and report a size only if it is consistent.

use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;

use super::volume_tests::temp_dir;
use super::*;
use crate::nvmf::initiator::{RemoteNamespace, RemoteSpec};

/// What the proxy does to the bytes the target sends on a connection.
#[derive(Clone, Copy, Debug)]
enum Harm {
    /// XORs the byte at this stream offset with a non-zero mask.
    Flip(u64, u8),
    /// Overwrites four bytes at this offset with this value (lengths,
    /// offsets, NSZE...).
    Word(u64, u32),
    /// Ends the connection after this many bytes.
    Cut(u64),
}

/// Forwards `from` to `to`, harming the stream as `harm` says. Once it
/// has harmed, a connection that goes quiet is closed, so an initiator
/// waiting for bytes a corrupted length promised sees the end instead of
/// its 30-second timeout.
fn forward(mut from: TcpStream, mut to: TcpStream, harm: Option<Harm>) {
    let _ = from.set_read_timeout(Some(Duration::from_millis(300)));
    let mut at = 0u64;
    let mut harmed = false;
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if harmed {
                    break;
                }
                continue;
            }
            Err(_) => break,
        };
        let chunk = &mut buf[..n];
        let range = at..at + n as u64;
        match harm {
            Some(Harm::Flip(off, mask)) if range.contains(&off) => {
                chunk[(off - at) as usize] ^= mask;
                harmed = true;
            }
            Some(Harm::Word(off, value)) if range.contains(&off) => {
                for (i, b) in value.to_le_bytes().iter().enumerate() {
                    if let Some(byte) = chunk.get_mut((off - at) as usize + i) {
                        *byte = *b;
                    }
                }
                harmed = true;
            }
            Some(Harm::Cut(off)) if range.contains(&off) => {
                let _ = to.write_all(&chunk[..(off - at) as usize]);
                break;
            }
            _ => {}
        }
        if to.write_all(chunk).is_err() {
            break;
        }
        at += n as u64;
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// A proxy to `target` that harms the target's bytes on every connection
/// as `harm_for(connection number)` says.
fn proxy(
    target: std::net::SocketAddr,
    harm_for: impl Fn(u64) -> Option<Harm> + Send + 'static,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("proxy");
    let address = listener.local_addr().expect("proxy address");
    let count = AtomicU64::new(0);
    thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(target) else {
                continue;
            };
            let harm = harm_for(count.fetch_add(1, Ordering::Relaxed));
            let (Ok(c2), Ok(s2)) = (client.try_clone(), server.try_clone()) else {
                continue;
            };
            thread::spawn(move || forward(client, server, None));
            thread::spawn(move || forward(s2, c2, harm));
        }
    });
    address
}

#[test]
fn the_initiator_survives_a_lying_remote() {
    let (_cleanup, dir) = temp_dir("initiator-hostile");
    let text = format!(
        "[port 1]\nservice 0\n[subsystem {SUBSYSTEM}]\nports 1\nallow-any-host\n\
         namespace 1 file {}/back.img 2M\n",
        dir.display()
    );
    let back = Target::start(&config::parse(&text).expect("config"), &[]).expect("target");
    let target = back.ports()[0].address;
    let (mut connected, mut refused, mut io_failed) = (0, 0, 0);
    let mut seed = 0x5eed_u64;
    for session in 0..150u64 {
        // The harm lands on the admin queue (connection 0) or the I/O
        // queue (1), anywhere in the first 12 KiB the target sends (ICResp,
        // Connect, properties, Identify data, I/O responses).
        let which = next(&mut seed) % 2;
        let off = next(&mut seed) % 12_288;
        let harm = match next(&mut seed) % 3 {
            0 => Harm::Flip(off, (next(&mut seed) % 255 + 1) as u8),
            1 => Harm::Word(off, next(&mut seed) as u32),
            _ => Harm::Cut(off),
        };
        let address = proxy(target, move |n| (n == which).then_some(harm));
        let spec = RemoteSpec {
            address,
            subnqn: SUBSYSTEM.into(),
            nsid: 1,
        };
        let Ok(ns) = RemoteNamespace::connect(spec) else {
            refused += 1;
            continue;
        };
        connected += 1;
        // Whatever it accepted is a sane geometry.
        assert!(ns.size() > 0 && ns.size().is_multiple_of(1 << ns.lba_shift()));
        assert!(
            (9..=16).contains(&ns.lba_shift()),
            "session {session}: {harm:?}"
        );
        let data = pattern(16 << 10, session as u8);
        let mut back_buf = vec![0u8; 16 << 10];
        let worked = ns
            .write_at(0, &data)
            .and_then(|()| ns.read_at(0, &mut back_buf));
        if worked.is_err() {
            io_failed += 1;
        }
    }
    assert!(
        refused > 10,
        "the harm reached the set-up: {refused} refused"
    );
    assert!(connected > 10, "some sessions got through: {connected}");
    // The target itself is unharmed: a clean session still works.
    let ns = RemoteNamespace::connect(RemoteSpec {
        address: target,
        subnqn: SUBSYSTEM.into(),
        nsid: 1,
    })
    .expect("a clean session");
    let data = pattern(8192, 99);
    ns.write_at(4096, &data).expect("write");
    let mut got = vec![0u8; 8192];
    ns.read_at(4096, &mut got).expect("read");
    assert_eq!(got, data);
    eprintln!(
        "lying remote: {refused} refused, {connected} connected, {io_failed} of those failed I/O"
    );
}
