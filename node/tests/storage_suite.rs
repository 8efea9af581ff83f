//! openraft's own storage test suite (`openraft::testing::log::Suite`) against the durable log
//! store and the state machine (with the in-memory engine).
#![allow(clippy::unwrap_used)] // test helpers outside #[test] fns

use std::sync::Arc;

use kindex_node::raft::ApplyOutcome;
use kindex_node::raft::Command;
use kindex_node::raft::LogId;
use kindex_node::raft::LogStore;
use kindex_node::raft::LogStoreConfig;
use kindex_node::raft::Refusal;
use kindex_node::raft::RefusalKind;
use kindex_node::raft::ShardState;
use kindex_node::raft::ShardStateMachine;
use kindex_node::raft::SnapshotWriter;
use kindex_node::raft::TypeConfig;
use kindex_node::raft::state_machine::StateMachineConfig;
use mem_state::MemState;
use openraft::ErrorSubject;
use openraft::ErrorVerb;
use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use tempfile::TempDir;

#[path = "support/mem_state.rs"]
mod mem_state;

struct Builder;

fn sto_err(e: impl std::fmt::Display) -> StorageError<TypeConfig> {
    StorageError::from_io_error(
        ErrorSubject::Store,
        ErrorVerb::Write,
        std::io::Error::other(e.to_string()),
    )
}

impl StoreBuilder<TypeConfig, LogStore, ShardStateMachine<MemState>, TempDir> for Builder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore, ShardStateMachine<MemState>), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(sto_err)?;
        let log =
            LogStore::open(&LogStoreConfig::new(dir.path().join("raft-log"))).map_err(sto_err)?;
        let sm = ShardStateMachine::open(
            dir.path().join("snapshots"),
            Arc::new(MemState::new()),
            StateMachineConfig::default(),
        )
        .await
        .map_err(sto_err)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openraft_storage_suite() {
    tokio::time::timeout(
        std::time::Duration::from_secs(120),
        Suite::test_all(Builder),
    )
    .await
    .expect("suite timed out")
    .unwrap();
}
