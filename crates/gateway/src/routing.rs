//! The gateway's routing table: which function, class and paying tenant a request's host,
//! method and path lead to; and each app's functions by name, for direct invocations
//! (`/v1/apps/APP/functions/NAME/invoke`), so no invocation reads the store.
//!
//! - **Apps by host name.** App `shop`'s routes answer requests whose host is
//!   `shop.<domain>` (any port) - or `shop.turnpike`, the name functions call it by (see
//!   [`crate::chain`]). A host naming an app that does not exist answers 404. Two tenants'
//!   routes can never collide: each app has its own host.
//! - **Operator routes** (the gateway's configuration: `turnpike up`'s demo app,
//!   `turnpike gateway --route`) answer every other host, e.g. `localhost:8080`. Their
//!   invocations are billed to the [`OPERATOR`] tenant.
//! - Within a route set, a route's path is a prefix on whole segments (`/work` matches
//!   `/work/batch`, not `/workshop`), the longest match wins, and a route with a method wins
//!   over one without at the same length.
//!
//! - **Concurrency limits** ([`RoutingTable::limits`]): a function's own, and its app's
//!   tenant's (the owner's, whoever pays for a call between functions), read with the apps.
//!
//! The table is rebuilt from the store whenever its routing version changes (after every
//! deploy or delete, by this gateway at once and by others within [`crate::gateway`]'s poll
//! period), and swapped in whole: a request routes on one consistent table, and one that
//! is running keeps the function version it started with.

use std::collections::{BTreeMap, HashMap};

use http::Method;
use turnpike_policy::concurrency::Limit;
use turnpike_policy::{ClassId, ClassSet};
use turnpike_store::App;

/// The tenant that pays for operator routes.
pub const OPERATOR: &str = "admin";
/// The host suffix functions use to call an app: `http://shop.turnpike/path`.
pub const PLATFORM_DOMAIN: &str = "turnpike";

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// Who pays.
    pub tenant: String,
    pub app: String,
    /// The function's name in its app (the ledger's label).
    pub function: String,
    /// Its component's content hash.
    pub hash: String,
    pub class: ClassId,
    /// Run asynchronously: the request is stored and answered `202 Accepted`, then run from
    /// the store's queue (see [`crate::async_invocations`]).
    pub asynchronous: bool,
    /// An asynchronous run's retries after the function's own failure.
    pub retries: u32,
    /// Its concurrency limits ([`RoutingTable::limits`]): read with the route, so an
    /// invocation looks the table up once.
    pub concurrency_limits: Vec<Limit>,
}

/// A route: requests whose path starts with `prefix` (whole segments) go to `target`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Route {
    pub method: Option<Method>,
    pub prefix: String,
    pub target: Target,
}

/// Every route the gateway serves, by app.
#[derive(Debug, Default)]
pub struct RoutingTable {
    /// The store's routing version this table was built from.
    pub version: i64,
    apps: HashMap<String, Vec<Route>>,
    /// Each app's tenant and its functions by name (direct invocations).
    functions: HashMap<String, (String, HashMap<String, Deployed>)>,
    operator: Vec<Route>,
}

/// A deployed function as the table keeps it.
#[derive(Debug)]
pub struct Deployed {
    pub hash: String,
    /// Its tenant's limit first (the key its invocations are routed by), then its own.
    pub limits: Vec<Limit>,
}

/// The concurrency key of a tenant's functions.
pub fn tenant_key(tenant: &str) -> String {
    format!("tenant:{tenant}")
}

/// The concurrency key of one function (app names are unique across tenants).
pub fn function_key(app: &str, function: &str) -> String {
    format!("function:{app}/{function}")
}

/// What a request's host and path lead to.
#[derive(Debug, PartialEq, Eq)]
pub enum Lookup<'a> {
    Found(&'a Target),
    /// The host names an app that does not exist.
    NoApp(String),
    /// No route of the app (or of the operator) matches.
    NoRoute,
}

impl RoutingTable {
    /// A table of the store's `apps`, its tenants' concurrency limits and the operator's
    /// routes. A stored route whose class this gateway does not know (a gateway configured
    /// with other classes) is left out.
    pub fn new(
        version: i64,
        apps: &[App],
        tenant_limits: &BTreeMap<String, u32>,
        classes: &ClassSet,
        operator: Vec<Route>,
    ) -> Self {
        let functions = apps_functions(apps, tenant_limits);
        let routes = apps
            .iter()
            .map(|app| {
                let routes = app
                    .routes
                    .iter()
                    .filter_map(|r| {
                        let function = app.function(&r.function)?;
                        Some(Route {
                            method: r.method.as_deref().and_then(|m| m.parse().ok()),
                            prefix: r.path.clone(),
                            target: Target {
                                tenant: app.tenant.clone(),
                                app: app.name.clone(),
                                function: function.name.clone(),
                                hash: function.hash.clone(),
                                class: classes.by_name(&r.class)?,
                                asynchronous: r.asynchronous,
                                retries: r.retries,
                                concurrency_limits: functions
                                    .get(&app.name)
                                    .and_then(|(_, fs)| fs.get(&function.name))
                                    .map(|f| f.limits.clone())
                                    .unwrap_or_default(),
                            },
                        })
                    })
                    .collect();
                (app.name.clone(), routes)
            })
            .collect();
        Self {
            version,
            apps: routes,
            functions,
            operator,
        }
    }

    /// `tenant`'s function `app/function` as deployed (its hash and limits); `None` if there
    /// is none, or the app is another tenant's.
    pub fn function(&self, tenant: &str, app: &str, function: &str) -> Option<&Deployed> {
        let (owner, functions) = self.functions.get(app)?;
        (owner == tenant).then(|| functions.get(function))?
    }

    /// The apps of `tenant`.
    pub fn apps_of<'t>(&'t self, tenant: &'t str) -> impl Iterator<Item = &'t str> + 't {
        self.functions
            .iter()
            .filter(move |(_, (owner, _))| owner == tenant)
            .map(|(app, _)| app.as_str())
    }

    /// The concurrency limits of `app/function` (empty when it has none, or is not an app's:
    /// an operator route's, a component invoked by hash).
    pub fn limits(&self, app: &str, function: &str) -> &[Limit] {
        self.functions
            .get(app)
            .and_then(|(_, functions)| functions.get(function))
            .map_or(&[], |f| f.limits.as_slice())
    }

    /// Where a request for `host` (the `Host` header or the URI's authority), `method` and
    /// `path` goes, with `domain` the gateway's own domain.
    pub fn lookup(
        &self,
        domain: &str,
        host: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Lookup<'_> {
        let routes = match host.and_then(|h| app_of_host(h, domain)) {
            Some(app) => match self.apps.get(app) {
                Some(routes) => routes,
                None => return Lookup::NoApp(app.to_string()),
            },
            None => &self.operator,
        };
        longest_match(routes, method, path).map_or(Lookup::NoRoute, Lookup::Found)
    }

    /// The operator's routes (as configured).
    pub fn operator(&self) -> &[Route] {
        &self.operator
    }
}

fn apps_functions(
    apps: &[App],
    tenant_limits: &BTreeMap<String, u32>,
) -> HashMap<String, (String, HashMap<String, Deployed>)> {
    apps.iter()
        .map(|app| {
            let tenant_limit = tenant_limits.get(&app.tenant).map(|&max| Limit {
                key: tenant_key(&app.tenant),
                max,
            });
            let functions = app
                .functions
                .iter()
                .map(|f| {
                    let own = f.concurrency_max.map(|max| Limit {
                        key: function_key(&app.name, &f.name),
                        max,
                    });
                    let limits = tenant_limit.iter().cloned().chain(own).collect();
                    let entry = Deployed {
                        hash: f.hash.clone(),
                        limits,
                    };
                    (f.name.clone(), entry)
                })
                .collect();
            (app.name.clone(), (app.tenant.clone(), functions))
        })
        .collect()
}

/// The app a host names: `APP.<domain>` or `APP.turnpike`, any port, any case.
pub fn app_of_host<'h>(host: &'h str, domain: &str) -> Option<&'h str> {
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    let (app, rest) = name.split_once('.')?;
    let ours = rest.eq_ignore_ascii_case(domain) || rest.eq_ignore_ascii_case(PLATFORM_DOMAIN);
    (ours && !app.is_empty()).then_some(app)
}

fn longest_match<'r>(routes: &'r [Route], method: &Method, path: &str) -> Option<&'r Target> {
    routes
        .iter()
        .filter(|r| r.method.as_ref().is_none_or(|m| m == method))
        .filter(|r| {
            let p = r.prefix.trim_end_matches('/');
            path.strip_prefix(p)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|r| (r.prefix.trim_end_matches('/').len(), r.method.is_some()))
        .map(|r| &r.target)
}

#[cfg(test)]
mod tests {
    use super::*;
    use turnpike_store::{Function, RouteSpec};

    fn app(name: &str, tenant: &str, routes: &[(&str, Option<&str>, &str, &str)]) -> App {
        App {
            name: name.into(),
            tenant: tenant.into(),
            functions: vec![
                Function {
                    name: "home".into(),
                    hash: format!("{name}-home"),
                    deployed_at: 0,
                    concurrency_max: None,
                },
                Function {
                    name: "api".into(),
                    hash: format!("{name}-api"),
                    deployed_at: 0,
                    concurrency_max: Some(3),
                },
            ],
            routes: routes
                .iter()
                .map(|(path, method, function, class)| RouteSpec {
                    path: path.to_string(),
                    method: method.map(String::from),
                    function: function.to_string(),
                    class: class.to_string(),
                    asynchronous: false,
                    retries: 0,
                })
                .collect(),
        }
    }

    #[test]
    fn hosts_name_apps() {
        assert_eq!(
            app_of_host("shop.localhost:8080", "localhost"),
            Some("shop")
        );
        assert_eq!(app_of_host("Shop.LOCALHOST", "localhost"), Some("Shop"));
        assert_eq!(app_of_host("shop.turnpike", "example.com"), Some("shop"));
        assert_eq!(app_of_host("shop.example.com", "example.com"), Some("shop"));
        assert_eq!(app_of_host("localhost:8080", "localhost"), None);
        assert_eq!(app_of_host("127.0.0.1:8080", "localhost"), None);
        assert_eq!(app_of_host("a.b.localhost", "localhost"), None);
        assert_eq!(app_of_host(".localhost", "localhost"), None);
    }

    #[test]
    fn each_app_routes_only_its_own_host() {
        let classes = ClassSet::default_four();
        let apps = [
            app(
                "shop",
                "acme",
                &[
                    ("/", None, "home", "critical"),
                    ("/api", Some("POST"), "api", "batch"),
                    ("/old", None, "home", "no-such-class"),
                ],
            ),
            app("blog", "other", &[("/", None, "api", "standard")]),
        ];
        let operator = vec![Route {
            method: None,
            prefix: "/hello".into(),
            target: Target {
                tenant: OPERATOR.into(),
                app: "demo".into(),
                function: "hello".into(),
                hash: "h".into(),
                class: ClassId(3),
                asynchronous: false,
                retries: 0,
                concurrency_limits: Vec::new(),
            },
        }];
        let tenant_limits = BTreeMap::from([("other".to_string(), 10)]);
        let table = RoutingTable::new(7, &apps, &tenant_limits, &classes, operator);
        let get = Method::GET;
        let found =
            |host, method: &Method, path| match table.lookup("localhost", Some(host), method, path)
            {
                Lookup::Found(t) => Some((t.tenant.clone(), t.function.clone(), t.class)),
                _ => None,
            };
        assert_eq!(
            found("shop.localhost", &get, "/api/x"),
            Some(("acme".into(), "home".into(), ClassId(3)))
        );
        assert_eq!(
            found("shop.localhost:8080", &Method::POST, "/api/x"),
            Some(("acme".into(), "api".into(), ClassId(0)))
        );
        assert_eq!(
            found("blog.localhost", &get, "/api"),
            Some(("other".into(), "api".into(), ClassId(1)))
        );
        // A route with a class this gateway does not know is left out: `/` answers.
        assert_eq!(
            found("shop.localhost", &get, "/old").map(|t| t.1),
            Some("home".into())
        );
        // The operator's routes answer other hosts only.
        assert_eq!(
            found("localhost:8080", &get, "/hello"),
            Some((OPERATOR.into(), "hello".into(), ClassId(3)))
        );
        assert_eq!(
            found("shop.localhost", &get, "/hello").map(|t| t.1),
            Some("home".into())
        );
        assert_eq!(table.lookup("localhost", None, &get, "/x"), Lookup::NoRoute);
        assert_eq!(
            table.lookup("localhost", Some("nope.localhost"), &get, "/"),
            Lookup::NoApp("nope".into())
        );
        assert_eq!(
            table.lookup("localhost", Some("localhost"), &get, "/helloworld"),
            Lookup::NoRoute
        );
    }

    #[test]
    fn a_functions_limits_are_its_owners_then_its_own() {
        let classes = ClassSet::default_four();
        let apps = [app("shop", "acme", &[]), app("blog", "other", &[])];
        let tenant_limits = BTreeMap::from([("other".to_string(), 10)]);
        let table = RoutingTable::new(1, &apps, &tenant_limits, &classes, Vec::new());
        let limit = |key: &str, max| Limit {
            key: key.into(),
            max,
        };
        assert_eq!(table.limits("shop", "home"), []);
        assert_eq!(table.limits("shop", "api"), [limit("function:shop/api", 3)]);
        assert_eq!(table.limits("blog", "home"), [limit("tenant:other", 10)]);
        assert_eq!(
            table.limits("blog", "api"),
            [limit("tenant:other", 10), limit("function:blog/api", 3)]
        );
        assert_eq!(table.limits("nope", "api"), []);
        assert_eq!(table.limits("shop", "nope"), []);
    }
}
