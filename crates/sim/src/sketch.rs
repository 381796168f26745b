//! A mergeable quantile sketch with a stated relative error, for latencies and slowdowns.
//!
//! Why: a run used to keep every measured latency and slowdown (16 bytes per invocation) and
//! sort them at the end, so memory grew with the run's length and the sort was a seventh of
//! the simulator's time. A day of a large cluster's traffic (billions of invocations) could
//! not be summarized that way. This sketch keeps a count per logarithmic bucket instead: its
//! size depends only on the range of the values (a few thousand buckets for latencies from
//! microseconds to hours), not on how many there are.
//!
//! How: a positive `f64`'s bit pattern orders like the number, and its top bits are the
//! exponent followed by the mantissa. Keeping the exponent and the first [`MANTISSA_BITS`]
//! mantissa bits cuts every power of two into `2^MANTISSA_BITS` equal buckets, so a bucket
//! `[lo, hi)` has `hi - lo <= lo / 2^MANTISSA_BITS` (HdrHistogram's and DDSketch's idea; the
//! bucket is found with a shift, no logarithm). Each bucket also keeps the smallest and largest
//! value it holds; a value is reported as its bucket's midpoint clamped to those two, which is
//! within [`RELATIVE_ERROR`] of every value in the bucket, and exact when they are all equal.
//! The smallest value is also kept with its multiplicity, so ranks within it are exact: a
//! slowdown of exactly 1 (an invocation that never waited, most of them at low load) is
//! reported as exactly 1, not as its bucket's 1.0039.
//!
//! Guarantee: [`Sketch::quantile`] interpolates between closest ranks exactly as
//! [`crate::stats::quantile_sorted`] does over the sorted samples, but each ranked sample is
//! replaced by its bucket's value; both ranked values are within [`RELATIVE_ERROR`] of the
//! true ones, so the interpolated quantile is within [`RELATIVE_ERROR`] of the exact one.
//! The minimum, maximum, count and mean are exact (the mean is a running sum, so it can
//! differ from a sum in another order in the last bits). Two sketches merge by adding
//! counts, so runs (or threads) can be combined without their samples.

use serde::Serialize;

/// Mantissa bits kept per bucket: 128 buckets per power of two.
pub const MANTISSA_BITS: u32 = 7;

/// Largest relative error of a reported quantile: half a bucket's width over its lower end,
/// `2^-(MANTISSA_BITS + 1)` (0.39%).
pub const RELATIVE_ERROR: f64 = 1.0 / (1u64 << (MANTISSA_BITS + 1)) as f64;

// Issue 20 asks for 1% or better; checked when the crate compiles.
const _: () = assert!(RELATIVE_ERROR <= 0.01);

/// Bits below the kept mantissa bits.
const SHIFT: u32 = 52 - MANTISSA_BITS;

/// One logarithmic bucket: how many values fell in it, and the extremes among them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
struct Bucket {
    count: u64,
    min: f64,
    max: f64,
}

impl Bucket {
    fn add(&mut self, count: u64, min: f64, max: f64) {
        if self.count == 0 {
            (self.min, self.max) = (min, max);
        } else {
            self.min = self.min.min(min);
            self.max = self.max.max(max);
        }
        self.count += count;
    }
}

/// Counts of non-negative values in logarithmic buckets (see the module docs).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Sketch {
    /// `counts[i]` is the bucket `offset + i`.
    counts: Vec<Bucket>,
    offset: u64,
    /// Values equal to zero (which have no logarithmic bucket).
    zeros: u64,
    count: u64,
    sum: f64,
    min: f64,
    /// How many values equal `min`.
    min_count: u64,
    max: f64,
}

fn bucket(x: f64) -> u64 {
    x.to_bits() >> SHIFT
}

/// The midpoint of a bucket.
fn bucket_value(b: u64) -> f64 {
    let lo = f64::from_bits(b << SHIFT);
    let hi = f64::from_bits((b + 1) << SHIFT);
    lo + (hi - lo) / 2.0
}

impl Sketch {
    /// Records one value; it must be finite and not negative.
    pub fn record(&mut self, x: f64) {
        debug_assert!(
            x.is_finite() && x >= 0.0,
            "a sketch takes finite values >= 0"
        );
        if self.count == 0 || x < self.min {
            (self.min, self.min_count) = (x, 1);
        } else if x == self.min {
            self.min_count += 1;
        }
        if self.count == 0 || x > self.max {
            self.max = x;
        }
        self.count += 1;
        self.sum += x;
        if x == 0.0 {
            self.zeros += 1;
            return;
        }
        self.bucket_mut(bucket(x)).add(1, x, x);
    }

    /// Bucket `b`, the vector grown (at either end) to hold it.
    fn bucket_mut(&mut self, b: u64) -> &mut Bucket {
        if self.counts.is_empty() {
            self.offset = b;
        }
        if b < self.offset {
            let grow = (self.offset - b) as usize;
            self.counts
                .splice(0..0, std::iter::repeat_n(Bucket::default(), grow));
            self.offset = b;
        }
        let i = (b - self.offset) as usize;
        if i >= self.counts.len() {
            self.counts.resize(i + 1, Bucket::default());
        }
        &mut self.counts[i]
    }

    /// Adds another sketch's values to this one.
    pub fn merge(&mut self, other: &Sketch) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 || other.min < self.min {
            (self.min, self.min_count) = (other.min, other.min_count);
        } else if other.min == self.min {
            self.min_count += other.min_count;
        }
        if self.count == 0 || other.max > self.max {
            self.max = other.max;
        }
        self.count += other.count;
        self.sum += other.sum;
        self.zeros += other.zeros;
        for (i, b) in other.counts.iter().enumerate() {
            if b.count > 0 {
                self.bucket_mut(other.offset + i as u64)
                    .add(b.count, b.min, b.max);
            }
        }
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }

    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / self.count as f64)
    }

    pub fn min(&self) -> Option<f64> {
        (self.count > 0).then_some(self.min)
    }

    pub fn max(&self) -> Option<f64> {
        (self.count > 0).then_some(self.max)
    }

    /// Buckets in use: what the sketch's size follows.
    pub fn buckets(&self) -> usize {
        self.counts.len()
    }

    /// The value of rank `r` (0-based, ascending), to within [`RELATIVE_ERROR`].
    fn ranked(&self, r: u64) -> f64 {
        if r < self.min_count {
            return self.min;
        }
        if r + 1 >= self.count {
            return self.max;
        }
        let mut seen = self.zeros;
        for (i, b) in self.counts.iter().enumerate() {
            seen += b.count;
            if r < seen {
                return bucket_value(self.offset + i as u64).clamp(b.min, b.max);
            }
        }
        self.max
    }

    /// The `q` quantile (0..=1), interpolated between closest ranks like
    /// [`crate::stats::quantile_sorted`]; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let pos = q.clamp(0.0, 1.0) * (self.count - 1) as f64;
        let (lo, hi) = (pos.floor(), pos.ceil());
        let frac = pos - lo;
        let (a, b) = (self.ranked(lo as u64), self.ranked(hi as u64));
        Some(a + (b - a) * frac)
    }

    /// The same sketch with every value multiplied by `factor` (> 0), e.g. nanoseconds to
    /// milliseconds. Buckets are kept as they are, so quantiles keep their error bound.
    pub fn scaled(&self, factor: f64) -> ScaledSketch<'_> {
        ScaledSketch {
            sketch: self,
            factor,
        }
    }
}

/// A view of a [`Sketch`] in other units (see [`Sketch::scaled`]).
#[derive(Clone, Copy, Debug)]
pub struct ScaledSketch<'a> {
    sketch: &'a Sketch,
    factor: f64,
}

impl ScaledSketch<'_> {
    pub fn quantile(&self, q: f64) -> Option<f64> {
        self.sketch.quantile(q).map(|v| v * self.factor)
    }

    pub fn mean(&self) -> Option<f64> {
        self.sketch.mean().map(|v| v * self.factor)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::quantile_sorted;
    use rand::{Rng, SeedableRng};

    const QS: [f64; 12] = [
        0.0, 0.001, 0.01, 0.1, 0.25, 0.5, 0.75, 0.9, 0.99, 0.999, 0.9999, 1.0,
    ];

    /// Asserts every quantile of `QS` is within the stated error of the exact one.
    fn check(values: &[f64], sketch: &Sketch) {
        let mut sorted = values.to_vec();
        sorted.sort_by(f64::total_cmp);
        for q in QS {
            let exact = quantile_sorted(&sorted, q).expect("samples");
            let got = sketch.quantile(q).expect("samples");
            let err = (got - exact).abs() / exact.abs().max(f64::MIN_POSITIVE);
            assert!(
                err <= RELATIVE_ERROR,
                "q {q}: sketch {got} exact {exact} (relative error {err:.5} > {RELATIVE_ERROR})"
            );
        }
        assert_eq!(sketch.count(), values.len() as u64);
        assert_eq!(sketch.min(), sorted.first().copied());
        assert_eq!(sketch.max(), sorted.last().copied());
    }

    #[test]
    fn quantiles_are_within_the_stated_error_of_exact_ones() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(20);
        // Heavy-tailed (Pareto 1.5), spanning nine orders of magnitude, and few values.
        for n in [1usize, 2, 3, 10, 1000, 100_000] {
            let values: Vec<f64> = (0..n)
                .map(|_| 1e3 / (1.0 - rng.random::<f64>()).powf(1.0 / 1.5))
                .collect();
            let mut s = Sketch::default();
            values.iter().for_each(|&v| s.record(v));
            check(&values, &s);
        }
        // Many equal values (slowdowns of exactly 1) are reported exactly, even where their
        // bucket also holds larger ones.
        let mut values = vec![1.0; 990];
        values.extend((0..10).map(|i| 1.0 + f64::from(i) / 1000.0));
        let mut s = Sketch::default();
        values.iter().for_each(|&v| s.record(v));
        check(&values, &s);
        assert_eq!(s.quantile(0.5), Some(1.0));
        assert_eq!(s.quantile(0.989), Some(1.0));
    }

    #[test]
    fn a_merge_equals_one_sketch_of_all_values() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(21);
        let values: Vec<f64> = (0..10_000)
            .map(|i| {
                if i % 100 == 0 {
                    0.0
                } else {
                    rng.random_range(1e-3..1e6)
                }
            })
            .collect();
        let (mut all, mut a, mut b) = (Sketch::default(), Sketch::default(), Sketch::default());
        for (i, &v) in values.iter().enumerate() {
            all.record(v);
            if i % 3 == 0 { &mut a } else { &mut b }.record(v);
        }
        a.merge(&b);
        assert_eq!(a.counts, all.counts);
        assert_eq!(
            (a.count, a.zeros, a.min, a.min_count, a.max),
            (all.count, all.zeros, all.min, all.min_count, all.max)
        );
        for q in QS {
            assert_eq!(a.quantile(q), all.quantile(q));
        }
        check(&values, &a);
    }

    #[test]
    fn size_follows_the_range_not_the_count() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(22);
        let mut s = Sketch::default();
        // Latencies from 1 us to 1 h in ns, log-uniform (so the first million cover the range
        // and the second adds only counts): 2^9.97 to 2^41.7, so 33 powers of two of 128
        // buckets each at most (the vector spans the lowest bucket to the highest).
        for _ in 0..1_000_000 {
            s.record(1e3 * 3.6e9f64.powf(rng.random::<f64>()));
        }
        let after_million = s.buckets();
        for _ in 0..1_000_000 {
            s.record(1e3 * 3.6e9f64.powf(rng.random::<f64>()));
        }
        assert_eq!(s.buckets(), after_million);
        assert!(after_million <= 33 * 128, "{after_million} buckets");
        assert_eq!(Sketch::default().quantile(0.5), None);
    }
}
