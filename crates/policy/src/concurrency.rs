//! Concurrency limits: the most invocations of one key (a function, or a tenant's functions)
//! in flight at once, like Lambda's reserved concurrency (`DESIGN.md`, "Triggers").
//!
//! A shard runs one [`Gate`] in front of its per-class queues. An invocation carries its
//! [`Limit`]s (none for most); it passes the gate when every one of its keys has room, and
//! otherwise waits at the gate - not refused - until a slot of the key that stopped it frees,
//! or its caller cancels it (its deadline passes). Waiters of a key leave in class order
//! (the higher class first), then in arrival order, so a limit never lets a lower class ahead
//! of a higher one. An invocation passed the gate holds its slots until it is over, however
//! many times it is placed again (killed, its worker lost).
//!
//! An invocation with two limits (its function's and its tenant's) waits on one key at a
//! time: the first of its keys that is full. When that key frees a slot, its first waiter is
//! looked at again: it passes if all its keys have room, or moves to the queue of the key that
//! is full now. So every key is either below its limit with no waiters, or at its limit
//! (checked by `check_invariants` in the tests), and a new invocation that finds room on all
//! its keys is not passing anyone who waits.
//!
//! The limit of a key is the one its latest invocation carried: raised, its waiters pass at
//! once up to the new limit; lowered, no slot is taken back, new ones wait until the key is
//! below it. A limit of 0 lets nothing through (its invocations wait until cancelled); the
//! API refuses it.
//!
//! Across shards the gate is exact when every invocation of a key reaches the same shard: the
//! gateway sends limited invocations to the key's home shard ([`crate::shard_choice::home_shard`]).

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use crate::ClassId;

/// At most `max` invocations of `key` in flight at once.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Limit {
    /// `tenant:NAME` or `function:APP/NAME` (any string: the gate only compares them).
    pub key: String,
    pub max: u32,
}

/// Whether an arriving invocation passed the gate or waits there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    Passed,
    Waiting,
}

/// Identifies an invocation at the gate (the driver's id for it).
pub type GateId = u64;

/// A shard's concurrency gate: see the module docs.
#[derive(Debug, Default)]
pub struct Gate {
    keys: HashMap<String, KeyState>,
    waiters: HashMap<GateId, Waiter>,
    /// Arrival order among waiters of one class.
    next_seq: u64,
}

#[derive(Debug, Default)]
struct KeyState {
    in_flight: u32,
    max: u32,
    /// Waiters stopped by this key: the higher class first, then the earlier arrival.
    queue: BTreeMap<(Reverse<ClassId>, u64), GateId>,
}

impl KeyState {
    fn has_room(&self) -> bool {
        self.in_flight < self.max
    }
}

#[derive(Debug)]
struct Waiter {
    limits: Vec<Limit>,
    class: ClassId,
    seq: u64,
    /// The key whose queue it is in.
    on: String,
}

impl Gate {
    pub fn new() -> Self {
        Self::default()
    }

    /// An invocation `id` of `class` with `limits` arrives: whether it passed (its slots are
    /// taken; give them back with [`Gate::handle_finish`]) or waits. Also the waiters that
    /// passed because this invocation raised a limit, in the order they passed.
    pub fn handle_arrival(
        &mut self,
        id: GateId,
        class: ClassId,
        limits: &[Limit],
    ) -> (Entry, Vec<GateId>) {
        let mut limits = limits.to_vec();
        // One slot per key, whatever the caller sent.
        let mut seen = std::collections::HashSet::new();
        limits.retain(|l| seen.insert(l.key.clone()));
        let mut passed = Vec::new();
        for limit in &limits {
            let key = self.keys.entry(limit.key.clone()).or_default();
            let raised = limit.max > key.max;
            key.max = limit.max;
            if raised {
                self.drain(&[limit.key.as_str()], &mut passed);
            }
        }
        let full = limits.iter().find(|l| !self.has_room(l));
        let entry = match full {
            None => {
                self.take_slots(&limits);
                Entry::Passed
            }
            Some(full) => {
                let on = full.key.clone();
                let seq = self.next_seq;
                self.next_seq += 1;
                self.wait(
                    id,
                    Waiter {
                        limits,
                        class,
                        seq,
                        on,
                    },
                );
                Entry::Waiting
            }
        };
        (entry, passed)
    }

    /// An invocation that passed the gate with `limits` is over: its slots are given back.
    /// The waiters that passed in its place, in the order they passed.
    pub fn handle_finish(&mut self, limits: &[Limit]) -> Vec<GateId> {
        let mut passed = Vec::new();
        let mut freed: Vec<&str> = Vec::new();
        for limit in limits {
            if freed.contains(&limit.key.as_str()) {
                continue;
            }
            if let Some(key) = self.keys.get_mut(&limit.key) {
                key.in_flight = key.in_flight.saturating_sub(1);
                freed.push(&limit.key);
            }
        }
        // Freed together, their waiters pass best first across them.
        self.drain(&freed, &mut passed);
        for key in freed {
            self.forget_if_idle(key);
        }
        passed
    }

    /// Waiter `id` leaves (cancelled): `true` if it was waiting; `false` if it is not here
    /// (it passed: then it holds slots, which [`Gate::handle_finish`] gives back).
    pub fn handle_leave(&mut self, id: GateId) -> bool {
        let Some(waiter) = self.waiters.remove(&id) else {
            return false;
        };
        if let Some(key) = self.keys.get_mut(&waiter.on) {
            key.queue.remove(&(Reverse(waiter.class), waiter.seq));
        }
        for limit in &waiter.limits {
            self.forget_if_idle(&limit.key);
        }
        true
    }

    /// Invocations waiting at the gate.
    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// Invocations of `key` that passed and are not over.
    pub fn in_flight(&self, key: &str) -> u32 {
        self.keys.get(key).map_or(0, |k| k.in_flight)
    }

    /// Keys with an invocation in flight or waiting (the gate forgets the others).
    pub fn keys(&self) -> usize {
        self.keys.len()
    }

    /// Whether `limit`'s key has room: a key the gate has forgotten (nothing in flight or
    /// waiting on it) has, at the limit the invocation carries.
    fn has_room(&self, limit: &Limit) -> bool {
        self.keys
            .get(&limit.key)
            .map_or(limit.max > 0, KeyState::has_room)
    }

    fn take_slots(&mut self, limits: &[Limit]) {
        for limit in limits {
            let key = self
                .keys
                .entry(limit.key.clone())
                .or_insert_with(|| KeyState {
                    max: limit.max,
                    ..KeyState::default()
                });
            key.in_flight += 1;
        }
    }

    /// Queues `waiter` on its key `on`, keeping its arrival order.
    fn wait(&mut self, id: GateId, waiter: Waiter) {
        let key = self.keys.entry(waiter.on.clone()).or_default();
        key.queue.insert((Reverse(waiter.class), waiter.seq), id);
        self.waiters.insert(id, waiter);
    }

    /// Lets the waiters of `keys` through while those keys have room, best first across
    /// them (class, then arrival): each passes if all its keys have room, or moves to the
    /// queue of the one that is full.
    fn drain(&mut self, keys: &[&str], passed: &mut Vec<GateId>) {
        loop {
            let best = keys
                .iter()
                .filter_map(|k| {
                    let state = self.keys.get(*k)?;
                    let (order, _) = state.queue.first_key_value().filter(|_| state.has_room())?;
                    Some((*order, *k))
                })
                .min();
            let Some((_, key)) = best else {
                return;
            };
            let Some((_, id)) = self.keys.get_mut(key).and_then(|k| k.queue.pop_first()) else {
                return;
            };
            let Some(mut waiter) = self.waiters.remove(&id) else {
                continue;
            };
            let full = waiter
                .limits
                .iter()
                .find(|l| !self.has_room(l))
                .map(|l| l.key.clone());
            match full {
                None => {
                    self.take_slots(&waiter.limits);
                    passed.push(id);
                }
                Some(full) => {
                    waiter.on = full;
                    self.wait(id, waiter);
                }
            }
        }
    }

    fn forget_if_idle(&mut self, key: &str) {
        if self
            .keys
            .get(key)
            .is_some_and(|k| k.in_flight == 0 && k.queue.is_empty())
        {
            self.keys.remove(key);
        }
    }

    /// Every key below its limit has no waiters, every waiter is in its key's queue, and a
    /// key's count is what passed and has not finished (tests).
    #[cfg(test)]
    fn check_invariants(&self) {
        for (name, key) in &self.keys {
            assert!(
                !key.has_room() || key.queue.is_empty(),
                "key {name} has room ({}/{}) and {} waiters",
                key.in_flight,
                key.max,
                key.queue.len()
            );
            for id in key.queue.values() {
                assert_eq!(&self.waiters[id].on, name);
            }
        }
        let queued: usize = self.keys.values().map(|k| k.queue.len()).sum();
        assert_eq!(queued, self.waiters.len());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn limit(key: &str, max: u32) -> Limit {
        Limit {
            key: key.into(),
            max,
        }
    }

    #[test]
    fn past_its_limit_a_key_queues_and_its_waiters_pass_by_class_then_arrival() {
        let mut gate = Gate::new();
        let f = [limit("function:a/f", 2)];
        assert_eq!(gate.handle_arrival(1, ClassId(0), &f).0, Entry::Passed);
        assert_eq!(gate.handle_arrival(2, ClassId(0), &f).0, Entry::Passed);
        assert_eq!(gate.handle_arrival(3, ClassId(0), &f).0, Entry::Waiting);
        assert_eq!(gate.handle_arrival(4, ClassId(2), &f).0, Entry::Waiting);
        assert_eq!(gate.handle_arrival(5, ClassId(0), &f).0, Entry::Waiting);
        assert_eq!(gate.handle_arrival(6, ClassId(2), &f).0, Entry::Waiting);
        assert_eq!(gate.in_flight("function:a/f"), 2);
        assert_eq!(gate.waiting(), 4);
        gate.check_invariants();
        // The higher class first, each class in arrival order.
        assert_eq!(gate.handle_finish(&f), vec![4]);
        assert_eq!(gate.handle_finish(&f), vec![6]);
        assert_eq!(gate.handle_finish(&f), vec![3]);
        assert_eq!(gate.handle_finish(&f), vec![5]);
        assert_eq!(gate.in_flight("function:a/f"), 2);
        gate.check_invariants();
        assert!(gate.handle_finish(&f).is_empty());
        assert!(gate.handle_finish(&f).is_empty());
        assert_eq!(gate.keys(), 0, "an idle key is forgotten");
    }

    #[test]
    fn an_invocation_passes_only_when_all_its_keys_have_room() {
        let mut gate = Gate::new();
        let tenant = limit("tenant:t", 2);
        let f = [tenant.clone(), limit("function:a/f", 1)];
        let g = [tenant.clone(), limit("function:a/g", 5)];
        assert_eq!(gate.handle_arrival(1, ClassId(0), &f).0, Entry::Passed);
        // f is full: 2 waits on f, though the tenant has room.
        assert_eq!(gate.handle_arrival(2, ClassId(1), &f).0, Entry::Waiting);
        assert_eq!(gate.handle_arrival(3, ClassId(0), &g).0, Entry::Passed);
        // The tenant is full now.
        assert_eq!(gate.handle_arrival(4, ClassId(0), &g).0, Entry::Waiting);
        gate.check_invariants();
        // 1 ends: f's slot and a tenant slot free together; 2 (class 1, waiting on f) passes
        // ahead of 4 (class 0, waiting on the tenant).
        assert_eq!(gate.handle_finish(&f), vec![2]);
        gate.check_invariants();
        // 3 ends: the tenant frees; 4 passes.
        assert_eq!(gate.handle_finish(&g), vec![4]);
        gate.check_invariants();
        assert_eq!(gate.in_flight("tenant:t"), 2);
    }

    #[test]
    fn a_waiter_stopped_by_its_second_key_moves_to_that_keys_queue_and_keeps_its_class() {
        let mut gate = Gate::new();
        let tenant = limit("tenant:t", 1);
        let f = [limit("function:a/f", 1), tenant.clone()];
        let g = [tenant.clone()];
        assert_eq!(gate.handle_arrival(1, ClassId(0), &f).0, Entry::Passed);
        // Waits on f (full first).
        assert_eq!(gate.handle_arrival(2, ClassId(3), &f).0, Entry::Waiting);
        // Waits on the tenant.
        assert_eq!(gate.handle_arrival(3, ClassId(0), &g).0, Entry::Waiting);
        gate.check_invariants();
        // 1 ends: f and the tenant free; 2 (class 3) passes ahead of 3 (class 0).
        assert_eq!(gate.handle_finish(&f), vec![2]);
        assert_eq!(gate.handle_finish(&f), vec![3]);
        gate.check_invariants();
    }

    #[test]
    fn a_raised_limit_lets_waiters_through_and_a_lowered_one_takes_nothing_back() {
        let mut gate = Gate::new();
        let one = [limit("k", 1)];
        let three = [limit("k", 3)];
        assert_eq!(gate.handle_arrival(1, ClassId(0), &one).0, Entry::Passed);
        assert_eq!(gate.handle_arrival(2, ClassId(0), &one).0, Entry::Waiting);
        // Raised: the waiter passes, then the new one.
        assert_eq!(
            gate.handle_arrival(3, ClassId(0), &three),
            (Entry::Passed, vec![2])
        );
        assert_eq!(gate.in_flight("k"), 3);
        // Lowered to 1: nothing taken back; new ones wait until it is below 1.
        assert_eq!(gate.handle_arrival(4, ClassId(0), &one).0, Entry::Waiting);
        assert!(gate.handle_finish(&one).is_empty());
        assert!(gate.handle_finish(&one).is_empty());
        assert_eq!(gate.handle_finish(&one), vec![4]);
        gate.check_invariants();
    }

    #[test]
    fn a_waiter_that_leaves_holds_nothing_and_one_that_passed_is_not_there_to_leave() {
        let mut gate = Gate::new();
        let f = [limit("f", 1)];
        assert_eq!(gate.handle_arrival(1, ClassId(0), &f).0, Entry::Passed);
        assert_eq!(gate.handle_arrival(2, ClassId(0), &f).0, Entry::Waiting);
        assert_eq!(gate.handle_arrival(3, ClassId(0), &f).0, Entry::Waiting);
        assert!(gate.handle_leave(2));
        assert!(!gate.handle_leave(2));
        assert!(!gate.handle_leave(1), "1 passed: it is not waiting");
        assert_eq!(gate.handle_finish(&f), vec![3]);
        gate.check_invariants();
        assert_eq!(gate.handle_finish(&f), Vec::<GateId>::new());
        assert_eq!(gate.keys(), 0);
    }

    /// Random arrivals, finishes and departures over a few keys: the invariants hold after
    /// every step, no key ever has more than its limit in flight, and every waiter eventually
    /// passes or leaves.
    #[test]
    fn random_traffic_never_exceeds_a_limit() {
        let seeds = std::env::var("TURNPIKE_FUZZ_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(64u64);
        for seed in 0..seeds {
            let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(seed);
            let mut gate = Gate::new();
            let keys = ["tenant:a", "tenant:b", "f1", "f2", "f3"];
            let maxes = [3u32, 2, 1, 2, 4];
            let mut running: Vec<Vec<Limit>> = Vec::new();
            let mut waiting: BTreeMap<GateId, Vec<Limit>> = BTreeMap::new();
            for id in 0..2_000u64 {
                match rng.random_range(0..10) {
                    0..=4 => {
                        let tenant = rng.random_range(0..2);
                        let f = 2 + rng.random_range(0..3);
                        let limits =
                            vec![limit(keys[tenant], maxes[tenant]), limit(keys[f], maxes[f])];
                        let class = ClassId(rng.random_range(0..4));
                        let (entry, passed) = gate.handle_arrival(id, class, &limits);
                        assert!(passed.is_empty(), "seed {seed}: limits never rise here");
                        match entry {
                            Entry::Passed => running.push(limits),
                            Entry::Waiting => {
                                waiting.insert(id, limits);
                            }
                        }
                    }
                    5..=8 if !running.is_empty() => {
                        let i = rng.random_range(0..running.len());
                        let limits = running.swap_remove(i);
                        for passed in gate.handle_finish(&limits) {
                            running.push(waiting.remove(&passed).expect("a waiter passed"));
                        }
                    }
                    _ => {
                        if let Some(&id) = waiting.keys().next() {
                            assert!(gate.handle_leave(id), "seed {seed}");
                            waiting.remove(&id);
                        }
                    }
                }
                gate.check_invariants();
                for (key, max) in keys.iter().zip(maxes) {
                    let held = running
                        .iter()
                        .filter(|ls| ls.iter().any(|l| l.key == *key))
                        .count();
                    assert_eq!(gate.in_flight(key) as usize, held, "seed {seed}");
                    assert!(held <= max as usize, "seed {seed}: {key} {held} > {max}");
                }
                assert_eq!(gate.waiting(), waiting.len(), "seed {seed}");
            }
            // Everything running ends: every waiter passes in turn.
            while let Some(limits) = running.pop() {
                for passed in gate.handle_finish(&limits) {
                    running.push(waiting.remove(&passed).expect("a waiter passed"));
                }
            }
            assert!(waiting.is_empty(), "seed {seed}: waiters left behind");
            assert_eq!(gate.keys(), 0, "seed {seed}");
        }
    }
}
