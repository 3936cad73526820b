//! Every PDU type built, parsed back, and refused when broken.

use std::vec::Vec;

use crate::encode::{self, HeaderBuf};
use crate::error::fes;
use crate::header::{FLAG_DDGST, FLAG_HDGST, FLAG_LAST_PDU, FLAG_SUCCESS};
use crate::pdu::{IcReq, IcResp};
use crate::receiver::DataDigest;
use crate::{Negotiated, Pdu, PduError, PduType, Receiver, Stage};

const BOTH: Negotiated = Negotiated {
    header_digest: true,
    data_digest: true,
    receive_pda: 0,
    send_pda: 0,
};
const NONE: Negotiated = Negotiated {
    header_digest: false,
    data_digest: false,
    receive_pda: 0,
    send_pda: 0,
};

fn whole(h: &HeaderBuf, data: &[u8]) -> Vec<u8> {
    let mut out = std::vec![0u8; h.plen()];
    assert_eq!(encode::assemble(&mut out, h, data), Some(h.plen()));
    out
}

fn controller(n: Negotiated) -> Receiver {
    Receiver {
        stage: Stage::Ready(n),
        ..Receiver::controller(8192, 65536)
    }
}

fn host(n: Negotiated) -> Receiver {
    Receiver {
        stage: Stage::Ready(n),
        ..Receiver::host(1 << 20)
    }
}

fn sqe(cid: u16) -> [u8; 64] {
    let mut s = [0u8; 64];
    s[0] = 0x01;
    s[2..4].copy_from_slice(&cid.to_le_bytes());
    for (i, b) in s.iter_mut().enumerate().skip(4) {
        *b = i as u8;
    }
    s
}

#[test]
fn icreq_and_icresp() {
    let req = IcReq {
        pfv: 0,
        hpda: 3,
        header_digest: true,
        data_digest: false,
        maxr2t: 7,
    };
    let bytes = whole(&encode::ic_req(&req), &[]);
    assert_eq!(bytes.len(), 128);
    assert_eq!(&bytes[..8], &[0, 0, 128, 0, 128, 0, 0, 0]);
    let rx = Receiver::controller(8192, 65536);
    let got = rx.parse(&bytes).expect("valid ICReq");
    assert_eq!(got.pdu, Pdu::IcReq(req));
    assert_eq!(got.data_digest, DataDigest::Absent);

    // PFV 1, HPDA 32, a digest flag, a short PLEN, a wrong HLEN.
    let mut b = bytes.clone();
    b[8] = 1;
    let e = rx.parse(&b).unwrap_err();
    assert_eq!((e.fes(), e.fei()), (fes::UNSUPPORTED_PARAMETER, 8));
    let mut b = bytes.clone();
    b[10] = 32;
    assert_eq!(rx.parse(&b).unwrap_err().fei(), 10);
    let mut b = bytes.clone();
    b[1] = FLAG_HDGST;
    assert!(matches!(rx.parse(&b), Err(PduError::DigestFlags { .. })));
    let mut b = bytes.clone();
    b[4] = 127;
    assert!(matches!(
        rx.parse(&b[..127]),
        Err(PduError::PduLength { .. })
    ));
    let mut b = bytes.clone();
    b[2] = 24;
    assert_eq!(rx.parse(&b).unwrap_err().fei(), 2);
    // A second ICReq is a sequence error; the host never receives one.
    let e = controller(NONE).parse(&bytes).unwrap_err();
    assert_eq!(
        (e.fes(), e),
        (fes::SEQUENCE_ERROR, PduError::Sequence(PduType::IcReq))
    );
    assert_eq!(
        Receiver::host(4096).parse(&bytes),
        Err(PduError::WrongDirection(PduType::IcReq))
    );

    let resp = IcResp {
        pfv: 0,
        cpda: 0,
        header_digest: true,
        data_digest: true,
        maxh2cdata: 65536,
    };
    let bytes = whole(&encode::ic_resp(&resp), &[]);
    let hrx = Receiver::host(1 << 20);
    assert_eq!(hrx.parse(&bytes).map(|r| r.pdu), Ok(Pdu::IcResp(resp)));
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&4095u32.to_le_bytes());
    assert_eq!(hrx.parse(&b).unwrap_err().fei(), 12);
    let mut b = bytes.clone();
    b[12..16].copy_from_slice(&4098u32.to_le_bytes());
    assert_eq!(hrx.parse(&b).unwrap_err().fei(), 12);
}

#[test]
fn capsule_command_with_and_without_data() {
    for n in [NONE, BOTH] {
        let rx = controller(n);
        let s = sqe(5);
        let plain = whole(&encode::capsule_cmd(&s, 0, &n).unwrap(), &[]);
        let hd = if n.header_digest { 4 } else { 0 };
        assert_eq!(plain.len(), 72 + hd);
        assert_eq!(plain[3], 0, "no data: PDO 0");
        let Ok(r) = rx.parse(&plain) else {
            panic!("capsule refused")
        };
        assert_eq!(
            r.pdu,
            Pdu::CapsuleCmd(crate::pdu::CapsuleCmd { sqe: &s, data: &[] })
        );

        let data: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let full = whole(&encode::capsule_cmd(&s, data.len(), &n).unwrap(), &data);
        assert_eq!(usize::from(full[3]), 72 + hd);
        let r = rx.parse(&full).expect("capsule with data");
        let Pdu::CapsuleCmd(c) = r.pdu else {
            panic!("not a capsule")
        };
        assert_eq!((c.sqe, c.data), (&s, &data[..]));
        let want = if n.data_digest {
            DataDigest::Valid
        } else {
            DataDigest::Absent
        };
        assert_eq!(r.data_digest, want);

        // More in-capsule data than the controller takes.
        let big = std::vec![0u8; 8193];
        let b = whole(&encode::capsule_cmd(&s, big.len(), &n).unwrap(), &big);
        let e = rx.parse(&b).unwrap_err();
        assert_eq!(e.fes(), fes::DATA_LIMIT_EXCEEDED);
        // PDO off by 4, PDO inside the header, PDO with no data.
        let mut b = full.clone();
        b[3] += 4;
        assert_eq!(rx.parse(&b).unwrap_err().fei(), 3);
        let mut b = full.clone();
        b[3] = 8;
        assert_eq!(rx.parse(&b).unwrap_err().fei(), 3);
        let mut b = plain.clone();
        b[3] = 72;
        assert_eq!(rx.parse(&b).unwrap_err().fei(), 3);
        // PLEN beyond the bytes given, and a truncated buffer.
        let mut b = full.clone();
        b[4..8].copy_from_slice(&(full.len() as u32 + 1).to_le_bytes());
        assert!(matches!(rx.parse(&b), Err(PduError::Truncated { .. })));
        assert!(rx.parse(&full[..full.len() - 1]).is_err());
        assert!(rx.parse(&full[..5]).is_err());
    }
}

#[test]
fn digests_are_checked_against_negotiation() {
    let s = sqe(9);
    let data = [0xa5u8; 512];
    let with = whole(&encode::capsule_cmd(&s, data.len(), &BOTH).unwrap(), &data);
    let without = whole(&encode::capsule_cmd(&s, data.len(), &NONE).unwrap(), &data);
    assert_eq!(with[1] & (FLAG_HDGST | FLAG_DDGST), FLAG_HDGST | FLAG_DDGST);
    // Digest flags that differ from the negotiation are refused either way.
    assert!(matches!(
        controller(NONE).parse(&with),
        Err(PduError::DigestFlags { .. })
    ));
    assert!(matches!(
        controller(BOTH).parse(&without),
        Err(PduError::DigestFlags { .. })
    ));
    // A flipped header byte: header digest error, FES 3.
    let mut b = with.clone();
    b[20] ^= 1;
    let e = controller(BOTH).parse(&b).unwrap_err();
    assert_eq!(e.fes(), fes::HEADER_DIGEST_ERROR);
    // A flipped data byte: the PDU parses, the data digest is invalid.
    let mut b = with.clone();
    b[100] ^= 0x80;
    let r = controller(BOTH).parse(&b).expect("framing is fine");
    assert!(matches!(r.data_digest, DataDigest::Invalid { .. }));
    // Only the header digest negotiated: no data digest flag allowed.
    let hd_only = Negotiated {
        data_digest: false,
        ..BOTH
    };
    let b = whole(
        &encode::capsule_cmd(&s, data.len(), &hd_only).unwrap(),
        &data,
    );
    assert_eq!(b[1] & FLAG_DDGST, 0);
    assert!(controller(hd_only).parse(&b).is_ok());
    assert!(controller(BOTH).parse(&b).is_err());
}

#[test]
fn alignment_follows_the_pda() {
    let n = Negotiated {
        receive_pda: 3,
        send_pda: 3,
        ..NONE
    };
    let data = [1u8; 100];
    let b = whole(
        &encode::capsule_cmd(&sqe(1), data.len(), &n).unwrap(),
        &data,
    );
    assert_eq!(b[3], 80, "72 rounded up to 16");
    assert!(controller(n).parse(&b).is_ok());
    // The same PDU for a controller whose CPDA is 0 has the wrong PDO.
    assert!(controller(NONE).parse(&b).is_err());
}

#[test]
fn capsule_response_and_r2t() {
    for n in [NONE, BOTH] {
        let rx = host(n);
        let cqe: [u8; 16] = core::array::from_fn(|i| i as u8 + 1);
        let b = whole(&encode::capsule_resp(&cqe, &n), &[]);
        assert_eq!(
            rx.parse(&b).map(|r| r.pdu),
            Ok(Pdu::CapsuleResp(crate::pdu::CapsuleResp { cqe: &cqe }))
        );
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 4]);
        let plen = longer.len() as u32;
        longer[4..8].copy_from_slice(&plen.to_le_bytes());
        assert!(matches!(rx.parse(&longer), Err(PduError::PduLength { .. })));
        // A controller never receives a response.
        assert_eq!(
            controller(n).parse(&b),
            Err(PduError::WrongDirection(PduType::CapsuleResp))
        );

        let b = whole(&encode::r2t(3, 0x77, 4096, 8192, &n), &[]);
        let Ok(r) = rx.parse(&b) else {
            panic!("R2T refused")
        };
        assert_eq!(
            r.pdu,
            Pdu::R2T(crate::pdu::R2T {
                cccid: 3,
                ttag: 0x77,
                r2to: 4096,
                r2tl: 8192
            })
        );
        let zero = whole(&encode::r2t(3, 0x77, 4096, 0, &n), &[]);
        assert_eq!(rx.parse(&zero).unwrap_err().fei(), 16);
    }
}

#[test]
fn data_pdus() {
    for n in [NONE, BOTH] {
        let data: Vec<u8> = (0..3000u32).map(|i| (i % 251) as u8).collect();
        let h = encode::h2c_data(4, 9, 8192, data.len(), true, &n).unwrap();
        let b = whole(&h, &data);
        let r = controller(n).parse(&b).expect("H2CData");
        assert_eq!(
            r.pdu,
            Pdu::H2CData(crate::pdu::H2CData {
                cccid: 4,
                ttag: 9,
                datao: 8192,
                last: true,
                data: &data
            })
        );
        // DATAL that disagrees with the data area.
        let mut bad = b.clone();
        bad[16] ^= 1;
        if n.header_digest {
            // The header digest catches it first.
            assert_eq!(
                controller(n).parse(&bad).unwrap_err().fes(),
                fes::HEADER_DIGEST_ERROR
            );
        } else {
            assert_eq!(controller(n).parse(&bad).unwrap_err().fei(), 16);
        }
        // More than MAXH2CDATA in one PDU.
        let small = Receiver {
            max_data_pdu: 2048,
            ..controller(n)
        };
        assert_eq!(small.parse(&b).unwrap_err().fes(), fes::DATA_LIMIT_EXCEEDED);
        // Before ICReq, data is a sequence error.
        assert_eq!(
            Receiver::controller(8192, 65536)
                .parse(&b)
                .unwrap_err()
                .fes(),
            fes::SEQUENCE_ERROR
        );

        let h = encode::c2h_data(4, 0, data.len(), true, true, &n).unwrap();
        let b = whole(&h, &data);
        assert_eq!(
            b[1] & (FLAG_LAST_PDU | FLAG_SUCCESS),
            FLAG_LAST_PDU | FLAG_SUCCESS
        );
        let r = host(n).parse(&b).expect("C2HData");
        let Pdu::C2HData(c) = r.pdu else {
            panic!("not C2HData")
        };
        assert_eq!(
            (c.cccid, c.datao, c.last, c.success, c.data),
            (4, 0, true, true, &data[..])
        );
        assert!(encode::c2h_data(4, 0, 10, false, true, &n).is_err());
        if !n.header_digest {
            let mut bad = b.clone();
            bad[1] &= !FLAG_LAST_PDU;
            assert!(matches!(host(n).parse(&bad), Err(PduError::Flags { .. })));
        }
        // A data PDU with no data at all.
        assert!(encode::h2c_data(4, 9, 0, 0, true, &n).is_err());
        let mut empty = b[..24].to_vec();
        empty[1] = if n.header_digest { FLAG_HDGST } else { 0 };
        empty[3] = 0;
        if n.header_digest {
            let d = crate::digest::crc32c(&empty[..24]);
            empty.extend_from_slice(&d.to_le_bytes());
        }
        let plen = empty.len() as u32;
        empty[4..8].copy_from_slice(&plen.to_le_bytes());
        assert!(matches!(
            host(n).parse(&empty),
            Err(PduError::PduLength { .. })
        ));
    }
}

#[test]
fn termination_requests() {
    let culprit = [0x42u8; 200];
    let h = encode::term_req(false, fes::HEADER_DIGEST_ERROR, 0, &culprit);
    let b = whole(&h, &[]);
    assert_eq!(b.len(), 152, "at most 128 bytes of the PDU in error");
    for rx in [Receiver::host(4096), host(BOTH)] {
        let Ok(r) = rx.parse(&b) else {
            panic!("C2HTermReq refused")
        };
        let Pdu::C2HTermReq(t) = r.pdu else {
            panic!("not a C2HTermReq")
        };
        assert_eq!((t.fes, t.fei, t.header_in_error), (3, 0, &culprit[..128]));
    }
    let h = encode::term_req(true, fes::INVALID_HEADER_FIELD, 2, &[]);
    let b = whole(&h, &[]);
    assert_eq!(b.len(), 24);
    assert!(matches!(
        Receiver::controller(0, 4096).parse(&b).map(|r| r.pdu),
        Ok(Pdu::H2CTermReq(_))
    ));
    let mut bad = b.clone();
    bad[8] = 7;
    assert_eq!(
        Receiver::controller(0, 4096).parse(&bad).unwrap_err().fei(),
        8
    );
    let mut bad = b.clone();
    bad[4] = 153;
    let mut long = bad.clone();
    long.resize(153, 0);
    assert!(matches!(
        Receiver::controller(0, 4096).parse(&long),
        Err(PduError::PduLength { .. })
    ));
}

#[test]
fn frame_bounds_the_receive_buffer() {
    let rx = controller(BOTH);
    // A header promising 4 GiB is refused from its 8 bytes alone.
    let ch = [
        0x04,
        FLAG_HDGST | FLAG_DDGST,
        72,
        76,
        0xff,
        0xff,
        0xff,
        0xff,
    ];
    assert!(rx.frame(&ch).is_err());
    for t in 0..=255u8 {
        for plen in [0u32, 8, 24, 28, 72, 76, 128, 152, 4096 + 80, u32::MAX] {
            let mut ch = [t, 0, 0, 0, 0, 0, 0, 0];
            ch[4..8].copy_from_slice(&plen.to_le_bytes());
            for (hlen, pdo, flags) in [(24, 0, 0), (72, 76, 3), (128, 0, 0), (24, 28, 1)] {
                ch[1] = flags;
                ch[2] = hlen;
                ch[3] = pdo;
                if let Ok(l) = rx.frame(&ch) {
                    assert!(l.plen() <= rx.max_plen());
                    assert!(l.data.0 + l.data.1 <= l.plen());
                }
            }
        }
    }
}
