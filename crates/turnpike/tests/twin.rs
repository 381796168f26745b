//! `turnpike twin` end to end, through the real binary, on a small experiment: the simulator
//! and a real cluster of emulated workers run the same invocations, and `summary.json` holds
//! both sides' slowdowns per (load, class); bad input is refused with a clear error and exit
//! status 2. (The preset's full run, 10 machines x 8 cores at three loads, takes minutes: its
//! figures are in docs/results.md, "The twin check".)

use std::process::Command;

const BIN: &str = env!("CARGO_BIN_EXE_turnpike");

const SMALL: &str = r#"
seed = 3
schedulers = ["turnpike"]
loads = [0.5]

[[classes]]
name = "batch"
price = 0.5

[[classes]]
name = "critical"
price = 2.0

[cluster]
machines = 2
cores = 2
shards = 1
k = 2

[workload]
duration_s = 3
warmup_s = 0.5
drain_s = 3
arrivals = "poisson"
functions = 10

[workload.service]
kind = "per-function"
alpha = 2.5
xm_mean_ms = 20.0
xm_sd_ms = 5.0
"#;

#[test]
fn both_runs_are_measured_per_load_and_class() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("small.toml");
    std::fs::write(&config, SMALL).unwrap();
    let out = dir.path().join("out");
    let run = Command::new(BIN)
        .args(["twin", "--config"])
        .arg(&config)
        .arg("--out")
        .arg(&out)
        .output()
        .expect("turnpike twin runs");
    let stdout = String::from_utf8_lossy(&run.stdout);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stdout}\n{stderr}");
    let summary: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).unwrap()).unwrap();
    let rows = summary["rows"].as_array().expect("rows");
    assert_eq!(rows.len(), 2, "{summary}");
    for (row, class) in rows.iter().zip(["batch", "critical"]) {
        assert_eq!(row["load"], 0.5);
        assert_eq!(row["class"], class);
        for side in ["sim", "real"] {
            let p50 = row[format!("{side}_p50_slowdown")]
                .as_f64()
                .expect("a number");
            let p99 = row[format!("{side}_p99_slowdown")]
                .as_f64()
                .expect("a number");
            // A slowdown is latency over runtime: at least about 1, and p99 >= p50.
            assert!(p50 >= 0.9 && p99 >= p50, "{side}: {row}");
        }
        assert!(row["real_measured"].as_u64().unwrap() > 10, "{row}");
    }
    assert!(summary["goal"]["met"].is_boolean());
    let svg = std::fs::read_to_string(out.join("twin.svg")).unwrap();
    assert!(svg.starts_with("<svg") && svg.contains("real p99"));
    let csv = std::fs::read_to_string(out.join("twin.csv")).unwrap();
    assert_eq!(csv.lines().count(), 3);
    assert!(stdout.contains("critical"), "{stdout}");
}

#[test]
fn a_missing_or_bad_config_is_refused_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let missing = Command::new(BIN)
        .args(["twin", "--config", "/nonexistent/twin.toml", "--out"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("read config"));
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, SMALL.replace("machines = 2", "machines = 0")).unwrap();
    let refused = Command::new(BIN)
        .args(["twin", "--config"])
        .arg(&bad)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("machines"), "{stderr}");
    assert!(
        !dir.path().join("out").exists(),
        "nothing written for bad input"
    );
}
