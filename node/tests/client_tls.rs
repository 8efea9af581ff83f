#![allow(clippy::unwrap_used)]
//! Client TLS (issue 18) on real `kindex-node` processes: with `--client-tls-dir` the gRPC
//! client port and the HTTP port serve TLS only (no client certificate asked for), API keys
//! are still enforced over it, the internal-call metadata is still refused on the client port,
//! and a certificate rotated on disk is served to new handshakes without a restart. See
//! node/src/tls.

mod procs;

use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kindex_node::tls::ClientConfig;
use kindex_node::tls::issue::{Ca, Issued, Validity, write_dir};
use kindex_proto as pb;
use pb::points_client::PointsClient;
use procs::{Proc, Standalone, http_get, wait_for, with_timeout};
use rustls::pki_types::ServerName;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tonic::Code;
use tonic::transport::Channel;

const DAY: Duration = Duration::from_secs(86_400);
const RW: &str = "rw-key-0123456789abcdef";
const RO: &str = "ro-key-0123456789abcdef";

/// A server certificate of `ca` for the node's loopback address (an IP SAN: the clients
/// check the host they dial).
fn server_cert(ca: &Ca, ip: &str) -> Issued {
    ca.issue(&[ip.to_string()], Validity::from_now(DAY))
        .unwrap()
}

/// Writes `tls.crt` and `tls.key` only (client TLS needs no `ca.crt`), key first, each by
/// rename, as a Secret volume update does.
fn write_pair(dir: &Path, cert: &Issued) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, text) in [("tls.key", &cert.key_pem), ("tls.crt", &cert.cert_pem)] {
        let tmp = dir.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, dir.join(name)).unwrap();
    }
}

/// A PEM file holding `ca`'s certificate; the client config trusting only it.
fn trusting(dir: &Path, name: &str, ca: &Ca) -> Arc<ClientConfig> {
    let path: PathBuf = dir.join(name);
    std::fs::write(&path, ca.cert_pem()).unwrap();
    kindex_node::tls::client_config_trusting(&path).unwrap()
}

/// The node's `Points` over TLS with `config`.
fn points(node: &Proc, config: &Arc<ClientConfig>) -> PointsClient<Channel> {
    let ch = tonic::transport::Endpoint::from_shared(node.grpc_url())
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(10))
        .connect_with_connector_lazy(kindex_node::tls::Connector::with_config(
            config.clone(),
            None,
        ));
    PointsClient::new(ch)
}

fn req<T>(msg: T, key: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    if let Some(k) = key {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {k}").parse().unwrap());
    }
    r
}

fn upsert(id: &str) -> pb::UpsertRequest {
    pb::UpsertRequest {
        index: String::new(),
        points: vec![pb::Point {
            id: id.to_string(),
            vector: vec![1.0, 2.0, 3.0, 4.0],
            payload_json: None,
        }],
    }
}

fn search() -> pb::SearchRequest {
    pb::SearchRequest {
        vector: vec![1.0, 2.0, 3.0, 4.0],
        k: 1,
        ..Default::default()
    }
}

/// An HTTPS request over TLS with `config` (offering `alpn`): the status, the body and the
/// protocol the server chose; Err with the TLS error when the handshake fails.
async fn https(
    addr: &str,
    config: &Arc<ClientConfig>,
    alpn: &[&[u8]],
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&str>,
) -> Result<(u16, String, Option<Vec<u8>>), String> {
    let mut c = (**config).clone();
    c.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let ip = addr.rsplit_once(':').unwrap().0.to_string();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(c))
        .connect(ServerName::try_from(ip).unwrap(), tcp)
        .await
        .map_err(|e| e.to_string())?;
    let alpn = tls.get_ref().1.alpn_protocol().map(<[u8]>::to_vec);
    if alpn.as_deref() == Some(b"h2") {
        // Negotiated only: the caller checks the choice, not an HTTP/2 exchange.
        return Ok((0, String::new(), alpn));
    }
    let mut r = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    if let Some(k) = key {
        r.push_str(&format!("Authorization: Bearer {k}\r\n"));
    }
    if let Some(b) = body {
        r.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            b.len()
        ));
    }
    r.push_str("\r\n");
    r.push_str(body.unwrap_or_default());
    tls.write_all(r.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    // A server may close without close_notify after an HTTP/1.0 reply: keep what was read.
    let _ = tls.read_to_end(&mut out).await;
    let out = String::from_utf8_lossy(&out).to_string();
    let code = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no HTTP reply: {out:?}"))?;
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
    Ok((code, body, alpn))
}

async fn https_get(
    node: &Proc,
    config: &Arc<ClientConfig>,
    path: &str,
) -> Result<(u16, String), String> {
    https(&node.http, config, &[b"http/1.1"], "GET", path, None, None)
        .await
        .map(|(c, b, _)| (c, b))
}

fn metric(body: &str, name: &str) -> f64 {
    body.lines()
        .find(|l| l.split_whitespace().next() == Some(name))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in /metrics"))
}

/// Starts a standalone node with `--client-tls-dir` (and `extra`); waits until `GET /readyz`
/// answers 200 over TLS to a client trusting `trust`. The node's loopback address is known only
/// once it starts, so it starts with a certificate for another name and the test then writes
/// one for its address, which the reload serves within 2 s. The new pair is written only once
/// the node listens (it loads the files before binding): written earlier, the node could read
/// the new key beside the old certificate and refuse to start (CI saw that once).
async fn start_with_tls(
    tmp: &Path,
    ca: &Ca,
    extra: &[String],
    trust: &Arc<ClientConfig>,
) -> (Proc, PathBuf) {
    let tls_dir = tmp.join("client-tls");
    write_pair(&tls_dir, &server_cert(ca, "placeholder.invalid"));
    let mut args = vec![
        "--client-tls-dir".to_string(),
        tls_dir.to_str().unwrap().to_string(),
    ];
    args.extend_from_slice(extra);
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    let node = Standalone::new(4, "l2")
        .data_dir(tmp.join("data"))
        .args(&argv)
        .start();
    wait_for(
        "the HTTPS port to listen",
        Duration::from_secs(60),
        || async {
            tokio::net::TcpStream::connect(&node.http)
                .await
                .ok()
                .map(|_| ())
        },
    )
    .await;
    write_pair(&tls_dir, &server_cert(ca, &node.ip));
    wait_for("readyz over TLS", Duration::from_secs(60), || async {
        match https_get(&node, trust, "/readyz").await {
            Ok((200, _)) => Some(()),
            _ => None,
        }
    })
    .await;
    (node, tls_dir)
}

#[tokio::test(flavor = "multi_thread")]
async fn client_ports_serve_tls_only_and_keys_are_still_checked() {
    with_timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::generate("client CA", Validity::from_now(DAY)).unwrap();
        let peer_ca = Ca::generate("peer CA", Validity::from_now(DAY)).unwrap();
        let trust = trusting(tmp.path(), "ca.pem", &ca);
        std::fs::write(tmp.path().join("rw"), RW).unwrap();
        std::fs::write(tmp.path().join("ro"), RO).unwrap();
        // Peer mTLS too: the client port must still refuse the internal-call metadata.
        let peer_dir = tmp.path().join("peer-tls");
        write_dir(
            &peer_dir,
            &peer_ca
                .issue(&["peers.test".into()], Validity::from_now(DAY))
                .unwrap(),
            peer_ca.cert_pem(),
        )
        .unwrap();
        let extra = vec![
            "--api-keys-file".to_string(),
            tmp.path().join("rw").to_str().unwrap().into(),
            "--read-only-api-keys-file".into(),
            tmp.path().join("ro").to_str().unwrap().into(),
            "--peer-tls-dir".into(),
            peer_dir.to_str().unwrap().into(),
        ];
        let (node, _dir) = start_with_tls(tmp.path(), &ca, &extra, &trust).await;

        // gRPC over TLS: keys enforced as in plaintext.
        let mut p = points(&node, &trust);
        let s = p.upsert(req(upsert("a"), None)).await.unwrap_err();
        assert_eq!(s.code(), Code::Unauthenticated, "{s:?}");
        let s = p.upsert(req(upsert("a"), Some(RO))).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        p.upsert(req(upsert("a"), Some(RW))).await.unwrap();
        let hits = p
            .search(req(search(), Some(RO)))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(hits.hits.first().map(|h| h.id.as_str()), Some("a"));

        // The internal-call metadata is still refused on the client port.
        let mut fwd = req(upsert("b"), Some(RW));
        fwd.metadata_mut()
            .insert("kindex-forwarded", "9".parse().unwrap());
        let s = p.upsert(fwd).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

        let (_, m) = https_get(&node, &trust, "/metrics").await.unwrap();
        let failures = metric(&m, "kindex_client_tls_handshake_failures_total");

        // A plaintext gRPC client gets no answer.
        let s = PointsClient::new(node.channel())
            .search(req(search(), Some(RO)))
            .await
            .unwrap_err();
        assert_ne!(s.code(), Code::Ok);
        assert!(
            matches!(
                s.code(),
                Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled
            ),
            "{s:?}"
        );

        // HTTPS: probes open, /v1 behind the keys.
        assert_eq!(https_get(&node, &trust, "/healthz").await.unwrap().0, 200);
        let search_body = r#"{"vector": [1, 2, 3, 4], "k": 1}"#;
        let path = "/v1/indexes/default/search";
        let (code, body, _) = https(
            &node.http,
            &trust,
            &[b"http/1.1"],
            "POST",
            path,
            None,
            Some(search_body),
        )
        .await
        .unwrap();
        assert_eq!(code, 401, "{body}");
        let (code, body, _) = https(
            &node.http,
            &trust,
            &[b"http/1.1"],
            "POST",
            path,
            Some(RO),
            Some(search_body),
        )
        .await
        .unwrap();
        assert_eq!(code, 200, "{body}");
        assert!(body.contains(r#""id":"a""#), "{body}");

        // ALPN: the HTTP port prefers h2 when offered and speaks http/1.1 (above); the gRPC
        // port speaks h2 only.
        let (_, _, alpn) = https(
            &node.http,
            &trust,
            &[b"h2", b"http/1.1"],
            "GET",
            "/readyz",
            None,
            None,
        )
        .await
        .unwrap();
        assert_eq!(alpn.as_deref(), Some(&b"h2"[..]));
        let e = https(
            &node.grpc_addr(),
            &trust,
            &[b"http/1.1"],
            "GET",
            "/",
            None,
            None,
        )
        .await
        .unwrap_err();
        assert!(
            e.to_lowercase().contains("alpn") || e.contains("NoApplicationProtocol"),
            "{e}"
        );

        // Plain HTTP gets no reply (probes need `scheme: HTTPS`).
        assert_eq!(http_get(&node.http, "/readyz").map(|r| r.0), None);

        // A client not trusting the node's CA refuses it.
        let other = Ca::generate("other CA", Validity::from_now(DAY)).unwrap();
        let untrusting = trusting(tmp.path(), "other.pem", &other);
        let e = https_get(&node, &untrusting, "/readyz").await.unwrap_err();
        assert!(
            e.contains("UnknownIssuer") || e.contains("invalid peer certificate"),
            "{e}"
        );

        // The refused handshakes (plaintext gRPC and HTTP, the other CA) are counted.
        let (_, m) = https_get(&node, &trust, "/metrics").await.unwrap();
        assert!(
            metric(&m, "kindex_client_tls_handshake_failures_total") >= failures + 3.0,
            "{m}"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_rotated_client_certificate_is_served_without_a_restart() {
    with_timeout(Duration::from_secs(120), async {
        let tmp = tempfile::tempdir().unwrap();
        let old = Ca::generate("old client CA", Validity::from_now(DAY)).unwrap();
        let new = Ca::generate("new client CA", Validity::from_now(DAY)).unwrap();
        let trust_old = trusting(tmp.path(), "old.pem", &old);
        let trust_new = trusting(tmp.path(), "new.pem", &new);
        let (node, dir) = start_with_tls(tmp.path(), &old, &[], &trust_old).await;
        let pid = node.pid();
        points(&node, &trust_old)
            .upsert(req(upsert("a"), None))
            .await
            .unwrap();
        assert!(
            https_get(&node, &trust_new, "/readyz").await.is_err(),
            "the new CA is not trusted for the old certificate"
        );
        let (_, m) = https_get(&node, &trust_old, "/metrics").await.unwrap();
        let reloads = metric(&m, "kindex_client_tls_reloads_total");

        // A half-written rotation (the new certificate, the old key) is not taken.
        let cert = server_cert(&new, &node.ip);
        std::fs::write(dir.join("tls.crt"), &cert.cert_pem).unwrap();
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(
            https_get(&node, &trust_old, "/readyz").await.unwrap().0,
            200
        );

        // The matching key: new handshakes (gRPC and HTTPS) present the new certificate.
        write_pair(&dir, &cert);
        wait_for(
            "the new certificate on gRPC",
            Duration::from_secs(10),
            || async {
                points(&node, &trust_new)
                    .search(req(search(), None))
                    .await
                    .ok()
                    .map(|_| ())
            },
        )
        .await;
        let (code, _) = https_get(&node, &trust_new, "/readyz").await.unwrap();
        assert_eq!(code, 200);
        assert!(https_get(&node, &trust_old, "/readyz").await.is_err());
        let s = points(&node, &trust_old)
            .search(req(search(), None))
            .await
            .unwrap_err();
        assert_eq!(s.code(), Code::Unavailable, "{s:?}");
        let (_, m) = https_get(&node, &trust_new, "/metrics").await.unwrap();
        assert!(
            metric(&m, "kindex_client_tls_reloads_total") > reloads,
            "{m}"
        );
        assert_eq!(node.pid(), pid, "no restart");
    })
    .await;
}
