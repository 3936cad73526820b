//! Bus Master Enable and the hang test hook: a hung controller holds the
//! command it took; once the host cleared Bus Master Enable, the command
//! ends without touching guest memory, and the controller catches up with
//! the CC.EN = 0 written during the hang.

use std::time::{Duration, Instant};

use super::*;

/// Waits until `done` holds, for at most 10 s.
fn wait_for(what: &str, done: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Puts a 4 KiB read of LBA 0 into `DATA` on queue 1 and rings its
/// doorbell.
fn submit_read(host: &mut Host, cid: u16) {
    let (_, sq, _) = host.io.iter_mut().find(|(q, _, _)| *q == 1).unwrap();
    let mut r = BlockRange {
        nsid: 1,
        slba: 0,
        blocks: 8,
        fua: false,
        deallocate: false,
    }
    .encode(io::READ, cid);
    r.prp1.set(DATA);
    Host::push(&host.mem, sq, &r);
    let tail = sq.index;
    host.write32(
        regs::doorbell_offset(1, DoorbellKind::SubmissionTail, 0),
        tail,
    );
}

#[test]
fn no_dma_without_bus_mastering() {
    let mut host = Host::new();
    host.create_pair(1, 16);
    let data = pattern(4096, 3);
    host.ns.write_at(0, &data).unwrap();
    host.ctrl.set_bus_master(false);
    // A command submitted now is not even fetched.
    submit_read(&mut host, 77);
    assert!(!host.ctrl.service_queues(0));
    assert_eq!(host.read_mem(DATA, 4096), vec![0; 4096]);
    assert_eq!(host.read32(regs::CSTS) & Csts::CFS, 0, "not a fault");
    // With bus mastering back, it runs.
    host.ctrl.set_bus_master(true);
    assert!(host.ctrl.service_queues(0));
    let (_, _, cq) = host.io.iter_mut().find(|(q, _, _)| *q == 1).unwrap();
    let cqe = Host::pop(&host.mem, cq).expect("completion");
    assert_eq!((cqe.command_id(), cqe.status()), (77, Status::SUCCESS));
    assert_eq!(host.read_mem(DATA, 4096), data);
}

#[test]
fn held_command_ends_without_dma_once_bus_master_is_cleared() {
    let mut host = Host::new();
    host.create_pair(1, 16);
    host.ns.write_at(0, &pattern(4096, 9)).unwrap();
    let canary = pattern(4096, 200);
    host.mem.write(DATA, &canary).unwrap();
    let irqs_before = host.irqs.raised.lock().unwrap().len();
    let cq_index = host.io[0].2.index;

    host.ctrl.set_hung(true);
    submit_read(&mut host, 6);
    // The worker takes the read, then holds it in the hang.
    let worker = {
        let ctrl = host.ctrl.clone();
        std::thread::spawn(move || ctrl.service_queues(0))
    };
    wait_for("the worker to hold the command", || {
        host.ctrl.hang.holding() == 1
    });
    // The host gives up on the device: CC.EN = 0, which the hung
    // controller does not act on, then bus mastering off.
    host.write32(regs::CC, 0);
    assert_eq!(
        host.read32(regs::CSTS) & Csts::RDY,
        Csts::RDY,
        "hung: still ready"
    );
    host.ctrl.set_bus_master(false);
    // The device comes back: the held read ends without DMA, no
    // completion, no interrupt, and the pending CC.EN = 0 resets it.
    host.ctrl.set_hung(false);
    assert!(worker.join().unwrap());
    wait_for("the reset", || host.read32(regs::CSTS) & Csts::RDY == 0);
    assert_eq!(host.read_mem(DATA, canary.len()), canary);
    assert_eq!(host.ctrl.dropped_commands(), 1);
    assert!(host.ctrl.refused_accesses() >= 1);
    assert_eq!(host.irqs.raised.lock().unwrap().len(), irqs_before);
    let (_, _, cq) = &host.io[0];
    let mut b = [0u8; 16];
    host.mem
        .read(cq.base + u64::from(cq_index) * 16, &mut b)
        .unwrap();
    assert_ne!(
        CompletionEntry::from_bytes(&b).phase(),
        cq.phase,
        "no completion posted"
    );
    assert_eq!(host.read32(regs::CSTS) & Csts::CFS, 0, "not a fault");
}

#[test]
fn hung_controller_processes_admin_commands_when_it_comes_back() {
    let mut host = Host::new();
    host.ctrl.set_hung(true);
    let cid = host.next_cid();
    let sqe = {
        let mut id = Identify {
            cns: cns::CONTROLLER,
            cntid: 0,
            nsid: 0,
            prp1: DATA,
            prp2: 0,
        }
        .encode(0);
        id.set_cid(cid);
        id
    };
    Host::push(&host.mem, &mut host.asq, &sqe);
    host.write32(
        regs::doorbell_offset(0, DoorbellKind::SubmissionTail, 0),
        host.asq.index,
    );
    assert!(
        Host::pop(&host.mem, &mut host.acq).is_none(),
        "hung: no completion"
    );
    host.ctrl.set_hung(false);
    let cqe = Host::pop(&host.mem, &mut host.acq).expect("completion after the hang");
    assert_eq!((cqe.command_id(), cqe.status()), (cid, Status::SUCCESS));
}
