//! Prometheus metrics: latency histograms by class, the text exposition format, and the small
//! HTTP server each role uses to serve `GET /metrics`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
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

    /// Writes the `_bucket`, `_sum` and `_count` lines with `labels` (`k="v",...`).
    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let mut cumulative = 0;
        for (i, c) in self.counts.iter().enumerate() {
            cumulative += c.load(Ordering::Relaxed);
            let le = BUCKETS.get(i).map_or("+Inf".to_string(), |b| b.to_string());
            let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
        }
        let sum = self.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {cumulative}");
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

    pub fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        for (id, class) in self.classes.iter() {
            self.by_class[id.index()].render(out, name, &class_label(&class.name));
        }
    }
}

/// Writes one metric family with a value per label set.
pub fn family(out: &mut String, name: &str, kind: &str, help: &str, samples: &[(String, f64)]) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
    for (labels, value) in samples {
        if labels.is_empty() {
            let _ = writeln!(out, "{name} {value}");
        } else {
            let _ = writeln!(out, "{name}{{{labels}}} {value}");
        }
    }
}

/// The label of a per-class sample.
fn class_label(name: &str) -> String {
    format!("class=\"{name}\"")
}

/// One sample per class of `classes`, lowest first, valued by `value`.
pub fn by_class(classes: &ClassSet, value: impl Fn(ClassId) -> f64) -> Vec<(String, f64)> {
    classes
        .iter()
        .map(|(id, class)| (class_label(&class.name), value(id)))
        .collect()
}

/// A single unlabelled sample.
pub fn single(value: f64) -> Vec<(String, f64)> {
    vec![(String::new(), value)]
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
            http::HeaderValue::from_static("text/plain; version=0.0.4"),
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
        let h = Histogram::default();
        h.observe(Duration::from_micros(500));
        h.observe(Duration::from_millis(30));
        h.observe(Duration::from_secs(60));
        let mut out = String::new();
        h.render(&mut out, "x", "class=\"a\"");
        assert!(
            out.contains("x_bucket{class=\"a\",le=\"0.001\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("x_bucket{class=\"a\",le=\"0.05\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("x_bucket{class=\"a\",le=\"30\"} 2\n"), "{out}");
        assert!(
            out.contains("x_bucket{class=\"a\",le=\"+Inf\"} 3\n"),
            "{out}"
        );
        assert!(out.contains("x_count{class=\"a\"} 3\n"), "{out}");
        assert_eq!(h.count(), 3);
    }
}
