//! Prometheus metrics: latency histograms by class, each role's exposition (written by the
//! `prometheus-client` crate's OpenMetrics text encoder), and the small HTTP server each role
//! uses to serve `GET /metrics`.
//!
//! A role's metrics are read when scraped, not kept twice: its `metrics()` gathers its
//! counters and gauges into an [`Exposition`] (families of samples, as the role's own atomics
//! and state give them) and renders it through a `prometheus_client` registry, whose encoder
//! writes the text (counters get their `_total` suffix from it, histograms their `_bucket`,
//! `_sum` and `_count` samples, and the exposition its `# EOF`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use prometheus_client::encoding::{DescriptorEncoder, NoLabelSet};
use prometheus_client::metrics::MetricType;
use tokio::net::TcpListener;
use turnpike_policy::{ClassId, ClassSet};

/// Upper bounds of the latency buckets, seconds.
pub const BUCKETS: [f64; 14] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

/// A latency histogram, lock-free.
#[derive(Debug, Default)]
pub struct Histogram {
    /// Non-cumulative counts per bucket; the last slot is `+Inf`.
    counts: [AtomicU64; BUCKETS.len() + 1],
    sum_ns: AtomicU64,
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let at = BUCKETS
            .iter()
            .position(|&b| s <= b)
            .unwrap_or(BUCKETS.len());
        self.counts[at].fetch_add(1, Ordering::Relaxed);
        self.sum_ns.fetch_add(
            u64::try_from(d.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Its state: the sum in seconds, the count, and the bucket counts by upper bound
    /// (non-cumulative, the last `+Inf`).
    fn snapshot(&self) -> HistogramValue {
        let buckets: Vec<(f64, u64)> = self
            .counts
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let le = BUCKETS.get(i).copied().unwrap_or(f64::INFINITY);
                (le, c.load(Ordering::Relaxed))
            })
            .collect();
        HistogramValue {
            sum: self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9,
            count: buckets.iter().map(|(_, n)| n).sum(),
            buckets,
        }
    }
}

/// One histogram per price class.
#[derive(Debug)]
pub struct ClassHistograms {
    classes: ClassSet,
    by_class: Vec<Histogram>,
}

impl ClassHistograms {
    pub fn new(classes: &ClassSet) -> Self {
        Self {
            classes: classes.clone(),
            by_class: (0..classes.len()).map(|_| Histogram::default()).collect(),
        }
    }

    pub fn observe(&self, class: usize, d: Duration) {
        if let Some(h) = self.by_class.get(class) {
            h.observe(d);
        }
    }

    pub fn get(&self, class: usize) -> Option<&Histogram> {
        self.by_class.get(class)
    }

    /// Adds them to `out` as the histogram family `name`, one per class (label `class`).
    pub fn render(&self, out: &mut Exposition, name: &str, help: &str) {
        let series = self
            .classes
            .iter()
            .map(|(id, class)| {
                (
                    label("class", &class.name),
                    self.by_class[id.index()].snapshot(),
                )
            })
            .collect();
        out.families.push(Family {
            name: name.to_string(),
            help: help.to_string(),
            values: Values::Histograms(series),
        });
    }
}

/// A sample's labels, `(name, value)` pairs.
pub type Labels = Vec<(String, String)>;

/// Samples of one family: each label set and its value.
pub type Samples = Vec<(Labels, f64)>;

/// One label.
pub fn label(name: &str, value: &str) -> Labels {
    vec![(name.to_string(), value.to_string())]
}

/// A role's metrics at one scrape, rendered by `prometheus-client`'s text encoder.
#[derive(Debug, Default)]
pub struct Exposition {
    families: Vec<Family>,
}

#[derive(Debug)]
struct Family {
    name: String,
    help: String,
    values: Values,
}

#[derive(Debug)]
enum Values {
    Counters(Samples),
    Gauges(Samples),
    Histograms(Vec<(Labels, HistogramValue)>),
}

#[derive(Debug)]
struct HistogramValue {
    sum: f64,
    count: u64,
    /// Non-cumulative counts by upper bound; the last `+Inf`.
    buckets: Vec<(f64, u64)>,
}

impl Exposition {
    pub fn new() -> Self {
        Self::default()
    }

    /// The OpenMetrics text of everything added, ending `# EOF`.
    pub fn render(self) -> String {
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(self));
        let mut out = String::new();
        // Writing into a `String` cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &registry);
        out
    }
}

impl prometheus_client::collector::Collector for Exposition {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        for family in &self.families {
            let kind = match family.values {
                Values::Counters(_) => MetricType::Counter,
                Values::Gauges(_) => MetricType::Gauge,
                Values::Histograms(_) => MetricType::Histogram,
            };
            let mut metric = encoder.encode_descriptor(&family.name, &family.help, None, kind)?;
            match &family.values {
                Values::Counters(samples) => {
                    for (labels, value) in samples {
                        metric
                            .encode_family(labels)?
                            .encode_counter::<NoLabelSet, _, f64>(value, None)?;
                    }
                }
                Values::Gauges(samples) => {
                    for (labels, value) in samples {
                        metric.encode_family(labels)?.encode_gauge(value)?;
                    }
                }
                Values::Histograms(series) => {
                    for (labels, h) in series {
                        metric
                            .encode_family(labels)?
                            .encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
                    }
                }
            }
        }
        Ok(())
    }
}

/// Adds one family to `out`: `kind` is `counter` (its `name` ends `_total`, which the
/// encoder writes itself) or `gauge`.
pub fn family(out: &mut Exposition, name: &str, kind: &str, help: &str, samples: &[(Labels, f64)]) {
    let (name, values) = match kind {
        "counter" => (
            name.strip_suffix("_total").unwrap_or(name),
            Values::Counters(samples.to_vec()),
        ),
        _ => (name, Values::Gauges(samples.to_vec())),
    };
    out.families.push(Family {
        name: name.to_string(),
        help: help.to_string(),
        values,
    });
}

/// One sample per class of `classes`, lowest first, valued by `value`.
pub fn by_class(classes: &ClassSet, value: impl Fn(ClassId) -> f64) -> Samples {
    classes
        .iter()
        .map(|(id, class)| (label("class", &class.name), value(id)))
        .collect()
}

/// A single unlabelled sample.
pub fn single(value: f64) -> Samples {
    vec![(Vec::new(), value)]
}

/// Renders a role's metrics on demand.
pub type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// Serves `GET /metrics` (anything else 404) on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    render: Render,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let handler = move |request: http::Request<hyper::body::Incoming>| {
        let (status, body) = if request.uri().path() == "/metrics" {
            (http::StatusCode::OK, render())
        } else {
            (
                http::StatusCode::NOT_FOUND,
                "metrics are at /metrics\n".into(),
            )
        };
        let mut response = http::Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static(
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            ),
        );
        std::future::ready(response)
    };
    let over_limit = |open| {
        let mut response = http::Response::new(Full::new(Bytes::from(format!(
            "{open} connections are open to this metrics endpoint, its limit\n"
        ))));
        *response.status_mut() = http::StatusCode::SERVICE_UNAVAILABLE;
        response
    };
    let limits = crate::http_server::EdgeLimits::default();
    crate::http_server::serve(listener, handler, shutdown, limits, over_limit).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_count_everything() {
        let classes = ClassSet::default_four();
        let h = ClassHistograms::new(&classes);
        h.observe(0, Duration::from_micros(500));
        h.observe(0, Duration::from_millis(30));
        h.observe(0, Duration::from_secs(60));
        let mut out = Exposition::new();
        h.render(&mut out, "x_seconds", "Latency.");
        let text = out.render();
        for line in [
            "# TYPE x_seconds histogram\n",
            "x_seconds_bucket{le=\"0.001\",class=\"batch\"} 1\n",
            "x_seconds_bucket{le=\"0.05\",class=\"batch\"} 2\n",
            "x_seconds_bucket{le=\"30.0\",class=\"batch\"} 2\n",
            "x_seconds_bucket{le=\"+Inf\",class=\"batch\"} 3\n",
            "x_seconds_count{class=\"batch\"} 3\n",
            "x_seconds_count{class=\"critical\"} 0\n",
        ] {
            assert!(text.contains(line), "no {line:?} in {text}");
        }
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(h.get(0).map(Histogram::count), Some(3));
    }

    #[test]
    fn counters_keep_their_total_suffix_and_gauges_their_labels() {
        let mut out = Exposition::new();
        family(
            &mut out,
            "t_responses_total",
            "counter",
            "Responses.",
            &[(label("code", "2xx"), 7.0)],
        );
        family(&mut out, "t_in_flight", "gauge", "In flight.", &single(3.0));
        let text = out.render();
        assert!(text.contains("# TYPE t_responses counter\n"), "{text}");
        assert!(text.contains("t_responses_total{code=\"2xx\"} 7"), "{text}");
        assert!(text.contains("# TYPE t_in_flight gauge\n"), "{text}");
        assert!(text.contains("\nt_in_flight 3"), "{text}");
    }
}
