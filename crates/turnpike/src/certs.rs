//! `turnpike certs`: the cluster certificate authority and role certificates for mutual TLS
//! between roles (`turnpike_wire::tls`), and `--tls-dir` / `--insecure-internal`, which every
//! role command takes.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use turnpike_wire::tls::{self, InternalTls, Role};

#[derive(clap::Subcommand, Debug)]
pub enum CertsCommand {
    /// Make a new cluster CA: `ca.pem` (give it to every role) and `ca.key` (keep it where
    /// certificates are issued, not on the role machines).
    Init {
        /// Where to write them.
        #[arg(long, default_value = "./tls")]
        dir: PathBuf,
    },
    /// Make `NAME.pem` and `NAME.key`, a certificate for one role signed by the CA in `--dir`.
    /// A role command with `--tls-dir D` reads `D/ca.pem` and `D/<role>.pem`, `D/<role>.key`:
    /// name the certificate after its role (`gateway`, `shard`, `worker`), or copy it so.
    Issue {
        /// The role the certificate names; it decides which RPCs its holder may call.
        #[arg(long, value_name = "gateway|shard|worker")]
        role: Role,
        /// The certificate's name (its files' names and its common name).
        name: String,
        /// The directory holding the CA, where the certificate is written.
        #[arg(long, default_value = "./tls")]
        dir: PathBuf,
    },
}

pub fn main(command: CertsCommand) -> ExitCode {
    let result = match &command {
        CertsCommand::Init { dir } => {
            tls::init_ca(dir).map(|()| format!("{}/ca.pem", dir.display()))
        }
        CertsCommand::Issue { role, name, dir } => {
            tls::issue(dir, &[*role], name).map(|()| format!("{}/{name}.pem", dir.display()))
        }
    };
    match result {
        Ok(written) => {
            println!("wrote {written}");
            ExitCode::SUCCESS
        }
        Err(e) => crate::fail(e),
    }
}

/// How a role command's internal RPC is secured: `--tls-dir` or, explicitly,
/// `--insecure-internal`. One of them is required, so that plain text is never an accident.
#[derive(clap::Args, Debug, Clone)]
pub struct InternalArgs {
    /// Mutual TLS for RPC between roles: the directory with the cluster CA (`ca.pem`) and
    /// this role's certificate (`<role>.pem`, `<role>.key`, from `turnpike certs issue`).
    /// For `turnpike up`, the default is `<data-dir>/tls`, made on the first start.
    #[arg(long, env = "TURNPIKE_TLS_DIR")]
    pub tls_dir: Option<PathBuf>,
    /// Plain-text RPC between roles: anyone who reaches a role's RPC port can call it.
    #[arg(long, env = "TURNPIKE_INSECURE_INTERNAL", conflicts_with = "tls_dir")]
    pub insecure_internal: bool,
}

impl InternalArgs {
    /// Sets the process's TLS identity for `role`, or warns that internal RPC is plain text.
    pub fn apply(&self, role: Role) -> Result<(), String> {
        match &self.tls_dir {
            Some(dir) => set(InternalTls::load(dir, role.as_str()).map_err(|e| e.to_string())?),
            None if self.insecure_internal => {
                warn_insecure();
                Ok(())
            }
            None => Err(format!(
                "internal RPC needs --tls-dir DIR (with ca.pem, {role}.pem and {role}.key from \
                 `turnpike certs init` and `turnpike certs issue --role {role} {role}`), or \
                 --insecure-internal for plain text"
            )),
        }
    }

    /// `turnpike up`'s identity: `up.pem` in `--tls-dir`, or in `data_dir/tls`; what is
    /// missing there is made ([`tls::ensure_up`]: the CA on the first start, `up.pem` from
    /// the CA when `--tls-dir` came from `turnpike certs init`).
    pub fn apply_up(&self, data_dir: &Path) -> Result<(), String> {
        if self.insecure_internal {
            warn_insecure();
            return Ok(());
        }
        let dir = self.tls_dir.clone().unwrap_or_else(|| data_dir.join("tls"));
        set(tls::ensure_up(&dir).map_err(|e| e.to_string())?)
    }
}

fn set(tls: InternalTls) -> Result<(), String> {
    tls::set_process_tls(tls).map_err(String::from)
}

fn warn_insecure() {
    tracing::warn!(
        "--insecure-internal: RPC between roles is plain text and unauthenticated; anyone who \
         reaches an RPC port can invoke, register or run"
    );
}
