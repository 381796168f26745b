//! Loading and replaying the Azure Functions 2019 trace sample (`traces/azure2019-100/`).
//!
//! [`Trace::load`] reads the three CSV files described in `traces/README.md`
//! (`invocations.csv`, `durations.csv`, `memory.csv`), joins them on `HashFunction` and keeps,
//! per function, the per-minute invocation counts and the duration and memory percentiles.
//! Functions missing from `durations.csv` or `memory.csv` are skipped and counted in
//! [`Trace::skipped`].
//!
//! The *standard replay* is implemented by [`TraceArrivals`] (arrival times: within each minute,
//! exponential gaps rescaled so the minute holds exactly the traced count) and by
//! [`TraceFunction::sample_runtime_ms`] / [`TraceFunction::sample_memory_mb`] (a uniform `q` in
//! `[0, 1)` interpolated linearly between the bracketing percentiles, then clamped to
//! 1 ms..60 s and 1..10240 MiB).
//!
//! The CSV parsing is hand-written: the files have no quoted fields. Every error names the
//! file, and where it applies the 1-based line and the column.

use std::collections::HashMap;
use std::path::Path;

use rand::Rng;
use rand_distr::{Distribution, Exp1};

/// Nanoseconds in one trace minute.
pub const MINUTE_NS: u64 = 60_000_000_000;
/// Lower clamp of sampled runtimes, in ms.
pub const MIN_RUNTIME_MS: f64 = 1.0;
/// Upper clamp of sampled runtimes, in ms (60 s).
pub const MAX_RUNTIME_MS: f64 = 60_000.0;
/// Lower clamp of sampled memory, in MiB.
pub const MIN_MEMORY_MB: f64 = 1.0;
/// Upper clamp of sampled memory, in MiB.
pub const MAX_MEMORY_MB: f64 = 10_240.0;
/// Quantiles of [`TraceFunction::duration_pct_ms`].
pub const DURATION_QUANTILES: [f64; 7] = [0.0, 0.01, 0.25, 0.5, 0.75, 0.99, 1.0];
/// Quantiles of [`TraceFunction::memory_pct_mb`] (`q < 0.01` uses the first value).
pub const MEMORY_QUANTILES: [f64; 8] = [0.01, 0.05, 0.25, 0.5, 0.75, 0.95, 0.99, 1.0];

const INVOCATIONS_FILE: &str = "invocations.csv";
const DURATIONS_FILE: &str = "durations.csv";
const MEMORY_FILE: &str = "memory.csv";
const HASH_COLUMN: &str = "HashFunction";
const TRIGGER_COLUMN: &str = "Trigger";
const DURATION_COLUMNS: [&str; 7] = [
    "percentile_Average_0",
    "percentile_Average_1",
    "percentile_Average_25",
    "percentile_Average_50",
    "percentile_Average_75",
    "percentile_Average_99",
    "percentile_Average_100",
];
const MEMORY_COLUMNS: [&str; 8] = [
    "AverageAllocatedMb_pct1",
    "AverageAllocatedMb_pct5",
    "AverageAllocatedMb_pct25",
    "AverageAllocatedMb_pct50",
    "AverageAllocatedMb_pct75",
    "AverageAllocatedMb_pct95",
    "AverageAllocatedMb_pct99",
    "AverageAllocatedMb_pct100",
];

/// Errors from [`Trace::load`].
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The file could not be read (missing directory or file, permissions, not UTF-8).
    #[error("cannot read {path}")]
    Io {
        /// The file that could not be read.
        path: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A data line is malformed; `msg` names the column.
    #[error("{path}:{line}: {msg}")]
    Parse {
        /// The file.
        path: String,
        /// 1-based line number.
        line: usize,
        /// What is wrong, naming the column.
        msg: String,
    },
    /// The file as a whole is unusable (empty, missing header column, no functions).
    #[error("{path}: {msg}")]
    Invalid {
        /// The file (or directory).
        path: String,
        /// What is wrong.
        msg: String,
    },
}

/// One function of the trace, joined across the three files.
#[derive(Clone, Debug)]
pub struct TraceFunction {
    /// `HashFunction`.
    pub hash: String,
    /// `Trigger` column (http, timer, queue, event, orchestration, storage, others).
    pub trigger: String,
    /// Invocation counts for each minute column, in file order.
    pub per_minute: Vec<u32>,
    /// Duration percentiles in ms at [`DURATION_QUANTILES`] (q = 0, .01, .25, .5, .75, .99, 1).
    pub duration_pct_ms: [f64; 7],
    /// Memory percentiles in MiB at [`MEMORY_QUANTILES`] (q = .01, .05, .25, .5, .75, .95, .99, 1).
    pub memory_pct_mb: [f64; 8],
}

impl TraceFunction {
    /// Runtime in ms for quantile `q` (clamped to `[0, 1]`; NaN counts as 0): linear
    /// interpolation between the bracketing duration percentiles, clamped to 1 ms..60 s.
    pub fn sample_runtime_ms(&self, q: f64) -> f64 {
        interpolate(&DURATION_QUANTILES, &self.duration_pct_ms, q)
            .clamp(MIN_RUNTIME_MS, MAX_RUNTIME_MS)
    }

    /// Memory in MiB for quantile `q` (clamped to `[0, 1]`; NaN counts as 0): linear
    /// interpolation between the bracketing memory percentiles (`pct1` for `q < 0.01`),
    /// clamped to 1..10240 MiB.
    pub fn sample_memory_mb(&self, q: f64) -> f64 {
        interpolate(&MEMORY_QUANTILES, &self.memory_pct_mb, q).clamp(MIN_MEMORY_MB, MAX_MEMORY_MB)
    }

    /// Mean runtime in ms of [`Self::sample_runtime_ms`] under a uniform `q`: the exact
    /// integral over `[0, 1]` of the clamped piecewise-linear quantile function.
    pub fn mean_runtime_ms(&self) -> f64 {
        DURATION_QUANTILES
            .windows(2)
            .zip(self.duration_pct_ms.windows(2))
            .map(|(q, v)| {
                (q[1] - q[0]) * clamped_linear_mean(v[0], v[1], MIN_RUNTIME_MS, MAX_RUNTIME_MS)
            })
            .sum()
    }

    /// Invocations over minutes `[start, end)` (indices into `per_minute`).
    fn invocations_in(&self, start: usize, end: usize) -> u64 {
        self.per_minute
            .get(start..end.min(self.per_minute.len()))
            .unwrap_or(&[])
            .iter()
            .map(|&c| u64::from(c))
            .sum()
    }
}

/// Piecewise-linear interpolation of the points `(qs[i], vs[i])` at `q`; flat outside.
fn interpolate(qs: &[f64], vs: &[f64], q: f64) -> f64 {
    let q = if q.is_nan() { 0.0 } else { q.clamp(0.0, 1.0) };
    let (Some(&q_first), Some(&v_first), Some(&v_last)) = (qs.first(), vs.first(), vs.last())
    else {
        return 0.0;
    };
    if q <= q_first {
        return v_first;
    }
    for (qw, vw) in qs.windows(2).zip(vs.windows(2)) {
        if q < qw[1] {
            return vw[0] + (vw[1] - vw[0]) * (q - qw[0]) / (qw[1] - qw[0]);
        }
    }
    v_last
}

/// Mean over `t` uniform in `[0, 1]` of `clamp(a + (b - a) t, lo, hi)`, exactly.
fn clamped_linear_mean(a: f64, b: f64, lo: f64, hi: f64) -> f64 {
    let (a, b) = if a <= b { (a, b) } else { (b, a) };
    if b - a <= 0.0 {
        return a.clamp(lo, hi);
    }
    let below = (b.min(lo) - a).max(0.0) * lo;
    let above = (b - a.max(hi)).max(0.0) * hi;
    let (m0, m1) = (a.max(lo), b.min(hi));
    let middle = if m1 > m0 {
        (m1 * m1 - m0 * m0) / 2.0
    } else {
        0.0
    };
    (below + middle + above) / (b - a)
}

/// The joined trace.
#[derive(Clone, Debug)]
pub struct Trace {
    /// Trace minute of the first minute column (e.g. 480), from the header of `invocations.csv`.
    pub first_minute: u32,
    /// Functions sorted by hash, for determinism.
    pub functions: Vec<TraceFunction>,
    /// Functions of `invocations.csv` skipped because `durations.csv` or `memory.csv` lacks them.
    pub skipped: usize,
}

impl Trace {
    /// Loads `invocations.csv`, `durations.csv` and `memory.csv` from `dir` and joins them on
    /// `HashFunction`.
    ///
    /// Percentiles must be finite, non-negative and non-decreasing; minute columns (headers that
    /// are integers) must be consecutive. Functions missing from the durations or memory file
    /// are skipped and counted.
    pub fn load(dir: &Path) -> Result<Trace, TraceError> {
        let invocations = Csv::read(&dir.join(INVOCATIONS_FILE))?;
        let durations = Csv::read(&dir.join(DURATIONS_FILE))?;
        let memory = Csv::read(&dir.join(MEMORY_FILE))?;

        // Durations and memory, keyed by HashFunction.
        let duration_by_hash = durations.percentiles::<7>(&DURATION_COLUMNS)?;
        let memory_by_hash = memory.percentiles::<8>(&MEMORY_COLUMNS)?;

        // Invocations.
        let hash_col = invocations.column(HASH_COLUMN)?;
        let trigger_col = invocations.column(TRIGGER_COLUMN)?;
        let minute_cols: Vec<(usize, u32)> = invocations
            .header
            .iter()
            .enumerate()
            .filter_map(|(i, name)| name.parse::<u32>().ok().map(|m| (i, m)))
            .collect();
        let Some(&(_, first_minute)) = minute_cols.first() else {
            return Err(invocations
                .invalid("line 1: header has no minute columns (integer column names)".into()));
        };
        for (k, &(i, m)) in minute_cols.iter().enumerate() {
            let expected = u64::from(first_minute) + k as u64;
            if u64::from(m) != expected {
                return Err(invocations.invalid(format!(
                    "line 1: minute columns are not consecutive: column {} (field {}) is \"{m}\", expected \"{expected}\"",
                    k + 1,
                    i + 1
                )));
            }
        }

        let mut functions = Vec::new();
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut skipped = 0;
        for row in &invocations.rows {
            let hash = invocations.hash(row, hash_col)?;
            if let Some(first) = seen.insert(hash, row.line) {
                return Err(invocations.parse_err(
                    row.line,
                    format!("column \"{HASH_COLUMN}\": duplicate function {hash} (first on line {first})"),
                ));
            }
            let per_minute = minute_cols
                .iter()
                .map(|&(i, _)| invocations.count(row, i))
                .collect::<Result<Vec<u32>, _>>()?;
            let (Some(&duration_pct_ms), Some(&memory_pct_mb)) =
                (duration_by_hash.get(hash), memory_by_hash.get(hash))
            else {
                skipped += 1;
                continue;
            };
            functions.push(TraceFunction {
                hash: hash.to_owned(),
                trigger: row.fields[trigger_col].clone(),
                per_minute,
                duration_pct_ms,
                memory_pct_mb,
            });
        }
        if functions.is_empty() {
            return Err(TraceError::Invalid {
                path: dir.display().to_string(),
                msg: format!(
                    "no functions ({} in {INVOCATIONS_FILE}, {skipped} skipped for lack of durations or memory)",
                    invocations.rows.len()
                ),
            });
        }
        functions.sort_by(|a, b| a.hash.cmp(&b.hash));
        Ok(Trace {
            first_minute,
            functions,
            skipped,
        })
    }

    /// Number of minutes in the trace.
    pub fn minutes(&self) -> usize {
        self.functions
            .iter()
            .map(|f| f.per_minute.len())
            .max()
            .unwrap_or(0)
    }

    /// Total invocations over all minutes.
    pub fn total_invocations(&self) -> u64 {
        self.functions
            .iter()
            .map(|f| f.invocations_in(0, f.per_minute.len()))
            .sum()
    }

    /// `[from, from + count)` clipped to the trace.
    fn window(&self, from: usize, count: usize) -> (usize, usize) {
        let minutes = self.minutes();
        (from.min(minutes), from.saturating_add(count).min(minutes))
    }

    /// Mean invocation runtime in ms, weighted by invocation counts over minutes
    /// `[from, from + count)` (clipped to the trace); 0 if the window has no invocations.
    pub fn mean_runtime_ms(&self, from: usize, count: usize) -> f64 {
        let (start, end) = self.window(from, count);
        let (mut weighted, mut total) = (0.0, 0u64);
        for f in &self.functions {
            let n = f.invocations_in(start, end);
            if n > 0 {
                weighted += n as f64 * f.mean_runtime_ms();
                total += n;
            }
        }
        if total == 0 {
            0.0
        } else {
            weighted / total as f64
        }
    }

    /// Invocations per second over minutes `[from, from + count)` (clipped to the trace);
    /// 0 for an empty window.
    pub fn rate_per_s(&self, from: usize, count: usize) -> f64 {
        let (start, end) = self.window(from, count);
        if end <= start {
            return 0.0;
        }
        let total: u64 = self
            .functions
            .iter()
            .map(|f| f.invocations_in(start, end))
            .sum();
        total as f64 / ((end - start) as f64 * 60.0)
    }
}

/// Streams arrivals of the standard replay in time order: `(arrival time in ns since the window
/// start, function index)` over minutes `[from, from + count)`, time-compressed by `speedup`.
///
/// Arrivals are generated one minute at a time: for each function (in index order) with count
/// `c > 0` in the minute, `c + 1` exponential gaps are drawn and scaled so that they sum to 60 s;
/// the first `c` cumulative sums are that function's arrivals. The minute's arrivals are then
/// sorted by `(time, function index)`. Times are floored to whole nanoseconds after dividing by
/// `speedup`. The sequence is deterministic given the rng's.
#[derive(Debug)]
pub struct TraceArrivals<'a> {
    trace: &'a Trace,
    start: usize,
    end: usize,
    next_minute: usize,
    speedup: f64,
    minute: Vec<(u64, usize)>,
    pos: usize,
    gaps: Vec<f64>,
}

impl<'a> TraceArrivals<'a> {
    /// Arrivals over minutes `[from, from + count)` (clipped to the trace), with arrival times
    /// divided by `speedup`.
    ///
    /// # Panics
    /// If `speedup` is not finite and positive.
    pub fn new(trace: &'a Trace, from: usize, count: usize, speedup: f64) -> Self {
        assert!(
            speedup.is_finite() && speedup > 0.0,
            "TraceArrivals: speedup must be finite and > 0, got {speedup}"
        );
        let (start, end) = trace.window(from, count);
        TraceArrivals {
            trace,
            start,
            end,
            next_minute: start,
            speedup,
            minute: Vec::new(),
            pos: 0,
            gaps: Vec::new(),
        }
    }

    /// The next arrival `(time in ns since the window start, function index)`, or `None` after
    /// the window's last arrival.
    pub fn next<R: Rng + ?Sized>(&mut self, rng: &mut R) -> Option<(u64, usize)> {
        loop {
            if let Some(&arrival) = self.minute.get(self.pos) {
                self.pos += 1;
                return Some(arrival);
            }
            if self.next_minute >= self.end {
                return None;
            }
            self.generate_minute(rng);
        }
    }

    /// Fills `self.minute` with the sorted arrivals of `self.next_minute` and advances it.
    fn generate_minute<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let m = self.next_minute;
        self.next_minute += 1;
        self.minute.clear();
        self.pos = 0;
        let minute_ns = MINUTE_NS as f64;
        let base_ns = (m - self.start) as f64 * minute_ns;
        // Latest offset within a minute; keeps every arrival strictly inside it.
        let last_ns = minute_ns - 1.0;
        for (idx, f) in self.trace.functions.iter().enumerate() {
            let c = f.per_minute.get(m).copied().unwrap_or(0) as usize;
            if c == 0 {
                continue;
            }
            self.gaps.clear();
            let mut sum = 0.0;
            for _ in 0..=c {
                let gap: f64 = Exp1.sample(rng);
                self.gaps.push(gap);
                sum += gap;
            }
            let scale = if sum > 0.0 { minute_ns / sum } else { 0.0 };
            let mut acc = 0.0;
            for &gap in &self.gaps[..c] {
                acc += gap;
                let offset = (acc * scale).min(last_ns);
                let t = ((base_ns + offset) / self.speedup).floor() as u64;
                self.minute.push((t, idx));
            }
        }
        self.minute.sort_unstable();
    }
}

/// One data line of a CSV file.
struct Row {
    /// 1-based line number.
    line: usize,
    fields: Vec<String>,
}

/// A CSV file without quoting: header and data rows (blank lines skipped).
struct Csv {
    path: String,
    header: Vec<String>,
    rows: Vec<Row>,
}

impl Csv {
    /// Reads and splits the file; fails if it cannot be read, has no header line, or a data line
    /// has a different number of fields than the header.
    fn read(path: &Path) -> Result<Csv, TraceError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| TraceError::Io {
            path: display.clone(),
            source,
        })?;
        let mut lines = text.lines();
        let header: Vec<String> = match lines.next() {
            Some(first) if !first.trim().is_empty() => first
                .trim_start_matches('\u{feff}')
                .split(',')
                .map(|s| s.trim().to_owned())
                .collect(),
            _ => {
                return Err(TraceError::Invalid {
                    path: display,
                    msg: "empty file: expected a header on line 1".into(),
                })
            }
        };
        let mut csv = Csv {
            path: display,
            header,
            rows: Vec::new(),
        };
        for (i, raw) in lines.enumerate() {
            let line = i + 2;
            if raw.trim().is_empty() {
                continue;
            }
            let fields: Vec<String> = raw.split(',').map(|s| s.trim().to_owned()).collect();
            let (found, expected) = (fields.len(), csv.header.len());
            if found < expected {
                return Err(csv.parse_err(
                    line,
                    format!(
                        "expected {expected} fields as in the header, found {found}: column \"{}\" (field {}) and later are missing",
                        csv.header[found],
                        found + 1
                    ),
                ));
            }
            if found > expected {
                return Err(csv.parse_err(
                    line,
                    format!(
                        "expected {expected} fields as in the header, found {found}: extra field {} after the last column \"{}\"",
                        expected + 1,
                        csv.header.last().map_or("", String::as_str)
                    ),
                ));
            }
            csv.rows.push(Row { line, fields });
        }
        Ok(csv)
    }

    fn parse_err(&self, line: usize, msg: String) -> TraceError {
        TraceError::Parse {
            path: self.path.clone(),
            line,
            msg,
        }
    }

    fn invalid(&self, msg: String) -> TraceError {
        TraceError::Invalid {
            path: self.path.clone(),
            msg,
        }
    }

    /// Index of the header column `name`.
    fn column(&self, name: &str) -> Result<usize, TraceError> {
        self.header
            .iter()
            .position(|h| h == name)
            .ok_or_else(|| self.invalid(format!("line 1: header has no column \"{name}\"")))
    }

    /// The non-empty hash in column `col` of `row`.
    fn hash<'r>(&self, row: &'r Row, col: usize) -> Result<&'r str, TraceError> {
        let hash = row.fields[col].as_str();
        if hash.is_empty() {
            return Err(self.parse_err(
                row.line,
                format!("column \"{}\" (field {}): empty", self.header[col], col + 1),
            ));
        }
        Ok(hash)
    }

    /// The invocation count in column `col` of `row`.
    fn count(&self, row: &Row, col: usize) -> Result<u32, TraceError> {
        let field = &row.fields[col];
        field.parse::<u32>().map_err(|_| {
            self.parse_err(
                row.line,
                format!(
                    "column \"{}\" (field {}): expected a non-negative integer count, found \"{field}\"",
                    self.header[col],
                    col + 1
                ),
            )
        })
    }

    /// The finite, non-negative number in column `col` of `row`.
    fn number(&self, row: &Row, col: usize) -> Result<f64, TraceError> {
        let field = &row.fields[col];
        match field.parse::<f64>() {
            Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
            _ => Err(self.parse_err(
                row.line,
                format!(
                    "column \"{}\" (field {}): expected a finite non-negative number, found \"{field}\"",
                    self.header[col],
                    col + 1
                ),
            )),
        }
    }

    /// Percentile columns `columns` keyed by `HashFunction`; each row's values must be
    /// non-decreasing.
    fn percentiles<const N: usize>(
        &self,
        columns: &[&str; N],
    ) -> Result<HashMap<String, [f64; N]>, TraceError> {
        let hash_col = self.column(HASH_COLUMN)?;
        let mut cols = [0usize; N];
        for (slot, name) in cols.iter_mut().zip(columns) {
            *slot = self.column(name)?;
        }
        let mut out: HashMap<String, [f64; N]> = HashMap::new();
        let mut first_line: HashMap<&str, usize> = HashMap::new();
        for row in &self.rows {
            let hash = self.hash(row, hash_col)?;
            if let Some(first) = first_line.insert(hash, row.line) {
                return Err(self.parse_err(
                    row.line,
                    format!("column \"{HASH_COLUMN}\": duplicate function {hash} (first on line {first})"),
                ));
            }
            let mut values = [0.0; N];
            for (k, &col) in cols.iter().enumerate() {
                let v = self.number(row, col)?;
                if k > 0 && v < values[k - 1] {
                    return Err(self.parse_err(
                        row.line,
                        format!(
                            "column \"{}\" (field {}): percentile {v} is below the previous one, \"{}\" = {}",
                            self.header[col],
                            col + 1,
                            columns[k - 1],
                            values[k - 1]
                        ),
                    ));
                }
                values[k] = v;
            }
            out.insert(hash.to_owned(), values);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_pcg::Pcg64;
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const TRACE_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../traces/azure2019-100");

    fn real() -> Trace {
        match Trace::load(Path::new(TRACE_DIR)) {
            Ok(t) => t,
            Err(e) => panic!("loading {TRACE_DIR}: {e}"),
        }
    }

    #[test]
    fn loads_the_real_trace() {
        let t = real();
        assert_eq!(t.skipped, 0);
        assert_eq!(t.functions.len(), 100 - t.skipped);
        assert_eq!(t.first_minute, 480);
        assert_eq!(t.minutes(), 480);
        assert!(t.functions.iter().all(|f| f.per_minute.len() == 480));
        assert_eq!(t.total_invocations(), 339_657);
        assert!(t.functions.windows(2).all(|w| w[0].hash < w[1].hash));
        let rate = t.rate_per_s(0, 480);
        assert!((rate - 339_657.0 / 28_800.0).abs() < 1e-9, "rate {rate}");
        assert!((rate - 11.8).abs() < 0.05, "rate {rate}");
        // A window past the end is clipped.
        assert_eq!(t.rate_per_s(0, 10_000), rate);
        assert_eq!(t.rate_per_s(480, 5), 0.0);
        let triggers = [
            "http",
            "timer",
            "queue",
            "event",
            "orchestration",
            "storage",
            "others",
        ];
        assert!(t
            .functions
            .iter()
            .all(|f| triggers.contains(&f.trigger.as_str())));
        let mean = t.mean_runtime_ms(0, 480);
        assert!(mean > 1.0 && mean < 60_000.0, "mean runtime {mean}");
    }

    #[test]
    fn runtime_and_memory_sampling_is_monotone_and_clamped() {
        let t = real();
        for f in &t.functions {
            let (mut prev_r, mut prev_m) = (0.0, 0.0);
            for i in 0..=10_000 {
                let q = f64::from(i) / 10_000.0;
                let r = f.sample_runtime_ms(q);
                let m = f.sample_memory_mb(q);
                assert!(
                    (MIN_RUNTIME_MS..=MAX_RUNTIME_MS).contains(&r),
                    "{} q={q}: {r}",
                    f.hash
                );
                assert!(
                    (MIN_MEMORY_MB..=MAX_MEMORY_MB).contains(&m),
                    "{} q={q}: {m}",
                    f.hash
                );
                assert!(
                    r >= prev_r && m >= prev_m,
                    "{} not monotone at q={q}",
                    f.hash
                );
                (prev_r, prev_m) = (r, m);
            }
            // Knots are hit exactly (up to the clamp).
            for (q, v) in DURATION_QUANTILES.iter().zip(f.duration_pct_ms) {
                assert_eq!(
                    f.sample_runtime_ms(*q),
                    v.clamp(MIN_RUNTIME_MS, MAX_RUNTIME_MS)
                );
            }
            for (q, v) in MEMORY_QUANTILES.iter().zip(f.memory_pct_mb) {
                assert_eq!(
                    f.sample_memory_mb(*q),
                    v.clamp(MIN_MEMORY_MB, MAX_MEMORY_MB)
                );
            }
            assert_eq!(f.sample_memory_mb(0.0), f.sample_memory_mb(0.01));
        }
        // Some real functions exceed 60 s at p100 and some have p0 = 0 ms: the clamp is exercised.
        assert!(t
            .functions
            .iter()
            .any(|f| f.duration_pct_ms[6] > MAX_RUNTIME_MS));
        assert!(t
            .functions
            .iter()
            .any(|f| f.duration_pct_ms[0] < MIN_RUNTIME_MS));
    }

    #[test]
    fn interpolation_between_knots() {
        let f = TraceFunction {
            hash: "h".into(),
            trigger: "http".into(),
            per_minute: vec![1],
            duration_pct_ms: [0.0, 10.0, 20.0, 30.0, 40.0, 100.0, 100_000.0],
            memory_pct_mb: [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 20_000.0],
        };
        assert_eq!(f.sample_runtime_ms(0.0), 1.0);
        assert!((f.sample_runtime_ms(0.005) - 5.0).abs() < 1e-9);
        assert!((f.sample_runtime_ms(0.375) - 25.0).abs() < 1e-9);
        assert!((f.sample_runtime_ms(0.87) - 70.0).abs() < 1e-9);
        assert_eq!(f.sample_runtime_ms(0.9999), MAX_RUNTIME_MS);
        assert_eq!(f.sample_runtime_ms(2.0), MAX_RUNTIME_MS);
        assert_eq!(f.sample_runtime_ms(f64::NAN), 1.0);
        assert_eq!(f.sample_memory_mb(0.0), 10.0);
        assert_eq!(f.sample_memory_mb(0.005), 10.0);
        assert!((f.sample_memory_mb(0.03) - 15.0).abs() < 1e-9);
        assert_eq!(f.sample_memory_mb(1.0), MAX_MEMORY_MB);
    }

    /// Midpoint-rule integral of the sampler, to check the closed form.
    fn numeric_mean(f: &TraceFunction) -> f64 {
        let n = 200_000;
        (0..n)
            .map(|i| f.sample_runtime_ms((f64::from(i) + 0.5) / f64::from(n)))
            .sum::<f64>()
            / f64::from(n)
    }

    #[test]
    fn mean_runtime_matches_the_sampler() {
        let t = real();
        for f in &t.functions {
            let exact = f.mean_runtime_ms();
            let numeric = numeric_mean(f);
            assert!(
                (exact - numeric).abs() <= 1e-4 * numeric.max(1.0),
                "{}: closed form {exact}, numeric {numeric}",
                f.hash
            );
        }
        // Window mean = invocation-weighted function means.
        let (mut w, mut n) = (0.0, 0.0);
        for f in &t.functions {
            let c: u32 = f.per_minute[10..20].iter().sum();
            w += f64::from(c) * f.mean_runtime_ms();
            n += f64::from(c);
        }
        assert!((t.mean_runtime_ms(10, 10) - w / n).abs() < 1e-9 * (w / n));
        // A segment crossing the lower clamp: 0 -> 2 ms over the whole range has mean 1.25.
        assert!((clamped_linear_mean(0.0, 2.0, 1.0, 10.0) - 1.25).abs() < 1e-12);
        // Crossing both clamps: (1 * 1 + (10^2 - 1^2) / 2 + 10 * 10) / 20.
        assert!((clamped_linear_mean(0.0, 20.0, 1.0, 10.0) - 7.525).abs() < 1e-12);
        assert!((clamped_linear_mean(20.0, 0.0, 1.0, 10.0) - 7.525).abs() < 1e-12);
        assert_eq!(clamped_linear_mean(5.0, 5.0, 1.0, 10.0), 5.0);
    }

    fn minute_arrivals(
        t: &Trace,
        from: usize,
        count: usize,
        speedup: f64,
        seed: u64,
    ) -> Vec<(u64, usize)> {
        let mut rng = Pcg64::seed_from_u64(seed);
        let mut arrivals = TraceArrivals::new(t, from, count, speedup);
        let mut out = Vec::new();
        while let Some(a) = arrivals.next(&mut rng) {
            out.push(a);
        }
        out
    }

    #[test]
    fn arrivals_of_one_minute() {
        let t = real();
        for m in [0, 7, 479] {
            let a = minute_arrivals(&t, m, 1, 1.0, 42);
            let expected: u64 = t.functions.iter().map(|f| u64::from(f.per_minute[m])).sum();
            assert_eq!(a.len() as u64, expected, "minute {m}");
            assert!(a.windows(2).all(|w| w[0] <= w[1]), "minute {m} not sorted");
            assert!(
                a.iter().all(|&(ns, _)| ns < MINUTE_NS),
                "minute {m} spills over"
            );
            // c + 1 gaps per function: no arrival is pushed onto the minute's end.
            assert!(
                a.iter().all(|&(ns, _)| ns < MINUTE_NS - 1),
                "minute {m}: arrival at the boundary"
            );
            for (idx, f) in t.functions.iter().enumerate() {
                let n = a.iter().filter(|&&(_, i)| i == idx).count();
                assert_eq!(n, f.per_minute[m] as usize, "minute {m} function {idx}");
            }
        }
    }

    #[test]
    fn arrivals_over_several_minutes() {
        let t = real();
        let (from, count) = (100, 5);
        let a = minute_arrivals(&t, from, count, 1.0, 7);
        assert!(a.windows(2).all(|w| w[0] <= w[1]));
        for k in 0..count {
            let lo = k as u64 * MINUTE_NS;
            let in_minute = a
                .iter()
                .filter(|&&(ns, _)| (lo..lo + MINUTE_NS).contains(&ns))
                .count() as u64;
            let expected: u64 = t
                .functions
                .iter()
                .map(|f| u64::from(f.per_minute[from + k]))
                .sum();
            assert_eq!(in_minute, expected, "minute {}", from + k);
        }
        assert_eq!(
            a.len() as u64,
            (from..from + count)
                .map(|m| t
                    .functions
                    .iter()
                    .map(|f| u64::from(f.per_minute[m]))
                    .sum::<u64>())
                .sum::<u64>()
        );
        // Deterministic given the rng; a different seed differs.
        assert_eq!(a, minute_arrivals(&t, from, count, 1.0, 7));
        assert_ne!(a, minute_arrivals(&t, from, count, 1.0, 8));
        // Inter-arrival times are spread out, not bunched at the minute edges: mean offset ~30 s.
        let mean_offset = a
            .iter()
            .map(|&(ns, _)| (ns % MINUTE_NS) as f64)
            .sum::<f64>()
            / a.len() as f64;
        assert!(
            (mean_offset - 30e9).abs() < 2e9,
            "mean offset {mean_offset}"
        );
    }

    #[test]
    fn speedup_divides_times() {
        let t = real();
        let slow = minute_arrivals(&t, 3, 2, 1.0, 5);
        let fast = minute_arrivals(&t, 3, 2, 2.0, 5);
        assert_eq!(slow.len(), fast.len());
        let mut halved: Vec<(u64, usize)> = slow.iter().map(|&(ns, i)| (ns / 2, i)).collect();
        halved.sort_unstable();
        assert_eq!(halved, fast);
        assert!(fast.iter().all(|&(ns, _)| ns < MINUTE_NS));
    }

    #[test]
    fn empty_window_yields_nothing() {
        let t = real();
        assert!(minute_arrivals(&t, 480, 3, 1.0, 1).is_empty());
        assert!(minute_arrivals(&t, 5, 0, 1.0, 1).is_empty());
    }

    // ---- bad input ----

    /// A scratch directory holding the three CSV files; removed on drop.
    struct TempTrace {
        dir: PathBuf,
    }

    impl TempTrace {
        fn new(name: &str) -> TempTrace {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let dir = std::env::temp_dir().join(format!(
                "turnpike-trace-test-{}-{name}-{}",
                std::process::id(),
                COUNTER.fetch_add(1, Ordering::Relaxed)
            ));
            if let Err(e) = std::fs::create_dir_all(&dir) {
                panic!("creating {}: {e}", dir.display());
            }
            let t = TempTrace { dir };
            t.write(INVOCATIONS_FILE, GOOD_INVOCATIONS);
            t.write(DURATIONS_FILE, GOOD_DURATIONS);
            t.write(MEMORY_FILE, GOOD_MEMORY);
            t
        }

        fn write(&self, file: &str, text: &str) {
            if let Err(e) = std::fs::write(self.dir.join(file), text) {
                panic!("writing {file}: {e}");
            }
        }

        fn load_err(&self) -> TraceError {
            match Trace::load(&self.dir) {
                Ok(t) => panic!("expected an error, loaded {} functions", t.functions.len()),
                Err(e) => e,
            }
        }
    }

    impl Drop for TempTrace {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    const GOOD_INVOCATIONS: &str = "HashOwner,HashApp,HashFunction,Trigger,480,481,482\n\
        o1,a1,f1,http,1,0,2\n\
        o1,a1,f2,timer,0,3,0\n";
    const GOOD_DURATIONS: &str = "HashOwner,HashApp,HashFunction,Average,Count,Minimum,Maximum,\
        percentile_Average_0,percentile_Average_1,percentile_Average_25,percentile_Average_50,\
        percentile_Average_75,percentile_Average_99,percentile_Average_100\n\
        o1,a1,f1,10,5,1,20,1,2,5,10,12,19,20\n\
        o1,a1,f2,100,5,50,150,50,60,80,100,120,140,150\n";
    const GOOD_MEMORY: &str = "HashFunction,HashOwner,HashApp,SampleCount,AverageAllocatedMb,\
        AverageAllocatedMb_pct1,AverageAllocatedMb_pct5,AverageAllocatedMb_pct25,AverageAllocatedMb_pct50,\
        AverageAllocatedMb_pct75,AverageAllocatedMb_pct95,AverageAllocatedMb_pct99,AverageAllocatedMb_pct100\n\
        f1,o1,a1,10,100,90,92,95,100,105,110,115,120\n\
        f2,o1,a1,10,200,190,192,195,200,205,210,215,220\n";

    #[test]
    fn good_small_trace_loads() {
        let tmp = TempTrace::new("good");
        let t = match Trace::load(&tmp.dir) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(t.functions.len(), 2);
        assert_eq!(t.skipped, 0);
        assert_eq!(t.first_minute, 480);
        assert_eq!(t.minutes(), 3);
        assert_eq!(t.total_invocations(), 6);
        assert_eq!(t.functions[1].per_minute, vec![0, 3, 0]);
        assert_eq!(t.functions[1].trigger, "timer");
        assert!((t.rate_per_s(0, 3) - 6.0 / 180.0).abs() < 1e-12);
    }

    #[test]
    fn function_missing_from_memory_is_skipped_and_counted() {
        let tmp = TempTrace::new("skip");
        tmp.write(
            MEMORY_FILE,
            GOOD_MEMORY
                .lines()
                .take(2)
                .collect::<Vec<_>>()
                .join("\n")
                .as_str(),
        );
        let t = match Trace::load(&tmp.dir) {
            Ok(t) => t,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(t.skipped, 1);
        assert_eq!(t.functions.len(), 1);
        assert_eq!(t.functions[0].hash, "f1");
    }

    #[test]
    fn non_numeric_count_names_file_line_and_column() {
        let tmp = TempTrace::new("nonnumeric");
        tmp.write(
            INVOCATIONS_FILE,
            &GOOD_INVOCATIONS.replace("f2,timer,0,3,0", "f2,timer,0,x3,0"),
        );
        let e = tmp.load_err();
        assert!(
            matches!(&e, TraceError::Parse { path, line: 3, .. } if path.ends_with(INVOCATIONS_FILE)),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(msg.contains("invocations.csv:3:"), "{msg}");
        assert!(msg.contains("\"481\"") && msg.contains("\"x3\""), "{msg}");
    }

    #[test]
    fn non_numeric_percentile_names_file_line_and_column() {
        let tmp = TempTrace::new("badpct");
        tmp.write(
            DURATIONS_FILE,
            &GOOD_DURATIONS.replace(
                "o1,a1,f1,10,5,1,20,1,2,5,10,",
                "o1,a1,f1,10,5,1,20,1,2,5,ten,",
            ),
        );
        let msg = tmp.load_err().to_string();
        assert!(
            msg.contains("durations.csv:2:") && msg.contains("percentile_Average_50"),
            "{msg}"
        );
    }

    #[test]
    fn decreasing_percentiles_are_rejected() {
        let tmp = TempTrace::new("decreasing");
        tmp.write(
            MEMORY_FILE,
            &GOOD_MEMORY.replace("190,192,195", "190,192,150"),
        );
        let msg = tmp.load_err().to_string();
        assert!(
            msg.contains("memory.csv:3:") && msg.contains("AverageAllocatedMb_pct25"),
            "{msg}"
        );
    }

    #[test]
    fn missing_field_names_file_line_and_column() {
        let tmp = TempTrace::new("missingfield");
        tmp.write(
            DURATIONS_FILE,
            &GOOD_DURATIONS.replace(",140,150\n", ",140\n"),
        );
        let e = tmp.load_err();
        assert!(matches!(&e, TraceError::Parse { line: 3, .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("durations.csv:3:") && msg.contains("percentile_Average_100"),
            "{msg}"
        );
    }

    #[test]
    fn missing_header_column_is_invalid() {
        let tmp = TempTrace::new("missingcol");
        tmp.write(
            INVOCATIONS_FILE,
            "HashOwner,HashApp,HashFunction,480,481\no1,a1,f1,1,2\n",
        );
        let e = tmp.load_err();
        assert!(matches!(&e, TraceError::Invalid { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("invocations.csv") && msg.contains("\"Trigger\""),
            "{msg}"
        );
    }

    #[test]
    fn non_consecutive_minutes_are_invalid() {
        let tmp = TempTrace::new("gap");
        tmp.write(
            INVOCATIONS_FILE,
            "HashOwner,HashApp,HashFunction,Trigger,480,482\no1,a1,f1,http,1,2\n",
        );
        let msg = tmp.load_err().to_string();
        assert!(
            msg.contains("invocations.csv") && msg.contains("\"482\""),
            "{msg}"
        );
    }

    #[test]
    fn empty_file_is_invalid() {
        let tmp = TempTrace::new("empty");
        tmp.write(MEMORY_FILE, "");
        let e = tmp.load_err();
        assert!(
            matches!(&e, TraceError::Invalid { path, .. } if path.ends_with(MEMORY_FILE)),
            "{e:?}"
        );
        assert!(e.to_string().contains("memory.csv: empty file"), "{e}");
    }

    #[test]
    fn header_only_has_no_functions() {
        let tmp = TempTrace::new("headeronly");
        tmp.write(
            INVOCATIONS_FILE,
            "HashOwner,HashApp,HashFunction,Trigger,480\n",
        );
        let e = tmp.load_err();
        assert!(
            matches!(&e, TraceError::Invalid { .. }) && e.to_string().contains("no functions"),
            "{e}"
        );
    }

    #[test]
    fn duplicate_function_is_rejected() {
        let tmp = TempTrace::new("dup");
        tmp.write(
            INVOCATIONS_FILE,
            &format!("{GOOD_INVOCATIONS}o9,a9,f1,http,0,0,0\n"),
        );
        let msg = tmp.load_err().to_string();
        assert!(
            msg.contains("invocations.csv:4:") && msg.contains("line 2"),
            "{msg}"
        );
    }

    #[test]
    fn missing_directory_is_an_io_error() {
        let dir = std::env::temp_dir().join(format!(
            "turnpike-trace-test-{}-does-not-exist",
            std::process::id()
        ));
        let e = match Trace::load(&dir) {
            Ok(_) => panic!("loaded a missing directory"),
            Err(e) => e,
        };
        assert!(
            matches!(&e, TraceError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e:?}"
        );
        let msg = e.to_string();
        assert!(
            msg.contains("does-not-exist") && msg.contains(INVOCATIONS_FILE),
            "{msg}"
        );
    }
}
