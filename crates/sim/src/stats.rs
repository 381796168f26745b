//! Summaries of samples: percentiles (linear interpolation between closest ranks) and spread.

use serde::Serialize;

/// The `q` quantile (0..=1) of sorted samples; `None` when there are none.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    let frac = pos - lo as f64;
    Some(sorted[lo] + (sorted[hi] - sorted[lo]) * frac)
}

pub fn mean(xs: &[f64]) -> Option<f64> {
    (!xs.is_empty()).then(|| xs.iter().sum::<f64>() / xs.len() as f64)
}

/// Mean and percentiles of a set of samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Serialize)]
pub struct Spread {
    pub mean: f64,
    pub min: f64,
    pub p5: f64,
    pub p25: f64,
    pub p50: f64,
    pub p75: f64,
    pub p95: f64,
    pub max: f64,
}

impl Spread {
    pub fn of(samples: &[f64]) -> Option<Self> {
        let mut s = samples.to_vec();
        s.sort_unstable_by(f64::total_cmp);
        let q = |q| quantile_sorted(&s, q);
        Some(Self {
            mean: mean(&s)?,
            min: q(0.0)?,
            p5: q(0.05)?,
            p25: q(0.25)?,
            p50: q(0.5)?,
            p75: q(0.75)?,
            p95: q(0.95)?,
            max: q(1.0)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_interpolate() {
        let s = [1.0, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile_sorted(&s, 0.5), Some(3.0));
        assert_eq!(quantile_sorted(&s, 0.0), Some(1.0));
        assert_eq!(quantile_sorted(&s, 1.0), Some(5.0));
        assert_eq!(quantile_sorted(&s, 0.125), Some(1.5));
        assert_eq!(quantile_sorted(&[], 0.5), None);
        let sp = Spread::of(&[4.0, 1.0, 3.0, 2.0]).expect("samples");
        assert_eq!((sp.mean, sp.min, sp.max), (2.5, 1.0, 4.0));
        assert_eq!(Spread::of(&[]), None);
    }
}
