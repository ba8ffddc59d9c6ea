//! What a write means: evaluating `Op`s against the state machine.
//!
//! All writes of the entries of one `apply` call are evaluated into an
//! in-memory overlay over the stored state, which is then committed as one
//! atomic multi-tree batch together with the applied log id. A write whose
//! conditional op fails is rolled back out of the overlay (an undo log), so
//! nothing of it is applied and later writes do not see it.
//!
//! Pure evaluation: it reads through `Base` and writes only into the
//! overlay; it must not touch sled or Raft.

use std::collections::{BTreeMap, BTreeSet};

use crate::kv::KvResult;
use crate::op::{Op, OpResult};

/// Read access to the committed state under the overlay.
pub trait Base {
    fn get(&self, space: &str, key: &[u8]) -> KvResult<Option<Vec<u8>>>;
    fn keys_with_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<Vec<Vec<u8>>>;
    fn count_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<u64>;
    /// The last sequence number `Append` used in `space` (0: none yet).
    fn seq(&self, space: &str) -> KvResult<u64>;
}

/// Pending changes: per space, key -> `Some(value)` (set) or `None` (removed);
/// per space, the last `Append` sequence number.
#[derive(Default, Debug)]
pub struct Overlay {
    pub spaces: BTreeMap<String, BTreeMap<Vec<u8>, Option<Vec<u8>>>>,
    pub seqs: BTreeMap<String, u64>,
}

enum Undo {
    Key(String, Vec<u8>, Option<Option<Vec<u8>>>),
    Seq(String, Option<u64>),
}

impl Overlay {
    fn under<'a>(
        &'a self,
        space: &str,
        prefix: &'a [u8],
    ) -> impl Iterator<Item = (&'a Vec<u8>, &'a Option<Vec<u8>>)> + 'a {
        self.spaces
            .get(space)
            .into_iter()
            .flat_map(move |m| m.range(prefix.to_vec()..))
            .take_while(move |(k, _)| k.starts_with(prefix))
    }

    fn get(&self, base: &impl Base, space: &str, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
        match self.spaces.get(space).and_then(|m| m.get(key)) {
            Some(v) => Ok(v.clone()),
            None => base.get(space, key),
        }
    }

    fn set(&mut self, space: &str, key: Vec<u8>, value: Option<Vec<u8>>, undo: &mut Vec<Undo>) {
        let prev = self.space_mut(space).insert(key.clone(), value);
        undo.push(Undo::Key(space.to_string(), key, prev));
    }

    fn space_mut(&mut self, space: &str) -> &mut BTreeMap<Vec<u8>, Option<Vec<u8>>> {
        if !self.spaces.contains_key(space) {
            self.spaces.insert(space.to_string(), BTreeMap::new());
        }
        self.spaces.get_mut(space).expect("just inserted")
    }

    fn count(&self, base: &impl Base, space: &str, prefix: &[u8]) -> KvResult<u64> {
        let mut n = base.count_prefix(space, prefix)?;
        for (k, v) in self.under(space, prefix) {
            match (base.get(space, k)?.is_some(), v.is_some()) {
                (false, true) => n += 1,
                (true, false) => n -= 1,
                _ => {}
            }
        }
        Ok(n)
    }

    fn keys(&self, base: &impl Base, space: &str, prefix: &[u8]) -> KvResult<Vec<Vec<u8>>> {
        let mut keys: BTreeSet<Vec<u8>> =
            base.keys_with_prefix(space, prefix)?.into_iter().collect();
        for (k, v) in self.under(space, prefix) {
            if v.is_some() {
                keys.insert(k.clone());
            } else {
                keys.remove(k);
            }
        }
        Ok(keys.into_iter().collect())
    }

    fn next_seq(&mut self, base: &impl Base, space: &str, undo: &mut Vec<Undo>) -> KvResult<u64> {
        let cur = match self.seqs.get(space) {
            Some(s) => *s,
            None => base.seq(space)?,
        };
        let next = cur + 1;
        let prev = self.seqs.insert(space.to_string(), next);
        undo.push(Undo::Seq(space.to_string(), prev));
        Ok(next)
    }

    fn rollback(&mut self, undo: Vec<Undo>) {
        for u in undo.into_iter().rev() {
            match u {
                Undo::Key(space, key, prev) => {
                    let m = self.spaces.entry(space).or_default();
                    match prev {
                        Some(p) => m.insert(key, p),
                        None => m.remove(&key),
                    };
                }
                Undo::Seq(space, prev) => {
                    match prev {
                        Some(p) => self.seqs.insert(space, p),
                        None => self.seqs.remove(&space),
                    };
                }
            }
        }
    }

    /// Evaluates one write of only blind ops (`Op::is_blind`, which never
    /// fail: nothing to undo), taking their values.
    fn apply_blind(&mut self, ops: &mut [Op]) -> Vec<OpResult> {
        for op in ops.iter_mut() {
            match op {
                Op::Put { space, key, value } => {
                    let value = std::mem::take(value);
                    self.space_mut(space).insert(key.clone(), Some(value));
                }
                Op::Delete { space, key } => {
                    self.space_mut(space).insert(key.clone(), None);
                }
                _ => unreachable!("only blind ops"),
            }
        }
        vec![OpResult::Done; ops.len()]
    }

    /// [`Overlay::apply_write`] for a write the caller owns: a write of
    /// only blind ops gives up its values (`Put`'s `value` is left empty)
    /// instead of copying them.
    pub fn apply_write_owned(
        &mut self,
        base: &impl Base,
        ops: &mut [Op],
    ) -> KvResult<Vec<OpResult>> {
        if ops.iter().all(Op::is_blind) {
            return Ok(self.apply_blind(ops));
        }
        self.apply_write(base, ops)
    }

    /// Evaluates one write: all its ops in order, or none of them.
    pub fn apply_write(&mut self, base: &impl Base, ops: &[Op]) -> KvResult<Vec<OpResult>> {
        let mut undo = Vec::new();
        let mut results = Vec::with_capacity(ops.len());
        for (i, op) in ops.iter().enumerate() {
            let r = match op {
                Op::Put { space, key, value } => {
                    self.set(space, key.clone(), Some(value.clone()), &mut undo);
                    OpResult::Done
                }
                Op::Insert { space, key, value } => {
                    let found = self.get(base, space, key)?;
                    if found.as_ref() == Some(value) {
                        // The same insert again (a write retried through a
                        // new leader): it happened, nothing changes.
                        OpResult::Done
                    } else if found.is_some() {
                        OpResult::Exists
                    } else {
                        self.set(space, key.clone(), Some(value.clone()), &mut undo);
                        OpResult::Done
                    }
                }
                Op::Delete { space, key } => {
                    self.set(space, key.clone(), None, &mut undo);
                    OpResult::Done
                }
                Op::DeletePrefix { space, prefix } => {
                    for k in self.keys(base, space, prefix)? {
                        self.set(space, k, None, &mut undo);
                    }
                    OpResult::Done
                }
                Op::DeleteIf { space, key, prefix } => {
                    if self
                        .get(base, space, key)?
                        .is_some_and(|v| v.starts_with(prefix))
                    {
                        self.set(space, key.clone(), None, &mut undo);
                    }
                    OpResult::Done
                }
                Op::Expect { space, key, prefix } => {
                    if self
                        .get(base, space, key)?
                        .is_some_and(|v| v.starts_with(prefix))
                    {
                        OpResult::Done
                    } else {
                        OpResult::Mismatch
                    }
                }
                Op::ExpectValue { space, key, value } => {
                    if self.get(base, space, key)? == *value {
                        OpResult::Done
                    } else {
                        OpResult::Mismatch
                    }
                }
                Op::DeleteIndexed {
                    space,
                    index,
                    prefix,
                } => {
                    let mut removed = Vec::new();
                    for k in self.keys(base, index, prefix)? {
                        let rest = k[prefix.len()..].to_vec();
                        if let Some(v) = self.get(base, space, &rest)?
                            && v.starts_with(prefix)
                        {
                            self.set(space, rest.clone(), None, &mut undo);
                            removed.push((rest, v));
                        }
                        self.set(index, k, None, &mut undo);
                    }
                    OpResult::Removed(removed)
                }
                Op::Append {
                    space,
                    prefix,
                    value,
                    max,
                } => {
                    if self.count(base, space, prefix)? >= *max {
                        OpResult::Full
                    } else {
                        let seq = self.next_seq(base, space, &mut undo)?;
                        let mut key = prefix.clone();
                        key.extend_from_slice(&seq.to_be_bytes());
                        self.set(space, key, Some(value.clone()), &mut undo);
                        OpResult::Seq(seq)
                    }
                }
                Op::Incr { space, key } => {
                    let next = self
                        .get(base, space, key)?
                        .and_then(|v| <[u8; 8]>::try_from(v.as_slice()).ok())
                        .map_or(0, u64::from_be_bytes)
                        + 1;
                    self.set(
                        space,
                        key.clone(),
                        Some(next.to_be_bytes().to_vec()),
                        &mut undo,
                    );
                    OpResult::Seq(next)
                }
                Op::Take { space, key } => match self.get(base, space, key)? {
                    Some(v) => {
                        self.set(space, key.clone(), None, &mut undo);
                        OpResult::Removed(vec![(key.clone(), v)])
                    }
                    None => OpResult::Removed(Vec::new()),
                },
            };
            if matches!(r, OpResult::Exists | OpResult::Full | OpResult::Mismatch) {
                self.rollback(undo);
                let mut out = vec![OpResult::Aborted; ops.len()];
                out[i] = r;
                return Ok(out);
            }
            results.push(r);
        }
        Ok(results)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mem(BTreeMap<(String, Vec<u8>), Vec<u8>>);

    impl Base for Mem {
        fn get(&self, space: &str, key: &[u8]) -> KvResult<Option<Vec<u8>>> {
            Ok(self.0.get(&(space.to_string(), key.to_vec())).cloned())
        }
        fn keys_with_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<Vec<Vec<u8>>> {
            Ok(self
                .0
                .keys()
                .filter(|(s, k)| s == space && k.starts_with(prefix))
                .map(|(_, k)| k.clone())
                .collect())
        }
        fn count_prefix(&self, space: &str, prefix: &[u8]) -> KvResult<u64> {
            Ok(self.keys_with_prefix(space, prefix)?.len() as u64)
        }
        fn seq(&self, _space: &str) -> KvResult<u64> {
            Ok(0)
        }
    }

    fn put(k: &str) -> Op {
        Op::Put {
            space: "s".into(),
            key: k.into(),
            value: b"v".to_vec(),
        }
    }

    fn append(max: u64) -> Op {
        Op::Append {
            space: "s".into(),
            prefix: b"q/".to_vec(),
            value: b"m".to_vec(),
            max,
        }
    }

    #[test]
    fn the_same_insert_again_is_done_another_value_exists() {
        let mut base = Mem::default();
        base.0
            .insert(("s".into(), b"taken".to_vec()), b"x".to_vec());
        let mut ov = Overlay::default();
        let insert = |v: &[u8]| Op::Insert {
            space: "s".into(),
            key: b"taken".to_vec(),
            value: v.to_vec(),
        };
        let r = ov.apply_write(&base, &[insert(b"x")]).unwrap();
        assert_eq!(r, vec![OpResult::Done]);
        let r = ov.apply_write(&base, &[insert(b"y")]).unwrap();
        assert_eq!(r, vec![OpResult::Exists]);
    }

    #[test]
    fn abort_rolls_back_only_that_write() {
        let mut base = Mem::default();
        base.0
            .insert(("s".into(), b"taken".to_vec()), b"x".to_vec());
        let mut ov = Overlay::default();
        let r = ov
            .apply_write(
                &base,
                &[
                    put("a"),
                    append(10),
                    Op::Insert {
                        space: "s".into(),
                        key: b"taken".to_vec(),
                        value: b"y".to_vec(),
                    },
                ],
            )
            .unwrap();
        assert_eq!(
            r,
            vec![OpResult::Aborted, OpResult::Aborted, OpResult::Exists]
        );
        assert!(ov.spaces.values().all(|m| m.is_empty()));
        assert!(ov.seqs.is_empty());
        let r = ov
            .apply_write(&base, &[append(2), append(2), append(2)])
            .unwrap();
        assert_eq!(
            r,
            vec![OpResult::Aborted, OpResult::Aborted, OpResult::Full]
        );
        let r = ov.apply_write(&base, &[append(2), append(2)]).unwrap();
        assert_eq!(r, vec![OpResult::Seq(1), OpResult::Seq(2)]);
        let r = ov.apply_write(&base, &[append(2)]).unwrap();
        assert_eq!(r, vec![OpResult::Full]);
        let r = ov
            .apply_write(
                &base,
                &[
                    Op::DeletePrefix {
                        space: "s".into(),
                        prefix: b"q/".to_vec(),
                    },
                    append(1),
                ],
            )
            .unwrap();
        assert_eq!(r, vec![OpResult::Done, OpResult::Seq(3)]);
    }

    #[test]
    fn delete_indexed_spares_entries_another_owner_took() {
        let mut base = Mem::default();
        let mut add = |space: &str, k: &[u8], v: &[u8]| {
            base.0.insert((space.into(), k.to_vec()), v.to_vec());
        };
        add("route", b"a\0r1", b"\x01node1");
        add("route", b"a\0r2", b"\x02node2");
        add("index", b"\x01a\0r1", b"");
        add("index", b"\x01a\0r2", b""); // stale: r2 moved to owner 2
        add("index", b"\x02a\0r2", b"");
        let mut ov = Overlay::default();
        let r = ov
            .apply_write(
                &base,
                &[Op::DeleteIndexed {
                    space: "route".into(),
                    index: "index".into(),
                    prefix: vec![1],
                }],
            )
            .unwrap();
        assert_eq!(
            r,
            vec![OpResult::Removed(vec![(
                b"a\0r1".to_vec(),
                b"\x01node1".to_vec()
            )])]
        );
        let route = &ov.spaces["route"];
        assert_eq!(route.get(&b"a\0r1"[..]), Some(&None));
        assert_eq!(route.get(&b"a\0r2"[..]), None);
        let index = &ov.spaces["index"];
        assert_eq!(index.len(), 2);
        assert!(index.values().all(|v| v.is_none()));
    }

    #[test]
    fn one_component_connection_per_domain_dropped_with_its_node() {
        use crate::routes;
        let base = Mem::default();
        let mut ov = Overlay::default();
        let claim = |node, session| routes::claim_component(node, "gw.example", session);
        assert_eq!(
            ov.apply_write(&base, &claim(1, 7)).unwrap()[0],
            OpResult::Done
        );
        // The same claim again (a retried write, a new registry epoch): fine.
        assert_eq!(
            ov.apply_write(&base, &claim(1, 7)).unwrap()[0],
            OpResult::Done
        );
        // Another connection, here or on another node: refused, nothing written.
        for (node, session) in [(1, 8), (2, 7)] {
            assert_eq!(
                ov.apply_write(&base, &claim(node, session)).unwrap(),
                vec![OpResult::Exists, OpResult::Aborted]
            );
        }
        // Only the holder lets it go.
        ov.apply_write(&base, &routes::release_component(2, "gw.example", 7))
            .unwrap();
        let held = |ov: &Overlay| ov.get(&base, routes::COMPONENTS, b"gw.example").unwrap();
        assert_eq!(held(&ov), Some(routes::component_value(1, 7)));
        // Its node dies: gone with the node's session routes.
        let r = ov.apply_write(&base, &routes::drop_node_all(1)).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(held(&ov), None);
        assert_eq!(
            ov.apply_write(&base, &claim(2, 9)).unwrap()[0],
            OpResult::Done
        );
        assert_eq!(
            routes::parse_component_value(&held(&ov).unwrap()),
            Some((2, 9))
        );
    }

    #[test]
    fn delete_if_and_expect_check_the_owner() {
        let mut base = Mem::default();
        base.0
            .insert(("route".into(), b"a\0r".to_vec()), b"\x02s7".to_vec());
        let del = |prefix: &[u8]| Op::DeleteIf {
            space: "route".into(),
            key: b"a\0r".to_vec(),
            prefix: prefix.to_vec(),
        };
        let expect = |prefix: &[u8]| Op::Expect {
            space: "route".into(),
            key: b"a\0r".to_vec(),
            prefix: prefix.to_vec(),
        };
        let put = Op::Put {
            space: "other".into(),
            key: b"k".to_vec(),
            value: b"v".to_vec(),
        };
        // Not the owner: nothing removed, no failure.
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[del(b"\x01")]).unwrap(),
            vec![OpResult::Done]
        );
        assert!(ov.spaces.get("route").is_none_or(|m| m.is_empty()));
        // The owner: removed.
        assert_eq!(
            ov.apply_write(&base, &[del(b"\x02s")]).unwrap(),
            vec![OpResult::Done]
        );
        assert_eq!(ov.spaces["route"].get(&b"a\0r"[..]), Some(&None));
        // Expect aborts the whole write on another owner or no value.
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[put.clone(), expect(b"\x01")])
                .unwrap(),
            vec![OpResult::Aborted, OpResult::Mismatch]
        );
        assert!(ov.spaces.get("other").is_none_or(|m| m.is_empty()));
        assert_eq!(
            ov.apply_write(&base, &[expect(b"\x02"), put]).unwrap(),
            vec![OpResult::Done, OpResult::Done]
        );
        assert_eq!(
            ov.spaces["other"].get(&b"k"[..]),
            Some(&Some(b"v".to_vec()))
        );
    }

    #[test]
    fn expect_value_compares_the_whole_value_or_absence() {
        let mut base = Mem::default();
        base.0
            .insert(("roster".into(), b"alice".to_vec()), b"v7".to_vec());
        let expect = |key: &[u8], value: Option<&[u8]>| Op::ExpectValue {
            space: "roster".into(),
            key: key.to_vec(),
            value: value.map(<[u8]>::to_vec),
        };
        let set = |key: &[u8], value: &[u8]| Op::Put {
            space: "roster".into(),
            key: key.to_vec(),
            value: value.to_vec(),
        };
        let untouched = |ov: &Overlay| ov.spaces.get("roster").is_none_or(|m| m.is_empty());

        // The present value matches: the write goes on.
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(
                &base,
                &[expect(b"alice", Some(b"v7")), set(b"alice", b"v8")]
            )
            .unwrap(),
            vec![OpResult::Done, OpResult::Done]
        );
        assert_eq!(
            ov.spaces["roster"].get(&b"alice"[..]),
            Some(&Some(b"v8".to_vec()))
        );

        // Absent, and absence expected: the write goes on.
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[expect(b"bob", None), set(b"bob", b"v1")])
                .unwrap(),
            vec![OpResult::Done, OpResult::Done]
        );
        assert_eq!(
            ov.spaces["roster"].get(&b"bob"[..]),
            Some(&Some(b"v1".to_vec()))
        );

        // Another value (a prefix of it is not enough): the whole write is
        // aborted, ops before and after the compare alike.
        for stale in [&b"v6"[..], b"v", b"v77"] {
            let mut ov = Overlay::default();
            assert_eq!(
                ov.apply_write(
                    &base,
                    &[
                        set(b"carol", b"x"),
                        expect(b"alice", Some(stale)),
                        set(b"alice", b"v8"),
                    ],
                )
                .unwrap(),
                vec![OpResult::Aborted, OpResult::Mismatch, OpResult::Aborted]
            );
            assert!(untouched(&ov));
        }

        // Present, but absence expected (someone created it first).
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[expect(b"alice", None), set(b"alice", b"v1")])
                .unwrap(),
            vec![OpResult::Mismatch, OpResult::Aborted]
        );
        assert!(untouched(&ov));

        // Absent, but a value expected (someone removed it).
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[expect(b"bob", Some(b"v1"))])
                .unwrap(),
            vec![OpResult::Mismatch]
        );

        // Within one apply, a write compares against the writes before it:
        // of two read-modify-writes from the same version, the second fails.
        let mut ov = Overlay::default();
        let rmw = |next: &[u8]| [expect(b"alice", Some(b"v7")), set(b"alice", next)];
        assert_eq!(
            ov.apply_write(&base, &rmw(b"from node 1")).unwrap(),
            vec![OpResult::Done, OpResult::Done]
        );
        assert_eq!(
            ov.apply_write(&base, &rmw(b"from node 2")).unwrap(),
            vec![OpResult::Mismatch, OpResult::Aborted]
        );
        assert_eq!(
            ov.spaces["roster"].get(&b"alice"[..]),
            Some(&Some(b"from node 1".to_vec()))
        );
    }

    #[test]
    fn incr_counts_in_log_order_and_an_aborted_write_takes_its_bump_back() {
        let mut base = Mem::default();
        base.0
            .insert(("v".into(), b"u".to_vec()), 41u64.to_be_bytes().to_vec());
        let incr = |k: &[u8]| Op::Incr {
            space: "v".into(),
            key: k.to_vec(),
        };
        let mut ov = Overlay::default();
        assert_eq!(
            ov.apply_write(&base, &[incr(b"u")]).unwrap(),
            vec![OpResult::Seq(42)]
        );
        assert_eq!(
            ov.apply_write(&base, &[incr(b"new")]).unwrap(),
            vec![OpResult::Seq(1)]
        );
        let failing = Op::Expect {
            space: "s".into(),
            key: b"absent".to_vec(),
            prefix: Vec::new(),
        };
        let r = ov.apply_write(&base, &[incr(b"u"), failing]).unwrap();
        assert_eq!(r, vec![OpResult::Aborted, OpResult::Mismatch]);
        assert_eq!(
            ov.apply_write(&base, &[incr(b"u")]).unwrap(),
            vec![OpResult::Seq(43)]
        );
    }

    #[test]
    fn take_gives_a_value_to_the_first_taker_only() {
        let mut base = Mem::default();
        base.0
            .insert(("off".into(), b"u/1".to_vec()), b"m1".to_vec());
        let take = |k: &[u8]| Op::Take {
            space: "off".into(),
            key: k.to_vec(),
        };
        let mut ov = Overlay::default();
        // Two flushes claim the same stored message in one entry: the
        // first write gets it, the second finds it gone.
        assert_eq!(
            ov.apply_write(&base, &[take(b"u/1"), take(b"u/2")])
                .unwrap(),
            vec![
                OpResult::Removed(vec![(b"u/1".to_vec(), b"m1".to_vec())]),
                OpResult::Removed(Vec::new()),
            ]
        );
        assert_eq!(
            ov.apply_write(&base, &[take(b"u/1")]).unwrap(),
            vec![OpResult::Removed(Vec::new())]
        );
        assert_eq!(ov.spaces["off"].get(&b"u/1"[..]), Some(&None));
    }
}
