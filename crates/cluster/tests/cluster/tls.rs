//! Mutual TLS between roles (`turnpike_wire::tls`) against a real shard's RPC server on a
//! loopback port: a client without a certificate, or with one from another CA, is refused at
//! the handshake; a client whose certificate names the wrong role is refused each RPC with
//! `PermissionDenied` naming the roles allowed and its own; the right role is served; and a
//! gateway dialling a server whose certificate names another role refuses it.

use std::net::SocketAddr;
use std::path::Path;

use tokio::net::TcpListener;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint};
use turnpike_policy::ClassSet;
use turnpike_scheduler::shard::{ShardConfig, ShardService};
use turnpike_wire::directory::Directory;
use turnpike_wire::proto::shard_client::ShardClient;
use turnpike_wire::proto::{Empty, WorkerInfo};
use turnpike_wire::rpc;
use turnpike_wire::tls::{self, InternalTls, Role};

use crate::common::serial;

/// A CA in `dir` and one certificate per role, named after it.
fn certificates(dir: &Path) {
    tls::init_ca(dir).expect("a CA");
    for role in Role::ALL {
        tls::issue(dir, &[role], role.as_str()).expect("a certificate");
    }
}

/// A shard serving its RPCs with the shard certificate in `dir`; its address.
async fn start_shard(dir: &Path) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a loopback port");
    let address = listener.local_addr().expect("a bound address");
    let identity = InternalTls::load(dir, "shard").expect("the shard's certificate");
    let service = ShardService::start(
        ClassSet::default_four(),
        ShardConfig::default(),
        Directory::rpc_only(),
    );
    let router = rpc::server_with(Some(&identity)).add_service(service.into_server());
    rpc::spawn_server(router, listener, std::future::pending(), "shard 0".into());
    address
}

fn client(address: SocketAddr, dir: &Path, name: &str) -> ShardClient<tonic::transport::Channel> {
    let identity = InternalTls::load(dir, name).expect("a certificate");
    rpc::shard_client_with(address, Some(&identity))
}

/// A call refused before it reached the server (by the TLS handshake): its error's text.
///
/// The status varies with who notices first: with TLS 1.3 the client finishes its side of the
/// handshake before the server has checked the client's certificate, so a refused client
/// certificate shows on the first request as the server's alert, a broken pipe or a closed
/// connection; a refused server certificate fails the connect; plain text to a TLS port is an
/// HTTP/2 protocol error. What they share: the failure comes from the transport, not from a
/// served RPC (which would have answered, or been refused `PermissionDenied`).
fn refused_at_handshake<T: std::fmt::Debug>(result: Result<T, tonic::Status>) -> String {
    let refused = result.expect_err("refused");
    let text = format!("{refused:?}");
    let from_transport = std::error::Error::source(&refused)
        .is_some_and(|source| source.is::<tonic::transport::Error>());
    assert!(from_transport, "{text}");
    assert_ne!(refused.code(), tonic::Code::PermissionDenied, "{text}");
    text
}

fn worker_info() -> WorkerInfo {
    WorkerInfo {
        address: "https://127.0.0.1:1".into(),
        ..WorkerInfo::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_rpc_needs_a_certificate_naming_a_role_allowed_it() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let shard = start_shard(dir.path()).await;

    // The right roles are served: a worker reads the idle list's length.
    let mut worker = client(shard, dir.path(), "worker");
    worker
        .idle_len(Empty {})
        .await
        .expect("a worker may read idle lengths");

    // A gateway may not register or touch idle lists; a worker may not invoke.
    let mut gateway = client(shard, dir.path(), "gateway");
    let refused = gateway.register(worker_info()).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert_eq!(
        refused.message(),
        "/turnpike.v1.Shard/Register is allowed to [worker]; the caller's certificate names [gateway]"
    );
    let refused = gateway.idle_len(Empty {}).await.expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let refused = worker
        .invoke(tokio_stream::empty::<turnpike_wire::proto::InvocationFrame>())
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("allowed to [gateway]")
            && refused.message().contains("names [worker]"),
        "{refused:?}"
    );
    // A shard's certificate opens no shard RPC either.
    let refused = client(shard, dir.path(), "shard")
        .idle_len(Empty {})
        .await
        .expect_err("refused");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_cluster_certificate_is_refused_at_the_handshake() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    let shard = start_shard(dir.path()).await;
    let ca = Certificate::from_pem(std::fs::read(dir.path().join("ca.pem")).expect("ca.pem"));

    // No client certificate at all.
    let endpoint = Endpoint::from_shared(format!("https://{shard}"))
        .expect("a URI")
        .tls_config(
            ClientTlsConfig::new()
                .ca_certificate(ca)
                .domain_name(Role::Shard.dns_name()),
        )
        .expect("a TLS config");
    let mut anonymous = ShardClient::new(rpc::channel_to(endpoint, Role::Shard, None));
    let text = refused_at_handshake(anonymous.idle_len(Empty {}).await);
    // The server's alert says why, unless the client's write lost the race with the close.
    assert!(
        ["CertificateRequired", "broken pipe", "connection closed"]
            .iter()
            .any(|why| text.contains(why)),
        "{text}"
    );

    // A worker certificate from another cluster's CA.
    let other = tempfile::tempdir().expect("temp dir");
    certificates(other.path());
    refused_at_handshake(
        client(shard, other.path(), "worker")
            .idle_len(Empty {})
            .await,
    );

    // Plain text to a TLS port.
    let mut plain = rpc::shard_client_with(shard, None);
    refused_at_handshake(plain.idle_len(Empty {}).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gateway_refuses_a_server_whose_certificate_names_another_role() {
    let _serial = serial().await;
    let dir = tempfile::tempdir().expect("temp dir");
    certificates(dir.path());
    // A "shard" that presents a worker's certificate.
    let impostor = tempfile::tempdir().expect("temp dir");
    for file in ["ca.pem", "worker.pem", "worker.key"] {
        let name = file.replace("worker", "shard");
        std::fs::copy(dir.path().join(file), impostor.path().join(name)).expect("copy");
    }
    let shard = start_shard(impostor.path()).await;
    let text = refused_at_handshake(
        client(shard, dir.path(), "gateway")
            .idle_len(Empty {})
            .await,
    );
    assert!(text.contains("NotValidForName"), "{text}");
}
