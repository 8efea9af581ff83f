//! Policy state of a shard, replicated through Raft (issue 16; docs/policies.md).
//!
//! - [`command`]: what a policy change looks like in the log (`Command::Policy { json }`): a
//!   versioned, leader-stamped [`PolicyCommand`], and the policy kinds this build enforces.
//! - [`schema`], [`search`], [`retention`]: the `schema`, `searchDefaults` and `retention` kinds.
//! - [`store`]: the [`PolicyStore`] kept next to the engine in every replica's state machine:
//!   named policies, each with its last [`store::KEEP_VERSIONS`] versions (never reused; delete
//!   is soft and restorable), audit fields, and counters. Applied deterministically: nothing in
//!   here reads a clock (the leader's stamps are the only time) and it is carried in snapshots.
//!
//! Mixed versions: a replica reports [`FEATURE`] to its leader (Admin `ApplyDigest`, once a
//! second); the leader proposes policy commands only once every member reported it, so a
//! replica of an older build never meets one. A replica that meets a command of a newer
//! format stops with an error instead of applying something else than its peers.

// Applied by every replica in log order: no clock reads (clippy.toml lists them).
#![deny(clippy::disallowed_methods)]

pub mod command;
pub mod retention;
pub mod schema;
pub mod search;
pub mod store;

pub use command::COMMAND_VERSION;
pub use command::CommandError;
pub use command::FEATURE;
pub use command::PolicyBody;
pub use command::PolicyCommand;
pub use command::PolicyOp;
pub use command::Quota;
pub use command::RETENTION_FEATURE;
pub use command::Source;
pub use retention::Prune;
pub use retention::Retention;
pub use search::SearchRefused;
pub use search::SearchRules;
pub use store::PolicyRefusal;
pub use store::PolicyStore;
pub use store::QuotaExceeded;
pub use store::WriteRefused;
