//! Property tests over random sequences of operations.
//!
//! Each property has a driver that plays the simulator's part: it applies random operations
//! to one policy object, carries out every decision it polls, keeps its own model of the
//! state, and checks the object's decisions and its reported state against that model after
//! every action and every operation.
//!
//! - `machine_unlimited`: [`Machine`] without memory limits: core slots, strict priority,
//!   FIFO within a class, preempt/resume legality, no loss.
//! - `machine_limited_memory`: [`Machine`] with a small memory and swap: memory accounting,
//!   swap-in before resume, swap and kill victims, kills only as the last resort, no loss.
//!   Watermark swap victims are checked as `memory.rs` states the rule: lowest class, then
//!   latest arrival, among the parked resident invocations that fit in the free swap space
//!   (a lowest-class one too big for the free swap is skipped, not waited for).
//! - `machine_long_queues` and `machine_scan_bound_priority_inversion`: the same checks on
//!   class FIFOs where many memory-blocked invocations wait ahead of an eligible one
//!   (regression: the machine once looked only 32 deep and ran a lower class instead).
//! - `edf_machine`: [`EdfMachine`] runs the `cores` earliest deadlines, no loss.
//! - `multi_queue`, `shard`: the head choice (`price x waited`, ties to the higher class)
//!   against a brute-force model in exact integer arithmetic, placement, no loss or duplicate.
//! - `idle_list`: `poll_place` against a brute-force model.
//! - `idle_views_converge`: machines' dispatchers and shards' idle lists over a network that
//!   fails messages (taken or not), repeats old ones and restarts shards, with placements
//!   from the lists and elsewhere and completions: after one refresh with its messages
//!   delivered, every shard's view of every machine is the machine's truth.
//!
//! A failure message holds the reason and the whole trace (operations and the actions they
//! produced); proptest also prints the shrunk input.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt::Write as _;

use proptest::prelude::*;
use proptest::test_runner::{FileFailurePersistence, TestCaseError};
use rand::SeedableRng;

use turnpike_policy::baseline::edf::EdfMachine;
use turnpike_policy::class::{ClassId, ClassSet, PriceClass};
use turnpike_policy::dispatcher::{Dispatcher, DispatcherConfig, DispatcherOutput, IdleListAction};
use turnpike_policy::idle_list::{IdleEntry, IdleList};
use turnpike_policy::machine::{Machine, MachineAction, MachineConfig};
use turnpike_policy::memory::MemoryConfig;
use turnpike_policy::multi_queue::MultiQueue;
use turnpike_policy::placement::{PlacementRule, PollReply};
use turnpike_policy::shard::{Pending, Shard, ShardConfig, ShardDecision, Via};
use turnpike_policy::{InvocationId, MachineId, ShardId};

/// 256 cases a property: the whole file runs in a few seconds in `cargo test --release`;
/// `TURNPIKE_FUZZ_CASES` sets another number (`scripts/fuzz.sh` runs many more). Failing
/// seeds are kept next to this file (`properties.proptest-regressions`) and replayed first
/// on the next run.
fn config() -> ProptestConfig {
    let cases = std::env::var("TURNPIKE_FUZZ_CASES")
        .ok()
        .map(|c| c.parse().expect("TURNPIKE_FUZZ_CASES is a number"))
        .unwrap_or(256);
    ProptestConfig {
        cases,
        max_shrink_iters: 20_000,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..ProptestConfig::default()
    }
}

/// Returns `Err(message)` from the enclosing function unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

/// Attaches the trace to a failure so the message shows the operation sequence.
fn with_trace(result: Result<(), String>, trace: &str) -> Result<(), TestCaseError> {
    result.map_err(|e| {
        TestCaseError::fail(format!(
            "{e}\n--- trace (operation => actions) ---\n{trace}"
        ))
    })
}

fn drain_actions(m: &mut Machine) -> Vec<MachineAction> {
    std::iter::from_fn(|| m.poll_action()).collect()
}

/// A class set whose prices are `halves[i] / 2` (distinct, ascending): exact in `f64`, so the
/// brute-force models below can compare scores in integers.
fn classes_from_halves(halves: &[u32]) -> ClassSet {
    ClassSet::new(
        halves
            .iter()
            .enumerate()
            .map(|(i, &h)| PriceClass {
                name: format!("c{i}"),
                price: f64::from(h) * 0.5,
            })
            .collect(),
    )
    .expect("distinct positive prices")
}

fn price_halves() -> impl Strategy<Value = Vec<u32>> {
    proptest::sample::subsequence((1u32..=8).collect::<Vec<_>>(), 1..=4)
}

// ---------------------------------------------------------------------------------------------
// 1 and 2: the machine scheduler.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum MachineOp {
    /// A new invocation (the next id) arrives.
    Arrive { class: u8, start_mb: u64 },
    /// The running invocation at this index (ids ascending, modulo) completes.
    CompleteRunning(u16),
    /// The waiting invocation at this index (unstarted, parked or swapped) ends: a cancel.
    CancelWaiting(u16),
    /// The driver measures the present invocation at this index at `mb` (the machine ignores
    /// reports for unstarted and swapped-out ones).
    Memory { pick: u16, mb: u64 },
    /// A completion for an id that already ended (completed or killed): ignored.
    CompleteGone(u16),
    /// The started invocation at this index (running, parked or swapped) blocks on I/O.
    Block(u16),
    /// The blocked invocation at this index is ready again.
    Ready(u16),
}

#[derive(Clone, Debug)]
struct MachineCase {
    cores: u32,
    classes: usize,
    memory: Option<MemoryConfig>,
    ops: Vec<MachineOp>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum St {
    NotStarted,
    Running,
    Parked,
    Swapped,
    /// Blocked on I/O, memory resident.
    Blocked,
    /// Blocked on I/O, memory swapped out.
    BlockedSwapped,
    Completed,
    Killed,
}

impl St {
    fn present(self) -> bool {
        !matches!(self, St::Completed | St::Killed)
    }
    fn waiting(self) -> bool {
        matches!(self, St::NotStarted | St::Parked | St::Swapped)
    }
    fn blocked(self) -> bool {
        matches!(self, St::Blocked | St::BlockedSwapped)
    }
    fn resident(self) -> bool {
        matches!(self, St::Running | St::Parked | St::Blocked)
    }
    fn swapped(self) -> bool {
        matches!(self, St::Swapped | St::BlockedSwapped)
    }
    /// Holds memory and no slot: what the memory manager may swap out.
    fn parked(self) -> bool {
        matches!(self, St::Parked | St::Blocked)
    }
}

#[derive(Clone, Debug)]
struct Inv {
    class: u8,
    start_mb: u64,
    /// Memory the driver last reported (or the start memory).
    mem: u64,
    st: St,
    starts: u32,
    /// Has blocked at least once (and so may legitimately wait behind a later arrival of its
    /// class that took its slot meanwhile).
    blocked_ever: bool,
}

/// The driver's model of one machine. An invocation's id is its arrival order.
struct MachineDriver {
    cores: usize,
    classes: usize,
    memory: Option<MemoryConfig>,
    machine: Machine,
    invs: Vec<Inv>,
    kills: Vec<u64>,
    swap_outs: Vec<u64>,
    swap_ins: Vec<u64>,
    trace: String,
}

fn high_mb(c: &MemoryConfig) -> u64 {
    (c.capacity_mb as f64 * c.high_watermark) as u64
}

fn low_mb(c: &MemoryConfig) -> u64 {
    (c.capacity_mb as f64 * c.low_watermark) as u64
}

/// Victim order for preemption, overflow swapping and kills: lowest class, latest arrival.
fn victim_key(id: usize, inv: &Inv) -> (u8, Reverse<usize>) {
    (inv.class, Reverse(id))
}

fn pick<T: Copy>(v: &[T], k: u16) -> Option<T> {
    (!v.is_empty()).then(|| v[usize::from(k) % v.len()])
}

impl MachineDriver {
    fn new(case: &MachineCase) -> Self {
        let machine = Machine::new(
            MachineConfig {
                cores: case.cores,
                memory: case.memory,
            },
            case.classes,
        );
        Self {
            cores: case.cores as usize,
            classes: case.classes,
            memory: case.memory,
            machine,
            invs: Vec::new(),
            kills: vec![0; case.classes],
            swap_outs: vec![0; case.classes],
            swap_ins: vec![0; case.classes],
            trace: String::new(),
        }
    }

    fn ids_where(&self, f: impl Fn(St) -> bool) -> Vec<usize> {
        (0..self.invs.len())
            .filter(|&i| f(self.invs[i].st))
            .collect()
    }

    fn running(&self) -> Vec<usize> {
        self.ids_where(|s| s == St::Running)
    }

    fn used(&self) -> u64 {
        self.invs
            .iter()
            .filter(|i| i.st.resident())
            .map(|i| i.mem)
            .sum()
    }

    fn swapped(&self) -> u64 {
        self.invs
            .iter()
            .filter(|i| i.st.swapped())
            .map(|i| i.mem)
            .sum()
    }

    fn swap_free(&self) -> u64 {
        self.memory
            .map_or(0, |c| c.swap_mb.saturating_sub(self.swapped()))
    }

    fn lowest_running(&self) -> Option<usize> {
        self.running()
            .into_iter()
            .min_by_key(|&i| victim_key(i, &self.invs[i]))
    }

    /// Parked or blocked resident invocations that fit in the free swap space.
    fn swappable_parked(&self) -> Vec<usize> {
        let free = self.swap_free();
        self.ids_where(St::parked)
            .into_iter()
            .filter(|&i| self.invs[i].mem <= free)
            .collect()
    }

    fn inv(&self, id: InvocationId) -> Result<(usize, Inv), String> {
        let i = id.0 as usize;
        match self.invs.get(i) {
            Some(inv) => Ok((i, inv.clone())),
            None => Err(format!("action names unknown invocation {}", id.0)),
        }
    }

    /// Whether the rules let this waiting invocation run now (the machine's "eligible"),
    /// given the memory in use and whether anything runs.
    fn eligible(&self, i: usize, used: u64, nothing_running: bool) -> bool {
        let inv = &self.invs[i];
        match (inv.st, self.memory) {
            (St::Parked, _) | (_, None) => true,
            (St::NotStarted, Some(c)) => nothing_running || used + inv.start_mb <= c.capacity_mb,
            (St::Swapped, Some(c)) => nothing_running || used + inv.mem <= high_mb(&c),
            _ => false,
        }
    }

    fn run(&mut self, ops: &[MachineOp]) -> Result<(), String> {
        for (n, op) in ops.iter().enumerate() {
            self.step(n, op)?;
        }
        // Drain: keep completing running invocations until the machine is empty.
        let mut n = ops.len();
        while self.invs.iter().any(|i| i.st.present()) {
            if self.invs.iter().any(|i| i.st.blocked()) {
                self.step(n, &MachineOp::Ready(0))?;
                n += 1;
                continue;
            }
            let running = self.running();
            ensure!(
                !running.is_empty(),
                "lost work: invocations {:?} wait but nothing runs",
                self.ids_where(St::waiting)
            );
            self.step(n, &MachineOp::CompleteRunning(0))?;
            n += 1;
            ensure!(n < ops.len() + 10_000, "drain does not end");
        }
        ensure!(
            self.machine.functions() == 0,
            "drained but the machine still holds {} functions",
            self.machine.functions()
        );
        ensure!(
            (self.machine.used_mb(), self.machine.swap_used_mb()) == (0, 0),
            "drained but memory is still accounted: used {} swap {}",
            self.machine.used_mb(),
            self.machine.swap_used_mb()
        );
        if self.memory.is_none() {
            ensure!(
                self.invs.iter().all(|i| i.st == St::Completed),
                "unlimited memory but something was killed"
            );
        }
        Ok(())
    }

    fn step(&mut self, n: usize, op: &MachineOp) -> Result<(), String> {
        let note = match *op {
            MachineOp::Arrive { class, start_mb } => {
                let id = self.invs.len();
                self.invs.push(Inv {
                    class,
                    start_mb,
                    mem: start_mb,
                    st: St::NotStarted,
                    starts: 0,
                    blocked_ever: false,
                });
                self.machine
                    .handle_arrival(InvocationId(id as u64), ClassId(class), start_mb)
                    .map_err(|e| format!("fresh id refused: {e}"))?;
                format!("arrival {id} class {class} start {start_mb} MB")
            }
            MachineOp::CompleteRunning(k) => match pick(&self.running(), k) {
                None => "nothing running: skipped".into(),
                Some(id) => {
                    self.invs[id].st = St::Completed;
                    self.machine.handle_completion(InvocationId(id as u64));
                    format!("completion of running {id}")
                }
            },
            MachineOp::CancelWaiting(k) => {
                match pick(&self.ids_where(|s| s.waiting() || s.blocked()), k) {
                    None => "nothing waiting: skipped".into(),
                    Some(id) => {
                        let was = self.invs[id].st;
                        self.invs[id].st = St::Completed;
                        self.machine.handle_completion(InvocationId(id as u64));
                        format!("cancel of waiting {id} ({was:?})")
                    }
                }
            }
            MachineOp::Memory { pick: k, mb } => match pick(&self.ids_where(St::present), k) {
                None => "nothing present: skipped".into(),
                Some(id) => {
                    let inv = &mut self.invs[id];
                    let st = inv.st;
                    if st.resident() {
                        inv.mem = mb;
                    }
                    self.machine.handle_memory(InvocationId(id as u64), mb);
                    format!("memory of {id} ({st:?}) = {mb} MB")
                }
            },
            MachineOp::CompleteGone(k) => match pick(&self.ids_where(|s| !s.present()), k) {
                None => "nothing ended yet: skipped".into(),
                Some(id) => {
                    self.machine.handle_completion(InvocationId(id as u64));
                    format!("completion of ended {id} ({:?})", self.invs[id].st)
                }
            },
            MachineOp::Block(k) => match pick(
                &self.ids_where(|s| matches!(s, St::Running | St::Parked | St::Swapped)),
                k,
            ) {
                None => "nothing started: skipped".into(),
                Some(id) => {
                    let inv = &mut self.invs[id];
                    let was = inv.st;
                    inv.st = if was == St::Swapped {
                        St::BlockedSwapped
                    } else {
                        St::Blocked
                    };
                    inv.blocked_ever = true;
                    self.machine.handle_blocked(InvocationId(id as u64));
                    format!("{id} ({was:?}) blocks")
                }
            },
            MachineOp::Ready(k) => match pick(&self.ids_where(St::blocked), k) {
                None => "nothing blocked: skipped".into(),
                Some(id) => {
                    let inv = &mut self.invs[id];
                    let was = inv.st;
                    inv.st = if was == St::BlockedSwapped {
                        St::Swapped
                    } else {
                        St::Parked
                    };
                    self.machine.handle_ready(InvocationId(id as u64));
                    format!("{id} ({was:?}) ready")
                }
            },
        };
        let actions = drain_actions(&mut self.machine);
        let _ = writeln!(self.trace, "#{n} {op:?}: {note} => {actions:?}");
        if matches!(op, MachineOp::CompleteGone(_)) {
            ensure!(
                actions.is_empty(),
                "completion of an ended invocation produced actions"
            );
        }
        for (i, &a) in actions.iter().enumerate() {
            let prev = i.checked_sub(1).map(|j| actions[j]);
            let next = actions.get(i + 1).copied();
            self.apply(a, prev, next)
                .map_err(|e| format!("at op #{n}, action {a:?}: {e}"))?;
        }
        self.check_state()
            .map_err(|e| format!("after op #{n}: {e}"))
    }

    /// Carries out one action, checking that the rules allowed it.
    fn apply(
        &mut self,
        a: MachineAction,
        prev: Option<MachineAction>,
        next: Option<MachineAction>,
    ) -> Result<(), String> {
        use MachineAction::*;
        let used = self.used();
        let swap_free = self.swap_free();
        let running = self.running();
        match a {
            Start(id) => {
                let (i, inv) = self.inv(id)?;
                ensure!(
                    inv.st == St::NotStarted && inv.starts == 0,
                    "started while {:?} (starts so far {})",
                    inv.st,
                    inv.starts
                );
                if let Some(c) = self.memory {
                    ensure!(
                        running.is_empty() || used + inv.start_mb <= c.capacity_mb,
                        "started with {} MB while {used} MB used of {} and others run",
                        inv.start_mb,
                        c.capacity_mb
                    );
                }
                let inv = &mut self.invs[i];
                inv.st = St::Running;
                inv.starts += 1;
                inv.mem = inv.start_mb;
            }
            Preempt(id) => {
                let (i, inv) = self.inv(id)?;
                ensure!(inv.st == St::Running, "preempted while {:?}", inv.st);
                let lowest = self.lowest_running().expect("it runs");
                ensure!(
                    lowest == i,
                    "preempted {i} but the lowest-class latest running one is {lowest}"
                );
                match next {
                    // The running-overflow rule: preempt then swap out the same one.
                    Some(SwapOut { id: s, .. }) if s == id => {
                        let c = self.memory.ok_or("overflow swap without memory limits")?;
                        ensure!(
                            used > c.capacity_mb,
                            "overflow swap-out while used {used} <= capacity {}",
                            c.capacity_mb
                        );
                        ensure!(
                            running.len() > 1,
                            "overflow swap-out of the only running invocation"
                        );
                        ensure!(
                            inv.mem <= swap_free,
                            "overflow swap-out of {} MB with {swap_free} MB swap free",
                            inv.mem
                        );
                    }
                    // Otherwise a higher class takes the slot.
                    Some(Start(x) | Resume(x) | SwapIn { id: x, .. }) => {
                        let (_, winner) = self.inv(x)?;
                        ensure!(
                            winner.class > inv.class,
                            "preempted class {} for {} of class {}",
                            inv.class,
                            x.0,
                            winner.class
                        );
                    }
                    other => return Err(format!("preempt followed by {other:?}")),
                }
                self.invs[i].st = St::Parked;
            }
            Resume(id) => {
                let (i, inv) = self.inv(id)?;
                ensure!(
                    inv.st != St::Swapped,
                    "resumed while swapped out (no SwapIn first)"
                );
                ensure!(
                    inv.st == St::Parked,
                    "resumed while {:?} (Resume only after Preempt)",
                    inv.st
                );
                self.invs[i].st = St::Running;
            }
            SwapIn { id, mb } => {
                let c = self.memory.ok_or("swap-in without memory limits")?;
                let (i, inv) = self.inv(id)?;
                ensure!(inv.st == St::Swapped, "swapped in while {:?}", inv.st);
                ensure!(
                    mb == inv.mem,
                    "swapped in {mb} MB but it had {} MB",
                    inv.mem
                );
                ensure!(
                    running.is_empty() || used + mb <= high_mb(&c),
                    "swapped in {mb} MB with {used} MB used, over the high watermark {}",
                    high_mb(&c)
                );
                ensure!(
                    next == Some(Resume(id)),
                    "swap-in not followed by its Resume but by {next:?}"
                );
                self.swap_ins[usize::from(inv.class)] += 1;
                self.invs[i].st = St::Parked;
            }
            SwapOut { id, mb } => {
                let c = self.memory.ok_or("swap-out without memory limits")?;
                let (i, inv) = self.inv(id)?;
                ensure!(
                    inv.st.parked(),
                    "swapped out while {:?} (only parked or blocked ones, or a running one right after its Preempt)",
                    inv.st
                );
                ensure!(
                    mb == inv.mem,
                    "swapped out {mb} MB but it had {} MB",
                    inv.mem
                );
                ensure!(
                    mb <= swap_free,
                    "swapped out {mb} MB with only {swap_free} MB of swap free"
                );
                if prev != Some(Preempt(id)) {
                    // Watermark swapping of parked work.
                    ensure!(
                        used > low_mb(&c),
                        "swapped out while used {used} <= low watermark {}",
                        low_mb(&c)
                    );
                    let best = self
                        .swappable_parked()
                        .into_iter()
                        .min_by_key(|&j| victim_key(j, &self.invs[j]))
                        .expect("it is one");
                    ensure!(
                        best == i,
                        "swap victim {i} (class {}) but {best} (class {}) is lower or later among parked ones that fit",
                        inv.class,
                        self.invs[best].class
                    );
                }
                self.swap_outs[usize::from(inv.class)] += 1;
                self.invs[i].st = if inv.st == St::Blocked {
                    St::BlockedSwapped
                } else {
                    St::Swapped
                };
            }
            Kill(id) => {
                let c = self.memory.ok_or("kill without memory limits")?;
                let (i, inv) = self.inv(id)?;
                ensure!(inv.st.resident(), "killed while {:?}", inv.st);
                ensure!(
                    used > c.capacity_mb,
                    "killed while used {used} <= capacity {}",
                    c.capacity_mb
                );
                let swappable = self.swappable_parked();
                ensure!(
                    swappable.is_empty(),
                    "killed while parked {swappable:?} could be swapped out"
                );
                if running.len() > 1 {
                    let low = self.lowest_running().expect("some run");
                    ensure!(
                        self.invs[low].mem > swap_free,
                        "killed while running {low} could be preempted and swapped out"
                    );
                }
                let victim = self
                    .ids_where(St::resident)
                    .into_iter()
                    .min_by_key(|&j| victim_key(j, &self.invs[j]))
                    .expect("it is one");
                ensure!(
                    victim == i,
                    "killed {i} but the lowest-class latest resident one is {victim}"
                );
                self.kills[usize::from(inv.class)] += 1;
                self.invs[i].st = St::Killed;
            }
        }
        let r = self.running().len();
        ensure!(r <= self.cores, "{r} running on {} cores", self.cores);
        Ok(())
    }

    /// The machine's reported state against the model, and the scheduling invariants.
    fn check_state(&self) -> Result<(), String> {
        let running = self.running();
        let reported: BTreeSet<usize> = self
            .machine
            .running()
            .iter()
            .map(|r| r.0 as usize)
            .collect();
        let modeled: BTreeSet<usize> = running.iter().copied().collect();
        ensure!(
            reported == modeled && self.machine.running().len() == running.len(),
            "machine.running() {:?} but the actions say {modeled:?}",
            self.machine.running()
        );
        ensure!(running.len() <= self.cores, "more running than cores");
        let present = self.ids_where(St::present);
        ensure!(
            self.machine.functions() as usize == present.len(),
            "functions() {} but {} present",
            self.machine.functions(),
            present.len()
        );
        for &i in &present {
            ensure!(
                self.machine.is_running(InvocationId(i as u64)) == (self.invs[i].st == St::Running),
                "is_running({i}) disagrees with the actions"
            );
            ensure!(
                self.machine.is_blocked(InvocationId(i as u64)) == self.invs[i].st.blocked(),
                "is_blocked({i}) disagrees with the model ({:?})",
                self.invs[i].st
            );
        }
        let (used, swapped) = (self.used(), self.swapped());
        ensure!(
            self.machine.used_mb() == used,
            "used_mb() {} but the resident invocations hold {used}",
            self.machine.used_mb()
        );
        ensure!(
            self.machine.swap_used_mb() == swapped,
            "swap_used_mb() {} but the swapped-out invocations hold {swapped}",
            self.machine.swap_used_mb()
        );
        let stats = self.machine.memory_stats();
        ensure!(
            (&stats.kills, &stats.swap_outs, &stats.swap_ins)
                == (&self.kills, &self.swap_outs, &self.swap_ins),
            "memory stats {stats:?} disagree with the actions (kills {:?}, swap-outs {:?}, swap-ins {:?})",
            self.kills,
            self.swap_outs,
            self.swap_ins
        );
        if let Some(c) = self.memory {
            ensure!(
                swapped <= c.swap_mb,
                "swap used {swapped} > swap {}",
                c.swap_mb
            );
            ensure!(
                used <= c.capacity_mb,
                "used {used} > capacity {} after settling",
                c.capacity_mb
            );
            let swappable = self.swappable_parked();
            ensure!(
                used <= high_mb(&c) || swappable.is_empty(),
                "used {used} > high watermark {} while parked {swappable:?} could be swapped",
                high_mb(&c)
            );
            for class in 0..self.classes {
                let lower: u64 = self
                    .invs
                    .iter()
                    .filter(|i| i.st.resident() && usize::from(i.class) < class)
                    .map(|i| i.mem)
                    .sum();
                let want = c.capacity_mb.saturating_sub(used) + lower.min(self.swap_free());
                let got = self.machine.room_for(ClassId(class as u8));
                ensure!(got == want, "room_for({class}) = {got}, expected {want}");
            }
        } else {
            ensure!(
                self.machine.room_for(ClassId(0)) == u64::MAX,
                "unlimited room_for"
            );
        }
        // Priority: nothing the rules let run waits while a slot is free or while a lower
        // class runs. With unlimited memory everything waiting is eligible.
        let eligible: Vec<usize> = self
            .ids_where(St::waiting)
            .into_iter()
            .filter(|&i| self.eligible(i, used, running.is_empty()))
            .collect();
        if running.len() < self.cores {
            ensure!(
                eligible.is_empty(),
                "{eligible:?} could run but wait while {} of {} slots are busy",
                running.len(),
                self.cores
            );
        } else {
            let min_class = running
                .iter()
                .map(|&i| self.invs[i].class)
                .min()
                .expect("slots are full");
            for &w in &eligible {
                ensure!(
                    self.invs[w].class <= min_class,
                    "{w} of class {} could run but waits while class {min_class} runs",
                    self.invs[w].class
                );
            }
        }
        // FIFO within a class: never an earlier one waiting while a later one runs. With
        // limited memory an earlier one may legitimately wait for memory.
        if self.memory.is_none() {
            for &r in &running {
                for w in self.ids_where(St::waiting) {
                    ensure!(
                        !(self.invs[w].class == self.invs[r].class
                            && w < r
                            && !self.invs[w].blocked_ever),
                        "{w} waits while {r}, a later arrival of its class {}, runs",
                        self.invs[r].class
                    );
                }
            }
        }
        Ok(())
    }
}

fn run_machine_case(case: &MachineCase) -> Result<(), TestCaseError> {
    let mut d = MachineDriver::new(case);
    let result = d.run(&case.ops);
    with_trace(result, &d.trace)
}

fn machine_op(
    classes: usize,
    start_mb: impl Strategy<Value = u64> + 'static,
    mem_mb: impl Strategy<Value = u64> + 'static,
    memory_weight: u32,
) -> impl Strategy<Value = MachineOp> {
    prop_oneof![
        5 => (0..classes as u8, start_mb).prop_map(|(class, start_mb)| MachineOp::Arrive { class, start_mb }),
        3 => any::<u16>().prop_map(MachineOp::CompleteRunning),
        1 => any::<u16>().prop_map(MachineOp::CancelWaiting),
        memory_weight => (any::<u16>(), mem_mb).prop_map(|(pick, mb)| MachineOp::Memory { pick, mb }),
        1 => any::<u16>().prop_map(MachineOp::CompleteGone),
        1 => any::<u16>().prop_map(MachineOp::Block),
        1 => any::<u16>().prop_map(MachineOp::Ready),
    ]
}

fn unlimited_case() -> impl Strategy<Value = MachineCase> {
    (1u32..=8, 1usize..=4).prop_flat_map(|(cores, classes)| {
        proptest::collection::vec(machine_op(classes, 1u64..=100, 1u64..=1000, 1), 0..150).prop_map(
            move |ops| MachineCase {
                cores,
                classes,
                memory: None,
                ops,
            },
        )
    })
}

fn limited_case() -> impl Strategy<Value = MachineCase> {
    (
        1u32..=4,
        1usize..=4,
        prop_oneof![1 => 1u64..=20, 9 => 20u64..=1000],
        prop_oneof![1 => Just(0u64), 3 => 0u64..=2000],
        50u32..=100,
        0u32..=50,
    )
        .prop_flat_map(
            |(cores, classes, capacity_mb, swap_mb, low_pct, high_extra)| {
                let high_pct = (low_pct + high_extra).min(100);
                let memory = MemoryConfig {
                    capacity_mb,
                    swap_mb,
                    high_watermark: f64::from(high_pct) / 100.0,
                    low_watermark: f64::from(low_pct) / 100.0,
                };
                let start = prop_oneof![
                    9 => 1..=(capacity_mb / 4).max(1),
                    1 => 1..=capacity_mb * 11 / 10 + 1,
                ];
                let mem = 1..=capacity_mb * 6 / 5 + 1;
                proptest::collection::vec(machine_op(classes, start, mem, 4), 0..150).prop_map(
                    move |ops| MachineCase {
                        cores,
                        classes,
                        memory: Some(memory),
                        ops,
                    },
                )
            },
        )
}

/// Long class FIFOs of unstarted work that does not fit yet, with small work arriving behind
/// it: eligible invocations deep in a FIFO behind memory-blocked ones.
fn long_queue_case() -> impl Strategy<Value = MachineCase> {
    (1u32..=3, 1usize..=2, 100u64..=400).prop_flat_map(|(cores, classes, capacity_mb)| {
        let memory = MemoryConfig::new(capacity_mb, 0);
        let start = prop_oneof![
            2 => capacity_mb / 3..=capacity_mb / 2,
            1 => 1..=capacity_mb / 20,
        ];
        let op = prop_oneof![
            8 => (0..classes as u8, start)
                .prop_map(|(class, start_mb)| MachineOp::Arrive { class, start_mb }),
            1 => any::<u16>().prop_map(MachineOp::CompleteRunning),
            2 => (any::<u16>(), capacity_mb / 2..=capacity_mb)
                .prop_map(|(pick, mb)| MachineOp::Memory { pick, mb }),
        ];
        proptest::collection::vec(op, 0..300).prop_map(move |ops| MachineCase {
            cores,
            classes,
            memory: Some(memory),
            ops,
        })
    })
}

/// Regression, the smallest reproduction of a fixed bug (see `machine_long_queues`): 1 core,
/// 1000 MB, no swap, default watermarks. A batch invocation runs and grows to 900 MB; 32
/// critical ones of 200 MB arrive and rightly wait (900 + 200 > 1000); a 33rd critical one of
/// 50 MB arrives: it fits (950 <= 1000), so it should preempt the batch one and start, but it
/// sat at position 32 of its FIFO and `best_eligible` once looked at positions 0..32 only, so
/// batch kept the core. (With 2 cores the same sequence leaves the 50 MB one waiting next to a
/// free slot, and a later 50 MB batch arrival takes that slot instead.)
#[test]
fn machine_scan_bound_priority_inversion() {
    let mut ops = vec![
        MachineOp::Arrive {
            class: 0,
            start_mb: 100,
        },
        MachineOp::Memory { pick: 0, mb: 900 },
    ];
    ops.extend((0..32).map(|_| MachineOp::Arrive {
        class: 3,
        start_mb: 200,
    }));
    ops.push(MachineOp::Arrive {
        class: 3,
        start_mb: 50,
    });
    let case = MachineCase {
        cores: 1,
        classes: 4,
        memory: Some(MemoryConfig::new(1000, 0)),
        ops,
    };
    if let Err(e) = run_machine_case(&case) {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------------
// 3: EDF.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum EdfOp {
    Arrive { deadline: u64 },
    CompleteRunning(u16),
    CancelWaiting(u16),
    CompleteGone(u16),
}

#[derive(Clone, Debug)]
struct EdfCase {
    cores: u32,
    ops: Vec<EdfOp>,
}

struct EdfDriver {
    cores: usize,
    machine: EdfMachine,
    /// Per id (= arrival order): deadline, state, starts.
    invs: Vec<(u64, St, u32)>,
    trace: String,
}

impl EdfDriver {
    fn ids_where(&self, f: impl Fn(St) -> bool) -> Vec<usize> {
        (0..self.invs.len())
            .filter(|&i| f(self.invs[i].1))
            .collect()
    }

    fn key(&self, i: usize) -> (u64, usize) {
        (self.invs[i].0, i)
    }

    fn run(&mut self, ops: &[EdfOp]) -> Result<(), String> {
        for (n, op) in ops.iter().enumerate() {
            self.step(n, op)?;
        }
        let mut n = ops.len();
        while self.invs.iter().any(|i| i.1.present()) {
            ensure!(
                !self.ids_where(|s| s == St::Running).is_empty(),
                "lost work: {:?} wait but nothing runs",
                self.ids_where(St::waiting)
            );
            self.step(n, &EdfOp::CompleteRunning(0))?;
            n += 1;
        }
        ensure!(
            self.machine.functions() == 0 && self.machine.running_len() == 0,
            "drained but the machine still holds work"
        );
        Ok(())
    }

    fn step(&mut self, n: usize, op: &EdfOp) -> Result<(), String> {
        let note = match *op {
            EdfOp::Arrive { deadline } => {
                let id = self.invs.len();
                self.invs.push((deadline, St::NotStarted, 0));
                self.machine
                    .handle_arrival(InvocationId(id as u64), deadline);
                format!("arrival {id} deadline {deadline}")
            }
            EdfOp::CompleteRunning(k) | EdfOp::CancelWaiting(k) => {
                let ids = if matches!(op, EdfOp::CompleteRunning(_)) {
                    self.ids_where(|s| s == St::Running)
                } else {
                    self.ids_where(St::waiting)
                };
                match pick(&ids, k) {
                    None => "none: skipped".into(),
                    Some(id) => {
                        let was = self.invs[id].1;
                        self.invs[id].1 = St::Completed;
                        self.machine.handle_completion(InvocationId(id as u64));
                        format!("completion of {id} ({was:?})")
                    }
                }
            }
            EdfOp::CompleteGone(k) => match pick(&self.ids_where(|s| !s.present()), k) {
                None => "none: skipped".into(),
                Some(id) => {
                    self.machine.handle_completion(InvocationId(id as u64));
                    format!("completion of ended {id}")
                }
            },
        };
        let actions: Vec<_> = std::iter::from_fn(|| self.machine.poll_action()).collect();
        let _ = writeln!(self.trace, "#{n} {op:?}: {note} => {actions:?}");
        for (i, &a) in actions.iter().enumerate() {
            let next = actions.get(i + 1).copied();
            self.apply(a, next)
                .map_err(|e| format!("at op #{n}, action {a:?}: {e}"))?;
        }
        self.check_state()
            .map_err(|e| format!("after op #{n}: {e}"))
    }

    fn apply(&mut self, a: MachineAction, next: Option<MachineAction>) -> Result<(), String> {
        use MachineAction::*;
        let id = match a {
            Start(id) | Resume(id) | Preempt(id) => id.0 as usize,
            other => return Err(format!("EDF emitted {other:?}")),
        };
        ensure!(id < self.invs.len(), "unknown invocation {id}");
        let (_, st, starts) = self.invs[id];
        let new = match a {
            Start(_) => {
                ensure!(
                    st == St::NotStarted && starts == 0,
                    "started while {st:?} (starts {starts})"
                );
                self.invs[id].2 += 1;
                St::Running
            }
            Resume(_) => {
                ensure!(st == St::Parked, "resumed while {st:?}");
                St::Running
            }
            _ => {
                ensure!(st == St::Running, "preempted while {st:?}");
                let latest = self
                    .ids_where(|s| s == St::Running)
                    .into_iter()
                    .max_by_key(|&i| self.key(i))
                    .expect("it runs");
                ensure!(
                    latest == id,
                    "preempted {id} but {latest} has the latest deadline"
                );
                match next {
                    Some(Start(x) | Resume(x)) => ensure!(
                        self.key(x.0 as usize) < self.key(id),
                        "preempted {id} for {} with a later deadline",
                        x.0
                    ),
                    other => return Err(format!("preempt followed by {other:?}")),
                }
                St::Parked
            }
        };
        self.invs[id].1 = new;
        let r = self.ids_where(|s| s == St::Running).len();
        ensure!(r <= self.cores, "{r} running on {} cores", self.cores);
        Ok(())
    }

    fn check_state(&self) -> Result<(), String> {
        let mut present = self.ids_where(St::present);
        present.sort_by_key(|&i| self.key(i));
        let want: BTreeSet<usize> = present.iter().copied().take(self.cores).collect();
        let got: BTreeSet<usize> = self.ids_where(|s| s == St::Running).into_iter().collect();
        ensure!(
            got == want,
            "running {got:?}, but the earliest deadlines are {want:?}"
        );
        ensure!(
            self.machine.running_len() == got.len(),
            "running_len() {} but {} run",
            self.machine.running_len(),
            got.len()
        );
        ensure!(
            self.machine.functions() as usize == present.len(),
            "functions() {} but {} present",
            self.machine.functions(),
            present.len()
        );
        Ok(())
    }
}

fn edf_case() -> impl Strategy<Value = EdfCase> {
    let op = prop_oneof![
        5 => (0u64..30).prop_map(|deadline| EdfOp::Arrive { deadline }),
        3 => any::<u16>().prop_map(EdfOp::CompleteRunning),
        1 => any::<u16>().prop_map(EdfOp::CancelWaiting),
        1 => any::<u16>().prop_map(EdfOp::CompleteGone),
    ];
    (1u32..=8, proptest::collection::vec(op, 0..150))
        .prop_map(|(cores, ops)| EdfCase { cores, ops })
}

fn run_edf_case(case: &EdfCase) -> Result<(), TestCaseError> {
    let mut d = EdfDriver {
        cores: case.cores as usize,
        machine: EdfMachine::new(case.cores),
        invs: Vec::new(),
        trace: String::new(),
    };
    let result = d.run(&case.ops);
    with_trace(result, &d.trace)
}

// ---------------------------------------------------------------------------------------------
// 4: the multi-queue and the shard.
// ---------------------------------------------------------------------------------------------

const MS: u64 = 1_000_000;

/// Brute-force head choice in exact integers: the largest `price_halves x waited`, ties to the
/// higher class. Returns the class index.
fn model_choice<T>(queues: &[VecDeque<(u64, T)>], halves: &[u32], now: u64) -> Option<usize> {
    model_choice_except(queues, halves, now, &[])
}

/// [`model_choice`] among the classes not sitting out.
fn model_choice_except<T>(
    queues: &[VecDeque<(u64, T)>],
    halves: &[u32],
    now: u64,
    sitting_out: &[bool],
) -> Option<usize> {
    (0..queues.len())
        .filter(|&c| !sitting_out.get(c).copied().unwrap_or(false))
        .filter_map(|c| {
            let &(since, _) = queues[c].front()?;
            let score = u128::from(halves[c]) * u128::from(now.saturating_sub(since));
            Some((score, c))
        })
        .max()
        .map(|(_, c)| c)
}

#[derive(Clone, Debug)]
enum QueueOp {
    /// Time advances by `dt` ms, then an item joins class `class`.
    Push { class: u8, dt: u64 },
    /// Time advances by `dt` ms, then the best head is polled; `put_back` returns it to the
    /// front of its queue with its wait time (as a blocked shard does).
    Poll { dt: u64, put_back: bool },
}

#[derive(Clone, Debug)]
struct QueueCase {
    halves: Vec<u32>,
    ops: Vec<QueueOp>,
}

fn run_queue_case(case: &QueueCase) -> Result<(), TestCaseError> {
    let mut trace = String::new();
    let result = run_queue(case, &mut trace);
    with_trace(result, &trace)
}

fn run_queue(case: &QueueCase, trace: &mut String) -> Result<(), String> {
    let classes = classes_from_halves(&case.halves);
    let mut q: MultiQueue<u64> = MultiQueue::new(&classes);
    let mut model: Vec<VecDeque<(u64, u64)>> = vec![VecDeque::new(); case.halves.len()];
    let (mut now, mut next_item) = (0u64, 0u64);
    let mut pushed = BTreeSet::new();
    let mut popped = BTreeSet::new();
    let drain = std::iter::repeat_n(
        QueueOp::Poll {
            dt: 0,
            put_back: false,
        },
        case.ops
            .iter()
            .filter(|o| matches!(o, QueueOp::Push { .. }))
            .count(),
    );
    for (n, op) in case.ops.iter().cloned().chain(drain).enumerate() {
        match op {
            QueueOp::Push { class, dt } => {
                now += dt * MS;
                let c = usize::from(class) % model.len();
                q.handle_push(ClassId(c as u8), now, next_item);
                model[c].push_back((now, next_item));
                pushed.insert(next_item);
                let _ = writeln!(trace, "#{n} at {now}: push {next_item} to class {c}");
                next_item += 1;
            }
            QueueOp::Poll { dt, put_back } => {
                now += dt * MS;
                let want = model_choice(&model, &case.halves, now);
                let choice = q.choice(now).map(ClassId::index);
                let got = q.poll_next(now);
                let _ = writeln!(
                    trace,
                    "#{n} at {now}: poll => {got:?} (put back: {put_back})"
                );
                ensure!(
                    choice == want,
                    "op #{n}: choice() = {choice:?}, model {want:?}"
                );
                match (want, got) {
                    (None, None) => {}
                    (Some(c), Some((class, since, item))) => {
                        let head = model[c].pop_front().expect("chosen queue is non-empty");
                        ensure!(
                            (class.index(), since, item) == (c, head.0, head.1),
                            "op #{n}: polled {:?}, model says class {c} head {head:?}",
                            (class, since, item)
                        );
                        if put_back {
                            q.handle_push_front(class, since, item);
                            model[c].push_front(head);
                        } else {
                            ensure!(popped.insert(item), "op #{n}: item {item} polled twice");
                        }
                    }
                    (w, g) => return Err(format!("op #{n}: polled {g:?}, model says {w:?}")),
                }
            }
        }
        let len: usize = model.iter().map(VecDeque::len).sum();
        ensure!(
            q.len() == len && q.is_empty() == (len == 0),
            "op #{n}: len() {} but {len} queued",
            q.len()
        );
        for (c, m) in model.iter().enumerate() {
            ensure!(
                q.len_of(ClassId(c as u8)) == m.len(),
                "op #{n}: len_of({c}) {} but {} queued",
                q.len_of(ClassId(c as u8)),
                m.len()
            );
        }
    }
    ensure!(
        q.is_empty() && popped == pushed,
        "after draining: lost {:?}, {} still queued",
        pushed.difference(&popped).collect::<Vec<_>>(),
        q.len()
    );
    Ok(())
}

fn queue_case() -> impl Strategy<Value = QueueCase> {
    let op = prop_oneof![
        3 => (0u8..4, 0u64..=3).prop_map(|(class, dt)| QueueOp::Push { class, dt }),
        2 => (0u64..=3, proptest::bool::weighted(0.2))
            .prop_map(|(dt, put_back)| QueueOp::Poll { dt, put_back }),
    ];
    (price_halves(), proptest::collection::vec(op, 0..120))
        .prop_map(|(halves, ops)| QueueCase { halves, ops })
}

const SHARD_MACHINES_MAX: usize = 6;

#[derive(Clone, Debug)]
enum ShardOp {
    Invoke {
        class: u8,
        start_mb: u64,
        dt: u64,
    },
    Join {
        machine: u8,
        free_mb: u64,
        functions: u32,
    },
    Leave {
        machine: u8,
    },
    /// Time advances by `dt` ms, then one decision; a polled machine `m` answers
    /// `replies[m]` = (functions, room).
    Decide {
        dt: u64,
        replies: Vec<(u32, u64)>,
    },
}

#[derive(Clone, Debug)]
struct ShardCase {
    halves: Vec<u32>,
    machines: u32,
    k: usize,
    use_idle_list: bool,
    seed: u64,
    ops: Vec<ShardOp>,
}

/// Brute-force idle-list choice: fewest functions, then most free, then lowest id, among
/// entries with at least `need` free.
fn model_idle_choice(idle: &HashMap<u32, IdleEntry>, need: u64) -> Option<u32> {
    idle.iter()
        .filter(|(_, e)| e.free_mb >= need)
        .min_by_key(|(&m, e)| (e.functions, Reverse(e.free_mb), m))
        .map(|(&m, _)| m)
}

fn model_idle_place(idle: &mut HashMap<u32, IdleEntry>, m: u32, need: u64) {
    let e = idle.get_mut(&m).expect("chosen entry");
    e.free_mb -= need;
    e.functions += 1;
    e.idle_cores = e.idle_cores.saturating_sub(1);
}

fn check_idle(
    list: &IdleList,
    model: &HashMap<u32, IdleEntry>,
    machines: u32,
) -> Result<(), String> {
    ensure!(
        list.len() == model.len() && list.is_empty() == model.is_empty(),
        "idle list holds {} entries, model {}",
        list.len(),
        model.len()
    );
    for m in 0..machines {
        let (got, want) = (list.get(MachineId(m)), model.get(&m).copied());
        ensure!(
            got == want,
            "idle entry of machine {m}: {got:?}, model {want:?}"
        );
    }
    Ok(())
}

fn run_shard_case(case: &ShardCase) -> Result<(), TestCaseError> {
    let mut trace = String::new();
    let result = run_shard(case, &mut trace);
    with_trace(result, &trace)
}

fn run_shard(case: &ShardCase, trace: &mut String) -> Result<(), String> {
    let classes = classes_from_halves(&case.halves);
    // The model is the paper's rule; the class-aware one has its own tests (placement.rs,
    // idle_list.rs, shard.rs, and the simulator's tests/overload.rs).
    let config = ShardConfig {
        machines: case.machines,
        k: case.k,
        use_idle_list: case.use_idle_list,
        placement: PlacementRule::Paper,
        top_class_defers_max: 0,
    };
    let mut shard = Shard::new(&classes, config);
    let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(case.seed);
    let mut queues: Vec<VecDeque<(u64, Pending)>> = vec![VecDeque::new(); case.halves.len()];
    let mut idle: HashMap<u32, IdleEntry> = HashMap::new();
    let (mut now, mut next_id) = (0u64, 0u64);
    let mut placed = BTreeSet::new();
    let invoked = case
        .ops
        .iter()
        .filter(|o| matches!(o, ShardOp::Invoke { .. }))
        .count();
    // Drain at the end: every polled machine has room.
    let drain = std::iter::repeat_n(
        ShardOp::Decide {
            dt: 1,
            replies: vec![(0, u64::MAX); SHARD_MACHINES_MAX],
        },
        // One more for a decision that finds every waiting class sitting out.
        invoked + 2,
    );
    // Classes whose head found no room sit out until no other class's head may go, or a
    // machine joins the idle list.
    let mut sitting_out = vec![false; queues.len()];
    for (n, op) in case.ops.iter().cloned().chain(drain).enumerate() {
        match op {
            ShardOp::Invoke {
                class,
                start_mb,
                dt,
            } => {
                now += dt * MS;
                let c = usize::from(class) % queues.len();
                let p = Pending {
                    id: InvocationId(next_id),
                    class: ClassId(c as u8),
                    start_mb,
                };
                next_id += 1;
                shard.handle_invocation(now, p);
                queues[c].push_back((now, p));
                let _ = writeln!(trace, "#{n} at {now}: invocation {p:?}");
            }
            ShardOp::Join {
                machine,
                free_mb,
                functions,
            } => {
                let m = u32::from(machine) % case.machines;
                let e = IdleEntry {
                    free_mb,
                    functions,
                    idle_cores: 4u32.saturating_sub(functions),
                };
                shard.handle_idle_join(MachineId(m), e);
                idle.insert(m, e);
                sitting_out.fill(false);
                let _ = writeln!(trace, "#{n}: machine {m} joins/updates {e:?}");
            }
            ShardOp::Leave { machine } => {
                let m = u32::from(machine) % case.machines;
                shard.handle_idle_leave(MachineId(m));
                idle.remove(&m);
                let _ = writeln!(trace, "#{n}: machine {m} leaves");
            }
            ShardOp::Decide { dt, replies } => {
                now += dt * MS;
                let mut polled: Vec<(MachineId, ClassId)> = Vec::new();
                let decision = shard.poll_decision(now, &mut rng, |m, c| {
                    polled.push((m, c));
                    let (functions, room_mb) = replies[m.0 as usize];
                    PollReply {
                        machine: m,
                        functions,
                        room_mb,
                        ahead: functions,
                        cores: 1,
                    }
                });
                let _ = writeln!(
                    trace,
                    "#{n} at {now}: decision => {decision:?}, polled {polled:?} with replies {replies:?}"
                );
                let Some(c) = model_choice_except(&queues, &case.halves, now, &sitting_out) else {
                    let expected = if queues.iter().all(VecDeque::is_empty) {
                        ShardDecision::Idle
                    } else {
                        sitting_out.fill(false);
                        ShardDecision::Blocked
                    };
                    ensure!(
                        decision == expected && polled.is_empty(),
                        "op #{n}: nothing may go, so {expected:?}, but {decision:?} (polled {polled:?})"
                    );
                    continue;
                };
                let (since, head) = *queues[c].front().expect("chosen queue is non-empty");
                let need = head.start_mb;
                let expected = match model_idle_choice(&idle, need).filter(|_| case.use_idle_list) {
                    Some(m) => {
                        ensure!(
                            polled.is_empty(),
                            "op #{n}: polled despite an idle-list fit"
                        );
                        model_idle_place(&mut idle, m, need);
                        ShardDecision::Place {
                            pending: head,
                            machine: MachineId(m),
                            via: Via::IdleList,
                            enqueued_ns: since,
                        }
                    }
                    None => {
                        let want = (case.k).min(case.machines as usize);
                        let ms: BTreeSet<u32> = polled.iter().map(|(m, _)| m.0).collect();
                        ensure!(
                            polled.len() == want
                                && ms.len() == want
                                && ms.iter().all(|&m| m < case.machines),
                            "op #{n}: polled {polled:?}, want {want} distinct machines of {}",
                            case.machines
                        );
                        ensure!(
                            polled.iter().all(|&(_, pc)| pc == head.class),
                            "op #{n}: polled for the wrong class: {polled:?}"
                        );
                        // Fewest functions among those with room; ties to the earlier reply.
                        let mut best: Option<(u32, MachineId)> = None;
                        for &(m, _) in &polled {
                            let (functions, room) = replies[m.0 as usize];
                            if room >= need && best.is_none_or(|(f, _)| functions < f) {
                                best = Some((functions, m));
                            }
                        }
                        match best {
                            Some((_, machine)) => ShardDecision::Place {
                                pending: head,
                                machine,
                                via: Via::Polling,
                                enqueued_ns: since,
                            },
                            None => {
                                sitting_out[c] = true;
                                let another = (0..queues.len())
                                    .any(|o| !sitting_out[o] && !queues[o].is_empty());
                                if another {
                                    ShardDecision::PassedOver
                                } else {
                                    sitting_out.fill(false);
                                    ShardDecision::Blocked
                                }
                            }
                        }
                    }
                };
                ensure!(
                    decision == expected,
                    "op #{n}: decision {decision:?}, model {expected:?}"
                );
                if let ShardDecision::Place { pending, .. } = decision {
                    queues[c].pop_front();
                    ensure!(
                        placed.insert(pending.id),
                        "op #{n}: {:?} placed twice",
                        pending.id
                    );
                }
            }
        }
        let len: usize = queues.iter().map(VecDeque::len).sum();
        ensure!(
            shard.queued() == len,
            "op #{n}: queued() {} but {len} queued",
            shard.queued()
        );
        for (c, m) in queues.iter().enumerate() {
            ensure!(
                shard.queued_of(ClassId(c as u8)) == m.len(),
                "op #{n}: queued_of({c}) {} but {}",
                shard.queued_of(ClassId(c as u8)),
                m.len()
            );
        }
        check_idle(shard.idle_list(), &idle, case.machines).map_err(|e| format!("op #{n}: {e}"))?;
    }
    ensure!(
        shard.queued() == 0 && placed.len() as u64 == next_id,
        "after draining: {} placed of {next_id}, {} still queued",
        placed.len(),
        shard.queued()
    );
    Ok(())
}

fn shard_case() -> impl Strategy<Value = ShardCase> {
    let room = prop_oneof![1 => Just(u64::MAX), 3 => (0u64..=8).prop_map(|x| x * 25)];
    let replies = proptest::collection::vec((0u32..4, room), SHARD_MACHINES_MAX);
    let op = prop_oneof![
        4 => (0u8..4, (1u64..=6).prop_map(|x| x * 25), 0u64..=2)
            .prop_map(|(class, start_mb, dt)| ShardOp::Invoke { class, start_mb, dt }),
        1 => (any::<u8>(), (0u64..=8).prop_map(|x| x * 50), 0u32..4)
            .prop_map(|(machine, free_mb, functions)| ShardOp::Join { machine, free_mb, functions }),
        1 => any::<u8>().prop_map(|machine| ShardOp::Leave { machine }),
        4 => (0u64..=2, replies).prop_map(|(dt, replies)| ShardOp::Decide { dt, replies }),
    ];
    (
        price_halves(),
        1u32..=SHARD_MACHINES_MAX as u32,
        1usize..=4,
        any::<bool>(),
        any::<u64>(),
        proptest::collection::vec(op, 0..100),
    )
        .prop_map(
            |(halves, machines, k, use_idle_list, seed, ops)| ShardCase {
                halves,
                machines,
                k,
                use_idle_list,
                seed,
                ops,
            },
        )
}

// ---------------------------------------------------------------------------------------------
// 5: the idle list.
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
enum IdleOp {
    Upsert {
        machine: u32,
        free_mb: u64,
        functions: u32,
    },
    Leave {
        machine: u32,
    },
    Place {
        need_mb: u64,
    },
}

const IDLE_MACHINES: u32 = 6;

fn run_idle_case(ops: &[IdleOp]) -> Result<(), TestCaseError> {
    let mut trace = String::new();
    let result = run_idle(ops, &mut trace);
    with_trace(result, &trace)
}

fn run_idle(ops: &[IdleOp], trace: &mut String) -> Result<(), String> {
    let mut list = IdleList::new(false);
    let mut model: HashMap<u32, IdleEntry> = HashMap::new();
    for (n, op) in ops.iter().enumerate() {
        match *op {
            IdleOp::Upsert {
                machine,
                free_mb,
                functions,
            } => {
                let e = IdleEntry {
                    free_mb,
                    functions,
                    idle_cores: 4u32.saturating_sub(functions),
                };
                list.handle_upsert(MachineId(machine), e);
                model.insert(machine, e);
                let _ = writeln!(trace, "#{n}: upsert {machine} {e:?}");
            }
            IdleOp::Leave { machine } => {
                list.handle_leave(MachineId(machine));
                model.remove(&machine);
                let _ = writeln!(trace, "#{n}: leave {machine}");
            }
            IdleOp::Place { need_mb } => {
                let got = list.poll_place(need_mb);
                let _ = writeln!(trace, "#{n}: place {need_mb} MB => {got:?}");
                let want = model_idle_choice(&model, need_mb);
                ensure!(
                    got == want.map(MachineId),
                    "op #{n}: poll_place({need_mb}) = {got:?}, model {want:?} among {model:?}"
                );
                if let Some(m) = want {
                    model_idle_place(&mut model, m, need_mb);
                }
            }
        }
        check_idle(&list, &model, IDLE_MACHINES).map_err(|e| format!("op #{n}: {e}"))?;
    }
    Ok(())
}

fn idle_ops() -> impl Strategy<Value = Vec<IdleOp>> {
    let op = prop_oneof![
        3 => (0..IDLE_MACHINES, (0u64..=10).prop_map(|x| x * 50), 0u32..4)
            .prop_map(|(machine, free_mb, functions)| IdleOp::Upsert { machine, free_mb, functions }),
        1 => (0..IDLE_MACHINES).prop_map(|machine| IdleOp::Leave { machine }),
        3 => (0u64..=6).prop_map(|x| IdleOp::Place { need_mb: x * 50 }),
    ];
    proptest::collection::vec(op, 0..100)
}

// ---------------------------------------------------------------------------------------------

// ---------------------------------------------------------------------------------------------
// Property 6: idle-list views converge over a lossy network.

#[derive(Clone, Debug)]
enum ViewOp {
    /// Shard `shard` places an invocation from its idle list (if it has a machine with room).
    PlaceFromList { shard: u32 },
    /// An invocation starts on `machine` placed by polling (the lists are not told).
    Start { machine: u32 },
    /// One of `machine`'s invocations ends.
    Complete { machine: u32 },
    /// The next message fails; `taken`: the shard took it before the failure.
    FailNext { taken: bool },
    /// Message `k` (modulo those delivered) arrives again.
    Repeat { k: usize },
    /// The shard restarts: an empty list; every machine registers with it again.
    RestartShard { shard: u32 },
    /// Every machine's refresh period passes.
    Refresh,
}

#[derive(Clone, Debug)]
struct ViewCase {
    shards: u32,
    cores: Vec<u32>,
    ops: Vec<ViewOp>,
}

const VIEW_CAPACITY_MB: u64 = 1000;
const VIEW_NEED_MB: u64 = 50;

struct ViewNet {
    lists: Vec<IdleList>,
    /// Each shard's restarts: a message from before one is refused (its registration token
    /// is stale).
    incarnations: Vec<u32>,
    dispatchers: Vec<Dispatcher>,
    /// Each machine's invocations running.
    running: Vec<u32>,
    cores: Vec<u32>,
    /// Messages delivered: (machine, shard, shard incarnation, seq, entry).
    delivered: Vec<(u32, u32, u32, u64, Option<IdleEntry>)>,
    fail_next: Option<bool>,
    rng: rand_pcg::Pcg64Mcg,
}

impl ViewNet {
    fn truth(&self, m: u32) -> IdleEntry {
        let running = self.running[m as usize];
        IdleEntry {
            free_mb: VIEW_CAPACITY_MB - u64::from(running) * VIEW_NEED_MB,
            functions: running,
            idle_cores: self.cores[m as usize].saturating_sub(running),
        }
    }

    /// The machine's dispatcher sees its load; its outputs are carried out.
    fn load(&mut self, m: u32, trace: &mut String) {
        let truth = self.truth(m);
        let shards = self.lists.len() as u32;
        self.dispatchers[m as usize].handle_load(truth, VIEW_CAPACITY_MB, shards, &mut self.rng);
        self.carry_out(m, trace);
    }

    fn carry_out(&mut self, m: u32, trace: &mut String) {
        while let Some(output) = self.dispatchers[m as usize].poll_output() {
            match output {
                DispatcherOutput::AskLengths(sampled) => {
                    let lengths: Vec<usize> = sampled
                        .iter()
                        .map(|s| self.lists[s.0 as usize].len())
                        .collect();
                    self.dispatchers[m as usize].handle_lengths(&lengths);
                }
                DispatcherOutput::Send { action, seq } => {
                    let (shard, entry) = match action {
                        IdleListAction::Join { shard, entry }
                        | IdleListAction::Update { shard, entry } => (shard, Some(entry)),
                        IdleListAction::Leave { shard } => (shard, None),
                    };
                    let fail = self.fail_next.take();
                    if fail != Some(false) {
                        let s = shard.0 as usize;
                        let taken = self.lists[s].handle_report(MachineId(m), seq, entry);
                        self.delivered
                            .push((m, shard.0, self.incarnations[s], seq, entry));
                        let _ = writeln!(
                            trace,
                            "  {m} -> {}: #{seq} {entry:?} taken {taken}",
                            shard.0
                        );
                    }
                    if fail.is_some() {
                        let _ = writeln!(trace, "  {m} -> {}: #{seq} failed", shard.0);
                        self.dispatchers[m as usize].handle_send_failed(action);
                    }
                }
            }
        }
    }

    fn check(&self) -> Result<(), String> {
        for m in 0..self.dispatchers.len() as u32 {
            let truth = self.truth(m);
            let member = self.dispatchers[m as usize].member_of();
            for (s, list) in self.lists.iter().enumerate() {
                let want = (member == Some(ShardId(s as u32))).then_some(truth);
                ensure!(
                    list.get(MachineId(m)) == want,
                    "shard {s} holds {:?} for machine {m}, whose truth is {truth:?} (member of {member:?})",
                    list.get(MachineId(m))
                );
            }
            let free = truth.free_mb as f64 / VIEW_CAPACITY_MB as f64;
            let joinable = free >= 0.25 && truth.idle_cores > 0;
            let must_leave = free < 0.10 || truth.idle_cores == 0;
            ensure!(
                if member.is_some() {
                    !must_leave
                } else {
                    !joinable
                },
                "machine {m} ({truth:?}) is a member of {member:?}"
            );
        }
        Ok(())
    }
}

fn run_view_case(case: &ViewCase) -> Result<(), TestCaseError> {
    let mut trace = String::new();
    let result = run_views(case, &mut trace);
    with_trace(result, &trace)
}

fn run_views(case: &ViewCase, trace: &mut String) -> Result<(), String> {
    let machines = case.cores.len() as u32;
    let mut net = ViewNet {
        lists: (0..case.shards).map(|_| IdleList::new(true)).collect(),
        incarnations: vec![0; case.shards as usize],
        dispatchers: (0..machines)
            .map(|_| Dispatcher::new(DispatcherConfig::default()))
            .collect(),
        running: vec![0; machines as usize],
        cores: case.cores.clone(),
        delivered: Vec::new(),
        fail_next: None,
        rng: rand_pcg::Pcg64Mcg::seed_from_u64(7),
    };
    for m in 0..machines {
        net.load(m, trace);
    }
    let room = |net: &ViewNet, m: u32| {
        u64::from(net.running[m as usize] + 1) * VIEW_NEED_MB <= VIEW_CAPACITY_MB
    };
    for (n, op) in case.ops.iter().enumerate() {
        let _ = writeln!(trace, "#{n}: {op:?}");
        match *op {
            ViewOp::PlaceFromList { shard } => {
                if let Some(m) = net.lists[shard as usize].poll_place(VIEW_NEED_MB) {
                    ensure!(room(&net, m.0), "op #{n}: placed on full machine {}", m.0);
                    net.running[m.0 as usize] += 1;
                    net.load(m.0, trace);
                }
            }
            ViewOp::Start { machine } => {
                if room(&net, machine) {
                    net.running[machine as usize] += 1;
                    net.load(machine, trace);
                }
            }
            ViewOp::Complete { machine } => {
                if net.running[machine as usize] > 0 {
                    net.running[machine as usize] -= 1;
                    net.load(machine, trace);
                }
            }
            ViewOp::FailNext { taken } => net.fail_next = Some(taken),
            ViewOp::Repeat { k } => {
                if !net.delivered.is_empty() {
                    let (m, s, incarnation, seq, entry) = net.delivered[k % net.delivered.len()];
                    // A message from before the shard restarted carries a stale token.
                    if incarnation == net.incarnations[s as usize] {
                        let taken = net.lists[s as usize].handle_report(MachineId(m), seq, entry);
                        ensure!(!taken, "op #{n}: message #{seq} of {m} taken twice by {s}");
                    }
                }
            }
            ViewOp::RestartShard { shard } => {
                let s = shard as usize;
                net.lists[s] = IdleList::new(true);
                net.incarnations[s] += 1;
                // Each machine registers anew: the shard did not know it (fresh), so a
                // member forgets its membership there.
                for m in 0..machines as usize {
                    if net.dispatchers[m].member_of() == Some(ShardId(shard)) {
                        net.dispatchers[m].handle_shard_lost();
                    }
                }
            }
            ViewOp::Refresh => {
                for m in 0..machines {
                    net.dispatchers[m as usize].handle_refresh(&mut net.rng);
                    net.carry_out(m, trace);
                }
            }
        }
    }
    // One refresh, every message delivered: every view is the truth.
    net.fail_next = None;
    let _ = writeln!(trace, "final refresh");
    for m in 0..machines {
        net.dispatchers[m as usize].handle_refresh(&mut net.rng);
        net.carry_out(m, trace);
    }
    net.check()
}

fn view_case() -> impl Strategy<Value = ViewCase> {
    (1u32..=3, proptest::collection::vec(1u32..=3, 1..=4)).prop_flat_map(|(shards, cores)| {
        let machines = cores.len() as u32;
        let op = prop_oneof![
            4 => (0..shards).prop_map(|shard| ViewOp::PlaceFromList { shard }),
            2 => (0..machines).prop_map(|machine| ViewOp::Start { machine }),
            5 => (0..machines).prop_map(|machine| ViewOp::Complete { machine }),
            2 => any::<bool>().prop_map(|taken| ViewOp::FailNext { taken }),
            2 => any::<usize>().prop_map(|k| ViewOp::Repeat { k }),
            1 => (0..shards).prop_map(|shard| ViewOp::RestartShard { shard }),
            2 => Just(ViewOp::Refresh),
        ];
        proptest::collection::vec(op, 0..120).prop_map(move |ops| ViewCase {
            shards,
            cores: cores.clone(),
            ops,
        })
    })
}

proptest! {
    #![proptest_config(config())]

    /// Property 1: slots, strict priority, FIFO within a class, preempt/resume legality and
    /// no loss, with unlimited memory.
    #[test]
    fn machine_unlimited(case in unlimited_case()) {
        run_machine_case(&case)?;
    }

    /// Property 2: memory accounting, swap-in before resume, swap and kill victims, kills
    /// only as the last resort, and no loss, with a small memory and swap.
    #[test]
    fn machine_limited_memory(case in limited_case()) {
        run_machine_case(&case)?;
    }

    /// Property 2, aimed at long class FIFOs with memory-blocked heads: the same checks as
    /// `machine_limited_memory`.
    #[test]
    fn machine_long_queues(case in long_queue_case()) {
        run_machine_case(&case)?;
    }

    /// Property 3: EDF runs the `cores` earliest deadlines (ties by arrival); no loss.
    #[test]
    fn edf_machine(case in edf_case()) {
        run_edf_case(&case)?;
    }

    /// Property 4a: the multi-queue polls the head with the largest `price x waited` (ties to
    /// the higher class); nothing lost or duplicated, also across put-backs.
    #[test]
    fn multi_queue(case in queue_case()) {
        run_queue_case(&case)?;
    }

    /// Property 4b: the shard places the model's head, on the model's idle-list machine or
    /// the least-loaded polled one with room; blocked heads keep their place; no loss.
    #[test]
    fn shard(case in shard_case()) {
        run_shard_case(&case)?;
    }

    /// Property 5: `poll_place` takes the entry with the fewest functions (then most free,
    /// then lowest id) among those with room, and books the placement.
    #[test]
    fn idle_list(ops in idle_ops()) {
        run_idle_case(&ops)?;
    }

    /// Property 6: with a refresh period's messages delivered, every shard's idle-list view
    /// of every machine is its truth (its entry where it is a member, none elsewhere),
    /// whatever messages failed, came again or were lost with a restarted shard.
    #[test]
    fn idle_views_converge(case in view_case()) {
        run_view_case(&case)?;
    }
}
