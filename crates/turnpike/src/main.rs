//! `turnpike`: the one binary of Turnpike: every role of a cluster (`turnpike up` runs them
//! all in one process; `gateway`, `shard`, `worker` one each), the developer CLI on the
//! gateway's `/v1/` API (`deploy`, `functions`, `routes`, `invoke`, `usage`, `budget`,
//! `classes`, `tenants`), and the cluster simulator (`turnpike sim ...`); see
//! `turnpike --help`.

mod api_commands;
mod certs;
mod client;
mod config_file;
mod manifest;
mod roles;
mod sim;
mod twin;
mod up;
mod worker;

/// mimalloc rather than glibc's malloc: the invocation path allocates and frees many small
/// buffers (messages, headers, tasks) across threads, where glibc's arenas spent 8-10% of each
/// role's CPU (docs/benchmarks.md, issue 18).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use turnpike_wire::telemetry;

#[derive(Parser, Debug)]
#[command(
    name = "turnpike",
    version,
    about = "A serverless function platform scheduled by price class"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    /// How logs are written to stderr: `text` for people, `json` (one object a line, with
    /// the span fields - invocation, tenant, app, function, class, shard, worker) for log
    /// collectors. Which logs: `RUST_LOG` (e.g. `RUST_LOG=turnpike_gateway=debug`; default
    /// `info`).
    #[arg(long, global = true, value_enum, default_value = "text")]
    log_format: LogFormat,
}

/// `--log-format`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

/// Sends `tracing`'s events to stderr in `format`, filtered by `RUST_LOG` (default `info`);
/// and, for a role (`service` is its name), its spans to an OpenTelemetry collector when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set (`turnpike_wire::telemetry`). The returned guard
/// flushes the last spans when dropped. A malformed endpoint is logged once; the role runs
/// on without traces.
fn init_logs(format: LogFormat, service: Option<&str>) -> Option<telemetry::Telemetry> {
    use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
    use tracing_subscriber::util::SubscriberInitExt as _;
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs = match format {
        LogFormat::Text => logs.boxed(),
        LogFormat::Json => logs
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .boxed(),
    };
    let (guard, traces, refused) = match service.map(telemetry::Telemetry::from_env) {
        Some(Ok(Some((guard, layer)))) => (Some(guard), Some(layer), None),
        Some(Err(e)) => (None, None, Some(e)),
        Some(Ok(None)) | None => (None, None, None),
    };
    let _ = tracing_subscriber::registry()
        .with(traces)
        .with(filter)
        .with(logs)
        .try_init();
    if let Some(e) = refused {
        tracing::error!("traces are not exported: {e}");
    }
    guard
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Start a whole cluster in this process (gateway, shards, workers) with the demo app.
    Up(up::UpArgs),
    /// Run one worker node that registers with the given shards.
    Worker(worker::WorkerArgs),
    /// Run one scheduler shard.
    Shard(roles::ShardArgs),
    /// Run the HTTP gateway in front of the given shards.
    Gateway(roles::GatewayArgs),
    /// Make the cluster CA and role certificates for mutual TLS between roles.
    #[command(subcommand)]
    Certs(certs::CertsCommand),
    /// Run the discrete-event cluster simulator (the paper's evaluation and beyond).
    #[command(subcommand)]
    Sim(sim::SimCommand),
    /// Run one experiment twice, in the simulator and on a real cluster with emulated
    /// workers, and compare them class by class (`turnpike sim preset twin` is a start).
    Twin(twin::TwinArgs),
    /// Deploy an app from its manifest (turnpike.toml): upload its components, set its
    /// functions, routes and budget.
    Deploy(api_commands::DeployArgs),
    /// List the functions of your apps.
    Functions(api_commands::ReadArgs),
    /// List the routes of your apps.
    Routes(api_commands::ReadArgs),
    /// List the price classes and their prices.
    Classes(api_commands::ReadArgs),
    /// Run a function of one of your apps at a price class (`--async`: queue it and print
    /// its id).
    Invoke(api_commands::InvokeArgs),
    /// List your asynchronous invocations, or show one (`turnpike invocations ID`) with its
    /// state and result.
    Invocations(api_commands::InvocationsArgs),
    /// List the schedules of your apps with their next and last runs.
    Schedules(api_commands::ReadArgs),
    /// Show your usage and its cost, summed by function, class, app or day.
    Usage(api_commands::UsageArgs),
    /// Show your monthly budget, or set it (`--monthly N --over throttle|lower`) or remove it
    /// (`--none`).
    Budget(api_commands::BudgetArgs),
    /// Create, list and revoke your API keys.
    #[command(subcommand)]
    Keys(api_commands::KeysCommand),
    /// List or delete your apps.
    #[command(subcommand)]
    Apps(api_commands::AppsCommand),
    /// Create and list tenants (admin only).
    #[command(subcommand)]
    Tenants(api_commands::TenantsCommand),
}

/// The scheduling policy of emulated workers (`--policy`).
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
enum PolicyArg {
    /// The policy core: per-class queues, idle list, preemptive priority on machines.
    Turnpike,
    /// The Hermod baseline: processor sharing, one FIFO queue, no idle list.
    Hermod,
}

impl From<PolicyArg> for turnpike_node::emulated::MachinePolicy {
    fn from(policy: PolicyArg) -> Self {
        match policy {
            PolicyArg::Turnpike => Self::Turnpike,
            PolicyArg::Hermod => Self::Hermod,
        }
    }
}

/// Reports a refusal to start (bad input, a port in use) and exits with status 2.
fn fail(message: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {message}");
    ExitCode::from(2)
}

/// Runs a service command on a multi-threaded async runtime.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    block_on_threads(None, command)
}

/// [`block_on`] with `threads` runtime threads (`None`: tokio's default, the CPUs this
/// process may use).
fn block_on_threads(
    threads: Option<u32>,
    command: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(threads) = threads {
        builder.worker_threads(threads as usize);
    }
    builder.enable_all();
    block_on_with(builder, command)
}

/// Runs a service command on the runtime `builder` makes.
fn block_on_with(
    mut builder: tokio::runtime::Builder,
    command: impl std::future::Future<Output = ExitCode>,
) -> ExitCode {
    match builder.build() {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    // A service command's `--config FILE` becomes flags in front of the command line's.
    let flags_of = |name: &str| -> Vec<String> {
        Cli::command()
            .find_subcommand(name)
            .map(|c| {
                c.get_arguments()
                    .filter_map(|a| a.get_long())
                    .filter(|&l| l != "config")
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let args = match config_file::expand(std::env::args_os().collect(), flags_of) {
        Ok(args) => args,
        Err(e) => return fail(e),
    };
    // A flag given twice (in the file and on the command line) takes the last value.
    let mut command = Cli::command();
    for name in ["up", "worker", "shard", "gateway"] {
        command = command.mut_subcommand(name, |c| c.args_override_self(true));
    }
    let matches = command.get_matches_from(args);
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    let service = match &cli.command {
        Command::Up(_) => Some("turnpike-up"),
        Command::Worker(_) => Some("turnpike-worker"),
        Command::Shard(_) => Some("turnpike-shard"),
        Command::Gateway(_) => Some("turnpike-gateway"),
        _ => None,
    };
    let _telemetry = init_logs(cli.log_format, service);
    match cli.command {
        Command::Up(args) => up::main(args),
        Command::Worker(args) => worker::main(args),
        Command::Shard(args) => roles::shard(args),
        Command::Gateway(args) => roles::gateway(args),
        Command::Certs(cmd) => certs::main(cmd),
        Command::Sim(cmd) => sim::main(cmd),
        Command::Twin(args) => twin::main(args),
        Command::Deploy(args) => api_commands::exit(api_commands::deploy(args)),
        Command::Functions(args) => api_commands::exit(api_commands::functions(args)),
        Command::Routes(args) => api_commands::exit(api_commands::routes(args)),
        Command::Classes(args) => api_commands::exit(api_commands::classes(args)),
        Command::Invoke(args) => api_commands::exit(api_commands::invoke(args)),
        Command::Invocations(args) => api_commands::exit(api_commands::invocations(args)),
        Command::Schedules(args) => api_commands::exit(api_commands::schedules(args)),
        Command::Usage(args) => api_commands::exit(api_commands::usage(args)),
        Command::Budget(args) => api_commands::exit(api_commands::budget(args)),
        Command::Tenants(cmd) => api_commands::exit(api_commands::tenants(cmd)),
        Command::Keys(cmd) => api_commands::exit(api_commands::keys(cmd)),
        Command::Apps(cmd) => api_commands::exit(api_commands::apps(cmd)),
    }
}
