//! OpenTelemetry traces: each role's `invocation` span (gateway, shard, worker) exported over
//! OTLP, one trace per invocation across processes and across call chains.
//!
//! **When.** Only when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (a gRPC endpoint, like
//! `http://collector:4317`) and `OTEL_SDK_DISABLED` is not `true`. Otherwise nothing is
//! installed and [`enabled`] is false: the roles skip every step below, so a cluster without a
//! collector pays one relaxed atomic load per span.
//!
//! **How a trace crosses roles.** The W3C trace context travels as a `traceparent` string:
//!
//! - the gateway's span takes as parent the request's `traceparent` header, if it has one (a
//!   client's, or a guest's call to another function), and puts its own context on the
//!   invocation (`Invocation::traceparent`, proto field 16);
//! - the shard's span is that context's child, and replaces it with its own for the worker;
//! - the worker's span is the shard's child; the guest gets the worker span's context as its
//!   request's `traceparent` header, and a call the guest makes carries the guest's own
//!   `traceparent` if it set one, else the worker span's. So a called function's gateway span
//!   is a child of its caller's worker span, in the caller's trace.
//!
//! **What each span says** (OpenTelemetry's FaaS conventions plus Turnpike's): the gateway
//! `faas.invocation_id`, `faas.trigger` (`http`, `pubsub` for an asynchronous invocation run
//! from the queue, `timer` for a schedule's), `faas.invoked_name` (`APP/FUNCTION`),
//! `turnpike.class`, `turnpike.tenant`; the shard `turnpike.queued_ms` (waiting for
//! placement, at the gate included); the worker `faas.coldstart` (the first invocation of the
//! function in this worker process), `turnpike.parked_ms` and `turnpike.swapped_ms` (time
//! preempted, and swapped out, while it waited for a slot back). Span names: `gateway`,
//! `shard`, `worker` (`otel.name`), kinds server, internal, server.
//!
//! **Export.** A batch span processor (`OTEL_BSP_*` honoured) hands spans to the OTLP gRPC
//! exporter on a small runtime of its own (the processor's thread has none, and tonic needs
//! one). [`Telemetry`] flushes what is left when dropped, at the end of the process.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_opentelemetry::OpenTelemetrySpanExt as _;

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported (a [`Telemetry`] was installed in this process).
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// The W3C `traceparent` header's name.
pub const TRACEPARENT: &str = "traceparent";

/// Why telemetry could not start (the process runs on without it).
#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTEL_EXPORTER_OTLP_ENDPOINT={endpoint:?}: {reason}")]
    Endpoint { endpoint: String, reason: String },
    #[error("the exporter's runtime: {0}")]
    Runtime(#[source] std::io::Error),
}

/// The installed tracer provider: flushes and shuts down when dropped.
#[derive(Debug)]
pub struct Telemetry {
    provider: SdkTracerProvider,
}

impl Telemetry {
    /// A tracer provider exporting to `OTEL_EXPORTER_OTLP_ENDPOINT` as `service` (the role:
    /// `turnpike-gateway`, `turnpike-up`, ...), and the layer that feeds it the `tracing`
    /// spans; `None` when the endpoint is unset or `OTEL_SDK_DISABLED=true`.
    pub fn from_env<S>(
        service: &str,
    ) -> Result<Option<(Self, impl tracing_subscriber::Layer<S>)>, TelemetryError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let disabled =
            std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.trim().eq_ignore_ascii_case("true"));
        let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok();
        Self::with(service, endpoint.as_deref(), disabled)
    }

    /// [`Telemetry::from_env`] with the two variables' values given.
    pub fn with<S>(
        service: &str,
        endpoint: Option<&str>,
        disabled: bool,
    ) -> Result<Option<(Self, impl tracing_subscriber::Layer<S>)>, TelemetryError>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let endpoint = endpoint.map(str::trim).filter(|e| !e.is_empty());
        let (Some(endpoint), false) = (endpoint.map(str::to_string), disabled) else {
            return Ok(None);
        };
        let parsed: http::Uri = endpoint.parse().map_err(|e| TelemetryError::Endpoint {
            endpoint: endpoint.clone(),
            reason: format!("not a URL: {e}"),
        })?;
        if !matches!(parsed.scheme_str(), Some("http" | "https")) || parsed.host().is_none() {
            return Err(TelemetryError::Endpoint {
                endpoint,
                reason: "an OTLP/gRPC endpoint is `http://HOST:PORT` (4317 by default)".into(),
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .thread_name("turnpike-otlp")
            .build()
            .map_err(TelemetryError::Runtime)?;
        let exporter = {
            let _entered = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .build()
                .map_err(|e| TelemetryError::Endpoint {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?
        };
        let exporter = OnRuntime {
            inner: exporter,
            runtime,
        };
        let resource = opentelemetry_sdk::Resource::builder()
            .with_service_name(service.to_string())
            .build();
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("turnpike");
        let layer = tracing_opentelemetry::layer().with_tracer(tracer);
        ENABLED.store(true, Ordering::Relaxed);
        Ok(Some((Self { provider }, layer)))
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        ENABLED.store(false, Ordering::Relaxed);
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("exporting the last traces: {e}");
        }
    }
}

/// An exporter driven on its own runtime: the batch processor calls it from a plain thread,
/// and tonic's connections need a Tokio reactor.
#[derive(Debug)]
struct OnRuntime {
    inner: opentelemetry_otlp::SpanExporter,
    runtime: tokio::runtime::Runtime,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        self.runtime.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: std::time::Duration) -> OTelSdkResult {
        let _entered = self.runtime.enter();
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &opentelemetry_sdk::Resource) {
        self.inner.set_resource(resource);
    }
}

/// Makes `span`'s parent the context in `traceparent`, if it holds one.
pub fn set_parent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(traceparent) = traceparent else {
        return;
    };
    let carrier = HashMap::from([(TRACEPARENT.to_string(), traceparent.to_string())]);
    let context = TraceContextPropagator::new().extract(&carrier);
    let _ = span.set_parent(context);
}

/// `span`'s context as a `traceparent` value (`None` if it has none: telemetry off).
pub fn traceparent(span: &tracing::Span) -> Option<String> {
    let mut carrier: HashMap<String, String> = HashMap::new();
    TraceContextPropagator::new().inject_context(&span.context(), &mut carrier);
    carrier.remove(TRACEPARENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    type Registry = tracing_subscriber::Registry;

    #[test]
    fn without_an_endpoint_or_when_disabled_nothing_is_installed() {
        let none = Telemetry::with::<Registry>("test", None, false).expect("no error");
        assert!(none.is_none());
        let blank = Telemetry::with::<Registry>("test", Some("  "), false).expect("no error");
        assert!(blank.is_none());
        let disabled = Telemetry::with::<Registry>("test", Some("http://127.0.0.1:4317"), true)
            .expect("no error");
        assert!(disabled.is_none());
        assert!(!enabled());
    }

    #[test]
    fn a_malformed_endpoint_is_refused_naming_it() {
        for bad in ["collector:4317", "ftp://collector:4317", "http://"] {
            let Err(e) = Telemetry::with::<Registry>("test", Some(bad), false) else {
                panic!("{bad} accepted");
            };
            let text = e.to_string();
            assert!(
                text.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && text.contains(bad),
                "{text}"
            );
        }
        assert!(!enabled());
    }

    #[test]
    fn a_traceparent_round_trips_through_a_span_only_with_telemetry() {
        // Without a tracer installed, a span has no context to give.
        let span = tracing::info_span!("x");
        set_parent(
            &span,
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        assert_eq!(traceparent(&span), None);
    }
}
