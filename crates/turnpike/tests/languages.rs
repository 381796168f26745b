//! Functions written in Python (componentize-py) and JavaScript (ComponentizeJS) through the
//! real `turnpike` binary: `turnpike up` on one CPU (so one worker with one slot), a tenant
//! deploys an app of the examples in examples/functions-python and examples/functions-js
//! with `turnpike deploy`, and invokes them at two classes: the hellos; `stats` (JSON in, JSON
//! out), its answer checked field by field and bad bodies refused with `400` naming the
//! problem, the two languages answering alike; `chain` in each language calling the other
//! language's `stats` through the platform (an outgoing `wasi:http` request to
//! `APP.turnpike`); and a low-class Python invocation preempted on the only slot by a
//! high-class Python one, which answers while the low one still runs (the worker's preemption
//! counter rises), the low one then answering correctly.
//!
//! The components are built by `scripts/build-examples.sh`, which installs the tools into
//! `.tools/` (`scripts/install-component-tools.sh`). As in the worker's `tests/languages.rs`:
//! where a tool could not be installed this test says so and skips; where it is installed but
//! a component is missing it fails.

mod common;

use std::net::SocketAddr;
use std::path::PathBuf;

use common::netns::{send, Answer};
use common::{counter, create_tenant, turnpike, up_on_one_cpu};
use serde_json::{json, Value};

/// `(language directory, tool in .tools/, manifest prefix)`.
const LANGUAGES: [(&str, &str, &str); 2] = [
    ("python", "componentize-py", "py"),
    ("js", "componentize-js", "js"),
];

/// The examples each language deploys.
const FUNCTIONS: [&str; 3] = ["hello", "stats", "chain"];

/// The app: `py-NAME` and `js-NAME` for every example, Python's `hold`, and routes the chains
/// call: `stats` at the top class, `hello` at the bottom one.
const MANIFEST: &str = r#"app = "poly"

[functions]
py-hello = "dist/py-hello.wasm"
py-stats = "dist/py-stats.wasm"
py-chain = "dist/py-chain.wasm"
py-hold = "dist/py-hold.wasm"
js-hello = "dist/js-hello.wasm"
js-stats = "dist/js-stats.wasm"
js-chain = "dist/js-chain.wasm"

[[routes]]
path = "/py/stats"
function = "py-stats"
class = "critical"

[[routes]]
path = "/js/stats"
function = "js-stats"
class = "critical"

[[routes]]
path = "/py/hello"
function = "py-hello"
class = "batch"
method = "GET"
"#;

/// A directory with every component the manifest names in `dist/` and the manifest as
/// `turnpike.toml`, or `None` (with the reason printed) when a tool is not installed.
fn app_dir() -> Option<tempfile::TempDir> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("dist")).expect("mkdir");
    for (language, tool, prefix) in LANGUAGES {
        let names = FUNCTIONS.iter().chain(if language == "python" {
            &["hold"][..]
        } else {
            &[]
        });
        for name in names {
            let built = root.join(format!("examples/functions-{language}/dist/{name}.wasm"));
            let copied = dir.path().join(format!("dist/{prefix}-{name}.wasm"));
            match std::fs::copy(&built, copied) {
                Ok(_) => {}
                Err(_) if !root.join(".tools").join(tool).exists() => {
                    eprintln!(
                        "SKIPPED: {tool} is not installed, so {} was not built \
                         (scripts/install-component-tools.sh could not install it)",
                        built.display()
                    );
                    return None;
                }
                Err(e) => panic!(
                    "cannot read {} ({e}) though {tool} is installed: run scripts/build-examples.sh",
                    built.display()
                ),
            }
        }
    }
    std::fs::write(dir.path().join("turnpike.toml"), MANIFEST).expect("write");
    Some(dir)
}

/// Invokes `poly/FUNCTION` directly at `class` with `query` and `body` (a `POST`).
async fn invoke(
    gateway: SocketAddr,
    key: &str,
    function: &str,
    class: &str,
    query: &str,
    body: &str,
) -> Answer {
    let path = format!("/v1/apps/poly/functions/{function}/invoke{query}");
    let auth = format!("Bearer {key}");
    let headers = [
        ("Authorization", auth.as_str()),
        ("x-turnpike-class", class),
    ];
    send(gateway, "POST", &path, &headers, body).await
}

/// What `stats` answers for [`STATS_BODY`], whatever the language.
fn expected_stats() -> Value {
    json!({
        "text": {
            "words": 13,
            "distinct": 10,
            "top": [["the", 3], ["cat", 2], ["a", 1]],
            "longest": "mississippi",
        },
        "numbers": {
            "count": 4, "sum": 10.0, "min": 1.0, "max": 4.0,
            "mean": 2.5, "median": 2.5, "stdev": 1.118_033_988_749_895,
        },
    })
}

const STATS_BODY: &str = r#"{"text": "The cat saw the CAT in Mississippi; the dog: a hat, not it!",
    "numbers": [4, 1, 3, 2]}"#;

/// `answer`'s body as JSON, with numbers compared as numbers (Python writes `10`, JavaScript
/// might write `10` or `10.0`: both are 10).
fn assert_same_json(answer: &str, expected: &Value, what: &str) {
    let got: Value = serde_json::from_str(answer.trim())
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {answer:?}"));
    assert!(
        same(&got, expected),
        "{what}: got {got:#}, expected {expected:#}"
    );
}

fn same(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(x, y)| same(x, y))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len() && x.iter().all(|(k, v)| y.get(k).is_some_and(|w| same(v, w)))
        }
        _ => a == b,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_and_javascript_functions_run_at_two_classes_chain_and_are_preempted() {
    let Some(app) = app_dir() else {
        return;
    };
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, gateway, admin, metrics) = up_on_one_cpu(data.path(), &["--shards", "1"]);
    let admin = admin.expect("a fresh data dir prints the admin key");
    let worker_metrics = metrics
        .iter()
        .filter(|(role, _)| role.starts_with("worker"))
        .map(|(_, url)| url.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        worker_metrics.len(),
        1,
        "one worker on one CPU: {metrics:?}"
    );
    let worker_metrics = &worker_metrics[0];
    let key = create_tenant(gateway, &admin, "acme");
    let manifest = app.path().join("turnpike.toml");
    let deployed = turnpike(
        gateway,
        &key,
        &["deploy", "--manifest", manifest.to_str().expect("utf-8")],
    );
    assert!(deployed.contains("deployed poly"), "{deployed}");

    for (_, _, prefix) in LANGUAGES {
        let (hello_fn, stats_fn) = (format!("{prefix}-hello"), format!("{prefix}-stats"));
        // Each function at two classes; the platform says which it ran at.
        for class in ["batch", "critical"] {
            let hello = invoke(gateway, &key, &hello_fn, class, "", "").await;
            assert_eq!(hello.status, 200, "{prefix} hello at {class}: {hello:?}");
            assert_eq!(hello.body, "hello from turnpike\n", "{prefix}");
            assert_eq!(hello.header("x-turnpike-class"), Some(class), "{hello:?}");

            let stats = invoke(gateway, &key, &stats_fn, class, "", STATS_BODY);
            let stats = stats.await;
            assert_eq!(stats.status, 200, "{prefix} stats at {class}: {stats:?}");
            assert_eq!(stats.header("x-turnpike-class"), Some(class), "{stats:?}");
            assert_eq!(
                stats.header("content-type"),
                Some("application/json"),
                "{stats:?}"
            );
            assert_same_json(&stats.body, &expected_stats(), &format!("{prefix} stats"));
        }
        // Only text, only numbers.
        let only_text = r#"{"text": "b a b"}"#;
        let answer = invoke(gateway, &key, &stats_fn, "batch", "", only_text);
        let expected = json!({"text": {"words": 3, "distinct": 2, "top": [["b", 2], ["a", 1]], "longest": "b"}});
        assert_same_json(&answer.await.body, &expected, &format!("{prefix} text"));
        // Bad bodies: 400, saying what is wrong.
        for (body, says) in [
            ("{\"text\": ", "body is not JSON"),
            ("", "body is not JSON"),
            ("[1, 2]", "must be a JSON object"),
            ("{}", "expected `text`"),
            (r#"{"text": 5}"#, "`text` must be a string"),
            (r#"{"numbers": [1, "2"]}"#, "`numbers[1]` is not a number"),
            (r#"{"numbers": []}"#, "`numbers` is empty"),
            (r#"{"text": "a", "txt": "b"}"#, "unknown field `txt`"),
        ] {
            let answer = invoke(gateway, &key, &stats_fn, "batch", "", body);
            let answer = answer.await;
            assert_eq!(answer.status, 400, "{prefix} {body:?}: {answer:?}");
            let error: Value = serde_json::from_str(answer.body.trim())
                .unwrap_or_else(|e| panic!("{prefix} {body:?}: not JSON ({e}): {answer:?}"));
            let message = error["error"].as_str().unwrap_or_default();
            assert!(message.contains(says), "{prefix} {body:?}: {answer:?}");
        }
    }

    // Each language's chain calls the other's stats through the platform (its route runs
    // at critical), passing the JSON body on; and the bottom-class hello route, which runs
    // at the caller's class when that is higher.
    for (caller, callee) in [("py", "js"), ("js", "py")] {
        let chain_fn = format!("{caller}-chain");
        let to = format!("?to=/{callee}/stats&via=poly.turnpike");
        let answer = invoke(gateway, &key, &chain_fn, "batch", &to, STATS_BODY);
        let answer = answer.await;
        assert_eq!(answer.status, 200, "{caller} chain: {answer:?}");
        let (head, body) = answer.body.split_once('\n').expect("two parts");
        assert_eq!(
            head,
            format!("called /{callee}/stats: 200, ran at critical")
        );
        assert_same_json(
            body,
            &expected_stats(),
            &format!("{caller} chain to {callee}"),
        );
        // A bad body reaches the callee, whose 400 comes back.
        let answer = invoke(gateway, &key, &chain_fn, "batch", &to, "{");
        let answer = answer.await;
        assert_eq!(answer.status, 400, "{caller} chain: {answer:?}");
        assert!(
            answer
                .body
                .starts_with(&format!("called /{callee}/stats: 400"))
                && answer.body.contains("body is not JSON"),
            "{answer:?}"
        );
        for class in ["batch", "critical"] {
            let to = "?to=/py/hello&via=poly.turnpike";
            let answer = invoke(gateway, &key, &chain_fn, class, to, "");
            let answer = answer.await;
            assert_eq!(
                answer.body,
                format!("called /py/hello: 200, ran at {class}\nhello from turnpike\n"),
                "{caller} chain at {class}: {answer:?}"
            );
        }
        // No `to`, or not a path: 400 naming it.
        for query in ["", "?to=py/hello"] {
            let answer = invoke(gateway, &key, &chain_fn, "batch", query, "");
            let answer = answer.await;
            assert_eq!(answer.status, 400, "{caller} chain {query:?}: {answer:?}");
            assert!(
                answer.body.contains("`to`"),
                "{caller} chain {query:?}: {answer:?}"
            );
        }
    }

    // Preemption on the only slot: a batch Python `hold` (building 8 MiB of Python objects,
    // then spinning), and a critical Python `stats` while it runs.
    let answer = invoke(gateway, &key, "py-hold", "batch", "?mb=1&ms=0", "").await;
    assert_eq!(answer.status, 200, "hold compiles and runs: {answer:?}");
    let preemptions = counter(worker_metrics, "turnpike_worker_preemptions_total").await;
    let mut low = tokio::spawn({
        let key = key.clone();
        async move { invoke(gateway, &key, "py-hold", "batch", "?mb=8&ms=6000", "").await }
    });
    // On the worker (so running: the slot was free), and past building its data.
    loop {
        let functions = counter(worker_metrics, "turnpike_worker_functions").await;
        if functions >= 1.0 {
            break;
        }
        // It cannot end unseen before its 6 s of spinning; if it did, say how.
        assert!(
            !low.is_finished(),
            "the batch hold ended before the worker showed it: {:?}",
            (&mut low).await
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let high = invoke(gateway, &key, "py-stats", "critical", "", STATS_BODY).await;
    assert_eq!(high.status, 200, "{high:?}");
    assert_same_json(&high.body, &expected_stats(), "the critical stats");
    assert!(
        !low.is_finished(),
        "the critical invocation answered only after the batch one ended"
    );
    let after = counter(worker_metrics, "turnpike_worker_preemptions_total").await;
    assert!(
        after > preemptions,
        "the worker preempted nothing: {preemptions} before, {after} after"
    );
    let low = low.await.expect("the batch invocation");
    assert_eq!(low.status, 200, "{low:?}");
    assert_eq!(low.header("x-turnpike-class"), Some("batch"), "{low:?}");
    assert!(
        low.body.starts_with("mb=8 checksum=") && low.body.contains("intact=True"),
        "{low:?}"
    );
}
