//! The gateway's choice of a shard for each invocation (`DESIGN.md`, "Gateway"). Every shard
//! holds the same kind of per-class queues and places over all machines, so any shard may
//! take any invocation; the choice only spreads load. Rule: of two shards sampled at random
//! among those that may be used, the one with fewer invocations in flight (power of two
//! choices). It spreads load about as evenly as asking every shard, for two counter reads,
//! and unlike round-robin it steers around a shard that has fallen behind. Both drivers use
//! it: the gateway service on its per-shard in-flight counters, the simulator on its own.

use rand::Rng;

/// The shard to use among `candidates` (shard index, invocations in flight there): `None`
/// when there are none. The sample is two distinct candidates; ties go to the first drawn.
pub fn choose_shard<R: Rng + ?Sized>(candidates: &[(usize, u64)], rng: &mut R) -> Option<usize> {
    match candidates.len() {
        0 => None,
        1 => Some(candidates[0].0),
        n => {
            let a = candidates[rng.random_range(0..n)];
            let mut b = candidates[rng.random_range(0..n - 1)];
            if b.0 == a.0 {
                b = candidates[n - 1];
            }
            Some(if b.1 < a.1 { b.0 } else { a.0 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn never_picks_the_busier_of_its_sample_and_never_the_busiest_of_all() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
        let candidates = [(0, 10), (1, 0), (2, 5), (3, 7)];
        let mut picked = [0u32; 4];
        for _ in 0..4000 {
            picked[choose_shard(&candidates, &mut rng).unwrap()] += 1;
        }
        assert_eq!(picked[0], 0, "the busiest loses every sample it is in");
        // Shard 1 wins every sample it is in: half of all pairs.
        assert!(picked[1] > 1800 && picked[1] < 2200, "{picked:?}");
        assert!(picked[1] > picked[2] && picked[2] > picked[3], "{picked:?}");
    }

    #[test]
    fn one_candidate_or_none() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
        assert_eq!(choose_shard(&[], &mut rng), None);
        assert_eq!(choose_shard(&[(3, 99)], &mut rng), Some(3));
    }
}
