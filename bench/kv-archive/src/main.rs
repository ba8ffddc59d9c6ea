//! What storing the message archive costs in an embedded key-value engine:
//! sled 0.34 (what the state machine uses today), redb and fjall (an LSM
//! tree), with the archive's own write pattern. Not part of the workspace:
//! evidence for a storage decision, run by hand.
//!
//!     cargo run --release --manifest-path bench/kv-archive/Cargo.toml -- ENGINE MESSAGES BATCH
//!
//! ENGINE: sled | sled-ht (sled's HighThroughput mode) | redb | fjall.
//! Each message is two records (the sender's and the recipient's copy) of
//! 520 bytes of text under `user\0<8-byte id>` keys, 100 users, time-ordered
//! ids; BATCH messages make one applied Raft entry (one "last applied"
//! write with them, as the state machine does). Prints the process's CPU
//! time (user + system, every thread: the engines' background work too)
//! per message, after a final flush, and the bytes on disk.

use std::path::Path;
use std::time::{Duration, Instant};

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let ru = unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
        ru
    };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn key(user: u64, id: u64) -> Vec<u8> {
    let mut k = format!("user{user}@perf.test").into_bytes();
    k.push(0);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// xorshift64: the same messages for every engine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const USERS: u64 = 100;

/// The records of `batch` messages: (sender key, recipient key, value).
struct Messages {
    rng: Rng,
    value: Vec<u8>,
    id: u64,
}

impl Messages {
    fn new() -> Messages {
        let mut letters = Rng(12345);
        let value = (0..520)
            .map(|_| b'a' + (letters.next() % 26) as u8)
            .collect();
        Messages {
            rng: Rng(88172645463325252),
            value,
            id: 1 << 40,
        }
    }

    fn next(&mut self) -> (Vec<u8>, Vec<u8>, &[u8]) {
        self.id += 1;
        // Every message differs a little, as real ones do.
        let at = (self.id % 500) as usize;
        self.value[at] ^= 1;
        let (a, b) = (self.rng.next() % USERS, self.rng.next() % USERS);
        (key(a, self.id), key(b, self.id), &self.value)
    }
}

fn run(engine: &str, dir: &Path, n: u64, batch: u64) {
    let mut m = Messages::new();
    match engine {
        "sled" | "sled-ht" => {
            let mut cfg = sled::Config::new().path(dir).cache_capacity(128 << 20);
            if engine == "sled-ht" {
                cfg = cfg.mode(sled::Mode::HighThroughput);
            }
            let db = cfg.open().expect("open sled");
            let t = db.open_tree("space/user_archive").expect("tree");
            let meta = db.open_tree("sm_meta").expect("tree");
            for b in 0..n / batch {
                for _ in 0..batch {
                    let (k1, k2, v) = m.next();
                    t.insert(k1, v).expect("insert");
                    t.insert(k2, v).expect("insert");
                }
                meta.insert(b"last_applied", &b.to_be_bytes())
                    .expect("insert");
            }
            db.flush().expect("flush");
        }
        "redb" => {
            const T: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("archive");
            std::fs::create_dir_all(dir).expect("dir");
            let db = redb::Database::create(dir.join("db")).expect("open redb");
            for b in 0..n / batch {
                let mut tx = db.begin_write().expect("tx");
                // Durable every 50 entries, as a periodic flush would be.
                tx.set_durability(if b % 50 == 49 {
                    redb::Durability::Immediate
                } else {
                    redb::Durability::None
                });
                {
                    let mut t = tx.open_table(T).expect("table");
                    for _ in 0..batch {
                        let (k1, k2, v) = m.next();
                        t.insert(&k1[..], v).expect("insert");
                        t.insert(&k2[..], v).expect("insert");
                    }
                    t.insert(&b"last_applied"[..], &b.to_be_bytes()[..])
                        .expect("insert");
                }
                tx.commit().expect("commit");
            }
        }
        "fjall" => {
            let ks = fjall::Config::new(dir).open().expect("open fjall");
            let p = ks
                .open_partition("user_archive", Default::default())
                .expect("partition");
            for b in 0..n / batch {
                let mut wb = ks.batch();
                for _ in 0..batch {
                    let (k1, k2, v) = m.next();
                    wb.insert(&p, k1, v);
                    wb.insert(&p, k2, v);
                }
                wb.insert(&p, b"last_applied".to_vec(), b.to_be_bytes().to_vec());
                wb.commit().expect("commit");
            }
            ks.persist(fjall::PersistMode::SyncAll).expect("persist");
        }
        other => panic!("unknown engine {other}"),
    }
}

fn disk_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(md) = e.metadata() else { continue };
        total += if md.is_dir() {
            disk_bytes(&e.path())
        } else {
            md.len()
        };
    }
    total
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, engine, n, batch] = &args[..] else {
        eprintln!("usage: kv-archive ENGINE MESSAGES BATCH");
        std::process::exit(2);
    };
    let (n, batch): (u64, u64) = (n.parse().expect("MESSAGES"), batch.parse().expect("BATCH"));
    let dir = std::env::temp_dir().join(format!("kv-archive-{engine}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let (c0, t0) = (cpu_seconds(), Instant::now());
    run(engine, &dir, n, batch);
    let wall = t0.elapsed();
    // Background work the engine left running (compaction, flushes).
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds() - c0;
    println!(
        "{engine} messages={n} batch={batch}: {:.2} µs CPU per message (every thread, 2 s after), \
         {:.2} µs wall per message, {} bytes on disk",
        cpu * 1e6 / n as f64,
        wall.as_secs_f64() * 1e6 / n as f64,
        disk_bytes(&dir)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
