//! The engine's event queue over `(time, sequence)` keys: a radix heap, or a 4-ary heap for
//! small clusters.
//!
//! Why not `std::collections::BinaryHeap`: the queue holds one pending completion per running
//! invocation (about 115,000 on a 2,000 x 64 cluster at load 0.9), and a binary heap moves an
//! element through `log2(n)` scattered cache lines on every pop; on the large cluster that was
//! a third of the simulator's time (docs/benchmarks.md, "throughput"). A discrete-event
//! simulator never schedules into the past, so the keys it pops are non-decreasing: that is
//! exactly what a radix heap needs (Ahuja, Mehlhorn, Orlin and Tarjan, 1990). Its buckets are
//! plain `Vec`s, indexed by the highest bit in which a key differs from the last key popped;
//! a push is a `Vec::push`, and each element is moved to a lower bucket at most once per bit
//! of key it shares with the minimum, in sequential passes the prefetcher follows. The key
//! packs time (high 64 bits) and a sequence number (low 64 bits), so events at the same
//! nanosecond pop in the order they were scheduled, exactly as the tuple order of the binary
//! heap this replaced: runs are unchanged to the byte.
//!
//! The radix heap pays only where the queue is out of cache: on a 100 x 8 cluster (about 720
//! pending events) it cost 9% more instructions per invocation than a 4-ary heap, while on
//! 2,000 x 64 it ran 25-43% faster than a binary heap (docs/benchmarks.md). [`EventQueue`]
//! picks one by the cluster's size; both pop in exactly the same order.
//!
//! Monotonicity is the one contract: a key pushed must be at least the last key popped
//! (checked with `debug_assert!`). [`RadixHeap::peek_key`] does not move that floor, so a
//! driver may compare the queue's minimum with an event it keeps outside the queue (the
//! engine's next arrival), handle that one first, and schedule new events before the queue's
//! minimum.

/// Bits of a key, plus the bucket of keys equal to the last popped.
const BUCKETS: usize = 129;

/// Entries a drained bucket keeps room for (a larger allocation is freed).
const KEPT_CAPACITY_MAX: usize = 1024;

/// A min-queue of `(key, value)` for keys that never go below the last key popped.
#[derive(Debug, Clone)]
pub struct RadixHeap<T> {
    /// `buckets[0]`: keys equal to `last`; `buckets[i]`: keys whose highest bit differing from
    /// `last` is bit `i - 1`. Every key in bucket `i` is smaller than every key in `i + 1`.
    buckets: Vec<Vec<(u128, T)>>,
    /// Bit `i - 1` set: bucket `i` (1..=128) is not empty. Finding the lowest non-empty
    /// bucket is then one `trailing_zeros` instead of a scan of 128 `Vec` headers.
    occupied: u128,
    /// The last key popped: the floor for pushes.
    last: u128,
    len: usize,
    /// The minimum's position `(bucket, index)` once found by `peek_key` or a push below it;
    /// `None` when it must be searched for again.
    min_at: Option<(usize, usize)>,
}

impl<T> Default for RadixHeap<T> {
    fn default() -> Self {
        Self {
            buckets: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: 0,
            last: 0,
            len: 0,
            min_at: None,
        }
    }
}

/// The key of an event: time in the high half, scheduling order in the low half.
pub fn key(at_ns: u64, seq: u64) -> u128 {
    (u128::from(at_ns) << 64) | u128::from(seq)
}

/// The time half of a key.
pub fn key_time(key: u128) -> u64 {
    (key >> 64) as u64
}

impl<T> RadixHeap<T> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn bucket_of(&self, key: u128) -> usize {
        (128 - (key ^ self.last).leading_zeros()) as usize
    }

    /// Queues `value` under `key`, which must not be below the last key popped.
    pub fn push(&mut self, key: u128, value: T) {
        debug_assert!(
            key >= self.last,
            "a radix heap key went below the last popped"
        );
        let b = self.bucket_of(key);
        self.put(b, key, value);
        self.len += 1;
        // A cached minimum stays the minimum unless this key is smaller.
        if let Some((mb, mi)) = self.min_at {
            if key < self.buckets[mb][mi].0 {
                self.min_at = Some((b, self.buckets[b].len() - 1));
            }
        }
    }

    fn put(&mut self, b: usize, key: u128, value: T) {
        self.buckets[b].push((key, value));
        if b > 0 {
            self.occupied |= 1 << (b - 1);
        }
    }

    /// Where the minimum is: the smallest key of the lowest non-empty bucket.
    fn find_min(&mut self) -> Option<(usize, usize)> {
        if self.min_at.is_none() && self.len > 0 {
            let b = if self.buckets[0].is_empty() {
                self.occupied.trailing_zeros() as usize + 1
            } else {
                0
            };
            let i = self.buckets[b]
                .iter()
                .enumerate()
                .min_by_key(|(_, (k, _))| *k)
                .map(|(i, _)| i)
                .expect("the bucket is not empty");
            self.min_at = Some((b, i));
        }
        self.min_at
    }

    /// The smallest key, without moving the floor for pushes.
    pub fn peek_key(&mut self) -> Option<u128> {
        let (b, i) = self.find_min()?;
        Some(self.buckets[b][i].0)
    }

    /// Removes and returns the entry with the smallest key.
    pub fn pop(&mut self) -> Option<(u128, T)> {
        let (b, i) = self.find_min()?;
        self.min_at = None;
        self.len -= 1;
        let (key, value) = self.buckets[b].swap_remove(i);
        self.last = key;
        if b > 0 {
            // Every other key of bucket `b` now differs from the new floor in a lower bit.
            self.occupied &= !(1 << (b - 1));
            let mut moving = std::mem::take(&mut self.buckets[b]);
            for (k, v) in moving.drain(..) {
                let to = self.bucket_of(k);
                debug_assert!(to < b);
                self.put(to, k, v);
            }
            // Keep the emptied bucket's allocation for its next use, unless it is large: over a
            // long run most buckets at some moment hold most of the queue (whenever time
            // crosses a power of two), and keeping every one's peak would grow memory with
            // the run's length.
            if moving.capacity() <= KEPT_CAPACITY_MAX {
                self.buckets[b] = moving;
            }
        }
        Some((key, value))
    }
}

/// A 4-ary min-heap on the same keys: for queues small enough to stay in cache, where it
/// costs fewer instructions than the radix heap (each entry is moved once per level of a
/// shallow heap instead of once per bucket on its way down).
#[derive(Debug, Clone)]
pub struct QuadHeap<T> {
    items: Vec<(u128, T)>,
}

impl<T> Default for QuadHeap<T> {
    fn default() -> Self {
        Self { items: Vec::new() }
    }
}

impl<T> QuadHeap<T> {
    pub fn push(&mut self, key: u128, value: T) {
        let mut i = self.items.len();
        self.items.push((key, value));
        while i > 0 {
            let parent = (i - 1) / 4;
            if self.items[parent].0 <= key {
                break;
            }
            self.items.swap(i, parent);
            i = parent;
        }
    }

    pub fn peek_key(&self) -> Option<u128> {
        self.items.first().map(|(k, _)| *k)
    }

    pub fn pop(&mut self) -> Option<(u128, T)> {
        let n = self.items.len();
        if n == 0 {
            return None;
        }
        let top = self.items.swap_remove(0);
        let n = n - 1;
        if n > 1 {
            let key = self.items[0].0;
            let mut i = 0;
            loop {
                let first = 4 * i + 1;
                if first >= n {
                    break;
                }
                let end = (first + 4).min(n);
                let mut best = first;
                let mut best_key = self.items[first].0;
                for c in first + 1..end {
                    let k = self.items[c].0;
                    if k < best_key {
                        best = c;
                        best_key = k;
                    }
                }
                if best_key >= key {
                    break;
                }
                self.items.swap(i, best);
                i = best;
            }
        }
        Some(top)
    }
}

/// Cores above which the pending events (about one per busy core) outgrow the caches and
/// the radix heap beats the 4-ary heap.
pub const RADIX_CORES_MIN: u64 = 32 * 1024;

/// The engine's queue: a [`QuadHeap`] for small clusters, a [`RadixHeap`] for large ones.
#[derive(Debug, Clone)]
pub enum EventQueue<T> {
    Quad(QuadHeap<T>),
    Radix(RadixHeap<T>),
}

impl<T> EventQueue<T> {
    /// The queue for a cluster of `cores` cores in all.
    pub fn for_cores(cores: u64) -> Self {
        if cores >= RADIX_CORES_MIN {
            Self::Radix(RadixHeap::default())
        } else {
            Self::Quad(QuadHeap::default())
        }
    }

    pub fn push(&mut self, key: u128, value: T) {
        match self {
            Self::Quad(q) => q.push(key, value),
            Self::Radix(r) => r.push(key, value),
        }
    }

    pub fn peek_key(&mut self) -> Option<u128> {
        match self {
            Self::Quad(q) => q.peek_key(),
            Self::Radix(r) => r.peek_key(),
        }
    }

    pub fn pop(&mut self) -> Option<(u128, T)> {
        match self {
            Self::Quad(q) => q.pop(),
            Self::Radix(r) => r.pop(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;

    /// Against `BinaryHeap` on a simulation-like sequence: each pop schedules a few events at
    /// or after the popped time, many at the same nanosecond (ties in scheduling order).
    #[test]
    fn pops_in_the_order_of_a_binary_heap() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
        let mut radix = RadixHeap::default();
        let mut quad = QuadHeap::default();
        let mut binary = BinaryHeap::new();
        let mut seq = 0u64;
        let mut push = |at: u64,
                        radix: &mut RadixHeap<u64>,
                        quad: &mut QuadHeap<u64>,
                        binary: &mut BinaryHeap<_>| {
            seq += 1;
            radix.push(key(at, seq), seq);
            quad.push(key(at, seq), seq);
            binary.push(Reverse((at, seq)));
        };
        for _ in 0..100 {
            let at = rng.random_range(0..1_000);
            push(at, &mut radix, &mut quad, &mut binary);
        }
        let mut popped = 0;
        while let Some((k, v)) = radix.pop() {
            let Reverse((at, s)) = binary.pop().expect("same length");
            assert_eq!((key_time(k), v), (at, s));
            assert_eq!(quad.pop(), Some((k, v)));
            popped += 1;
            if popped < 20_000 {
                for _ in 0..rng.random_range(0..3) {
                    let later = at + [0, 1, rng.random_range(0..1 << 30)][rng.random_range(0..3)];
                    push(later, &mut radix, &mut quad, &mut binary);
                }
                // A peek must not stop a push below the current minimum.
                if let Some(min) = radix.peek_key() {
                    assert!(key_time(min) >= at);
                    push(at, &mut radix, &mut quad, &mut binary);
                }
            }
            assert_eq!(radix.len(), binary.len());
        }
        assert!(binary.is_empty() && quad.pop().is_none() && popped > 20_000);
    }
}
