//! The in-process port-forward: a `127.0.0.1` listener whose connections each go
//! through a new `pods/portforward` stream to the pod.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use tokio::io::DuplexStream;
use tokio::net::TcpListener;

use super::{KubeError, api_error};

pub(super) type Opened = (kube::api::Portforwarder, DuplexStream);

/// Opens one port-forward stream to `pod:port`.
pub(super) async fn open(
    pods: &Api<Pod>,
    pod: &str,
    port: u16,
    namespace: &str,
    url: &str,
) -> Result<Opened, KubeError> {
    let mut pf = pods.portforward(pod, &[port]).await.map_err(|e| {
        match api_error(e, "create", "pods/portforward", namespace, url) {
            KubeError::Api { message, .. } => KubeError::PortForward {
                pod: pod.into(),
                port,
                message,
            },
            other => other,
        }
    })?;
    let stream = pf.take_stream(port).ok_or_else(|| KubeError::PortForward {
        pod: pod.into(),
        port,
        message: "no stream for the port".into(),
    })?;
    // The API server reports a failure to reach the container (e.g. nothing
    // listens on the port) on the error channel.
    if let Some(err) = pf.take_error(port) {
        let pod = pod.to_string();
        tokio::spawn(async move {
            if let Some(msg) = err.await {
                eprintln!("warning: port-forward to pod/{pod} port {port}: {msg}");
            }
        });
    }
    Ok((pf, stream))
}

/// Listens on `127.0.0.1:0` and forwards each accepted connection through a
/// new port-forward stream (the first one may already be open).
pub(super) async fn serve(
    pods: Api<Pod>,
    pod: String,
    port: u16,
    namespace: String,
    url: String,
    first: Option<Opened>,
) -> Result<SocketAddr, KubeError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .map_err(KubeError::Listen)?;
    let local = listener.local_addr().map_err(KubeError::Listen)?;
    let warned = Arc::new(AtomicBool::new(false));
    let mut first = first;
    tokio::spawn(async move {
        loop {
            let Ok((mut tcp, _)) = listener.accept().await else {
                // e.g. out of file descriptors: do not spin.
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let pre = first.take();
            let (pods, pod, namespace, url, warned) = (
                pods.clone(),
                pod.clone(),
                namespace.clone(),
                url.clone(),
                warned.clone(),
            );
            tokio::spawn(async move {
                let opened = match pre {
                    Some(o) => o,
                    None => match open(&pods, &pod, port, &namespace, &url).await {
                        Ok(o) => o,
                        Err(e) => {
                            if !warned.swap(true, Ordering::Relaxed) {
                                eprintln!("warning: {e}");
                            }
                            return;
                        }
                    },
                };
                let (pf, mut upstream) = opened;
                let _ = tokio::io::copy_bidirectional(&mut tcp, &mut upstream).await;
                drop(upstream);
                pf.abort();
            });
        }
    });
    Ok(local)
}
