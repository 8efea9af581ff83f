//! `kindex-operator`: watches `VectorIndex` objects and reconciles them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use axum::Router;
use axum::routing::get;
use clap::{ArgAction, Parser};
use kindex_common::LogFormat;
use kindex_operator::controller::{self, Context, OperatorConfig};
use kindex_operator::events::Events;
use kindex_operator::metrics::Metrics;
use kindex_operator::observe::{AddressBook, ClusterDns, GrpcNodeClient};
use kindex_operator::preflight;
use kube_lease_manager::LeaseManagerBuilder;
use tokio::sync::watch;

#[derive(Debug, Parser)]
#[command(
    name = "kindex-operator",
    version,
    about = "Kubernetes operator of kindex vector indexes"
)]
struct Args {
    /// Kubeconfig file; default: $KUBECONFIG, ~/.kube/config, or the in-cluster config.
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// Namespace to watch; all namespaces when unset.
    #[arg(long, env = "KINDEX_WATCH_NAMESPACE")]
    namespace: Option<String>,
    /// Address of the HTTP server for /metrics, /healthz and /readyz.
    #[arg(long, env = "KINDEX_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    metrics_addr: SocketAddr,
    /// Run only while holding the Lease (`--leader-election=false` to disable).
    #[arg(long, env = "KINDEX_LEADER_ELECTION", default_value_t = true, action = ArgAction::Set)]
    leader_election: bool,
    /// Name of the leader-election Lease.
    #[arg(long, default_value = "kindex-operator")]
    lease_name: String,
    /// Namespace of the Lease; default: the operator's own namespace (in-cluster or
    /// kubeconfig context).
    #[arg(long, env = "KINDEX_LEASE_NAMESPACE")]
    lease_namespace: Option<String>,
    /// Lease holder identity; default: $POD_NAME, else a random string.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Node image when a VectorIndex sets no `spec.image`.
    #[arg(long, env = "KINDEX_NODE_IMAGE", default_value_t = kindex_operator::default_image())]
    node_image: String,
    /// A learner (or restarted pod) counts as caught up within this many log entries.
    #[arg(long, default_value_t = 1000)]
    max_lag: u64,
    /// A restarted or new member must be back and caught up within this time, else the
    /// shard is reported Degraded and a rollout pauses (e.g. `10m`).
    #[arg(long, default_value = "10m", value_parser = duration)]
    pod_ready_timeout: Duration,
    /// Timeout of each Admin gRPC call to a node.
    #[arg(long, default_value = "5s", value_parser = duration)]
    node_timeout: Duration,
    /// Periodic reconcile of a settled index.
    #[arg(long, default_value = "30s", value_parser = duration)]
    requeue: Duration,
    /// Reconcile again this soon after a membership or rollout step.
    #[arg(long, default_value = "3s", value_parser = duration)]
    step_requeue: Duration,
    /// Reconcile again this soon while waiting for pods or a learner to catch up.
    #[arg(long, default_value = "10s", value_parser = duration)]
    wait_requeue: Duration,
    /// The operator's namespace: each index's NetworkPolicy lets the operator's pods there
    /// reach the admin port (unset: only the index's own pods may).
    #[arg(long, env = "POD_NAMESPACE")]
    operator_namespace: Option<String>,
    /// Labels of the operator's pods, `k=v,k=v` (the chart sets its selector labels); empty:
    /// every pod of `--operator-namespace`.
    #[arg(long, env = "KINDEX_OPERATOR_POD_LABELS", default_value = "", value_parser = pod_labels)]
    operator_pod_labels: std::collections::BTreeMap<String, String>,
    /// Peer mTLS (`spec.peerTls`): life of an index's CA; rotated once a third is left.
    #[arg(long, default_value = "87600h", value_parser = duration)]
    peer_ca_lifetime: Duration,
    /// Peer mTLS: life of the pods' certificate; renewed once a third is left.
    #[arg(long, default_value = "2160h", value_parser = duration)]
    peer_cert_lifetime: Duration,
    /// Peer mTLS: how long both CAs stay trusted in each phase of a CA rotation; must exceed
    /// the time a Secret change takes to reach every pod (the kubelet's sync, about 1 min).
    #[arg(long, default_value = "10m", value_parser = duration)]
    peer_ca_overlap: Duration,
    /// Log lines as `text` (for people) or `json` (one object per line, for collectors).
    #[arg(long, env = "KINDEX_LOG_FORMAT", default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

fn pod_labels(s: &str) -> Result<std::collections::BTreeMap<String, String>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|kv| !kv.is_empty())
        .map(|kv| match kv.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_owned(), v.trim().to_owned())),
            _ => Err(format!("{kv:?} is not key=value")),
        })
        .collect()
}

fn duration(s: &str) -> Result<Duration, String> {
    kindex_crds::parse_duration(s).map_err(str::to_owned)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    if args.log_format == LogFormat::Json {
        tracing_subscriber::fmt()
            .json()
            .with_env_filter(filter)
            .init();
    } else {
        // Colour codes only on a terminal: a pod's log is a file (as the node does).
        use std::io::IsTerminal;
        tracing_subscriber::fmt()
            .with_ansi(std::io::stdout().is_terminal())
            .with_env_filter(filter)
            .init();
    }

    let client = client(args.kubeconfig.as_deref()).await?;
    preflight::check_crd_installed(&client, args.namespace.as_deref()).await?;
    let metrics = Metrics::new().context("registering metrics")?;
    let (stop_tx, stop_rx) = watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutdown requested");
        let _ = stop_tx.send(true);
    });
    let http = serve_http(args.metrics_addr, metrics.clone(), stop_rx.clone()).await?;

    let addresses: Arc<dyn AddressBook> = Arc::new(ClusterDns);
    let identities = kindex_operator::peer_tls::PeerIdentities::default();
    let nodes = Arc::new(GrpcNodeClient {
        addresses: addresses.clone(),
        timeout: args.node_timeout,
        identities: identities.clone(),
    });
    let mut ctx = Context::new(
        client.clone(),
        nodes,
        addresses,
        Events::new(client.clone(), args.identity.clone()),
        metrics,
        OperatorConfig {
            default_image: args.node_image.clone(),
            max_lag: args.max_lag,
            pod_ready_timeout: args.pod_ready_timeout,
            requeue: args.requeue,
            step_requeue: args.step_requeue,
            wait_requeue: args.wait_requeue,
            operator_peer: kindex_operator::build::OperatorPeer {
                namespace: args.operator_namespace.clone(),
                pod_labels: args.operator_pod_labels.clone(),
            },
            peer_lifetimes: kindex_operator::peer_tls::Lifetimes {
                ca: args.peer_ca_lifetime,
                cert: args.peer_cert_lifetime,
                overlap: args.peer_ca_overlap,
            },
            ..OperatorConfig::default()
        },
    );
    ctx.identities = identities;
    let ctx = Arc::new(ctx);

    let result = if args.leader_election {
        run_as_leader(&args, client, ctx, stop_rx).await
    } else {
        controller::run(ctx, args.namespace.clone(), stopped(stop_rx)).await;
        Ok(())
    };
    http.abort();
    tracing::info!("stopped");
    result
}

/// `--kubeconfig`, else kube's inference ($KUBECONFIG, ~/.kube/config, in-cluster).
async fn client(path: Option<&std::path::Path>) -> anyhow::Result<kube::Client> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("loading kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no Kubernetes configuration (in-cluster, $KUBECONFIG or ~/.kube/config)")?,
    };
    kube::Client::try_from(config).context("building the Kubernetes client")
}

/// Wait for the Lease, run the controller while holding it. Losing the Lease ends the
/// process with an error, so the pod restarts and competes again from a clean state.
async fn run_as_leader(
    args: &Args,
    client: kube::Client,
    ctx: Arc<Context>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let lease_ns = args
        .lease_namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let mut builder = LeaseManagerBuilder::new(client, &args.lease_name)
        .with_namespace(&lease_ns)
        .with_duration(15)
        .with_grace(5);
    if let Some(id) = &args.identity {
        builder = builder.with_identity(id);
    }
    let manager = builder
        .build()
        .await
        .context("creating the leader-election Lease")?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(lease = %args.lease_name, namespace = %lease_ns, "waiting for leadership");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            changed = leader.changed() => changed.context("lease manager stopped")?,
            _ = stop.changed() => {
                drop(leader);
                let _ = task.await;
                return Ok(());
            }
        }
    }
    tracing::info!("leading; starting the controller");

    let mut lost = leader.clone();
    let (lost_tx, lost_rx) = watch::channel(false);
    let watch_lease = tokio::spawn(async move {
        while lost.changed().await.is_ok() {
            if !*lost.borrow_and_update() {
                break;
            }
        }
        let _ = lost_tx.send(true);
    });
    let shutdown = {
        let (a, b) = (stopped(stop.clone()), stopped(lost_rx.clone()));
        async move {
            tokio::select! { _ = a => {}, _ = b => {} }
        }
    };
    controller::run(ctx, args.namespace.clone(), shutdown).await;
    watch_lease.abort();
    let lost_lease = *lost_rx.borrow() && !*stop.borrow();
    // Closing the channel makes the manager release the Lease.
    drop(leader);
    match task.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the Lease"),
        Err(e) => tracing::warn!(error = %e, "lease task"),
        Ok(Ok(_)) => {}
    }
    if lost_lease {
        anyhow::bail!("lost the leader-election Lease");
    }
    Ok(())
}

/// Resolves when the flag turns true (or its sender is gone).
async fn stopped(mut rx: watch::Receiver<bool>) {
    let _ = rx.wait_for(|stop| *stop).await;
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! { _ = ctrl_c => {}, _ = term.recv() => {} }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

async fn serve_http(
    addr: SocketAddr,
    metrics: Metrics,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<tokio::task::JoinHandle<()>> {
    let app = Router::new()
        .route("/metrics", get(move || async move { metrics.render() }))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(|| async { "ok" }));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "serving /metrics and /healthz");
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(stopped(stop))
            .await
        {
            tracing::error!(error = %e, "HTTP server");
        }
    }))
}
