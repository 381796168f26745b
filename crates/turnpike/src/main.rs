//! `turnpike`: the one binary of Turnpike. For now it runs the cluster simulator
//! (`turnpike sim ...`); see `turnpike --help`.

mod sim;

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
    /// Run the discrete-event cluster simulator (the paper's evaluation and beyond).
    #[command(subcommand)]
    Sim(sim::SimCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Sim(cmd) => sim::main(cmd),
    }
}
