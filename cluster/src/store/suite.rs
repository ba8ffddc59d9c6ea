//! openraft's storage conformance suite against our sled log store and
//! state machine (STYLE.md lesson 8).

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;

use crate::kv::SledKv;
use crate::raft::TypeConfig;
use crate::store::{LogStore, StateMachine};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledKv>, StateMachine<SledKv>, TempDir> for SledBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<SledKv>, StateMachine<SledKv>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = SledKv::open(dir.path()).expect("open sled");
        let log = LogStore::new(kv.clone())?;
        let sm = StateMachine::new(kv)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    Suite::test_all(SledBuilder).expect("storage suite");
}

/// The durable group's log: entries in segment files.
struct FileBuilder;

impl StoreBuilder<TypeConfig, LogStore<SledKv>, StateMachine<SledKv>, TempDir> for FileBuilder {
    async fn build(
        &self,
    ) -> Result<(TempDir, LogStore<SledKv>, StateMachine<SledKv>), StorageError<u64>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let kv = SledKv::open(&dir.path().join("kv")).expect("open sled");
        let log = LogStore::with_files(kv.clone(), &dir.path().join("raft-log"))?;
        let sm = StateMachine::new(kv)?;
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite_segment_files() {
    Suite::test_all(FileBuilder).expect("storage suite");
}
