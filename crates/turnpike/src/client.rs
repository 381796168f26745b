//! A small blocking client of the gateway's developer API (`/v1/`, docs/api.md) for the CLI's
//! commands: the gateway's URL and the caller's key from `--gateway` and `--key` (or
//! `TURNPIKE_GATEWAY` and `TURNPIKE_KEY`), one request at a time on a current-thread tokio
//! runtime. An answer that is not 2xx becomes an error naming the request, the status and the
//! gateway's `{"error": ...}`; a gateway that cannot be reached is named, with `turnpike up` as
//! the way to start one.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// The gateway `turnpike up` starts by default.
pub const DEFAULT_GATEWAY: &str = "http://127.0.0.1:8080";

/// Longest wait for a TCP connection to the gateway.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest wait for a whole answer (an upload is compiled before the gateway answers).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The flags every API command takes.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiArgs {
    /// The gateway's URL.
    #[arg(long, env = "TURNPIKE_GATEWAY", default_value = DEFAULT_GATEWAY, value_name = "URL")]
    pub gateway: String,
    /// Your API key (`tp_...`), sent as `Authorization: Bearer KEY` (better given in the
    /// environment than on the command line).
    #[arg(long, env = "TURNPIKE_KEY", hide_env_values = true, value_name = "KEY")]
    pub key: Option<String>,
}

/// Why a command failed.
#[derive(Debug, PartialEq)]
pub enum Error {
    /// Bad input on the command line or in a file (exit status 2).
    Input(String),
    /// A request that could not be made or that the gateway refused (exit status 1).
    Request(String),
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Error::Input(m) | Error::Request(m) => f.write_str(m),
        }
    }
}

/// A connection to one gateway, as one caller.
#[derive(Debug)]
pub struct Client {
    /// `http://host:port`, for URLs and messages.
    base: String,
    /// The gateway URL's path, without a trailing `/` (usually empty).
    prefix: String,
    /// The gateway's port, for the URLs of apps' hosts.
    port: u16,
    key: Option<String>,
    runtime: tokio::runtime::Runtime,
    http: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
}

/// A whole answer.
#[derive(Debug)]
pub struct Response {
    /// The request, `PUT /v1/apps/shop`, for messages.
    pub request: String,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// Whether the request went without a key (a 401 then says how to give one).
    keyless: bool,
}

impl Response {
    /// The answer if it is 2xx; otherwise an error with the status and the gateway's reason.
    pub fn check(self) -> Result<Self, Error> {
        if self.status.is_success() {
            return Ok(self);
        }
        let reason = serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error")?.as_str().map(String::from))
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(&self.body);
                let text = text.trim();
                match text.char_indices().nth(300) {
                    Some((cut, _)) => format!("{}...", &text[..cut]),
                    None => text.to_string(),
                }
            });
        let mut message = format!("{}: {}", self.request, self.status);
        if !reason.is_empty() {
            message += &format!(": {reason}");
        }
        if self.status == StatusCode::UNAUTHORIZED && self.keyless {
            message += " (no key given: pass --key KEY or set TURNPIKE_KEY)";
        }
        Err(Error::Request(message))
    }

    /// The body as JSON (`null` if empty).
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        if self.body.is_empty() {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|e| {
            Error::Request(format!(
                "{}: the gateway's answer is not JSON ({e})",
                self.request
            ))
        })
    }
}

/// `url`'s `(http://authority, path prefix, port)`; `host:port` alone means `http://host:port`.
fn parse_gateway(url: &str) -> Result<(String, String, u16), String> {
    let bad = |why: &str| format!("--gateway `{url}`: {why}; give a URL like {DEFAULT_GATEWAY}");
    let full = match url.contains("://") {
        true => url.to_string(),
        false => format!("http://{url}"),
    };
    let uri: http::Uri = full.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        None | Some("http") => {}
        Some("https") => return Err(bad("https is not supported by this client, only http")),
        Some(other) => return Err(bad(&format!("unknown scheme `{other}`"))),
    }
    let authority = uri.authority().ok_or_else(|| bad("no host"))?;
    let prefix = uri.path().trim_end_matches('/').to_string();
    if uri.query().is_some() {
        return Err(bad("a query has no place in it"));
    }
    Ok((
        format!("http://{authority}"),
        prefix,
        authority.port_u16().unwrap_or(80),
    ))
}

impl Client {
    pub fn new(args: &ApiArgs) -> Result<Self, Error> {
        let (base, prefix, port) = parse_gateway(&args.gateway).map_err(Error::Input)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| Error::Request(format!("cannot start the async runtime: {e}")))?;
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let http =
            hyper_util::client::legacy::Client::builder(TokioExecutor::new()).build(connector);
        Ok(Self {
            base,
            prefix,
            port,
            key: args.key.clone().filter(|k| !k.is_empty()),
            runtime,
            http,
        })
    }

    /// The URL of `path` on the host `host` (an app's) through this gateway's port.
    pub fn url_on(&self, host: &str, path: &str) -> String {
        match self.port {
            80 => format!("http://{host}{path}"),
            port => format!("http://{host}:{port}{path}"),
        }
    }

    /// Sends one request to `path` (with its query) and reads the whole answer, whatever its
    /// status. `headers` are added to the key's `Authorization`.
    pub fn send(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Result<Response, Error> {
        let request_name = format!("{method} {path}");
        let url = format!("{}{}{path}", self.base, self.prefix);
        let mut builder = http::Request::builder().method(method).uri(&url);
        if let Some(key) = &self.key {
            builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
        }
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        let request = builder
            .body(Full::new(body))
            .map_err(|e| Error::Input(format!("cannot make a request to {url}: {e}")))?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                if e.is_connect() {
                    Error::Request(format!(
                        "cannot reach the gateway at {}: {}. Is Turnpike running? Start it with \
                         `turnpike up`, or give its URL with --gateway URL (or TURNPIKE_GATEWAY)",
                        self.base,
                        root_cause(&e)
                    ))
                } else {
                    Error::Request(format!("{request_name} at {}: {}", self.base, causes(&e)))
                }
            })?;
            let (parts, body) = response.into_parts();
            let body = body.collect().await.map_err(|e| {
                Error::Request(format!(
                    "{request_name}: the answer was cut off: {}",
                    causes(&e)
                ))
            })?;
            Ok(Response {
                request: request_name.clone(),
                status: parts.status,
                headers: parts.headers,
                body: body.to_bytes(),
                keyless: self.key.is_none(),
            })
        };
        self.runtime
            .block_on(async { tokio::time::timeout(REQUEST_TIMEOUT, exchange).await })
            .unwrap_or_else(|_| {
                Err(Error::Request(format!(
                    "{request_name}: no answer from {} in {} s",
                    self.base,
                    REQUEST_TIMEOUT.as_secs()
                )))
            })
    }

    /// Sends `body` (if any) as JSON and returns the 2xx answer's JSON.
    pub fn json(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<serde_json::Value, Error> {
        let (headers, body): (&[(&str, &str)], Bytes) = match body {
            Some(b) => (
                &[("content-type", "application/json")],
                Bytes::from(b.to_string()),
            ),
            None => (&[], Bytes::new()),
        };
        self.send(method, path, headers, body)?.check()?.json()
    }
}

/// The innermost cause of `error`, `Connection refused (os error 111)`.
fn root_cause(error: &dyn std::error::Error) -> String {
    let mut error = error;
    while let Some(source) = error.source() {
        error = source;
    }
    error.to_string()
}

/// An error and its causes, `client error (Connect): tcp connect error: Connection refused`.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let next = e.to_string();
        if !text.contains(&next) {
            text += &format!(": {next}");
        }
        source = e.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(gateway: &str, key: Option<&str>) -> Result<Client, Error> {
        Client::new(&ApiArgs {
            gateway: gateway.into(),
            key: key.map(String::from),
        })
    }

    #[test]
    fn gateway_urls() {
        assert_eq!(
            parse_gateway("http://127.0.0.1:8080").unwrap(),
            ("http://127.0.0.1:8080".into(), String::new(), 8080)
        );
        assert_eq!(
            parse_gateway("localhost:9000/").unwrap(),
            ("http://localhost:9000".into(), String::new(), 9000)
        );
        assert_eq!(
            parse_gateway("http://example.com/turnpike/").unwrap(),
            ("http://example.com".into(), "/turnpike".into(), 80)
        );
        for bad in ["https://x", "ftp://x", "not a url", "http://x/?a=b"] {
            let e = parse_gateway(bad).unwrap_err();
            assert!(e.contains(bad) && e.contains(DEFAULT_GATEWAY), "{e}");
        }
        let c = client("http://127.0.0.1:8080", None).unwrap();
        assert_eq!(
            c.url_on("shop.localhost", "/a"),
            "http://shop.localhost:8080/a"
        );
    }

    #[test]
    fn an_unreachable_gateway_is_named_and_turnpike_up_suggested() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let c = client(&format!("http://127.0.0.1:{port}"), Some("tp_x")).unwrap();
        let Err(Error::Request(e)) = c.json(Method::GET, "/v1/classes", None) else {
            panic!("connecting to a closed port should fail");
        };
        assert!(
            e.contains(&format!("http://127.0.0.1:{port}")) && e.contains("turnpike up"),
            "{e}"
        );
    }

    fn answer(status: u16, body: &str, keyless: bool) -> Response {
        Response {
            request: "GET /v1/apps".into(),
            status: StatusCode::from_u16(status).unwrap(),
            headers: HeaderMap::new(),
            body: Bytes::from(body.to_string()),
            keyless,
        }
    }

    #[test]
    fn an_error_answer_names_the_request_the_status_and_the_reason() {
        let e = answer(409, r#"{"error": "app `shop` is taken"}"#, false)
            .check()
            .unwrap_err();
        assert_eq!(
            e,
            Error::Request("GET /v1/apps: 409 Conflict: app `shop` is taken".into())
        );
        let e = answer(502, "bad gateway\n", false).check().unwrap_err();
        assert_eq!(
            e,
            Error::Request("GET /v1/apps: 502 Bad Gateway: bad gateway".into())
        );
        let e = answer(401, r#"{"error": "no key"}"#, true)
            .check()
            .unwrap_err();
        assert!(e.to_string().contains("TURNPIKE_KEY"), "{e}");
        assert!(answer(204, "", false)
            .check()
            .unwrap()
            .json()
            .unwrap()
            .is_null());
    }
}
