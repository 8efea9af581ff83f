//! `kubectl kindex` through its in-process port-forward, end to end against a
//! stand-in API server: a small HTTP server that answers the two reads the CLI
//! makes (the VectorIndex, the pod list) and speaks the API server's
//! `pods/portforward` WebSocket protocol (`v4.channel.k8s.io`: per port a data
//! channel and an error channel, each opened by a frame carrying the port),
//! relaying the data channel to a real `kindex-node`, on the port the CLI asked
//! for (data commands the gRPC port, `status` the admin port).
//!
//! This is the protocol as kube-rs speaks it, not a real kube-apiserver and
//! kubelet (the Kubernetes tier has no kubelet): it shows the CLI's side of the
//! forward — listener, per-connection streams, the gRPC client over them —
//! works, not that a given cluster forwards.
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

mod common;
#[path = "../../node/tests/procs/mod.rs"]
mod procs;

use std::path::Path;
use std::process::{Command, Output};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::{kindex, text, write_npy_dim};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};

const NS: &str = "team";
const INDEX: &str = "demo";
const POD: &str = "demo-s0-0";

/// A standalone node serving index `demo` on a loopback address of its own (default ports).
fn start_node(dir: &Path) -> procs::Proc {
    let node = procs::Standalone::new(4, "l2")
        .data_dir(dir.join("data"))
        .args(&["--index", INDEX])
        .env("RUST_LOG", "warn")
        .start();
    let addr = node.grpc_addr();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !kindex(&["--addr", &addr, "--index", INDEX, "info"])
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "node did not come up: {}",
            node.log_text()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    node
}

fn vector_index() -> Value {
    json!({
        "apiVersion": "kindex.dev/v1alpha1", "kind": "VectorIndex",
        "metadata": {"name": INDEX, "namespace": NS},
        "spec": {"dimension": 4, "metric": "l2", "shards": 1, "replicas": 1},
        "status": {"phase": "Ready", "ready": "1/1", "vectors": 7}
    })
}

fn pod_list() -> Value {
    json!({
        "apiVersion": "v1", "kind": "PodList", "metadata": {},
        "items": [{
            "metadata": {"name": POD, "namespace": NS, "labels": {
                "app.kubernetes.io/name": "kindex",
                "app.kubernetes.io/instance": INDEX,
                "kindex.dev/shard": "0"
            }},
            "spec": {"containers": [{"name": "node", "ports": [
                {"name": "grpc", "containerPort": 7070},
                {"name": "admin", "containerPort": 7072}
            ]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}
        }]
    })
}

/// Serves the stand-in API server until the test ends. `forwards` records the
/// port of every port-forward connection; each is relayed to that port of
/// `node_ip`.
async fn api_server(listener: TcpListener, node_ip: String, forwards: Arc<Mutex<Vec<u16>>>) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let (forwards, node_ip) = (forwards.clone(), node_ip.clone());
        tokio::spawn(async move {
            let line = request_line(&stream).await;
            if line.contains("/portforward") {
                // `.../portforward?ports=7070 HTTP/1.1`
                let port: u16 = line
                    .split("ports=")
                    .nth(1)
                    .and_then(|r| r.split([' ', '&']).next())
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(0);
                forwards.lock().unwrap().push(port);
                portforward(stream, &node_ip, port).await;
            } else {
                answer(stream, &line).await;
            }
        });
    }
}

/// The request line, without consuming it.
async fn request_line(stream: &TcpStream) -> String {
    let mut buf = vec![0u8; 8192];
    for _ in 0..100 {
        let n = stream.peek(&mut buf).await.unwrap();
        if let Some(end) = buf[..n].windows(2).position(|w| w == b"\r\n") {
            return String::from_utf8_lossy(&buf[..end]).into_owned();
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    String::new()
}

async fn answer(mut stream: TcpStream, line: &str) {
    // Read the whole head (the requests have no body).
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if stream.read(&mut byte).await.unwrap_or(0) == 0 {
            return;
        }
        head.push(byte[0]);
    }
    let path = line.split(' ').nth(1).unwrap_or("");
    let vi_path = format!("/apis/kindex.dev/v1alpha1/namespaces/{NS}/vectorindexes/{INDEX}");
    let pods_path = format!("/api/v1/namespaces/{NS}/pods?");
    let (code, body) = if path == vi_path {
        ("200 OK", vector_index())
    } else if path.starts_with(&pods_path) && path.contains("instance%3Ddemo") {
        ("200 OK", pod_list())
    } else if path.starts_with(&pods_path) {
        (
            "200 OK",
            json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
        )
    } else {
        (
            "404 Not Found",
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                   "message": format!("{path} not found"), "reason": "NotFound", "code": 404}),
        )
    };
    let body = body.to_string();
    let resp = format!(
        "HTTP/1.1 {code}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
}

/// The handshake answer names the subprotocol, as the API server does.
#[allow(clippy::result_large_err)] // the callback type is tungstenite's
fn channel_protocol(_: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    resp.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        "v4.channel.k8s.io".parse().unwrap(),
    );
    Ok(resp)
}

/// One `pods/portforward` connection for `port`: channel 0 carries data,
/// channel 1 errors; each starts with a frame holding the port.
async fn portforward(stream: TcpStream, node_ip: &str, port: u16) {
    let ws = tokio_tungstenite::accept_hdr_async(stream, channel_protocol)
        .await
        .unwrap();
    let (mut sink, mut source) = ws.split();
    let le = port.to_le_bytes();
    for ch in [0u8, 1] {
        sink.send(Message::binary(vec![ch, le[0], le[1]]))
            .await
            .unwrap();
    }
    let node = TcpStream::connect((node_ip, port)).await.unwrap();
    let (mut from_node, mut to_node) = node.into_split();
    let upstream = async move {
        while let Some(Ok(msg)) = source.next().await {
            match msg {
                Message::Binary(b) if b.len() > 1 && b[0] == 0 => {
                    let written = to_node.write_all(&b[1..]).await;
                    if written.is_err() {
                        break;
                    }
                }
                Message::Close(_) => break,
                _ => {}
            }
        }
        let _ = to_node.shutdown().await;
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = from_node.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            let mut frame = Vec::with_capacity(n + 1);
            frame.push(0);
            frame.extend_from_slice(&buf[..n]);
            if sink.send(Message::binary(frame)).await.is_err() {
                break;
            }
        }
        let _ = sink.close().await;
    };
    tokio::join!(upstream, downstream);
}

fn plugin(home: &Path, kubeconfig: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-kindex"))
        .args(args)
        .env("HOME", home)
        .env("KUBECONFIG", kubeconfig)
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KINDEX_ADDR")
        .env_remove("KINDEX_INDEX")
        .output()
        .unwrap()
}

#[test]
fn kubectl_kindex_reaches_the_pod_through_its_port_forward() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start_node(tmp.path());

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt.block_on(TcpListener::bind(("127.0.0.1", 0))).unwrap();
    let api_port = listener.local_addr().unwrap().port();
    let forwards = Arc::new(Mutex::new(Vec::new()));
    rt.spawn(api_server(listener, node.ip.clone(), forwards.clone()));

    let kc = tmp.path().join("kubeconfig");
    std::fs::write(
        &kc,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\n\
             clusters: [{{name: k, cluster: {{server: 'http://127.0.0.1:{api_port}'}}}}]\n\
             users: [{{name: u, user: {{token: t}}}}]\n\
             contexts: [{{name: c, context: {{cluster: k, user: u, namespace: {NS}}}}}]\n"
        ),
    )
    .unwrap();

    // A load and a read, both through the forward (the namespace comes from
    // the kubeconfig context).
    let npy = tmp.path().join("v.npy");
    let data: Vec<f32> = (0..300).flat_map(|i| [i as f32, 1.0, 2.0, 3.0]).collect();
    write_npy_dim(&npy, 4, data, 300);
    let o = plugin(
        tmp.path(),
        &kc,
        &[
            "--index",
            INDEX,
            "upsert",
            "--file",
            npy.to_str().unwrap(),
            "--batch",
            "50",
            "-o",
            "json",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let up: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(up["rows"], 300, "{up}");

    let o = plugin(tmp.path(), &kc, &["--index", INDEX, "count", "-o", "json"]);
    assert!(o.status.success(), "{}", text(&o));
    let count: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(count["count"], 300, "{count}");

    let data_forwards = forwards.lock().unwrap().len();
    assert!(
        forwards.lock().unwrap().iter().all(|p| *p == 7070),
        "data commands forward to the gRPC port: {forwards:?}"
    );
    let o = plugin(tmp.path(), &kc, &["--index", INDEX, "status"]);
    assert!(o.status.success(), "{}", text(&o));
    // `status` is an Admin RPC: forwarded to the pod's admin port (the data port
    // no longer answers it).
    assert!(
        forwards.lock().unwrap()[data_forwards..]
            .iter()
            .all(|p| *p == 7072),
        "status forwards to the admin port: {forwards:?}"
    );
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("VectorIndex team/demo: phase Ready, ready 1/1, 7 vectors"),
        "{out}"
    );
    assert!(
        out.contains("pod/demo-s0-0") && out.contains("leader"),
        "{out}"
    );

    // Each command opened its first forward before sending anything.
    assert!(forwards.lock().unwrap().len() >= 3, "{forwards:?}");

    // An index the stand-in does not know: the VectorIndex is missing and no
    // pod carries its label.
    let o = plugin(tmp.path(), &kc, &["--index", "other", "count"]);
    assert!(!o.status.success());
    assert!(
        text(&o).contains("VectorIndex \"other\" not found in namespace \"team\""),
        "{}",
        text(&o)
    );
}
