//! Workloads: the invocations a run offers, in arrival order (paper 4.1, and trace replay).
//!
//! Synthetic: `functions` functions, each with a class drawn by the classes' weights (a
//! function keeps its class, so class and runtime are uncorrelated) and, for `per-function`
//! service, its own Pareto(alpha, x_m) with x_m ~ Normal(x_m mean, sd) truncated below at 1 ms.
//! Invocations pick a function uniformly; arrivals are evenly spaced (`fixed`) or exponential
//! (`poisson`) at the rate that offers `load` of all cores: `load x cores / mean runtime`.
//! Each invocation's peak memory is uniform in [memory_min_mb, memory_max_mb]; it starts at
//! `start_mb` and grows linearly with the work done.
//!
//! Trace: the standard replay of `traces/README.md`, compressed in time so that the trace's
//! own offered work matches `load`; classes by trigger type or by weight.
//!
//! The same config, load and seed give the same invocations whatever the scheduler, so
//! schedulers are compared on identical work.

use rand::{Rng, SeedableRng};
use rand_distr::{Distribution, StandardNormal};
use rand_pcg::Pcg64Mcg;
use turnpike_policy::{ClassId, ClassSet};

use crate::config::{ArrivalKind, ClassRule, ClassesBy, Config, ServiceConfig};
use crate::trace::{Trace, TraceArrivals};

const NS_PER_MS: f64 = 1e6;
const NS_PER_S: f64 = 1e9;
/// Per-function x_m below this is raised to it: a runtime cannot be zero or negative.
const XM_MIN_MS: f64 = 1.0;

/// One invocation as offered to the cluster.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Arrival {
    pub at_ns: u64,
    pub function: u32,
    pub class: ClassId,
    pub runtime_ns: u64,
    pub start_mb: u64,
    pub peak_mb: u64,
}

#[derive(Debug, Clone, Copy)]
struct Function {
    class: ClassId,
    /// Pareto scale for per-function service.
    xm_ms: f64,
}

#[derive(Debug)]
enum Source<'a> {
    Synthetic {
        next_ns: f64,
        gap_ns: f64,
        poisson: bool,
    },
    Trace {
        arrivals: TraceArrivals<'a>,
        trace: &'a Trace,
    },
}

#[derive(Debug)]
pub struct Workload<'a> {
    config: &'a Config,
    rng: Pcg64Mcg,
    functions: Vec<Function>,
    /// Cumulative class weights, for per-invocation class draws.
    class_cdf: Vec<f64>,
    source: Source<'a>,
    end_ns: u64,
    mean_runtime_ns: f64,
}

impl<'a> Workload<'a> {
    /// The workload of `config` at offered `load`. `trace` must be loaded when arrivals are
    /// from a trace.
    pub fn new(
        config: &'a Config,
        classes: &ClassSet,
        load: f64,
        trace: Option<&'a Trace>,
    ) -> Self {
        let mut rng = Pcg64Mcg::seed_from_u64(config.seed ^ 0x5eed_f00c_7e57_10e5);
        let w = &config.workload;
        // In `ClassSet` order (ascending price), whatever the order of the file.
        let weight_of = |name: &str| {
            config
                .classes
                .iter()
                .find(|c| c.name == name)
                .map_or(0.0, |c| c.weight)
        };
        let class_cdf = cumulative(classes.iter().map(|(_, c)| weight_of(&c.name)));
        let cores = f64::from(config.cluster.machines) * f64::from(config.cluster.cores);
        let end_ns = (w.duration_s * NS_PER_S) as u64;
        let (functions, source, mean_runtime_ns) = match (w.arrivals, trace) {
            (ArrivalKind::Trace, Some(trace)) => {
                let t = w
                    .trace
                    .as_ref()
                    .expect("validated: trace arrivals have a [workload.trace]");
                let from = (t.start_minute as usize).min(trace.minutes());
                let count = (t.minutes as usize).min(trace.minutes() - from);
                let functions = trace
                    .functions
                    .iter()
                    .map(|f| {
                        let class = match t.class_rule {
                            ClassRule::Trigger => t
                                .trigger_classes
                                .get(&f.trigger)
                                .and_then(|name| classes.by_name(name))
                                .unwrap_or(ClassId(0)),
                            ClassRule::Weights => draw(&mut rng, &class_cdf),
                        };
                        Function { class, xm_ms: 0.0 }
                    })
                    .collect();
                // The compression that offers `load` depends on the minutes actually replayed,
                // which depend on the compression: iterate to the fixed point (it settles in a
                // few steps; the mix of functions changes slowly over minutes).
                let mut replayed = count;
                let (mut speedup, mut mean_runtime_ns) = (1.0, 0.0);
                for _ in 0..8 {
                    mean_runtime_ns = trace.mean_runtime_ms(from, replayed) * NS_PER_MS;
                    let wanted_per_s = load * cores / (mean_runtime_ns / NS_PER_S).max(1e-9);
                    let rate = trace.rate_per_s(from, replayed).max(f64::MIN_POSITIVE);
                    speedup = wanted_per_s / rate;
                    let minutes = (w.duration_s * speedup / 60.0).ceil() as usize;
                    let next = minutes.clamp(1, count);
                    if next == replayed {
                        break;
                    }
                    replayed = next;
                }
                let arrivals = TraceArrivals::new(trace, from, count, speedup);
                (
                    functions,
                    Source::Trace { arrivals, trace },
                    mean_runtime_ns,
                )
            }
            _ => {
                let service = w
                    .service
                    .as_ref()
                    .expect("validated: synthetic arrivals have a service");
                let functions: Vec<Function> = (0..w.functions)
                    .map(|_| {
                        let class = draw(&mut rng, &class_cdf);
                        let xm_ms = match *service {
                            ServiceConfig::PerFunction {
                                xm_mean_ms,
                                xm_sd_ms,
                                ..
                            } => {
                                let z: f64 = StandardNormal.sample(&mut rng);
                                (xm_mean_ms + xm_sd_ms * z).max(XM_MIN_MS)
                            }
                            _ => 0.0,
                        };
                        Function { class, xm_ms }
                    })
                    .collect();
                let mean_runtime_ns = NS_PER_MS
                    * match *service {
                        ServiceConfig::Exponential { mean_ms } => mean_ms,
                        ServiceConfig::Deterministic { ms } => ms,
                        ServiceConfig::Lognormal { median_ms, sigma } => {
                            median_ms * (sigma * sigma / 2.0).exp()
                        }
                        ServiceConfig::Pareto { alpha, xm_ms } => alpha * xm_ms / (alpha - 1.0),
                        ServiceConfig::PerFunction { alpha, .. } => {
                            let mean_xm = functions.iter().map(|f| f.xm_ms).sum::<f64>()
                                / functions.len() as f64;
                            alpha * mean_xm / (alpha - 1.0)
                        }
                    };
                let gap_ns = mean_runtime_ns / (load * cores);
                let poisson = w.arrivals == ArrivalKind::Poisson;
                // The first arrival: one gap in (Poisson), or half a gap (fixed spacing).
                let next_ns = if poisson {
                    exp(&mut rng) * gap_ns
                } else {
                    gap_ns / 2.0
                };
                let source = Source::Synthetic {
                    next_ns,
                    gap_ns,
                    poisson,
                };
                (functions, source, mean_runtime_ns)
            }
        };
        Self {
            config,
            rng,
            functions,
            class_cdf,
            source,
            end_ns,
            mean_runtime_ns,
        }
    }

    /// Mean runtime of an invocation (what offered load is computed from).
    pub fn mean_runtime_ns(&self) -> f64 {
        self.mean_runtime_ns
    }

    /// Arrivals stop at this time.
    pub fn end_ns(&self) -> u64 {
        self.end_ns
    }

    /// The next invocation, or `None` when arrivals are over.
    pub fn next_arrival(&mut self) -> Option<Arrival> {
        let w = &self.config.workload;
        match &mut self.source {
            Source::Synthetic {
                next_ns,
                gap_ns,
                poisson,
            } => {
                let at_ns = *next_ns as u64;
                if at_ns >= self.end_ns {
                    return None;
                }
                *next_ns += if *poisson {
                    exp(&mut self.rng) * *gap_ns
                } else {
                    *gap_ns
                };
                let function = self.rng.random_range(0..self.functions.len() as u32);
                let f = self.functions[function as usize];
                let class = match w.classes_by {
                    ClassesBy::Function => f.class,
                    ClassesBy::Invocation => draw(&mut self.rng, &self.class_cdf),
                };
                let service = w.service.as_ref().expect("validated");
                let runtime_ms = match *service {
                    ServiceConfig::Exponential { mean_ms } => mean_ms * exp(&mut self.rng),
                    ServiceConfig::Deterministic { ms } => ms,
                    ServiceConfig::Lognormal { median_ms, sigma } => {
                        let z: f64 = StandardNormal.sample(&mut self.rng);
                        median_ms * (sigma * z).exp()
                    }
                    ServiceConfig::Pareto { alpha, xm_ms } => pareto(&mut self.rng, alpha, xm_ms),
                    ServiceConfig::PerFunction { alpha, .. } => {
                        pareto(&mut self.rng, alpha, f.xm_ms)
                    }
                };
                let peak_mb = self.rng.random_range(w.memory_min_mb..=w.memory_max_mb);
                Some(Arrival {
                    at_ns,
                    function,
                    class,
                    runtime_ns: to_ns(runtime_ms),
                    start_mb: w.start_mb.min(peak_mb),
                    peak_mb,
                })
            }
            Source::Trace { arrivals, trace } => {
                let (at_ns, function) = arrivals.next(&mut self.rng)?;
                if at_ns >= self.end_ns {
                    return None;
                }
                let f = &trace.functions[function];
                let runtime_ms = f.sample_runtime_ms(self.rng.random::<f64>());
                let peak_mb = f.sample_memory_mb(self.rng.random::<f64>()).round() as u64;
                let class = match w.classes_by {
                    ClassesBy::Function => self.functions[function].class,
                    ClassesBy::Invocation => draw(&mut self.rng, &self.class_cdf),
                };
                Some(Arrival {
                    at_ns,
                    function: function as u32,
                    class,
                    runtime_ns: to_ns(runtime_ms),
                    start_mb: w.start_mb.min(peak_mb),
                    peak_mb,
                })
            }
        }
    }
}

/// At least 1 ns: a zero runtime would make slowdown undefined.
fn to_ns(ms: f64) -> u64 {
    ((ms * NS_PER_MS) as u64).max(1)
}

/// A unit exponential variate.
fn exp(rng: &mut impl Rng) -> f64 {
    -(1.0 - rng.random::<f64>()).ln()
}

fn pareto(rng: &mut impl Rng, alpha: f64, xm_ms: f64) -> f64 {
    xm_ms / (1.0 - rng.random::<f64>()).powf(1.0 / alpha)
}

fn cumulative(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut acc = 0.0;
    let mut cdf: Vec<f64> = weights
        .map(|w| {
            acc += w;
            acc
        })
        .collect();
    for c in &mut cdf {
        *c /= acc;
    }
    cdf
}

fn draw(rng: &mut impl Rng, cdf: &[f64]) -> ClassId {
    let u = rng.random::<f64>();
    let i = cdf.iter().position(|&c| u < c).unwrap_or(cdf.len() - 1);
    ClassId(i as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(service: &str, arrivals: &str) -> Config {
        let text = crate::config::preset_toml("fig4")
            .expect("preset")
            .replace(
                "arrivals = \"poisson\"",
                &format!("arrivals = \"{arrivals}\""),
            )
            .replace(
                "kind = \"per-function\"\nalpha = 2.5\nxm_mean_ms = 50.0\nxm_sd_ms = 20.0",
                service,
            );
        Config::parse(&text).expect("valid")
    }

    fn collect(c: &Config, load: f64) -> Vec<Arrival> {
        let classes = c.class_set().expect("classes");
        let mut w = Workload::new(c, &classes, load, None);
        std::iter::from_fn(|| w.next_arrival()).collect()
    }

    #[test]
    fn offered_load_matches_the_request() {
        let c = config("kind = \"exponential\"\nmean_ms = 100.0", "poisson");
        let arrivals = collect(&c, 0.5);
        // 800 cores at 0.5 with 100 ms jobs: 4000/s for 60 s = 240,000 invocations.
        let n = arrivals.len() as f64;
        assert!((n - 240_000.0).abs() < 3.0 * 240_000f64.sqrt(), "{n}");
        let work: f64 = arrivals.iter().map(|a| a.runtime_ns as f64).sum::<f64>() / 1e9;
        let offered = work / (60.0 * 800.0);
        assert!((offered - 0.5).abs() < 0.01, "offered {offered}");
        assert!(arrivals.windows(2).all(|p| p[0].at_ns <= p[1].at_ns));
    }

    #[test]
    fn same_seed_same_work_and_classes_are_bimodal() {
        let c = config(
            "kind = \"per-function\"\nalpha = 2.5\nxm_mean_ms = 50.0\nxm_sd_ms = 20.0",
            "fixed",
        );
        let a = collect(&c, 0.3);
        assert_eq!(a, collect(&c, 0.3));
        let mut by_class = [0usize; 4];
        for x in &a {
            by_class[x.class.index()] += 1;
            assert!((100..=10240).contains(&x.peak_mb) && x.start_mb == 100);
        }
        // Weights 0.35/0.15/0.15/0.35 per function: the ends dominate.
        assert!(
            by_class[0] > by_class[1] && by_class[3] > by_class[2],
            "{by_class:?}"
        );
        // Fixed spacing: all gaps equal (to rounding).
        let g0 = a[1].at_ns - a[0].at_ns;
        assert!(a
            .windows(2)
            .all(|p| (p[1].at_ns - p[0].at_ns).abs_diff(g0) <= 1));
    }
}
