//! `turnpike`: the one binary of Turnpike: a whole cluster in one process (`turnpike up`) and
//! the cluster simulator (`turnpike sim ...`); see `turnpike --help`.

mod sim;
mod up;

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
    /// Run the discrete-event cluster simulator (the paper's evaluation and beyond).
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Up(args) => up::main(args),
        Command::Sim(cmd) => sim::main(cmd),
    }
}
