//! Power-of-k machine polling: when a shard's idle list cannot help it polls `k` machines
//! chosen at random and places on the least loaded one (paper 3.2). Hermod's least-loaded
//! placement is the paper's rule without the memory check.
//!
//! Sans-IO in two steps so a real shard can poll over the network: [`sample_machines`] says
//! whom to ask, [`PlacementRule::choose`] decides from their replies.
//!
//! # Which machine is least loaded: [`PlacementRule`]
//!
//! The paper counts every function on the machine ([`PlacementRule::Paper`]). Under
//! sustained overload every machine is full of parked lower-class work, so that count says
//! nothing about whether a top-class invocation would run at once: on machines of one or two
//! cores the paper's rule put a critical invocation behind another critical one often
//! enough to give it a p99 slowdown of 2.4-4.1 at twice the cluster's capacity (the
//! `overload` preset, docs/design-notes.md). The machine scheduler preempts everything below
//! the invocation's class, so what it will wait for is only the work *at or above* its
//! class. [`PlacementRule::ClassAware`] (the default) ranks machines by
//!
//! 1. `waits`: how many of the invocations at or above its class would still hold a core
//!    when it arrives, `(ahead + 1).saturating_sub(cores)` - zero means it runs at once;
//! 2. `ahead`: invocations at or above its class, so top-class work spreads over machines;
//! 3. `functions`: all invocations, the paper's count, as the last tie-break.
//!
//! For the lowest class `ahead == functions`, and the order is the paper's exactly.

use rand::Rng;

use crate::MachineId;

/// What a polled machine answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PollReply {
    pub machine: MachineId,
    /// Invocations on the machine (running and parked).
    pub functions: u32,
    /// Memory the machine can give an invocation of the asking class: free memory plus what
    /// it could swap out from lower classes (see `Machine::room_for`). `u64::MAX` if unlimited.
    pub room_mb: u64,
    /// Invocations of the asking class or higher competing for the machine's cores
    /// (`Machine::ahead_of`).
    pub ahead: u32,
    /// The machine's core slots.
    pub cores: u32,
}

impl PollReply {
    /// How many invocations at or above the asking class would still hold a core when one
    /// more arrives: zero means it would start at once.
    pub fn waits(&self) -> u32 {
        self.ahead.saturating_add(1).saturating_sub(self.cores)
    }

    /// The class-aware rule's ranking key, smallest best: `(waits, ahead, functions)`.
    pub fn class_aware_key(&self) -> (u32, u32, u32) {
        (self.waits(), self.ahead, self.functions)
    }

    /// [`PollReply::class_aware_key`] packed into one integer that orders the same way: one
    /// comparison instead of a tuple's three (a shard ranks every reply of every decision).
    pub(crate) fn class_aware_rank(&self) -> u128 {
        (u128::from(self.waits()) << 64)
            | (u128::from(self.ahead) << 32)
            | u128::from(self.functions)
    }
}

/// The best and the second best replies with at least `need_mb` of room under the class-aware
/// rule, as indices into `replies`; ties go to the earlier reply, as `min_by_key` breaks them.
/// One pass, for a shard that places on the best and remembers the second.
pub(crate) fn class_aware_best_two(
    replies: &[PollReply],
    need_mb: u64,
) -> (Option<usize>, Option<usize>) {
    // `(index, rank)` of each.
    let mut best: Option<(usize, u128)> = None;
    let mut second: Option<(usize, u128)> = None;
    for (i, r) in replies.iter().enumerate() {
        if r.room_mb < need_mb {
            continue;
        }
        let rank = r.class_aware_rank();
        if best.is_none_or(|(_, b)| rank < b) {
            second = best;
            best = Some((i, rank));
        } else if second.is_none_or(|(_, s)| rank < s) {
            second = Some((i, rank));
        }
    }
    (best.map(|b| b.0), second.map(|s| s.0))
}

/// How a shard ranks machines, on its idle list and among polled machines (see the module
/// docs). Both drivers take it from their configuration.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum PlacementRule {
    /// The paper as written: a machine is idle when it has significant free memory, and the
    /// least loaded machine runs the fewest functions of any class.
    Paper,
    /// Idleness also needs an idle core, and load counts the work at or above the placed
    /// invocation's class first (docs/design-notes.md, "Placement under overload").
    #[default]
    ClassAware,
}

impl PlacementRule {
    /// The config spelling: `paper` or `class-aware`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Paper => "paper",
            Self::ClassAware => "class-aware",
        }
    }

    /// Whether an idle-list machine must have an idle core to be idle (and to be placed on).
    pub fn idle_needs_core(self) -> bool {
        self == Self::ClassAware
    }

    /// The best reply with at least `need_mb` of room; ties go to the earlier reply (the
    /// sample order is already random).
    pub fn choose(self, replies: &[PollReply], need_mb: u64) -> Option<MachineId> {
        match self {
            Self::Paper => least_loaded(replies, need_mb),
            Self::ClassAware => class_aware_best_two(replies, need_mb)
                .0
                .map(|i| replies[i].machine),
        }
    }
}

impl std::str::FromStr for PlacementRule {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "paper" => Ok(Self::Paper),
            "class-aware" => Ok(Self::ClassAware),
            other => Err(format!(
                "unknown placement rule `{other}` (known: class-aware, paper)"
            )),
        }
    }
}

/// Fills `out` with `min(k, machines)` distinct machines drawn uniformly from `0..machines`.
pub fn sample_machines<R: Rng + ?Sized>(
    rng: &mut R,
    machines: u32,
    k: usize,
    out: &mut Vec<MachineId>,
) {
    out.clear();
    let k = k.min(machines as usize);
    if k == machines as usize {
        out.extend((0..machines).map(MachineId));
        return;
    }
    while out.len() < k {
        let m = MachineId(rng.random_range(0..machines));
        if !out.contains(&m) {
            out.push(m);
        }
    }
}

/// The reply with the fewest functions among those with at least `need_mb` of room; ties go
/// to the earlier reply (the sample order is already random).
pub fn least_loaded(replies: &[PollReply], need_mb: u64) -> Option<MachineId> {
    let mut best: Option<&PollReply> = None;
    for r in replies.iter().filter(|r| r.room_mb >= need_mb) {
        if best.is_none_or(|b| r.functions < b.functions) {
            best = Some(r);
        }
    }
    best.map(|r| r.machine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn samples_are_distinct_and_in_range() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(7);
        let mut out = Vec::new();
        for _ in 0..1000 {
            sample_machines(&mut rng, 10, 3, &mut out);
            assert_eq!(out.len(), 3);
            assert!(out.iter().all(|m| m.0 < 10));
            assert!(out[0] != out[1] && out[1] != out[2] && out[0] != out[2]);
        }
        sample_machines(&mut rng, 2, 3, &mut out);
        assert_eq!(out, vec![MachineId(0), MachineId(1)]);
    }

    #[test]
    fn picks_fewest_functions_with_room() {
        let r = |m, functions, room_mb| PollReply {
            machine: MachineId(m),
            functions,
            room_mb,
            ahead: functions,
            cores: 1,
        };
        let replies = [r(1, 5, 1000), r(2, 2, 50), r(3, 3, 1000), r(4, 3, 1000)];
        assert_eq!(least_loaded(&replies, 100), Some(MachineId(3)));
        assert_eq!(least_loaded(&replies, 0), Some(MachineId(2)));
        assert_eq!(least_loaded(&replies, 5000), None);
    }

    #[test]
    fn class_aware_avoids_cores_taken_by_its_own_class() {
        let r = |m, functions, ahead, cores| PollReply {
            machine: MachineId(m),
            functions,
            room_mb: 1000,
            ahead,
            cores,
        };
        // Machine 1 has the fewest functions but its one core runs the asking class; machine
        // 2 is full of lower-class work the new one would preempt.
        let replies = [r(1, 1, 1, 1), r(2, 6, 0, 1), r(3, 4, 1, 2)];
        assert_eq!(
            PlacementRule::Paper.choose(&replies, 100),
            Some(MachineId(1))
        );
        assert_eq!(
            PlacementRule::ClassAware.choose(&replies, 100),
            Some(MachineId(2))
        );
        // Where all would start at once, fewer of its own class wins, then fewer functions.
        let replies = [r(1, 1, 1, 2), r(2, 6, 0, 2), r(3, 3, 0, 2)];
        assert_eq!(
            PlacementRule::ClassAware.choose(&replies, 100),
            Some(MachineId(3))
        );
        // Where it waits everywhere, it waits behind the fewest.
        let replies = [r(1, 3, 3, 1), r(2, 2, 2, 1), r(3, 9, 2, 1)];
        assert_eq!(
            PlacementRule::ClassAware.choose(&replies, 100),
            Some(MachineId(2))
        );
        assert_eq!(PlacementRule::ClassAware.choose(&replies, 5000), None);
    }

    /// The one-pass best and runner-up agree with ranking by `class_aware_key` with
    /// `min_by_key` (first minimum wins), including ties and replies without room.
    #[test]
    fn best_two_in_one_pass_match_min_by_key() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(13);
        for _ in 0..5000 {
            let n = rng.random_range(0..6);
            let replies: Vec<PollReply> = (0..n)
                .map(|m| PollReply {
                    machine: MachineId(m),
                    functions: rng.random_range(0..4),
                    room_mb: rng.random_range(0..3) * 100,
                    ahead: rng.random_range(0..4),
                    cores: rng.random_range(1..3),
                })
                .collect();
            let need = 100;
            let first = replies
                .iter()
                .enumerate()
                .filter(|(_, r)| r.room_mb >= need)
                .min_by_key(|(_, r)| r.class_aware_key())
                .map(|(i, _)| i);
            let second = replies
                .iter()
                .enumerate()
                .filter(|&(i, r)| Some(i) != first && r.room_mb >= need)
                .min_by_key(|(_, r)| r.class_aware_key())
                .map(|(i, _)| i);
            assert_eq!(
                class_aware_best_two(&replies, need),
                (first, second),
                "{replies:?}"
            );
        }
    }

    #[test]
    fn for_the_lowest_class_both_rules_agree() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        for _ in 0..1000 {
            let cores = rng.random_range(1..9);
            let replies: Vec<PollReply> = (0..3)
                .map(|m| {
                    let functions = rng.random_range(0..20);
                    PollReply {
                        machine: MachineId(m),
                        functions,
                        room_mb: rng.random_range(0..2000),
                        ahead: functions,
                        cores,
                    }
                })
                .collect();
            let need = rng.random_range(0..1000);
            let paper = PlacementRule::Paper.choose(&replies, need);
            let aware = PlacementRule::ClassAware.choose(&replies, need);
            assert_eq!(paper, aware, "{replies:?} need {need}");
        }
    }
}
