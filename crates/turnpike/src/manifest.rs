//! The app manifest, `turnpike.toml`, that `turnpike deploy` reads: an app's name, its
//! functions (component files), its routes with their price classes, and optionally the
//! tenant's monthly budget.
//!
//! ```toml
//! app = "shop"                      # a DNS label: [a-z0-9-], 1-63 characters
//!
//! [functions]
//! hello = "dist/hello.wasm"         # a component, relative to this file's directory
//! resize = { component = "dist/resize.wasm", concurrency_max = 4 }
//!                                   # optional: the most invocations in flight at once
//!                                   # (more wait, by class; asynchronous ones in the store)
//!
//! [[routes]]
//! path = "/"                        # a path prefix, starting with '/'
//! function = "hello"                # a key of [functions]
//! class = "critical"                # a price class (the gateway checks it)
//! method = "GET"                    # optional: every method without it
//! async = true                      # optional: answer 202 and run from the queue
//! retries = 2                       # optional, async only: retries of the function's failures
//!
//! [[schedules]]                     # optional: one asynchronous invocation per tick (UTC)
//! cron = "*/5 * * * *"              # five cron fields, @hourly/@daily/..., or "@every 30s"
//! function = "hello"                # a key of [functions]
//! class = "batch"                   # a price class
//! path = "/report?kind=daily"       # optional, default "/"
//! method = "POST"                   # optional, default GET
//!
//! [budget]                          # optional: the tenant's monthly budget
//! monthly = 1000000                 # micro-cents a month
//! over = "throttle"                 # or "lower"
//! headroom = 0.05                   # a fraction of `monthly`, default 0.05
//! ```
//!
//! Everything the CLI can check without the gateway is checked here, and refused with the
//! file, the line and the field named: an unknown field, a bad app or function name, a route
//! path not starting with `/`, a route naming a function the file does not have, two routes
//! with the same method and path, a component file that cannot be read, a negative number.
//! (Classes and the components' contents are the gateway's to check.)

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use toml::Spanned;

/// Headroom of a budget that does not name one: a fraction of the monthly budget.
pub const DEFAULT_HEADROOM: f64 = 0.05;

/// A checked manifest, its component files read.
#[derive(Debug, Clone, PartialEq)]
pub struct Manifest {
    pub app: String,
    /// By name.
    pub functions: Vec<Function>,
    /// In the file's order.
    pub routes: Vec<Route>,
    /// In the file's order.
    pub schedules: Vec<Schedule>,
    pub budget: Option<Budget>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Function {
    pub name: String,
    /// The component file as the manifest names it, resolved against its directory.
    pub path: PathBuf,
    /// The component's bytes.
    pub bytes: Vec<u8>,
    /// The most of its invocations in flight at once; `None`: no limit.
    pub concurrency_max: Option<u32>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    pub path: String,
    pub function: String,
    pub class: String,
    /// `None`: every method.
    pub method: Option<String>,
    /// Every request is queued and answered `202 Accepted` (`async = true`).
    pub asynchronous: bool,
    /// Retries of an asynchronous run after the function's own failure (0 to 10).
    pub retries: u32,
}

/// A schedule: at each tick of `cron`, one asynchronous invocation of `function`.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// Five cron fields, `@hourly`-style, or `@every 30s` (UTC).
    pub cron: String,
    pub function: String,
    /// The path and query the function sees (default `/`).
    pub path: String,
    pub class: String,
    /// Default `GET`.
    pub method: String,
}

/// A tenant's monthly budget (`[budget]`, and `turnpike budget --monthly`).
#[derive(Debug, Clone, PartialEq)]
pub struct Budget {
    /// Micro-cents a month.
    pub monthly: f64,
    pub over: Over,
    /// A fraction of `monthly` that may be spent ahead of the pro-rata allowance.
    pub headroom: f64,
}

/// What the gateway does with a new invocation while the tenant is over budget.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Over {
    /// Refuse it with 429 and `Retry-After`.
    Throttle,
    /// Run it at the cheapest class.
    Lower,
}

impl Over {
    pub fn as_str(self) -> &'static str {
        match self {
            Over::Throttle => "throttle",
            Over::Lower => "lower",
        }
    }
}

impl Budget {
    /// The body of `PUT /v1/budget`.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "monthly": self.monthly,
            "over": self.over.as_str(),
            "headroom": self.headroom,
        })
    }
}

impl Manifest {
    /// The body of `PUT /v1/apps/{app}`, given each function's uploaded content hash.
    pub fn app_json(&self, hashes: &BTreeMap<String, String>) -> serde_json::Value {
        let routes: Vec<serde_json::Value> = self
            .routes
            .iter()
            .map(|r| {
                let mut route = serde_json::json!({
                    "path": r.path,
                    "function": r.function,
                    "class": r.class,
                });
                if let Some(method) = &r.method {
                    route["method"] = method.as_str().into();
                }
                if r.asynchronous {
                    route["async"] = true.into();
                }
                if r.retries > 0 {
                    route["retries"] = r.retries.into();
                }
                route
            })
            .collect();
        let schedules: Vec<serde_json::Value> = self
            .schedules
            .iter()
            .map(|s| {
                serde_json::json!({
                    "cron": s.cron,
                    "function": s.function,
                    "path": s.path,
                    "class": s.class,
                    "method": s.method,
                })
            })
            .collect();
        let mut app = serde_json::json!({ "functions": hashes, "routes": routes });
        if !schedules.is_empty() {
            app["schedules"] = schedules.into();
        }
        let limits: BTreeMap<&str, u32> = self
            .functions
            .iter()
            .filter_map(|f| Some((f.name.as_str(), f.concurrency_max?)))
            .collect();
        if !limits.is_empty() {
            app["concurrency_max"] = serde_json::json!(limits);
        }
        app
    }
}

/// The file as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    app: Spanned<String>,
    /// A component path, or a table `{ component = ..., concurrency_max = N }`.
    functions: Spanned<BTreeMap<String, Spanned<toml::Value>>>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
    #[serde(default)]
    schedules: Vec<Spanned<RawSchedule>>,
    budget: Option<Spanned<RawBudget>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    path: Spanned<String>,
    function: Spanned<String>,
    class: Spanned<String>,
    method: Option<Spanned<String>>,
    #[serde(rename = "async", default)]
    asynchronous: bool,
    retries: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSchedule {
    cron: Spanned<String>,
    function: Spanned<String>,
    path: Option<Spanned<String>>,
    class: Spanned<String>,
    method: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBudget {
    monthly: Spanned<f64>,
    over: Spanned<String>,
    headroom: Option<Spanned<f64>>,
}

/// Reads and checks the manifest at `path`; the error names the file, the line and the field.
pub fn load(path: &Path) -> Result<Manifest, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the manifest {}: {e}", path.display()))?;
    let dir = path.parent().unwrap_or(Path::new(""));
    parse(&text, path, dir)
}

/// The 1-based line of byte `offset` in `text`.
pub fn line_at(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The key whose value starts at byte `offset` (`monthly` for the `"x"` of `monthly = "x"`),
/// if the text before it on its line ends with `KEY =`.
fn key_before(text: &str, offset: usize) -> Option<&str> {
    let before = text.get(..offset)?;
    let line = before.rsplit('\n').next()?;
    let line = line.trim_end().strip_suffix('=')?.trim_end();
    // The key is ASCII: it starts after the last character that cannot be in one (which may
    // be wider than a byte).
    let start = line
        .char_indices()
        .rfind(|&(_, c)| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .map_or(0, |(i, c)| i + c.len_utf8());
    Some(&line[start..]).filter(|k| !k.is_empty())
}

/// Whether `name` is a DNS label: `[a-z0-9-]`, 1-63 characters, no leading or trailing `-`
/// (app and tenant names) - the store's rule, checked here before anything is uploaded.
pub fn check_dns_label(what: &str, name: &str) -> Result<(), String> {
    turnpike_store::check_name(what, name).map_err(|e| e.to_string())
}

/// Whether `name` can name a function: letters, digits, `-`, `_` and `.`, 1-63 characters,
/// so that it fits in a URL path as it is.
pub fn check_function_name(name: &str) -> Result<(), String> {
    let ok = (1..=63).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{name}` cannot name a function: use 1-63 of letters, digits, `-`, `_` and `.`"
        ))
    }
}

/// `v` if it is a number >= 0 (a budget's `monthly` and `headroom`).
pub fn check_non_negative(v: f64) -> Result<f64, String> {
    if v.is_finite() && v >= 0.0 {
        Ok(v)
    } else {
        Err(format!("{v} must be a number >= 0"))
    }
}

/// Whether `function` is a key of `[functions]`; if not, the error names those it has.
fn check_known<V>(functions: &BTreeMap<String, V>, function: &str) -> Result<(), String> {
    if functions.contains_key(function) {
        return Ok(());
    }
    let known: Vec<&str> = functions.keys().map(String::as_str).collect();
    Err(format!(
        "no function `{function}` in [functions] (it has: {})",
        known.join(", ")
    ))
}

/// What is wrong with a `[functions]` entry: the sub-field at fault (`None`: the entry
/// itself) and why.
type EntryError<'v> = (Option<&'v str>, String);

/// A `[functions]` entry's component path and concurrency limit.
fn function_entry(value: &toml::Value) -> Result<(&str, Option<u32>), EntryError<'_>> {
    let table = match value {
        toml::Value::String(path) => return Ok((path, None)),
        toml::Value::Table(table) => table,
        other => {
            return Err((
                None,
                format!(
                    "{} is not a function: give a component path, or a table `{{ component = \"dist/f.wasm\", concurrency_max = 4 }}`",
                    a_type(other)
                ),
            ))
        }
    };
    if let Some(unknown) = table
        .keys()
        .find(|k| !matches!(k.as_str(), "component" | "concurrency_max"))
    {
        return Err((
            Some(unknown),
            "unknown field: a function has `component` and `concurrency_max`".into(),
        ));
    }
    let component = match table.get("component") {
        Some(toml::Value::String(path)) => path.as_str(),
        Some(other) => return Err((Some("component"), format!("{}, not a path", a_type(other)))),
        None => return Err((None, "no `component`: name the component file".into())),
    };
    let concurrency_max = match table.get("concurrency_max") {
        None => None,
        Some(toml::Value::Integer(n)) => Some(
            turnpike_store::check_concurrency_max("concurrency_max", *n)
                .map_err(|e| (Some("concurrency_max"), e.to_string()))?,
        ),
        Some(other) => {
            return Err((
                Some("concurrency_max"),
                format!("{}, not a whole number", a_type(other)),
            ))
        }
    };
    Ok((component, concurrency_max))
}

/// A TOML value's type with its article: "an integer".
fn a_type(value: &toml::Value) -> String {
    let name = value.type_str();
    let article = if name.starts_with(['a', 'e', 'i', 'o', 'u']) {
        "an"
    } else {
        "a"
    };
    format!("{article} {name}")
}

/// Checks the manifest text read from `file` (named in errors); component paths are relative
/// to `dir`.
fn parse(text: &str, file: &Path, dir: &Path) -> Result<Manifest, String> {
    let at = |span: Range<usize>, field: &str, message: String| {
        format!(
            "{}: line {}: `{field}`: {message}",
            file.display(),
            line_at(text, span.start)
        )
    };
    let raw: RawManifest = toml::from_str(text).map_err(|e| {
        let Some(span) = e.span() else {
            return format!("{}: {}", file.display(), e.message());
        };
        let line = line_at(text, span.start);
        match key_before(text, span.start) {
            Some(key) => format!("{}: line {line}: `{key}`: {}", file.display(), e.message()),
            None => format!("{}: line {line}: {}", file.display(), e.message()),
        }
    })?;

    check_dns_label("app", raw.app.get_ref()).map_err(|e| at(raw.app.span(), "app", e))?;

    if raw.functions.get_ref().is_empty() {
        return Err(at(
            raw.functions.span(),
            "functions",
            "no functions: name at least one component, `hello = \"dist/hello.wasm\"`".into(),
        ));
    }
    let mut functions = Vec::new();
    for (name, entry) in raw.functions.get_ref() {
        let field = format!("functions.{name}");
        let span = entry.span();
        check_function_name(name).map_err(|e| at(span.clone(), &field, e))?;
        let (component, concurrency_max) =
            function_entry(entry.get_ref()).map_err(|(sub, e)| {
                let field = match sub {
                    Some(sub) => format!("{field}.{sub}"),
                    None => field.clone(),
                };
                at(span.clone(), &field, e)
            })?;
        let path = dir.join(component);
        let bytes = std::fs::read(&path).map_err(|e| {
            at(
                span.clone(),
                &field,
                format!("cannot read the component {}: {e}", path.display()),
            )
        })?;
        functions.push(Function {
            name: name.clone(),
            path,
            bytes,
            concurrency_max,
        });
    }

    let mut routes = Vec::new();
    let mut seen = HashSet::new();
    for (i, route) in raw.routes.iter().enumerate() {
        let r = route.get_ref();
        let field = |name: &str| format!("routes[{i}].{name}");
        let path = r.path.get_ref();
        if !path.starts_with('/') {
            return Err(at(
                r.path.span(),
                &field("path"),
                format!("`{path}` must start with `/`"),
            ));
        }
        let function = r.function.get_ref();
        check_known(raw.functions.get_ref(), function)
            .map_err(|e| at(r.function.span(), &field("function"), e))?;
        let class = r.class.get_ref();
        if class.is_empty() {
            return Err(at(
                r.class.span(),
                &field("class"),
                "empty: name a price class (`turnpike classes` lists them)".into(),
            ));
        }
        if let Some(method) = &r.method {
            if http::Method::from_bytes(method.get_ref().as_bytes()).is_err() {
                return Err(at(
                    method.span(),
                    &field("method"),
                    format!("`{}` is not an HTTP method", method.get_ref()),
                ));
            }
        }
        let method = r.method.as_ref().map(|m| m.get_ref().clone());
        if !seen.insert((method.clone(), path.clone())) {
            return Err(at(
                route.span(),
                &format!("routes[{i}]"),
                format!(
                    "a second route for {}: two routes may not have the same method and path",
                    match &method {
                        Some(m) => format!("{m} {path}"),
                        None => format!("{path} (every method)"),
                    }
                ),
            ));
        }
        let retries = match &r.retries {
            None => 0,
            Some(n) => match u32::try_from(*n.get_ref()) {
                Ok(n) if n <= turnpike_store::RETRIES_MAX => n,
                _ => {
                    return Err(at(
                        n.span(),
                        &field("retries"),
                        format!(
                            "{} is not a number of retries from 0 to {}",
                            n.get_ref(),
                            turnpike_store::RETRIES_MAX
                        ),
                    ))
                }
            },
        };
        if retries > 0 && !r.asynchronous {
            return Err(at(
                route.span(),
                &field("retries"),
                "retries apply to asynchronous runs: set `async = true` on this route too".into(),
            ));
        }
        routes.push(Route {
            path: path.clone(),
            function: function.clone(),
            class: class.clone(),
            method,
            asynchronous: r.asynchronous,
            retries,
        });
    }

    let budget = match &raw.budget {
        None => None,
        Some(b) => {
            let b = b.get_ref();
            let non_negative = |value: &Spanned<f64>, name: &str| {
                check_non_negative(*value.get_ref())
                    .map_err(|e| at(value.span(), &format!("budget.{name}"), e))
            };
            let monthly = non_negative(&b.monthly, "monthly")?;
            let headroom = match &b.headroom {
                Some(h) => non_negative(h, "headroom")?,
                None => DEFAULT_HEADROOM,
            };
            let over = match b.over.get_ref().as_str() {
                "throttle" => Over::Throttle,
                "lower" => Over::Lower,
                other => {
                    return Err(at(
                        b.over.span(),
                        "budget.over",
                        format!("`{other}` must be `throttle` or `lower`"),
                    ))
                }
            };
            Some(Budget {
                monthly,
                over,
                headroom,
            })
        }
    };

    let mut schedules = Vec::new();
    for (i, schedule) in raw.schedules.iter().enumerate() {
        let r = schedule.get_ref();
        let field = |name: &str| format!("schedules[{i}].{name}");
        let cron = r.cron.get_ref();
        if let Err(e) = turnpike_store::cron::Cron::parse(cron) {
            return Err(at(r.cron.span(), &field("cron"), e.to_string()));
        }
        let function = r.function.get_ref();
        check_known(raw.functions.get_ref(), function)
            .map_err(|e| at(r.function.span(), &field("function"), e))?;
        let path = match &r.path {
            Some(p) if !p.get_ref().starts_with('/') => {
                return Err(at(
                    p.span(),
                    &field("path"),
                    format!("`{}` must start with `/`", p.get_ref()),
                ))
            }
            Some(p) => p.get_ref().clone(),
            None => "/".to_string(),
        };
        if r.class.get_ref().is_empty() {
            return Err(at(
                r.class.span(),
                &field("class"),
                "empty: name a price class (`turnpike classes` lists them)".into(),
            ));
        }
        let method = match &r.method {
            Some(m) if http::Method::from_bytes(m.get_ref().as_bytes()).is_err() => {
                return Err(at(
                    m.span(),
                    &field("method"),
                    format!("`{}` is not an HTTP method", m.get_ref()),
                ))
            }
            Some(m) => m.get_ref().clone(),
            None => "GET".to_string(),
        };
        schedules.push(Schedule {
            cron: cron.clone(),
            function: function.clone(),
            path,
            class: r.class.get_ref().clone(),
            method,
        });
    }

    Ok(Manifest {
        app: raw.app.into_inner(),
        functions,
        routes,
        schedules,
        budget,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"app = "shop"

[functions]
hello = "dist/hello.wasm"
spin = "dist/spin.wasm"

[[routes]]
path = "/"
function = "hello"
class = "critical"
method = "GET"

[[routes]]
path = "/work"
function = "spin"
class = "batch"

[budget]
monthly = 1000000
over = "lower"
"#;

    /// A directory with `dist/hello.wasm` and `dist/spin.wasm` (not real components: the
    /// manifest does not look inside).
    fn components() -> tempfile::TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("dist")).expect("mkdir");
        for name in ["hello", "spin"] {
            std::fs::write(dir.path().join(format!("dist/{name}.wasm")), name).expect("write");
        }
        dir
    }

    fn check(text: &str) -> Result<Manifest, String> {
        let dir = components();
        parse(text, Path::new("app/turnpike.toml"), dir.path())
    }

    /// The error for `GOOD` with `from` replaced by `to`.
    fn error(from: &str, to: &str) -> String {
        assert!(GOOD.contains(from), "{from}");
        check(&GOOD.replacen(from, to, 1)).expect_err("refused")
    }

    fn assert_names(error: &str, line: usize, field: &str) {
        assert!(
            error.starts_with(&format!("app/turnpike.toml: line {line}: "))
                && error.contains(field),
            "expected line {line} and `{field}` in: {error}"
        );
    }

    #[test]
    fn a_good_manifest() {
        let dir = components();
        let file = dir.path().join("turnpike.toml");
        std::fs::write(&file, GOOD).expect("write");
        let m = load(&file).expect("a good manifest");
        assert_eq!(m.app, "shop");
        assert_eq!(
            m.functions
                .iter()
                .map(|f| (f.name.as_str(), f.bytes.as_slice()))
                .collect::<Vec<_>>(),
            [("hello", &b"hello"[..]), ("spin", &b"spin"[..])]
        );
        assert_eq!(m.functions[0].path, dir.path().join("dist/hello.wasm"));
        assert_eq!(
            m.routes,
            [
                Route {
                    path: "/".into(),
                    function: "hello".into(),
                    class: "critical".into(),
                    method: Some("GET".into()),
                    asynchronous: false,
                    retries: 0,
                },
                Route {
                    path: "/work".into(),
                    function: "spin".into(),
                    class: "batch".into(),
                    method: None,
                    asynchronous: false,
                    retries: 0,
                }
            ]
        );
        assert_eq!(
            m.budget,
            Some(Budget {
                monthly: 1e6,
                over: Over::Lower,
                headroom: DEFAULT_HEADROOM
            })
        );
        let hashes = BTreeMap::from([
            ("hello".to_string(), "h1".to_string()),
            ("spin".to_string(), "h2".to_string()),
        ]);
        assert_eq!(
            m.app_json(&hashes),
            serde_json::json!({
                "functions": {"hello": "h1", "spin": "h2"},
                "routes": [
                    {"path": "/", "function": "hello", "class": "critical", "method": "GET"},
                    {"path": "/work", "function": "spin", "class": "batch"}
                ]
            })
        );
        assert_eq!(
            m.budget.expect("budget").to_json(),
            serde_json::json!({"monthly": 1e6, "over": "lower", "headroom": 0.05})
        );
    }

    #[test]
    fn routes_and_budget_are_optional() {
        let m = check("app = \"a-1\"\n[functions]\nf = \"dist/hello.wasm\"\n").expect("good");
        assert!(m.routes.is_empty() && m.budget.is_none());
    }

    #[test]
    fn bad_app_names_are_refused() {
        for bad in [
            "Shop",
            "-shop",
            "shop-",
            "",
            "sh op",
            "shop.x",
            &"a".repeat(64),
        ] {
            let e = error("app = \"shop\"", &format!("app = \"{bad}\""));
            assert_names(&e, 1, "`app`");
            assert!(e.contains("DNS label"), "{e}");
        }
        assert!(check_dns_label("app", &"a".repeat(63)).is_ok());
    }

    #[test]
    fn unknown_fields_and_syntax_errors_name_the_line() {
        let e = error("class = \"batch\"", "class = \"batch\"\nweight = 3");
        assert_names(&e, 17, "`weight`");
        let e = error("[budget]", "[budget]\ncurrency = \"usd\"");
        assert_names(&e, 19, "`currency`");
        let e = error("path = \"/work\"", "path = \"/work");
        assert!(e.starts_with("app/turnpike.toml: line 14: "), "{e}");
        let e = error("class = \"critical\"\n", "");
        assert_names(&e, 7, "`class`");
    }

    #[test]
    fn a_value_of_the_wrong_type_names_its_field() {
        let e = error("monthly = 1000000", "monthly = \"lots\"");
        assert_names(&e, 19, "`monthly`");
        let e = error("hello = \"dist/hello.wasm\"", "hello = 3");
        assert_names(&e, 4, "`functions.hello`");
    }

    #[test]
    fn a_route_path_must_start_with_a_slash() {
        let e = error("path = \"/work\"", "path = \"work\"");
        assert_names(&e, 14, "`routes[1].path`");
    }

    #[test]
    fn a_route_must_name_a_function_of_the_manifest() {
        let e = error("function = \"spin\"", "function = \"spinn\"");
        assert_names(&e, 15, "`routes[1].function`");
        assert!(e.contains("spinn") && e.contains("hello, spin"), "{e}");
    }

    #[test]
    fn components_must_be_readable_and_functions_named() {
        let e = error("dist/spin.wasm", "dist/nope.wasm");
        assert_names(&e, 5, "`functions.spin`");
        assert!(e.contains("nope.wasm"), "{e}");
        let e = error("spin = ", "\"sp/in\" = ");
        assert_names(&e, 5, "cannot name a function");
        let e = check("app = \"a\"\n[functions]\n").expect_err("no functions");
        assert!(
            e.contains("`functions`") && e.contains("no functions"),
            "{e}"
        );
    }

    #[test]
    fn a_function_may_have_a_concurrency_limit_and_a_bad_one_names_its_field() {
        let m = check(&GOOD.replacen(
            "spin = \"dist/spin.wasm\"",
            "spin = { component = \"dist/spin.wasm\", concurrency_max = 4 }",
            1,
        ))
        .expect("good");
        assert_eq!(m.functions[1].concurrency_max, Some(4));
        assert_eq!(m.functions[0].concurrency_max, None);
        let hashes = BTreeMap::from([
            ("hello".to_string(), "h1".to_string()),
            ("spin".to_string(), "h2".to_string()),
        ]);
        assert_eq!(
            m.app_json(&hashes)["concurrency_max"],
            serde_json::json!({"spin": 4})
        );
        for (bad, field, says) in [
            (
                "concurrency_max = -1",
                "`functions.spin.concurrency_max`",
                "1 to",
            ),
            (
                "concurrency_max = 0",
                "`functions.spin.concurrency_max`",
                "1 to",
            ),
            (
                "concurrency_max = 1e9",
                "`functions.spin.concurrency_max`",
                "whole number",
            ),
            (
                "concurrency_max = 2, memory = 3",
                "`functions.spin.memory`",
                "unknown field",
            ),
        ] {
            let e = error(
                "spin = \"dist/spin.wasm\"",
                &format!("spin = {{ component = \"dist/spin.wasm\", {bad} }}"),
            );
            assert_names(&e, 5, field);
            assert!(e.contains(says), "{bad}: {e}");
        }
        let e = error(
            "spin = \"dist/spin.wasm\"",
            "spin = { concurrency_max = 2 }",
        );
        assert_names(&e, 5, "no `component`");
        let e = error("spin = \"dist/spin.wasm\"", "spin = 3");
        assert_names(&e, 5, "`functions.spin`");
    }

    #[test]
    fn budget_numbers_must_not_be_negative_and_over_is_throttle_or_lower() {
        let e = error("monthly = 1000000", "monthly = -1");
        assert_names(&e, 19, "`budget.monthly`");
        let e = error("over = \"lower\"", "over = \"lower\"\nheadroom = -0.5");
        assert_names(&e, 21, "`budget.headroom`");
        let e = error("over = \"lower\"", "over = \"slower\"");
        assert_names(&e, 20, "`budget.over`");
        assert!(e.contains("throttle"), "{e}");
        let e = error("monthly = 1000000", "monthly = nan");
        assert_names(&e, 19, "`budget.monthly`");
    }

    #[test]
    fn two_routes_with_the_same_method_and_path_are_refused() {
        let e = error("path = \"/work\"", "path = \"/\"\nmethod = \"GET\"");
        assert_names(&e, 13, "`routes[1]`");
        assert!(e.contains("GET /"), "{e}");
        // The same path for another method, or for every method, is another route.
        assert!(check(&GOOD.replacen("path = \"/work\"", "path = \"/\"", 1)).is_ok());
        let e = error(
            "[budget]",
            "[[routes]]\npath = \"/work\"\nfunction = \"hello\"\nclass = \"batch\"\n[budget]",
        );
        assert_names(&e, 18, "`routes[2]`");
        assert!(e.contains("every method"), "{e}");
    }

    #[test]
    fn a_bad_method_is_refused() {
        let e = error("method = \"GET\"", "method = \"G T\"");
        assert_names(&e, 11, "`routes[0].method`");
    }

    #[test]
    fn async_routes_and_their_retries() {
        let m = check(&GOOD.replacen(
            "path = \"/work\"",
            "path = \"/work\"\nasync = true\nretries = 3",
            1,
        ))
        .expect("an async route");
        assert!(m.routes[1].asynchronous && m.routes[1].retries == 3);
        assert!(!m.routes[0].asynchronous);
        let json = m.app_json(&BTreeMap::new());
        assert_eq!(json["routes"][1]["async"], true);
        assert_eq!(json["routes"][1]["retries"], 3);
        assert!(json["routes"][0].get("async").is_none());
        let e = error(
            "path = \"/work\"",
            "path = \"/work\"\nasync = true\nretries = 11",
        );
        assert_names(&e, 16, "`routes[1].retries`");
        let e = error(
            "path = \"/work\"",
            "path = \"/work\"\nasync = true\nretries = -1",
        );
        assert_names(&e, 16, "`routes[1].retries`");
        let e = error("path = \"/work\"", "path = \"/work\"\nretries = 2");
        assert!(
            e.contains("`routes[1].retries`") && e.contains("async = true"),
            "{e}"
        );
        let e = error("path = \"/work\"", "path = \"/work\"\nasync = \"yes\"");
        assert!(e.contains("async"), "{e}");
    }

    #[test]
    fn schedules_are_checked_with_their_line() {
        let with = |schedule: &str| {
            GOOD.replacen(
                "[budget]",
                &format!("[[schedules]]\n{schedule}\n[budget]"),
                1,
            )
        };
        let m = check(&with(
            "cron = \"@every 30s\"\nfunction = \"spin\"\nclass = \"batch\"",
        ))
        .expect("a schedule");
        assert_eq!(
            m.schedules,
            [Schedule {
                cron: "@every 30s".into(),
                function: "spin".into(),
                path: "/".into(),
                class: "batch".into(),
                method: "GET".into(),
            }]
        );
        assert_eq!(
            m.app_json(&BTreeMap::new())["schedules"][0]["cron"],
            "@every 30s"
        );
        // Each bad schedule: the error names the field (and what is wrong).
        let bad = [
            (
                "cron = \"61 * * * *\"\nfunction = \"spin\"\nclass = \"batch\"",
                "`schedules[0].cron`",
                "minute 61",
            ),
            (
                "cron = \"@daily\"\nfunction = \"nope\"\nclass = \"batch\"",
                "`schedules[0].function`",
                "nope",
            ),
            (
                "cron = \"@daily\"\nfunction = \"spin\"\nclass = \"batch\"\npath = \"x\"",
                "`schedules[0].path`",
                "`x`",
            ),
            ("cron = \"@daily\"\nfunction = \"spin\"", "class", "missing"),
        ];
        for (schedule, field, what) in bad {
            let e = check(&with(schedule)).unwrap_err();
            assert!(e.contains(field) && e.contains(what), "{schedule}: {e}");
        }
    }

    #[test]
    fn a_missing_manifest_is_named() {
        let e = load(Path::new("/nonexistent/turnpike.toml")).expect_err("missing");
        assert!(e.contains("/nonexistent/turnpike.toml"), "{e}");
    }

    /// Found by the fuzzer below: a line whose text before `=` ended in a character wider
    /// than a byte panicked the error message's key lookup.
    #[test]
    fn a_wide_character_before_an_equals_sign_is_an_error_not_a_panic() {
        for text in [
            "'\u{a1}=",
            "app = \"shop\"\nspin\u{20ac} = 1\n",
            "[functions]\nh\u{e9}= \"x\"\n",
        ] {
            let error = check(text).expect_err("refused");
            assert!(error.starts_with("app/turnpike.toml: line "), "{error}");
        }
    }

    /// Fuzzing (cases: `TURNPIKE_FUZZ_CASES`, default 2,000): any text, and the good
    /// manifest with characters changed, gives a manifest or an error naming the file -
    /// never a panic.
    mod fuzz {
        use super::*;
        use proptest::prelude::*;

        fn config() -> ProptestConfig {
            let cases = std::env::var("TURNPIKE_FUZZ_CASES")
                .ok()
                .map(|c| c.parse().expect("TURNPIKE_FUZZ_CASES is a number"))
                .unwrap_or(2_000);
            ProptestConfig {
                cases,
                failure_persistence: None,
                ..ProptestConfig::default()
            }
        }

        /// The components' directory, made once.
        fn dir() -> &'static Path {
            static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
            DIR.get_or_init(components).path()
        }

        fn parses_or_names_the_file(text: &str) -> Result<(), TestCaseError> {
            if let Err(e) = parse(text, Path::new("app/turnpike.toml"), dir()) {
                prop_assert!(e.starts_with("app/turnpike.toml: "), "{e}");
            }
            Ok(())
        }

        /// Characters that mean something to TOML or to the manifest, and some that are
        /// wider than a byte.
        const CHARACTERS: &[char] = &[
            '=', '"', '\'', '[', ']', '{', '}', '\n', '#', ',', '.', '-', '0', '9', 'a', ' ', '/',
            '\\', 'é', '€', '😀', '\u{0}',
        ];

        proptest! {
            #![proptest_config(config())]

            #[test]
            fn any_text(text in "\\PC{0,200}") {
                parses_or_names_the_file(&text)?;
            }

            #[test]
            fn the_good_manifest_changed(
                edits in proptest::collection::vec(
                    (any::<usize>(), proptest::sample::select(CHARACTERS), any::<bool>()),
                    1..6,
                ),
            ) {
                let mut text: Vec<char> = GOOD.chars().collect();
                for (at, c, insert) in edits {
                    let at = at % (text.len() + 1);
                    if insert || at == text.len() {
                        text.insert(at, c);
                    } else {
                        text[at] = c;
                    }
                }
                parses_or_names_the_file(&text.into_iter().collect::<String>())?;
            }
        }
    }
}
