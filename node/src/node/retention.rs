//! Retention (issue 16, docs/policies.md): the leader stamps upserts with its clock, reads
//! hide expired points with the reading replica's clock, and the leader's sweep removes them
//! through Raft in bounded prune commands (one in flight per shard) that apply re-checks.

use std::time::Duration;
use std::time::SystemTime;
use std::time::UNIX_EPOCH;

use crate::engine::Expiry;
use crate::policy;
use crate::policy::PolicyCommand;
use crate::policy::PolicyOp;
use crate::policy::Prune;
use crate::policy::Source;
use crate::raft::Command;

use super::*;

/// Points one prune command of the sweep lists (the apply side accepts up to
/// [`crate::policy::retention::MAX_PRUNE_POINTS`]): small enough that a write arriving
/// behind one waits about as long as an idle write takes (bench/RESULTS.md, "Retention sweep").
const SWEEP_BATCH: usize = 250;
/// Points picked by one scan of the shard, proposed in commands of [`SWEEP_BATCH`].
const SWEEP_PICK: usize = 50_000;
/// Pause after a prune while no other entry reached the log: a multiple of the time the
/// prune took (a mass expiry on an idle shard finishes fast), at least [`MIN_PAUSE`].
const IDLE_PAUSE_FACTOR: u32 = 1;
/// Pause after a prune while clients write: a larger multiple, so that few writes land
/// behind a prune in flight (bench/RESULTS.md, "Retention sweep": 3× left the sweep's
/// single-upsert p99 at 1.5–2.3× the idle p99), at least [`MIN_BUSY_PAUSE`].
const BUSY_PAUSE_FACTOR: u32 = 8;
/// Shortest pause between two prune commands.
const MIN_PAUSE: Duration = Duration::from_millis(10);
/// Shortest pause between two prune commands while clients write.
const MIN_BUSY_PAUSE: Duration = Duration::from_millis(20);
/// Longest pause: a slow prune (a busy disk) must not stall the sweep for long.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// The pause after a prune that took `took`; `busy`: entries other than the sweep's own
/// reached the log since the previous prune (client writes, policy changes).
fn pause_after(took: Duration, busy: bool) -> Duration {
    let (factor, min) = match busy {
        true => (BUSY_PAUSE_FACTOR, MIN_BUSY_PAUSE),
        false => (IDLE_PAUSE_FACTOR, MIN_PAUSE),
    };
    (took * factor).clamp(min, MAX_PAUSE)
}
/// Prune commands one sweep proposes at most (then it waits for the next interval): a mass
/// expiry of 1M points takes 2,000 commands, and a sweep never runs unbounded.
const MAX_PRUNES_PER_SWEEP: usize = 8_000;

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SweepOutcome {
    pub commands: u64,
    pub pruned: u64,
}

impl Node {
    /// This node's wall clock in ms since the Unix epoch (moved by a `clock-skew-ms` test
    /// fault). The only clock stamps and retention cutoffs come from.
    pub fn now_ms(&self) -> u64 {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        now.saturating_add_signed(self.faults.clock_skew_ms())
    }

    /// The upsert entry for `points`: stamped once every member applies stamped upserts,
    /// unstamped (as older builds write it) before.
    pub(super) fn upsert_command(&self, points: Vec<crate::raft::PointRecord>) -> Command {
        match self.check_members_support(policy::RETENTION_FEATURE) {
            Ok(()) => Command::StampedUpsert {
                stamp_ms: self.now_ms(),
                points,
            },
            Err(_) => Command::Upsert { points },
        }
    }

    /// What reads hide now on this replica (empty without retention policies).
    pub fn expiry_now(&self) -> Expiry {
        self.state.expiry_at(self.now_ms())
    }

    /// One retention sweep on the leader: for every retention policy in force, prune commands
    /// of at most [`SWEEP_BATCH`] points, one at a time and paced (see [`pause_after`]: short
    /// while the shard is otherwise idle, long while clients write, so a write seldom waits
    /// behind a prune), until nothing is expired or [`MAX_PRUNES_PER_SWEEP`] were proposed. Does nothing on a follower, or while a member
    /// does not apply prunes yet.
    pub async fn sweep_retention(&self) -> Result<SweepOutcome, NodeError> {
        let mut out = SweepOutcome::default();
        if !self.is_leader() || !self.state.policies().has_retention() {
            return Ok(out);
        }
        self.check_members_support(policy::RETENTION_FEATURE)?;
        let last_log = || {
            self.raft
                .metrics()
                .borrow_watched()
                .last_log_index
                .unwrap_or(0)
        };
        let mut mark = last_log();
        while (out.commands as usize) < MAX_PRUNES_PER_SWEEP {
            let cmds = self.next_prunes();
            if cmds.is_empty() {
                break;
            }
            for cmd in cmds {
                let started = std::time::Instant::now();
                let r = self
                    .propose(&Command::Policy { json: cmd.encode() })
                    .await?;
                out.commands += 1;
                out.pruned += r.affected;
                // A prune that removed nothing (the policy changed, points were re-upserted)
                // would be picked again: stop until the next interval.
                if r.affected == 0 || out.commands as usize >= MAX_PRUNES_PER_SWEEP {
                    return Ok(out);
                }
                let took = started.elapsed();
                // More than our own prune since the previous mark: others are writing.
                let now = last_log();
                let busy = now.saturating_sub(mark) > 1;
                mark = now;
                tokio::time::sleep(pause_after(took, busy)).await;
            }
        }
        Ok(out)
    }

    /// The next prunes the sweep proposes (one policy's, at most [`SWEEP_PICK`] points in
    /// commands of [`SWEEP_BATCH`]), if any point is expired or over a count limit. Picked
    /// once for several commands: a scan of the shard per command would cost more than the
    /// prunes; apply re-checks every point anyway.
    fn next_prunes(&self) -> Vec<PolicyCommand> {
        let policies = self.state.policies();
        let engine = self.engine();
        let now = self.now_ms();
        let live = engine.count();
        let command = |name: &String, prune: Prune| PolicyCommand {
            v: policy::COMMAND_VERSION,
            op: PolicyOp::Prune,
            name: name.clone(),
            policy: None,
            restore: None,
            prune: Some(prune),
            expected_version: None,
            source: Source::Api,
            actor: "retention-sweep".into(),
            stamp_ms: now,
        };
        for (name, _, r) in policies.retentions() {
            if let Some(rule) = r.rule_at(now) {
                let (picked, _) = engine.expired_points(&rule, policies.unstamped_ms, SWEEP_PICK);
                if !picked.is_empty() {
                    return picked
                        .chunks(SWEEP_BATCH)
                        .map(|chunk| {
                            let prune = Prune {
                                before_ms: rule.before_ms,
                                field: rule.field.clone(),
                                by_count: false,
                                ids: chunk.iter().map(|(id, _)| id.clone()).collect(),
                            };
                            command(name, prune)
                        })
                        .collect();
                }
            }
            let Some(max) = r.max_vectors else {
                continue;
            };
            let over = live.saturating_sub(max) as usize;
            let picked = engine.oldest_points(over.min(SWEEP_PICK), policies.unstamped_ms);
            if !picked.is_empty() {
                return picked
                    .chunks(SWEEP_BATCH)
                    .map(|chunk| {
                        let prune = Prune {
                            // Points re-upserted since are newer than every picked one.
                            before_ms: chunk.last().map_or(0, |p| p.1).saturating_add(1),
                            field: None,
                            by_count: true,
                            ids: chunk.iter().map(|(id, _)| id.clone()).collect(),
                        };
                        command(name, prune)
                    })
                    .collect();
            }
        }
        Vec::new()
    }
}

/// The retention sweep of this node's shard: every `retentionSweepIntervalSecs` (runtime
/// config, checked every second, so a changed interval applies at once), on the leader only.
pub fn spawn_retention_sweep(node: Arc<Node>) {
    tokio::spawn(async move {
        let mut last = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            if node.stopping.load(Ordering::Acquire) {
                return;
            }
            let every = Duration::from_secs(node.runtime().retention_sweep_interval_secs.max(1));
            if last.elapsed() < every {
                continue;
            }
            last = std::time::Instant::now();
            match node.sweep_retention().await {
                Ok(o) if o.commands > 0 => {
                    tracing::info!(commands = o.commands, pruned = o.pruned, "retention sweep");
                }
                Ok(_) => {}
                // Not leading any more, a member without retention support, no quorum: the
                // next round tries again.
                Err(e) => tracing::info!(error = %e, "retention sweep stopped early"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_backs_off_while_clients_write() {
        let ms = Duration::from_millis;
        assert_eq!(pause_after(ms(4), false), ms(10));
        assert_eq!(pause_after(ms(30), false), ms(30));
        assert_eq!(pause_after(ms(1), true), ms(20));
        assert_eq!(pause_after(ms(4), true), ms(32));
        assert_eq!(pause_after(ms(900), true), MAX_PAUSE);
        assert!(pause_after(ms(4), true) >= pause_after(ms(4), false) * 3);
    }
}
