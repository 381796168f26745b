//! `turnpike sim`: experiments of the cluster simulator, written into `--out DIR`.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use turnpike_sim::config::{preset_toml, Config, ConfigError};
use turnpike_sim::experiment::Experiment;
use turnpike_sim::sweep::Sweep;

#[derive(Subcommand, Debug)]
pub enum SimCommand {
    /// Figure 4: Hermod vs Turnpike vs EDF over a sweep of offered load.
    Fig4(RunArgs),
    /// Figure 5: Turnpike's memory management with 32 GB machines (swapping and kills).
    Fig5(RunArgs),
    /// Any experiment from a TOML file (start from `turnpike sim preset NAME`).
    Run {
        /// The experiment file.
        #[arg(long)]
        config: PathBuf,
        #[command(flatten)]
        args: RunArgs,
    },
    /// Print a built-in experiment's TOML (fig4, fig5, overload, trace, twin) to start a
    /// config from.
    Preset {
        /// fig4, fig5, overload, trace or twin.
        name: String,
    },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Directory for summary.json, CSV tables and SVG plots (default: out/<experiment>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Seed for the workload and the policies; the same seed gives the same summary.json.
    #[arg(long)]
    seed: Option<u64>,
    /// A small run (10 s of simulated arrivals per point) that still shows the effects.
    #[arg(long)]
    quick: bool,
    /// Worker threads (default: the machine's cores).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1024))]
    threads: Option<u64>,
    /// No progress bar.
    #[arg(long)]
    no_progress: bool,
}

/// Bad input exits with 2 (like a usage error); other failures with 1.
pub fn main(cmd: SimCommand) -> ExitCode {
    let result = match cmd {
        SimCommand::Preset { name } => match preset_toml(&name) {
            Ok(text) => {
                print!("{text}");
                return ExitCode::SUCCESS;
            }
            Err(e) => Err(anyhow::Error::new(e)),
        },
        SimCommand::Fig4(args) => Config::preset("fig4")
            .map_err(anyhow::Error::new)
            .and_then(|c| run(c, args, "fig4")),
        SimCommand::Fig5(args) => Config::preset("fig5")
            .map_err(anyhow::Error::new)
            .and_then(|c| run(c, args, "fig5")),
        SimCommand::Run { config, args } => std::fs::read_to_string(&config)
            .with_context(|| format!("read config {}", config.display()))
            .and_then(|text| {
                Config::parse(&text)
                    .map_err(|e| anyhow::Error::new(e).context(format!("{}", config.display())))
            })
            .and_then(|c| {
                let name = config
                    .file_stem()
                    .map_or("run".into(), |s| s.to_string_lossy().into_owned());
                run(c, args, &name)
            }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            let bad_input = e.chain().any(|c| c.is::<ConfigError>())
                || e.chain()
                    .any(|c| c.is::<std::io::Error>() && e.to_string().starts_with("read config"));
            if bad_input {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}

fn run(mut config: Config, args: RunArgs, name: &str) -> anyhow::Result<()> {
    if let Some(seed) = args.seed {
        config.seed = seed;
    }
    if args.quick {
        config = config.quick();
    }
    let out = args.out.unwrap_or_else(|| PathBuf::from("out").join(name));
    let threads = args.threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |t| t as usize,
    );
    let show_progress = !args.no_progress;
    if config.sweep.is_some() {
        return run_sweep(&config, threads, show_progress, &out);
    }
    let experiment = Experiment::run(config, threads, show_progress)?;
    let files = experiment
        .write(&out)
        .with_context(|| format!("write results into {}", out.display()))?;
    print_table(&experiment);
    let secs = experiment.wall.as_secs_f64();
    eprintln!(
        "simulated {} invocations in {:.1} s on {} threads ({:.0} invocations per wall-second per thread)",
        experiment.invocations(),
        secs,
        threads,
        experiment.invocations() as f64 / secs / threads.min(experiment.runs.len()) as f64
    );
    print_written(&files, &out);
    Ok(())
}

/// A config with a `[sweep]`: every variant, then one line per (variant, scheduler, load).
fn run_sweep(
    config: &Config,
    threads: usize,
    show_progress: bool,
    out: &std::path::Path,
) -> anyhow::Result<()> {
    let sweep = Sweep::run(config, threads, show_progress)?;
    let files = sweep
        .write(out)
        .with_context(|| format!("write results into {}", out.display()))?;
    println!(
        "{:<32} {:<9} {:>5} {:>12} {:>10} {:>9}",
        "variant", "scheduler", "load", "p99 top", "unfinished", "util"
    );
    for (variant, e) in &sweep.variants {
        let top = e.classes.top().index();
        for run in &e.runs {
            let o = &run.classes[top];
            let p99 = o
                .slowdown
                .quantile(0.99)
                .map_or("-".to_string(), |v| format!("{v:.2}"));
            let util = turnpike_sim::stats::mean(&run.utilization).unwrap_or(0.0);
            println!(
                "{:<32} {:<9} {:>5} {:>12} {:>10} {:>8.1}%",
                variant.label(),
                run.scheduler.name(),
                run.load,
                p99,
                o.unfinished,
                util * 100.0
            );
        }
    }
    eprintln!(
        "simulated {} invocations in {:.1} s",
        sweep.invocations(),
        sweep.wall.as_secs_f64()
    );
    print_written(&files, out);
    Ok(())
}

fn print_written(files: &[String], out: &std::path::Path) {
    println!(
        "wrote {} files to {}: {}",
        files.len(),
        out.display(),
        files.join(", ")
    );
}

/// A compact view of the results: p99 latency per class for each run.
fn print_table(e: &Experiment) {
    let names: Vec<&str> = e.classes.iter().map(|(_, c)| c.name.as_str()).collect();
    print!("{:<9} {:>5}", "scheduler", "load");
    for n in names.iter().rev() {
        print!(" {:>12}", format!("p99 {n}"));
    }
    println!(" {:>9}", "util");
    let summary = e.summary();
    for run in e.runs.iter() {
        print!("{:<9} {:>5}", run.scheduler.name(), run.load);
        for (id, _) in e.classes.iter().rev() {
            match run.classes[id.index()].latency_ms(0.99) {
                Some(v) => print!(" {:>10.1}ms", v),
                None => print!(" {:>12}", "-"),
            }
        }
        let util = turnpike_sim::stats::mean(&run.utilization).unwrap_or(0.0);
        println!(" {:>8.1}%", util * 100.0);
    }
    if let Some(swapped) = summary.get("swapped_mb_by_class") {
        println!("swapped MB by class: {swapped}");
        println!("kills by class: {}", summary["kills_by_class"]);
    }
}
