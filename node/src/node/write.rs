//! Writes: validated, proposed to the shard's Raft group, or forwarded to its leader.

use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use kindex_proto as pb;
use openraft::errors::ClientWriteError;
use openraft::errors::RaftError;

use crate::api::validate::ValidPoint;
use crate::policy::WriteRefused;
use crate::raft::Command;
use crate::raft::CommandResult;
use crate::raft::EngineState;
use crate::raft::PointRecord;

use super::*;

impl Node {
    // ---------------------------------------------------------------- writes

    pub(super) fn check_writable(&self) -> Result<(), NodeError> {
        if self.accepting_writes.load(Ordering::Acquire) {
            Ok(())
        } else {
            Err(NodeError::Unavailable(
                "this node is shutting down and accepts no writes".into(),
            ))
        }
    }

    /// Refuses a write at once on a leader that a majority of its voters has not acknowledged
    /// for [`QUORUM_LOST_AFTER`] (or two maximal election timeouts, if longer): with the quorum
    /// gone the write cannot commit, and instead of waiting out [`COMMIT_TIMEOUT`] to end
    /// "it may still be applied", the client learns at once that it was not proposed.
    fn check_quorum(&self) -> Result<(), NodeError> {
        let limit = QUORUM_LOST_AFTER.max(Duration::from_millis(
            2 * self.raft.config().election_timeout_max,
        ));
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        // A single voter is its own quorum; None: not leading, or not yet acknowledged.
        let voters = m.membership_config.membership().voter_ids().count();
        let (true, Some(acked)) = (voters > 1, m.last_quorum_acked.as_ref()) else {
            return Ok(());
        };
        let age = openraft::Instant::elapsed(&**acked);
        if m.state != openraft::ServerState::Leader || age <= limit {
            return Ok(());
        }
        Err(NodeError::QuorumLost(format!(
            "the shard has lost its quorum: its leader (node {}) has not been acknowledged by a \
             majority of its {voters} voters for {:.1}s; the write was not proposed (certainly \
             not applied); retry once enough replicas are back",
            self.node_id,
            age.as_secs_f64()
        )))
    }

    /// Propose one command on this node (which must lead); waits out an election in progress
    /// (bounded), returns NotLeader when another node leads.
    pub(super) async fn propose(&self, cmd: &Command) -> Result<CommandResult, NodeError> {
        self.check_quorum()?;
        // A leader whose volume is full appends nothing (a follower forwards: the leader's
        // volume decides). Checked before proposing, so the refusal is definite.
        if self.is_leader() {
            self.check_volume()?;
        }
        let deadline = Instant::now() + LEADER_WAIT;
        loop {
            let res = tokio::time::timeout(COMMIT_TIMEOUT, self.raft.client_write(cmd.clone()))
                .await
                .map_err(|_| {
                    NodeError::Unavailable(format!(
                        "the write was not committed within {COMMIT_TIMEOUT:?} (no quorum?); it may still be applied"
                    ))
                })?;
            match res {
                Ok(resp) => {
                    return match resp.data.rejected {
                        Some(refusal) => Err(refusal.into()),
                        None => Ok(resp.data),
                    };
                }
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => match f.leader_id
                {
                    Some(id) if id != self.node_id => {
                        return Err(self.not_leader(Some(id), f.leader_node));
                    }
                    // Election in progress, or a new leader not yet acknowledged by a quorum.
                    _ if Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await
                    }
                    _ => return Err(self.not_leader(None, None)),
                },
                Err(RaftError::APIError(ClientWriteError::LogEntryDiscarded(_))) => {
                    return Err(NodeError::Unavailable(
                        "leadership changed while the write was in flight; it may or may not be applied; \
                         retry (upserts and deletes are idempotent)"
                            .into(),
                    ));
                }
                Err(RaftError::APIError(e)) => return Err(NodeError::Raft(e.to_string())),
                Err(RaftError::Fatal(f)) => {
                    return Err(NodeError::Unavailable(format!("raft stopped: {f}")));
                }
            }
        }
    }

    /// Replicates a validated upsert (split into entries of at most [`MAX_COMMAND_BYTES`], in
    /// order). `forwarded`: the request came from another node (never forwarded again).
    pub async fn upsert(
        &self,
        points: Vec<ValidPoint>,
        forwarded: bool,
    ) -> Result<WriteOutcome, NodeError> {
        self.check_writable()?;
        // Applying the entries here uses the payloads validation parsed (see `api::validate`).
        let _parsed = RememberedPayloads::new(&self.state, &points);
        let chunks = split_by_bytes(
            points.iter().map(ValidPoint::record).collect(),
            MAX_COMMAND_BYTES,
        );
        let mut out = WriteOutcome::default();
        let mut written = 0usize;
        for (i, chunk) in chunks.iter().enumerate() {
            let cmd = self.upsert_command(chunk.clone());
            // The fast error of a schema or quota, on the leader (a follower's view may be
            // behind; apply decides either way).
            let prechecked = match self.is_leader() {
                true => self.state.check_write(chunk).map_err(|e| {
                    self.metrics.policy_precheck_rejections.inc();
                    match e {
                        WriteRefused::Quota(_) => NodeError::QuotaExceeded(e.to_string()),
                        WriteRefused::Schema(_) => NodeError::Rejected(e.to_string()),
                    }
                }),
                false => Ok(()),
            };
            let proposed = match prechecked {
                Ok(()) => self.propose(&cmd).await,
                Err(e) => Err(e),
            };
            match proposed {
                Ok(r) => {
                    out.affected += r.affected;
                    out.applied_index = r.applied_index;
                    written += chunk.len();
                }
                Err(e) if i == 0 => {
                    drop(cmd);
                    let Some((leader, addr)) = self.forward_target(&e, forwarded) else {
                        return Err(e);
                    };
                    let mut client = self.points_client(&addr)?;
                    let points = chunks
                        .into_iter()
                        .flatten()
                        .map(|p| pb::Point {
                            id: p.id,
                            vector: p.vector,
                            payload_json: p.payload_json,
                        })
                        .collect();
                    let req = self.forwarded_request(
                        pb::UpsertRequest {
                            index: self.index.clone(),
                            points,
                        },
                        COMMIT_TIMEOUT,
                    );
                    return match client.upsert(req).await {
                        Ok(r) => Ok(outcome_of(r.into_inner(), self.shard)),
                        Err(s) => Err(self.forward_failed(leader, &addr, s)),
                    };
                }
                Err(e) => return Err(partial(e, written)),
            }
        }
        Ok(out)
    }

    /// Replicates a delete of ids validated by `api::validate::delete`.
    pub async fn delete(
        &self,
        ids: Vec<String>,
        forwarded: bool,
    ) -> Result<WriteOutcome, NodeError> {
        self.check_writable()?;
        match self.propose(&Command::Delete { ids: ids.clone() }).await {
            Ok(r) => Ok(WriteOutcome {
                affected: r.affected,
                applied_index: r.applied_index,
            }),
            Err(e) => {
                let Some((leader, addr)) = self.forward_target(&e, forwarded) else {
                    return Err(e);
                };
                let mut client = self.points_client(&addr)?;
                let req = self.forwarded_request(
                    pb::DeleteRequest {
                        index: self.index.clone(),
                        ids,
                    },
                    COMMIT_TIMEOUT,
                );
                match client.delete(req).await {
                    Ok(r) => Ok(outcome_of(r.into_inner(), self.shard)),
                    Err(s) => Err(self.forward_failed(leader, &addr, s)),
                }
            }
        }
    }
}

/// The payloads of a write being proposed, known to the state machine until the write returns.
struct RememberedPayloads<'a> {
    state: &'a EngineState,
    points: &'a [ValidPoint],
}

impl<'a> RememberedPayloads<'a> {
    fn new(state: &'a EngineState, points: &'a [ValidPoint]) -> Self {
        state.remember_payloads(points.iter().filter_map(ValidPoint::payload));
        Self { state, points }
    }
}

impl Drop for RememberedPayloads<'_> {
    fn drop(&mut self) {
        self.state.forget_payloads(
            self.points
                .iter()
                .filter_map(ValidPoint::payload)
                .map(|(json, _)| json),
        );
    }
}

fn partial(e: NodeError, written: usize) -> NodeError {
    let msg = format!("after {written} points of the batch were written: {e}");
    match e {
        NodeError::Unavailable(_) | NodeError::NotLeader { .. } => NodeError::Unavailable(msg),
        NodeError::Timeout(_) => NodeError::Timeout(msg),
        NodeError::VolumeFull(_) => NodeError::VolumeFull(msg),
        _ => NodeError::Raft(msg),
    }
}

/// Splits points into runs of at most `max` bytes (each run at least one point), in order.
pub fn split_by_bytes(points: Vec<PointRecord>, max: u64) -> Vec<Vec<PointRecord>> {
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut bytes = 0u64;
    for p in points {
        // Same estimate as the log store's (`raft::command_size`).
        let size =
            (p.id.len() + p.vector.len() * 4 + p.payload_json.as_ref().map_or(0, String::len) + 16)
                as u64;
        if !cur.is_empty() && bytes + size > max {
            out.push(std::mem::take(&mut cur));
            bytes = 0;
        }
        bytes += size;
        cur.push(p);
    }
    if !cur.is_empty() || out.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str, dim: usize) -> PointRecord {
        PointRecord {
            id: id.into(),
            vector: vec![0.0; dim],
            payload_json: None,
        }
    }

    #[test]
    fn big_upserts_split_in_order_within_the_byte_cap() {
        let points: Vec<PointRecord> = (0..10).map(|i| rec(&format!("p{i}"), 250)).collect();
        // ~1018 bytes each: 3 per 3 KiB chunk.
        let chunks = split_by_bytes(points.clone(), 3 * 1024);
        assert_eq!(
            chunks.iter().map(Vec::len).collect::<Vec<_>>(),
            [3, 3, 3, 1]
        );
        assert_eq!(chunks.concat(), points);
        // A point larger than the cap still goes, alone.
        let chunks = split_by_bytes(vec![rec("a", 10_000), rec("b", 1)], 1024);
        assert_eq!(chunks.iter().map(Vec::len).collect::<Vec<_>>(), [1, 1]);
        assert_eq!(
            split_by_bytes(Vec::new(), 1024),
            vec![Vec::<PointRecord>::new()]
        );
    }
}
