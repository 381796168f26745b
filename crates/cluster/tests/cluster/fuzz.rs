//! Fuzzing the link's frames against a real `Worker` service (an emulated worker on a
//! loopback port): random sequences of `InvocationFrame`s - invocations with random fields
//! (classes past the last, bad methods and headers, deadlines, streamed responses and
//! uploads), cancels, credits, body chunks and ends, on tags used once, twice or never -
//! sent on one `Run` stream. The worker must answer each invocation it took at most once, on
//! its own tag, end the stream once the caller's side ends, and be left with nothing running
//! (no leak); afterwards an ordinary call on a link still works.
//!
//! Sequences: `TURNPIKE_FUZZ_CASES` (default 50; `scripts/fuzz.sh` sends more). Generated
//! with proptest: a failing sequence is printed and shrunk.

use std::collections::HashMap;
use std::time::Duration;

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Endpoint;
use turnpike_wire::proto::{self, worker_client::WorkerClient};
use turnpike_wire::rpc;

use crate::common::serial;
use crate::emulated::{body, invocation};
use crate::link::{drained, link_to, start_worker_kept, HANG};

fn cases() -> u32 {
    std::env::var("TURNPIKE_FUZZ_CASES")
        .ok()
        .map(|c| c.parse().expect("TURNPIKE_FUZZ_CASES is a number"))
        .unwrap_or(50)
}

fn header() -> impl Strategy<Value = proto::Header> {
    (
        prop_oneof![Just("x-a".to_string()), "[ -~]{0,12}"],
        proptest::collection::vec(any::<u8>(), 0..12),
    )
        .prop_map(|(name, value)| proto::Header { name, value })
}

fn wire_invocation() -> impl Strategy<Value = proto::Invocation> {
    (
        (
            any::<u64>(),
            prop_oneof![Just("emulated".to_string()), "[ -~]{0,10}"],
            0u32..6,
            prop_oneof![
                Just("GET".to_string()),
                Just("POST".to_string()),
                "[ -~]{0,8}"
            ],
            prop_oneof![
                (0u64..40).prop_map(|ms| format!("/?ms={ms}")),
                "[ -~]{0,20}",
            ],
        ),
        (
            proptest::collection::vec(header(), 0..3),
            proptest::collection::vec(any::<u8>(), 0..64),
            0u32..10,
            0u64..4096,
            prop_oneof![Just(0u64), 1u64..500, Just(u64::MAX)],
        ),
        (
            any::<bool>(),
            prop_oneof![Just(0u64), 1u64..100_000],
            any::<bool>(),
            proptest::collection::vec(("[a-z:/]{0,12}", 0u32..4), 0..3),
            // A trace context, well-formed or not.
            "[0-9a-f-]{0,60}",
        ),
    )
        .prop_map(
            |(
                (id, function, class, method, path_and_query),
                (headers, body, depth, start_mb, deadline_ms_left),
                (streamed, response_bytes_max, request_streamed, limits, traceparent),
            )| proto::Invocation {
                id,
                function,
                class,
                method,
                path_and_query,
                headers,
                body: body.into(),
                depth,
                start_mb,
                deadline_ms_left,
                call_token: String::new(),
                streamed,
                response_bytes_max,
                request_streamed,
                concurrency_limits: limits
                    .into_iter()
                    .map(|(key, max)| proto::ConcurrencyLimit { key, max })
                    .collect(),
                traceparent,
            },
        )
}

/// An invocation frame (only an invocation), a control frame (cancel, credit, a body chunk,
/// a body's end), or, rarely, one that mixes them (the server takes it as a control frame).
fn frame() -> impl Strategy<Value = proto::InvocationFrame> {
    let invocation =
        (0u64..4, wire_invocation()).prop_map(|(tag, invocation)| proto::InvocationFrame {
            tag,
            invocation: Some(invocation),
            ..proto::InvocationFrame::default()
        });
    let control = (
        0u64..4,
        proptest::bool::weighted(0.3),
        prop_oneof![Just(0u64), any::<u64>(), 1u64..100_000],
        proptest::collection::vec(any::<u8>(), 0..64),
        proptest::bool::weighted(0.3),
    )
        .prop_map(
            |(tag, cancel, credit_bytes, chunk, end)| proto::InvocationFrame {
                tag,
                cancel,
                credit_bytes,
                chunk: chunk.into(),
                end,
                ..proto::InvocationFrame::default()
            },
        );
    let mixed = (control.clone(), wire_invocation()).prop_map(|(mut frame, invocation)| {
        frame.invocation = Some(invocation);
        frame
    });
    prop_oneof![5 => invocation, 4 => control, 1 => mixed]
}

/// Whether the server takes `frame` as an invocation (a frame with a control field is a
/// control frame).
fn is_invocation(frame: &proto::InvocationFrame) -> bool {
    !(frame.cancel || frame.credit_bytes > 0 || !frame.chunk.is_empty() || frame.end)
}

/// After the last frame, the caller's side stays open until no answer has come for this
/// long (its invocations run for at most 40 ms), then ends.
const QUIET: Duration = Duration::from_millis(100);

/// Sends `frames` on one `Run` stream and reads the answers until none has come for
/// [`QUIET`], then ends the caller's side and reads until the worker ends the stream: the
/// outcomes by tag, or why the exchange went wrong.
async fn run(
    client: &mut WorkerClient<tonic::transport::Channel>,
    frames: Vec<proto::InvocationFrame>,
) -> Result<HashMap<u64, usize>, String> {
    let (send, outbound) = tokio::sync::mpsc::channel(frames.len() + 1);
    for frame in frames {
        send.try_send(frame).expect("room for every frame");
    }
    let answers = match client.run(ReceiverStream::new(outbound)).await {
        Ok(answers) => answers,
        // Refusing the whole stream is an answer too.
        Err(_) => return Ok(HashMap::new()),
    };
    let mut answers = answers.into_inner();
    let mut outcomes: HashMap<u64, usize> = HashMap::new();
    let mut send = Some(send);
    loop {
        let wait = if send.is_some() { QUIET } else { HANG };
        match tokio::time::timeout(wait, answers.message()).await {
            Err(_) if send.is_some() => send = None,
            Err(_) => {
                return Err(format!(
                    "the stream is still open {HANG:?} after the caller's side ended"
                ))
            }
            Ok(Err(_) | Ok(None)) => return Ok(outcomes),
            Ok(Ok(Some(frame))) => {
                if frame.outcome.is_some() {
                    *outcomes.entry(frame.tag).or_default() += 1;
                }
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_frames_on_a_run_stream_leave_the_worker_whole() {
    let _serial = serial().await;
    let (address, worker) = start_worker_kept().await;
    let endpoint = Endpoint::from_shared(format!("http://{address}")).expect("an address is a URI");
    let client = WorkerClient::new(rpc::channel(endpoint));
    let mut runner = TestRunner::new(Config {
        cases: cases(),
        failure_persistence: None,
        ..Config::default()
    });
    let handle = tokio::runtime::Handle::current();
    let strategy = proptest::collection::vec(frame(), 1..12);
    // proptest's runner is synchronous: each case runs on this runtime from a blocking
    // thread.
    let result = tokio::task::spawn_blocking(move || {
        runner.run(&strategy, |frames| {
            // Each invocation frame is answered once on its tag; one whose request body is
            // streamed may wait for a body end that never comes (and is cancelled, unanswered,
            // when the stream ends).
            let invocations: Vec<(u64, bool)> = frames
                .iter()
                .filter(|f| is_invocation(f))
                .map(|f| {
                    let uploaded = f.invocation.as_ref().is_some_and(|i| i.request_streamed);
                    (f.tag, uploaded)
                })
                .collect();
            let mut client = client.clone();
            let outcomes = handle
                .block_on(run(&mut client, frames))
                .map_err(TestCaseError::fail)?;
            for tag in 0..4 {
                let got = outcomes.get(&tag).copied().unwrap_or(0);
                let sent = invocations.iter().filter(|(t, _)| *t == tag).count();
                let certain = invocations.iter().filter(|(t, up)| *t == tag && !up).count();
                prop_assert!(
                    (certain..=sent).contains(&got),
                    "tag {tag}: {got} outcomes for {sent} invocations ({certain} without a streamed body)"
                );
            }
            Ok(())
        })
    })
    .await
    .expect("the runner");
    if let Err(e) = result {
        panic!("{e}");
    }
    // Nothing left running, and the worker still serves.
    drained(&worker).await;
    let outcome = tokio::time::timeout(HANG, link_to(address).call(invocation("/?ms=1")))
        .await
        .expect("answered")
        .expect("answered");
    assert_eq!(body(&outcome), "emulated ms=1 mb=2\n");
}
