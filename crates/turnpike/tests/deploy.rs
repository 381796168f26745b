//! The developer's commands end to end, through the real `turnpike` binary: `turnpike up` on
//! a fresh data dir prints the admin key, the admin creates a tenant, the tenant deploys an
//! app from a `turnpike.toml`, lists its routes, invokes its function directly and through
//! the app's public route (by host name), and sees both invocations in its usage; the API's
//! OpenAPI document is served; a bad manifest, a wrong key and a gateway that is not running
//! are refused with clear errors.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{status_of, up, BIN};

/// Runs `turnpike ARGS` against `gateway` with `key` (none from this process's environment).
fn turnpike(gateway: &str, key: Option<&str>, args: &[&str]) -> Output {
    let mut command = Command::new(BIN);
    command
        .args(args)
        .env_remove("TURNPIKE_KEY")
        .env("TURNPIKE_GATEWAY", gateway);
    if let Some(key) = key {
        command.env("TURNPIKE_KEY", key);
    }
    command.output().expect("the turnpike binary starts")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// `o` succeeded; its stdout.
fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "{}\nstdout: {}\nstderr: {}",
        o.status,
        stdout(&o),
        stderr(&o)
    );
    stdout(&o)
}

/// `GET path` with `Host: host` over a plain TCP connection: the status and the whole answer.
fn get(addr: SocketAddr, host: &str, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .expect("timeout");
    let request = format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).expect("send");
    let mut answer = Vec::new();
    stream.read_to_end(&mut answer).expect("read");
    let text = String::from_utf8_lossy(&answer).into_owned();
    (status_of(&text), text)
}

/// A directory with `dist/hello.wasm` (the example built by scripts/build-examples.sh) and a
/// `turnpike.toml` of `manifest`.
fn app_dir(manifest: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(dir.path().join("dist")).expect("mkdir");
    let hello = turnpike_cluster::up::default_functions_dir().join("hello.wasm");
    std::fs::copy(&hello, dir.path().join("dist/hello.wasm")).unwrap_or_else(|e| {
        panic!(
            "{}: {e}; build it with scripts/build-examples.sh",
            hello.display()
        )
    });
    std::fs::write(dir.path().join("turnpike.toml"), manifest).expect("write");
    dir
}

const SHOP: &str = r#"app = "shop"

[functions]
hello = "dist/hello.wasm"

[[routes]]
path = "/"
function = "hello"
class = "critical"
method = "GET"
"#;

#[test]
fn a_tenant_deploys_an_app_invokes_it_and_sees_its_usage() {
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, addr, admin) = up(data.path());
    let gw = format!("http://{addr}");

    // The admin creates a tenant; its key is stdout's only line.
    let created = turnpike(&gw, Some(&admin), &["tenants", "create", "acme"]);
    assert!(
        stderr(&created).contains("shown only this once"),
        "{}",
        stderr(&created)
    );
    let acme = ok(created).trim().to_string();
    assert!(acme.starts_with("tp_") && !acme.contains('\n'), "{acme}");
    let tenants = ok(turnpike(&gw, Some(&admin), &["tenants", "list"]));
    assert!(
        tenants.contains("admin") && tenants.contains("acme"),
        "{tenants}"
    );
    // Only the admin creates tenants.
    let refused = turnpike(&gw, Some(&acme), &["tenants", "create", "other"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("403"), "{}", stderr(&refused));

    // Deploy, from the manifest's directory (the default `./turnpike.toml`).
    let app = app_dir(SHOP);
    let deployed = Command::new(BIN)
        .arg("deploy")
        .current_dir(app.path())
        .env("TURNPIKE_GATEWAY", &gw)
        .env("TURNPIKE_KEY", &acme)
        .output()
        .expect("starts");
    let deployed = ok(deployed);
    assert!(
        deployed.contains("uploaded hello")
            && deployed.contains("deployed shop at shop.localhost")
            && deployed.contains(&format!("http://shop.localhost:{}/", addr.port())),
        "{deployed}"
    );
    // Again: the component is already stored, the app replaced.
    let manifest = app.path().join("turnpike.toml");
    let manifest = manifest.to_str().expect("a UTF-8 path");
    let again = ok(turnpike(
        &gw,
        Some(&acme),
        &["deploy", "--manifest", manifest],
    ));
    assert!(again.contains("already stored hello"), "{again}");

    let routes = ok(turnpike(&gw, Some(&acme), &["routes"]));
    assert!(
        routes
            .lines()
            .any(|l| l.split_whitespace().collect::<Vec<_>>()
                == ["shop", "shop.localhost", "GET", "/", "hello", "critical"]),
        "{routes}"
    );
    let functions = ok(turnpike(&gw, Some(&acme), &["functions", "--json"]));
    let functions: serde_json::Value = serde_json::from_str(&functions).expect("JSON");
    assert_eq!(functions["functions"][0]["name"], "hello", "{functions}");
    // The API's description, public like the classes.
    let (status, text) = get(addr, "localhost", "/v1/openapi.json");
    assert_eq!(status, 200, "{text}");
    let (_, body) = text.split_once("\r\n\r\n").expect("a body");
    let openapi: serde_json::Value = serde_json::from_str(body).expect("JSON");
    assert_eq!(openapi["openapi"], "3.0.3");
    assert!(openapi["paths"]["/v1/apps/{app}"]["put"].is_object());
    let classes = ok(turnpike(&gw, None, &["classes"]));
    assert!(
        classes.contains("critical") && classes.contains("memory"),
        "{classes}"
    );

    // Directly, then through the public route: two invocations.
    let invoked = turnpike(
        &gw,
        Some(&acme),
        &["invoke", "shop/hello", "--class", "critical"],
    );
    assert!(
        stderr(&invoked).contains("200") && stderr(&invoked).contains("ran at critical"),
        "{}",
        stderr(&invoked)
    );
    let body = ok(invoked);
    assert!(body.contains("hello from turnpike"), "{body}");
    let (status, text) = get(addr, &format!("shop.localhost:{}", addr.port()), "/");
    assert_eq!(status, 200, "{text}");
    assert!(text.contains("hello from turnpike"), "{text}");

    // Usage: both invocations of hello (polled: the ledger may be written just after the
    // answer).
    let start = Instant::now();
    loop {
        let usage = ok(turnpike(
            &gw,
            Some(&acme),
            &["usage", "--by", "function", "--json"],
        ));
        let usage: serde_json::Value = serde_json::from_str(&usage).expect("JSON");
        let hello = usage["rows"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["function"] == "hello"));
        if hello.is_some_and(|r| r["invocations"] == 2) {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no 2 invocations of hello in {usage:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let usage = ok(turnpike(&gw, Some(&acme), &["usage", "--by", "function"]));
    assert!(
        usage.lines().any(|l| l
            .split_whitespace()
            .collect::<Vec<_>>()
            .windows(2)
            .any(|w| w == ["hello", "2"])),
        "{usage}"
    );
    assert!(
        usage
            .lines()
            .any(|l| l.starts_with("total ") && l.split_whitespace().nth(1) == Some("2")),
        "{usage}"
    );

    // A budget, set and shown.
    ok(turnpike(
        &gw,
        Some(&acme),
        &["budget", "--monthly", "1000000", "--over", "lower"],
    ));
    let budget = ok(turnpike(&gw, Some(&acme), &["budget", "--json"]));
    let budget: serde_json::Value = serde_json::from_str(&budget).expect("JSON");
    assert_eq!(budget["monthly"], 1e6, "{budget}");
    assert_eq!(budget["over"], "lower", "{budget}");

    // A wrong key, and none.
    let wrong = turnpike(&gw, Some("tp_wrong"), &["functions"]);
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        stderr(&wrong).starts_with("error: GET /v1/functions: 401"),
        "{}",
        stderr(&wrong)
    );
    let none = turnpike(&gw, None, &["routes"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(
        stderr(&none).contains("401") && stderr(&none).contains("TURNPIKE_KEY"),
        "{}",
        stderr(&none)
    );
    // Another tenant's app is not found.
    let invoked = turnpike(
        &gw,
        Some(&admin),
        &["invoke", "shop/hello", "--class", "critical"],
    );
    assert_eq!(invoked.status.code(), Some(1));
    assert!(stderr(&invoked).contains("404"), "{}", stderr(&invoked));
}

#[test]
fn keys_are_revoked_and_apps_deleted_only_by_their_tenant() {
    let data = tempfile::tempdir().expect("temp dir");
    let (_up, addr, admin) = up(data.path());
    let gw = format!("http://{addr}");
    let acme = ok(turnpike(&gw, Some(&admin), &["tenants", "create", "acme"]));
    let acme = acme.trim();
    let other = ok(turnpike(&gw, Some(&admin), &["tenants", "create", "other"]));
    let other = other.trim();
    let created = turnpike(&gw, Some(acme), &["keys", "create"]);
    let second = ok(created.clone());
    let second = second.trim();
    assert!(second.starts_with("tp_"), "{second}");
    // Its id is on stderr: "a new key ID of acme, ...".
    let told = stderr(&created);
    let second_id = told
        .split_whitespace()
        .nth(3)
        .unwrap_or_else(|| panic!("no id in {told:?}"))
        .to_string();
    let listed = ok(turnpike(&gw, Some(second), &["keys", "list", "--json"]));
    let listed: serde_json::Value = serde_json::from_str(&listed).expect("JSON");
    let ids: Vec<&str> = listed["keys"]
        .as_array()
        .expect("keys")
        .iter()
        .filter_map(|k| k["id"].as_str())
        .collect();
    assert_eq!(ids.len(), 2, "{listed}");
    assert!(ids.contains(&second_id.as_str()), "{listed}");
    assert!(
        !listed.to_string().contains("tp_"),
        "a key shown again: {listed}"
    );
    // Revoked by another tenant: unknown. By acme: it stops at once; acme's first key works.
    let theirs = turnpike(&gw, Some(other), &["keys", "revoke", &second_id]);
    assert!(stderr(&theirs).contains("404"), "{}", stderr(&theirs));
    ok(turnpike(&gw, Some(acme), &["keys", "revoke", &second_id]));
    let refused = turnpike(&gw, Some(second), &["functions"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(stderr(&refused).contains("401"), "{}", stderr(&refused));
    ok(turnpike(&gw, Some(acme), &["functions"]));
    // Revoked already, or another tenant's: unknown. The last key: refused, kept.
    let again = turnpike(&gw, Some(acme), &["keys", "revoke", &second_id]);
    assert!(stderr(&again).contains("404"), "{}", stderr(&again));
    let last = ok(turnpike(&gw, Some(acme), &["keys", "list", "--json"]));
    let last: serde_json::Value = serde_json::from_str(&last).expect("JSON");
    let last_id = last["keys"][0]["id"].as_str().expect("an id").to_string();
    let theirs = turnpike(&gw, Some(other), &["keys", "revoke", &last_id]);
    assert!(stderr(&theirs).contains("404"), "{}", stderr(&theirs));
    let alone = turnpike(&gw, Some(acme), &["keys", "revoke", &last_id]);
    assert!(
        stderr(&alone).contains("409") && stderr(&alone).contains("last key"),
        "{}",
        stderr(&alone)
    );
    let bad = turnpike(&gw, Some(acme), &["keys", "revoke", "nothex"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));

    // Apps: another tenant cannot delete acme's; acme can.
    let dir = app_dir(SHOP);
    let manifest = dir.path().join("turnpike.toml");
    ok(turnpike(
        &gw,
        Some(acme),
        &["deploy", "--manifest", manifest.to_str().expect("utf-8")],
    ));
    assert!(ok(turnpike(&gw, Some(acme), &["apps", "list"])).contains("shop.localhost"));
    let theirs = turnpike(&gw, Some(other), &["apps", "delete", "shop"]);
    assert!(stderr(&theirs).contains("404"), "{}", stderr(&theirs));
    assert_eq!(get(addr, "shop.localhost", "/").0, 200);
    ok(turnpike(&gw, Some(acme), &["apps", "delete", "shop"]));
    assert!(!ok(turnpike(&gw, Some(acme), &["apps", "list"])).contains("shop"));
    assert_eq!(get(addr, "shop.localhost", "/").0, 404);
}

#[test]
fn a_bad_manifest_is_refused_naming_the_line_before_any_request() {
    let app = app_dir(&SHOP.replace("path = \"/\"", "path = \"shop\""));
    // No gateway listens there: the manifest is refused first.
    let out = Command::new(BIN)
        .args(["deploy", "--gateway", "http://127.0.0.1:1"])
        .current_dir(app.path())
        .output()
        .expect("starts");
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.starts_with("error: ./turnpike.toml: line 7: `routes[0].path`"),
        "{err}"
    );
}

#[test]
fn bad_command_lines_are_refused_with_status_2() {
    for args in [
        &["invoke", "shop", "--class", "critical"][..],
        &["invoke", "Shop/hello", "--class", "critical"],
        &["invoke", "shop/hello", "nope", "--class", "critical"],
        &["usage", "--by", "tenant"],
        &["usage", "--from", "2026-13-01"],
        &["budget", "--monthly", "-5", "--over", "throttle"],
        &["tenants", "create", "Acme"],
        &["classes", "--gateway", "https://example.com"],
    ] {
        let out = turnpike("http://127.0.0.1:1", Some("tp_x"), args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).starts_with("error: "), "{args:?}");
    }
}

#[test]
fn a_gateway_that_is_not_running_is_named() {
    // A port nothing listens on: bind one, then close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let gw = format!("http://127.0.0.1:{port}");
    let out = turnpike(&gw, None, &["classes"]);
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(err.contains(&gw) && err.contains("turnpike up"), "{err}");
}
