//! The Raft log and vote on the key-value seam.
//!
//! Tree `raft_log`: big-endian index -> encoded entry. Tree `raft_meta`:
//! `vote`, `committed`, `last_purged`. An append is readable at once and
//! acknowledged to openraft (its `LogFlushed` callback) only after a durable
//! flush; one flusher task serves all appends queued meanwhile, so a burst of
//! appends costs one fsync.
//!
//! It must not look inside entries: what they mean is the state machine's.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use openraft::storage::{LogFlushed, RaftLogStorage};
use openraft::{LogState, OptionalSend, RaftLogReader, StorageIOError, Vote};
use tokio::sync::mpsc;

use super::filelog::FileLog;
use crate::codec::{decode, encode, encode_sized};
use crate::kv::{Kv, KvTree};
use crate::metrics;
use crate::raft::{Entry, LogId, NodeId, StorageError, TypeConfig};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const LAST_PURGED: &[u8] = b"last_purged";

/// Log storage; clones share the same trees and flusher.
#[derive(Clone)]
pub struct LogStore<K: Kv> {
    kv: K,
    log: K::Tree,
    meta: K::Tree,
    flusher: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
    /// The last committed index openraft reported (openraft 0.9's metrics
    /// do not carry it).
    committed: Arc<AtomicU64>,
    /// Set while this node is its group's only member: an append then
    /// syncs the segment file itself instead of handing the sync to the
    /// flusher thread, if the runtime has one worker (see `append`).
    sole: Arc<AtomicBool>,
    /// The runtime the log was opened on has a single worker thread.
    one_worker: bool,
    /// The durable group's entries live in segment files (`filelog.rs`);
    /// without it (the registry group, tests) in the `raft_log` tree.
    files: Option<Arc<FileLog>>,
    /// The last entries appended to the files, not read yet: the first
    /// read of them (applying them, on a single node) takes them from
    /// here instead of decoding them back. Shared with the log readers.
    recent: Arc<std::sync::Mutex<Recent>>,
}

/// Entries appended in index order, at most `RECENT_ENTRIES` and about
/// `RECENT_BYTES` (with their encoded sizes).
#[derive(Default)]
struct Recent(std::collections::VecDeque<(Entry, usize)>, usize);

const RECENT_ENTRIES: usize = 64;
const RECENT_BYTES: usize = 8 << 20;

impl Recent {
    fn first(&self) -> Option<u64> {
        self.0.front().map(|(e, _)| e.log_id.index)
    }

    fn last(&self) -> Option<u64> {
        self.0.back().map(|(e, _)| e.log_id.index)
    }

    fn pop_front(&mut self) -> Option<Entry> {
        let (e, n) = self.0.pop_front()?;
        self.1 -= n;
        Some(e)
    }

    /// The entries of `start..end` if all are here (taken out, with any
    /// older ones), else `None` (nothing changes).
    fn take(&mut self, start: u64, end: Option<u64>) -> Option<Vec<Entry>> {
        let (first, last) = (self.first()?, self.last()?);
        let end = end.unwrap_or(last + 1);
        if start < first || end > last + 1 || start >= end {
            return None;
        }
        for _ in first..start {
            self.pop_front();
        }
        (start..end).map(|_| self.pop_front()).collect()
    }

    fn push(&mut self, e: Entry, bytes: usize) {
        if self.last().is_some_and(|l| l + 1 != e.log_id.index) {
            self.0.clear();
            self.1 = 0;
        }
        while !self.0.is_empty()
            && (self.0.len() >= RECENT_ENTRIES || self.1 + bytes > RECENT_BYTES)
        {
            self.pop_front();
        }
        self.1 += bytes;
        self.0.push_back((e, bytes));
    }

    /// Forgets entries from `index` on (the log is truncated there).
    fn truncate(&mut self, index: u64) {
        while self.last().is_some_and(|l| l >= index) {
            if let Some((_, n)) = self.0.pop_back() {
                self.1 -= n;
            }
        }
    }

    /// Forgets entries up to `index` (purged).
    fn purge(&mut self, index: u64) {
        while self.first().is_some_and(|f| f <= index) {
            self.pop_front();
        }
    }
}

fn rd(e: impl ToString) -> StorageError {
    StorageIOError::read_logs(openraft::AnyError::error(e.to_string())).into()
}

fn wr(e: impl ToString) -> StorageError {
    StorageIOError::write_logs(openraft::AnyError::error(e.to_string())).into()
}

impl<K: Kv> LogStore<K> {
    /// Opens the log trees and starts the flusher task on the current
    /// tokio runtime.
    pub fn new(kv: K) -> Result<Self, StorageError> {
        let log = kv.tree("raft_log").map_err(rd)?;
        let meta = kv.tree("raft_meta").map_err(rd)?;
        let (tx, rx) = mpsc::unbounded_channel();
        if K::DURABLE {
            tokio::spawn(flusher(kv.clone(), rx));
        }
        Ok(LogStore {
            kv,
            log,
            meta,
            flusher: tx,
            committed: Arc::default(),
            sole: Arc::default(),
            one_worker: tokio::runtime::Handle::try_current()
                .is_ok_and(|h| h.metrics().num_workers() == 1),
            files: None,
            recent: Arc::default(),
        })
    }

    /// A log whose entries are kept in segment files in `dir` (vote,
    /// committed index and purge point stay in the key-value store). A
    /// log left in the `raft_log` tree by an earlier version moves there.
    pub fn with_files(kv: K, dir: &std::path::Path) -> Result<Self, StorageError> {
        let mut store = Self::new(kv)?;
        let purged: Option<LogId> = store.get_meta(LAST_PURGED)?;
        let files = FileLog::open(dir, purged.map(|p| p.index)).map_err(rd)?;
        if files.is_empty() {
            let old = store.log.range(&0u64.to_be_bytes(), None).map_err(rd)?;
            if !old.is_empty() {
                let mut entries = Vec::with_capacity(old.len());
                for (_, v) in old {
                    let e: Entry = decode(&v).map_err(rd)?;
                    entries.push((e.log_id, v));
                }
                files.append(entries).map_err(wr)?;
                files.sync().map_err(wr)?;
                store
                    .log
                    .remove_range(&0u64.to_be_bytes(), None)
                    .map_err(wr)?;
                store.kv.flush().map_err(wr)?;
            }
        }
        store.files = Some(Arc::new(files));
        Ok(store)
    }

    /// A live view of the last committed log index.
    pub fn committed_index(&self) -> Arc<AtomicU64> {
        self.committed.clone()
    }

    /// The switch telling appends that this node is the group's only
    /// member (set from Raft's metrics, `bootstrap::report_metrics`).
    pub fn sole_member(&self) -> Arc<AtomicBool> {
        self.sole.clone()
    }

    async fn flush(&self) -> Result<(), StorageError> {
        if !K::DURABLE {
            return Ok(());
        }
        let kv = self.kv.clone();
        tokio::task::spawn_blocking(move || kv.flush())
            .await
            .map_err(wr)?
            .map_err(wr)
    }

    fn get_meta<T: serde::de::DeserializeOwned>(
        &self,
        key: &[u8],
    ) -> Result<Option<T>, StorageError> {
        match self.meta.get(key).map_err(rd)? {
            Some(b) => Ok(Some(decode(&b).map_err(rd)?)),
            None => Ok(None),
        }
    }
}

/// Makes appended entries durable, then acknowledges them in order: every
/// callback queued before a flush starts is covered by that flush.
async fn flusher<K: Kv>(kv: K, mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(cb) = rx.try_recv() {
            waiting.push(cb);
        }
        let kv = kv.clone();
        let res = match tokio::task::spawn_blocking(move || kv.flush()).await {
            Ok(r) => r.map_err(|e| e.0),
            Err(e) => Err(e.to_string()),
        };
        for cb in waiting {
            cb.log_io_completed(res.clone().map_err(io::Error::other));
        }
    }
}

fn range_keys(range: impl RangeBounds<u64>) -> Option<(Vec<u8>, Option<Vec<u8>>)> {
    let start = match range.start_bound() {
        Bound::Included(s) => *s,
        Bound::Excluded(s) => s.checked_add(1)?,
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(e) => e.checked_add(1),
        Bound::Excluded(e) => Some(*e),
        Bound::Unbounded => None,
    };
    if end.is_some_and(|e| e <= start) {
        return None;
    }
    Some((
        start.to_be_bytes().to_vec(),
        end.map(|e| e.to_be_bytes().to_vec()),
    ))
}

impl<K: Kv> RaftLogReader<TypeConfig> for LogStore<K> {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let Some((start, end)) = range_keys(range) else {
            return Ok(Vec::new());
        };
        if let Some(files) = &self.files {
            let to = |b: Vec<u8>| u64::from_be_bytes(b.try_into().unwrap_or_default());
            let (start, end) = (to(start), end.map(to));
            let recent = self
                .recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(start, end);
            if let Some(entries) = recent {
                return Ok(entries);
            }
            return files
                .read(start, end)
                .map_err(rd)?
                .iter()
                .map(|v| decode::<Entry>(v).map_err(rd))
                .collect();
        }
        self.log
            .range(&start, end.as_deref())
            .map_err(rd)?
            .into_iter()
            .map(|(_, v)| decode::<Entry>(&v).map_err(rd))
            .collect()
    }
}

impl<K: Kv> RaftLogStorage<TypeConfig> for LogStore<K> {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.get_meta(LAST_PURGED)?;
        if let Some(files) = &self.files {
            return Ok(LogState {
                last_purged_log_id,
                last_log_id: files.last_log_id().or(last_purged_log_id),
            });
        }
        let last = match self.log.last().map_err(rd)? {
            Some((_, v)) => Some(decode::<Entry>(&v).map_err(rd)?.log_id),
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        let b = encode(vote).map_err(wr)?;
        self.meta
            .insert(VOTE, &b)
            .map_err(|e| StorageIOError::write_vote(openraft::AnyError::error(e)))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = &committed {
            metrics::commit_index(K::DURABLE, c.index);
            self.committed.store(c.index, Ordering::Relaxed);
        }
        let b = encode(&committed).map_err(wr)?;
        self.meta.insert(COMMITTED, &b).map_err(wr)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let c = self.get_meta::<Option<LogId>>(COMMITTED)?.flatten();
        if let Some(c) = &c {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        Ok(c)
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        if let Some(files) = &self.files {
            let mut encoded = Vec::new();
            let mut appended = Vec::new();
            for e in entries {
                let b = encode_sized(&e, size_hint(&e)).map_err(wr)?;
                appended.push((e, b.len()));
                encoded.push((appended[appended.len() - 1].0.log_id, b));
            }
            files.append(encoded).map_err(wr)?;
            let mut recent = self.recent.lock().unwrap_or_else(|e| e.into_inner());
            for (e, n) in appended {
                recent.push(e, n);
            }
            drop(recent);
            // openraft 0.9 waits for this callback before it does anything
            // else (`RaftCore::append_to_log`), so a separate flusher adds
            // no overlap, only two thread wake-ups per entry (to it and
            // back, the runtime's only worker parking meanwhile). Alone on
            // such a runtime, the append syncs here, on the Raft task; with
            // peers the sync goes to the flusher thread, so that the
            // store runtime's other tasks (Raft RPCs, deliveries between
            // nodes) never wait behind a disk flush. With two workers
            // syncing here measured no better (the other one is woken to
            // take the tasks meanwhile). Either way the entry is
            // acknowledged only once `fdatasync` returned.
            if self.one_worker && self.sole.load(Ordering::Relaxed) {
                callback.log_io_completed(files.sync());
            } else {
                files.flush_then(callback);
            }
            return Ok(());
        }
        let mut changes = Vec::new();
        for e in entries {
            let b = encode(&e).map_err(wr)?;
            changes.push((e.log_id.index.to_be_bytes().to_vec(), Some(b)));
        }
        self.log.write(changes).map_err(wr)?;
        if !K::DURABLE {
            // Nothing to wait for: the entry is as safe as it will get.
            callback.log_io_completed(Ok(()));
            return Ok(());
        }
        // The flusher may be gone only while the runtime shuts down.
        if let Err(e) = self.flusher.send(callback) {
            e.0.log_io_completed(Err(io::Error::other("log flusher stopped")));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        if let Some(files) = &self.files {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .truncate(log_id.index);
            let index = log_id.index;
            let previous = match index.checked_sub(1) {
                Some(p) => match files.read(p, Some(index)).map_err(rd)?.first() {
                    Some(v) => Some(decode::<Entry>(v).map_err(rd)?.log_id),
                    None => self
                        .get_meta::<LogId>(LAST_PURGED)?
                        .filter(|l| l.index == p),
                },
                None => None,
            };
            return files.truncate(index, previous).map_err(wr);
        }
        self.log
            .remove_range(&log_id.index.to_be_bytes(), None)
            .map_err(wr)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point first: a crash in between leaves entries
        // that are merely redundant, never a hole.
        let b = encode(&log_id).map_err(wr)?;
        self.meta.insert(LAST_PURGED, &b).map_err(wr)?;
        if let Some(files) = &self.files {
            self.recent
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .purge(log_id.index);
            // The purge point is durable before any segment is deleted.
            self.flush().await?;
            return files.purge(log_id.index).map_err(wr);
        }
        let end = log_id.index.checked_add(1).map(u64::to_be_bytes);
        self.log
            .remove_range(&0u64.to_be_bytes(), end.as_ref().map(|e| &e[..]))
            .map_err(wr)
    }
}

/// About the encoded size of an entry (its ops' bytes and some framing).
fn size_hint(e: &Entry) -> usize {
    match &e.payload {
        openraft::EntryPayload::Normal(req) => {
            req.writes
                .iter()
                .flatten()
                .map(|op| crate::batcher::op_bytes(op) + 16)
                .sum::<usize>()
                + 64
        }
        _ => 256,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, 1), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(entries: Option<Vec<Entry>>) -> Option<Vec<u64>> {
        entries.map(|v| v.iter().map(|e| e.log_id.index).collect())
    }

    #[test]
    fn recent_entries_are_taken_once_whole_ranges_only_and_forgotten_on_truncate() {
        let mut r = Recent::default();
        for i in 5..10 {
            r.push(entry(i), 10);
        }
        // Not all here: nothing taken.
        assert_eq!(indexes(r.take(4, Some(7))), None);
        assert_eq!(indexes(r.take(8, Some(11))), None);
        assert_eq!(indexes(r.take(6, Some(8))), Some(vec![6, 7]));
        // Taken (with the older 5): a second read goes to the files.
        assert_eq!(indexes(r.take(6, Some(8))), None);
        assert_eq!(r.1, 20);
        r.truncate(9);
        assert_eq!(indexes(r.take(8, None)), Some(vec![8]));
        assert_eq!(r.1, 0);
        // A gap (entries appended after a truncation elsewhere) starts over.
        r.push(entry(12), 10);
        r.push(entry(14), 10);
        assert_eq!(indexes(r.take(12, None)), None);
        assert_eq!(indexes(r.take(14, None)), Some(vec![14]));
        // Bounded in count and bytes.
        for i in 0..(RECENT_ENTRIES as u64 + 5) {
            r.push(entry(100 + i), 1);
        }
        assert_eq!(r.0.len(), RECENT_ENTRIES);
        r.push(entry(100 + RECENT_ENTRIES as u64 + 5), RECENT_BYTES);
        assert_eq!(r.0.len(), 1);
        r.purge(u64::MAX);
        assert_eq!((r.0.len(), r.1), (0, 0));
    }
}
