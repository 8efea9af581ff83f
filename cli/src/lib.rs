//! The `kindex` command-line client: argument parsing and dispatch.
//!
//! Both binaries, `kindex` and the kubectl plugin `kubectl-kindex`, call
//! [`run`]; only the name shown in help and the plugin note differ.

/// `print!`/`println!` that end the process quietly when stdout is closed
/// (`kindex search ... | head`) instead of panicking.
macro_rules! out {
    ($($t:tt)*) => { $crate::output::emit(&format!($($t)*)) };
}
macro_rules! outln {
    ($($t:tt)*) => { $crate::output::emit(&format!("{}\n", format_args!($($t)*))) };
}

pub mod commands;
pub mod filter;
pub mod input;
pub mod k8s;
pub mod output;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};

use crate::input::Format;
use crate::output::Output;

/// Where a node is looked for when neither `--addr` nor Kubernetes mode says.
pub const DEFAULT_ADDR: &str = "http://127.0.0.1:7070";

const ADDR_HELP: &str = "gRPC endpoint of a kindex node (repeatable, or comma-separated in KINDEX_ADDR) \
[default: http://127.0.0.1:7070]. `status` and `snapshot` query every address; `upsert` fails over \
to the next one on transient errors; other commands use the first. Overrides Kubernetes discovery";

const ADMIN_ADDR_HELP: &str = "Admin gRPC endpoint of a kindex node, for `status` and `snapshot` \
(repeatable, or comma-separated in KINDEX_ADMIN_ADDR) [default: each --addr's host with port 7072]. \
Nodes serve Admin on a port of their own, which the client Service does not expose";

const KUBE_HELP: &str = "Find the nodes through the kubeconfig (the default for `kubectl kindex`; \
implied by --context, --namespace and --kubeconfig): list the index's pods, pick the ready ones and \
reach each through an in-process port-forward to its gRPC port (its admin port for `status` and \
`snapshot`). --addr overrides it";

const KUBECTL_NOTE: &str = "As a kubectl plugin it reads your kubeconfig (KUBECONFIG or ~/.kube/config; \
--kubeconfig, --context and -n/--namespace as in kubectl), finds the VectorIndex named by --index \
(or the only one in the namespace), and port-forwards to its pods by itself: data commands use a \
ready pod (any pod coordinates every shard), `status` and `snapshot` every pod (on its admin port, \
7072, which the index's client Service does not expose), and `status` also shows the VectorIndex \
status. Needs RBAC to list pods, get vectorindexes and create pods/portforward. \
--addr skips discovery (e.g. with your own `kubectl port-forward svc/<index> 7070`).";

const NODES_NOTE: &str = "Nodes: --addr (default http://127.0.0.1:7070), or with --kube / as `kubectl kindex` the \
pods of a VectorIndex found through the kubeconfig. Every command but `inspect` prints a table or, \
with -o json, one JSON document; the exit code is non-zero on any error. See docs/cli.md.";

#[derive(Debug, Parser)]
#[command(
    name = "kindex",
    version,
    about = "Client for kindex, the Kubernetes-native sharded replicated vector index",
    long_about = "Client for kindex: bulk-load vectors with progress and retries, search, read and \
delete points, show node status, trigger snapshots and inspect a node's data directory offline.",
    after_long_help = NODES_NOTE
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    #[arg(
        long,
        global = true,
        env = "KINDEX_ADDR",
        value_delimiter = ',',
        help = ADDR_HELP
    )]
    pub addr: Vec<String>,
    #[arg(
        long,
        global = true,
        env = "KINDEX_ADMIN_ADDR",
        value_delimiter = ',',
        help = ADMIN_ADDR_HELP
    )]
    pub admin_addr: Vec<String>,
    /// API key for nodes that require one (sent as `authorization: Bearer <key>` on
    /// data-plane calls; the environment variable keeps it out of shell history and `ps`).
    #[arg(long, global = true, env = "KINDEX_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Data-plane calls (upsert, search, get, delete, count) over TLS, trusting the CA
    /// certificate(s) in this PEM file: for nodes started with `--client-tls-dir`. Every
    /// --addr is then dialled with TLS (`host:port` or `https://host:port`) and the node's
    /// certificate must name the host dialled. See docs/security.md.
    #[arg(long, global = true, env = "KINDEX_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Admin calls (`status`, `snapshot`) over peer mTLS, for nodes started with
    /// `--peer-tls-dir`: a directory with `tls.crt`, `tls.key` (a certificate of the index's
    /// CA) and `ca.crt`. See docs/security.md.
    #[arg(long, global = true, env = "KINDEX_PEER_TLS_DIR", value_name = "DIR")]
    pub peer_tls_dir: Option<PathBuf>,
    /// With `--peer-tls-dir`: the name the nodes' certificates carry (default: the host
    /// dialled).
    #[arg(long, global = true, env = "KINDEX_PEER_TLS_SERVER_NAME")]
    pub peer_tls_server_name: Option<String>,
    /// Index name; empty means the index the node serves (in Kubernetes mode:
    /// the VectorIndex name, empty meaning the only one in the namespace).
    #[arg(long, global = true, env = "KINDEX_INDEX", default_value = "")]
    pub index: String,
    #[arg(long, global = true, help = KUBE_HELP)]
    pub kube: bool,
    /// Kubernetes mode: the kubeconfig file (default: KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true, value_name = "PATH")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubernetes mode: the kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// Kubernetes mode: the namespace (default: the context's).
    #[arg(long, short = 'n', global = true)]
    pub namespace: Option<String>,
    /// Output format: `table` for people, `json` (one document on stdout) for scripts.
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Table)]
    pub output: Output,
    /// Per-request timeout in seconds.
    #[arg(long, global = true, default_value_t = 60)]
    pub timeout: u64,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show a node data directory offline: structural config and every snapshot.
    Inspect(InspectArgs),
    /// Show the Raft/index status of every node: one row per --addr, or per pod
    /// in Kubernetes mode (with the VectorIndex status above the table).
    Status,
    /// Bulk-load vectors from a .npy, .fvecs or .jsonl file.
    Upsert(UpsertArgs),
    /// Search the nearest neighbours of a vector.
    Search(SearchArgs),
    /// Read points by id.
    Get(GetArgs),
    /// Delete points by id.
    Delete(DeleteArgs),
    /// Count live vectors in the index.
    Count,
    /// Show the index's dimension, metric, shard count and limits.
    Info,
    /// Take a snapshot now on each node (each --addr, or each pod).
    Snapshot,
    /// Show and change the policies of each shard (quota; docs/policies.md).
    Policy(PolicyArgs),
}

#[derive(Debug, Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    pub command: PolicyCommand,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Every policy each node applied: newest version, content, counters, store checksum.
    List,
    /// One policy on each node.
    Get { name: String },
    /// The kept versions of a policy (the last 10) with their audit fields.
    History { name: String },
    /// Create or update a policy on every shard, e.g. --json '{"kind":"quota","maxVectors":1000}'.
    Set {
        name: String,
        /// The policy as JSON.
        #[arg(long, conflicts_with = "file")]
        json: Option<String>,
        /// A file holding the policy as JSON.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        change: PolicyChangeArgs,
    },
    /// Delete a policy on every shard (soft: `restore` brings a version back).
    Delete {
        name: String,
        #[command(flatten)]
        change: PolicyChangeArgs,
    },
    /// Make a kept version's content the newest version, on every shard.
    Restore {
        name: String,
        version: u64,
        #[command(flatten)]
        change: PolicyChangeArgs,
    },
}

#[derive(Debug, Clone, Args)]
pub struct PolicyChangeArgs {
    /// Apply only if the policy's newest version is this one (0: it must not exist yet).
    #[arg(long)]
    pub expected_version: Option<u64>,
    /// Recorded as who made the version (default: $USER).
    #[arg(
        long,
        env = "USER",
        hide_env_values = true,
        default_value = "kindex-cli"
    )]
    pub actor: String,
}

impl PolicyChangeArgs {
    pub fn request(
        &self,
        name: &str,
        change: kindex_proto::PolicyChange,
        policy_json: String,
        restore_version: u64,
    ) -> kindex_proto::PolicyWriteRequest {
        kindex_proto::PolicyWriteRequest {
            name: name.to_string(),
            change: change as i32,
            policy_json,
            restore_version,
            expected_version: self.expected_version,
            actor: self.actor.clone(),
            from_resource: false,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// The node's data directory (holds structural.json and snapshots/).
    pub data_dir: PathBuf,
    /// Fully load every snapshot, checking every section checksum and the
    /// content checksum (reads all data; may take a while).
    #[arg(long)]
    pub verify: bool,
}

#[derive(Debug, Args)]
pub struct UpsertArgs {
    /// Input file.
    #[arg(long)]
    pub file: PathBuf,
    /// File format; guessed from the extension when omitted.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
    /// Points per Upsert request (lowered to the node's limit if above it).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Id prefix for rows of .npy/.fvecs files: ids are `<prefix><row>`.
    #[arg(long, default_value = "")]
    pub id_prefix: String,
    /// First row to load (0-based).
    #[arg(long, default_value_t = 0, conflicts_with = "resume")]
    pub start_row: u64,
    /// Continue an interrupted load: find the first batch not yet stored
    /// (rows are assumed to have been loaded in order) and start there.
    #[arg(long)]
    pub resume: bool,
    /// Attempts per batch on transient errors (unavailable, connection
    /// refused, leader change, timeouts, backpressure) before giving up.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u32).range(1..))]
    pub attempts: u32,
    /// Longest time, in seconds, one batch may spend retrying before the load
    /// stops (with the row to resume from).
    #[arg(long, default_value_t = 120)]
    pub retry_timeout: u64,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Query vector as a JSON array, e.g. '[0.1, 0.2, 0.3, 0.4]'.
    #[arg(
        long,
        required_unless_present = "vector_file",
        conflicts_with = "vector_file"
    )]
    pub vector: Option<String>,
    /// Take the query from a row of a .npy/.fvecs/.jsonl file.
    #[arg(long)]
    pub vector_file: Option<PathBuf>,
    /// Row of --vector-file (0-based).
    #[arg(long, default_value_t = 0, requires = "vector_file")]
    pub row: u64,
    /// Format of --vector-file; guessed from the extension when omitted.
    #[arg(long, value_enum, requires = "vector_file")]
    pub format: Option<Format>,
    /// Number of neighbours.
    #[arg(short, default_value_t = 10)]
    pub k: u32,
    /// HNSW search beam width (default: the index's efSearch).
    #[arg(long)]
    pub ef: Option<u32>,
    /// int8 indexes: re-rank the best N × k graph candidates with the f32 vectors
    /// (1..=100; default: the index's runtime `rescore`). Ignored by an index without
    /// quantization.
    #[arg(long, value_name = "N")]
    pub rescore: Option<u32>,
    /// Payload filter, e.g. '{"must":[{"field":"lang","match":"en"},{"field":"year","range":{"gte":2020}}]}'.
    #[arg(long)]
    pub filter: Option<String>,
    #[arg(long)]
    pub with_payload: bool,
    #[arg(long)]
    pub with_vectors: bool,
    /// Read consistency (default: the server's).
    #[arg(long, value_enum)]
    pub consistency: Option<commands::Consistency>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
    #[arg(long)]
    pub with_vectors: bool,
    /// Leave payloads out.
    #[arg(long)]
    pub no_payload: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    #[arg(required = true)]
    pub ids: Vec<String>,
}

impl Global {
    /// Kubernetes discovery is used unless `--addr` (or KINDEX_ADDR) is given:
    /// always for `kubectl kindex`, and for `kindex` with --kube or any of the
    /// kubeconfig flags.
    pub fn use_kube(&self, flavor: Flavor) -> bool {
        self.addr.is_empty()
            && (flavor == Flavor::KubectlPlugin
                || self.kube
                || self.kubeconfig.is_some()
                || self.context.is_some()
                || self.namespace.is_some())
    }
}

/// Which binary is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Kindex,
    KubectlPlugin,
}

/// The clap command for `flavor` (also used by tests to check the help).
pub fn command(flavor: Flavor) -> clap::Command {
    let cmd = Cli::command();
    match flavor {
        Flavor::Kindex => cmd,
        Flavor::KubectlPlugin => cmd
            .name("kubectl-kindex")
            .bin_name("kubectl kindex")
            .after_help(KUBECTL_NOTE)
            .after_long_help(format!("{KUBECTL_NOTE}\n\n{NODES_NOTE}")),
    }
}

/// Entry point of both binaries.
pub fn run(flavor: Flavor) -> ExitCode {
    let matches = command(flavor).get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => e.exit(),
    };
    match dispatch(cli, flavor) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(cli: Cli, flavor: Flavor) -> anyhow::Result<ExitCode> {
    // `inspect` reads files only; everything else talks gRPC.
    if let Command::Inspect(a) = &cli.command {
        return commands::inspect::run(&commands::Ctx::new(&cli.global, k8s::Plane::Data)?, a);
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        // `status` and `snapshot` are Admin RPCs: every pod, on its admin port.
        let (want, plane) = match cli.command {
            Command::Status | Command::Snapshot | Command::Policy(_) => {
                (k8s::Want::Every, k8s::Plane::Admin)
            }
            _ => (k8s::Want::Ready, k8s::Plane::Data),
        };
        let ctx = if cli.global.use_kube(flavor) {
            commands::Ctx::from_kube(&cli.global, want, plane).await?
        } else {
            commands::Ctx::new(&cli.global, plane)?
        };
        match cli.command {
            Command::Inspect(_) => unreachable!("handled above"),
            Command::Status => commands::status::run(&ctx).await,
            Command::Upsert(a) => commands::upsert::run(&ctx, &a).await,
            Command::Search(a) => commands::search::run(&ctx, &a).await,
            Command::Get(a) => commands::points::get(&ctx, &a).await,
            Command::Delete(a) => commands::points::delete(&ctx, &a).await,
            Command::Count => commands::points::count(&ctx).await,
            Command::Info => commands::points::info(&ctx).await,
            Command::Snapshot => commands::snapshot::run(&ctx).await,
            Command::Policy(a) => commands::policy::run(&ctx, &a).await,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        command(Flavor::Kindex).debug_assert();
        command(Flavor::KubectlPlugin).debug_assert();
    }

    #[test]
    fn plugin_help_explains_kubeconfig_discovery() {
        let help = command(Flavor::KubectlPlugin)
            .render_long_help()
            .to_string();
        assert!(help.contains("reads your kubeconfig"), "{help}");
        assert!(help.contains("pods/portforward"), "{help}");
        assert!(help.contains("kubectl kindex"), "{help}");
        let help = command(Flavor::Kindex).render_long_help().to_string();
        for flag in [
            "--kube",
            "--context",
            "--namespace",
            "--output",
            "docs/cli.md",
        ] {
            assert!(help.contains(flag), "{flag}: {help}");
        }
        // Both output formats are described, not just listed.
        assert!(help.contains("- table:"), "{help}");
        assert!(help.contains("- json:"), "{help}");
        assert!(help.contains("One JSON document on stdout"), "{help}");
    }

    #[test]
    fn kubernetes_mode_unless_addr_is_given() {
        let g = |args: &[&str]| {
            let mut all = vec!["kindex"];
            all.extend_from_slice(args);
            all.push("count");
            Cli::try_parse_from(all).unwrap().global
        };
        assert!(!g(&[]).use_kube(Flavor::Kindex));
        assert!(g(&[]).use_kube(Flavor::KubectlPlugin));
        assert!(g(&["--kube"]).use_kube(Flavor::Kindex));
        assert!(g(&["-n", "prod"]).use_kube(Flavor::Kindex));
        assert!(g(&["--context", "kind"]).use_kube(Flavor::Kindex));
        assert!(!g(&["--addr", "x:1"]).use_kube(Flavor::KubectlPlugin));
        assert!(!g(&["--kube", "--addr", "x:1"]).use_kube(Flavor::Kindex));
        let ctx = commands::Ctx::new(&g(&[]), k8s::Plane::Data).unwrap();
        assert_eq!(ctx.addrs, [DEFAULT_ADDR]);
        // Admin commands go to the admin port: derived from --addr, or --admin-addr.
        let ctx = commands::Ctx::new(&g(&[]), k8s::Plane::Admin).unwrap();
        assert_eq!(ctx.addrs, ["http://127.0.0.1:7072"]);
        let ctx = commands::Ctx::new(&g(&["--addr", "a:1,http://b:2"]), k8s::Plane::Admin).unwrap();
        assert_eq!(ctx.addrs, ["http://a:7072", "http://b:7072"]);
        let ctx = commands::Ctx::new(
            &g(&["--addr", "a:1", "--admin-addr", "a:9"]),
            k8s::Plane::Admin,
        )
        .unwrap();
        assert_eq!(ctx.addrs, ["http://a:9"]);
        let ctx = commands::Ctx::new(
            &g(&["--addr", "a:1", "--admin-addr", "a:9"]),
            k8s::Plane::Data,
        )
        .unwrap();
        assert_eq!(ctx.addrs, ["http://a:1"]);
    }

    #[test]
    fn parses_repeated_addrs_and_search_args() {
        // Repeat --addr after the subcommand (clap lets a later occurrence of
        // a global flag on the subcommand replace earlier ones).
        let cli = Cli::try_parse_from([
            "kindex",
            "status",
            "--addr",
            "a:1",
            "--addr",
            "http://b:2",
            "-o",
            "json",
        ])
        .unwrap();
        assert_eq!(cli.global.addr, ["a:1", "http://b:2"]);
        assert_eq!(cli.global.output, Output::Json);
        assert!(
            Cli::try_parse_from(["kindex", "search"]).is_err(),
            "needs a vector"
        );
        assert!(
            Cli::try_parse_from([
                "kindex",
                "search",
                "--vector",
                "[1]",
                "--vector-file",
                "x.npy"
            ])
            .is_err()
        );
        assert!(
            Cli::try_parse_from(["kindex", "upsert", "--file", "x.npy", "--batch", "0"]).is_err()
        );
        assert!(
            Cli::try_parse_from([
                "kindex",
                "upsert",
                "--file",
                "x",
                "--resume",
                "--start-row",
                "3"
            ])
            .is_err()
        );
    }
}
