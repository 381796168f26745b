//! The simulator against closed-form queueing theory.
//!
//! Each test sets up a model whose mean response time (or mean slowdown) is known in closed
//! form, runs it with Poisson arrivals, and compares the measured mean with the formula:
//!
//! 1. M/M/1, FIFO (Turnpike, 1 machine x 1 core): `E[T] = S / (1 - rho)`.
//! 2. M/M/c, FIFO (Turnpike, 1 machine x c cores): Erlang C.
//! 3. M/G/1 processor sharing (Hermod, 1 x 1) with heavy-tailed service: the mean slowdown is
//!    `1 / (1 - rho)` whatever the service distribution.
//! 4. Two-class preemptive-resume priority M/M/1 (Turnpike, 1 x 1).
//! 5. Power-of-two-choices over 500 single-core machines (Turnpike, k = 2): the supermarket
//!    model's mean-field limit.
//!
//! Method. A mean of correlated response times has no simple standard error, and the engine
//! hands back latencies as a sketch (their time order is gone, so batch means are impossible;
//! the mean itself is exact, from a running sum).
//! So every estimate is made from [`REPLICATIONS`] independent replications (seeds
//! `first_seed..first_seed + REPLICATIONS`, which reseed both the workload and the policies):
//! each replication yields one mean, and the grand mean `m` has standard error `se = sd / √R`.
//! By the central limit theorem over the (long, independent) replications `(m - truth) / se`
//! is Student-t with `R - 1 = 19` degrees of freedom, so a test accepts when
//! `|m - expected| <= t(0.9995, 19) x se + bias`, where `bias` bounds the known systematic
//! errors of that model (spelled out at each test). The 99.9% level makes a false alarm
//! unlikely if seeds or random streams ever change (about 1.4% over the 14 checks of this
//! file), and the seeds are fixed, so a run is reproducible. A self-calibrated tolerance could
//! quietly grow useless, so each check also asserts that its half-width `t x se` stays under
//! a stated fraction of the expected value: every check is known to be sharp to a few percent.
//!
//! Common systematic errors, all far below the tolerances:
//! - Initial transient: runs start empty. In the single-machine models the warm-up (arrivals
//!   before it are run but not measured) is 2000 S, over 20 relaxation times of the slowest
//!   of them (M/M/1 at rho = 0.8: `1 / (mu (1 - sqrt(rho))^2) = 89 S`), so the leftover bias
//!   is below `e^-20` of the initial offset; test 5 justifies its own.
//! - End of run: arrivals stop at `duration_s`, and every measured invocation must complete
//!   within the drain (asserted: `unfinished == 0`), so nothing is censored. Under FIFO a
//!   response time depends only on earlier arrivals; under priority and processor sharing the
//!   few invocations in the system when arrivals stop finish a little early, a bias of order
//!   (jobs in system) / (jobs per replication) < 1e-4.
//! - Per-replication ratio estimator (random number of measured invocations): bias of order
//!   the squared relative standard error of one replication, about 0.1% at most here.
//! - Runtimes are whole nanoseconds with a mean service of 1 ms: < 1e-6.
//!
//! Runtime: about 16 M simulated invocations in all, 5 to 12 s on two cores in release mode.

use std::fmt::Write as _;

use turnpike_sim::config::{Config, SchedulerKind};
use turnpike_sim::engine::{ClassOutcome, RunOutcome, Sim};
use turnpike_sim::workload::Workload;

/// Independent replications per estimate.
const REPLICATIONS: u64 = 20;
/// Two-sided 99.9% quantile of Student's t with `REPLICATIONS - 1 = 19` degrees of freedom.
const T_999_19: f64 = 3.883;
/// Mean service time used everywhere (the workload's own mean, in ms).
const S_MS: f64 = 1.0;
/// Bound on the systematic errors common to all single-machine models (see the module doc:
/// each is about 0.1% at most; this leaves a factor of two).
const SINGLE_MACHINE_BIAS: f64 = 0.002;

const EXPONENTIAL: &str = "kind = \"exponential\"\nmean_ms = 1.0";

/// One class (a single FIFO).
const ONE_CLASS: &[(&str, f64, f64)] = &[("only", 1.0, 1.0)];

/// A single-scheduler experiment at one offered load; `seed` varies per replication.
struct Model {
    scheduler: SchedulerKind,
    machines: u32,
    cores: u32,
    k: u32,
    /// `(name, price, weight)`. List them cheapest first, so that the i-th entry is `ClassId(i)`
    /// (see `class_weights_follow_their_class_whatever_the_file_order`).
    classes: &'static [(&'static str, f64, f64)],
    /// The body of `[workload.service]`; its mean must be `S_MS`.
    service: &'static str,
    load: f64,
    duration_s: f64,
    warmup_s: f64,
}

impl Model {
    fn toml(&self, seed: u64) -> String {
        let mut classes = String::new();
        for (name, price, weight) in self.classes {
            writeln!(
                classes,
                "[[classes]]\nname = \"{name}\"\nprice = {price:?}\nweight = {weight:?}"
            )
            .expect("write to a String");
        }
        format!(
            r#"
seed = {seed}
schedulers = ["{scheduler}"]
loads = [{load:?}]
{classes}
[cluster]
machines = {machines}
cores = {cores}
shards = 4
k = {k}
idle_list = false
# The textbook models place by total queue length alone (JSQ(d) in test 5): the paper's rule.
# (The class-aware rule's extra polled machine and top-class deferral are other policies; on
# one machine the two rules agree.)
placement = "paper"

[workload]
duration_s = {duration:?}
warmup_s = {warmup:?}
drain_s = 600.0
arrivals = "poisson"
functions = 1
classes_by = "invocation"

[workload.service]
{service}
"#,
            scheduler = self.scheduler.name(),
            load = self.load,
            machines = self.machines,
            cores = self.cores,
            k = self.k,
            duration = self.duration_s,
            warmup = self.warmup_s,
            service = self.service,
        )
    }

    /// One replication; checks that nothing measured was left unfinished or failed.
    fn run(&self, seed: u64) -> RunOutcome {
        let text = self.toml(seed);
        let config = Config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
        let classes = config.class_set().expect("valid classes");
        let out = Sim::new(&config, &classes, self.scheduler, self.load, None).run(&mut |_| {});
        assert!(
            (out.mean_runtime_ms - S_MS).abs() < 1e-9,
            "seed {seed}: the service's mean should be {S_MS} ms, is {} ms",
            out.mean_runtime_ms
        );
        for (i, c) in out.classes.iter().enumerate() {
            assert!(
                c.unfinished == 0 && c.failed == 0 && c.completed > 1000,
                "seed {seed}, class {i}: completed {}, unfinished {}, failed {}",
                c.completed,
                c.unfinished,
                c.failed
            );
        }
        out
    }

    /// Runs the replications with seeds `first_seed..first_seed + REPLICATIONS` and collects
    /// `N` statistics from each.
    fn replicate<const N: usize>(
        &self,
        first_seed: u64,
        stats: impl Fn(&RunOutcome) -> [f64; N],
    ) -> [Replicated; N] {
        let mut values: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
        for seed in first_seed..first_seed + REPLICATIONS {
            let out = self.run(seed);
            for (v, x) in values.iter_mut().zip(stats(&out)) {
                v.push(x);
            }
        }
        values.map(|values| Replicated { first_seed, values })
    }
}

/// One statistic over independent replications.
struct Replicated {
    first_seed: u64,
    values: Vec<f64>,
}

impl Replicated {
    fn mean(&self) -> f64 {
        self.values.iter().sum::<f64>() / self.values.len() as f64
    }

    fn std_error(&self) -> f64 {
        let m = self.mean();
        let n = self.values.len() as f64;
        let var = self.values.iter().map(|x| (x - m).powi(2)).sum::<f64>() / (n - 1.0);
        (var / n).sqrt()
    }

    /// Asserts `|mean - expected| <= t x se + bias_rel x expected`, and that the statistical
    /// half-width `t x se` is at most `sharp_rel x expected` (else the check would be weak).
    fn assert_matches(&self, what: &str, expected: f64, bias_rel: f64, sharp_rel: f64) {
        let (m, se) = (self.mean(), self.std_error());
        let half_width = T_999_19 * se;
        let tolerance = half_width + bias_rel * expected;
        let seeds = format!(
            "seeds {}..={}",
            self.first_seed,
            self.first_seed + REPLICATIONS - 1
        );
        let per_seed: Vec<String> = self.values.iter().map(|v| format!("{v:.4}")).collect();
        let report = format!(
            "{what} ({seeds}): expected {expected:.5}, measured {m:.5} (error {:+.2}%), \
             standard error {se:.5}, tolerance {tolerance:.5} ({:.2}%)",
            100.0 * (m - expected) / expected,
            100.0 * tolerance / expected,
        );
        eprintln!("{report}");
        assert!(
            half_width <= sharp_rel * expected,
            "{report}: the replications are too noisy for a sharp check (half-width {:.2}% > \
             {:.2}%); per replication: [{}]",
            100.0 * half_width / expected,
            100.0 * sharp_rel,
            per_seed.join(", ")
        );
        assert!(
            (m - expected).abs() <= tolerance,
            "{report}: outside the tolerance; per replication: [{}]",
            per_seed.join(", ")
        );
    }
}

/// A class's exact mean latency in ms (the sketch keeps the exact sum).
fn mean_ms(c: &ClassOutcome) -> f64 {
    c.mean_latency_ms().expect("completed invocations")
}

// ---- Closed forms ----

/// M/M/1 (FIFO or any work-conserving order for the mean): `E[T] = S / (1 - rho)`.
fn mm1_response(s: f64, rho: f64) -> f64 {
    s / (1.0 - rho)
}

/// Erlang C: the probability that an arrival waits in an M/M/c with offered load `a = lambda S`
/// (in Erlangs, `a < c`). Through the numerically stable Erlang B recursion
/// `B(0) = 1, B(k) = a B(k-1) / (k + a B(k-1))`, and `C = c B / (c - a (1 - B))`.
fn erlang_c(c: u32, a: f64) -> f64 {
    let mut b = 1.0;
    for k in 1..=c {
        b = a * b / (f64::from(k) + a * b);
    }
    let c = f64::from(c);
    c * b / (c - a * (1.0 - b))
}

/// M/M/c FIFO mean response: `E[T] = S + C(c, a) S / (c - a)`, with `a = c rho`.
fn mmc_response(s: f64, c: u32, rho: f64) -> f64 {
    let a = f64::from(c) * rho;
    s + erlang_c(c, a) * s / (f64::from(c) - a)
}

/// Preemptive-resume priority M/M/1, two classes with the same service rate `mu = 1/S`;
/// `rho_high` and `rho_low` are the classes' loads. Returns `(E[T_high], E[T_low])`.
///
/// The general result (Kleinrock, Queueing Systems vol. 2; Harchol-Balter, Performance
/// Modeling and Design of Computer Systems, preemptive priority), classes numbered from the
/// highest, `sigma_k = rho_1 + ... + rho_k`:
/// `E[T_k] = E[S_k] / (1 - sigma_{k-1}) + (sum_{i<=k} lambda_i E[S_i^2] / 2) / ((1 - sigma_{k-1})(1 - sigma_k))`.
/// A class never sees lower classes (preemption), so class k is a queue of classes 1..k only,
/// and its service is stretched by the preemptions of higher classes. With exponential
/// service `E[S^2] = 2 S^2`, so `lambda_i E[S^2] / 2 = rho_i S`. Hence, with `rho = rho_1 + rho_2`:
/// `E[T_1] = S + rho_1 S / (1 - rho_1) = S / (1 - rho_1)` (an M/M/1 of its own load) and
/// `E[T_2] = S / (1 - rho_1) + rho S / ((1 - rho_1)(1 - rho))`.
/// Check: `(lambda_1 E[T_1] + lambda_2 E[T_2]) / lambda = S / (1 - rho)`, the FIFO M/M/1 mean,
/// as it must be (with exponential, equal service times the number in system does not depend
/// on the work-conserving order); `closed_forms_are_consistent` verifies this numerically.
fn priority_mm1_response(s: f64, rho_high: f64, rho_low: f64) -> (f64, f64) {
    let rho = rho_high + rho_low;
    let high = s / (1.0 - rho_high);
    let low = s / (1.0 - rho_high) + rho * s / ((1.0 - rho_high) * (1.0 - rho));
    (high, low)
}

/// Supermarket model (Mitzenmacher 2001; Vvedenskaya, Dobrushin, Karpelevich 1996): `n`
/// FIFO single-server queues, Poisson arrivals at rate `lambda n`, exponential service of
/// mean `S`, each arrival joins the shortest of `d` queues sampled at random. As `n -> inf`
/// the fraction of queues with at least `i` jobs is `lambda^((d^i - 1)/(d - 1))`, so by
/// Little's law `E[T] / S = sum_{i>=1} lambda^((d^i - d)/(d - 1))`.
fn supermarket_response(s: f64, lambda: f64, d: u32) -> f64 {
    assert!(d >= 2, "d = 1 is M/M/1, not this formula");
    let d = f64::from(d);
    let mut sum = 0.0;
    for i in 1..64 {
        let term = lambda.powf((d.powi(i) - d) / (d - 1.0));
        sum += term;
        if term < 1e-15 {
            break;
        }
    }
    s * sum
}

// ---- Tests ----

/// The formulas against each other and against known values, so that a test below cannot
/// pass or fail because of a wrong expectation.
#[test]
fn closed_forms_are_consistent() {
    let close = |a: f64, b: f64| (a - b).abs() <= 1e-9 * b.abs().max(1.0);
    for rho in [0.1, 0.5, 0.8, 0.95] {
        // One server: Erlang C is rho (PASTA: an arrival waits iff the server is busy).
        assert!(close(erlang_c(1, rho), rho));
        assert!(close(mmc_response(1.0, 1, rho), mm1_response(1.0, rho)));
        // Conservation: the lambda-weighted mean of the two classes is FIFO M/M/1's mean.
        for high_share in [0.2, 0.4, 0.7] {
            let (rh, rl) = (rho * high_share, rho * (1.0 - high_share));
            let (th, tl) = priority_mm1_response(1.0, rh, rl);
            let mixed = high_share * th + (1.0 - high_share) * tl;
            assert!(close(mixed, mm1_response(1.0, rho)), "{rho} {high_share}");
            assert!(close(th, mm1_response(1.0, rh)));
        }
    }
    // Erlang C by the direct sum for c = 4, a = 3.2: 0.5964324717874046.
    assert!(close(erlang_c(4, 3.2), 0.596_432_471_787_404_6));
    assert!(close(mmc_response(1.0, 4, 0.8), 1.745_540_589_734_255_7));
    // The series for d = 2, summed independently (Python, 40 terms).
    assert!(close(
        supermarket_response(1.0, 0.9, 2),
        2.614_057_377_323_876
    ));
    assert!(close(
        supermarket_response(1.0, 0.7, 2),
        1.614_453_770_317_711
    ));
    // Using the 40/60 split at rho = 0.8 of the priority test.
    let (th, tl) = priority_mm1_response(1.0, 0.32, 0.48);
    assert!(close(th, 1.0 / 0.68) && close(tl, 1.0 / 0.68 + 0.8 / (0.68 * 0.2)));
}

/// Test 1: M/M/1. One machine with one core under Turnpike, one class, exponential service:
/// the machine is a FIFO single server, so `E[T] = S / (1 - rho)`: 2 ms at rho = 0.5 and 5 ms
/// at rho = 0.8.
///
/// Tolerance: t(0.999, 19) x se over 20 replications, plus `SINGLE_MACHINE_BIAS` (0.2%). The
/// relative variance of a replication's mean is about `K / n` for n measured invocations, with
/// `K ~ 10` at rho = 0.5 and `K ~ 75` at rho = 0.8 (measured; it grows like M/M/1's relaxation
/// time). With 0.5 M and 2.4 M measured invocations the half-widths are about 1.7% and 2.2%.
#[test]
fn mm1_mean_response_time() {
    for (first_seed, load, duration_s, sharp) in
        [(1_000, 0.5, 52.0, 0.025), (1_100, 0.8, 152.0, 0.03)]
    {
        let model = Model {
            scheduler: SchedulerKind::Turnpike,
            machines: 1,
            cores: 1,
            k: 1,
            classes: ONE_CLASS,
            service: EXPONENTIAL,
            load,
            duration_s,
            warmup_s: 2.0,
        };
        let [t] = model.replicate(first_seed, |out| [mean_ms(&out.classes[0])]);
        t.assert_matches(
            &format!("M/M/1 E[T] (ms) at rho = {load}"),
            mm1_response(S_MS, load),
            SINGLE_MACHINE_BIAS,
            sharp,
        );
    }
}

/// Test 2: M/M/c. One machine with c cores under Turnpike, one class (FIFO): an M/M/c, whose
/// mean response is Erlang C's `S + C(c, a) S / (c - a)`: 1.7455 ms for c = 4 and 1.2860 ms for
/// c = 8, both at rho = 0.8. Both wait for a core a good part of the time (C = 0.60 and
/// 0.46), so a wrong core count or order would show: M/M/1 at the same rho gives 5 ms, and an
/// infinite-server (no waiting) 1 ms.
///
/// Tolerance: as in test 1. `K ~ 45` (c = 4) and `~ 30` (c = 8): a multi-server queue relaxes
/// faster than M/M/1 at the same utilization. With 1.9 M measured invocations per
/// configuration the half-widths are about 2% and 1.7%.
#[test]
fn mmc_erlang_c_mean_response_time() {
    for (first_seed, cores, load, duration_s) in [(2_000, 4u32, 0.8, 32.0), (2_100, 8, 0.8, 17.0)] {
        let model = Model {
            scheduler: SchedulerKind::Turnpike,
            machines: 1,
            cores,
            k: 1,
            classes: ONE_CLASS,
            service: EXPONENTIAL,
            load,
            duration_s,
            warmup_s: 2.0,
        };
        let [t] = model.replicate(first_seed, |out| [mean_ms(&out.classes[0])]);
        t.assert_matches(
            &format!("M/M/{cores} E[T] (ms) at rho = {load}"),
            mmc_response(S_MS, cores, load),
            SINGLE_MACHINE_BIAS,
            0.03,
        );
    }
}

/// Test 3: M/G/1 processor sharing. Hermod on one machine with one core is an M/G/1-PS queue.
/// Under PS a job of size x has `E[T | x] = x / (1 - rho)` whatever the service distribution
/// (a classic result; e.g. Harchol-Balter, Performance Modeling and Design of Computer
/// Systems, on PS), so the mean slowdown `E[T / x]` is `1 / (1 - rho)` and the mean response
/// `E[T] = S / (1 - rho)`. Checked with two service distributions far from exponential, both
/// of mean 1 ms:
/// - Pareto, alpha = 2.5 (the paper's alpha), x_m = 0.6 ms: power-law tail, infinite third
///   moment, at rho = 0.8. FIFO (Pollaczek-Khinchine, E[S^2] = 1.8 ms^2) would give
///   E[T] = 4.6 ms and a mean slowdown of 1 + 3.6 ms x E[1/S] (1.19 / ms) = 5.29: 8% and 6% away.
/// - lognormal, sigma = 1.5, median e^(-1.125) ms: squared coefficient of variation
///   e^(2.25) - 1 = 8.5, at rho = 0.5. FIFO would give E[T] = 5.74 ms and a mean slowdown
///   of 46 (small jobs wait behind big ones).
///
/// Alpha 2.5 rather than 2.2: the spread of a replication's mean depends on moments beyond
/// the second, and at 2.2 only those below 2.2 exist, so the sample standard error would be
/// unreliable (dominated by rare huge jobs).
///
/// Tolerance: as in test 1. `K ~ 75` (slowdown) and `~ 90` (response) for the Pareto at
/// rho = 0.8, `~ 15` and `~ 40` for the lognormal at rho = 0.5; with 1.6 M and 1 M measured
/// invocations the half-widths are about 2.8%, 3%, 1.5% and 2.4%. The one bias specific to PS
/// (the few invocations in the system when arrivals stop share the core with fewer others) is
/// below 1e-4, see the module doc.
#[test]
fn mg1_processor_sharing_is_insensitive() {
    let cases = [
        (
            3_000,
            "Pareto(2.5)",
            "kind = \"pareto\"\nalpha = 2.5\nxm_ms = 0.6",
            0.8,
            102.0,
        ),
        (
            3_100,
            "lognormal(sigma 1.5)",
            // median = e^(-sigma^2 / 2) so that the mean is 1 ms.
            "kind = \"lognormal\"\nmedian_ms = 0.32465246735834974\nsigma = 1.5",
            0.5,
            102.0,
        ),
    ];
    for (first_seed, name, service, load, duration_s) in cases {
        let model = Model {
            scheduler: SchedulerKind::Hermod,
            machines: 1,
            cores: 1,
            k: 1,
            classes: ONE_CLASS,
            service,
            load,
            duration_s,
            warmup_s: 2.0,
        };
        let [slowdown, response] = model.replicate(first_seed, |out| {
            let c = &out.classes[0];
            [c.slowdown.mean().expect("completed"), mean_ms(c)]
        });
        slowdown.assert_matches(
            &format!("M/G/1-PS mean slowdown, {name} at rho = {load}"),
            1.0 / (1.0 - load),
            SINGLE_MACHINE_BIAS,
            0.04,
        );
        response.assert_matches(
            &format!("M/G/1-PS E[T] (ms), {name} at rho = {load}"),
            mm1_response(S_MS, load),
            SINGLE_MACHINE_BIAS,
            0.045,
        );
    }
}

/// Test 4: two-class preemptive-resume priority M/M/1. Turnpike on one machine with one
/// core, exponential service of the same mean for both classes, 40% of invocations in the
/// higher-priced class, total rho = 0.8 (rho_high = 0.32, rho_low = 0.48). Expected (see
/// [`priority_mm1_response`]): `E[T_high] = S / (1 - 0.32) = 1.4706 ms`,
/// `E[T_low] = 1.4706 + 0.8 / (0.68 x 0.2) = 7.3529 ms`, and the lambda-weighted mean over
/// both classes `S / (1 - 0.8) = 5 ms` (the conservation law). For contrast, non-preemptive
/// priority would give `E[T_high] = 1 + 0.8 / 0.68 = 2.18 ms` and `E[T_low] = 6.88 ms` (-6.4%),
/// and no priority 5 ms for both.
///
/// Classes are drawn per invocation (`classes_by = "invocation"`), so the split is exact in
/// expectation; the measured share is checked too (binomial, standard error 0.03% of the
/// invocations per replication, so its tolerance is pure t x se).
///
/// Tolerance: as in test 1. `K ~ 5` for the high class (a light M/M/1), `~ 70` for the low
/// class (it waits out the high class's busy periods), `~ 90` for the weighted mean. With
/// 2.4 M measured invocations the half-widths are about 1%, 2.8% and 2.6%.
#[test]
fn two_class_preemptive_priority_mm1() {
    const TWO_CLASSES: &[(&str, f64, f64)] = &[("low", 1.0, 0.6), ("high", 2.0, 0.4)];
    let (load, high_share) = (0.8, 0.4);
    let model = Model {
        scheduler: SchedulerKind::Turnpike,
        machines: 1,
        cores: 1,
        k: 1,
        classes: TWO_CLASSES,
        service: EXPONENTIAL,
        load,
        duration_s: 152.0,
        warmup_s: 2.0,
    };
    let [high, low, mixed, share] = model.replicate(4_000, |out| {
        let (lo, hi) = (&out.classes[0], &out.classes[1]);
        let (t_lo, t_hi) = (mean_ms(lo), mean_ms(hi));
        let n = (lo.completed + hi.completed) as f64;
        let share = hi.completed as f64 / n;
        [t_hi, t_lo, share * t_hi + (1.0 - share) * t_lo, share]
    });
    share.assert_matches("share of the high class", high_share, 0.0, 0.01);
    let (expected_high, expected_low) =
        priority_mm1_response(S_MS, load * high_share, load * (1.0 - high_share));
    high.assert_matches(
        "priority M/M/1 E[T_high] (ms)",
        expected_high,
        SINGLE_MACHINE_BIAS,
        0.02,
    );
    low.assert_matches(
        "priority M/M/1 E[T_low] (ms)",
        expected_low,
        SINGLE_MACHINE_BIAS,
        0.04,
    );
    mixed.assert_matches(
        "priority M/M/1 lambda-weighted E[T] (ms)",
        mm1_response(S_MS, load),
        SINGLE_MACHINE_BIAS,
        0.04,
    );
}

/// Test 5: power of two choices. 500 single-core machines under Turnpike with k = 2, the
/// paper's placement rule, no idle list, zero decision and poll delays: every arrival is placed at once on the machine with
/// fewer invocations (running + waiting = queue length) of two distinct random machines, and
/// each machine is a FIFO single server. This is the supermarket model with d = 2; its
/// mean-field mean response is `S sum_{i>=1} lambda^(2^i - 2)`: 2.6141 ms at lambda = 0.9
/// and 1.6145 ms at 0.7 (random placement, i.e. M/M/1, would give 10 ms and 3.33 ms; d = 3
/// gives 2.03 ms and 1.36 ms). The four shards change nothing: with zero delays each places
/// immediately from the current state.
///
/// Tolerance: t(0.999, 19) x se, plus a bias allowance of 0.5% for the finite system. The
/// mean-field value is the n -> infinity limit and the finite system's error is O(1/n) (Gast
/// 2017, "Expected values estimated via mean-field approximation are 1/N-accurate"), and
/// positive: finite systems fluctuate more. Measured at lambda = 0.9 (20 replications each):
/// n = 100: +1.23% +- 0.36%, n = 250: +0.50% +- 0.31%, n = 500: +0.5% +- 0.26%; a c/n fit
/// gives about +0.25% at n = 500 (lambda = 0.7: +0.31% at n = 100, so +0.06% at n = 500).
/// 0.5% is twice the fitted value. Sampling two distinct machines instead of the model's two
/// independent draws differs only when the draws coincide (probability 1/n = 0.2% per arrival)
/// and then only helps, a further O(1/n) that the allowance covers. The warm-up of 100 S is
/// ~8 time constants of the mean-field ODE from empty (~13 S at lambda = 0.9, computed
/// numerically: the ODE's mean queue length is within 0.02% of its fixed point by then).
/// `K ~ 35` at lambda = 0.9 and `~ 5` at 0.7 (measured); with 1.35 M and 0.7 M measured
/// invocations the half-widths are about 2% and 1%.
#[test]
fn power_of_two_choices_matches_mean_field() {
    for (first_seed, load, duration_s, sharp) in [(5_000, 0.9, 0.25, 0.03), (5_100, 0.7, 0.2, 0.02)]
    {
        let model = Model {
            scheduler: SchedulerKind::Turnpike,
            machines: 500,
            cores: 1,
            k: 2,
            classes: ONE_CLASS,
            service: EXPONENTIAL,
            load,
            duration_s,
            warmup_s: 0.1,
        };
        let [t] = model.replicate(first_seed, |out| [mean_ms(&out.classes[0])]);
        t.assert_matches(
            &format!("supermarket d = 2, n = 500, E[T] (ms) at lambda = {load}"),
            supermarket_response(S_MS, load, 2),
            0.005,
            sharp,
        );
    }
}

/// Regression: a class's `weight` must follow the class, not the position of its `[[classes]]`
/// entry in the file (`ClassId`s are numbered by ascending price, whatever the file order).
#[test]
fn class_weights_follow_their_class_whatever_the_file_order() {
    const PRICIEST_FIRST: &[(&str, f64, f64)] = &[("high", 2.0, 0.9), ("low", 1.0, 0.1)];
    let model = Model {
        scheduler: SchedulerKind::Turnpike,
        machines: 1,
        cores: 1,
        k: 1,
        classes: PRICIEST_FIRST,
        service: EXPONENTIAL,
        load: 0.5,
        duration_s: 10.0,
        warmup_s: 0.0,
    };
    let seed = 6_000;
    let config = Config::parse(&model.toml(seed)).expect("valid config");
    let classes = config.class_set().expect("valid classes");
    let high = classes.by_name("high").expect("declared");
    let mut workload = Workload::new(&config, &classes, model.load, None);
    let (mut all, mut of_high) = (0u32, 0u32);
    while let Some(a) = workload.next_arrival() {
        all += 1;
        of_high += u32::from(a.class == high);
    }
    // ~5000 arrivals: the share's standard error is sqrt(0.09 / 5000) = 0.4%; 0.02 is 5 of them.
    let share = f64::from(of_high) / f64::from(all);
    assert!(
        (share - 0.9).abs() < 0.02,
        "seed {seed}: class `high` has weight 0.9, expected a share of 0.900 of {all} \
         invocations, measured {share:.3}"
    );
}
