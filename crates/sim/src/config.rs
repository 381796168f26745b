//! An experiment as a TOML file: classes, cluster, workload, schedulers and loads.
//!
//! Every field has a documented default; unknown fields are refused. [`Config::parse`] checks
//! the whole file before anything runs, and every error names the field it is about.
//! `fig4`, `fig5` and `trace` are presets of this format (`turnpike sim preset NAME`).

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use turnpike_policy::placement::PlacementRule;
use turnpike_policy::{ClassSet, PriceClass};

/// Bad input: the message names the field or file and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Toml(String),
    #[error("config field `{field}`: {msg}")]
    Field { field: String, msg: String },
    #[error("unknown preset `{0}` (known: fig4, fig5, overload, trace, twin)")]
    UnknownPreset(String),
    #[error(transparent)]
    Trace(#[from] crate::trace::TraceError),
}

fn field(field: impl Into<String>, msg: impl Into<String>) -> ConfigError {
    ConfigError::Field {
        field: field.into(),
        msg: msg.into(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SchedulerKind {
    Hermod,
    Turnpike,
    Edf,
}

impl SchedulerKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Hermod => "hermod",
            Self::Turnpike => "turnpike",
            Self::Edf => "edf",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Seeds both the workload and the policies' RNG; the same seed reproduces a run exactly.
    #[serde(default = "one")]
    pub seed: u64,
    pub schedulers: Vec<SchedulerKind>,
    /// Offered load, as a fraction of all cores (1.0 = saturation on average).
    pub loads: Vec<f64>,
    pub classes: Vec<ClassConfig>,
    pub cluster: ClusterConfig,
    pub workload: WorkloadConfig,
    /// Repeat the experiment over cluster shapes (see [`crate::sweep`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sweep: Option<crate::sweep::SweepConfig>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClassConfig {
    pub name: String,
    pub price: f64,
    /// Relative share of functions (or invocations) in this class for synthetic workloads.
    #[serde(default = "one_f")]
    pub weight: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub machines: u32,
    pub cores: u32,
    /// Memory per machine; absent means unlimited (no swapping, no kills).
    #[serde(default)]
    pub memory_mb: Option<u64>,
    /// Swap space per machine (default 500 GB, the paper's SSD).
    #[serde(default = "swap_default")]
    pub swap_mb: u64,
    #[serde(default = "high_default")]
    pub high_watermark: f64,
    #[serde(default = "low_default")]
    pub low_watermark: f64,
    #[serde(default = "shards_default")]
    pub shards: u32,
    /// Machines polled per placement when the idle list cannot help (power-of-k).
    #[serde(default = "k_default")]
    pub k: u32,
    #[serde(default)]
    pub idle_list: bool,
    /// How shards rank machines: `class-aware` (default) or `paper`, the paper's rule as
    /// written (see `turnpike_policy::placement::PlacementRule` and docs/design-notes.md).
    #[serde(default, with = "placement_rule")]
    pub placement: PlacementRule,
    /// Class-aware rule: how many times in a row a shard may put a top-class invocation back
    /// rather than bind it where it would wait behind its own class (see
    /// `turnpike_policy::shard::ShardConfig`).
    #[serde(default = "top_class_defers_default")]
    pub top_class_defers_max: u32,
    /// Shards whose idle lists a dispatcher compares when joining.
    #[serde(default = "two")]
    pub shard_choices: u32,
    /// Join an idle list at this fraction of memory free (see `turnpike_policy::dispatcher`).
    #[serde(default = "join_default")]
    pub idle_join_free: f64,
    #[serde(default = "leave_default")]
    pub idle_leave_free: f64,
    #[serde(default = "update_default")]
    pub idle_update_change: f64,
    /// Also update the entry when the number of functions moved by this much.
    #[serde(default = "two")]
    pub idle_update_functions: u32,
    /// Time a shard spends on one placement decision (default 0: the paper does not simulate
    /// communication or decision latency).
    #[serde(default)]
    pub decision_delay_us: u64,
    /// Round trip of polling k machines, added to placements that poll (default 0).
    #[serde(default)]
    pub poll_delay_us: u64,
    /// Time an invocation spends outside the scheduler and its core - the trip from the
    /// client to its machine and its response's trip back, the machine's timer resolution -
    /// added to every invocation's latency (default 0, as in the paper). The twin check's
    /// real runs measure it (docs/results.md, "The twin check").
    #[serde(default)]
    pub transit_delay_us: u64,
    /// How long a blocked shard waits before it tries again (no machine had room).
    #[serde(default = "retry_default")]
    pub retry_delay_us: u64,
    /// A killed invocation is requeued at most this many times, then fails.
    #[serde(default = "requeue_default")]
    pub kill_requeue_max: u32,
    /// How often machines measure their invocations' memory (limited memory only).
    #[serde(default = "sample_default")]
    pub memory_sample_ms: u64,
    /// Width of the windows compute utilization is measured over.
    #[serde(default = "window_default")]
    pub utilization_window_ms: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ArrivalKind {
    /// Constant rate, evenly spaced.
    Fixed,
    /// Constant rate, exponential gaps.
    Poisson,
    /// Replay of `workload.trace`.
    Trace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassesBy {
    /// Each function gets a class (by weight) once; its invocations share it (paper 4.1).
    Function,
    /// Each invocation draws its class (by weight): exact class shares, for queueing checks.
    Invocation,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadConfig {
    /// Arrivals are generated for this long.
    pub duration_s: f64,
    /// Invocations arriving before this are run but not measured.
    #[serde(default)]
    pub warmup_s: f64,
    /// After arrivals stop, the run goes on at most this long; what is left is `unfinished`.
    #[serde(default = "drain_default")]
    pub drain_s: f64,
    pub arrivals: ArrivalKind,
    /// Number of distinct synthetic functions (each with its own runtime scale and class).
    #[serde(default = "functions_default")]
    pub functions: u32,
    #[serde(default = "classes_by_default")]
    pub classes_by: ClassesBy,
    /// Memory an invocation holds when it starts (paper: always 100 MB).
    #[serde(default = "start_mb_default")]
    pub start_mb: u64,
    /// Each invocation's peak memory is uniform in [memory_min_mb, memory_max_mb].
    #[serde(default = "start_mb_default")]
    pub memory_min_mb: u64,
    #[serde(default = "memory_max_default")]
    pub memory_max_mb: u64,
    #[serde(default)]
    pub service: Option<ServiceConfig>,
    #[serde(default)]
    pub trace: Option<TraceConfig>,
}

/// Service-time (runtime) distributions.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum ServiceConfig {
    Exponential {
        mean_ms: f64,
    },
    Deterministic {
        ms: f64,
    },
    Lognormal {
        median_ms: f64,
        sigma: f64,
    },
    Pareto {
        alpha: f64,
        xm_ms: f64,
    },
    /// Paper 4.1: each function has its own Pareto(alpha, x_m) with x_m ~ Normal(mean, sd),
    /// truncated below at 1 ms.
    PerFunction {
        alpha: f64,
        xm_mean_ms: f64,
        xm_sd_ms: f64,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ClassRule {
    /// A function's class comes from its trigger type through `trigger_classes`.
    Trigger,
    /// A function's class is drawn by the classes' weights (seeded, per function).
    Weights,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceConfig {
    /// Directory with `invocations.csv`, `durations.csv`, `memory.csv` (relative paths are
    /// resolved against the working directory).
    pub dir: PathBuf,
    /// First minute to replay, counted from the trace's first minute.
    #[serde(default)]
    pub start_minute: u32,
    /// Minutes to replay (before time compression).
    #[serde(default = "minutes_default")]
    pub minutes: u32,
    pub class_rule: ClassRule,
    /// Trigger type -> class name; triggers not listed get the lowest class.
    #[serde(default)]
    pub trigger_classes: BTreeMap<String, String>,
}

/// `PlacementRule` as its config spelling (`class-aware`, `paper`).
mod placement_rule {
    use serde::{Deserialize, Deserializer, Serializer};
    use turnpike_policy::placement::PlacementRule;

    pub fn serialize<S: Serializer>(rule: &PlacementRule, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(rule.name())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PlacementRule, D::Error> {
        let name = String::deserialize(d)?;
        name.parse().map_err(serde::de::Error::custom)
    }
}

fn top_class_defers_default() -> u32 {
    turnpike_policy::shard::TOP_CLASS_DEFERS_MAX_DEFAULT
}

fn one() -> u64 {
    1
}
fn one_f() -> f64 {
    1.0
}
fn two() -> u32 {
    2
}
fn swap_default() -> u64 {
    500 * 1024
}
fn high_default() -> f64 {
    0.9
}
fn low_default() -> f64 {
    0.8
}
fn shards_default() -> u32 {
    4
}
fn k_default() -> u32 {
    3
}
fn join_default() -> f64 {
    0.25
}
fn leave_default() -> f64 {
    0.10
}
fn update_default() -> f64 {
    0.10
}
fn retry_default() -> u64 {
    1000
}
fn requeue_default() -> u32 {
    turnpike_policy::shard::REQUEUE_MAX_DEFAULT
}
fn sample_default() -> u64 {
    100
}
fn window_default() -> u64 {
    1000
}
fn drain_default() -> f64 {
    60.0
}
fn functions_default() -> u32 {
    1000
}
fn classes_by_default() -> ClassesBy {
    ClassesBy::Function
}
fn start_mb_default() -> u64 {
    100
}
fn memory_max_default() -> u64 {
    10 * 1024
}
fn minutes_default() -> u32 {
    480
}

/// The built-in presets by name.
pub fn preset_toml(name: &str) -> Result<&'static str, ConfigError> {
    match name {
        "fig4" => Ok(include_str!("../presets/fig4.toml")),
        "fig5" => Ok(include_str!("../presets/fig5.toml")),
        "trace" => Ok(include_str!("../presets/trace.toml")),
        "overload" => Ok(include_str!("../presets/overload.toml")),
        "twin" => Ok(include_str!("../presets/twin.toml")),
        other => Err(ConfigError::UnknownPreset(other.to_string())),
    }
}

fn positive(name: &str, v: f64) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 {
        Ok(())
    } else {
        Err(field(name, format!("must be a positive number, got {v}")))
    }
}

fn fraction(name: &str, v: f64) -> Result<(), ConfigError> {
    if (0.0..=1.0).contains(&v) {
        Ok(())
    } else {
        Err(field(
            name,
            format!("must be a fraction in [0, 1], got {v}"),
        ))
    }
}

impl Config {
    /// Parses and validates a TOML experiment.
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Toml(e.to_string()))?;
        config.validate()?;
        if let Some(sweep) = &config.sweep {
            sweep.variants(&config)?;
        }
        Ok(config)
    }

    pub fn preset(name: &str) -> Result<Self, ConfigError> {
        Self::parse(preset_toml(name)?)
    }

    /// The small variant of `--quick`: a sixth of the arrivals' duration and warm-up and a third
    /// of the drain (fig4: 10 s of arrivals per point), all else equal.
    pub fn quick(mut self) -> Self {
        let w = &mut self.workload;
        w.duration_s /= 6.0;
        w.warmup_s /= 6.0;
        w.drain_s /= 3.0;
        self
    }

    pub fn class_set(&self) -> Result<ClassSet, ConfigError> {
        let classes = self.classes.iter().map(|c| PriceClass {
            name: c.name.clone(),
            price: c.price,
        });
        ClassSet::new(classes.collect()).map_err(|e| field("classes", e.to_string()))
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.schedulers.is_empty() {
            return Err(field(
                "schedulers",
                "list at least one of hermod, turnpike, edf",
            ));
        }
        if self.loads.is_empty() {
            return Err(field("loads", "list at least one offered load"));
        }
        for (i, &l) in self.loads.iter().enumerate() {
            if !(l.is_finite() && l > 0.0 && l <= 100.0) {
                return Err(field(
                    format!("loads[{i}]"),
                    format!("must be in (0, 100], got {l}"),
                ));
            }
        }
        self.class_set()?;
        for (i, c) in self.classes.iter().enumerate() {
            if !(c.weight.is_finite() && c.weight >= 0.0) {
                return Err(field(format!("classes[{i}].weight"), "must be >= 0"));
            }
        }
        if self.classes.iter().all(|c| c.weight == 0.0) {
            return Err(field(
                "classes",
                "at least one class needs a positive weight",
            ));
        }
        let c = &self.cluster;
        if c.machines == 0 || c.machines > 1_000_000 {
            return Err(field("cluster.machines", "must be in 1..=1000000"));
        }
        if c.cores == 0 || c.cores > 4096 {
            return Err(field("cluster.cores", "must be in 1..=4096"));
        }
        if c.shards == 0 {
            return Err(field("cluster.shards", "must be at least 1"));
        }
        if c.k == 0 {
            return Err(field("cluster.k", "must be at least 1"));
        }
        if c.shard_choices == 0 {
            return Err(field("cluster.shard_choices", "must be at least 1"));
        }
        fraction("cluster.idle_join_free", c.idle_join_free)?;
        fraction("cluster.idle_leave_free", c.idle_leave_free)?;
        fraction("cluster.idle_update_change", c.idle_update_change)?;
        if c.idle_leave_free > c.idle_join_free {
            return Err(field(
                "cluster.idle_leave_free",
                "must not exceed idle_join_free",
            ));
        }
        if let Some(mem) = self.memory() {
            mem.validate()
                .map_err(|m| field("cluster.memory_mb", m.to_string()))?;
            if let Some(s) = self
                .schedulers
                .iter()
                .find(|s| **s != SchedulerKind::Turnpike)
            {
                return Err(field(
                    "cluster.memory_mb",
                    format!(
                        "limited memory is modelled for turnpike only; {} assumes unlimited memory (paper 4.2): drop it from `schedulers` or remove memory_mb",
                        s.name()
                    ),
                ));
            }
            if c.memory_sample_ms == 0 {
                return Err(field("cluster.memory_sample_ms", "must be positive"));
            }
        }
        if c.utilization_window_ms == 0 {
            return Err(field("cluster.utilization_window_ms", "must be positive"));
        }
        if c.retry_delay_us == 0 {
            return Err(field("cluster.retry_delay_us", "must be positive"));
        }
        let w = &self.workload;
        positive("workload.duration_s", w.duration_s)?;
        if !(w.warmup_s >= 0.0 && w.warmup_s < w.duration_s) {
            return Err(field(
                "workload.warmup_s",
                "must be >= 0 and less than duration_s",
            ));
        }
        if !(w.drain_s.is_finite() && w.drain_s >= 0.0) {
            return Err(field("workload.drain_s", "must be >= 0"));
        }
        if w.functions == 0 {
            return Err(field("workload.functions", "must be at least 1"));
        }
        if w.memory_min_mb > w.memory_max_mb {
            return Err(field(
                "workload.memory_min_mb",
                "must not exceed memory_max_mb",
            ));
        }
        if w.start_mb > w.memory_min_mb {
            return Err(field("workload.start_mb", "must not exceed memory_min_mb"));
        }
        match (w.arrivals, &w.service, &w.trace) {
            (ArrivalKind::Trace, _, None) => {
                return Err(field(
                    "workload.trace",
                    "arrivals = \"trace\" needs a [workload.trace] table",
                ))
            }
            (ArrivalKind::Trace, Some(_), _) => {
                return Err(field(
                    "workload.service",
                    "a trace brings its own runtimes: remove [workload.service]",
                ))
            }
            (ArrivalKind::Fixed | ArrivalKind::Poisson, None, _) => {
                return Err(field(
                    "workload.service",
                    "synthetic arrivals need a [workload.service] table",
                ))
            }
            (ArrivalKind::Fixed | ArrivalKind::Poisson, Some(s), _) => validate_service(s)?,
            (ArrivalKind::Trace, None, Some(t)) => self.validate_trace(t)?,
        }
        Ok(())
    }

    fn validate_trace(&self, t: &TraceConfig) -> Result<(), ConfigError> {
        if t.minutes == 0 {
            return Err(field("workload.trace.minutes", "must be at least 1"));
        }
        let classes = self.class_set()?;
        for (trigger, class) in &t.trigger_classes {
            if classes.by_name(class).is_none() {
                return Err(field(
                    format!("workload.trace.trigger_classes.{trigger}"),
                    format!("unknown class `{class}` (classes: {classes})"),
                ));
            }
        }
        Ok(())
    }

    /// The per-machine memory limits, if memory is limited.
    pub fn memory(&self) -> Option<turnpike_policy::memory::MemoryConfig> {
        let c = &self.cluster;
        c.memory_mb
            .map(|capacity_mb| turnpike_policy::memory::MemoryConfig {
                capacity_mb,
                swap_mb: c.swap_mb,
                high_watermark: c.high_watermark,
                low_watermark: c.low_watermark,
            })
    }
}

fn validate_service(s: &ServiceConfig) -> Result<(), ConfigError> {
    let f = "workload.service";
    match *s {
        ServiceConfig::Exponential { mean_ms } => positive(&format!("{f}.mean_ms"), mean_ms),
        ServiceConfig::Deterministic { ms } => positive(&format!("{f}.ms"), ms),
        ServiceConfig::Lognormal { median_ms, sigma } => {
            positive(&format!("{f}.median_ms"), median_ms)?;
            positive(&format!("{f}.sigma"), sigma)
        }
        ServiceConfig::Pareto { alpha, xm_ms } => {
            positive(&format!("{f}.xm_ms"), xm_ms)?;
            alpha_ok(alpha)
        }
        ServiceConfig::PerFunction {
            alpha,
            xm_mean_ms,
            xm_sd_ms,
        } => {
            positive(&format!("{f}.xm_mean_ms"), xm_mean_ms)?;
            if !(xm_sd_ms.is_finite() && xm_sd_ms >= 0.0) {
                return Err(field(format!("{f}.xm_sd_ms"), "must be >= 0"));
            }
            alpha_ok(alpha)
        }
    }
}

/// The mean of a Pareto is finite only for alpha > 1, and offered load needs the mean.
fn alpha_ok(alpha: f64) -> Result<(), ConfigError> {
    if alpha.is_finite() && alpha > 1.0 {
        Ok(())
    } else {
        Err(field(
            "workload.service.alpha",
            format!("must be > 1 (finite mean), got {alpha}"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_parse() {
        for name in ["fig4", "fig5", "overload", "trace", "twin"] {
            Config::preset(name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(matches!(
            Config::preset("fig9"),
            Err(ConfigError::UnknownPreset(_))
        ));
    }

    fn with(edit: impl Fn(&str) -> String, preset: &str) -> String {
        match Config::parse(&edit(preset_toml(preset).expect("preset"))) {
            Ok(_) => panic!("accepted a bad config"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn errors_name_the_field() {
        let e = with(|t| t.replace("loads = [0.3,", "loads = [-0.3,"), "fig4");
        assert!(e.contains("loads[0]"), "{e}");
        let e = with(|t| t.replace("machines = 100", "machines = 0"), "fig4");
        assert!(e.contains("cluster.machines"), "{e}");
        let e = with(|t| t.replace("alpha = 2.5", "alpha = 0.5"), "fig4");
        assert!(e.contains("alpha"), "{e}");
        let e = with(
            |t| t.replace("http = \"critical\"", "http = \"platinum\""),
            "trace",
        );
        assert!(
            e.contains("trigger_classes.http") && e.contains("platinum"),
            "{e}"
        );
        let e = with(
            |t| t.replace("machines = 100", "machines = 100\nmachinez = 3"),
            "fig4",
        );
        assert!(e.contains("machinez"), "{e}");
        let e = with(
            |t| t.replace("idle_list = false", "memory_mb = 1000"),
            "fig4",
        );
        assert!(e.contains("cluster.memory_mb"), "{e}");
        let e = with(
            |t| t.replace("machines = 100", "machines = \"many\""),
            "fig4",
        );
        assert!(e.contains("machines"), "{e}");
        let e = with(|t| t.replace("price = 2.0", "price = 1.0"), "fig4");
        assert!(e.contains("classes"), "{e}");
    }
}
