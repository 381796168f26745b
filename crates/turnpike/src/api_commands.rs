//! The developer's commands: `turnpike deploy`, `functions`, `routes`, `classes`, `invoke`,
//! `invocations`, `schedules`, `usage`, `budget`, `keys`, `apps` and `tenants`, each a client
//! of the gateway's `/v1/` API (docs/api.md) through [`crate::client`]. Read commands print a
//! table, or the gateway's JSON with `--json`. Bad input exits with status 2 before any request; a failed request with status 1.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use bytes::Bytes;
use clap::{Args, Subcommand};
use http::Method;
use serde_json::Value;

use turnpike_gateway::async_invocations::{
    IDEMPOTENCY_KEY_HEADER, PREFER, RESPOND_ASYNC, RETRIES_HEADER,
};
use turnpike_gateway::gateway::CLASS_HEADER;
use turnpike_store::{Day, UsageKey};

use crate::client::{ApiArgs, Client, Error};
use crate::manifest::{self, Budget, Over};

#[derive(Args, Debug)]
pub struct DeployArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The app's manifest.
    #[arg(long, default_value = "./turnpike.toml", value_name = "PATH")]
    manifest: PathBuf,
}

/// A read command's flags.
#[derive(Args, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// Print the gateway's JSON answer instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
pub struct InvokeArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The function to run, `APP/FUNCTION`.
    #[arg(value_name = "APP/FUNCTION")]
    target: String,
    /// The path and query the function sees, e.g. `/items?id=3`.
    #[arg(default_value = "/")]
    path: String,
    /// The price class to run it at (`turnpike classes` lists them).
    #[arg(long)]
    class: String,
    /// The request's body.
    #[arg(long, conflicts_with = "data_file")]
    data: Option<String>,
    /// A file whose bytes are the request's body.
    #[arg(long, value_name = "FILE")]
    data_file: Option<PathBuf>,
    /// The request's method (default: POST with a body, GET without).
    #[arg(long, value_name = "M")]
    method: Option<String>,
    /// Run it asynchronously: print the invocation's id once it is queued (`turnpike
    /// invocations ID` shows its state and result).
    #[arg(long = "async")]
    asynchronous: bool,
    /// With `--async`: retries after the function's own failure (0 to 10).
    #[arg(long, value_name = "N", requires = "asynchronous")]
    retries: Option<u32>,
    /// With `--async`: a key that makes a repeated submission of this request return the
    /// first one's id.
    #[arg(long, value_name = "KEY", requires = "asynchronous")]
    idempotency_key: Option<String>,
}

#[derive(Args, Debug)]
pub struct InvocationsArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// One invocation's id: its state, attempts and result.
    id: Option<String>,
    /// Only those in this state: queued, running, succeeded, failed.
    #[arg(long, conflicts_with = "id")]
    state: Option<String>,
    /// Only those of this function, `APP/FUNCTION`.
    #[arg(long, value_name = "APP/FUNCTION", conflicts_with = "id")]
    function: Option<String>,
}

#[derive(Args, Debug)]
pub struct UsageArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// What the rows are per: a comma list of `app`, `function`, `class`, `day` (the
    /// gateway's default: `function`).
    #[arg(long, value_name = "LIST")]
    by: Option<String>,
    /// First day, `YYYY-MM-DD` (default: the first of this month, UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    from: Option<String>,
    /// Last day, inclusive, `YYYY-MM-DD` (default: today, UTC).
    #[arg(long, value_name = "YYYY-MM-DD")]
    to: Option<String>,
}

#[derive(Args, Debug)]
pub struct BudgetArgs {
    #[command(flatten)]
    read: ReadArgs,
    /// Set the monthly budget, micro-cents (needs `--over`).
    #[arg(
        long,
        value_name = "N",
        requires = "over",
        conflicts_with = "none",
        allow_negative_numbers = true
    )]
    monthly: Option<f64>,
    /// What happens to new invocations over budget: refused with 429 (`throttle`) or run at
    /// the cheapest class (`lower`).
    #[arg(long, value_enum, requires = "monthly")]
    over: Option<Over>,
    /// How far spending may run ahead of the month's pro-rata allowance, as a fraction of the
    /// monthly budget.
    #[arg(
        long,
        value_name = "F",
        requires = "monthly",
        default_value_t = manifest::DEFAULT_HEADROOM,
        allow_negative_numbers = true
    )]
    headroom: f64,
    /// Remove the budget: spending is not limited.
    #[arg(long)]
    none: bool,
}

#[derive(Subcommand, Debug)]
pub enum TenantsCommand {
    /// Create a tenant (admin only) and print its API key, shown only this once.
    Create(CreateTenantArgs),
    /// List the tenants (admin only).
    List(ReadArgs),
    /// Set or lift a tenant's concurrency limit: the most invocations of its functions in
    /// flight at once (admin only).
    Limit(TenantLimitArgs),
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make another API key for yourself and print it, shown only this once.
    Create(ApiOnly),
    /// List your keys by id (the keys themselves are never shown again).
    List(ReadArgs),
    /// Revoke one of your keys by id (`turnpike keys list`): refused at once where asked,
    /// everywhere within the gateways' key cache time (5 s by default).
    Revoke(NamedArgs),
}

#[derive(Subcommand, Debug)]
pub enum AppsCommand {
    /// List your apps.
    List(ReadArgs),
    /// Delete one of your apps: its functions, routes and schedules (its usage stays).
    Delete(NamedArgs),
}

/// A command with only the gateway's flags.
#[derive(Args, Debug)]
pub struct ApiOnly {
    #[command(flatten)]
    api: ApiArgs,
}

/// A command naming one thing.
#[derive(Args, Debug)]
pub struct NamedArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The key's id or the app's name.
    name: String,
}

#[derive(Args, Debug)]
pub struct CreateTenantArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The new tenant's name, a DNS label (`[a-z0-9-]`, 1-63 characters).
    name: String,
}

#[derive(Args, Debug)]
pub struct TenantLimitArgs {
    #[command(flatten)]
    api: ApiArgs,
    /// The tenant.
    name: String,
    /// The most invocations of its functions in flight at once; more wait by class
    /// (asynchronous ones in the store).
    #[arg(
        long,
        value_name = "N",
        required_unless_present = "none",
        allow_negative_numbers = true
    )]
    concurrency_max: Option<i64>,
    /// Lift its limit.
    #[arg(long, conflicts_with = "concurrency_max")]
    none: bool,
}

/// The exit status of a command's result, its error reported.
pub fn exit(result: Result<(), Error>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Input(message)) => crate::fail(message),
        Err(Error::Request(message)) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// `turnpike deploy`: uploads the manifest's components, creates or replaces its app, sets
/// the budget if it has one, and prints the app's host and routes.
pub fn deploy(args: DeployArgs) -> Result<(), Error> {
    let manifest = manifest::load(&args.manifest).map_err(Error::Input)?;
    let client = Client::new(&args.api)?;
    let mut hashes = BTreeMap::new();
    for function in &manifest.functions {
        let answer = client
            .send(
                Method::POST,
                "/v1/components",
                &[("content-type", "application/wasm")],
                Bytes::from(function.bytes.clone()),
            )?
            .check()?;
        let hash = answer.json()?["hash"]
            .as_str()
            .map(String::from)
            .ok_or_else(|| {
                Error::Request(format!("{}: the answer names no `hash`", answer.request))
            })?;
        println!(
            "{} {} ({}, {} bytes): {}",
            if answer.status == http::StatusCode::CREATED {
                "uploaded"
            } else {
                "already stored"
            },
            function.name,
            function.path.display(),
            function.bytes.len(),
            short(&hash)
        );
        hashes.insert(function.name.clone(), hash);
    }
    let app = client.json(
        Method::PUT,
        &format!("/v1/apps/{}", manifest.app),
        Some(&manifest.app_json(&hashes)),
    )?;
    if let Some(budget) = &manifest.budget {
        client.json(Method::PUT, "/v1/budget", Some(&budget.to_json()))?;
        println!(
            "budget: {} micro-cents a month, over it: {}, headroom {}",
            budget.monthly,
            budget.over.as_str(),
            budget.headroom
        );
    }
    let host = text(&app, "host");
    println!("deployed {} at {host}", manifest.app);
    let rows = list(&app, "routes")
        .map(|r| {
            let path = text(r, "path");
            vec![
                method(r),
                path.clone(),
                text(r, "function"),
                text(r, "class"),
                client.url_on(&host, &path),
            ]
        })
        .collect();
    print_table(&["METHOD", "PATH", "FUNCTION", "CLASS", "URL"], rows);
    Ok(())
}

/// `turnpike functions`: every function of the caller's apps.
pub fn functions(args: ReadArgs) -> Result<(), Error> {
    read(&args, "/v1/functions", |answer| {
        let rows = list(answer, "functions")
            .map(|f| {
                vec![
                    text(f, "app"),
                    text(f, "name"),
                    short(&text(f, "hash")),
                    text(f, "deployed_at"),
                ]
            })
            .collect();
        print_table(&["APP", "NAME", "HASH", "DEPLOYED_AT"], rows);
    })
}

/// `turnpike routes`: every route of the caller's apps.
pub fn routes(args: ReadArgs) -> Result<(), Error> {
    read(&args, "/v1/routes", |answer| {
        let rows = list(answer, "routes")
            .map(|r| {
                vec![
                    text(r, "app"),
                    text(r, "host"),
                    method(r),
                    text(r, "path"),
                    text(r, "function"),
                    text(r, "class"),
                ]
            })
            .collect();
        print_table(
            &["APP", "HOST", "METHOD", "PATH", "FUNCTION", "CLASS"],
            rows,
        );
    })
}

/// `turnpike classes`: the published price classes.
pub fn classes(args: ReadArgs) -> Result<(), Error> {
    read(&args, "/v1/classes", |answer| {
        let currency = text(answer, "currency");
        let rows = list(answer, "classes")
            .map(|c| {
                vec![
                    text(c, "name"),
                    text(c, "priority"),
                    text(c, "price_per_cpu_second"),
                ]
            })
            .collect();
        print_table(&["CLASS", "PRIORITY", "PRICE PER CPU-SECOND"], rows);
        println!(
            "memory: {} per GB-second used; prices in {currency}",
            text(answer, "memory_price_per_gb_second")
        );
    })
}

/// `turnpike invoke`: runs a function at a class; its body to stdout, the status and the
/// class it ran at to stderr.
pub fn invoke(args: InvokeArgs) -> Result<(), Error> {
    let (app, function) = args.target.split_once('/').ok_or_else(|| {
        Error::Input(format!(
            "`{}`: name the function as APP/FUNCTION",
            args.target
        ))
    })?;
    manifest::check_dns_label("app", app).map_err(Error::Input)?;
    manifest::check_function_name(function).map_err(Error::Input)?;
    if !args.path.starts_with('/') {
        return Err(Error::Input(format!(
            "the path `{}` must start with `/`",
            args.path
        )));
    }
    let body = match (&args.data, &args.data_file) {
        (Some(data), _) => Some(Bytes::from(data.clone())),
        (None, Some(file)) => Some(Bytes::from(std::fs::read(file).map_err(|e| {
            Error::Input(format!("cannot read --data-file {}: {e}", file.display()))
        })?)),
        (None, None) => None,
    };
    let method = match &args.method {
        Some(m) => Method::from_bytes(m.as_bytes())
            .map_err(|_| Error::Input(format!("--method `{m}` is not an HTTP method")))?,
        None if body.is_some() => Method::POST,
        None => Method::GET,
    };
    // `/` and `/?QUERY` are the function's root: `.../invoke` and `.../invoke?QUERY`.
    let rest = match args.path.as_str() {
        p if p == "/" || p.starts_with("/?") => &p[1..],
        p => p,
    };
    if let Some(n) = args.retries {
        if n > turnpike_store::RETRIES_MAX {
            return Err(Error::Input(format!(
                "--retries {n}: at most {}",
                turnpike_store::RETRIES_MAX
            )));
        }
    }
    let retries = args.retries.map(|n| n.to_string());
    let mut headers = vec![(CLASS_HEADER, args.class.as_str())];
    if args.asynchronous {
        headers.push((PREFER, RESPOND_ASYNC));
    }
    if let Some(n) = &retries {
        headers.push((RETRIES_HEADER, n));
    }
    if let Some(key) = &args.idempotency_key {
        headers.push((IDEMPOTENCY_KEY_HEADER, key));
    }
    let client = Client::new(&args.api)?;
    let mut answer = client.send(
        method,
        &format!("/v1/apps/{app}/functions/{function}/invoke{rest}"),
        &headers,
        body.unwrap_or_default(),
    )?;
    if args.asynchronous {
        let answer = answer.check()?;
        let id = answer.json()?["id"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        println!("{id}");
        eprintln!(
            "{}: queued; `turnpike invocations {id}` shows it",
            answer.status
        );
        return Ok(());
    }
    // The gateway names the class on the function's answers only: without it, a refusal of
    // the invocation (no such function, an unknown class, over budget) with its reason.
    let ran_at = answer
        .headers
        .get(CLASS_HEADER)
        .map(|class| format!(", ran at {}", String::from_utf8_lossy(class.as_bytes())));
    if ran_at.is_none() {
        answer = answer.check()?;
    }
    let ran_at = ran_at.unwrap_or_default();
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(&answer.body)
        .and_then(|()| stdout.flush())
        .map_err(|e| Error::Request(format!("cannot write the answer: {e}")))?;
    if answer.status.is_success() {
        eprintln!("{}{ran_at}", answer.status);
        Ok(())
    } else {
        Err(Error::Request(format!(
            "{app}/{function} answered {}{ran_at}",
            answer.status
        )))
    }
}

/// `turnpike invocations [ID]`: the caller's asynchronous invocations, newest first, or one
/// of them with its result.
pub fn invocations(args: InvocationsArgs) -> Result<(), Error> {
    if let Some(id) = &args.id {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(Error::Input(format!("`{id}` is not an invocation id")));
        }
        return read(&args.read, &format!("/v1/invocations/{id}"), |answer| {
            for key in [
                "id",
                "function",
                "class",
                "state",
                "attempts",
                "created_at",
                "started_at",
                "finished_at",
                "error",
            ] {
                let value = match key {
                    "function" => format!("{}/{}", text(answer, "app"), text(answer, "function")),
                    _ => text(answer, key),
                };
                println!("{key:<12}{value}");
            }
            let result = &answer["result"];
            if !result.is_null() {
                println!("{:<12}{}", "status", text(result, "status"));
                let body = match result["body"].as_str() {
                    Some(body) => body.to_string(),
                    None => format!("(base64) {}", text(result, "body_base64")),
                };
                let cut = if result["body_truncated"] == Value::Bool(true) {
                    " (truncated)"
                } else {
                    ""
                };
                println!("{:<12}{}{cut}", "body", body.trim_end());
            }
        });
    }
    let mut query = Vec::new();
    if let Some(state) = &args.state {
        if turnpike_store::AsyncState::parse(state).is_none() {
            return Err(Error::Input(format!(
                "--state `{state}`: one of queued, running, succeeded, failed"
            )));
        }
        query.push(format!("state={state}"));
    }
    if let Some(function) = &args.function {
        query.push(format!("function={function}"));
    }
    let path = match query.is_empty() {
        true => "/v1/invocations".to_string(),
        false => format!("/v1/invocations?{}", query.join("&")),
    };
    read(&args.read, &path, |answer| {
        let rows = list(answer, "invocations")
            .map(|i| {
                vec![
                    text(i, "id"),
                    format!("{}/{}", text(i, "app"), text(i, "function")),
                    text(i, "class"),
                    text(i, "state"),
                    text(i, "attempts"),
                    i["result"]["status"]
                        .as_u64()
                        .map_or("-".into(), |s| s.to_string()),
                    text(i, "created_at"),
                ]
            })
            .collect();
        print_table(
            &[
                "ID", "FUNCTION", "CLASS", "STATE", "ATTEMPTS", "STATUS", "CREATED",
            ],
            rows,
        );
    })
}

/// `turnpike schedules`: the schedules of the caller's apps, with their next and last runs.
pub fn schedules(args: ReadArgs) -> Result<(), Error> {
    read(&args, "/v1/schedules", |answer| {
        let rows = list(answer, "schedules")
            .map(|s| {
                vec![
                    format!("{}/{}", text(s, "app"), text(s, "function")),
                    text(s, "cron"),
                    format!("{} {}", text(s, "method"), text(s, "path")),
                    text(s, "class"),
                    text(s, "next_at"),
                    text(s, "last_at"),
                    text(s, "last_invocation"),
                ]
            })
            .collect();
        print_table(
            &[
                "FUNCTION",
                "CRON",
                "REQUEST",
                "CLASS",
                "NEXT",
                "LAST",
                "LAST INVOCATION",
            ],
            rows,
        );
    })
}

/// `turnpike usage`: the caller's ledger, summed per `--by`.
pub fn usage(args: UsageArgs) -> Result<(), Error> {
    let mut query = Vec::new();
    if let Some(by) = &args.by {
        for item in by.split(',') {
            if !usage_keys().contains(&item) {
                return Err(Error::Input(format!(
                    "--by `{by}`: `{item}` is not one of {}",
                    usage_keys().join(", ")
                )));
            }
        }
        query.push(format!("by={by}"));
    }
    for (flag, date) in [("from", &args.from), ("to", &args.to)] {
        if let Some(date) = date {
            check_date(date).map_err(|e| Error::Input(format!("--{flag} `{date}`: {e}")))?;
            query.push(format!("{flag}={date}"));
        }
    }
    let path = match query.is_empty() {
        true => "/v1/usage".to_string(),
        false => format!("/v1/usage?{}", query.join("&")),
    };
    read(&args.read, &path, |answer| {
        let rows: Vec<&Value> = list(answer, "rows").collect();
        // The columns the rows are per, in the order of `by`'s words, then the sums; at least
        // one column for the word `total`.
        let keys: Vec<&str> = usage_keys()
            .into_iter()
            .filter(|k| rows.iter().any(|r| r.get(*k).is_some()))
            .collect();
        let labels = keys.len().max(1);
        let row = |first: Vec<String>, sums: &Value| -> Vec<String> {
            let mut cells = first;
            cells.resize(labels, String::new());
            cells.extend(USAGE_SUMS.iter().map(|s| text(sums, s)));
            cells
        };
        let mut table: Vec<Vec<String>> = rows
            .iter()
            .map(|r| row(keys.iter().map(|k| text(r, k)).collect(), r))
            .collect();
        table.push(row(vec!["total".into()], &answer["total"]));
        let mut header: Vec<String> = keys.iter().map(|k| k.to_uppercase()).collect();
        header.resize(labels, String::new());
        header.extend(USAGE_SUMS.iter().map(|s| s.to_uppercase()));
        println!(
            "usage from {} to {}, in {}",
            text(answer, "from"),
            text(answer, "to"),
            text(answer, "currency")
        );
        print_table(
            &header.iter().map(String::as_str).collect::<Vec<_>>(),
            table,
        );
    })
}

/// What `--by` may name (the store's usage keys), in the order of a usage table's columns.
fn usage_keys() -> [&'static str; 4] {
    UsageKey::ALL.map(UsageKey::column)
}

/// A usage row's sums.
const USAGE_SUMS: [&str; 4] = ["invocations", "cpu_seconds", "gb_seconds", "cost"];

/// Whether `date` is a date as `YYYY-MM-DD` (the gateway's rule).
fn check_date(date: &str) -> Result<(), String> {
    match Day::parse(date) {
        Some(_) => Ok(()),
        None => Err("not a date as YYYY-MM-DD".into()),
    }
}

/// `turnpike budget`: shows the caller's budget, or sets it (`--monthly ... --over ...`) or
/// removes it (`--none`) first.
pub fn budget(args: BudgetArgs) -> Result<(), Error> {
    // clap makes `--monthly` and `--over` come together, and `--none` alone.
    let update = if args.none {
        Some(serde_json::json!({
            "monthly": null,
            "over": Over::Throttle.as_str(),
            "headroom": manifest::DEFAULT_HEADROOM,
        }))
    } else if let (Some(monthly), Some(over)) = (args.monthly, args.over) {
        for (flag, v) in [("--monthly", monthly), ("--headroom", args.headroom)] {
            manifest::check_non_negative(v).map_err(|e| Error::Input(format!("{flag} {e}")))?;
        }
        let budget = Budget {
            monthly,
            over,
            headroom: args.headroom,
        };
        Some(budget.to_json())
    } else {
        None
    };
    if let Some(update) = update {
        let client = Client::new(&args.read.api)?;
        client.json(Method::PUT, "/v1/budget", Some(&update))?;
    }
    read(&args.read, "/v1/budget", |b| {
        let month = text(b, "month");
        let spent = text(b, "spent");
        if b["monthly"].is_null() {
            println!("no budget: spending is not limited");
            println!("{month}: spent {spent} micro-cents");
            return;
        }
        println!(
            "budget: {} micro-cents a month; over it: {}; headroom {}",
            text(b, "monthly"),
            text(b, "over"),
            text(b, "headroom")
        );
        println!(
            "{month}: spent {spent}, allowed now {}: {}",
            text(b, "allowed_now"),
            text(b, "state")
        );
    })
}

/// `turnpike keys create|list|revoke`.
pub fn keys(command: KeysCommand) -> Result<(), Error> {
    match command {
        KeysCommand::Create(args) => {
            let answer = Client::new(&args.api)?
                .send(Method::POST, "/v1/keys", &[], Bytes::new())?
                .check()?
                .json()?;
            eprintln!(
                "a new key {} of {}, shown only this once:",
                text(&answer, "id"),
                text(&answer, "name")
            );
            println!("{}", text(&answer, "key"));
            Ok(())
        }
        KeysCommand::List(args) => read(&args, "/v1/keys", |answer| {
            let rows = list(answer, "keys")
                .map(|k| vec![text(k, "id"), text(k, "created_at")])
                .collect();
            print_table(&["ID", "CREATED"], rows);
        }),
        KeysCommand::Revoke(args) => {
            if args.name.len() != turnpike_store::KEY_ID_CHARS
                || !args.name.bytes().all(|b| b.is_ascii_hexdigit())
            {
                return Err(Error::Input(format!(
                    "`{}` is not a key id: `turnpike keys list` shows them ({} hex digits)",
                    args.name,
                    turnpike_store::KEY_ID_CHARS
                )));
            }
            Client::new(&args.api)?
                .send(
                    Method::DELETE,
                    &format!("/v1/keys/{}", args.name),
                    &[],
                    Bytes::new(),
                )?
                .check()?;
            eprintln!("revoked key {}", args.name);
            Ok(())
        }
    }
}

/// `turnpike apps list|delete`.
pub fn apps(command: AppsCommand) -> Result<(), Error> {
    match command {
        AppsCommand::List(args) => read(&args, "/v1/apps", |answer| {
            let rows = list(answer, "apps")
                .map(|a| {
                    let functions = list(a, "functions").count();
                    let routes = list(a, "routes").count();
                    vec![
                        text(a, "name"),
                        text(a, "host"),
                        functions.to_string(),
                        routes.to_string(),
                    ]
                })
                .collect();
            print_table(&["APP", "HOST", "FUNCTIONS", "ROUTES"], rows);
        }),
        AppsCommand::Delete(args) => {
            manifest::check_dns_label("app", &args.name).map_err(Error::Input)?;
            Client::new(&args.api)?
                .send(
                    Method::DELETE,
                    &format!("/v1/apps/{}", args.name),
                    &[],
                    Bytes::new(),
                )?
                .check()?;
            eprintln!("deleted app {}", args.name);
            Ok(())
        }
    }
}

/// `turnpike tenants create|list|limit`.
pub fn tenants(command: TenantsCommand) -> Result<(), Error> {
    match command {
        TenantsCommand::Create(args) => {
            manifest::check_dns_label("tenant", &args.name).map_err(Error::Input)?;
            let client = Client::new(&args.api)?;
            let answer = client.json(
                Method::POST,
                "/v1/tenants",
                Some(&serde_json::json!({ "name": args.name })),
            )?;
            eprintln!(
                "created tenant {}; its API key, shown only this once (keep it, e.g. in TURNPIKE_KEY):",
                text(&answer, "name")
            );
            println!("{}", text(&answer, "key"));
            Ok(())
        }
        TenantsCommand::List(args) => read(&args, "/v1/tenants", |answer| {
            let rows = list(answer, "tenants")
                .map(|t| {
                    let limit = t["concurrency_max"].as_u64();
                    vec![text(t, "name"), limit.map_or("-".into(), |n| n.to_string())]
                })
                .collect();
            print_table(&["TENANT", "CONCURRENCY MAX"], rows);
        }),
        TenantsCommand::Limit(args) => {
            manifest::check_dns_label("tenant", &args.name).map_err(Error::Input)?;
            if let Some(max) = args.concurrency_max {
                turnpike_store::check_concurrency_max("--concurrency-max", max)
                    .map_err(|e| Error::Input(e.to_string()))?;
            }
            let client = Client::new(&args.api)?;
            let answer = client.json(
                Method::PUT,
                &format!("/v1/tenants/{}", args.name),
                Some(&serde_json::json!({ "concurrency_max": args.concurrency_max })),
            )?;
            match answer["concurrency_max"].as_u64() {
                Some(n) => eprintln!(
                    "tenant {}: at most {n} invocations in flight",
                    text(&answer, "name")
                ),
                None => eprintln!("tenant {}: no concurrency limit", text(&answer, "name")),
            }
            Ok(())
        }
    }
}

/// `GET path`: the gateway's JSON as it is with `--json`, or else shown by `show`.
fn read(args: &ReadArgs, path: &str, show: impl FnOnce(&Value)) -> Result<(), Error> {
    let answer = Client::new(&args.api)?
        .send(Method::GET, path, &[], Bytes::new())?
        .check()?;
    if args.json {
        let body = String::from_utf8_lossy(&answer.body);
        println!("{}", body.trim_end());
    } else {
        show(&answer.json()?);
    }
    Ok(())
}

/// The items of the list `answer[key]` (none if it is not a list).
fn list<'a>(answer: &'a Value, key: &str) -> impl Iterator<Item = &'a Value> {
    answer[key].as_array().into_iter().flatten()
}

/// `value[key]` for a table: a string as it is, a number shortly, `-` if missing.
fn text(value: &Value, key: &str) -> String {
    match &value[key] {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        Value::Number(n) => match n.as_f64() {
            Some(x) if n.is_f64() => number(x),
            _ => n.to_string(),
        },
        other => other.to_string(),
    }
}

/// A float for a table: six significant digits, no trailing zeros.
fn number(x: f64) -> String {
    if x == 0.0 || !x.is_finite() {
        return x.to_string();
    }
    let trim = |s: &str| match s.contains('.') {
        true => s.trim_end_matches('0').trim_end_matches('.').to_string(),
        false => s.to_string(),
    };
    if x.abs() < 1e-4 || x.abs() >= 1e12 {
        let s = format!("{x:.5e}");
        let (mantissa, exponent) = s.split_once('e').expect("`e` formats with an exponent");
        return format!("{}e{exponent}", trim(mantissa));
    }
    let decimals = (5 - x.abs().log10().floor() as i32).max(0) as usize;
    trim(&format!("{x:.decimals$}"))
}

/// A route's method, `*` for every method.
fn method(route: &Value) -> String {
    route["method"].as_str().unwrap_or("*").to_string()
}

/// The first 12 characters of a content hash.
fn short(hash: &str) -> String {
    hash.chars().take(12).collect()
}

/// Prints `rows` under `header` in columns two spaces apart.
fn print_table(header: &[&str], rows: Vec<Vec<String>>) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut out = String::new();
        for (i, (cell, w)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out += cell;
            } else {
                out += &format!("{cell:<w$}  ");
            }
        }
        println!("{}", out.trim_end());
    };
    line(header.to_vec());
    for row in &rows {
        line(row.iter().map(String::as_str).collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_shortly() {
        assert_eq!(number(0.0031), "0.0031");
        assert_eq!(number(0.5), "0.5");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(766666.66666), "766667");
        assert_eq!(number(1234.5), "1234.5");
        assert_eq!(number(0.000021), "2.1e-5");
        assert_eq!(number(0.0), "0");
        assert_eq!(text(&serde_json::json!({"n": 12}), "n"), "12");
        assert_eq!(text(&serde_json::json!({"n": 1e6}), "n"), "1000000");
        assert_eq!(text(&serde_json::json!({}), "n"), "-");
    }

    #[test]
    fn dates() {
        assert!(check_date("2026-11-01").is_ok());
        for bad in [
            "2026-13-01",
            "2026-11-00",
            "26-11-01",
            "2026/11/01",
            "2026-11-1x",
        ] {
            assert!(check_date(bad).is_err(), "{bad}");
        }
    }
}
