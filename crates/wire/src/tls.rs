//! Mutual TLS between roles: the cluster certificate authority, role certificates, and which
//! role may call which RPC.
//!
//! Every role holds a certificate signed by the cluster CA whose subject alternative names
//! include `<role>.role.turnpike` (`gateway`, `shard` or `worker`): the certificate names the
//! role. Both sides of every RPC connection present one and check the other's against the CA:
//! a server asks for a client certificate and refuses the handshake without one; a client
//! checks that the server's certificate names the role it meant to reach (a gateway dialling a
//! shard verifies the name `shard.role.turnpike`, not the address: roles move between
//! addresses, and the CA is the cluster's own, so a certificate's role is what it vouches
//! for). Each RPC is then allowed only to the roles that need it ([`allowed_roles`]).
//!
//! A directory given with `--tls-dir` holds `ca.pem` and the role's `<role>.pem` and
//! `<role>.key`; `ca.key` is only needed by `turnpike certs issue` and is better kept off
//! machines that only run roles. `turnpike up` is every role in one process: its certificate,
//! `up.pem`, names all three roles.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls_pki_types::{CertificateDer, ServerName};
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

/// A role of a Turnpike cluster, as its certificate names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Gateway,
    Shard,
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Gateway, Role::Shard, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Gateway => "gateway",
            Role::Shard => "shard",
            Role::Worker => "worker",
        }
    }

    /// The DNS name in a certificate that says it belongs to this role.
    pub fn dns_name(self) -> String {
        format!("{}.role.turnpike", self.as_str())
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}: one of gateway, shard, worker"))
    }
}

/// Which roles may call the RPC at gRPC `path` (`/turnpike.v1.Shard/Invoke`): only gateways
/// invoke through shards; only workers register and touch idle lists (a worker's dispatcher
/// also reads idle-list lengths); only shards run, load and poll on workers. An unknown path
/// is allowed to nobody.
pub fn allowed_roles(path: &str) -> &'static [Role] {
    match path.rsplit_once('/') {
        Some(("/turnpike.v1.Shard", "Invoke" | "Metrics")) => &[Role::Gateway],
        Some(("/turnpike.v1.Shard", "Register" | "IdleJoin" | "IdleLeave" | "IdleLen")) => {
            &[Role::Worker]
        }
        Some(("/turnpike.v1.Worker", "Run" | "Load" | "Poll" | "Metrics")) => &[Role::Shard],
        _ => &[],
    }
}

/// Why an RPC was refused; its text is what the caller reads in the `PermissionDenied` status.
pub fn check(path: &str, peer: &[Role]) -> Result<(), String> {
    let allowed = allowed_roles(path);
    if peer.iter().any(|r| allowed.contains(r)) {
        return Ok(());
    }
    let names = |roles: &[Role]| {
        roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    Err(format!(
        "{path} is allowed to [{}]; the caller's certificate names [{}]",
        names(allowed),
        names(peer)
    ))
}

/// The roles a (CA-verified) peer certificate names.
pub fn roles_of(certificate: &CertificateDer<'_>) -> Vec<Role> {
    let Ok(cert) = webpki::EndEntityCert::try_from(certificate) else {
        return Vec::new();
    };
    Role::ALL
        .into_iter()
        .filter(|role| {
            let name = ServerName::try_from(role.dns_name()).expect("a role name is a DNS name");
            cert.verify_is_valid_for_subject_name(&name).is_ok()
        })
        .collect()
}

/// Errors reading a TLS directory or making certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "read {path}: {source} (make it with `turnpike certs init` and `turnpike certs issue`)"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0} already exists: not overwriting a certificate authority")]
    Exists(PathBuf),
    #[error("TLS files in {0} are unusable: {1}")]
    Invalid(PathBuf, String),
    #[error("make a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// One process's TLS identity and the cluster CA, loaded from a TLS directory.
#[derive(Clone, Debug)]
pub struct InternalTls {
    ca: Certificate,
    identity: Identity,
}

fn read(path: PathBuf) -> Result<Vec<u8>, TlsError> {
    std::fs::read(&path).map_err(|source| TlsError::Read { path, source })
}

fn write(path: PathBuf, contents: &str, private: bool) -> Result<(), TlsError> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt as _;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    use std::io::Write as _;
    options
        .open(&path)
        .and_then(|mut f| f.write_all(contents.as_bytes()))
        .map_err(|source| TlsError::Write { path, source })
}

impl InternalTls {
    /// Loads `dir/ca.pem` and the identity `dir/<name>.pem` with `dir/<name>.key`.
    pub fn load(dir: &Path, name: &str) -> Result<Self, TlsError> {
        let ca = Certificate::from_pem(read(dir.join("ca.pem"))?);
        let cert = read(dir.join(format!("{name}.pem")))?;
        let key = read(dir.join(format!("{name}.key")))?;
        let tls = Self {
            ca,
            identity: Identity::from_pem(cert, key),
        };
        // Checked here so that the servers and channels made from it later cannot fail.
        tonic::transport::Server::builder()
            .tls_config(tls.server())
            .map_err(|e| TlsError::Invalid(dir.to_owned(), e.to_string()))?;
        tonic::transport::Endpoint::from_static("https://127.0.0.1")
            .tls_config(tls.client(Role::Shard))
            .map_err(|e| TlsError::Invalid(dir.to_owned(), e.to_string()))?;
        Ok(tls)
    }

    /// What a server presents and requires: a client certificate signed by the CA.
    pub fn server(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity.clone())
            .client_ca_root(self.ca.clone())
    }

    /// What a client dialling a `peer` presents and requires.
    pub fn client(&self, peer: Role) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .identity(self.identity.clone())
            .ca_certificate(self.ca.clone())
            .domain_name(peer.dns_name())
    }
}

/// The distinguished name of every cluster CA: certificates are issued by rebuilding the CA's
/// parameters from it and the CA key (rcgen reads no certificates without x509-parser).
fn ca_params() -> Result<CertificateParams, TlsError> {
    let mut params = CertificateParams::new(Vec::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, "Turnpike cluster CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    Ok(params)
}

/// Writes a new cluster CA, `dir/ca.pem` and `dir/ca.key`; refuses to replace one.
pub fn init_ca(dir: &Path) -> Result<(), TlsError> {
    std::fs::create_dir_all(dir).map_err(|source| TlsError::Write {
        path: dir.to_owned(),
        source,
    })?;
    let key_path = dir.join("ca.key");
    if key_path.exists() {
        return Err(TlsError::Exists(key_path));
    }
    let key = KeyPair::generate()?;
    let cert = ca_params()?.self_signed(&key)?;
    write(key_path, &key.serialize_pem(), true)?;
    write(dir.join("ca.pem"), &cert.pem(), false)
}

/// Writes `dir/<name>.pem` and `dir/<name>.key`, a certificate signed by the CA in `dir`
/// naming `roles`.
pub fn issue(dir: &Path, roles: &[Role], name: &str) -> Result<(), TlsError> {
    let ca_key = KeyPair::from_pem(&String::from_utf8_lossy(&read(dir.join("ca.key"))?))?;
    let issuer = Issuer::new(ca_params()?, ca_key);
    let mut params =
        CertificateParams::new(roles.iter().map(|r| r.dns_name()).collect::<Vec<_>>())?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    write(dir.join(format!("{name}.key")), &key.serialize_pem(), true)?;
    write(dir.join(format!("{name}.pem")), &cert.pem(), false)
}

/// `turnpike up`'s certificates in `dir`: `up.pem` naming every role, and `worker.pem` for
/// workers joining from other processes, each issued when missing by the CA in `dir`, which
/// is made on the first start if `dir` holds none. So `up` runs on a fresh data directory and
/// on a `--tls-dir` made by `turnpike certs init` alike.
pub fn ensure_up(dir: &Path) -> Result<InternalTls, TlsError> {
    if !dir.join("ca.key").exists() && !dir.join("ca.pem").exists() {
        init_ca(dir)?;
    }
    if !dir.join("up.pem").exists() {
        issue(dir, &Role::ALL, "up")?;
    }
    if !dir.join("worker.pem").exists() {
        issue(dir, &[Role::Worker], "worker")?;
    }
    InternalTls::load(dir, "up")
}

static PROCESS_TLS: OnceLock<InternalTls> = OnceLock::new();

/// Sets this process's TLS identity, once, before any role starts: every channel and RPC
/// server made through [`crate::rpc`] then uses mutual TLS. A process holds one identity (a
/// role command is one role; `turnpike up` holds a certificate naming all three), so it is
/// process state rather than a parameter threaded through every role's constructor. Without
/// it, internal RPC is plain text, which role commands allow only with `--insecure-internal`.
pub fn set_process_tls(tls: InternalTls) -> Result<(), &'static str> {
    PROCESS_TLS
        .set(tls)
        .map_err(|_| "the process's TLS identity is already set")
}

/// This process's TLS identity, if [`set_process_tls`] was called.
pub fn process_tls() -> Option<&'static InternalTls> {
    PROCESS_TLS.get()
}

/// The type of [`authorize`], named for [`crate::rpc::Layers`].
pub type Authorize =
    fn(http::Request<tonic::body::Body>) -> Result<http::Request<tonic::body::Body>, tonic::Status>;

/// The server-side check of every RPC under TLS: a request whose peer certificate names no
/// role allowed its path is answered `PermissionDenied` (through tonic's recovery of a
/// `Status` error). Plain-text servers (no TLS connect info) are not checked.
pub fn authorize(
    request: http::Request<tonic::body::Body>,
) -> Result<http::Request<tonic::body::Body>, tonic::Status> {
    let Some(info) = request.extensions().get::<TlsConnectInfo<TcpConnectInfo>>() else {
        return Ok(request);
    };
    let roles = info
        .peer_certs()
        .and_then(|certs| certs.first().map(roles_of))
        .unwrap_or_default();
    check(request.uri().path(), &roles).map_err(tonic::Status::permission_denied)?;
    Ok(request)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rpc_is_allowed_only_to_the_roles_that_need_it() {
        use Role::*;
        let cases: [(&str, &[Role]); 8] = [
            ("/turnpike.v1.Shard/Invoke", &[Gateway]),
            ("/turnpike.v1.Shard/Register", &[Worker]),
            ("/turnpike.v1.Shard/IdleJoin", &[Worker]),
            ("/turnpike.v1.Shard/IdleLeave", &[Worker]),
            ("/turnpike.v1.Shard/IdleLen", &[Worker]),
            ("/turnpike.v1.Worker/Run", &[Shard]),
            ("/turnpike.v1.Worker/Load", &[Shard]),
            ("/turnpike.v1.Worker/Poll", &[Shard]),
        ];
        for (path, allowed) in cases {
            for role in Role::ALL {
                assert_eq!(
                    check(path, &[role]).is_ok(),
                    allowed.contains(&role),
                    "{path} {role}"
                );
            }
            assert!(check(path, &[]).is_err(), "{path} without a role");
            assert!(check(path, &Role::ALL).is_ok(), "{path} for up");
        }
        assert!(check("/turnpike.v1.Shard/Other", &Role::ALL).is_err());
    }

    #[test]
    fn a_refusal_names_the_path_and_both_sides_roles() {
        let e = check("/turnpike.v1.Shard/Invoke", &[Role::Worker]).expect_err("refused");
        assert_eq!(
            e,
            "/turnpike.v1.Shard/Invoke is allowed to [gateway]; the caller's certificate names [worker]"
        );
    }

    #[test]
    fn issued_certificates_name_their_roles() {
        let dir = std::env::temp_dir().join(format!("turnpike-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        init_ca(&dir).expect("init");
        assert!(matches!(init_ca(&dir), Err(TlsError::Exists(_))));
        issue(&dir, &[Role::Shard], "s1").expect("issue");
        issue(&dir, &Role::ALL, "up").expect("issue");
        let roles = |name: &str| {
            let pem = std::fs::read(dir.join(format!("{name}.pem"))).expect("read");
            let der = rustls_pki_types::pem::PemObject::from_pem_slice(&pem).expect("pem");
            roles_of(&der)
        };
        assert_eq!(roles("s1"), vec![Role::Shard]);
        assert_eq!(roles("up"), Role::ALL.to_vec());
        InternalTls::load(&dir, "s1").expect("load");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn up_issues_what_its_directory_lacks_and_keeps_its_ca() {
        let dir = std::env::temp_dir().join(format!("turnpike-tls-up-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        // A directory from `turnpike certs init`: up issues its own certificates from that CA.
        init_ca(&dir).expect("init");
        let ca = std::fs::read(dir.join("ca.pem")).expect("ca.pem");
        ensure_up(&dir).expect("up's certificates");
        assert_eq!(
            std::fs::read(dir.join("ca.pem")).expect("ca.pem"),
            ca,
            "the CA is kept"
        );
        let up = std::fs::read(dir.join("up.pem")).expect("up.pem");
        // A second start reuses them.
        ensure_up(&dir).expect("again");
        assert_eq!(std::fs::read(dir.join("up.pem")).expect("up.pem"), up);
        InternalTls::load(&dir, "worker").expect("a worker can join");
        // A role machine's directory (a CA certificate without its key) is never given a new CA.
        std::fs::remove_file(dir.join("ca.key")).expect("remove");
        std::fs::remove_file(dir.join("up.pem")).expect("remove");
        assert!(matches!(ensure_up(&dir), Err(TlsError::Read { .. })));
        assert_eq!(std::fs::read(dir.join("ca.pem")).expect("ca.pem"), ca);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
