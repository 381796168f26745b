//! The discrete-event engine: one run of one scheduler at one offered load.
//!
//! The engine owns time and the event queue; every decision is made by `turnpike-policy`
//! (shards, dispatchers, machine schedulers, memory managers, and the baselines). Events at
//! the same instant run in the order they were scheduled, so a run is a pure function of the
//! config, the load and the seed.
//!
//! Model (paper 4.1, with `DESIGN.md`'s choices):
//! - Turnpike: the gateway hands each invocation to a shard by the policy core's rule
//!   (`shard_choice`: the less busy of two sampled, by invocations in flight); a shard decides
//!   (`decision_delay_us` each), places via its idle list or by polling k machines
//!   (`poll_delay_us` more), and a blocked shard retries after `retry_delay_us` or when a
//!   machine joins its idle list. Machines run the preemptive priority scheduler; with limited
//!   memory they measure memory every `memory_sample_ms` and at every preemption, and swap and
//!   kill by the core's rules. Killed invocations go back to a shard from scratch (functions
//!   are stateless) at most `kill_requeue_max` times, then fail (the core's `AfterReturn`).
//! - Hermod: power-of-k least-loaded placement straight from the gateway (early binding, no
//!   queue in front of machines), processor sharing on each machine.
//! - EDF: one machine with all the cluster's cores.
//! - Functions are compute bound, communication and swap time are not simulated (paper 4.1),
//!   except as fixed delays: `transit_delay_us` is added to every invocation's latency (the
//!   trip to its machine and back that real services have; the twin check measures it).

use rand::SeedableRng;
use rand_pcg::Pcg64Mcg;
use turnpike_policy::baseline::edf::{self, EdfMachine};
use turnpike_policy::baseline::hermod::PsMachine;
use turnpike_policy::dispatcher::{Dispatcher, DispatcherConfig, DispatcherOutput, IdleListAction};
use turnpike_policy::machine::{Machine, MachineAction, MachineConfig, MachineSlot};
use turnpike_policy::placement::{least_loaded, sample_machines, PollReply};
use turnpike_policy::shard::{AfterReturn, Pending, Shard, ShardConfig, ShardDecision, Via};
use turnpike_policy::shard_choice::choose_shard;
use turnpike_policy::{ClassId, ClassSet, InvocationId, MachineId};

use crate::config::{Config, SchedulerKind};
use crate::queue::{key, key_time, EventQueue};
use crate::sketch::Sketch;
use crate::trace::Trace;
use crate::workload::{Arrival, Workload};

const NS_PER_US: u64 = 1_000;
const NS_PER_MS: u64 = 1_000_000;
const NS_PER_S: f64 = 1e9;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    Arrival,
    Complete { inv: u32, version: u32 },
    PsComplete { machine: u32, version: u32 },
    ShardWake { shard: u32 },
    Deliver { inv: u32, machine: u32 },
    MemoryTick,
    Window,
}

/// One invocation in the system, in a slot of [`Sim`]'s table that is reused once it is done
/// (so the table follows the invocations in flight, not the run's length).
#[derive(Clone, Copy, Debug)]
struct Inv {
    arrival_ns: u64,
    runtime_ns: u64,
    remaining_ns: u64,
    run_since_ns: u64,
    start_mb: u64,
    peak_mb: u64,
    class: ClassId,
    /// Bumped at every preemption, kill and release of the slot: a `Complete` event carries the
    /// version it was scheduled at and is ignored if it no longer matches.
    version: u32,
    /// How many invocations held this slot before: the high half of the id the policy core
    /// sees, so ids stay unique although slots are reused.
    generation: u32,
    machine: u32,
    /// Where its machine keeps it (`Machine::handle_arrival_at`), valid while it is there.
    machine_slot: u32,
    requeues: u32,
    /// The shard it was last handed to (Turnpike).
    shard: u32,
}

impl Inv {
    /// Memory grows linearly with the work done, from `start_mb` to `peak_mb`.
    fn memory_mb(&self, now_ns: u64, running: bool) -> u64 {
        let ran = if running {
            now_ns - self.run_since_ns
        } else {
            0
        };
        let done = self.runtime_ns - self.remaining_ns.saturating_sub(ran);
        let frac = done as f64 / self.runtime_ns as f64;
        self.start_mb + ((self.peak_mb - self.start_mb) as f64 * frac) as u64
    }
}

/// Integrates busy cores over time for one machine.
#[derive(Clone, Copy, Debug, Default)]
struct Busy {
    last_ns: u64,
    busy: f64,
    area: f64,
    area_at_window: f64,
}

impl Busy {
    fn set(&mut self, now_ns: u64, busy: f64) {
        self.area += self.busy * (now_ns - self.last_ns) as f64;
        self.last_ns = now_ns;
        self.busy = busy;
    }
}

#[derive(Debug)]
struct ShardState {
    shard: Shard,
    busy_until_ns: u64,
    wake_pending: bool,
}

/// What one class saw in one run.
#[derive(Clone, Debug, Default)]
pub struct ClassOutcome {
    /// Measured (arrived after warm-up) invocations that completed.
    pub completed: u64,
    /// Measured invocations still in the system at the end.
    pub unfinished: u64,
    /// Measured invocations that failed after too many kills.
    pub failed: u64,
    /// Kills of invocations of this class (measured or not).
    pub kills: u64,
    /// Latencies (ns) of the completed measured invocations: a sketch, so a run's memory does
    /// not grow with its invocations (see [`crate::sketch`] for its error bound).
    pub latency_ns: Sketch,
    /// Their slowdowns (latency / runtime).
    pub slowdown: Sketch,
    /// Every `(latency ns, slowdown)` in completion order, kept only when the run was asked
    /// to ([`Sim::keep_samples`]): for checking the sketches against exact percentiles.
    pub samples: Vec<(u64, f64)>,
}

impl ClassOutcome {
    /// The `q` latency quantile in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        self.latency_ns.quantile(q).map(|ns| ns / NS_PER_MS as f64)
    }

    /// The mean latency in milliseconds.
    pub fn mean_latency_ms(&self) -> Option<f64> {
        self.latency_ns.mean().map(|ns| ns / NS_PER_MS as f64)
    }
}

/// Memory behaviour of a run with limited memory.
#[derive(Clone, Debug, Default)]
pub struct MemoryOutcome {
    pub capacity_mb: u64,
    /// Per machine: MB swapped out, by class.
    pub swapped_mb: Vec<Vec<u64>>,
    pub swap_outs_by_class: Vec<u64>,
    pub swap_ins_by_class: Vec<u64>,
    pub kills_by_class: Vec<u64>,
    /// Sample times (s) and, per sample, each machine's used memory (MB).
    pub sample_s: Vec<f64>,
    pub used_mb: Vec<Vec<u64>>,
    pub swap_used_mb: Vec<Vec<u64>>,
}

/// Everything one run produced.
#[derive(Clone, Debug)]
pub struct RunOutcome {
    pub scheduler: SchedulerKind,
    pub load: f64,
    pub classes: Vec<ClassOutcome>,
    /// Compute utilization of each (machine, window) in the measured interval.
    pub utilization: Vec<f64>,
    /// Each machine's utilization over the whole measured interval.
    pub machine_utilization: Vec<f64>,
    pub memory: Option<MemoryOutcome>,
    /// Invocations generated (measured or not) and events processed: for speed figures.
    pub invocations: u64,
    pub events: u64,
    /// The invocation table's size at the end: the most invocations in flight at once (slots
    /// are reused), which is what the run's memory follows.
    pub slots: u64,
    pub mean_runtime_ms: f64,
}

#[derive(Debug)]
pub struct Sim<'a> {
    config: &'a Config,
    classes: &'a ClassSet,
    kind: SchedulerKind,
    now: u64,
    seq: u64,
    events: EventQueue<Event>,
    workload: Workload<'a>,
    /// The next arrival lives outside the heap (one fewer heap operation per invocation); it
    /// takes a sequence number like any event, so ties order exactly as if it were queued.
    next_arrival: Option<Arrival>,
    next_arrival_seq: u64,
    rng: Pcg64Mcg,
    /// Indexed by slot (the low 32 bits of an `InvocationId`); `free` lists the slots whose
    /// invocations are done, reused before the table grows.
    invs: Vec<Inv>,
    free: Vec<u32>,
    /// Measured (arrived after warm-up) invocations per class, counted as they arrive.
    measured_by_class: Vec<u64>,
    in_flight: u64,
    // Turnpike.
    machines: Vec<Machine>,
    dispatchers: Vec<Dispatcher>,
    shards: Vec<ShardState>,
    /// Invocations handed to each shard and not finished (the gateway's shard choice).
    /// Kept as `(shard, count)` pairs, the candidates `choose_shard` takes, so a choice reads
    /// them in place instead of copying them per invocation.
    shard_in_flight: Vec<(usize, u64)>,
    /// The gateway's own random stream, so its choices leave the shards' draws as they were.
    gateway_rng: Pcg64Mcg,
    // Hermod.
    ps: Vec<PsMachine>,
    ps_version: Vec<u32>,
    sample: Vec<MachineId>,
    replies: Vec<PollReply>,
    // EDF.
    edf: Option<EdfMachine>,
    busy: Vec<Busy>,
    scratch: Vec<MachineSlot>,
    requeue: Vec<u32>,
    // Measurement.
    keep_samples: bool,
    warmup_ns: u64,
    end_ns: u64,
    stop_ns: u64,
    outcome: RunOutcome,
}

impl<'a> Sim<'a> {
    pub fn new(
        config: &'a Config,
        classes: &'a ClassSet,
        kind: SchedulerKind,
        load: f64,
        trace: Option<&'a Trace>,
    ) -> Self {
        let c = &config.cluster;
        let w = &config.workload;
        let workload = Workload::new(config, classes, load, trace);
        let n = classes.len();
        let memory = config.memory();
        let machine_config = MachineConfig {
            cores: c.cores,
            memory,
        };
        let (machine_count, cores) = match kind {
            SchedulerKind::Edf => (1, c.machines * c.cores),
            _ => (c.machines, c.cores),
        };
        let dispatcher_config = DispatcherConfig {
            join_free_fraction: c.idle_join_free,
            leave_free_fraction: c.idle_leave_free,
            update_change_fraction: c.idle_update_change,
            update_functions_change: c.idle_update_functions,
            shard_choices: c.shard_choices as usize,
            need_idle_core: c.placement.idle_needs_core(),
        };
        let shard_config = ShardConfig {
            machines: c.machines,
            k: c.k as usize,
            use_idle_list: c.idle_list,
            placement: c.placement,
            top_class_defers_max: c.top_class_defers_max,
        };
        let turnpike = kind == SchedulerKind::Turnpike;
        let end_ns = workload.end_ns();
        let mut sim = Self {
            config,
            classes,
            kind,
            now: 0,
            seq: 0,
            events: EventQueue::for_cores(u64::from(c.machines) * u64::from(c.cores)),
            next_arrival: None,
            next_arrival_seq: 0,
            rng: Pcg64Mcg::seed_from_u64(config.seed ^ 0x7011_c1e5),
            invs: Vec::new(),
            free: Vec::new(),
            measured_by_class: vec![0; n],
            in_flight: 0,
            machines: if turnpike {
                (0..c.machines)
                    // The engine keeps each invocation's machine slot: no id index needed.
                    .map(|_| Machine::with_driver_slots(machine_config, n))
                    .collect()
            } else {
                Vec::new()
            },
            dispatchers: if turnpike && c.idle_list {
                (0..c.machines)
                    .map(|_| Dispatcher::new(dispatcher_config))
                    .collect()
            } else {
                Vec::new()
            },
            shards: if turnpike {
                (0..c.shards)
                    .map(|_| ShardState {
                        shard: Shard::new(classes, shard_config),
                        busy_until_ns: 0,
                        wake_pending: false,
                    })
                    .collect()
            } else {
                Vec::new()
            },
            shard_in_flight: (0..c.shards as usize).map(|s| (s, 0)).collect(),
            gateway_rng: Pcg64Mcg::seed_from_u64(config.seed ^ 0x6a7e_3a11),
            ps: if kind == SchedulerKind::Hermod {
                (0..c.machines).map(|_| PsMachine::new(c.cores)).collect()
            } else {
                Vec::new()
            },
            ps_version: vec![
                0;
                if kind == SchedulerKind::Hermod {
                    c.machines as usize
                } else {
                    0
                }
            ],
            sample: Vec::new(),
            replies: Vec::new(),
            edf: (kind == SchedulerKind::Edf).then(|| EdfMachine::new(cores)),
            busy: vec![Busy::default(); machine_count as usize],
            scratch: Vec::new(),
            requeue: Vec::new(),
            keep_samples: false,
            warmup_ns: (w.warmup_s * NS_PER_S) as u64,
            end_ns,
            stop_ns: end_ns + (w.drain_s * NS_PER_S) as u64,
            outcome: RunOutcome {
                scheduler: kind,
                load,
                classes: vec![ClassOutcome::default(); n],
                utilization: Vec::new(),
                machine_utilization: Vec::new(),
                memory: memory.filter(|_| turnpike).map(|m| MemoryOutcome {
                    capacity_mb: m.capacity_mb,
                    swapped_mb: Vec::new(),
                    swap_outs_by_class: vec![0; n],
                    swap_ins_by_class: vec![0; n],
                    kills_by_class: vec![0; n],
                    sample_s: Vec::new(),
                    used_mb: Vec::new(),
                    swap_used_mb: Vec::new(),
                }),
                invocations: 0,
                events: 0,
                slots: 0,
                mean_runtime_ms: 0.0,
            },
            workload,
        };
        sim.outcome.mean_runtime_ms = sim.workload.mean_runtime_ns() / NS_PER_MS as f64;
        sim.take_next_arrival();
        // The first window event only marks the start of the measured interval.
        sim.push(sim.warmup_ns, Event::Window);
        if sim.outcome.memory.is_some() {
            sim.push(0, Event::MemoryTick);
        }
        // Dispatchers report as soon as their machines start, as a real worker's does.
        for m in 0..sim.dispatchers.len() as u32 {
            sim.update_idle_list(m);
        }
        sim
    }

    /// Also keeps every measured latency and slowdown ([`ClassOutcome::samples`]), which the
    /// sketches make unnecessary: for tests that check them on runs small enough.
    pub fn keep_samples(mut self) -> Self {
        self.keep_samples = true;
        self
    }

    fn push(&mut self, at_ns: u64, event: Event) {
        self.seq += 1;
        self.events.push(key(at_ns, self.seq), event);
    }

    fn memory_limited(&self) -> bool {
        self.outcome.memory.is_some()
    }

    /// Runs to the end; `progress` gets the fraction of simulated time done, now and then.
    pub fn run(mut self, progress: &mut dyn FnMut(f64)) -> RunOutcome {
        while let Some((at_ns, event)) = self.pop_event() {
            if at_ns > self.stop_ns {
                break;
            }
            debug_assert!(at_ns >= self.now, "events run in time order");
            self.now = at_ns;
            self.outcome.events += 1;
            if self.outcome.events.is_multiple_of(1 << 16) {
                progress(self.now as f64 / self.stop_ns as f64);
            }
            match event {
                Event::Arrival => self.on_arrival(),
                Event::Complete { inv, version } => self.on_complete(inv, version),
                Event::PsComplete { machine, version } => self.on_ps_complete(machine, version),
                Event::ShardWake { shard } => {
                    self.shards[shard as usize].wake_pending = false;
                    self.pump_shard(shard);
                }
                Event::Deliver { inv, machine } => self.deliver(inv, machine),
                Event::MemoryTick => self.on_memory_tick(),
                Event::Window => self.on_window(),
            }
        }
        self.finish()
    }

    fn on_arrival(&mut self) {
        let a = self
            .next_arrival
            .take()
            .expect("an Arrival event has its arrival");
        let fresh = Inv {
            arrival_ns: a.at_ns,
            runtime_ns: a.runtime_ns,
            remaining_ns: a.runtime_ns,
            run_since_ns: 0,
            start_mb: a.start_mb,
            peak_mb: a.peak_mb,
            class: a.class,
            version: 0,
            generation: 0,
            machine: 0,
            machine_slot: 0,
            requeues: 0,
            shard: 0,
        };
        let id = match self.free.pop() {
            Some(slot) => {
                let old = self.invs[slot as usize];
                self.invs[slot as usize] = Inv {
                    version: old.version,
                    generation: old.generation + 1,
                    ..fresh
                };
                slot
            }
            None => {
                self.invs.push(fresh);
                u32::try_from(self.invs.len() - 1).expect("fewer than 2^32 invocations in flight")
            }
        };
        if a.at_ns >= self.warmup_ns {
            self.measured_by_class[a.class.index()] += 1;
        }
        self.outcome.invocations += 1;
        self.in_flight += 1;
        match self.kind {
            SchedulerKind::Turnpike => self.submit(id),
            SchedulerKind::Hermod => self.hermod_place(id),
            SchedulerKind::Edf => self.edf_arrival(id),
        }
        self.take_next_arrival();
    }

    fn take_next_arrival(&mut self) {
        self.next_arrival = self.workload.next_arrival();
        self.seq += 1;
        self.next_arrival_seq = self.seq;
    }

    /// The next event in (time, sequence) order, from the heap or the pending arrival.
    fn pop_event(&mut self) -> Option<(u64, Event)> {
        let arrival = self
            .next_arrival
            .map(|a| key(a.at_ns, self.next_arrival_seq));
        let queued = self.events.peek_key();
        match (arrival, queued) {
            (Some(a), q) if q.is_none_or(|q| a < q) => Some((key_time(a), Event::Arrival)),
            _ => self.events.pop().map(|(k, event)| (key_time(k), event)),
        }
    }

    /// The id the policy core knows invocation slot `inv` by: unique over the run.
    fn id(&self, inv: u32) -> InvocationId {
        let generation = self.invs[inv as usize].generation;
        InvocationId((u64::from(generation) << 32) | u64::from(inv))
    }

    /// The invocation in slot `inv` is done (completed or failed for good): its slot may be
    /// reused, and any event still scheduled for it is made stale.
    fn release(&mut self, inv: u32) {
        self.invs[inv as usize].version += 1;
        self.free.push(inv);
    }

    fn measured(&self, inv: &Inv) -> bool {
        inv.arrival_ns >= self.warmup_ns
    }

    /// The invocation is done with its shard (answered, or failed for good, or back for a
    /// requeue).
    fn leave_shard(&mut self, inv: u32) {
        if self.kind == SchedulerKind::Turnpike {
            self.shard_in_flight[self.invs[inv as usize].shard as usize].1 -= 1;
        }
    }

    fn record_completion(&mut self, inv: u32) {
        self.leave_shard(inv);
        self.in_flight -= 1;
        let i = self.invs[inv as usize];
        if self.measured(&i) {
            let latency =
                self.now - i.arrival_ns + self.config.cluster.transit_delay_us * NS_PER_US;
            let slowdown = latency as f64 / i.runtime_ns as f64;
            let c = &mut self.outcome.classes[i.class.index()];
            c.completed += 1;
            c.latency_ns.record(latency as f64);
            c.slowdown.record(slowdown);
            if self.keep_samples {
                c.samples.push((latency, slowdown));
            }
        }
    }

    // ---- Turnpike ----

    /// The gateway hands an invocation to a shard (the policy core's choice).
    fn submit(&mut self, inv: u32) {
        let s = choose_shard(&self.shard_in_flight, &mut self.gateway_rng)
            .expect("a cluster has shards") as u32;
        self.shard_in_flight[s as usize].1 += 1;
        self.invs[inv as usize].shard = s;
        let id = self.id(inv);
        let i = &self.invs[inv as usize];
        let pending = Pending {
            id,
            class: i.class,
            start_mb: i.start_mb,
        };
        self.shards[s as usize]
            .shard
            .handle_invocation(self.now, pending);
        self.pump_shard(s);
    }

    fn wake_shard_at(&mut self, s: u32, at_ns: u64) {
        if !self.shards[s as usize].wake_pending {
            self.shards[s as usize].wake_pending = true;
            self.push(at_ns, Event::ShardWake { shard: s });
        }
    }

    /// Lets shard `s` place as much as it can now.
    fn pump_shard(&mut self, s: u32) {
        let c = &self.config.cluster;
        let (decision_ns, poll_ns) = (c.decision_delay_us * NS_PER_US, c.poll_delay_us * NS_PER_US);
        loop {
            let busy_until = self.shards[s as usize].busy_until_ns;
            if busy_until > self.now {
                self.wake_shard_at(s, busy_until);
                return;
            }
            // Nothing waiting: the decision would be `Idle` (it draws nothing from the RNG), so
            // skip its look at every class queue.
            if self.shards[s as usize].shard.queued() == 0 {
                return;
            }
            let machines = &self.machines;
            let decision =
                self.shards[s as usize]
                    .shard
                    .poll_decision(self.now, &mut self.rng, |m, class| {
                        machines[m.0 as usize].poll_reply(m, class)
                    });
            match decision {
                ShardDecision::Idle => return,
                ShardDecision::Blocked => {
                    let retry = self.now + c.retry_delay_us * NS_PER_US;
                    self.wake_shard_at(s, retry);
                    return;
                }
                // The poll that found no machine took its round trip; decide again after it.
                ShardDecision::Deferred | ShardDecision::PassedOver => {
                    self.shards[s as usize].busy_until_ns = self.now + decision_ns + poll_ns;
                }
                ShardDecision::Place {
                    pending,
                    machine,
                    via,
                    ..
                } => {
                    let inv = pending.id.0 as u32;
                    let delay = decision_ns + if via == Via::Polling { poll_ns } else { 0 };
                    self.shards[s as usize].busy_until_ns = self.now + decision_ns;
                    if delay == 0 {
                        self.deliver(inv, machine.0);
                    } else {
                        self.push(
                            self.now + delay,
                            Event::Deliver {
                                inv,
                                machine: machine.0,
                            },
                        );
                    }
                }
            }
        }
    }

    fn deliver(&mut self, inv: u32, m: u32) {
        let id = self.id(inv);
        let i = &mut self.invs[inv as usize];
        i.machine = m;
        let (class, start_mb) = (i.class, i.start_mb);
        let slot = self.machines[m as usize]
            .handle_arrival_at(id, class, start_mb)
            .expect("an invocation is delivered to one machine once");
        self.invs[inv as usize].machine_slot = slot.0;
        self.drain_machine(m);
    }

    /// Carries out machine `m`'s decisions, then updates utilization and its idle-list entry.
    fn drain_machine(&mut self, m: u32) {
        let limited = self.memory_limited();
        while let Some(action) = self.machines[m as usize].poll_action() {
            match action {
                MachineAction::Start(id) | MachineAction::Resume(id) => self.on_running(id),
                MachineAction::Preempt(id) => {
                    let mb = self.on_preempted(id);
                    if limited {
                        let slot = MachineSlot(self.invs[id.0 as u32 as usize].machine_slot);
                        self.machines[m as usize].handle_memory_at(slot, mb);
                    }
                }
                MachineAction::SwapOut { .. } | MachineAction::SwapIn { .. } => {}
                MachineAction::Kill(id) => {
                    let inv = id.0 as u32;
                    let i = &mut self.invs[inv as usize];
                    i.version += 1;
                    i.remaining_ns = i.runtime_ns;
                    let class = i.class.index();
                    self.outcome.classes[class].kills += 1;
                    self.requeue.push(inv);
                }
            }
        }
        let running = self.machines[m as usize].running().len() as f64;
        self.busy[m as usize].set(self.now, running);
        self.update_idle_list(m);
        while let Some(inv) = self.requeue.pop() {
            self.requeue_killed(inv);
        }
    }

    fn requeue_killed(&mut self, inv: u32) {
        self.leave_shard(inv);
        let max = self.config.cluster.kill_requeue_max;
        let i = &mut self.invs[inv as usize];
        if AfterReturn::of(i.requeues, max) == AfterReturn::Requeue {
            i.requeues += 1;
            self.submit(inv);
        } else {
            self.in_flight -= 1;
            let i = self.invs[inv as usize];
            if self.measured(&i) {
                self.outcome.classes[i.class.index()].failed += 1;
            }
            self.release(inv);
        }
    }

    fn update_idle_list(&mut self, m: u32) {
        if self.dispatchers.is_empty() {
            return;
        }
        let entry = self.machines[m as usize].idle_entry();
        let capacity = self.config.cluster.memory_mb.unwrap_or(u64::MAX);
        let dispatcher = &mut self.dispatchers[m as usize];
        dispatcher.handle_load(entry, capacity, self.shards.len() as u32, &mut self.rng);
        let mut action = None;
        while let Some(output) = dispatcher.poll_output() {
            match output {
                // The simulator sees every shard's idle list at once.
                DispatcherOutput::AskLengths(sampled) => {
                    let lengths: Vec<usize> = sampled
                        .iter()
                        .map(|s| self.shards[s.0 as usize].shard.idle_list().len())
                        .collect();
                    dispatcher.handle_lengths(&lengths);
                }
                DispatcherOutput::Send {
                    action: message, ..
                } => action = Some(message),
            }
        }
        match action {
            Some(
                IdleListAction::Join { shard, entry } | IdleListAction::Update { shard, entry },
            ) => {
                let state = &mut self.shards[shard.0 as usize];
                state.shard.handle_idle_join(MachineId(m), entry);
                // A shard with work waiting may now be able to place it.
                if state.shard.queued() > 0 {
                    self.wake_shard_at(shard.0, self.now);
                }
            }
            Some(IdleListAction::Leave { shard }) => {
                self.shards[shard.0 as usize]
                    .shard
                    .handle_idle_leave(MachineId(m));
            }
            None => {}
        }
    }

    fn on_complete(&mut self, inv: u32, version: u32) {
        let i = self.invs[inv as usize];
        if i.version != version {
            return; // Preempted or killed since this completion was scheduled.
        }
        self.invs[inv as usize].remaining_ns = 0;
        self.record_completion(inv);
        let id = self.id(inv);
        match self.kind {
            SchedulerKind::Turnpike => {
                self.machines[i.machine as usize].handle_completion_at(MachineSlot(i.machine_slot));
                self.drain_machine(i.machine);
            }
            SchedulerKind::Edf => {
                let edf = self.edf.as_mut().expect("edf run");
                edf.handle_completion(id);
                self.drain_edf();
            }
            SchedulerKind::Hermod => unreachable!("Hermod completions are PsComplete events"),
        }
        self.release(inv);
    }

    /// Machines measure their running invocations' memory; the timeline is sampled.
    fn on_memory_tick(&mut self) {
        for m in 0..self.machines.len() as u32 {
            self.scratch.clear();
            self.scratch
                .extend_from_slice(self.machines[m as usize].running_slots());
            for k in 0..self.scratch.len() {
                let slot = self.scratch[k];
                if self.machines[m as usize].is_running_at(slot) {
                    let id = self.machines[m as usize].id_at(slot);
                    let mb = self.invs[id.0 as u32 as usize].memory_mb(self.now, true);
                    self.machines[m as usize].handle_memory_at(slot, mb);
                }
            }
            self.drain_machine(m);
        }
        if self.now >= self.warmup_ns && self.now <= self.end_ns {
            let used = self.machines.iter().map(Machine::used_mb).collect();
            let swap = self.machines.iter().map(Machine::swap_used_mb).collect();
            let mem = self
                .outcome
                .memory
                .as_mut()
                .expect("memory tick with limited memory");
            mem.sample_s.push(self.now as f64 / NS_PER_S);
            mem.used_mb.push(used);
            mem.swap_used_mb.push(swap);
        }
        if self.next_arrival.is_some() || self.in_flight > 0 {
            self.push(
                self.now + self.config.cluster.memory_sample_ms * NS_PER_MS,
                Event::MemoryTick,
            );
        }
    }

    // ---- Hermod ----

    fn hermod_place(&mut self, inv: u32) {
        let c = &self.config.cluster;
        sample_machines(&mut self.rng, c.machines, c.k as usize, &mut self.sample);
        self.replies.clear();
        let ps = &self.ps;
        self.replies.extend(self.sample.iter().map(|&m| PollReply {
            machine: m,
            functions: ps[m.0 as usize].functions(),
            room_mb: u64::MAX,
            ahead: ps[m.0 as usize].functions(),
            cores: c.cores,
        }));
        let m = least_loaded(&self.replies, 0)
            .expect("unlimited memory always has room")
            .0;
        let id = self.id(inv);
        let i = &mut self.invs[inv as usize];
        i.machine = m;
        self.ps[m as usize].handle_arrival(self.now, id, i.runtime_ns);
        self.reschedule_ps(m);
    }

    fn reschedule_ps(&mut self, m: u32) {
        let busy = self.ps[m as usize].busy_cores();
        self.busy[m as usize].set(self.now, busy);
        self.ps_version[m as usize] += 1;
        if let Some(at) = self.ps[m as usize].next_completion_ns() {
            let version = self.ps_version[m as usize];
            self.push(
                at,
                Event::PsComplete {
                    machine: m,
                    version,
                },
            );
        }
    }

    fn on_ps_complete(&mut self, m: u32, version: u32) {
        if self.ps_version[m as usize] != version {
            return;
        }
        while let Some(id) = self.ps[m as usize].poll_completion(self.now) {
            self.record_completion(id.0 as u32);
            self.release(id.0 as u32);
        }
        self.reschedule_ps(m);
    }

    // ---- EDF ----

    fn edf_arrival(&mut self, inv: u32) {
        let id = self.id(inv);
        let i = &self.invs[inv as usize];
        let price = self.classes.price(i.class);
        let deadline =
            edf::deadline_ns(i.arrival_ns, i.runtime_ns, price, self.classes.max_price());
        let edf = self.edf.as_mut().expect("edf run");
        edf.handle_arrival(id, deadline);
        self.drain_edf();
    }

    fn drain_edf(&mut self) {
        while let Some(action) = self.edf.as_mut().expect("edf run").poll_action() {
            match action {
                MachineAction::Start(id) | MachineAction::Resume(id) => self.on_running(id),
                MachineAction::Preempt(id) => {
                    let _ = self.on_preempted(id);
                }
                other => unreachable!("EDF only starts, preempts and resumes: {other:?}"),
            }
        }
        let running = self.edf.as_ref().expect("edf run").running_len() as f64;
        self.busy[0].set(self.now, running);
    }

    /// An invocation got a core: its completion is due after its remaining work.
    fn on_running(&mut self, id: InvocationId) {
        let inv = id.0 as u32;
        let i = &mut self.invs[inv as usize];
        i.run_since_ns = self.now;
        let (at, version) = (self.now + i.remaining_ns, i.version);
        self.push(at, Event::Complete { inv, version });
    }

    /// An invocation lost its core: its work done so far is kept and its pending completion
    /// invalidated. Returns its memory at this point.
    fn on_preempted(&mut self, id: InvocationId) -> u64 {
        let now = self.now;
        let i = &mut self.invs[id.0 as u32 as usize];
        let mb = i.memory_mb(now, true);
        i.remaining_ns -= now - i.run_since_ns;
        i.version += 1;
        mb
    }

    // ---- Measurement ----

    fn on_window(&mut self) {
        let window_ns = self.config.cluster.utilization_window_ms * NS_PER_MS;
        let cores = match self.kind {
            SchedulerKind::Edf => {
                f64::from(self.config.cluster.machines * self.config.cluster.cores)
            }
            _ => f64::from(self.config.cluster.cores),
        };
        let first = self.now == self.warmup_ns;
        for b in &mut self.busy {
            let busy = b.busy;
            b.set(self.now, busy);
            if !first {
                let u = (b.area - b.area_at_window) / (cores * window_ns as f64);
                self.outcome.utilization.push(u);
            }
            b.area_at_window = b.area;
        }
        if self.now + window_ns <= self.end_ns {
            self.push(self.now + window_ns, Event::Window);
        }
    }

    fn finish(mut self) -> RunOutcome {
        // Utilization of each machine over the measured interval (whole windows only).
        let machines = self.busy.len();
        let windows = self.outcome.utilization.len() / machines.max(1);
        self.outcome.machine_utilization = (0..machines)
            .map(|m| {
                let sum: f64 = (0..windows)
                    .map(|w| self.outcome.utilization[w * machines + m])
                    .sum();
                sum / windows.max(1) as f64
            })
            .collect();
        // Measured invocations not completed and not failed are unfinished.
        self.outcome.slots = self.invs.len() as u64;
        for (c, out) in self.outcome.classes.iter_mut().enumerate() {
            out.unfinished = self.measured_by_class[c] - out.completed - out.failed;
        }
        if let Some(mem) = self.outcome.memory.as_mut() {
            for m in &self.machines {
                let s = m.memory_stats();
                mem.swapped_mb.push(s.swapped_out_mb.clone());
                for c in 0..s.kills.len() {
                    mem.swap_outs_by_class[c] += s.swap_outs[c];
                    mem.swap_ins_by_class[c] += s.swap_ins[c];
                    mem.kills_by_class[c] += s.kills[c];
                }
            }
        }
        self.outcome
    }
}
