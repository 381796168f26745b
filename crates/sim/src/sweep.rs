//! A sweep: one experiment repeated over cluster shapes, from a config's `[sweep]` table.
//!
//! Each listed field (`cores`, `idle_list`, `memory_mb`, `placement`) replaces the cluster's
//! value; every combination is a *variant*, run as its own [`Experiment`] (all its schedulers
//! and loads). The `overload` preset is one: the top class under sustained overload across
//! machines of 1, 2 and 8 cores, idle list on and off, three memory settings, and the paper's
//! placement rule beside the class-aware one (before and after docs/design-notes.md,
//! "Placement under overload").
//!
//! Outputs: `summary.json` (deterministic for a seed) with one row per (variant, scheduler,
//! load, class), `sweep.csv` with the same rows, and `top_class.svg`, the top class's p99
//! slowdown per variant at each load.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use turnpike_policy::placement::PlacementRule;

use crate::config::{Config, ConfigError};
use crate::experiment::{rows_csv, write_files, Experiment};
use crate::plot::{BarChart, Series};
use crate::stats::Spread;

/// Bars of `top_class.svg` stop here.
const TOP_CLASS_PLOT_CAP: f64 = 10.0;

/// A machine's memory in a sweep: MB, or `"unlimited"` (the cluster's `memory_mb` absent).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum MemorySetting {
    Mb(u64),
    Named(Unlimited),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unlimited {
    Unlimited,
}

impl MemorySetting {
    fn memory_mb(self) -> Option<u64> {
        match self {
            Self::Mb(mb) => Some(mb),
            Self::Named(Unlimited::Unlimited) => None,
        }
    }
}

/// The `[sweep]` table: each present list replaces one cluster field.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SweepConfig {
    #[serde(default)]
    pub cores: Vec<u32>,
    #[serde(default)]
    pub idle_list: Vec<bool>,
    #[serde(default)]
    pub memory_mb: Vec<MemorySetting>,
    /// `paper` or `class-aware` (see `turnpike_policy::placement::PlacementRule`).
    #[serde(default)]
    pub placement: Vec<String>,
}

/// One combination of a sweep's fields.
#[derive(Clone, Debug, PartialEq)]
pub struct Variant {
    pub cores: u32,
    pub idle_list: bool,
    pub memory_mb: Option<u64>,
    pub placement: PlacementRule,
}

impl Variant {
    /// A short label, e.g. `2c idle 1TB class-aware`.
    pub fn label(&self) -> String {
        let memory = match self.memory_mb {
            None => "unlimited".to_string(),
            Some(mb) if mb >= 1 << 20 && mb % (1 << 20) == 0 => format!("{}TB", mb >> 20),
            Some(mb) if mb >= 1 << 10 && mb % (1 << 10) == 0 => format!("{}GB", mb >> 10),
            Some(mb) => format!("{mb}MB"),
        };
        let idle = if self.idle_list { "idle" } else { "poll" };
        format!("{}c {idle} {memory} {}", self.cores, self.placement.name())
    }

    fn json(&self) -> Value {
        json!({
            "cores": self.cores,
            "idle_list": self.idle_list,
            "memory_mb": self.memory_mb,
            "placement": self.placement.name(),
        })
    }
}

impl SweepConfig {
    /// Every combination, in order: cores outer, then idle list, memory, placement. A field
    /// not listed keeps `base`'s value. Each config is checked as a whole; an error names the
    /// sweep field that made it invalid where it can.
    pub fn variants(&self, base: &Config) -> Result<Vec<(Variant, Config)>, ConfigError> {
        let field = |f: &str, msg: String| ConfigError::Field {
            field: format!("sweep.{f}"),
            msg,
        };
        let mut placements = Vec::new();
        for (i, name) in self.placement.iter().enumerate() {
            placements.push(
                name.parse::<PlacementRule>()
                    .map_err(|e| field(&format!("placement[{i}]"), e))?,
            );
        }
        let c = &base.cluster;
        let or = |list: &[u32], one: u32| {
            if list.is_empty() {
                vec![one]
            } else {
                list.to_vec()
            }
        };
        let cores = or(&self.cores, c.cores);
        let idle = if self.idle_list.is_empty() {
            vec![c.idle_list]
        } else {
            self.idle_list.clone()
        };
        let memory: Vec<Option<u64>> = if self.memory_mb.is_empty() {
            vec![c.memory_mb]
        } else {
            self.memory_mb.iter().map(|m| m.memory_mb()).collect()
        };
        if placements.is_empty() {
            placements.push(c.placement);
        }
        let mut out = Vec::new();
        for &cores in &cores {
            for &idle_list in &idle {
                for &memory_mb in &memory {
                    for &placement in &placements {
                        let variant = Variant {
                            cores,
                            idle_list,
                            memory_mb,
                            placement,
                        };
                        let mut config = base.clone();
                        config.sweep = None;
                        config.cluster.cores = cores;
                        config.cluster.idle_list = idle_list;
                        config.cluster.memory_mb = memory_mb;
                        config.cluster.placement = placement;
                        config.validate().map_err(|e| {
                            field(&variant.label(), format!("this combination: {e}"))
                        })?;
                        out.push((variant, config));
                    }
                }
            }
        }
        Ok(out)
    }
}

/// The finished variants of a sweep.
#[derive(Debug)]
pub struct Sweep {
    pub seed: u64,
    pub variants: Vec<(Variant, Experiment)>,
    pub wall: Duration,
}

impl Sweep {
    /// Runs every variant of `config` (which must have a `[sweep]` table), each on up to
    /// `threads` threads.
    pub fn run(config: &Config, threads: usize, show_progress: bool) -> Result<Self, ConfigError> {
        let sweep = config.sweep.as_ref().ok_or_else(|| ConfigError::Field {
            field: "sweep".into(),
            msg: "a sweep needs a [sweep] table".into(),
        })?;
        let mut variants = Vec::new();
        let mut wall = Duration::ZERO;
        for (variant, c) in sweep.variants(config)? {
            let e = Experiment::run(c, threads, show_progress)?;
            wall += e.wall;
            variants.push((variant, e));
        }
        Ok(Self {
            seed: config.seed,
            variants,
            wall,
        })
    }

    pub fn invocations(&self) -> u64 {
        self.variants.iter().map(|(_, e)| e.invocations()).sum()
    }

    /// One row per (variant, scheduler, load, class): the experiment's rows with the variant's
    /// fields and the run's mean utilization added.
    pub fn rows(&self) -> Vec<Value> {
        let mut rows = Vec::new();
        for (variant, e) in &self.variants {
            let summary = e.summary();
            let n = e.classes.len();
            let run_rows = summary["rows"].as_array().into_iter().flatten();
            for (i, row) in run_rows.enumerate() {
                let run = &e.runs[i / n];
                let mut row = row.as_object().cloned().unwrap_or_default();
                if let Value::Object(v) = variant.json() {
                    row.extend(v);
                }
                row.insert("variant".into(), json!(variant.label()));
                let util = Spread::of(&run.utilization).map(|s| s.mean);
                row.insert("utilization".into(), json!(util));
                rows.push(Value::Object(row));
            }
        }
        rows
    }

    pub fn summary(&self) -> Value {
        let mut top = Map::new();
        top.insert("seed".into(), json!(self.seed));
        top.insert(
            "variants".into(),
            json!(self
                .variants
                .iter()
                .map(|(v, _)| v.label())
                .collect::<Vec<_>>()),
        );
        top.insert("rows".into(), Value::Array(self.rows()));
        Value::Object(top)
    }

    /// Writes `summary.json`, `sweep.csv` and `top_class.svg` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<Vec<String>> {
        std::fs::create_dir_all(dir)?;
        let summary = self.summary();
        let mut text = serde_json::to_string_pretty(&summary).expect("JSON values serialize");
        text.push('\n');
        let files = vec![
            ("summary.json".to_string(), text),
            ("sweep.csv".to_string(), Self::csv(&summary)),
            ("top_class.svg".to_string(), self.top_class_plot()),
        ];
        write_files(dir, files)
    }

    fn csv(summary: &Value) -> String {
        let cols = [
            "variant",
            "cores",
            "idle_list",
            "memory_mb",
            "placement",
            "scheduler",
            "load",
            "class",
            "completed",
            "unfinished",
            "failed",
            "p50_slowdown",
            "p99_slowdown",
            "utilization",
        ];
        rows_csv(summary, &cols)
    }

    /// The top class's p99 slowdown per variant, a bar group per (scheduler, load).
    fn top_class_plot(&self) -> String {
        let categories: Vec<String> = self.variants.iter().map(|(v, _)| v.label()).collect();
        let mut groups: Vec<Series> = Vec::new();
        if let Some((_, first)) = self.variants.first() {
            for (r, run) in first.runs.iter().enumerate() {
                let name = format!("{} load {}", run.scheduler.name(), run.load);
                let points = self
                    .variants
                    .iter()
                    .enumerate()
                    .map(|(i, (_, e))| {
                        let top = e.classes.top().index();
                        let v = e
                            .runs
                            .get(r)
                            .and_then(|run| run.classes[top].slowdown.quantile(0.99));
                        // Capped so a collapse (hundreds) leaves the small values readable.
                        (i as f64, v.map_or(f64::NAN, |v| v.min(TOP_CLASS_PLOT_CAP)))
                    })
                    .collect();
                groups.push(Series { name, points });
            }
        }
        BarChart {
            title: format!(
                "top class p99 slowdown by cluster shape (capped at {TOP_CLASS_PLOT_CAP})"
            ),
            x_label: "cores, idle list or polling, memory, placement rule".into(),
            y_label: "p99 slowdown".into(),
            categories,
            groups,
            stacked: false,
        }
        .render()
    }
}
