//! The real `turnpike` binary: presets round-trip through `sim run`, runs are reproducible,
//! and bad input exits with status 2, names what is wrong and writes nothing.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");

fn turnpike(args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .output()
        .expect("the turnpike binary starts")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh path under the system's temp dir (not created), removed with everything in it on
/// drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        Self(std::env::temp_dir().join(format!(
            "turnpike-cli-test-{tag}-{}-{}-{nanos}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        )))
    }

    /// Creates the directory.
    fn created(tag: &str) -> Self {
        let d = Self::new(tag);
        std::fs::create_dir_all(&d.0).expect("create temp dir");
        d
    }

    fn path(&self) -> &Path {
        &self.0
    }

    fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

/// The TOML `turnpike sim preset NAME` prints.
fn preset(name: &str) -> String {
    let o = turnpike(&["sim", "preset", name]);
    assert!(o.status.success(), "sim preset {name}: {}", stderr(&o));
    let text = stdout(&o);
    assert!(!text.is_empty());
    text
}

/// `text` with the one line starting with `prefix` replaced by `line`.
fn replace_line(text: &str, prefix: &str, line: &str) -> String {
    let mut hits = 0;
    let out: Vec<&str> = text
        .lines()
        .map(|l| {
            if l.starts_with(prefix) {
                hits += 1;
                line
            } else {
                l
            }
        })
        .collect();
    assert_eq!(hits, 1, "exactly one line starts with {prefix:?}");
    out.join("\n") + "\n"
}

/// The trace preset reading its trace from `dir`.
fn trace_preset_in(dir: &Path) -> String {
    let dir = path_str(dir);
    assert!(!dir.contains('\''));
    replace_line(&preset("trace"), "dir = ", &format!("dir = '{dir}'"))
}

/// Runs `sim run --config FILE --quick --out OUT` on bad input and checks that it exits with
/// 2, writes nothing and that stderr contains every one of `needles`. Returns stderr.
fn rejects(config: &Path, needles: &[&str]) -> String {
    let out = TempDir::new("out");
    let o = turnpike(&[
        "sim",
        "run",
        "--config",
        path_str(config),
        "--quick",
        "--no-progress",
        "--out",
        path_str(out.path()),
    ]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "exit status; stderr: {err}");
    for n in needles {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(
        !out.path().exists(),
        "--out {} was created on bad input",
        out.path().display()
    );
    assert!(stdout(&o).is_empty(), "stdout on bad input: {}", stdout(&o));
    err
}

fn write_config(dir: &TempDir, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}

// ---- Presets and reproducibility ----

/// `turnpike sim ARGS.. --quick --seed 7 --no-progress --out OUT`; returns stdout and the
/// bytes of the summary.json it wrote.
fn quick_run(args: &[&str], out: &Path) -> (String, Vec<u8>) {
    let mut all = vec!["sim"];
    all.extend_from_slice(args);
    all.extend_from_slice(&[
        "--quick",
        "--seed",
        "7",
        "--no-progress",
        "--out",
        path_str(out),
    ]);
    let o = turnpike(&all);
    assert_eq!(o.status.code(), Some(0), "{all:?}: {}", stderr(&o));
    let summary = std::fs::read(out.join("summary.json")).expect("summary.json written");
    (stdout(&o), summary)
}

/// Three fig4 quick runs (the most expensive test here): the printed preset through
/// `sim run`, twice, and `sim fig4`.
#[test]
fn preset_round_trips_and_runs_are_reproducible() {
    let tmp = TempDir::created("roundtrip");
    let config = write_config(&tmp, "fig4.toml", &preset("fig4"));
    let config = path_str(&config);
    let (_, a) = quick_run(&["run", "--config", config], &tmp.join("a"));
    let (_, b) = quick_run(&["run", "--config", config], &tmp.join("b"));
    assert!(a == b, "same seed, different summary.json");

    let summary: serde_json::Value = serde_json::from_slice(&a).expect("summary.json is JSON");
    assert_eq!(summary["seed"], 7, "--seed is applied");
    let rows = summary["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for s in ["hermod", "turnpike", "edf"] {
        assert!(rows.iter().any(|r| r["scheduler"] == s), "no {s} rows");
    }

    // `sim fig4` prints a table with every scheduler, and it is the fig4 preset: with the same
    // seed it writes the same summary.json as `sim run` of the printed preset.
    let (table, c) = quick_run(&["fig4"], &tmp.join("c"));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.contains("scheduler")),
        "table header: {table}"
    );
    for s in ["hermod", "turnpike", "edf"] {
        assert!(
            lines.iter().any(|l| l.starts_with(s)),
            "no {s} line in: {table}"
        );
    }
    assert!(a == c, "sim fig4 and sim run of the fig4 preset differ");
}

#[test]
fn unknown_preset_names_the_known_ones() {
    let o = turnpike(&["sim", "preset", "nope"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    for n in ["nope", "fig4", "fig5", "trace"] {
        assert!(err.contains(n), "stderr lacks {n:?}: {err}");
    }
    assert!(stdout(&o).is_empty());
}

// ---- Bad input ----

#[test]
fn negative_load_is_rejected() {
    let tmp = TempDir::created("neg");
    let text = replace_line(&preset("fig4"), "loads = ", "loads = [-0.5]");
    rejects(
        &write_config(&tmp, "neg.toml", &text),
        &["loads[0]", "-0.5"],
    );
}

#[test]
fn unknown_trigger_class_is_rejected() {
    let tmp = TempDir::created("class");
    let text = replace_line(&preset("trace"), "http = ", "http = \"platinum\"");
    rejects(
        &write_config(&tmp, "class.toml", &text),
        &["trigger_classes", "platinum"],
    );
}

#[test]
fn malformed_toml_is_rejected_naming_the_line() {
    let tmp = TempDir::created("malformed");
    let text = replace_line(&preset("fig4"), "machines = ", "machines = 100 x");
    let line = 1 + text
        .lines()
        .position(|l| l.starts_with("machines = "))
        .expect("the edited line");
    let config = write_config(&tmp, "malformed.toml", &text);
    rejects(&config, &[&format!("line {line}"), "malformed.toml"]);

    // A value of the wrong type names the field.
    let text = replace_line(&preset("fig4"), "machines = ", "machines = \"many\"");
    rejects(&write_config(&tmp, "type.toml", &text), &["machines"]);
}

#[test]
fn unknown_field_is_rejected() {
    let tmp = TempDir::created("unknown");
    let text = replace_line(
        &preset("fig4"),
        "machines = ",
        "machines = 100\nmachinez = 3",
    );
    rejects(&write_config(&tmp, "unknown.toml", &text), &["machinez"]);
}

#[test]
fn missing_config_file_is_rejected() {
    let tmp = TempDir::created("missing");
    let config = tmp.join("no-such-config.toml");
    rejects(&config, &["no-such-config.toml"]);
}

#[test]
fn missing_trace_dir_is_rejected() {
    let tmp = TempDir::created("notrace");
    let trace_dir = tmp.join("no-such-trace");
    let config = write_config(&tmp, "trace.toml", &trace_preset_in(&trace_dir));
    rejects(&config, &[path_str(&trace_dir), "invocations.csv"]);
}

#[test]
fn malformed_trace_csv_is_rejected_naming_the_file() {
    let tmp = TempDir::created("badcsv");
    let trace_dir = tmp.join("trace");
    std::fs::create_dir_all(&trace_dir).expect("create trace dir");
    let real = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../traces/azure2019-100");
    for f in ["durations.csv", "memory.csv"] {
        std::fs::copy(real.join(f), trace_dir.join(f)).expect("copy trace file");
    }
    std::fs::write(
        trace_dir.join("invocations.csv"),
        "HashOwner,HashApp,HashFunction,Trigger,1,2\nowner,app,fn,http,1,not-a-number\n",
    )
    .expect("write broken invocations.csv");
    let config = write_config(&tmp, "trace.toml", &trace_preset_in(&trace_dir));
    let file = trace_dir.join("invocations.csv");
    rejects(
        &config,
        &[&format!("{}:2", path_str(&file)), "not-a-number"],
    );
}

#[test]
fn trace_io_error_is_reported_once() {
    let tmp = TempDir::created("twice");
    let trace_dir = tmp.join("no-such-trace");
    let config = write_config(&tmp, "trace.toml", &trace_preset_in(&trace_dir));
    let err = rejects(&config, &["invocations.csv"]);
    let os = "No such file or directory";
    assert_eq!(err.matches(os).count(), 1, "{err}");
}

#[test]
fn zero_threads_is_rejected_or_reported_as_one() {
    let out = TempDir::new("threads0");
    let o = turnpike(&[
        "sim",
        "fig5",
        "--quick",
        "--threads",
        "0",
        "--no-progress",
        "--out",
        path_str(out.path()),
    ]);
    let err = stderr(&o);
    if o.status.success() {
        assert!(!err.contains("inf invocations"), "{err}");
        assert!(!err.contains("on 0 threads"), "{err}");
    } else {
        assert_eq!(o.status.code(), Some(2), "{err}");
        assert!(err.contains("threads"), "{err}");
    }
}

#[test]
fn a_role_refuses_zero_runtime_threads() {
    for args in [
        &["shard", "--threads", "0"][..],
        &["gateway", "--threads", "0", "--shard", "127.0.0.1:1"],
    ] {
        let o = turnpike(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("'--threads <N>': 0 is not in"),
            "{args:?}: {err}"
        );
    }
}
