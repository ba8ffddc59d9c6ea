//! The durable group's Raft log entries in append-only segment files.
//!
//! Why not sled: every fsync of sled 0.34 goes through its I/O thread pool,
//! which wakes all of its seven threads for each task (`notify_all`), and
//! writes whatever the state machine changed since the last one. Measured
//! on the chat bench with the archive on (one durable entry per message):
//! 46 context switches per message against 2.6 with the archive off. Here
//! an append is one `write` to the current segment and a flush is one
//! `fdatasync`: on the appending task itself when the node is its group's
//! only member and the store runtime has one worker (`LogStore::append`: openraft 0.9 waits for each append's
//! flush anyway, and a hand-off costs two thread wake-ups per entry), else
//! on a dedicated thread, shared by every append queued meanwhile.
//!
//! Layout: `<dir>/<first index, 20 digits>.log`; each record is
//! `len: u32 | crc32(index, payload): u32 | index: u64 | payload` (little
//! endian), the payload the encoded entry. A segment is closed (synced)
//! before the next one is created, so only the last one can end in a torn
//! record; opening cuts it there. Entries up to the purge point may still
//! be in the oldest segment: they are skipped when it is read back, and the
//! segment is deleted once all of it is purged.
//!
//! Vote, committed index and purge point stay in the key-value store's
//! `raft_meta` tree (`log.rs`): they change rarely.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, mpsc};

use openraft::storage::LogFlushed;

use crate::codec::decode;
use crate::raft::{Entry, LogId, TypeConfig};

/// A segment is closed once it passes this size.
const SEGMENT_BYTES: u64 = 64 << 20;
const HEADER: usize = 16;

/// Zeros written ahead of the records at a time. An `fdatasync` of a
/// file that grew must also write its inode (its size), a second
/// synchronous I/O; records written over zeros already on disk change no
/// metadata, and the sync is one I/O: measured on this VM's ext4, 48 →
/// 31 µs of CPU and 115 → 84 µs of wall time per append and sync. Only
/// the sync after a fill (every 1 MiB of log) writes the inode, and the
/// zeros with it. A zero header ends the records when the log is read
/// back (index 0 is never a record's).
const PREFILL_BYTES: u64 = 1 << 20;

struct Segment {
    first: u64,
    /// The index its next record must have.
    next: u64,
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Where the zeros written ahead of the records end (`>= len`).
    filled: u64,
}

/// Writes zeros over `from..to` of `file`.
fn zero_fill(file: &File, from: u64, to: u64) -> io::Result<()> {
    static ZEROS: [u8; 64 << 10] = [0; 64 << 10];
    let mut off = from;
    while off < to {
        let n = (to - off).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], off)?;
        off += n as u64;
    }
    Ok(())
}

/// Where one entry's payload is.
#[derive(Clone)]
struct Loc {
    file: Arc<File>,
    off: u64,
    len: u32,
}

struct Inner {
    segments: Vec<Segment>,
    /// The entries kept, contiguous from index `first`.
    first: u64,
    locs: VecDeque<Loc>,
    last: Option<LogId>,
}

pub struct FileLog {
    dir: PathBuf,
    inner: Mutex<Inner>,
    flusher: mpsc::Sender<LogFlushed<TypeConfig>>,
    /// The segment appends go to: what a flush syncs (a segment is synced
    /// when the next one starts).
    sync: Arc<Mutex<Option<Arc<File>>>>,
}

fn segment_name(first: u64) -> String {
    format!("{first:020}.log")
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn corrupt(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl FileLog {
    /// Opens (or creates) the log in `dir`, dropping a torn last record;
    /// entries at or below `purged` are not kept.
    pub fn open(dir: &Path, purged: Option<u64>) -> io::Result<FileLog> {
        fs::create_dir_all(dir)?;
        let mut names: Vec<(u64, PathBuf)> = Vec::new();
        for e in fs::read_dir(dir)? {
            let path = e?.path();
            let Some(first) = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".log"))
                .and_then(|n| n.parse::<u64>().ok())
            else {
                continue;
            };
            names.push((first, path));
        }
        names.sort();
        let keep_from = purged.map_or(0, |p| p + 1);
        let mut inner = Inner {
            segments: Vec::new(),
            first: keep_from.max(1),
            locs: VecDeque::new(),
            last: None,
        };
        let count = names.len();
        for (i, (first, path)) in names.into_iter().enumerate() {
            let file = Arc::new(OpenOptions::new().read(true).write(true).open(&path)?);
            let data = fs::read(&path)?;
            let mut off = 0usize;
            let mut expect = first;
            let mut last_payload: Option<(usize, usize)> = None;
            while off + HEADER <= data.len() {
                let len = u32::from_le_bytes(data[off..off + 4].try_into().unwrap()) as usize;
                let sum = u32::from_le_bytes(data[off + 4..off + 8].try_into().unwrap());
                let index = u64::from_le_bytes(data[off + 8..off + 16].try_into().unwrap());
                let start = off + HEADER;
                if start + len > data.len()
                    || index != expect
                    || crc(index, &data[start..start + len]) != sum
                {
                    break;
                }
                if index >= keep_from {
                    // Entries before a gap (the log restarted after a
                    // snapshot) are not kept.
                    if !inner.locs.is_empty() && index != inner.first + inner.locs.len() as u64 {
                        inner.locs.clear();
                    }
                    if inner.locs.is_empty() {
                        inner.first = index;
                    }
                    inner.locs.push_back(Loc {
                        file: file.clone(),
                        off: start as u64,
                        len: len as u32,
                    });
                    last_payload = Some((start, len));
                }
                expect += 1;
                off = start + len;
            }
            // Zeros written ahead of the records (`PREFILL_BYTES`) end
            // the last segment: nothing was torn there.
            let zeros = data[off..].iter().all(|b| *b == 0);
            let mut filled = data.len() as u64;
            if off < data.len() && !(zeros && i + 1 == count) {
                if i + 1 < count {
                    return Err(corrupt(format!(
                        "raft log segment {} is damaged at byte {off} and is not the last",
                        path.display()
                    )));
                }
                // A record torn by a crash: it was never acknowledged.
                file.set_len(off as u64)?;
                file.sync_all()?;
                filled = off as u64;
            }
            if let Some((s, l)) = last_payload {
                let e: Entry = decode(&data[s..s + l]).map_err(|e| corrupt(e.to_string()))?;
                inner.last = Some(e.log_id);
            }
            inner.segments.push(Segment {
                first,
                next: expect,
                path,
                file,
                len: off as u64,
                filled,
            });
        }
        let (tx, rx) = mpsc::channel::<LogFlushed<TypeConfig>>();
        let sync = Arc::new(Mutex::new(inner.segments.last().map(|s| s.file.clone())));
        let target = sync.clone();
        std::thread::Builder::new()
            .name("raft-log-sync".into())
            .spawn(move || flusher(target, rx))?;
        Ok(FileLog {
            dir: dir.to_path_buf(),
            inner: Mutex::new(inner),
            flusher: tx,
            sync,
        })
    }

    pub fn last_log_id(&self) -> Option<LogId> {
        self.inner.lock().unwrap().last
    }

    pub fn is_empty(&self) -> bool {
        let inner = self.inner.lock().unwrap();
        inner.segments.is_empty()
    }

    /// Appends encoded entries (`(log id, payload)`, in index order, the
    /// first following the last kept one). Written, not yet durable.
    pub fn append(&self, entries: Vec<(LogId, Vec<u8>)>) -> io::Result<()> {
        let Some(first) = entries.first().map(|(id, _)| id.index) else {
            return Ok(());
        };
        let mut inner = self.inner.lock().unwrap();
        let next = inner.first + inner.locs.len() as u64;
        if !inner.locs.is_empty() && first != next {
            return Err(corrupt(format!(
                "append at {first}, the log ends before {next}"
            )));
        }
        if inner.locs.is_empty() {
            inner.first = first;
        }
        // A new segment when the current one is full, or when the log
        // goes on after a gap (a snapshot replaced what was before).
        let needs_segment = inner
            .segments
            .last()
            .is_none_or(|s| s.len >= SEGMENT_BYTES || s.next != first);
        if needs_segment {
            self.roll(&mut inner, first)?;
        }
        let size: usize = entries.iter().map(|(_, p)| HEADER + p.len()).sum();
        let mut buf = Vec::with_capacity(size);
        let seg = inner.segments.last().expect("a segment");
        let file = seg.file.clone();
        let base = seg.len;
        let mut locs = Vec::with_capacity(entries.len());
        let mut last = None;
        for (id, payload) in &entries {
            let len = u32::try_from(payload.len())
                .map_err(|_| corrupt("raft entry over 4 GiB".into()))?;
            buf.extend_from_slice(&len.to_le_bytes());
            buf.extend_from_slice(&crc(id.index, payload).to_le_bytes());
            buf.extend_from_slice(&id.index.to_le_bytes());
            let off = base + buf.len() as u64;
            buf.extend_from_slice(payload);
            locs.push(Loc {
                file: file.clone(),
                off,
                len,
            });
            last = Some(*id);
        }
        file.write_all_at(&buf, base)?;
        let end = base + buf.len() as u64;
        let refill = end > seg.filled;
        if refill {
            // The zeros go with the next sync, which is then the only one
            // to write the inode until the log passes them.
            zero_fill(&file, end, end + PREFILL_BYTES)?;
        }
        let seg = inner.segments.last_mut().expect("a segment");
        if refill {
            seg.filled = end + PREFILL_BYTES;
        }
        seg.len += buf.len() as u64;
        seg.next = first + entries.len() as u64;
        inner.locs.extend(locs);
        inner.last = last;
        Ok(())
    }

    /// Closes the current segment (synced) and starts one at `first`.
    fn roll(&self, inner: &mut Inner, first: u64) -> io::Result<()> {
        if let Some(s) = inner.segments.last_mut() {
            // Only the last segment may end in zeros (`open`); durably
            // cut before the next one exists.
            if s.filled > s.len {
                s.file.set_len(s.len)?;
                s.filled = s.len;
                s.file.sync_all()?;
            } else {
                s.file.sync_data()?;
            }
        }
        let path = self.dir.join(segment_name(first));
        let file = Arc::new(
            OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?,
        );
        sync_dir(&self.dir)?;
        *self.sync.lock().unwrap() = Some(file.clone());
        inner.segments.push(Segment {
            first,
            next: first,
            path,
            file,
            len: 0,
            filled: 0,
        });
        Ok(())
    }

    /// Makes everything appended so far durable, now.
    pub fn sync(&self) -> io::Result<()> {
        match self.sync.lock().unwrap().clone() {
            Some(f) => f.sync_data(),
            None => Ok(()),
        }
    }

    /// Acknowledges `callback` once everything appended so far is durable.
    pub fn flush_then(&self, callback: LogFlushed<TypeConfig>) {
        if let Err(e) = self.flusher.send(callback) {
            e.0.log_io_completed(Err(io::Error::other("raft log flusher stopped")));
        }
    }

    /// The payloads of the kept entries with indexes in `start..end`.
    pub fn read(&self, start: u64, end: Option<u64>) -> io::Result<Vec<Vec<u8>>> {
        let locs: Vec<Loc> = {
            let inner = self.inner.lock().unwrap();
            let kept_end = inner.first + inner.locs.len() as u64;
            let lo = start.max(inner.first);
            let hi = end.map_or(kept_end, |e| e.min(kept_end));
            if lo >= hi {
                return Ok(Vec::new());
            }
            let a = (lo - inner.first) as usize;
            let b = (hi - inner.first) as usize;
            inner.locs.range(a..b).cloned().collect()
        };
        locs.into_iter()
            .map(|l| {
                let mut buf = vec![0u8; l.len as usize];
                l.file.read_exact_at(&mut buf, l.off)?;
                Ok(buf)
            })
            .collect()
    }

    /// Removes the entries from `index` on; `previous` is the log id of
    /// the one before it (none when nothing is left).
    pub fn truncate(&self, index: u64, previous: Option<LogId>) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        if index < inner.first {
            inner.locs.clear();
        } else {
            let p = (index - inner.first) as usize;
            if p >= inner.locs.len() {
                return Ok(());
            }
            inner.locs.truncate(p);
        }
        // The segment holding `index` is cut at its record; later ones go.
        while let Some(s) = inner.segments.last() {
            if s.first > index && inner.segments.len() > 1 {
                let s = inner.segments.pop().expect("a segment");
                fs::remove_file(&s.path)?;
                continue;
            }
            break;
        }
        if let Some(s) = inner.segments.last_mut() {
            let cut = if index <= s.first {
                0
            } else {
                // Scan the headers from the segment's start.
                let mut off = 0u64;
                let mut i = s.first;
                let mut head = [0u8; HEADER];
                while i < index && off < s.len {
                    s.file.read_exact_at(&mut head, off)?;
                    let len = u32::from_le_bytes(head[0..4].try_into().unwrap()) as u64;
                    off += HEADER as u64 + len;
                    i += 1;
                }
                off
            };
            s.file.set_len(cut)?;
            s.len = cut;
            s.filled = cut;
            s.next = index.max(s.first);
            *self.sync.lock().unwrap() = Some(s.file.clone());
        }
        inner.last = previous;
        Ok(())
    }

    /// Forgets the entries up to `index` (the caller recorded the purge
    /// point durably first) and deletes the segments wholly below it.
    pub fn purge(&self, index: u64) -> io::Result<()> {
        let mut inner = self.inner.lock().unwrap();
        while inner.first <= index && !inner.locs.is_empty() {
            inner.locs.pop_front();
            inner.first += 1;
        }
        if inner.locs.is_empty() {
            inner.first = index + 1;
        }
        if inner.last.is_some_and(|l| l.index <= index) {
            inner.last = None;
        }
        // A segment may go when the next one starts at or below index + 1.
        while inner.segments.len() > 1 && inner.segments[1].first <= index + 1 {
            let s = inner.segments.remove(0);
            fs::remove_file(&s.path)?;
        }
        Ok(())
    }
}

/// Makes appended entries durable, then acknowledges them in order: every
/// callback queued before a sync starts is covered by that sync.
fn flusher(target: Arc<Mutex<Option<Arc<File>>>>, rx: mpsc::Receiver<LogFlushed<TypeConfig>>) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        while let Ok(cb) = rx.try_recv() {
            waiting.push(cb);
        }
        let file = target.lock().unwrap().clone();
        let res = match file {
            Some(f) => f.sync_data().map_err(|e| e.to_string()),
            None => Ok(()),
        };
        for cb in waiting {
            cb.log_io_completed(res.clone().map_err(io::Error::other));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::encode;
    use openraft::{CommittedLeaderId, EntryPayload};

    fn entry(term: u64, index: u64) -> (LogId, Vec<u8>) {
        let log_id = LogId::new(CommittedLeaderId::new(term, 1), index);
        let e = Entry {
            log_id,
            payload: EntryPayload::Blank,
        };
        (log_id, encode(&e).unwrap())
    }

    fn indexes(log: &FileLog, from: u64) -> Vec<u64> {
        log.read(from, None)
            .unwrap()
            .iter()
            .map(|b| decode::<Entry>(b).unwrap().log_id.index)
            .collect()
    }

    #[test]
    fn entries_survive_reopening_and_a_torn_tail_is_cut() {
        let dir = tempfile::tempdir().unwrap();
        let end = {
            let log = FileLog::open(dir.path(), None).unwrap();
            log.append((1..=3).map(|i| entry(1, i)).collect()).unwrap();
            log.append(vec![entry(2, 4)]).unwrap();
            log.sync().unwrap();
            log.inner.lock().unwrap().segments[0].len
        };
        // A crash in the middle of the next record's write (over the
        // zeros written ahead).
        let seg = dir.path().join(segment_name(1));
        let f = OpenOptions::new().write(true).open(&seg).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2, 3], end).unwrap();
        drop(f);
        let log = FileLog::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&log, 0), vec![1, 2, 3, 4]);
        assert_eq!(log.last_log_id().unwrap().leader_id.term, 2);
        log.append(vec![entry(2, 5)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&log, 2), vec![2, 3, 4, 5]);
    }

    #[test]
    fn zeros_written_ahead_end_the_log_and_are_written_over() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(segment_name(1));
        let len = {
            let log = FileLog::open(dir.path(), None).unwrap();
            log.append((1..=3).map(|i| entry(1, i)).collect()).unwrap();
            log.sync().unwrap();
            log.inner.lock().unwrap().segments[0].len
        };
        // Zeros ahead of the records, on disk before the records reach them.
        assert_eq!(fs::metadata(&seg).unwrap().len(), len + PREFILL_BYTES);
        for round in 0..3u64 {
            let log = FileLog::open(dir.path(), None).unwrap();
            assert_eq!(indexes(&log, 0), (1..=3 + round).collect::<Vec<_>>());
            // Not a torn record: the zeros stay, the next record goes over them.
            assert!(fs::metadata(&seg).unwrap().len() > len);
            log.append(vec![entry(1, 4 + round)]).unwrap();
            log.sync().unwrap();
        }
        // Past the zeros: more are written ahead, none is read as a record.
        let log = FileLog::open(dir.path(), None).unwrap();
        let big = |i| {
            let log_id = LogId::new(CommittedLeaderId::new(1, 1), i);
            let e = Entry {
                log_id,
                payload: EntryPayload::Normal(crate::raft::Request {
                    writes: vec![vec![crate::op::Op::Put {
                        space: "s".into(),
                        key: b"k".to_vec(),
                        value: vec![7; 300 << 10],
                    }]],
                }),
            };
            (log_id, encode(&e).unwrap())
        };
        log.append((7..=12).map(big).collect()).unwrap();
        log.sync().unwrap();
        let total = log.inner.lock().unwrap().segments[0].len;
        assert!(total > PREFILL_BYTES);
        assert_eq!(fs::metadata(&seg).unwrap().len(), total + PREFILL_BYTES);
        drop(log);
        let log = FileLog::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&log, 0), (1..=12).collect::<Vec<_>>());
        // A cut (Raft truncating a conflicting suffix) drops the zeros too.
        log.truncate(5, Some(entry(1, 4).0)).unwrap();
        log.append(vec![entry(2, 5)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), None).unwrap();
        assert_eq!(indexes(&log, 0), (1..=5).collect::<Vec<_>>());
        assert_eq!(log.last_log_id().unwrap().leader_id.term, 2);
    }

    #[test]
    fn truncate_purge_and_a_gap_after_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let log = FileLog::open(dir.path(), None).unwrap();
        log.append((1..=5).map(|i| entry(1, i)).collect()).unwrap();
        log.truncate(4, Some(entry(1, 3).0)).unwrap();
        assert_eq!(indexes(&log, 0), vec![1, 2, 3]);
        log.append(vec![entry(2, 4)]).unwrap();
        log.purge(2).unwrap();
        assert_eq!(indexes(&log, 0), vec![3, 4]);
        // Everything purged, then the log goes on far ahead (a snapshot).
        log.purge(10).unwrap();
        assert!(log.last_log_id().is_none());
        log.append(vec![entry(3, 11), entry(3, 12)]).unwrap();
        log.sync().unwrap();
        drop(log);
        let log = FileLog::open(dir.path(), Some(10)).unwrap();
        assert_eq!(indexes(&log, 0), vec![11, 12]);
        assert_eq!(log.last_log_id().unwrap().index, 12);
    }
}
