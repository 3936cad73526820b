//! Feeds pseudo-random bytes to every decoder: nothing may panic, and
//! decode/encode must be stable (decoding a re-encoded command yields the
//! same fields).

use nvme_shim::cqe::CompletionEntry;
use nvme_shim::dptr::{self, SglDescriptor};
use nvme_shim::identify::{IdentifyController, IdentifyNamespace};
use nvme_shim::log_page::ErrorLogEntry;
use nvme_shim::registers;
use nvme_shim::sqe::{
    self, Abort, BlockRange, CreateIoCq, CreateIoSq, DatasetManagement, DoorbellBufferConfig,
    DsmRange, Features, GetLogPage, Identify, SubmissionEntry,
};
use nvme_shim::vendor::{self, VendorCommand};
use nvme_shim::wire::Wire;

/// xorshift64*: deterministic, dependency-free.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn check_sqe(sqe: &SubmissionEntry) {
    let cid = sqe.cid();
    let cq = CreateIoCq::decode(sqe);
    assert_eq!(CreateIoCq::decode(&cq.encode(cid)), cq);
    let sq = CreateIoSq::decode(sqe);
    assert_eq!(CreateIoSq::decode(&sq.encode(cid)), sq);
    let id = Identify::decode(sqe);
    assert_eq!(Identify::decode(&id.encode(cid)), id);
    let log = GetLogPage::decode(sqe);
    assert_eq!(GetLogPage::decode(&log.encode(cid)), log);
    let _ = log.bytes();
    let feat = Features::decode(sqe);
    assert_eq!(Features::decode(&feat.encode(true, cid)), feat);
    let db = DoorbellBufferConfig::decode(sqe);
    assert_eq!(DoorbellBufferConfig::decode(&db.encode(cid)), db);
    let ab = Abort::decode(sqe);
    assert_eq!(Abort::decode(&ab.encode(cid)), ab);
    let rw = BlockRange::decode(sqe);
    assert!(rw.blocks >= 1 && rw.blocks <= 0x1_0000);
    assert_eq!(BlockRange::decode(&rw.encode(sqe.opcode(), cid)), rw);
    let dsm = DatasetManagement::decode(sqe);
    assert!(dsm.ranges >= 1 && dsm.ranges <= 256);
    assert_eq!(DatasetManagement::decode(&dsm.encode(cid)), dsm);
    let _ = sqe::decode_number_of_queues(sqe.cdw11.get());
    let _ = sqe::delete_queue_qid(sqe);
    let _ = sqe.psdt();
    let sgl = sqe.sgl1();
    let _ = (sgl.kind(), sgl.subtype(), sgl.segment_descriptors());
    let _ = vendor::ssd_index(sqe);
    let _ = vendor::resize_bytes(sqe);
    if let Some(cmd) = VendorCommand::from_opcode(sqe.opcode()) {
        assert_eq!(cmd.opcode(), sqe.opcode());
    }
    assert_eq!(SubmissionEntry::from_bytes(&sqe.to_bytes()), *sqe);
}

#[test]
fn random_commands_decode_without_panics() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut page = [0u8; 4096];
    for _ in 0..20_000 {
        let mut bytes = [0u8; 64];
        rng.fill(&mut bytes);
        let sqe = SubmissionEntry::from_bytes(&bytes);
        assert_eq!(sqe.to_bytes(), bytes);
        check_sqe(&sqe);

        let mut cq = [0u8; 16];
        rng.fill(&mut cq);
        let cqe = CompletionEntry::from_bytes(&cq);
        let again = CompletionEntry::new(
            cqe.command_id(),
            cqe.queue(),
            cqe.head(),
            cqe.status(),
            cqe.phase(),
            cqe.result.get(),
        );
        assert_eq!(again.status_phase, cqe.status_phase);

        let mut sg = [0u8; 16];
        rng.fill(&mut sg);
        let desc = SglDescriptor::from_bytes(&sg);
        assert_eq!(desc.to_bytes(), sg);
        let _ = DsmRange::read_from(&sg);

        let (a, b) = (rng.next(), rng.next());
        let len = b >> (b % 64);
        let count = dptr::prp_count(a, len, 4096);
        assert!(count <= len.div_ceil(4096) + 1);
        let _ = dptr::prp2_use(a, len, 4096);
        assert!(dptr::prp_list_entries(a, 4096) <= 512);
        let off = (a % 0x2000) as usize;
        let _ = registers::decode_doorbell(off, (b % 16) as u8);
        let _ = registers::shadow_doorbell_needs_mmio(a as u16, b as u16, (a >> 16) as u16);
    }
    for _ in 0..200 {
        rng.fill(&mut page);
        let ctrl = IdentifyController::read_from(&page).unwrap();
        assert_eq!(ctrl.as_bytes(), &page[..]);
        let ns = IdentifyNamespace::read_from(&page).unwrap();
        let _ = ns.lba_shift();
        let _ = ErrorLogEntry::read_from(&page);
        let _ = vendor::SsdList::read_from(&page);
        let _ = vendor::VolumeList::read_from(&page);
        let _ = vendor::VolumeCreate::read_from(&page);
        let _ = vendor::Statistics::read_from(&page);
        let _ = vendor::FaultInjection::read_from(&page);
        let _ = vendor::ServiceSettings::read_from(&page);
        let _ = vendor::ObjectName::read_from(&page);
    }
    // Short inputs are refused, not read past.
    assert!(IdentifyController::read_from(&page[..4095]).is_none());
    assert!(vendor::SsdList::read_from(&[]).is_none());
}
