//! `kindling serve` terminating TLS itself: TLS 1.2 and 1.3 work, HTTP-over-plain-TCP does not, and the
//! discovery document advertises https URLs.

use fhir::time::{ManualClock, SharedClock};
use kindling::{Application, ServerConfig, TlsFiles};
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;
use std::path::PathBuf;
use std::sync::Arc;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::rustls;

fn tls_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/tls")
}

async fn get_over_tls(addr: std::net::SocketAddr, version: &'static rustls::SupportedProtocolVersion, path: &str) -> String {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(tls_dir().join("ca.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_protocol_versions(&[version]).with_root_certificates(roots).with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut tls = connector.connect(rustls_pki_types::ServerName::try_from("localhost").unwrap(), tcp).await.unwrap();
    assert_eq!(tls.get_ref().1.protocol_version(), Some(version.version));
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    tls.read_to_string(&mut out).await.unwrap();
    out
}

#[tokio::test]
async fn serves_https_with_tls_1_2_and_1_3_only() {
    let dir = tempfile::tempdir().unwrap();
    let clock: SharedClock = Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()));
    let config = ServerConfig {
        listen: ([127, 0, 0, 1], 0).into(),
        public_url: None,
        data_dir: dir.path().to_path_buf(),
        writer_cache_mib: 8,
        open_sandbox: false,
        tls: Some(TlsFiles { cert: tls_dir().join("cert.pem"), key: tls_dir().join("key.pem") }),
        database_url: None,
        export_ttl_secs: None,
        export_faults: false,
        profiles_dir: None,
    };
    let app = Application::build(&config, clock).await.unwrap();
    let addr = app.addr;
    assert!(app.public_url.starts_with("https://"));
    tokio::spawn(app.run_until(std::future::pending()));
    for version in [&rustls::version::TLS12, &rustls::version::TLS13] {
        let reply = get_over_tls(addr, version, "/fhir/.well-known/smart-configuration").await;
        assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
        assert!(reply.contains("\"token_endpoint\":\"https://127.0.0.1:"), "discovery advertises https");
    }
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(b"GET /fhir/metadata HTTP/1.1\r\nHost: localhost\r\n\r\n").await.unwrap();
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read_to_end(&mut buf)).await;
    assert!(!String::from_utf8_lossy(&buf).starts_with("HTTP/1.1 200"));
    // A broken key is refused at start, with a clear message.
    let bad = ServerConfig { tls: Some(TlsFiles { cert: tls_dir().join("cert.pem"), key: tls_dir().join("missing.pem") }), ..config };
    let err = Application::build(&bad, Arc::new(ManualClock::new(time::OffsetDateTime::now_utc()))).await.err().unwrap().to_string();
    assert!(err.contains("private key"), "{err}");
}
