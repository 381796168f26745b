//! `turnpike worker`: one worker node, registering with the given shards, until Ctrl-C or
//! SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use turnpike_control::node::{self, NodeConfig};

#[derive(Args, Debug)]
pub struct WorkerArgs {
    /// Where the worker serves its RPCs (port 0: one chosen by the OS, printed).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// A shard to register with (repeat for each shard).
    #[arg(long = "shard", required = true)]
    shards: Vec<SocketAddr>,
    /// Core slots.
    #[arg(long, default_value_t = 1)]
    cores: u32,
    /// Memory for guests, MB.
    #[arg(long, default_value_t = 1024)]
    memory_mb: u64,
    /// Compile cache and swap files.
    #[arg(long, default_value = "./.turnpike")]
    data_dir: PathBuf,
    /// A component to load at start (repeatable).
    #[arg(long = "load")]
    load: Vec<PathBuf>,
}

pub fn main(args: WorkerArgs) -> ExitCode {
    crate::block_on(async move {
        let config = NodeConfig {
            listen: args.listen,
            shards: args.shards,
            data_dir: args.data_dir,
            cores: args.cores.max(1),
            memory_mb: args.memory_mb,
            load: args.load,
        };
        let node = match node::start_node(config).await {
            Ok(node) => node,
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        };
        println!("worker listening on {}", node.address);
        for hash in &node.loaded {
            println!("loaded {hash}");
        }
        crate::up::wait_for_signal().await;
        node.server.abort();
        node.dispatcher.abort();
        ExitCode::SUCCESS
    })
}
