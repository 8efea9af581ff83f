//! Peer mTLS (issue 18) on real `kindex-node` processes: a 3-replica shard with
//! `--peer-tls-dir` forms its group and serves; its Raft and admin ports refuse calls with no
//! certificate, a self-signed one, an expired one or one of another CA; the client port
//! refuses the internal-call metadata; node certificates and then the CA are rotated while
//! writers run, without a restart and without losing an acknowledged write. See
//! node/src/tls.
#![allow(clippy::unwrap_used)]

mod procs;

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use kindex_node::tls::PeerTls;
use kindex_node::tls::issue::{Ca, Issued, Validity, write_dir};
use kindex_proto as pb;
use procs::history::{History, Write};
use procs::{Cluster, Opts, serial, wait_for, with_timeout};
use rand::{Rng, SeedableRng, rngs::StdRng};
use rustls::pki_types::pem::PemObject;
use tonic::Code;
use tonic::transport::Channel;

/// The name every node certificate carries and every node checks (`--peer-tls-server-name`).
const NAME: &str = "peers.kindex.test";
const DIM: u32 = 4;
const DAY: Duration = Duration::from_secs(86_400);

fn names() -> Vec<String> {
    vec![NAME.to_string()]
}

fn node_cert(ca: &Ca) -> Issued {
    ca.issue(&names(), Validity::from_now(DAY)).unwrap()
}

fn expired_cert(ca: &Ca) -> Issued {
    let now = std::time::SystemTime::now();
    ca.issue(
        &names(),
        Validity {
            not_before: now - 2 * DAY,
            not_after: now - DAY,
        },
    )
    .unwrap()
}

/// An identity of the test itself (a PeerTls loaded from a dir of its own).
fn identity(dir: &Path, cert: &Issued, ca_pem: &str) -> Arc<PeerTls> {
    write_dir(dir, cert, ca_pem).unwrap();
    Arc::new(PeerTls::load(dir, Some(NAME.into())).unwrap())
}

/// A 1-shard, 3-replica cluster with peer mTLS, every node's certificate from `ca`, the
/// harness calling admin ports as `harness`.
async fn start(ca: &Ca, harness: &Arc<PeerTls>) -> Cluster {
    let mut c = Cluster::start_with(
        1,
        3,
        DIM,
        Opts {
            peer_tls: true,
            started: Some(0),
            extra_args: vec!["--peer-tls-server-name".into(), NAME.into()],
            ..Opts::default()
        },
    );
    for id in 0..3 {
        write_dir(&c.tls_dir(0, id), &node_cert(ca), ca.cert_pem()).unwrap();
        c.node_mut(0, id).tls = Some(harness.clone());
        c.restart(0, id);
    }
    c.wait_leader(0, None).await;
    c
}

fn tls_channel(addr: &str, connector: kindex_node::tls::Connector) -> Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect_with_connector_lazy(connector)
}

/// Whether an Admin `Status` and a Raft call reach the services of `addr` (admin) and
/// `raft_addr` through `connector`. A refused handshake is a transport error; a Raft call that
/// got through is answered (here: its empty body refused as INVALID_ARGUMENT or the like).
async fn reaches(
    admin_addr: &str,
    raft_addr: &str,
    connector: kindex_node::tls::Connector,
) -> (bool, bool) {
    let admin = pb::admin_client::AdminClient::new(tls_channel(admin_addr, connector.clone()))
        .status(pb::StatusRequest {})
        .await;
    let raft = pb::raft_client::RaftClient::new(tls_channel(raft_addr, connector))
        .vote(pb::RaftRequest { data: vec![] })
        .await;
    let through = |code: Code, msg: &str| {
        !matches!(code, Code::Unavailable | Code::Unknown | Code::Cancelled)
            && !msg.contains("transport")
    };
    (
        admin.is_ok(),
        match raft {
            Ok(_) => true,
            Err(s) => through(s.code(), s.message()),
        },
    )
}

/// A GET over TLS with `config` (HTTP/1.0: the server closes after the answer).
async fn https_get(
    addr: &str,
    config: rustls::ClientConfig,
    path: &str,
) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = rustls::pki_types::ServerName::try_from(NAME).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let mut tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(std::io::Error::other)??;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: kindex\r\n\r\n").as_bytes())
        .await?;
    let mut out = Vec::new();
    // A peer that closes without close_notify ends in UnexpectedEof: keep what arrived.
    match tokio::time::timeout(Duration::from_secs(5), tls.read_to_end(&mut out)).await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
        Ok(Err(e)) => return Err(e),
        Err(e) => return Err(std::io::Error::other(e)),
    }
    let text = String::from_utf8_lossy(&out).to_string();
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not an HTTP answer: {text:?}")))?;
    Ok((code, text))
}

fn upsert(id: &str, v: u64) -> pb::UpsertRequest {
    pb::UpsertRequest {
        index: String::new(),
        points: vec![pb::Point {
            id: id.to_string(),
            vector: vec![v as f32, 1.0, 0.0, 0.5],
            payload_json: None,
        }],
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn peer_ports_refuse_calls_without_a_certificate_of_the_ca() {
    with_timeout(Duration::from_secs(180), async {
        let _serial = serial().await;
        let tmp = tempfile::tempdir().unwrap();
        let ca = Ca::generate("kindex test CA", Validity::from_now(DAY)).unwrap();
        let harness = identity(&tmp.path().join("harness"), &node_cert(&ca), ca.cert_pem());
        let c = start(&ca, &harness).await;
        let leader = c.wait_leader(0, None).await;

        // The group formed over mTLS; a write sent to a follower is forwarded to the leader
        // over the internal port (the follower's client port serves the client).
        let follower = (leader + 1) % 3;
        c.node(0, follower)
            .points()
            .upsert(upsert("a", 1))
            .await
            .expect("a write through a follower");
        for p in &c.nodes {
            wait_for(
                "every replica holds the write",
                Duration::from_secs(30),
                || async {
                    (p.replica_state(&["a".to_string()]).await["a"] == Some(1)).then_some(())
                },
            )
            .await;
        }

        // The client port refuses the metadata of calls between nodes.
        let p = c.node(0, follower);
        let mut get = tonic::Request::new(pb::GetRequest {
            index: String::new(),
            ids: vec!["a".into()],
            with_vectors: false,
            with_payload: false,
            consistency: pb::Consistency::Eventual as i32,
            token: None,
        });
        get.metadata_mut()
            .insert("kindex-shard-local", "0".parse().unwrap());
        let s = p.points().get(get).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");
        let mut fwd = tonic::Request::new(upsert("b", 2));
        fwd.metadata_mut()
            .insert("kindex-forwarded", "9".parse().unwrap());
        let s = p.points().upsert(fwd).await.unwrap_err();
        assert_eq!(s.code(), Code::PermissionDenied, "{s:?}");

        // Admin and Raft ports: only a certificate of the CA gets through.
        let (admin, raft) = (p.admin_addr(), format!("{}:{}", p.ip, p.raft));
        let good = kindex_node::tls::Connector::new(harness.clone());
        assert_eq!(
            reaches(&admin, &raft, good).await,
            (true, true),
            "a node certificate"
        );
        let other_ca = Ca::generate("another CA", Validity::from_now(DAY)).unwrap();
        let bad: Vec<(&str, Arc<PeerTls>)> = vec![
            (
                "self-signed",
                identity(
                    &tmp.path().join("self-signed"),
                    &Issued::self_signed(&names(), Validity::from_now(DAY)).unwrap(),
                    ca.cert_pem(),
                ),
            ),
            (
                "expired",
                identity(
                    &tmp.path().join("expired"),
                    &expired_cert(&ca),
                    ca.cert_pem(),
                ),
            ),
            (
                "another CA",
                identity(
                    &tmp.path().join("other"),
                    &node_cert(&other_ca),
                    ca.cert_pem(),
                ),
            ),
        ];
        for (what, id) in bad {
            let r = reaches(&admin, &raft, kindex_node::tls::Connector::new(id)).await;
            assert_eq!(r, (false, false), "{what}: admin and raft must refuse it");
        }
        // No certificate at all (the server's certificate is trusted).
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca.cert_pem().as_bytes()) {
            roots.add(cert.unwrap()).unwrap();
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"h2".to_vec()];
        let none =
            kindex_node::tls::Connector::with_config(Arc::new(config.clone()), Some(NAME.into()));
        assert_eq!(
            reaches(&admin, &raft, none).await,
            (false, false),
            "no certificate"
        );
        // The admin port's HTTP policy API (HTTP/1.1 over the same mTLS): answered with a
        // certificate of the CA, refused without one.
        let policies = "/v1/indexes/default/policies";
        let mut with_cert = (*harness.client_config()).clone();
        with_cert.alpn_protocols = vec![b"http/1.1".to_vec()];
        let (code, body) = https_get(&admin, with_cert, policies)
            .await
            .expect("the policy API over mTLS");
        assert!(code == 200 && body.contains("\"store\""), "{code} {body}");
        let mut bare = config;
        bare.alpn_protocols = vec![b"http/1.1".to_vec()];
        let r = https_get(&admin, bare, policies).await;
        assert!(
            !matches!(r, Ok((200, _))),
            "the policy API answered a client without a certificate: {r:?}"
        );
        // Plain TCP (no TLS).
        let plain = pb::admin_client::AdminClient::new(
            tonic::transport::Endpoint::from_shared(format!("http://{admin}"))
                .unwrap()
                .timeout(Duration::from_secs(5))
                .connect_lazy(),
        )
        .status(pb::StatusRequest {})
        .await;
        assert!(plain.is_err(), "plain TCP on the admin port: {plain:?}");
        let refused = p
            .metric("kindex_peer_tls_handshake_failures_total")
            .unwrap();
        assert!(refused >= 8.0, "handshake failures counted: {refused}");
    })
    .await;
}

/// Writers through random nodes' client ports (writes reach the leader over the internal
/// port) until `stop`.
fn spawn_writers(
    c: &Cluster,
    h: &Arc<History>,
    stop: &Arc<AtomicBool>,
) -> Vec<tokio::task::JoinHandle<()>> {
    let channels: Arc<Vec<Channel>> = Arc::new(c.nodes.iter().map(|p| p.channel()).collect());
    (0..3u64)
        .map(|w| {
            let (h, stop, channels) = (h.clone(), stop.clone(), channels.clone());
            tokio::spawn(async move {
                let mut rng = StdRng::seed_from_u64(0x7e57_0018 ^ w);
                while !stop.load(Ordering::Relaxed) {
                    let key = format!("key{}", rng.random_range(0..200));
                    let v = h.next_version();
                    let id = h.invoke(&key, Write::Upsert(v));
                    let ch = channels[rng.random_range(0..channels.len())].clone();
                    let mut req = tonic::Request::new(upsert(&key, v));
                    req.set_timeout(Duration::from_secs(5));
                    let ok = pb::points_client::PointsClient::new(ch)
                        .upsert(req)
                        .await
                        .is_ok();
                    if ok {
                        h.ack(id);
                    } else {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    tokio::time::sleep(Duration::from_millis(rng.random_range(0..5))).await;
                }
            })
        })
        .collect()
}

fn acked(h: &History) -> usize {
    h.ops().iter().filter(|o| o.complete.is_some()).count()
}

/// Rewrites every node's TLS dir (certificate from `issuer`, trusting `ca_pem`) and the
/// harness's, then waits until every node has loaded it and writes were acknowledged after.
async fn rotate(
    c: &Cluster,
    harness: &PeerTls,
    harness_dir: &Path,
    issuer: &Ca,
    ca_pem: &str,
    h: &History,
    step: &str,
) {
    let before: Vec<f64> = c
        .nodes
        .iter()
        .map(|p| p.metric("kindex_peer_tls_reloads_total").unwrap())
        .collect();
    for id in 0..3 {
        write_dir(&c.tls_dir(0, id), &node_cert(issuer), ca_pem).unwrap();
    }
    write_dir(harness_dir, &node_cert(issuer), ca_pem).unwrap();
    assert!(
        harness.reload().unwrap(),
        "{step}: the harness's own identity"
    );
    for (p, b) in c.nodes.iter().zip(before) {
        wait_for(
            &format!("{step}: node {} reloads", p.id),
            Duration::from_secs(20),
            || async { (p.metric("kindex_peer_tls_reloads_total").unwrap() > b).then_some(()) },
        )
        .await;
    }
    let n = acked(h);
    wait_for(
        &format!("{step}: writes acknowledged after it"),
        Duration::from_secs(30),
        || async { (acked(h) >= n + 50).then_some(()) },
    )
    .await;
    println!("{step}: done, {} writes acknowledged so far", acked(h));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn certificates_and_the_ca_rotate_under_writers_without_a_restart() {
    with_timeout(Duration::from_secs(300), async {
        let _serial = serial().await;
        let tmp = tempfile::tempdir().unwrap();
        let old = Ca::generate("kindex CA 1", Validity::from_now(DAY)).unwrap();
        let harness_dir = tmp.path().join("harness");
        let harness = identity(&harness_dir, &node_cert(&old), old.cert_pem());
        let c = start(&old, &harness).await;
        let pids: Vec<Option<u32>> = c.nodes.iter().map(|p| p.pid()).collect();
        let h = History::new();
        let stop = Arc::new(AtomicBool::new(false));
        let writers = spawn_writers(&c, &h, &stop);
        let started = Instant::now();

        // 1. New node certificates from the same CA.
        rotate(
            &c,
            &harness,
            &harness_dir,
            &old,
            old.cert_pem(),
            &h,
            "node certificates",
        )
        .await;
        // 2. The CA: trust both, move every certificate to the new CA, drop the old one.
        let new = Ca::generate("kindex CA 2", Validity::from_now(DAY)).unwrap();
        let both = format!("{}{}", old.cert_pem(), new.cert_pem());
        rotate(
            &c,
            &harness,
            &harness_dir,
            &old,
            &both,
            &h,
            "trust both CAs",
        )
        .await;
        rotate(
            &c,
            &harness,
            &harness_dir,
            &new,
            &both,
            &h,
            "certificates of the new CA",
        )
        .await;
        rotate(
            &c,
            &harness,
            &harness_dir,
            &new,
            new.cert_pem(),
            &h,
            "only the new CA",
        )
        .await;

        stop.store(true, Ordering::Relaxed);
        for w in writers {
            w.await.unwrap();
        }
        // Nobody restarted.
        let now: Vec<Option<u32>> = c.nodes.iter().map(|p| p.pid()).collect();
        assert_eq!(now, pids, "no node restarted");
        // The old CA is no longer trusted; the new one is.
        let p = c.node(0, 0);
        let (admin, raft) = (p.admin_addr(), format!("{}:{}", p.ip, p.raft));
        let old_id = identity(&tmp.path().join("old"), &node_cert(&old), &both);
        assert_eq!(
            reaches(&admin, &raft, kindex_node::tls::Connector::new(old_id)).await,
            (false, false),
            "a certificate of the dropped CA"
        );
        assert_eq!(
            reaches(
                &admin,
                &raft,
                kindex_node::tls::Connector::new(harness.clone())
            )
            .await,
            (true, true),
            "a certificate of the new CA"
        );

        // One last acknowledged write, then every acknowledged write on every replica.
        let v = h.next_version();
        let id = h.invoke("last", Write::Upsert(v));
        c.node(0, 0)
            .points()
            .upsert(upsert("last", v))
            .await
            .unwrap();
        h.ack(id);
        wait_for(
            "replicas at the same applied index",
            Duration::from_secs(60),
            || async {
                let mut applied = Vec::new();
                for p in &c.nodes {
                    applied.push(p.status().await?.applied.map(|l| l.index)?);
                }
                applied.windows(2).all(|w| w[0] == w[1]).then_some(())
            },
        )
        .await;
        let keys = h.keys();
        let mut states = Vec::new();
        for p in &c.nodes {
            states.push((format!("node {}", p.id), p.replica_state(&keys).await));
        }
        let report = h.check(&states);
        println!(
            "rotation under writers: {} acknowledged in {:?}; {report}",
            acked(&h),
            started.elapsed()
        );
        assert!(report.ok(), "{report}");
    })
    .await;
}
