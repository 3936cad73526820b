//! Fuzzes command decoding: any 64 bytes must decode, re-encode stably and
//! never panic; the trailing bytes are fed to the payload decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nvme_shim::dptr::SglDescriptor;
use nvme_shim::sqe::{
    BlockRange, CreateIoCq, CreateIoSq, DatasetManagement, Features, GetLogPage, Identify,
    SubmissionEntry,
};
use nvme_shim::vendor::{self, VendorCommand};
use nvme_shim::wire::Wire;

fuzz_target!(|data: &[u8]| {
    let Some(head) = data.get(..64) else {
        return;
    };
    let mut bytes = [0u8; 64];
    bytes.copy_from_slice(head);
    let sqe = SubmissionEntry::from_bytes(&bytes);
    assert_eq!(sqe.to_bytes(), bytes);
    let cid = sqe.cid();
    let cq = CreateIoCq::decode(&sqe);
    assert_eq!(CreateIoCq::decode(&cq.encode(cid)), cq);
    let sq = CreateIoSq::decode(&sqe);
    assert_eq!(CreateIoSq::decode(&sq.encode(cid)), sq);
    let id = Identify::decode(&sqe);
    assert_eq!(Identify::decode(&id.encode(cid)), id);
    let log = GetLogPage::decode(&sqe);
    assert_eq!(GetLogPage::decode(&log.encode(cid)), log);
    let feat = Features::decode(&sqe);
    assert_eq!(Features::decode(&feat.encode(false, cid)), feat);
    let rw = BlockRange::decode(&sqe);
    assert_eq!(BlockRange::decode(&rw.encode(sqe.opcode(), cid)), rw);
    let dsm = DatasetManagement::decode(&sqe);
    assert_eq!(DatasetManagement::decode(&dsm.encode(cid)), dsm);
    let sgl = sqe.sgl1();
    let _ = (sgl.kind(), sgl.segment_descriptors());
    let rest = &data[64..];
    let _ = SglDescriptor::read_from(rest);
    if let Some(cmd) = VendorCommand::from_opcode(sqe.opcode()) {
        let _ = vendor::ssd_index(&sqe);
        match cmd {
            VendorCommand::VolumeCreate => {
                let _ = vendor::VolumeCreate::read_from(rest);
            }
            VendorCommand::ServiceSet => {
                let _ = vendor::ServiceSettings::read_from(rest);
            }
            VendorCommand::FaultInject => {
                let _ = vendor::FaultInjection::read_from(rest);
            }
            VendorCommand::SnapshotCreate | VendorCommand::SnapshotClone => {
                let _ = vendor::ObjectName::read_from(rest);
            }
            _ => {}
        }
    }
});
