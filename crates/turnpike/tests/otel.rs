//! Traces over OTLP: `turnpike up` with `OTEL_EXPORTER_OTLP_ENDPOINT` pointing at a collector
//! run here, in process (the OTLP/gRPC trace service, on tonic). One chained invocation - the
//! demo's `chain` (bottom class) calling `hello` (which runs at the top class) - must arrive as
//! one trace: for each invocation a gateway, a shard and a worker span, each the child of the
//! one before, and the called invocation's gateway span the child of the calling one's worker
//! span; with the FaaS attributes and Turnpike's. The received trace is printed (as
//! docs/design-notes.md shows it).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;

/// A span as received: its ids, name, service and attributes.
#[derive(Clone, Debug)]
struct Received {
    trace: Vec<u8>,
    id: Vec<u8>,
    parent: Vec<u8>,
    name: String,
    service: String,
    attributes: HashMap<String, String>,
}

#[derive(Default, Clone)]
struct Collector(Arc<Mutex<Vec<Received>>>);

fn text(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| (kv.key.clone(), text(&kv.value)))
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut received = self.0.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let resource = resource_spans
                .resource
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(Received {
                        trace: span.trace_id,
                        id: span.span_id,
                        parent: span.parent_span_id,
                        name: span.name,
                        service: service.clone(),
                        attributes: attributes(&span.attributes),
                    });
                }
            }
        }
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_invocation_is_one_trace_across_gateway_shard_and_worker() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address: SocketAddr = listener.local_addr().expect("address");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(turnpike_wire::rpc::incoming(listener)),
    );
    let data = tempfile::tempdir().expect("a data dir");
    let endpoint = format!("http://{address}");
    let (_up, gateway, _, _) = common::up_printing_with_env(
        data.path(),
        &[],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        ],
    );
    let (status, answer) = common::get(gateway, "/chain?to=/hello").await;
    assert_eq!(status, 200, "{answer}");
    assert!(answer.contains("ran at critical"), "{answer}");
    let outer_id = answer
        .lines()
        .find_map(|l| l.strip_prefix("x-turnpike-invocation: "))
        .expect("the invocation header")
        .trim()
        .to_string();

    // Six spans: gateway, shard and worker for each of the two invocations.
    let started = Instant::now();
    let spans = loop {
        let spans = collector.0.lock().expect("lock").clone();
        if spans.len() >= 6 {
            break spans;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "6 spans expected in 30 s, received {spans:#?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    print_tree(&spans);
    assert_eq!(spans.len(), 6, "{spans:#?}");
    let trace = &spans[0].trace;
    assert!(
        spans.iter().all(|s| &s.trace == trace),
        "one trace: {spans:#?}"
    );
    assert!(
        spans.iter().all(|s| s.service == "turnpike-up"),
        "{spans:#?}"
    );
    let by_name = |name: &str, invoked: &str| -> Received {
        spans
            .iter()
            .find(|s| {
                s.name == name
                    && (name != "gateway" || s.attributes["faas.invoked_name"] == invoked)
            })
            .cloned()
            .unwrap_or_else(|| panic!("no {name} span for {invoked}: {spans:#?}"))
    };
    let outer = by_name("gateway", "demo/chain");
    let inner = by_name("gateway", "demo/hello");
    assert_eq!(outer.attributes["faas.invocation_id"], outer_id);
    assert_ne!(inner.attributes["faas.invocation_id"], outer_id);
    for (gateway, class) in [(&outer, "batch"), (&inner, "critical")] {
        assert_eq!(gateway.attributes["faas.trigger"], "http");
        assert_eq!(gateway.attributes["class"], class, "{gateway:#?}");
        let invocation = &gateway.attributes["faas.invocation_id"];
        let of = |name: &str| {
            spans
                .iter()
                .find(|s| {
                    s.name == name && s.attributes.get("faas.invocation_id") == Some(invocation)
                })
                .cloned()
                .unwrap_or_else(|| panic!("no {name} span of invocation {invocation}: {spans:#?}"))
        };
        let (shard, worker) = (of("shard"), of("worker"));
        assert_eq!(
            shard.parent, gateway.id,
            "the shard's span is the gateway's child"
        );
        assert_eq!(
            worker.parent, shard.id,
            "the worker's span is the shard's child"
        );
        assert!(
            shard.attributes.contains_key("turnpike.queued_ms"),
            "{shard:#?}"
        );
        for key in [
            "faas.coldstart",
            "turnpike.queued_ms",
            "turnpike.parked_ms",
            "turnpike.swapped_ms",
        ] {
            assert!(worker.attributes.contains_key(key), "no {key}: {worker:#?}");
        }
        if gateway.id == outer.id {
            assert!(
                outer.parent.is_empty(),
                "the outer invocation is the trace's root"
            );
            // The called function's gateway span is a child of the caller's worker span.
            assert_eq!(inner.parent, worker.id, "{spans:#?}");
        }
    }
}

/// The received spans as a tree, with their attributes.
fn print_tree(spans: &[Received]) {
    fn walk(spans: &[Received], parent: &[u8], depth: usize) {
        for span in spans.iter().filter(|s| s.parent == parent) {
            let mut attributes: Vec<_> = span.attributes.iter().collect();
            attributes.sort();
            let shown: Vec<String> = attributes
                .iter()
                .filter(|(k, _)| {
                    !k.starts_with("code.")
                        && !k.starts_with("thread.")
                        && k.as_str() != "busy_ns"
                        && k.as_str() != "idle_ns"
                })
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            eprintln!(
                "{}{} [{}] {}",
                "  ".repeat(depth),
                span.name,
                hex(&span.id),
                shown.join(" ")
            );
            walk(spans, &span.id, depth + 1);
        }
    }
    eprintln!(
        "trace {} (service {}):",
        hex(&spans[0].trace),
        spans[0].service
    );
    walk(spans, &[], 1);
}
