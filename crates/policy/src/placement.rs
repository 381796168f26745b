//! Power-of-k machine polling: when a shard's idle list is empty it polls `k` machines chosen
//! at random and places on the one running the fewest functions (paper 3.2). Hermod's
//! least-loaded placement is the same rule without the memory check.
//!
//! Sans-IO in two steps so a real shard can poll over the network: [`sample_machines`] says
//! whom to ask, [`least_loaded`] decides from their replies.

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
        };
        let replies = [r(1, 5, 1000), r(2, 2, 50), r(3, 3, 1000), r(4, 3, 1000)];
        assert_eq!(least_loaded(&replies, 100), Some(MachineId(3)));
        assert_eq!(least_loaded(&replies, 0), Some(MachineId(2)));
        assert_eq!(least_loaded(&replies, 5000), None);
    }
}
