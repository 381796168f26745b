//! The developer API under `/v1/` (contract: `docs/api.md`; machine-readable:
//! `GET /v1/openapi.json`): tenants and keys, component uploads, apps with their functions
//! and routes, direct invocation, usage, budgets, the class catalogue.
//!
//! Every call but the catalogue and the OpenAPI document needs `Authorization: Bearer KEY`.
//! A tenant sees only its own things: another tenant's app answers 404 exactly as a missing
//! one. Errors are JSON, `{"error": "..."}`, and a refused request writes nothing.

// Refusals are the HTTP responses to send (`Result<_, Response>`): built once per refused
// request, never on a hot path, so their size does not matter.
#![allow(clippy::result_large_err)]

use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{json, Value};
use turnpike_store::{
    calendar::rfc3339, AppSpec, AsyncState, Budget, Day, StoreError, Tenant, UsageKey, UsageTotals,
};

/// Asynchronous invocations a list shows without `limit`, and at most with it.
const LIST_DEFAULT: usize = 100;
const LIST_MAX: usize = 1000;

use crate::async_invocations::{invocation_json, wants_async};
use crate::billing::{allowance, over_budget};
use crate::components::CheckError;
use crate::gateway::{Body, CallerBody, Gateway, BOUND_RETRY_AFTER_S, CLASS_HEADER};
use crate::refusal::{refuse, refuse_for, Refusal};
use crate::routing::Target;

/// Creates the `admin` tenant if the store has no admin yet (a fresh store): its key, to be
/// shown once, or `None` when there was an admin already.
pub async fn bootstrap_admin(store: &turnpike_store::Store) -> Result<Option<String>, StoreError> {
    if store.has_admin().await? {
        return Ok(None);
    }
    match store.create_tenant(crate::routing::OPERATOR, true).await {
        Ok((_, key)) => Ok(Some(key)),
        // Another process bootstrapped it at the same moment.
        Err(StoreError::Conflict(_)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("openapi.json");

type Response = http::Response<Body>;

fn json_response(status: StatusCode, value: &Value) -> Response {
    json_text(status, Bytes::from(format!("{value:#}\n")))
}

/// A response of JSON text.
fn json_text(status: StatusCode, text: Bytes) -> Response {
    let mut response = http::Response::new(Body::full(text));
    *response.status_mut() = status;
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    response
}

fn not_found(what: &str) -> Response {
    refuse(Refusal::NotFound, format!("{what} not found"))
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::Conflict(m) => refuse(Refusal::Conflict, m),
        StoreError::Invalid(m) => refuse(Refusal::Invalid, m),
        StoreError::Unprocessable(m) => refuse(Refusal::Unprocessable, m),
        StoreError::Full(m) => refuse_for(Refusal::OverBudget, m, Some(BOUND_RETRY_AFTER_S)),
        e => refuse(Refusal::Unavailable, format!("the store failed: {e}")),
    }
}

/// Answers a request whose path starts with `/v1`.
pub async fn handle(gateway: &Gateway, parts: http::request::Parts, body: Incoming) -> Response {
    let path = parts.uri.path().to_string();
    let segments: Vec<&str> = path.trim_start_matches("/v1").split('/').skip(1).collect();
    let method = parts.method.clone();
    // Public.
    match (&method, segments.as_slice()) {
        (&Method::GET, ["classes"]) => return catalogue(gateway),
        (&Method::GET, ["openapi.json"]) => {
            return json_text(StatusCode::OK, Bytes::from_static(OPENAPI.as_bytes()))
        }
        _ => {}
    }
    let tenant = match authenticate(gateway, &parts.headers).await {
        Ok(tenant) => tenant,
        Err(refusal) => return refusal,
    };
    let api = Api { gateway, tenant };
    match (&method, segments.as_slice()) {
        (&Method::POST, ["tenants"]) => api.create_tenant(body).await,
        (&Method::GET, ["tenants"]) => api.list_tenants().await,
        (&Method::PUT, ["tenants", name]) => api.update_tenant(name, body).await,
        (&Method::POST, ["keys"]) => api.create_key().await,
        (&Method::GET, ["keys"]) => api.list_keys().await,
        (&Method::DELETE, ["keys", id]) => api.revoke_key(id).await,
        (&Method::POST, ["components"]) => api.upload(body).await,
        (&Method::GET, ["apps"]) => api.list_apps().await,
        (&Method::GET, ["apps", app]) => api.show_app(app).await,
        (&Method::PUT, ["apps", app]) => api.deploy(app, body).await,
        (&Method::DELETE, ["apps", app]) => api.delete(app).await,
        (_, ["apps", app, "functions", function, "invoke", ..]) => {
            let prefix = format!("/v1/apps/{app}/functions/{function}/invoke");
            api.invoke_function(app, function, &prefix, parts, body)
                .await
        }
        (&Method::GET, ["functions"]) => api.list_functions().await,
        (&Method::GET, ["routes"]) => api.list_routes().await,
        (_, ["invoke", hash]) => api.invoke_hash(hash, parts, body).await,
        (&Method::GET, ["schedules"]) => api.list_schedules().await,
        (&Method::GET, ["invocations"]) => {
            api.list_invocations(parts.uri.query().unwrap_or("")).await
        }
        (&Method::GET, ["invocations", id]) => api.show_invocation(id).await,
        (&Method::GET, ["usage"]) => api.usage(parts.uri.query().unwrap_or("")).await,
        (&Method::GET, ["budget"]) => api.budget().await,
        (&Method::PUT, ["budget"]) => api.set_budget(body).await,
        _ => refuse(
            Refusal::NotFound,
            format!(
                "no API endpoint {method} {path}; the API is described at GET /v1/openapi.json"
            ),
        ),
    }
}

/// `GET /v1/classes`: the published prices, lowest class first.
fn catalogue(gateway: &Gateway) -> Response {
    let config = &gateway.config;
    let classes: Vec<Value> = config
        .classes
        .iter()
        .map(|(id, c)| json!({ "name": c.name, "priority": id.0, "price_per_cpu_second": c.price }))
        .collect();
    let body = json!({
        "currency": "micro-cents",
        "classes": classes,
        "memory_price_per_gb_second": config.memory_price,
    });
    json_response(StatusCode::OK, &body)
}

pub(crate) async fn authenticate(
    gateway: &Gateway,
    headers: &http::HeaderMap,
) -> Result<Tenant, Response> {
    if !headers.contains_key(http::header::AUTHORIZATION) {
        return Err(refuse(
            Refusal::Unauthenticated,
            "this call needs an API key: send `Authorization: Bearer <key>`",
        ));
    }
    let key = bearer_key(headers);
    match gateway.tenant_of(key).await {
        Ok(Some(tenant)) => Ok(tenant),
        Ok(None) => Err(refuse(
            Refusal::Unauthenticated,
            "unknown API key (keys look like `tp_` and 64 hex digits)",
        )),
        Err(e) => Err(refuse(
            Refusal::Unavailable,
            format!("the store failed: {e}"),
        )),
    }
}

/// The key of an `Authorization: Bearer KEY` header ("" if there is none).
pub(crate) fn bearer_key(headers: &http::HeaderMap) -> &str {
    headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .unwrap_or_default()
}

/// Reads a body of at most `limit` bytes.
async fn read_body(body: Incoming, limit: usize) -> Result<Bytes, Response> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(refuse(
            Refusal::TooLarge,
            format!("body over the limit of {limit} bytes"),
        )),
        Err(e) => Err(refuse(Refusal::Invalid, format!("reading the body: {e}"))),
    }
}

/// Reads a JSON body into `T`, with serde's message (which names the field) on failure.
async fn read_json<T: serde::de::DeserializeOwned>(
    gateway: &Gateway,
    body: Incoming,
) -> Result<T, Response> {
    let bytes = read_body(body, gateway.config.max_request_bytes).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| refuse(Refusal::Invalid, format!("bad JSON body: {e}")))
}

/// One authenticated caller's requests.
struct Api<'g> {
    gateway: &'g Gateway,
    tenant: Tenant,
}

impl Api<'_> {
    fn admin_only(&self) -> Result<(), Response> {
        if self.tenant.admin {
            Ok(())
        } else {
            Err(refuse(
                Refusal::Forbidden,
                "only the admin tenant may do this",
            ))
        }
    }

    async fn create_tenant(&self, body: Incoming) -> Response {
        if let Err(refusal) = self.admin_only() {
            return refusal;
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct NewTenant {
            name: String,
        }
        let new: NewTenant = match read_json(self.gateway, body).await {
            Ok(new) => new,
            Err(refusal) => return refusal,
        };
        match self.gateway.store().create_tenant(&new.name, false).await {
            Ok((tenant, key)) => json_response(
                StatusCode::CREATED,
                &json!({ "name": tenant.name, "key": key }),
            ),
            Err(e) => store_error(e),
        }
    }

    async fn list_tenants(&self) -> Response {
        if let Err(refusal) = self.admin_only() {
            return refusal;
        }
        match self.gateway.store().tenants().await {
            Ok(tenants) => json_response(StatusCode::OK, &json!({ "tenants": tenants })),
            Err(e) => store_error(e),
        }
    }

    /// `PUT /v1/tenants/{name}` (admins): sets the tenant's concurrency limit,
    /// `{"concurrency_max": N}`, or lifts it with `null`. Every gateway applies it within its
    /// routing poll.
    async fn update_tenant(&self, name: &str, body: Incoming) -> Response {
        if let Err(refusal) = self.admin_only() {
            return refusal;
        }
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct TenantUpdate {
            concurrency_max: Option<i64>,
        }
        let update: TenantUpdate = match read_json(self.gateway, body).await {
            Ok(update) => update,
            Err(refusal) => return refusal,
        };
        let max = match update
            .concurrency_max
            .map(|n| turnpike_store::check_concurrency_max("concurrency_max", n))
            .transpose()
        {
            Ok(max) => max,
            Err(e) => return store_error(e),
        };
        let store = self.gateway.store();
        match store.set_tenant_concurrency_max(name, max).await {
            Ok(true) => {}
            Ok(false) => return not_found(&format!("tenant `{name}`")),
            Err(e) => return store_error(e),
        }
        if let Err(e) = self.gateway.reload_routing().await {
            tracing::warn!("reloading the routes after a tenant's limit changed: {e}");
        }
        match store.tenant(name).await {
            Ok(Some(tenant)) => json_response(StatusCode::OK, &json!(tenant)),
            Ok(None) => not_found(&format!("tenant `{name}`")),
            Err(e) => store_error(e),
        }
    }

    async fn create_key(&self) -> Response {
        match self.gateway.store().create_key(&self.tenant.name).await {
            Ok(key) => {
                let id = turnpike_store::key_id(&turnpike_store::key_hash(&key));
                json_response(
                    StatusCode::CREATED,
                    &json!({ "name": self.tenant.name, "key": key, "id": id }),
                )
            }
            Err(e) => store_error(e),
        }
    }

    /// `GET /v1/keys`: the caller's keys by id (never the keys themselves).
    async fn list_keys(&self) -> Response {
        match self.gateway.store().keys(&self.tenant.name).await {
            Ok(keys) => {
                let keys: Vec<Value> = keys
                    .iter()
                    .map(|k| json!({ "id": k.id, "created_at": rfc3339(k.created_at) }))
                    .collect();
                json_response(StatusCode::OK, &json!({ "keys": keys }))
            }
            Err(e) => store_error(e),
        }
    }

    /// `DELETE /v1/keys/{id}`: revokes one of the caller's keys - at this gateway at once, at
    /// every other within its `key_cache_for`.
    async fn revoke_key(&self, id: &str) -> Response {
        match self.gateway.store().revoke_key(&self.tenant.name, id).await {
            Ok(true) => {
                self.gateway.forget_key(&id.to_ascii_lowercase());
                let mut response = http::Response::new(Body::full(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Ok(false) => not_found(&format!("key `{id}`")),
            Err(e) => store_error(e),
        }
    }

    /// `POST /v1/components`: checked and compiled (off the async threads) before stored.
    async fn upload(&self, body: Incoming) -> Response {
        let bytes = match read_body(body, self.gateway.config.max_component_bytes).await {
            Ok(bytes) => bytes,
            Err(refusal) => return refusal,
        };
        let checked = {
            let (components, bytes) = (self.gateway.config.components.clone(), bytes.clone());
            tokio::task::spawn_blocking(move || components.check(&bytes)).await
        };
        let hash = match checked {
            Ok(Ok(hash)) => hash,
            Ok(Err(e @ CheckError::NotDeployable(_))) => {
                return refuse(Refusal::Invalid, e.to_string())
            }
            Ok(Err(e @ CheckError::Unavailable(_))) => {
                return refuse(Refusal::Internal, e.to_string())
            }
            Err(e) => return refuse(Refusal::Internal, format!("checking the component: {e}")),
        };
        match self
            .gateway
            .store()
            .put_component(&self.tenant.name, &hash, &bytes)
            .await
        {
            Ok(new) => json_response(
                if new {
                    StatusCode::CREATED
                } else {
                    StatusCode::OK
                },
                &json!({ "hash": hash, "bytes": bytes.len() }),
            ),
            Err(e) => store_error(e),
        }
    }

    /// The host name an app answers at.
    fn host(&self, app: &str) -> String {
        format!("{app}.{}", self.gateway.config.domain)
    }

    fn app_json(&self, app: &turnpike_store::App) -> Value {
        let functions: Vec<Value> = app.functions.iter().map(function_json).collect();
        json!({
            "name": app.name,
            "host": self.host(&app.name),
            "functions": functions,
            "routes": app.routes,
        })
    }

    async fn list_apps(&self) -> Response {
        match self.gateway.store().apps(&self.tenant.name).await {
            Ok(apps) => {
                let apps: Vec<Value> = apps.iter().map(|a| self.app_json(a)).collect();
                json_response(StatusCode::OK, &json!({ "apps": apps }))
            }
            Err(e) => store_error(e),
        }
    }

    async fn show_app(&self, name: &str) -> Response {
        match self.gateway.store().app(&self.tenant.name, name).await {
            Ok(Some(app)) => json_response(StatusCode::OK, &self.app_json(&app)),
            Ok(None) => not_found(&format!("app `{name}`")),
            Err(e) => store_error(e),
        }
    }

    /// `PUT /v1/apps/{app}`: classes are checked here, the rest by the store, in one
    /// transaction; then this gateway's routing table is rebuilt at once.
    async fn deploy(&self, name: &str, body: Incoming) -> Response {
        let spec: AppSpec = match read_json(self.gateway, body).await {
            Ok(spec) => spec,
            Err(refusal) => return refusal,
        };
        for (i, schedule) in spec.schedules.iter().enumerate() {
            if self
                .gateway
                .config
                .classes
                .by_name(&schedule.class)
                .is_none()
            {
                return refuse(
                    Refusal::Invalid,
                    format!(
                        "`schedules[{i}].class`: unknown class `{}`; classes: {}",
                        schedule.class,
                        self.gateway.class_names()
                    ),
                );
            }
        }
        for route in &spec.routes {
            if self.gateway.config.classes.by_name(&route.class).is_none() {
                return refuse(
                    Refusal::Invalid,
                    format!(
                        "route {}: unknown class `{}`; classes: {}",
                        route.path,
                        route.class,
                        self.gateway.class_names()
                    ),
                );
            }
        }
        let app = match self
            .gateway
            .store()
            .deploy_app(&self.tenant.name, name, &spec)
            .await
        {
            Ok(app) => app,
            Err(e) => return store_error(e),
        };
        if let Err(e) = self.gateway.reload_routing().await {
            tracing::warn!("reloading the routes after a deploy: {e}");
        }
        json_response(StatusCode::OK, &self.app_json(&app))
    }

    async fn delete(&self, name: &str) -> Response {
        match self
            .gateway
            .store()
            .delete_app(&self.tenant.name, name)
            .await
        {
            Ok(true) => {
                if let Err(e) = self.gateway.reload_routing().await {
                    tracing::warn!("reloading the routes after a delete: {e}");
                }
                let mut response = http::Response::new(Body::full(Bytes::new()));
                *response.status_mut() = StatusCode::NO_CONTENT;
                response
            }
            Ok(false) => not_found(&format!("app `{name}`")),
            Err(e) => store_error(e),
        }
    }

    async fn list_functions(&self) -> Response {
        match self.gateway.store().apps(&self.tenant.name).await {
            Ok(apps) => {
                let functions: Vec<Value> = apps
                    .iter()
                    .flat_map(|a| {
                        a.functions.iter().map(|f| {
                            let mut function = function_json(f);
                            function["app"] = json!(a.name);
                            function
                        })
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({ "functions": functions }))
            }
            Err(e) => store_error(e),
        }
    }

    async fn list_routes(&self) -> Response {
        match self.gateway.store().apps(&self.tenant.name).await {
            Ok(apps) => {
                let routes: Vec<Value> = apps
                    .iter()
                    .flat_map(|a| {
                        let host = self.host(&a.name);
                        a.routes.iter().map(move |r| {
                            json!({ "app": a.name, "host": host, "path": r.path, "method": r.method,
                                    "function": r.function, "class": r.class })
                        })
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({ "routes": routes }))
            }
            Err(e) => store_error(e),
        }
    }

    /// The class a direct invocation asks for in [`CLASS_HEADER`].
    fn asked_class(&self, headers: &http::HeaderMap) -> Result<turnpike_policy::ClassId, Response> {
        let classes = &self.gateway.config.classes;
        let Some(name) = headers.get(CLASS_HEADER) else {
            return Err(refuse(Refusal::Invalid,
                format!(
                    "a direct invocation names its class in the `{CLASS_HEADER}` header; classes: {}",
                    self.gateway.class_names()
                ),
            ));
        };
        let name = String::from_utf8_lossy(name.as_bytes());
        classes.by_name(&name).ok_or_else(|| {
            refuse(
                Refusal::Invalid,
                format!(
                    "unknown class `{name}`; classes: {}",
                    self.gateway.class_names()
                ),
            )
        })
    }

    async fn invoke_function(
        &self,
        app: &str,
        function: &str,
        prefix: &str,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Response {
        let class = match self.asked_class(&parts.headers) {
            Ok(class) => class,
            Err(refusal) => return refusal,
        };
        // From the routing table, not the store: no database read per invocation.
        let Some((hash, concurrency_limits)) = self
            .gateway
            .routing()
            .function(&self.tenant.name, app, function)
            .map(|f| (f.hash.clone(), f.limits.clone()))
        else {
            return not_found(&format!("function `{app}/{function}`"));
        };
        let rest = parts.uri.path().strip_prefix(prefix).unwrap_or_default();
        let mut path_and_query = if rest.is_empty() {
            "/".to_string()
        } else {
            rest.to_string()
        };
        if let Some(query) = parts.uri.query() {
            path_and_query = format!("{path_and_query}?{query}");
        }
        let target = Target {
            tenant: self.tenant.name.clone(),
            app: app.to_string(),
            function: function.to_string(),
            hash,
            class,
            asynchronous: false,
            retries: 0,
            concurrency_limits,
        };
        if wants_async(&parts.headers) {
            return self
                .gateway
                .submit_async(target, parts, body, path_and_query)
                .await;
        }
        self.gateway
            .run(target, parts, CallerBody::Http(body), path_and_query)
            .await
    }

    /// `/v1/invoke/{hash}`: a component the caller uploaded (the admin: any function the
    /// workers have, e.g. emulated ones). The guest sees the query on `/`.
    async fn invoke_hash(
        &self,
        hash: &str,
        parts: http::request::Parts,
        body: Incoming,
    ) -> Response {
        let class = match self.asked_class(&parts.headers) {
            Ok(class) => class,
            Err(refusal) => return refusal,
        };
        if wants_async(&parts.headers) {
            return refuse(
                Refusal::Invalid,
                "`Prefer: respond-async` works on a deployed function (/v1/apps/{app}/functions/{function}/invoke) or an async route, not on a component by hash",
            );
        }
        if !self.tenant.admin {
            match self
                .gateway
                .store()
                .owns_component(&self.tenant.name, hash)
                .await
            {
                Ok(true) => {}
                Ok(false) => return not_found(&format!("component {hash}")),
                Err(e) => return store_error(e),
            }
        }
        let path_and_query = match parts.uri.query() {
            Some(query) => format!("/?{query}"),
            None => "/".to_string(),
        };
        let target = Target {
            tenant: self.tenant.name.clone(),
            app: "-".into(),
            function: hash.to_string(),
            hash: hash.to_string(),
            class,
            asynchronous: false,
            retries: 0,
            concurrency_limits: Vec::new(),
        };
        self.gateway
            .run(target, parts, CallerBody::Http(body), path_and_query)
            .await
    }

    /// `GET /v1/schedules`: the schedules of the caller's apps with their next and last runs.
    async fn list_schedules(&self) -> Response {
        match self.gateway.store().schedules(&self.tenant.name).await {
            Ok(schedules) => {
                let time = |ms: Option<i64>| ms.map(|ms| rfc3339(ms.div_euclid(1000)));
                let list: Vec<Value> = schedules
                    .iter()
                    .map(|s| {
                        let mut shown = serde_json::to_value(s).unwrap_or_default();
                        shown["next_at"] = json!(time(s.next_ms));
                        shown["last_at"] = json!(time(s.last_ms));
                        shown
                    })
                    .collect();
                json_response(StatusCode::OK, &json!({ "schedules": list }))
            }
            Err(e) => store_error(e),
        }
    }

    /// `GET /v1/invocations/{id}`: one of the caller's asynchronous invocations.
    async fn show_invocation(&self, id: &str) -> Response {
        match self
            .gateway
            .store()
            .async_invocation(&self.tenant.name, id)
            .await
        {
            Ok(Some(invocation)) => json_response(StatusCode::OK, &invocation_json(&invocation)),
            Ok(None) => not_found(&format!("asynchronous invocation `{id}`")),
            Err(e) => store_error(e),
        }
    }

    /// `GET /v1/invocations?state=&function=&limit=`: the caller's asynchronous invocations,
    /// newest first.
    async fn list_invocations(&self, query: &str) -> Response {
        let (mut state, mut function, mut limit) = (None, None, LIST_DEFAULT);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.as_ref();
            match name.as_ref() {
                "state" => match AsyncState::parse(value) {
                    Some(s) => state = Some(s),
                    None => {
                        return refuse(
                            Refusal::Invalid,
                            format!(
                                "bad `state` `{value}`: use queued, running, succeeded or failed"
                            ),
                        )
                    }
                },
                "function" if !value.is_empty() => function = Some(value.to_string()),
                "limit" => match value.parse::<usize>() {
                    Ok(n) if (1..=LIST_MAX).contains(&n) => limit = n,
                    _ => {
                        return refuse(
                            Refusal::Invalid,
                            format!("bad `limit` `{value}`: a number from 1 to {LIST_MAX}"),
                        )
                    }
                },
                _ => {
                    return refuse(
                        Refusal::Invalid,
                        format!("unknown parameter `{name}`: use state, function, limit"),
                    )
                }
            }
        }
        match self
            .gateway
            .store()
            .async_invocations(&self.tenant.name, state, function.as_deref(), limit)
            .await
        {
            Ok(list) => {
                let list: Vec<Value> = list.iter().map(invocation_json).collect();
                json_response(StatusCode::OK, &json!({ "invocations": list }))
            }
            Err(e) => store_error(e),
        }
    }

    async fn usage(&self, query: &str) -> Response {
        let today = Day::of_unix(self.gateway.billing.clock().now());
        let (mut by, mut from, mut to) = (vec![UsageKey::Function], today.month_start(), today);
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.as_ref();
            match name.as_ref() {
                "by" => {
                    let mut keys = Vec::new();
                    for key in value.split(',').filter(|k| !k.is_empty()) {
                        match UsageKey::parse(key) {
                            Some(k) if !keys.contains(&k) => keys.push(k),
                            Some(_) => {}
                            None => {
                                return refuse(
                                    Refusal::Invalid,
                                    format!("bad `by` key `{key}`: use app, function, class, day"),
                                )
                            }
                        }
                    }
                    by = keys;
                }
                "from" | "to" => {
                    let Some(day) = Day::parse(value) else {
                        return refuse(
                            Refusal::Invalid,
                            format!("bad `{name}` date `{value}`: use YYYY-MM-DD"),
                        );
                    };
                    if name == "from" {
                        from = day;
                    } else {
                        to = day;
                    }
                }
                _ => {
                    return refuse(
                        Refusal::Invalid,
                        format!("unknown parameter `{name}`: use by, from, to"),
                    )
                }
            }
        }
        // Read-your-writes: this gateway's own recent invocations are in the answer.
        self.gateway.billing.flush().await;
        let store = self.gateway.store();
        let (rows, total) = match (
            store.usage(&self.tenant.name, &by, from, to).await,
            store.usage(&self.tenant.name, &[], from, to).await,
        ) {
            (Ok(rows), Ok(total)) => (rows, total),
            (Err(e), _) | (_, Err(e)) => return store_error(e),
        };
        let rows: Vec<Value> = rows
            .iter()
            .map(|r| {
                let mut row = totals_json(&r.totals);
                for (key, value) in &r.keys {
                    row[key.column()] = json!(value);
                }
                row
            })
            .collect();
        let total = total.first().map(|r| r.totals).unwrap_or_default();
        json_response(
            StatusCode::OK,
            &json!({
                "from": from.to_string(),
                "to": to.to_string(),
                "currency": "micro-cents",
                "rows": rows,
                "total": totals_json(&total),
            }),
        )
    }

    async fn budget(&self) -> Response {
        let (budget, month, spent) = match self.gateway.billing.status(&self.tenant.name).await {
            Ok(status) => status,
            Err(e) => return refuse(Refusal::Unavailable, format!("the store failed: {e}")),
        };
        let now = self.gateway.billing.clock().now();
        let mut body = json!({ "month": month.month_label(), "spent": spent });
        match budget {
            None => {
                body["monthly"] = Value::Null;
                body["state"] = json!("ok");
            }
            Some(b) => {
                body["monthly"] = json!(b.monthly);
                body["over"] = json!(b.over);
                body["headroom"] = json!(b.headroom);
                body["allowed_now"] = json!(allowance(&b, now));
                body["state"] = json!(match over_budget(&b, spent, now) {
                    None => "ok",
                    Some(_) if b.over == turnpike_store::OverBudget::Throttle => "throttled",
                    Some(_) => "lowered",
                });
            }
        }
        json_response(StatusCode::OK, &body)
    }

    async fn set_budget(&self, body: Incoming) -> Response {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct SetBudget {
            monthly: Option<f64>,
            #[serde(default)]
            over: turnpike_store::OverBudget,
            #[serde(default = "turnpike_store::default_headroom")]
            headroom: f64,
        }
        let asked: SetBudget = match read_json(self.gateway, body).await {
            Ok(asked) => asked,
            Err(refusal) => return refusal,
        };
        let budget = asked.monthly.map(|monthly| Budget {
            monthly,
            over: asked.over,
            headroom: asked.headroom,
        });
        if let Err(e) = self
            .gateway
            .store()
            .set_budget(&self.tenant.name, budget.as_ref())
            .await
        {
            return store_error(e);
        }
        self.gateway.billing.forget(&self.tenant.name);
        self.budget().await
    }
}

fn function_json(f: &turnpike_store::Function) -> Value {
    let mut function =
        json!({ "name": f.name, "hash": f.hash, "deployed_at": rfc3339(f.deployed_at) });
    if let Some(max) = f.concurrency_max {
        function["concurrency_max"] = max.into();
    }
    function
}

fn totals_json(totals: &UsageTotals) -> Value {
    json!({
        "invocations": totals.invocations,
        "cpu_seconds": totals.cpu_seconds,
        "gb_seconds": totals.gb_seconds,
        "cost": totals.cost,
    })
}
