//! The gateway's choice of a shard for each invocation (`DESIGN.md`, "Gateway"). Every shard
//! holds the same kind of per-class queues and places over all machines, so any shard may
//! take any invocation; the choice only spreads load. Rule: of two shards sampled at random
//! among those that may be used, the one with fewer invocations in flight (power of two
//! choices). It spreads load about as evenly as asking every shard, for two counter reads,
//! and unlike round-robin it steers around a shard that has fallen behind. Both drivers use
//! it: the gateway service on its per-shard in-flight counters, the simulator on its own.
//!
//! An invocation with a concurrency limit ([`crate::concurrency`]) is the exception: it goes
//! to its key's home shard ([`home_shard`]), so that one gate sees every invocation of the key.

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

/// The home shard of a concurrency key among `candidates` (shard index, its name: the
/// address every gateway knows it by): rendezvous hashing, the candidate whose name hashed
/// with `key` is highest. Gateways that list the same shards, in any order, pick the same
/// one; when a shard leaves the candidates only the keys whose home it was move, each to the
/// next candidate by the same order. The hash (FNV-1a, then a mixer) is fixed, not seeded:
/// every process computes the same.
pub fn home_shard(key: &str, candidates: &[(usize, &str)]) -> Option<usize> {
    candidates
        .iter()
        .max_by_key(|(_, name)| (rendezvous(key, name), *name))
        .map(|(i, _)| *i)
}

fn rendezvous(key: &str, shard: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in key.bytes().chain([0xff]).chain(shard.bytes()) {
        h ^= u64::from(byte);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone leaves the last bytes' influence in the low bits.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
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

    #[test]
    fn a_keys_home_is_the_same_in_any_order_and_moves_only_when_its_shard_leaves() {
        let shards = [
            "10.0.0.1:7001",
            "10.0.0.2:7001",
            "10.0.0.3:7001",
            "10.0.0.4:7001",
        ];
        let all: Vec<(usize, &str)> = shards.iter().copied().enumerate().collect();
        let mut reversed = all.clone();
        reversed.reverse();
        let mut homes = [0u32; 4];
        let mut moved = 0;
        for n in 0..2000 {
            let key = format!("function:app/f{n}");
            let home = home_shard(&key, &all).unwrap();
            assert_eq!(home_shard(&key, &reversed), Some(home));
            homes[home] += 1;
            // Shard 2 leaves: only its keys move.
            let without: Vec<(usize, &str)> = all.iter().copied().filter(|s| s.0 != 2).collect();
            let after = home_shard(&key, &without).unwrap();
            if home == 2 {
                moved += 1;
                assert_ne!(after, 2);
            } else {
                assert_eq!(after, home, "{key} moved though its home stayed");
            }
        }
        assert_eq!(moved, homes[2]);
        // Spread: each shard is home to about a quarter of the keys.
        assert!(homes.iter().all(|h| (350..650).contains(h)), "{homes:?}");
        assert_eq!(home_shard("k", &[]), None);
    }
}
