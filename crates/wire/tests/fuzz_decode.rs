//! Fuzzing the wire: every RPC message decoded from arbitrary bytes, and from valid encodings
//! with bytes changed, then converted to the roles' own types as a role does on receiving it.
//! A peer's bad message must end in a decode error or a refusal, never a panic.
//!
//! Cases per message type: `TURNPIKE_FUZZ_CASES` (default 2,000; `scripts/fuzz.sh` runs
//! more). Generated with proptest: a failing input is printed, shrunk, and kept in
//! `fuzz_decode.proptest-regressions` next to this file, replayed first on the next run.

use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;
use prost::Message;
use turnpike_policy::MachineId;
use turnpike_wire::convert;
use turnpike_wire::invocation::{Invocation, Outcome, Registered, Registration, Usage};
use turnpike_wire::proto;

fn config() -> ProptestConfig {
    let cases = std::env::var("TURNPIKE_FUZZ_CASES")
        .ok()
        .map(|c| c.parse().expect("TURNPIKE_FUZZ_CASES is a number"))
        .unwrap_or(2_000);
    ProptestConfig {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Decodes `bytes` as every message type and converts each that decodes, as the receiving
/// role would.
fn receive(bytes: &[u8]) {
    if let Ok(m) = proto::Invocation::decode(bytes) {
        let _ = Invocation::try_from(m);
    }
    if let Ok(frame) = proto::InvocationFrame::decode(bytes) {
        if let Some(m) = frame.invocation {
            let _ = Invocation::try_from(m);
        }
    }
    if let Ok(m) = proto::Outcome::decode(bytes) {
        let _ = Outcome::from(m);
    }
    if let Ok(frame) = proto::OutcomeFrame::decode(bytes) {
        if let Some(m) = frame.outcome {
            let _ = Outcome::from(m);
        }
        if let Some(head) = frame.head {
            let _ = turnpike_wire::body::Head::from(head);
        }
    }
    if let Ok(m) = proto::Usage::decode(bytes) {
        let _ = Usage::from(m);
    }
    if let Ok(m) = proto::WorkerInfo::decode(bytes) {
        let _ = Registration::from(m);
    }
    if let Ok(m) = proto::Registered::decode(bytes) {
        let _ = Registered::from(m);
    }
    if let Ok(m) = proto::IdleEntry::decode(bytes) {
        let _ = convert::idle_join_from_wire(&m);
    }
    if let Ok(m) = proto::WorkerRef::decode(bytes) {
        let _ = convert::idle_leave_from_wire(&m);
    }
    if let Ok(m) = proto::PollReply::decode(bytes) {
        let _ = convert::poll_reply_from_wire(MachineId(0), m);
    }
    let _ = proto::PollRequest::decode(bytes);
    let _ = proto::IdleLenReply::decode(bytes);
    let _ = proto::Component::decode(bytes);
    let _ = proto::Loaded::decode(bytes);
    let _ = proto::Empty::decode(bytes);
}

/// Valid encodings to start from: each message type with its fields set, at extremes.
fn seeds() -> Vec<Vec<u8>> {
    let header = proto::Header {
        name: "x-a".into(),
        value: b"1".to_vec(),
    };
    let invocation = proto::Invocation {
        id: 7,
        function: "f".into(),
        class: 2,
        method: "GET".into(),
        path_and_query: "/a?b".into(),
        headers: vec![header.clone()],
        body: bytes::Bytes::from_static(b"body"),
        depth: 1,
        start_mb: 64,
        deadline_ms_left: 5_000,
        call_token: "t".into(),
        ..proto::Invocation::default()
    };
    let outcome = proto::Outcome {
        ending: Some(proto::outcome::Ending::Response(proto::Response {
            status: 200,
            headers: vec![header],
            body: bytes::Bytes::from_static(b"ok"),
        })),
        usage: Some(proto::Usage {
            class: 1,
            cpu_ns: u64::MAX,
            ..proto::Usage::default()
        }),
        worker: 3,
        attempts: 1,
    };
    vec![
        invocation.encode_to_vec(),
        proto::InvocationFrame {
            tag: 1,
            invocation: Some(invocation),
            chunk: bytes::Bytes::from_static(b"c"),
            ..proto::InvocationFrame::default()
        }
        .encode_to_vec(),
        proto::OutcomeFrame {
            tag: 1,
            outcome: Some(outcome.clone()),
            ..proto::OutcomeFrame::default()
        }
        .encode_to_vec(),
        outcome.encode_to_vec(),
        proto::WorkerInfo {
            address: "http://10.0.0.1:7100".into(),
            memory_mb: 1024,
            cores: 1,
            lease_ms: 2_000,
            incarnation: u64::MAX,
        }
        .encode_to_vec(),
        proto::IdleEntry {
            worker: 1,
            free_mb: 10,
            functions: 2,
            idle_cores: 1,
            token: 9,
            seq: 3,
        }
        .encode_to_vec(),
    ]
}

/// A seed with `edits` (position, new byte) applied and `cut` bytes dropped from its end.
fn mutated(seed: usize, edits: &[(usize, u8)], cut: usize) -> Vec<u8> {
    let seeds = seeds();
    let mut bytes = seeds[seed % seeds.len()].clone();
    for &(at, byte) in edits {
        if !bytes.is_empty() {
            let at = at % bytes.len();
            bytes[at] = byte;
        }
    }
    bytes.truncate(bytes.len().saturating_sub(cut));
    bytes
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        receive(&bytes);
    }

    #[test]
    fn changed_valid_messages_decode_or_fail_cleanly(
        seed in 0usize..16,
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8),
        cut in 0usize..8,
    ) {
        receive(&mutated(seed, &edits, cut));
    }
}

/// The extreme a peer can send: a deadline of `u64::MAX` ms left (`Instant + Duration` must
/// not overflow: 584 million years fit).
#[test]
fn an_invocation_with_the_longest_deadline_is_received() {
    let message = proto::Invocation {
        method: "GET".into(),
        deadline_ms_left: u64::MAX,
        ..proto::Invocation::default()
    };
    let invocation = Invocation::try_from(message).expect("a valid invocation");
    assert!(invocation.deadline.is_some());
}
