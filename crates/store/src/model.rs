//! What the store keeps, as the API shows it (serde names are the JSON field names of
//! `docs/api.md`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::StoreError;

/// A developer account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Tenant {
    pub name: String,
    /// May create tenants and invoke any component.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub admin: bool,
    /// The most invocations of its functions in flight at once (set by an admin); `None`:
    /// no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_max: Option<u32>,
}

/// The largest concurrency limit a function or tenant may have (a larger one is refused as a
/// likely mistake; no limit is the way to ask for none).
pub const CONCURRENCY_MAX_LIMIT: i64 = 1_000_000;

/// Checks a concurrency limit as given (`field` names it in the error): 1 to
/// [`CONCURRENCY_MAX_LIMIT`].
pub fn check_concurrency_max(field: &str, value: i64) -> Result<u32, StoreError> {
    if (1..=CONCURRENCY_MAX_LIMIT).contains(&value) {
        Ok(value as u32)
    } else {
        Err(StoreError::Invalid(format!(
            "`{field}` is {value}: a concurrency limit is 1 to {CONCURRENCY_MAX_LIMIT} (leave it out for no limit)"
        )))
    }
}

/// An API key as its tenant may see it (the key itself is shown only when made).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct KeyInfo {
    /// The first hex digits of its SHA-256 (`crate::KEY_ID_CHARS`).
    pub id: String,
    /// Unix seconds.
    pub created_at: i64,
}

/// An app as deployed: `PUT /v1/apps/{name}`'s body.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// Function name to component content hash.
    #[serde(default)]
    pub functions: BTreeMap<String, String>,
    #[serde(default)]
    pub routes: Vec<RouteSpec>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub schedules: Vec<ScheduleSpec>,
    /// Function name to its concurrency limit (the most of its invocations in flight at
    /// once); a function not named has none. Signed, so that a negative one is refused by
    /// [`AppSpec::check`] with its field named.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub concurrency_max: BTreeMap<String, i64>,
}

/// A schedule of an app: at each tick of `cron` (see [`crate::cron`]), one asynchronous
/// invocation of `function` with `method` and `path` (and query) at `class`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScheduleSpec {
    pub cron: String,
    pub function: String,
    #[serde(default = "root_path")]
    pub path: String,
    pub class: String,
    #[serde(default = "get_method")]
    pub method: String,
}

fn root_path() -> String {
    "/".into()
}

fn get_method() -> String {
    "GET".into()
}

impl ScheduleSpec {
    /// What identifies a schedule across deploys: a redeployed app keeps the next and last
    /// run of each schedule it still has.
    pub fn key(&self) -> String {
        format!(
            "{} {} {} {} {}",
            self.method, self.path, self.function, self.class, self.cron
        )
    }
}

/// A schedule as deployed, with its runs: `GET /v1/schedules`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Schedule {
    pub app: String,
    #[serde(flatten)]
    pub spec: ScheduleSpec,
    /// Unix ms of the next tick (`None`: the expression never fires again).
    #[serde(skip)]
    pub next_ms: Option<i64>,
    /// Unix ms of the last tick that fired, and the asynchronous invocation it made.
    #[serde(skip)]
    pub last_ms: Option<i64>,
    pub last_invocation: Option<String>,
}

/// A route of an app: requests to `path` (a prefix on whole segments) with `method` (any if
/// `None`) run `function` at `class`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSpec {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub function: String,
    pub class: String,
    /// Every request is an asynchronous invocation: answered `202 Accepted` once stored, run
    /// from the store's queue.
    #[serde(default, rename = "async", skip_serializing_if = "std::ops::Not::not")]
    pub asynchronous: bool,
    /// How many times an asynchronous invocation is run again after the function's own
    /// failure (a trap, a timeout, a 5xx response); at most [`RETRIES_MAX`]. The platform's
    /// failures are always retried.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub retries: u32,
}

/// The most retries a route or an invocation may ask for.
pub const RETRIES_MAX: u32 = 10;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// A deployed app.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct App {
    pub name: String,
    #[serde(skip)]
    pub tenant: String,
    pub functions: Vec<Function>,
    pub routes: Vec<RouteSpec>,
}

/// A function of an app at its current version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Function {
    pub name: String,
    pub hash: String,
    /// Unix seconds when this version went live.
    pub deployed_at: i64,
    /// The most of its invocations in flight at once; `None`: no limit.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency_max: Option<u32>,
}

impl App {
    pub fn function(&self, name: &str) -> Option<&Function> {
        self.functions.iter().find(|f| f.name == name)
    }
}

/// Tenant and app names: DNS labels, so an app's name can be its host name's first label.
pub fn check_name(what: &str, name: &str) -> Result<(), StoreError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(StoreError::Invalid(format!(
            "bad {what} name `{name}`: a name is a DNS label, 1-63 characters of a-z, 0-9 and `-`, not starting or ending with `-`"
        )))
    }
}

impl AppSpec {
    /// What the store can check alone (classes are the gateway's to check).
    pub fn check(&self) -> Result<(), StoreError> {
        for name in self.functions.keys() {
            if name.is_empty() || name.contains('/') {
                return Err(StoreError::Invalid(format!(
                    "bad function name `{name}`: not empty, no `/`"
                )));
            }
        }
        for (i, route) in self.routes.iter().enumerate() {
            if !route.path.starts_with('/') {
                return Err(StoreError::Invalid(format!(
                    "route {i}: path `{}` must start with `/`",
                    route.path
                )));
            }
            if !self.functions.contains_key(&route.function) {
                return Err(StoreError::Invalid(format!(
                    "route {i} ({}): the app has no function `{}`",
                    route.path, route.function
                )));
            }
            if let Some(method) = &route.method {
                if method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase()) {
                    return Err(StoreError::Invalid(format!(
                        "route {i} ({}): bad method `{method}` (GET, POST, ...)",
                        route.path
                    )));
                }
            }
            if route.retries > RETRIES_MAX {
                return Err(StoreError::Invalid(format!(
                    "route {i} ({}): `retries` is {}, over the most of {RETRIES_MAX}",
                    route.path, route.retries
                )));
            }
            let key = |r: &RouteSpec| (r.method.clone(), r.path.trim_end_matches('/').to_string());
            if let Some(j) = self.routes[..i].iter().position(|r| key(r) == key(route)) {
                return Err(StoreError::Conflict(format!(
                    "routes {j} and {i} both claim {} {}",
                    route.method.as_deref().unwrap_or("every method on"),
                    route.path
                )));
            }
        }
        for (function, max) in &self.concurrency_max {
            let field = format!("concurrency_max.{function}");
            if !self.functions.contains_key(function) {
                return Err(StoreError::Invalid(format!(
                    "`{field}`: the app has no function `{function}`"
                )));
            }
            check_concurrency_max(&field, *max)?;
        }
        for (i, schedule) in self.schedules.iter().enumerate() {
            let field = |name: &str| format!("schedules[{i}].{name}");
            if let Err(e) = crate::cron::Cron::parse(&schedule.cron) {
                return Err(StoreError::Invalid(format!("`{}`: {e}", field("cron"))));
            }
            if !self.functions.contains_key(&schedule.function) {
                return Err(StoreError::Invalid(format!(
                    "`{}`: the app has no function `{}`",
                    field("function"),
                    schedule.function
                )));
            }
            if !schedule.path.starts_with('/') {
                return Err(StoreError::Invalid(format!(
                    "`{}`: `{}` must start with `/`",
                    field("path"),
                    schedule.path
                )));
            }
            if schedule.method.is_empty()
                || !schedule.method.bytes().all(|b| b.is_ascii_uppercase())
            {
                return Err(StoreError::Invalid(format!(
                    "`{}`: bad method `{}` (GET, POST, ...)",
                    field("method"),
                    schedule.method
                )));
            }
            if let Some(j) = self.schedules[..i]
                .iter()
                .position(|s| s.key() == schedule.key())
            {
                return Err(StoreError::Conflict(format!(
                    "schedules {j} and {i} are the same schedule: one would fire twice per tick"
                )));
            }
        }
        Ok(())
    }
}

/// A tenant's default headroom: 5% of the monthly budget.
pub const DEFAULT_HEADROOM: f64 = 0.05;

/// A tenant's monthly budget and what happens to new invocations over it.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// Micro-cents per calendar month (UTC).
    pub monthly: f64,
    pub over: OverBudget,
    /// How far spend may run ahead of the pro-rata budget, as a fraction of `monthly`.
    #[serde(default = "default_headroom")]
    pub headroom: f64,
}

/// [`DEFAULT_HEADROOM`], for serde defaults.
pub fn default_headroom() -> f64 {
    DEFAULT_HEADROOM
}

impl Budget {
    pub fn check(&self) -> Result<(), StoreError> {
        if !(self.monthly.is_finite() && self.monthly >= 0.0) {
            return Err(StoreError::Invalid(format!(
                "budget `monthly` must be a number >= 0, not {}",
                self.monthly
            )));
        }
        if !(self.headroom.is_finite() && self.headroom >= 0.0) {
            return Err(StoreError::Invalid(format!(
                "budget `headroom` must be a number >= 0, not {}",
                self.headroom
            )));
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OverBudget {
    /// 429 with `Retry-After`.
    #[default]
    Throttle,
    /// Run at the cheapest class.
    Lower,
}

impl OverBudget {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Throttle => "throttle",
            Self::Lower => "lower",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "throttle" => Some(Self::Throttle),
            "lower" => Some(Self::Lower),
            _ => None,
        }
    }
}

/// One invocation in the ledger (serialized as the gateway's ledger outbox keeps it).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UsageEntry {
    /// Unique per invocation, the same on its retries.
    pub invocation: i64,
    /// Who pays.
    pub tenant: String,
    pub app: String,
    pub function: String,
    /// The class it ran at (its price).
    pub class: String,
    /// Unix seconds when it ended.
    pub at: i64,
    /// The HTTP status answered.
    pub status: u16,
    /// Time on a core.
    pub cpu_ns: i64,
    /// Memory actually used, integrated over the run.
    pub gb_seconds: f64,
    /// Micro-cents.
    pub cost: f64,
}

/// A column usage can be summed by.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum UsageKey {
    App,
    Function,
    Class,
    Day,
}

impl UsageKey {
    pub const ALL: [UsageKey; 4] = [Self::App, Self::Function, Self::Class, Self::Day];

    /// The ledger's column (and the API's name for it).
    pub fn column(self) -> &'static str {
        match self {
            Self::App => "app",
            Self::Function => "function",
            Self::Class => "class",
            Self::Day => "day",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.column() == text)
    }
}

/// Usage summed over some ledger entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct UsageTotals {
    pub invocations: u64,
    pub cpu_seconds: f64,
    pub gb_seconds: f64,
    pub cost: f64,
}

/// Usage summed by some keys.
#[derive(Clone, Debug, PartialEq)]
pub struct UsageRow {
    pub keys: Vec<(UsageKey, String)>,
    pub totals: UsageTotals,
}
