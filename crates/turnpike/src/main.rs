//! `turnpike`: the one binary of Turnpike: a whole cluster in one process (`turnpike up`) and
//! the cluster simulator (`turnpike sim ...`); see `turnpike --help`.

mod roles;
mod sim;
mod up;
mod worker;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "turnpike",
    version,
    about = "A serverless function platform scheduled by price class"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
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
    /// Run the discrete-event cluster simulator (the paper's evaluation and beyond).
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

/// Runs a service command on a multi-threaded async runtime.
fn block_on(command: impl std::future::Future<Output = ExitCode>) -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime.block_on(command),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::main(args),
        Command::Worker(args) => worker::main(args),
        Command::Shard(args) => roles::shard(args),
        Command::Gateway(args) => roles::gateway(args),
        Command::Sim(cmd) => sim::main(cmd),
    }
}
