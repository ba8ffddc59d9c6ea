//! The key-value seam under Raft: the log store and the state machine speak
//! only to these traits, never to sled directly, so a second backend can go
//! behind them (DESIGN.md, "sled is the embedded default, behind a seam").
//!
//! The model is sled's: a database of named trees (ordered byte maps), with
//! atomic batches that may span several trees and an explicit durable flush.
//!
//! It must not know about Raft, key spaces or `Op`s: only bytes in named
//! trees.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, RwLock};

/// A failure of the backend (I/O, corruption, lock held by another process).
#[derive(Debug, Clone, thiserror::Error)]
#[error("kv backend: {0}")]
pub struct KvError(pub String);

pub type KvResult<T> = Result<T, KvError>;

/// One pending change: `Some(value)` sets, `None` removes.
pub type Change = (Vec<u8>, Option<Vec<u8>>);

/// Key-value pairs in key order.
pub type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// An ordered map of bytes to bytes inside a [`Kv`] database.
pub trait KvTree: Clone + Send + Sync + 'static {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>>;
    fn insert(&self, key: &[u8], value: &[u8]) -> KvResult<()>;
    fn remove(&self, key: &[u8]) -> KvResult<()>;
    /// Entries with `start <= key < end` (`end = None`: to the end), ascending.
    fn range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<Pairs>;
    /// At most `limit` entries with `start <= key < end`, ascending, or
    /// with `reverse` descending from the greatest: a page of a long range
    /// reads only that page.
    fn range_limited(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> KvResult<Pairs>;
    /// Number of keys with `start <= key < end` (reads keys only).
    fn count_range(&self, start: &[u8], end: &[u8]) -> KvResult<u64>;
    /// Entries whose key starts with `prefix`, ascending.
    fn scan_prefix(&self, prefix: &[u8]) -> KvResult<Pairs>;
    /// Number of keys starting with `prefix`.
    fn count_prefix(&self, prefix: &[u8]) -> KvResult<u64>;
    /// The entry with the greatest key.
    fn last(&self) -> KvResult<Option<(Vec<u8>, Vec<u8>)>>;
    /// Applies all changes atomically.
    fn write(&self, changes: Vec<Change>) -> KvResult<()>;
    /// Removes `start <= key < end` (`end = None`: to the end) atomically.
    fn remove_range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<()>;
    /// Removes every entry.
    fn clear(&self) -> KvResult<()>;
}

/// A database of named trees.
pub trait Kv: Clone + Send + Sync + 'static {
    type Tree: KvTree;
    /// Whether `flush` makes anything durable. A volatile backend (the
    /// in-memory registry) skips the flush and the thread it would take.
    const DURABLE: bool = true;
    /// Opens the tree `name`, creating it on first use.
    fn tree(&self, name: &str) -> KvResult<Self::Tree>;
    /// Names of all trees that exist.
    fn tree_names(&self) -> KvResult<Vec<String>>;
    /// Applies changes to several trees as one atomic unit, also across a crash.
    fn write_multi(&self, changes: Vec<(Self::Tree, Vec<Change>)>) -> KvResult<()>;
    /// Applies changes key by key, in the order given, with no atomicity:
    /// a crash may leave any prefix of them (never a later change without
    /// the earlier ones). For changes that may be made again after a crash
    /// (the state machine's batches of blind `Put`s and `Delete`s, whose
    /// applied log id is the last change).
    fn write_in_order(&self, changes: Vec<(Self::Tree, Vec<Change>)>) -> KvResult<()> {
        self.write_multi(changes)
    }
    /// Makes everything written so far durable. Blocks on I/O: call it off
    /// the async executor (`spawn_blocking`).
    fn flush(&self) -> KvResult<()>;
}

fn err(e: impl std::fmt::Display) -> KvError {
    KvError(e.to_string())
}

/// sled 0.34, the embedded default.
#[derive(Clone)]
pub struct SledKv {
    db: sled::Db,
    /// One journaled `write_multi` at a time (they share the record).
    journaling: Arc<std::sync::Mutex<()>>,
}

/// sled's page cache; its default (1 GiB) is too much beside a node that
/// counts kilobytes per session.
const SLED_CACHE_BYTES: u64 = 128 << 20;

/// How often sled writes and syncs what changed on its own (its default
/// is 500 ms). Nothing here needs it for durability: the Raft log is
/// synced on its own (`store::filelog`), what must be durable at once is
/// flushed explicitly (vote, purge point, snapshots), and after a crash
/// openraft applies again the entries the state lost. The period only
/// bounds that replay; each flush wakes sled's seven I/O threads.
const SLED_FLUSH_EVERY_MS: u64 = 5_000;

impl SledKv {
    pub fn open(path: &Path) -> KvResult<SledKv> {
        let db = sled::Config::new()
            .path(path)
            .cache_capacity(SLED_CACHE_BYTES)
            .flush_every_ms(Some(SLED_FLUSH_EVERY_MS))
            .open()
            .map_err(err)?;
        let kv = SledKv {
            db,
            journaling: Arc::default(),
        };
        kv.finish_journaled()?;
        Ok(kv)
    }

    fn journal(&self) -> KvResult<sled::Tree> {
        self.db.open_tree(JOURNAL_TREE).map_err(err)
    }

    /// Redoes a journaled `write_multi` that a crash interrupted (its
    /// changes are final values: applying them again is harmless).
    fn finish_journaled(&self) -> KvResult<()> {
        let journal = self.journal()?;
        let Some(bytes) = journal.get(JOURNAL_KEY).map_err(err)? else {
            return Ok(());
        };
        let mut named = Vec::new();
        for (name, changes) in journal::decode(&bytes).map_err(err)? {
            named.push((self.db.open_tree(name).map_err(err)?, changes));
        }
        tracing::info!(
            trees = named.len(),
            "finishing a multi-tree write that a crash interrupted"
        );
        apply_each(&named)?;
        journal.remove(JOURNAL_KEY).map_err(err)?;
        Ok(())
    }
}

/// The tree holding the changes of the `write_multi` being applied.
const JOURNAL_TREE: &str = "__starling_journal";
const JOURNAL_KEY: &[u8] = b"pending";

/// A `write_multi` whose journal record would be larger than this is
/// written as a sled transaction instead: a large write amortises the
/// transaction's cost, and sled would store such a record as a blob file.
const MAX_JOURNALED_BYTES: usize = 64 << 10;

/// A tree and the changes (key, `Some(value)` sets, `None` removes) for it.
type TreeChanges<C> = (sled::Tree, Vec<(C, Option<C>)>);

fn apply_each<C: AsRef<[u8]>>(named: &[TreeChanges<C>]) -> KvResult<()> {
    for (tree, changes) in named {
        for (k, v) in changes {
            match v {
                Some(v) => tree.insert(k.as_ref(), v.as_ref()).map(drop),
                None => tree.remove(k.as_ref()).map(drop),
            }
            .map_err(err)?;
        }
    }
    Ok(())
}

/// The journal record: a tree count, then per tree its name and changes,
/// each length-prefixed (u32, big endian), a change's value after a tag
/// byte (1: set, 0: remove).
mod journal {
    use super::Change;

    pub fn encoded_len(changes: &[(&[u8], &[Change])]) -> usize {
        4 + changes
            .iter()
            .map(|(name, cs)| {
                8 + name.len()
                    + cs.iter()
                        .map(|(k, v)| 5 + k.len() + v.as_ref().map_or(0, |v| 4 + v.len()))
                        .sum::<usize>()
            })
            .sum::<usize>()
    }

    pub fn encode(changes: &[(&[u8], &[Change])]) -> Vec<u8> {
        let mut out = Vec::with_capacity(encoded_len(changes));
        let len = |out: &mut Vec<u8>, n: usize| out.extend_from_slice(&(n as u32).to_be_bytes());
        len(&mut out, changes.len());
        for (name, cs) in changes {
            len(&mut out, name.len());
            out.extend_from_slice(name);
            len(&mut out, cs.len());
            for (k, v) in cs.iter() {
                len(&mut out, k.len());
                out.extend_from_slice(k);
                match v {
                    Some(v) => {
                        out.push(1);
                        len(&mut out, v.len());
                        out.extend_from_slice(v);
                    }
                    None => out.push(0),
                }
            }
        }
        out
    }

    struct Reader<'a>(&'a [u8]);

    impl<'a> Reader<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("journal record cut short".into());
            }
            let (head, rest) = self.0.split_at(n);
            self.0 = rest;
            Ok(head)
        }

        fn len(&mut self) -> Result<usize, String> {
            let b = self.take(4)?;
            Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
        }

        fn bytes(&mut self) -> Result<Vec<u8>, String> {
            let n = self.len()?;
            Ok(self.take(n)?.to_vec())
        }
    }

    /// Tree names and their changes.
    pub type Decoded = Vec<(Vec<u8>, Vec<Change>)>;

    pub fn decode(b: &[u8]) -> Result<Decoded, String> {
        let mut r = Reader(b);
        let trees = r.len()?;
        let mut out = Vec::new();
        for _ in 0..trees {
            let name = r.bytes()?;
            let n = r.len()?;
            let mut cs = Vec::new();
            for _ in 0..n {
                let k = r.bytes()?;
                let v = match r.take(1)?[0] {
                    1 => Some(r.bytes()?),
                    0 => None,
                    t => return Err(format!("journal record: bad tag {t}")),
                };
                cs.push((k, v));
            }
            out.push((name, cs));
        }
        if !r.0.is_empty() {
            return Err("journal record: trailing bytes".into());
        }
        Ok(out)
    }
}

#[derive(Clone)]
pub struct SledTree {
    tree: sled::Tree,
}

fn pairs(it: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>>) -> KvResult<Pairs> {
    it.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(err))
        .collect()
}

fn bounds<'a>(start: &'a [u8], end: Option<&'a [u8]>) -> (Bound<&'a [u8]>, Bound<&'a [u8]>) {
    (
        Bound::Included(start),
        end.map_or(Bound::Unbounded, Bound::Excluded),
    )
}

impl KvTree for SledTree {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.tree.get(key).map_err(err)?.map(|v| v.to_vec()))
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> KvResult<()> {
        self.tree.insert(key, value).map_err(err)?;
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> KvResult<()> {
        self.tree.remove(key).map_err(err)?;
        Ok(())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<Pairs> {
        pairs(self.tree.range::<&[u8], _>(bounds(start, end)))
    }

    fn range_limited(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> KvResult<Pairs> {
        if end <= start {
            return Ok(Vec::new());
        }
        let range = self.tree.range::<&[u8], _>(start..end);
        if reverse {
            pairs(range.rev().take(limit))
        } else {
            pairs(range.take(limit))
        }
    }

    fn count_range(&self, start: &[u8], end: &[u8]) -> KvResult<u64> {
        if end <= start {
            return Ok(0);
        }
        let mut n = 0;
        for k in self.tree.range::<&[u8], _>(start..end).keys() {
            k.map_err(err)?;
            n += 1;
        }
        Ok(n)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvResult<Pairs> {
        pairs(self.tree.scan_prefix(prefix))
    }

    fn count_prefix(&self, prefix: &[u8]) -> KvResult<u64> {
        let mut n = 0;
        for k in self.tree.scan_prefix(prefix).keys() {
            k.map_err(err)?;
            n += 1;
        }
        Ok(n)
    }

    fn last(&self) -> KvResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .tree
            .last()
            .map_err(err)?
            .map(|(k, v)| (k.to_vec(), v.to_vec())))
    }

    fn write(&self, changes: Vec<Change>) -> KvResult<()> {
        self.tree.apply_batch(batch(changes)).map_err(err)
    }

    fn remove_range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<()> {
        let mut b = sled::Batch::default();
        for k in self.tree.range::<&[u8], _>(bounds(start, end)).keys() {
            b.remove(k.map_err(err)?);
        }
        self.tree.apply_batch(b).map_err(err)
    }

    fn clear(&self) -> KvResult<()> {
        self.tree.clear().map_err(err)
    }
}

fn batch(changes: Vec<Change>) -> sled::Batch {
    let mut b = sled::Batch::default();
    for (k, v) in changes {
        match v {
            Some(v) => b.insert(k, v),
            None => b.remove(k),
        }
    }
    b
}

impl Kv for SledKv {
    type Tree = SledTree;

    fn tree(&self, name: &str) -> KvResult<SledTree> {
        Ok(SledTree {
            tree: self.db.open_tree(name).map_err(err)?,
        })
    }

    fn tree_names(&self) -> KvResult<Vec<String>> {
        Ok(self
            .db
            .tree_names()
            .into_iter()
            .map(|n| String::from_utf8_lossy(&n).into_owned())
            .collect())
    }

    /// Atomic across a crash without a sled batch or transaction: each of
    /// those rolls sled's I/O buffer through its thread pool, which wakes
    /// all seven of its threads (`notify_all`) twice per write — most of
    /// the cost of applying a Raft entry. Instead the changes go first into
    /// one journal record, then into their trees one by one, then the
    /// record goes. sled recovers a prefix of its log: a crash leaves
    /// either no record and no change of this write, or the record, which
    /// `open` applies again (the changes are final values).
    fn write_multi(&self, changes: Vec<(SledTree, Vec<Change>)>) -> KvResult<()> {
        use sled::transaction::{TransactionError, Transactional};
        if changes.is_empty() {
            return Ok(());
        }
        let names: Vec<sled::IVec> = changes.iter().map(|(t, _)| t.tree.name()).collect();
        let listed: Vec<(&[u8], &[Change])> = names
            .iter()
            .zip(&changes)
            .map(|(n, (_, c))| (n.as_ref(), c.as_slice()))
            .collect();
        if journal::encoded_len(&listed) <= MAX_JOURNALED_BYTES {
            let record = journal::encode(&listed);
            let _one = self.journaling.lock().unwrap_or_else(|e| e.into_inner());
            let journal = self.journal()?;
            journal.insert(JOURNAL_KEY, record).map_err(err)?;
            let named: Vec<(sled::Tree, Vec<Change>)> =
                changes.into_iter().map(|(t, c)| (t.tree, c)).collect();
            apply_each(&named)?;
            journal.remove(JOURNAL_KEY).map_err(err)?;
            return Ok(());
        }
        if changes.len() == 1 {
            let (t, c) = changes.into_iter().next().expect("one");
            return t.write(c);
        }
        let trees: Vec<sled::Tree> = changes.iter().map(|(t, _)| t.tree.clone()).collect();
        let batches: Vec<sled::Batch> = changes.into_iter().map(|(_, c)| batch(c)).collect();
        trees
            .as_slice()
            .transaction(|views| {
                for (view, b) in views.iter().zip(&batches) {
                    view.apply_batch(b)?;
                }
                Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
            })
            .map_err(|e: TransactionError<()>| err(format!("{e:?}")))
    }

    /// sled recovers a prefix of its log (the premise of `write_multi`'s
    /// journal too): changes made one by one survive a crash as a prefix.
    fn write_in_order(&self, changes: Vec<(SledTree, Vec<Change>)>) -> KvResult<()> {
        for (t, c) in changes {
            apply_each(&[(t.tree, c)])?;
        }
        Ok(())
    }

    fn flush(&self) -> KvResult<()> {
        self.db.flush().map_err(err)?;
        Ok(())
    }
}

/// An in-memory database: the registry group's log and state machine
/// (soft state, rebuilt from the nodes' sessions after a restart). Trees
/// are ordered maps behind a lock each; `flush` does nothing.
#[derive(Clone, Default)]
pub struct MemKv {
    trees: Arc<RwLock<BTreeMap<String, MemTree>>>,
}

#[derive(Clone, Default)]
pub struct MemTree {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemTree {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write_map(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.map.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply(map: &mut BTreeMap<Vec<u8>, Vec<u8>>, changes: Vec<Change>) {
    for (k, v) in changes {
        match v {
            Some(v) => {
                map.insert(k, v);
            }
            None => {
                map.remove(&k);
            }
        }
    }
}

fn owned_bounds(start: &[u8], end: Option<&[u8]>) -> (Bound<Vec<u8>>, Bound<Vec<u8>>) {
    (
        Bound::Included(start.to_vec()),
        end.map_or(Bound::Unbounded, |e| Bound::Excluded(e.to_vec())),
    )
}

impl KvTree for MemTree {
    fn get(&self, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        Ok(self.read().get(key).cloned())
    }

    fn insert(&self, key: &[u8], value: &[u8]) -> KvResult<()> {
        self.write_map().insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, key: &[u8]) -> KvResult<()> {
        self.write_map().remove(key);
        Ok(())
    }

    fn range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<Pairs> {
        if end.is_some_and(|e| e <= start) {
            return Ok(Vec::new());
        }
        Ok(self
            .read()
            .range(owned_bounds(start, end))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn range_limited(
        &self,
        start: &[u8],
        end: &[u8],
        reverse: bool,
        limit: usize,
    ) -> KvResult<Pairs> {
        if end <= start {
            return Ok(Vec::new());
        }
        let map = self.read();
        let range = map.range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)));
        let pair = |(k, v): (&Vec<u8>, &Vec<u8>)| (k.clone(), v.clone());
        Ok(if reverse {
            range.rev().take(limit).map(pair).collect()
        } else {
            range.take(limit).map(pair).collect()
        })
    }

    fn count_range(&self, start: &[u8], end: &[u8]) -> KvResult<u64> {
        if end <= start {
            return Ok(0);
        }
        Ok(self
            .read()
            .range::<[u8], _>((Bound::Included(start), Bound::Excluded(end)))
            .count() as u64)
    }

    fn scan_prefix(&self, prefix: &[u8]) -> KvResult<Pairs> {
        Ok(self
            .read()
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    fn count_prefix(&self, prefix: &[u8]) -> KvResult<u64> {
        Ok(self
            .read()
            .range::<[u8], _>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .count() as u64)
    }

    fn last(&self) -> KvResult<Option<(Vec<u8>, Vec<u8>)>> {
        Ok(self
            .read()
            .last_key_value()
            .map(|(k, v)| (k.clone(), v.clone())))
    }

    fn write(&self, changes: Vec<Change>) -> KvResult<()> {
        apply(&mut self.write_map(), changes);
        Ok(())
    }

    fn remove_range(&self, start: &[u8], end: Option<&[u8]>) -> KvResult<()> {
        if end.is_some_and(|e| e <= start) {
            return Ok(());
        }
        let mut map = self.write_map();
        let keys: Vec<Vec<u8>> = map
            .range(owned_bounds(start, end))
            .map(|(k, _)| k.clone())
            .collect();
        for k in keys {
            map.remove(&k);
        }
        Ok(())
    }

    fn clear(&self) -> KvResult<()> {
        self.write_map().clear();
        Ok(())
    }
}

impl Kv for MemKv {
    type Tree = MemTree;
    const DURABLE: bool = false;

    fn tree(&self, name: &str) -> KvResult<MemTree> {
        if let Some(t) = self
            .trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
        {
            return Ok(t.clone());
        }
        let mut trees = self.trees.write().unwrap_or_else(|e| e.into_inner());
        Ok(trees.entry(name.to_string()).or_default().clone())
    }

    fn tree_names(&self) -> KvResult<Vec<String>> {
        Ok(self
            .trees
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect())
    }

    /// Atomic for readers of one tree at a time: a reader may see one tree
    /// changed before another. The state machine applies an entry's writes
    /// here while nothing else writes, and readers of the registry read one
    /// key space at a time.
    fn write_multi(&self, changes: Vec<(MemTree, Vec<Change>)>) -> KvResult<()> {
        for (t, c) in changes {
            t.write(c)?;
        }
        Ok(())
    }

    fn flush(&self) -> KvResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_tree_write_interrupted_by_a_crash_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let kv = SledKv::open(dir.path()).unwrap();
            let a = kv.tree("a").unwrap();
            a.insert(b"gone", b"0").unwrap();
            // What a crash after the journal record and the first change
            // leaves behind.
            let in_a: Vec<Change> = vec![
                (b"k".to_vec(), Some(b"1".to_vec())),
                (b"gone".to_vec(), None),
            ];
            let in_b: Vec<Change> = vec![(b"y".to_vec(), Some(b"2".to_vec()))];
            let changes: Vec<(&[u8], &[Change])> = vec![(b"a", &in_a), (b"b", &in_b)];
            kv.journal()
                .unwrap()
                .insert(JOURNAL_KEY, journal::encode(&changes))
                .unwrap();
            a.insert(b"k", b"1").unwrap();
            kv.flush().unwrap();
        }
        let kv = SledKv::open(dir.path()).unwrap();
        let (a, b) = (kv.tree("a").unwrap(), kv.tree("b").unwrap());
        assert_eq!(a.get(b"k").unwrap(), Some(b"1".to_vec()));
        assert_eq!(a.get(b"gone").unwrap(), None);
        assert_eq!(b.get(b"y").unwrap(), Some(b"2".to_vec()));
        assert_eq!(kv.journal().unwrap().get(JOURNAL_KEY).unwrap(), None);
    }

    #[test]
    fn journal_records_decode_to_what_was_encoded_and_refuse_damage() {
        let cs: Vec<Change> = vec![
            (b"k".to_vec(), Some(vec![7; 300])),
            (Vec::new(), None),
            (b"e".to_vec(), Some(Vec::new())),
        ];
        let listed: Vec<(&[u8], &[Change])> = vec![(b"t1", &cs), (b"", &[])];
        let bytes = journal::encode(&listed);
        assert_eq!(bytes.len(), journal::encoded_len(&listed));
        let back = journal::decode(&bytes).unwrap();
        assert_eq!(
            back,
            vec![(b"t1".to_vec(), cs.clone()), (Vec::new(), Vec::new())]
        );
        for cut in [1, bytes.len() / 2, bytes.len() - 1] {
            assert!(journal::decode(&bytes[..cut]).is_err());
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(journal::decode(&longer).is_err());
    }

    #[test]
    fn large_multi_tree_writes_still_apply_and_leave_no_journal() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledKv::open(dir.path()).unwrap();
        let (a, b) = (kv.tree("a").unwrap(), kv.tree("b").unwrap());
        let big: Vec<Change> = (0..100u32)
            .map(|i| (i.to_be_bytes().to_vec(), Some(vec![1; 1024])))
            .collect();
        kv.write_multi(vec![
            (a.clone(), big),
            (b.clone(), vec![(b"m".to_vec(), Some(b"1".to_vec()))]),
        ])
        .unwrap();
        assert_eq!(a.count_prefix(b"").unwrap(), 100);
        assert_eq!(b.get(b"m").unwrap(), Some(b"1".to_vec()));
        assert_eq!(kv.journal().unwrap().get(JOURNAL_KEY).unwrap(), None);
    }

    #[test]
    fn trees_ranges_and_multi_tree_batches() {
        let dir = tempfile::tempdir().unwrap();
        let kv = SledKv::open(dir.path()).unwrap();
        let a = kv.tree("a").unwrap();
        let b = kv.tree("b").unwrap();
        a.insert(b"k1", b"1").unwrap();
        a.insert(b"k2", b"2").unwrap();
        a.insert(b"x", b"3").unwrap();
        assert_eq!(a.count_prefix(b"k").unwrap(), 2);
        assert_eq!(a.range(b"k2", None).unwrap().len(), 2);
        assert_eq!(a.range(b"k1", Some(b"k2")).unwrap().len(), 1);
        kv.write_multi(vec![
            (a.clone(), vec![(b"k1".to_vec(), None)]),
            (b.clone(), vec![(b"y".to_vec(), Some(b"4".to_vec()))]),
        ])
        .unwrap();
        assert_eq!(a.get(b"k1").unwrap(), None);
        assert_eq!(b.get(b"y").unwrap(), Some(b"4".to_vec()));
        a.remove_range(b"k", Some(b"l")).unwrap();
        assert_eq!(a.scan_prefix(b"").unwrap().len(), 1);
        assert_eq!(a.last().unwrap().unwrap().0, b"x".to_vec());
        assert!(kv.tree_names().unwrap().contains(&"b".to_string()));
        kv.flush().unwrap();
    }

    #[test]
    fn memory_backend_behaves_like_sled() {
        let dir = tempfile::tempdir().unwrap();
        let sled = SledKv::open(dir.path()).unwrap();
        let mem = MemKv::default();
        fn exercise<K: Kv>(kv: &K) -> Vec<String> {
            let a = kv.tree("a").unwrap();
            let b = kv.tree("b").unwrap();
            for k in [&b"k1"[..], b"k2", b"k\xff", b"x", b"j"] {
                a.insert(k, b"v").unwrap();
            }
            a.remove(b"j").unwrap();
            kv.write_multi(vec![
                (a.clone(), vec![(b"k1".to_vec(), None)]),
                (b.clone(), vec![(b"y".to_vec(), Some(b"4".to_vec()))]),
            ])
            .unwrap();
            let mut out = vec![
                format!("{:?}", a.scan_prefix(b"k").unwrap()),
                format!("{}", a.count_prefix(b"k").unwrap()),
                format!("{:?}", a.range(b"k2", Some(b"x")).unwrap()),
                format!("{:?}", a.range(b"x", Some(b"k")).unwrap()),
                format!("{:?}", a.range_limited(b"k", b"l", false, 1).unwrap()),
                format!("{:?}", a.range_limited(b"k", b"l", true, 2).unwrap()),
                format!("{:?}", a.range_limited(b"k", b"zz", true, 9).unwrap()),
                format!("{:?}", a.range_limited(b"x", b"k", false, 9).unwrap()),
                format!("{}", a.count_range(b"k", b"l").unwrap()),
                format!("{}", a.count_range(b"l", b"k").unwrap()),
                format!("{:?}", a.last().unwrap()),
                format!("{:?}", b.get(b"y").unwrap()),
            ];
            a.remove_range(b"k", Some(b"l")).unwrap();
            out.push(format!("{:?}", a.scan_prefix(b"").unwrap()));
            a.clear().unwrap();
            out.push(format!("{:?}", a.last().unwrap()));
            out
        }
        assert_eq!(exercise(&sled), exercise(&mem));
        assert!(mem.tree_names().unwrap().contains(&"b".to_string()));
    }
}
