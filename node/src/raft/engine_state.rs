//! The HNSW engine as the Raft state machine's [`ShardState`].
//!
//! - `apply` turns committed [`Command`]s into engine writes and records the log id in the
//!   engine (it ends up in every snapshot manifest). Input that is invalid at apply time is
//!   `Rejected` (deterministically, on every replica) and changes nothing; the node validates
//!   with the same `engine::limits` checks before proposing (`api::validate`), so this is a
//!   backstop for entries from the log.
//! - Snapshots are the engine's own section files (`snapshot::Capture`): captured between two
//!   applies, written while later entries are applied. The Raft layer adds its `RAFT_META`.
//! - Installing a snapshot builds a new engine with `snapshot::load` and swaps it in; readers
//!   holding the previous `Arc<Engine>` finish on it.
//! - The shard's [`PolicyStore`] lives next to the engine: policy commands change it, schemas
//!   and quotas are checked in it when an upsert is applied, and snapshots carry it (format 3;
//!   a snapshot of a shard without policies stays format 2, readable by older builds).

use std::collections::HashMap;
use std::io;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Instant;

use parking_lot::Mutex;
use parking_lot::RwLock;

use super::ApplyOutcome;
use super::Command;
use super::LogId;
use super::PointRecord;
use super::Refusal;
use super::RefusalKind;
use super::ShardState;
use super::SnapshotWriter;
use super::state_machine::refuse;
use super::usage::Share;
use super::usage::Usage;
use crate::config::StructuralConfig;
use crate::engine::AppliedLog;
use crate::engine::Engine;
use crate::engine::EngineError;
use crate::engine::EngineKnobs;
use crate::engine::InputError;
use crate::engine::PointInput;
use crate::engine::VectorStorage;
use crate::engine::filter::Payload;
use crate::engine::limits;
use crate::metrics::Metrics;
use crate::policy::PolicyCommand;
use crate::policy::PolicyOp;
use crate::policy::PolicyRefusal;
use crate::policy::PolicyStore;
use crate::policy::SearchRules;
use crate::policy::WriteRefused;
use crate::policy::store::QuotaLoad;
use crate::policy::store::WritePoint;
use crate::snapshot;
use crate::snapshot::Capture;

/// The engine of one shard replica, replaceable by a snapshot install.
pub struct EngineState {
    engine: RwLock<Arc<Engine>>,
    /// Replaced together with the engine by a snapshot install; locked after `engine` when both.
    policies: Mutex<PolicyStore>,
    /// Payload usage, while a quota needs it (see [`super::usage`]); locked after `policies`.
    usage: Mutex<Option<Usage>>,
    /// The searchDefaults policies combined (filters parsed once), rebuilt whenever the policy
    /// store changes; locked after `policies`.
    search_rules: Mutex<Arc<SearchRules>>,
    structural: StructuralConfig,
    /// Knobs for engines built later (snapshot installs).
    knobs: Mutex<EngineKnobs>,
    /// Where every engine of this replica keeps its vectors (`--vectors-on-disk`).
    storage: VectorStorage,
    metrics: Option<Arc<Metrics>>,
    /// Payloads this node parsed when it validated a write it is proposing, by JSON text, with
    /// how many proposals in flight hold each (see [`Self::remember_payloads`]).
    parsed: Mutex<HashMap<String, (Payload, usize)>>,
    /// The newest data format this replica's data may hold (see [`Self::data_format`]).
    data_format: AtomicU32,
}

impl EngineState {
    /// An empty engine with its vectors in memory; the Raft layer loads the newest snapshot
    /// into it on open.
    pub fn new(
        structural: StructuralConfig,
        knobs: EngineKnobs,
        metrics: Option<Arc<Metrics>>,
    ) -> Self {
        Self::with_storage(structural, knobs, metrics, VectorStorage::Heap)
    }

    /// [`Self::new`] with every engine keeping its vectors in `storage`.
    pub fn with_storage(
        structural: StructuralConfig,
        knobs: EngineKnobs,
        metrics: Option<Arc<Metrics>>,
        storage: VectorStorage,
    ) -> Self {
        let engine = Engine::with_storage(structural.clone(), knobs, storage.clone());
        Self {
            engine: RwLock::new(Arc::new(engine)),
            policies: Mutex::new(PolicyStore::default()),
            usage: Mutex::new(None),
            search_rules: Mutex::new(Arc::new(SearchRules::default())),
            structural,
            knobs: Mutex::new(knobs),
            storage,
            metrics,
            parsed: Mutex::new(HashMap::new()),
            data_format: AtomicU32::new(snapshot::FORMAT_WITHOUT_POLICIES),
        }
    }

    /// The newest on-disk data format this replica's data may hold, in snapshot format
    /// numbers: at least the format of the snapshot it loaded or wrote, 3 once it applied a
    /// policy command, 4 once it applied a stamped upsert (log entries an older build cannot
    /// decode). Only grows while the process runs; reported in Admin `Status`, where the
    /// operator keeps the highest value and refuses a rollback to a release that reads less.
    pub fn data_format(&self) -> u32 {
        self.data_format.load(Ordering::Relaxed)
    }

    fn note_format(&self, format: u32) {
        self.data_format.fetch_max(format, Ordering::Relaxed);
    }

    /// The current engine. Keep the `Arc` for the whole request: slot numbers in search hits
    /// refer to this engine, and a snapshot install may swap in another one meanwhile.
    pub fn engine(&self) -> Arc<Engine> {
        self.engine.read().clone()
    }

    pub fn structural(&self) -> &StructuralConfig {
        &self.structural
    }

    /// A copy of the policy store as applied so far.
    pub fn policies(&self) -> PolicyStore {
        self.policies.lock().clone()
    }

    /// The leader's pre-check of an upsert against the schemas and quotas in force (the fast
    /// error; apply decides). `Ok` when none is set.
    pub fn check_write(&self, records: &[PointRecord]) -> Result<(), WriteRefused> {
        // The engine first: a snapshot install holds the engine lock while it takes this one.
        let engine = self.engine();
        let policies = self.policies.lock();
        if policies.has_schema() {
            // Unreadable payloads are refused by apply itself (`inputs_of`).
            if let Ok(inputs) = self.inputs_of(records) {
                policies.check_schema(&write_points(records, &inputs))?;
            }
        }
        if policies.has_quota() {
            let Ok(inputs) = self.inputs_of(records) else {
                return Ok(());
            };
            let usage = self.usage.lock();
            let changes = usage
                .as_ref()
                .map(|u| changes_of(&engine, u, records, &inputs));
            if policies.quotas_need_usage() && usage.is_none() {
                // Being rebuilt (a snapshot install): apply decides.
                return Ok(());
            }
            let loads = quota_loads(&engine, records, usage.as_ref(), changes.as_deref());
            policies.check(&loads)?;
        }
        Ok(())
    }

    /// Starts, stops or rebuilds the payload usage to match the quotas in force (after a policy
    /// change or a snapshot install): a scan of `engine` at this log index.
    fn refresh_usage(&self, engine: &Engine) {
        let (needed, fields) = {
            let p = self.policies.lock();
            (p.quotas_need_usage(), p.tenant_fields())
        };
        let mut usage = self.usage.lock();
        match (needed, usage.as_ref()) {
            (false, _) => *usage = None,
            (true, Some(u)) if *u.fields() == fields => {}
            (true, _) => *usage = Some(Usage::scan(engine, fields)),
        }
    }

    /// The usage shares of the live points among `ids`, taken before they are deleted (then
    /// [`Self::subtract`]ed).
    fn shares_of(&self, engine: &Engine, ids: &[String]) -> Vec<Share> {
        let usage = self.usage.lock();
        let Some(u) = usage.as_ref() else {
            return Vec::new();
        };
        let mut seen = std::collections::HashSet::new();
        ids.iter()
            .filter(|id| seen.insert(id.as_str()))
            .filter_map(|id| engine.slot_of(id))
            .map(|slot| u.share(engine.payload(slot)))
            .collect()
    }

    fn subtract(&self, shares: &[Share]) {
        if let Some(u) = self.usage.lock().as_mut() {
            for s in shares {
                u.add(s, -1);
            }
        }
    }

    /// What reads hide at `now_ms` (this replica's clock) under the retention policies it
    /// applied.
    pub fn expiry_at(&self, now_ms: u64) -> crate::engine::Expiry {
        self.policies.lock().expiry_at(now_ms)
    }

    /// The searchDefaults policies this replica applied, combined.
    pub fn search_rules(&self) -> Arc<SearchRules> {
        self.search_rules.lock().clone()
    }

    /// Rebuilds what is derived from the policy store: the combined search rules and the
    /// payload usage (after a policy change or a snapshot install).
    fn policies_changed(&self, engine: &Engine) {
        let rules = Arc::new(self.policies.lock().search_rules());
        *self.search_rules.lock() = rules;
        self.refresh_usage(engine);
    }

    /// New runtime knobs, for the current engine and for engines built later.
    pub fn set_knobs(&self, knobs: EngineKnobs) {
        *self.knobs.lock() = knobs;
        self.engine().set_knobs(knobs);
    }

    /// Keeps the payloads of a write this node is about to propose, parsed by its validation,
    /// so that applying the entry here does not parse them again. Parsing is deterministic, so
    /// what `apply` finds here is what parsing the entry's text would give. Call
    /// [`Self::forget_payloads`] with the same texts once the proposal returned (applied or not).
    pub fn remember_payloads<'a>(
        &self,
        payloads: impl IntoIterator<Item = (&'a str, &'a Payload)>,
    ) {
        let mut parsed = self.parsed.lock();
        for (json, payload) in payloads {
            parsed
                .entry(json.to_string())
                .or_insert_with(|| (payload.clone(), 0))
                .1 += 1;
        }
    }

    /// See [`Self::remember_payloads`].
    pub fn forget_payloads<'a>(&self, texts: impl IntoIterator<Item = &'a str>) {
        let mut parsed = self.parsed.lock();
        for json in texts {
            if let Some((_, holders)) = parsed.get_mut(json) {
                *holders -= 1;
                if *holders == 0 {
                    parsed.remove(json);
                }
            }
        }
    }

    /// Points of an upsert entry as engine input. The leader finds the payloads it parsed when
    /// it validated the write; other replicas (and the leader replaying its log) parse them
    /// here, with the same checks, as a safety net: an entry from the log was validated by the
    /// leader that proposed it, possibly an older version, and apply must refuse rather than
    /// store what it cannot read, the same way on every replica.
    fn inputs_of(&self, records: &[PointRecord]) -> Result<Vec<PointInput>, InputError> {
        records
            .iter()
            .map(|r| {
                let payload = match &r.payload_json {
                    Some(json) => Some(self.payload_of(&r.id, json)?),
                    None => None,
                };
                Ok(PointInput {
                    id: r.id.clone(),
                    vector: r.vector.clone(),
                    payload,
                })
            })
            .collect()
    }

    fn payload_of(&self, id: &str, json: &str) -> Result<Payload, InputError> {
        if let Some((payload, _)) = self.parsed.lock().get(json) {
            return Ok(payload.clone());
        }
        limits::parse_payload(id, json)
    }
}

/// The points of an upsert as the schema policies see them (`inputs` parsed from `records`).
fn write_points<'a>(records: &'a [PointRecord], inputs: &'a [PointInput]) -> Vec<WritePoint<'a>> {
    records
        .iter()
        .zip(inputs)
        .map(|(r, i)| WritePoint {
            id: &r.id,
            payload: i.payload.as_ref(),
            payload_bytes: r.payload_json.as_ref().map_or(0, String::len),
        })
        .collect()
}

/// The distinct points of an upsert (the last of each id wins, as in the engine), each with the
/// share of the point it replaces (None: a new id) and its own.
fn changes_of(
    engine: &Engine,
    usage: &Usage,
    records: &[PointRecord],
    inputs: &[PointInput],
) -> Vec<(Option<Share>, Share)> {
    let mut last: HashMap<&str, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        last.insert(r.id.as_str(), i);
    }
    let mut order: Vec<usize> = last.into_values().collect();
    order.sort_unstable();
    order
        .into_iter()
        .map(|i| {
            let old = engine
                .slot_of(&records[i].id)
                .map(|slot| usage.share(engine.payload(slot)));
            (old, usage.share(inputs[i].payload.as_ref()))
        })
        .collect()
}

/// What each quota counts in the buckets an upsert touches.
fn quota_loads<'a>(
    engine: &'a Engine,
    records: &'a [PointRecord],
    usage: Option<&'a Usage>,
    changes: Option<&'a [(Option<Share>, Share)]>,
) -> impl Fn(&crate::policy::Quota) -> Vec<QuotaLoad> + 'a {
    move |q| match (q.needs_usage(), usage, changes) {
        (true, Some(u), Some(c)) => u.loads(q, engine.count(), c),
        // Usage not kept (cannot happen at apply: it is refreshed with every policy change).
        (true, _, _) => Vec::new(),
        (false, _, _) => vec![QuotaLoad {
            points: engine.count(),
            add_points: new_points(engine, records),
            ..QuotaLoad::default()
        }],
    }
}

/// Distinct ids of `records` that the engine does not hold: what an upsert adds to the count.
fn new_points(engine: &Engine, records: &[PointRecord]) -> u64 {
    let mut ids: Vec<&str> = records.iter().map(|r| r.id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter(|id| engine.get(id).is_none())
        .count() as u64
}

fn refusal_of(e: PolicyRefusal) -> Refusal {
    let kind = match e {
        PolicyRefusal::NotFound(_) => RefusalKind::NotFound,
        PolicyRefusal::Conflict(_) => RefusalKind::Conflict,
        PolicyRefusal::Invalid(_) => RefusalKind::Invalid,
    };
    Refusal::new(kind, e.to_string())
}

fn applied_log(l: &LogId) -> AppliedLog {
    AppliedLog {
        term: l.leader_id.term,
        node_id: l.leader_id.node_id,
        index: l.index,
    }
}

fn outcome(r: Result<u64, EngineError>) -> io::Result<ApplyOutcome> {
    match r {
        Ok(affected) => Ok(ApplyOutcome::Applied { affected }),
        // Deterministic refusals: every replica refuses the same entry the same way.
        Err(e @ (EngineError::Input(_) | EngineError::Full)) => {
            Ok(ApplyOutcome::Rejected(Refusal::invalid(e.to_string())))
        }
        // This replica cannot apply any more: stopping, or its vector storage failed (local, so
        // refusing the entry here would make it differ from the others; it stops instead).
        Err(e @ (EngineError::ShuttingDown | EngineError::Storage(_))) => {
            Err(io::Error::other(e.to_string()))
        }
    }
}

impl EngineState {
    /// The schema and quota checks of an upsert at apply time (counted in the policies'
    /// counters).
    #[deny(clippy::disallowed_methods)]
    fn admit(
        &self,
        engine: &Engine,
        records: &[PointRecord],
        inputs: &[PointInput],
        changes: Option<&[(Option<Share>, Share)]>,
        index: u64,
    ) -> Result<(), WriteRefused> {
        let mut policies = self.policies.lock();
        if policies.has_schema() {
            policies.admit_schema(&write_points(records, inputs), index)?;
        }
        if policies.has_quota() {
            let usage = self.usage.lock();
            let loads = quota_loads(engine, records, usage.as_ref(), changes);
            policies.admit(&loads, index)?;
        }
        Ok(())
    }
}

impl EngineState {
    /// An upsert entry: parsed, admitted by the schemas and quotas, stored with its ingest
    /// stamp (the shard clock after a stamped entry; an unstamped one, from an older leader,
    /// gets the clock as it is).
    #[deny(clippy::disallowed_methods)]
    fn apply_upsert(
        &self,
        engine: &Engine,
        points: &[PointRecord],
        stamp: Option<u64>,
        log_id: &LogId,
    ) -> io::Result<ApplyOutcome> {
        let stamp_ms = {
            let mut policies = self.policies.lock();
            match stamp {
                Some(s) => policies.observe(s),
                None => policies.clock_ms,
            }
        };
        let inputs = match self.inputs_of(points) {
            Ok(inputs) => inputs,
            Err(e) => return Ok(ApplyOutcome::Rejected(Refusal::invalid(e.to_string()))),
        };
        let changes = self
            .usage
            .lock()
            .as_ref()
            .map(|u| changes_of(engine, u, points, &inputs));
        Ok(
            match self.admit(engine, points, &inputs, changes.as_deref(), log_id.index) {
                Ok(()) => {
                    let out = outcome(engine.upsert_stamped(&inputs, stamp_ms))?;
                    if let (ApplyOutcome::Applied { .. }, Some(changes)) = (&out, &changes)
                        && let Some(u) = self.usage.lock().as_mut()
                    {
                        for (old, new) in changes {
                            if let Some(old) = old {
                                u.add(old, -1);
                            }
                            u.add(new, 1);
                        }
                    }
                    out
                }
                Err(e @ WriteRefused::Quota(_)) => {
                    ApplyOutcome::Rejected(Refusal::new(RefusalKind::Quota, e.to_string()))
                }
                Err(e @ WriteRefused::Schema(_)) => {
                    ApplyOutcome::Rejected(Refusal::invalid(e.to_string()))
                }
            },
        )
    }

    /// A retention sweep's prune: each listed point is re-checked against the command's cutoff
    /// (capped by the policy in force), so a point re-upserted since it was picked survives.
    #[deny(clippy::disallowed_methods)]
    fn apply_prune(
        &self,
        engine: &Engine,
        cmd: &PolicyCommand,
        index: u64,
    ) -> io::Result<ApplyOutcome> {
        let (rule, limit, unstamped) = {
            let mut policies = self.policies.lock();
            match policies.plan_prune(cmd, engine.count()) {
                Ok((rule, limit)) => (rule, limit, policies.unstamped_ms),
                Err(e) => return Ok(ApplyOutcome::Rejected(refusal_of(e))),
            }
        };
        let listed = cmd.prune.as_ref().map_or(&[][..], |p| &p.ids[..]);
        let expired: Vec<String> = listed
            .iter()
            .filter(|id| {
                engine
                    .slot_of(id)
                    .is_some_and(|s| rule.expired(engine.stamp(s), unstamped, engine.payload(s)))
            })
            .take(usize::try_from(limit).unwrap_or(usize::MAX))
            .cloned()
            .collect();
        let removed = match expired.is_empty() {
            true => 0,
            false => {
                let shares = self.shares_of(engine, &expired);
                match engine.delete(&expired) {
                    Ok(n) => {
                        self.subtract(&shares);
                        n
                    }
                    Err(e) => return outcome(Err(e)),
                }
            }
        };
        self.policies
            .lock()
            .count_pruned(&cmd.name, listed.len() as u64, removed, index);
        Ok(ApplyOutcome::Applied { affected: removed })
    }
}

impl ShardState for EngineState {
    // Deterministic on every replica: no clock reads (clippy.toml).
    #[deny(clippy::disallowed_methods)]
    fn apply(&self, log_id: &LogId, cmd: &Command) -> io::Result<ApplyOutcome> {
        let engine = self.engine();
        let out = match cmd {
            Command::Upsert { points } => self.apply_upsert(&engine, points, None, log_id)?,
            Command::StampedUpsert { stamp_ms, points } => {
                // Stamps need format 4 (5 only adds int8 ranges).
                self.note_format(snapshot::FORMAT_WITHOUT_QUANT);
                self.apply_upsert(&engine, points, Some(*stamp_ms), log_id)?
            }
            Command::Delete { ids } => {
                let shares = self.shares_of(&engine, ids);
                let out = outcome(engine.delete(ids))?;
                if let ApplyOutcome::Applied { .. } = out {
                    self.subtract(&shares);
                }
                out
            }
            Command::Policy { json } => {
                self.note_format(snapshot::FORMAT_WITHOUT_STAMPS);
                // A command this build cannot read was proposed by a newer leader: stop rather
                // than apply something else than the peers (the leader waits for every member
                // to report support, so this is a bug or a downgrade).
                let cmd = PolicyCommand::decode(json)
                    .map_err(|e| io::Error::other(format!("log index {}: {e}", log_id.index)))?;
                if cmd.op == PolicyOp::Prune {
                    self.apply_prune(&engine, &cmd, log_id.index)?
                } else {
                    let r = self.policies.lock().apply(&cmd, log_id.index);
                    self.policies_changed(&engine);
                    match r {
                        Ok(version) => ApplyOutcome::Applied { affected: version },
                        Err(e) => ApplyOutcome::Rejected(refusal_of(e)),
                    }
                }
            }
        };
        engine.set_applied(applied_log(log_id));
        if let Some(m) = &self.metrics {
            m.raft_applied_entries.inc();
        }
        Ok(out)
    }

    fn begin_snapshot(&self, last_applied: Option<&LogId>) -> io::Result<Box<dyn SnapshotWriter>> {
        let engine = self.engine();
        // The snapshot's manifest records the Raft position it covers, which may be a blank or
        // membership entry after the last write.
        if let Some(l) = last_applied {
            engine.set_applied(applied_log(l));
        }
        let capture = Capture::take(&engine);
        // Between two applies, like the engine's capture: both are at the same log id.
        let policies = self.policies.lock();
        let policies = (!policies.is_blank()).then(|| policies.to_bytes());
        self.note_format(snapshot::format_for(
            policies.is_some(),
            capture.has_stamps(),
            capture.has_quant(),
        ));
        Ok(Box::new(EngineSnapshotWriter {
            capture,
            policies,
            metrics: self.metrics.clone(),
        }))
    }

    fn load_snapshot(&self, dir: &Path) -> io::Result<()> {
        let knobs = *self.knobs.lock();
        let loaded = snapshot::load(dir, &self.structural, knobs, &self.storage).map_err(|e| {
            if e.is_fatal() {
                // Built with other structural parameters or by a newer kindex: no older snapshot
                // is better, the node must stop and say why.
                refuse(e.to_string())
            } else {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            }
        })?;
        tracing::info!(
            dir = %dir.display(),
            vectors = loaded.manifest.counts.live,
            queued = loaded.manifest.counts.slots.saturating_sub(loaded.manifest.counts.indexed),
            millis = loaded.duration.as_millis() as u64,
            "engine loaded from snapshot"
        );
        self.note_format(loaded.manifest.format_version);
        let policies = match &loaded.policies {
            Some(bytes) => PolicyStore::from_bytes(bytes).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: {e}", dir.display()),
                )
            })?,
            None => PolicyStore::default(),
        };
        let mut engine = self.engine.write();
        let previous = std::mem::replace(&mut *engine, Arc::new(loaded.engine));
        *self.policies.lock() = policies;
        // Rebuilt from the new engine before any apply or pre-check sees it.
        *self.usage.lock() = None;
        self.policies_changed(&engine);
        drop(engine);
        // Stops its indexing workers once the last reader lets go.
        drop(previous);
        Ok(())
    }
}

struct EngineSnapshotWriter {
    capture: Capture,
    /// The policy section, if the shard has policies.
    policies: Option<Vec<u8>>,
    metrics: Option<Arc<Metrics>>,
}

impl SnapshotWriter for EngineSnapshotWriter {
    fn write(self: Box<Self>, dir: &Path) -> io::Result<()> {
        let started = Instant::now();
        let manifest = self
            .capture
            .write_into(
                dir,
                snapshot::format_for(
                    self.policies.is_some(),
                    self.capture.has_stamps(),
                    self.capture.has_quant(),
                ),
                &[],
                self.policies.as_deref(),
            )
            .map_err(|e| io::Error::other(e.to_string()))?;
        if let Some(m) = &self.metrics {
            m.snapshot_duration.observe(started.elapsed().as_secs_f64());
            m.snapshot_bytes.set(manifest.total_bytes() as i64);
        }
        tracing::info!(
            dir = %dir.display(),
            bytes = manifest.total_bytes(),
            vectors = manifest.counts.live,
            millis = started.elapsed().as_millis() as u64,
            "engine snapshot written"
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests;
