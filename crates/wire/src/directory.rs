//! Roles in the same process, found by address: what `turnpike up` uses so that its gateway,
//! shards and workers call each other directly instead of over loopback gRPC.
//!
//! Every role still listens on its own port and can be reached over RPC (a separate
//! `turnpike worker` joins an `up` cluster as before); only calls between two roles of this
//! process skip the socket. A [`Directory`] maps each in-process shard's and worker's
//! address to the role itself. Whoever connects to an address asks the directory first:
//!
//! - the gateway, for its links to shards ([`Directory::shard_link`]);
//! - a worker's dispatcher, for registering and idle-list updates ([`Directory::shard`]);
//! - a shard, when a worker registers, for its polls and its link to the worker
//!   ([`Directory::worker`]).
//!
//! A directory that records nothing ([`Directory::rpc_only`]: every separate process, and
//! `turnpike up --loopback-rpc`) means every call goes over gRPC. The calls keep their RPC's meaning - the same handlers answer them, each invocation
//! on a task of its own ([`crate::link`]) - and skip only protobuf, HTTP/2 and TCP.
//!
//! Why: on this 2-core machine, the four messages of an invocation's two hops each way, the
//! shard's load polls and the dispatcher's idle-list updates cost more CPU than the hello
//! function itself (docs/benchmarks.md, `cluster`).

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tonic::transport::Channel;
use turnpike_policy::placement::PollReply;
use turnpike_policy::ClassId;

use crate::convert;
use crate::invocation::{
    CallError, FailureKind, IdleReport, Invocation, Outcome, Registered, Registration,
};
use crate::link::{Handler, Link};
use crate::proto;
use crate::proto::shard_client::ShardClient;
use crate::rpc;

/// A future a role in this process answers with.
pub type LocalFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A shard as a gateway and a worker of the same process call it: its `Shard` RPCs, without
/// the RPC, in the roles' own types. Implemented by the scheduler's shard service
/// (`turnpike-scheduler`), whose RPC handlers call these too.
pub trait LocalShard: Send + Sync + std::fmt::Debug + 'static {
    /// Places and runs one invocation (one message of `Shard.Invoke`).
    fn invoke(&self, invocation: Invocation) -> LocalFuture<Outcome>;
    fn register(&self, registration: Registration) -> Result<Registered, CallError>;
    /// A worker joins the idle list, updates its entry there or leaves it; refused when its
    /// registration token is not the shard's for its id (it must register again).
    fn idle_report(&self, report: IdleReport) -> Result<(), CallError>;
    /// The length of its idle list.
    fn idle_len(&self) -> u64;
    /// Its metrics and its live workers' (its `Shard.Metrics`).
    fn metrics(&self) -> LocalFuture<Vec<proto::RoleText>>;
}

/// A worker as a shard in the same process uses it.
pub trait LocalWorker: Send + Sync + std::fmt::Debug + 'static {
    /// Runs the invocations placed here (its `Worker.Run`).
    fn handler(&self) -> Handler;
    /// Its load as seen by an invocation of `class` (its `Worker.Poll`); the reply's
    /// `machine` is meaningless here (the worker does not know its id at the asking shard).
    fn poll(&self, class: ClassId) -> Result<PollReply, CallError>;
    /// Its metrics in the Prometheus text format (its `Worker.Metrics`).
    fn metrics_text(&self) -> String;
}

/// The shards and workers of this process, by address. Cheap to clone (shared).
#[derive(Clone, Debug)]
pub struct Directory {
    roles: Arc<Mutex<Roles>>,
    /// False: roles added are not recorded, so every call goes over RPC.
    records: bool,
}

#[derive(Debug, Default)]
struct Roles {
    shards: HashMap<SocketAddr, Arc<dyn LocalShard>>,
    workers: HashMap<SocketAddr, Arc<dyn LocalWorker>>,
}

impl Default for Directory {
    fn default() -> Self {
        Self::new()
    }
}

impl Directory {
    /// An empty directory: roles added to it are called in process.
    pub fn new() -> Self {
        Self {
            roles: Arc::default(),
            records: true,
        }
    }

    /// A directory that stays empty: every role is called over RPC.
    pub fn rpc_only() -> Self {
        Self {
            records: false,
            ..Self::new()
        }
    }

    /// Makes `shard` reachable in process at `address` (replacing a restarted one).
    pub fn add_shard(&self, address: SocketAddr, shard: Arc<dyn LocalShard>) {
        if self.records {
            crate::lock(&self.roles).shards.insert(address, shard);
        }
    }

    /// Makes `worker` reachable in process at `address`.
    pub fn add_worker(&self, address: SocketAddr, worker: Arc<dyn LocalWorker>) {
        if self.records {
            crate::lock(&self.roles).workers.insert(address, worker);
        }
    }

    /// The shard at `address`: in process if it is here, else a gRPC client. An in-process
    /// shard is looked up again on every call, so a shard replaced at the same address (what
    /// `turnpike up`'s shard restart does) is the one called.
    pub fn shard(&self, address: SocketAddr) -> ShardPeer {
        if crate::lock(&self.roles).shards.contains_key(&address) {
            ShardPeer::InProcess(self.clone(), address)
        } else {
            ShardPeer::Rpc(rpc::shard_client(address))
        }
    }

    /// A link to the shard at `address`, looked up on every call as in [`Directory::shard`].
    pub fn shard_link(&self, address: SocketAddr) -> Link {
        if !crate::lock(&self.roles).shards.contains_key(&address) {
            return Link::to_shard(rpc::shard_client(address));
        }
        let directory = self.clone();
        Link::in_process(Arc::new(move |invocation| {
            let shard = directory.shard_at(address);
            Box::pin(async move {
                match shard {
                    Ok(shard) => shard.invoke(invocation).await,
                    Err(e) => Outcome::failure(FailureKind::Unavailable, e.message()),
                }
            })
        }))
    }

    fn shard_at(&self, address: SocketAddr) -> Result<Arc<dyn LocalShard>, CallError> {
        crate::lock(&self.roles)
            .shards
            .get(&address)
            .cloned()
            .ok_or_else(|| CallError::Unavailable(format!("shard {address} left this process")))
    }

    /// The worker that registered as `address` (`http://HOST:PORT`), if it is in this process.
    pub fn worker(&self, address: &str) -> Option<Arc<dyn LocalWorker>> {
        let address: SocketAddr = address.strip_prefix("http://")?.parse().ok()?;
        crate::lock(&self.roles).workers.get(&address).cloned()
    }
}

/// A shard as a worker's dispatcher calls it.
#[derive(Clone, Debug)]
pub enum ShardPeer {
    Rpc(ShardClient<Channel>),
    /// The shard at this address in the directory.
    InProcess(Directory, SocketAddr),
}

impl ShardPeer {
    pub async fn register(&self, registration: Registration) -> Result<Registered, CallError> {
        match self {
            Self::Rpc(client) => Ok(client
                .clone()
                .register(proto::WorkerInfo::from(registration))
                .await?
                .into_inner()
                .into()),
            Self::InProcess(directory, address) => {
                directory.shard_at(*address)?.register(registration)
            }
        }
    }

    pub async fn idle_report(&self, report: IdleReport) -> Result<(), CallError> {
        match self {
            Self::Rpc(client) => {
                let mut client = client.clone();
                match report.entry {
                    Some(entry) => {
                        client
                            .idle_join(convert::idle_join_to_wire(&report, entry))
                            .await?;
                    }
                    None => {
                        client
                            .idle_leave(convert::idle_leave_to_wire(&report))
                            .await?;
                    }
                }
                Ok(())
            }
            Self::InProcess(directory, address) => {
                directory.shard_at(*address)?.idle_report(report)
            }
        }
    }

    pub async fn idle_len(&self) -> Result<u64, CallError> {
        match self {
            Self::Rpc(client) => Ok(client
                .clone()
                .idle_len(proto::Empty {})
                .await?
                .into_inner()
                .len),
            Self::InProcess(directory, address) => Ok(directory.shard_at(*address)?.idle_len()),
        }
    }

    /// The shard's metrics and its live workers' (`Shard.Metrics`).
    pub async fn metrics(&self) -> Result<Vec<proto::RoleText>, CallError> {
        match self {
            Self::Rpc(client) => Ok(client
                .clone()
                .metrics(proto::Empty {})
                .await?
                .into_inner()
                .roles),
            Self::InProcess(directory, address) => {
                Ok(directory.shard_at(*address)?.metrics().await)
            }
        }
    }
}
