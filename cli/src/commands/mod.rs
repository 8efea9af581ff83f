//! Subcommands and what they share: the connection context and gRPC error
//! reporting.

pub mod inspect;
pub mod points;
pub mod search;
pub mod snapshot;
pub mod status;
pub mod upsert;

use std::time::Duration;

use anyhow::Context;
use kindex_proto as pb;
use kindex_proto::admin_client::AdminClient;
use kindex_proto::points_client::PointsClient;
use tonic::transport::{Channel, Endpoint};

use crate::Global;
use crate::output::Output;

/// Generous: search results with vectors and bulk batches can be large.
const MAX_MESSAGE: usize = 256 << 20;

pub struct Ctx {
    pub addrs: Vec<String>,
    pub index: String,
    pub output: Output,
    pub timeout: Duration,
}

impl Ctx {
    pub fn new(g: Global) -> anyhow::Result<Ctx> {
        let addrs: Vec<String> = g
            .addr
            .iter()
            .map(|a| a.trim())
            .filter(|a| !a.is_empty())
            .map(normalize_addr)
            .collect();
        anyhow::ensure!(!addrs.is_empty(), "--addr is empty");
        Ok(Ctx {
            addrs,
            index: g.index,
            output: g.output,
            timeout: Duration::from_secs(g.timeout.max(1)),
        })
    }

    pub fn json(&self) -> bool {
        self.output == Output::Json
    }

    /// A lazily connecting channel: connection failures surface as
    /// `Unavailable` on the first call (and are retried where that is safe).
    pub fn channel(&self, addr: &str) -> anyhow::Result<Channel> {
        let ep = Endpoint::from_shared(addr.to_string())
            .with_context(|| format!("invalid --addr {addr:?}"))?
            .connect_timeout(Duration::from_secs(5))
            .timeout(self.timeout);
        Ok(ep.connect_lazy())
    }

    pub fn points(&self, addr: &str) -> anyhow::Result<PointsClient<Channel>> {
        Ok(PointsClient::new(self.channel(addr)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    pub fn admin(&self, addr: &str) -> anyhow::Result<AdminClient<Channel>> {
        Ok(AdminClient::new(self.channel(addr)?))
    }

    /// The first address: data-plane commands talk to one node, which
    /// coordinates across shards.
    pub fn addr(&self) -> &str {
        &self.addrs[0]
    }
}

/// `host:port` -> `http://host:port` (tonic needs a scheme).
pub fn normalize_addr(a: &str) -> String {
    if a.contains("://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

/// A gRPC failure as one readable line, naming the node.
pub fn rpc_error(addr: &str, what: &str, s: &tonic::Status) -> anyhow::Error {
    let hint = match s.code() {
        tonic::Code::Unavailable => {
            " (is the node running and --addr right? In Kubernetes: kubectl port-forward svc/<index> 7070)"
        }
        tonic::Code::NotFound if what != "Get" => {
            " (check --index; empty means the node's own index)"
        }
        _ => "",
    };
    anyhow::anyhow!(
        "{what} on {addr} failed: {}: {}{hint}",
        code_name(s.code()),
        s.message()
    )
}

pub fn code_name(c: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match c {
        Ok => "ok",
        Cancelled => "cancelled",
        Unknown => "unknown",
        InvalidArgument => "invalid argument",
        DeadlineExceeded => "deadline exceeded",
        NotFound => "not found",
        AlreadyExists => "already exists",
        PermissionDenied => "permission denied",
        ResourceExhausted => "resource exhausted",
        FailedPrecondition => "failed precondition",
        Aborted => "aborted",
        OutOfRange => "out of range",
        Unimplemented => "unimplemented",
        Internal => "internal",
        Unavailable => "unavailable",
        DataLoss => "data loss",
        Unauthenticated => "unauthenticated",
    }
}

/// Errors worth retrying with backoff: the node is down or restarting, the
/// shard is electing a leader, a deadline passed, the indexing queue is
/// applying backpressure, or the connection broke mid-request (tonic reports
/// that as `Unknown: transport error`). Upserts are idempotent, so a retried
/// batch that was in fact applied does no harm.
pub fn is_transient(s: &tonic::Status) -> bool {
    use tonic::Code::*;
    match s.code() {
        Unavailable | DeadlineExceeded | Aborted | ResourceExhausted | Cancelled => true,
        Unknown | Internal => {
            let transport =
                std::error::Error::source(s).is_some_and(|e| e.is::<tonic::transport::Error>());
            transport || s.message().contains("transport error")
        }
        _ => false,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Consistency {
    Eventual,
    Session,
    Linearizable,
}

impl Consistency {
    pub fn proto(c: Option<Consistency>) -> i32 {
        let c = match c {
            None => pb::Consistency::Unspecified,
            Some(Consistency::Eventual) => pb::Consistency::Eventual,
            Some(Consistency::Session) => pb::Consistency::Session,
            Some(Consistency::Linearizable) => pb::Consistency::Linearizable,
        };
        c as i32
    }
}

/// Parses a stored payload for JSON output (kept as text if it is not JSON).
pub fn payload_value(p: Option<&str>) -> serde_json::Value {
    match p {
        None => serde_json::Value::Null,
        Some(s) => {
            serde_json::from_str(s).unwrap_or_else(|_| serde_json::Value::String(s.to_string()))
        }
    }
}

pub fn log_id_json(l: Option<&pb::LogId>) -> serde_json::Value {
    match l {
        Some(l) => serde_json::json!({"term": l.term, "index": l.index}),
        None => serde_json::Value::Null,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_a_scheme() {
        assert_eq!(normalize_addr("127.0.0.1:7070"), "http://127.0.0.1:7070");
        assert_eq!(normalize_addr("https://x:1"), "https://x:1");
    }

    #[test]
    fn transient_codes() {
        assert!(is_transient(&tonic::Status::unavailable("leader changed")));
        assert!(is_transient(&tonic::Status::resource_exhausted(
            "queue full"
        )));
        assert!(!is_transient(&tonic::Status::invalid_argument(
            "wrong dimension"
        )));
        assert!(!is_transient(&tonic::Status::not_found("no such index")));
        assert!(is_transient(&tonic::Status::unknown("transport error")));
        assert!(!is_transient(&tonic::Status::internal("assertion failed")));
    }
}
