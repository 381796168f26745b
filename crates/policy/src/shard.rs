//! A scheduler shard: the multi-queue of invocations waiting to be placed, the idle list, and
//! the placement rule (paper 3.2, "Global Scheduler Shards"; `DESIGN.md`, "Placement").
//!
//! One decision: pick the head with the best score ([`crate::multi_queue`]), then place it on
//! the idle-list machine with the fewest functions, or, when the idle list has no machine with
//! room, on the least loaded of `k` polled machines, "least loaded" as the configured
//! [`PlacementRule`] ranks them. A shard only places where the machine has
//! room for the invocation's starting memory (free, or freeable by swapping lower classes);
//! otherwise the invocation goes back to the front of its queue and the shard reports itself
//! blocked until the driver retries (after a machine joins the idle list or a retry delay).

use rand::Rng;

use crate::class::{ClassId, ClassSet};
use crate::idle_list::{IdleEntry, IdleList};
use crate::multi_queue::MultiQueue;
use crate::placement::{class_aware_best_two, sample_machines, PlacementRule, PollReply};
use crate::{InvocationId, MachineId};

/// How many times an invocation that came back unanswered is placed again before it fails,
/// unless configured: the simulator's `cluster.kill_requeue_max` and the shard service's
/// `requeue_max`. Invocations are stateless, so running one again from the start is safe.
pub const REQUEUE_MAX_DEFAULT: u32 = 3;

/// What becomes of a placed invocation that came back without an answer: killed on its
/// machine to free memory, or its machine was lost. The one requeue rule of both drivers
/// (the simulator and the shard service), whatever the cause: placed again while it has been
/// requeued fewer than `requeue_max` times (so at most `requeue_max + 1` placements in all),
/// then it fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AfterReturn {
    /// Queue it again, at its class, as a new arrival.
    Requeue,
    /// Fail it: it was placed `requeue_max + 1` times.
    GiveUp,
}

impl AfterReturn {
    /// The rule for an invocation already requeued `requeues` times.
    pub fn of(requeues: u32, requeue_max: u32) -> Self {
        if requeues < requeue_max {
            Self::Requeue
        } else {
            Self::GiveUp
        }
    }
}

/// An invocation waiting in a shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pending {
    pub id: InvocationId,
    pub class: ClassId,
    /// Memory it holds when it starts.
    pub start_mb: u64,
}

/// How a placement found its machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    IdleList,
    Polling,
}

/// The first half of a decision whose machines are polled over the network
/// ([`Shard::begin_decision`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum ShardStep {
    /// Decided without polling (the idle list had room): as [`ShardDecision::Place`].
    Decided(ShardDecision),
    /// Ask these machines for their load, then call [`Shard::finish_decision`] with the
    /// replies. `class` is the class of the invocation being placed.
    Poll {
        machines: Vec<MachineId>,
        class: ClassId,
    },
}

/// The outcome of one shard decision.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum ShardDecision {
    /// Send `pending` to `machine`. `enqueued_ns` is when it joined the queue.
    Place {
        pending: Pending,
        machine: MachineId,
        via: Via,
        enqueued_ns: u64,
    },
    /// The chosen head fits nowhere it looked and no other class's head may go instead; it
    /// is back at the front of its queue. Decide again after a retry delay (or when a
    /// machine reports room).
    Blocked,
    /// The chosen head fits nowhere it looked; it is back at the front of its queue and its
    /// class sits out while heads of other classes wait (see [`Shard::begin_decision`]).
    /// Decide again at once.
    PassedOver,
    /// A top-class head would have waited behind its own class wherever the shard looked; it
    /// is back at the front of its queue. Decide again at once: the next decision polls
    /// twice as many machines (see [`ShardConfig::top_class_defers_max`]).
    Deferred,
    /// Nothing is waiting.
    Idle,
}

/// The default of [`ShardConfig::top_class_defers_max`].
pub const TOP_CLASS_DEFERS_MAX_DEFAULT: u32 = 32;

/// A top-class head is put back only while at least this share of recent top-class polls
/// found a machine where it would start at once: then a miss is bad luck, and another poll
/// soon is likely to do better. Below it the top class itself fills the machines, and
/// waiting at the shard would only add to waiting on a machine.
const TOP_FREE_SHARE_DEFER_MIN: f64 = 0.5;

/// Weight of the newest poll in that share (an exponential moving average over about the
/// last 16 top-class polls).
const TOP_FREE_SHARE_WEIGHT: f64 = 1.0 / 16.0;

/// How a shard places.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ShardConfig {
    /// Machines it samples from when polling: ids `0..machines` (a real shard grows it as
    /// workers register).
    pub machines: u32,
    /// Machines polled per decision when the idle list cannot help (a deferred top-class
    /// head's next decisions poll more: see `top_class_defers_max`).
    pub k: usize,
    /// `false` reverts to polling only (the paper's Figure 4 setting).
    pub use_idle_list: bool,
    pub placement: PlacementRule,
    /// Under the class-aware rule, how many decisions in a row may put a top-class head back
    /// because every polled machine would make it wait behind top-class work: the first
    /// time as [`ShardDecision::Deferred`] (poll others at once), then as
    /// [`ShardDecision::Blocked`] (retry after a delay); 0 binds it at once, as the paper
    /// does. Each time it is put back, its next sample doubles (`k`, `2k`, `4k`, ... up to
    /// every machine the shard knows): a small cluster is soon seen whole, a large one costs
    /// `log2(machines / k)` growing polls at most before it is.
    pub top_class_defers_max: u32,
}

#[derive(Debug, Clone)]
pub struct Shard {
    queue: MultiQueue<Pending>,
    idle: IdleList,
    machines: u32,
    k: usize,
    use_idle_list: bool,
    placement: PlacementRule,
    sample: Vec<MachineId>,
    replies: Vec<PollReply>,
    /// The head taken by [`Shard::begin_decision`] while its machines are polled.
    polling: Option<(ClassId, u64, Pending)>,
    /// Per class, the best machine a poll saw but did not choose (the class-aware rule):
    /// polled again with the next sample of that class ("power of k with memory").
    remembered: Vec<Option<MachineId>>,
    top_class: ClassId,
    top_class_defers_max: u32,
    /// The top-class head last put back because it would have waited, and how many times
    /// (its next sample is `k << times`, see [`Shard::sample_size`]).
    deferred: Option<(InvocationId, u32)>,
    /// Share of recent top-class polls that found a machine where it starts at once.
    top_free_share: f64,
    /// Per class, whether its head was blocked and the class sits out decisions until no
    /// other class's head may go (see [`Shard::begin_decision`]).
    sitting_out: Vec<bool>,
}

impl Shard {
    pub fn new(classes: &ClassSet, config: ShardConfig) -> Self {
        let ShardConfig {
            machines,
            k,
            use_idle_list,
            placement,
            top_class_defers_max,
        } = config;
        assert!(machines > 0 && k > 0, "a shard needs machines and k >= 1");
        Self {
            queue: MultiQueue::new(classes),
            idle: IdleList::new(placement.idle_needs_core()),
            machines,
            k,
            use_idle_list,
            placement,
            sample: Vec::with_capacity(k),
            replies: Vec::with_capacity(k),
            polling: None,
            remembered: vec![None; classes.len()],
            top_class: classes.top(),
            top_class_defers_max,
            deferred: None,
            top_free_share: 1.0,
            sitting_out: vec![false; classes.len()],
        }
    }

    /// Machines the shard samples from when polling: ids `0..machines`. A real shard grows it
    /// as workers register.
    pub fn set_machines(&mut self, machines: u32) {
        assert!(machines > 0, "a shard needs machines");
        self.machines = machines;
    }

    pub fn machines(&self) -> u32 {
        self.machines
    }

    /// Invocations waiting, including one whose machines are being polled.
    pub fn queued(&self) -> usize {
        self.queue.len() + usize::from(self.polling.is_some())
    }

    pub fn queued_of(&self, class: ClassId) -> usize {
        self.queue.len_of(class)
    }

    pub fn idle_list(&self) -> &IdleList {
        &self.idle
    }

    pub fn handle_invocation(&mut self, now_ns: u64, pending: Pending) {
        self.queue.handle_push(pending.class, now_ns, pending);
    }

    /// Takes a cancelled invocation of `class` out of the queue; false if it is not there
    /// (already placed, or its machines are being polled: its placement then finds it gone).
    pub fn handle_cancel(&mut self, class: ClassId, id: InvocationId) -> bool {
        self.queue.handle_remove(class, |p| p.id == id).is_some()
    }

    /// A machine has room: classes sitting out (their heads found none) may try again.
    pub fn handle_idle_join(&mut self, machine: MachineId, entry: IdleEntry) {
        self.idle.handle_upsert(machine, entry);
        self.sitting_out.fill(false);
    }

    pub fn handle_idle_leave(&mut self, machine: MachineId) {
        self.idle.handle_leave(machine);
    }

    /// A machine's numbered idle-list report over the network (see
    /// [`IdleList::handle_report`]): whether it was taken (not older than one taken).
    pub fn handle_idle_report(
        &mut self,
        machine: MachineId,
        seq: u64,
        entry: Option<IdleEntry>,
    ) -> bool {
        let joined = entry.is_some();
        let taken = self.idle.handle_report(machine, seq, entry);
        if taken && joined {
            self.sitting_out.fill(false);
        }
        taken
    }

    /// Forgets `machine`'s idle-list entry and numbering: it registered anew.
    pub fn forget_machine(&mut self, machine: MachineId) {
        self.idle.forget(machine);
    }

    /// Makes one placement decision. `poll` answers for a machine (the simulator reads its
    /// state; a shard on the network uses [`Shard::begin_decision`] and
    /// [`Shard::finish_decision`] around its polling calls instead).
    pub fn poll_decision<R: Rng + ?Sized>(
        &mut self,
        now_ns: u64,
        rng: &mut R,
        mut poll: impl FnMut(MachineId, ClassId) -> PollReply,
    ) -> ShardDecision {
        match self.begin_decision(now_ns, rng) {
            ShardStep::Decided(decision) => decision,
            ShardStep::Poll { machines, class } => {
                let mut replies = std::mem::take(&mut self.replies);
                replies.clear();
                replies.extend(machines.iter().map(|&m| poll(m, class)));
                self.sample = machines;
                let decision = self.finish_decision(&replies);
                self.replies = replies;
                decision
            }
        }
    }

    /// The first half of a decision: takes the best head; places it from the idle list if it
    /// can, else names the `k` machines to poll. The head is held until
    /// [`Shard::finish_decision`]; while it is, `begin_decision` must not be called again.
    ///
    /// A blocked head does not hold up the others. The best head is the core's rule
    /// ([`MultiQueue::choice`]) among the classes not sitting out. A class whose head found
    /// no room sits out ([`ShardDecision::PassedOver`]), so the heads of other classes that
    /// fit go first, in the usual order, while it keeps its place and its growing score.
    /// When every class with a waiting head sits out, they all return and the decision is
    /// [`ShardDecision::Blocked`]: after the retry delay the best head overall is tried
    /// first again. (The paper leaves a blocked head at the front of its queue, picked again
    /// at every decision: a low-class head with a long wait outscored every newer arrival, so
    /// the top class waited for room to free up for the bottom class.)
    pub fn begin_decision<R: Rng + ?Sized>(&mut self, now_ns: u64, rng: &mut R) -> ShardStep {
        assert!(
            self.polling.is_none(),
            "begin_decision while a decision is being polled"
        );
        let Some((class, enqueued_ns, pending)) =
            self.queue.poll_next_except(now_ns, &self.sitting_out)
        else {
            if self.queue.is_empty() {
                return ShardStep::Decided(ShardDecision::Idle);
            }
            self.sitting_out.fill(false);
            return ShardStep::Decided(ShardDecision::Blocked);
        };
        if self.use_idle_list {
            if let Some(machine) = self.idle.poll_place(pending.start_mb) {
                return ShardStep::Decided(ShardDecision::Place {
                    pending,
                    machine,
                    via: Via::IdleList,
                    enqueued_ns,
                });
            }
        }
        let mut machines = std::mem::take(&mut self.sample);
        let k = self.sample_size(pending.id);
        sample_machines(rng, self.machines, k, &mut machines);
        if let Some(m) = self.remembered[class.index()].take() {
            if m.0 < self.machines && !machines.contains(&m) {
                machines.push(m);
            }
        }
        self.polling = Some((class, enqueued_ns, pending));
        ShardStep::Poll { machines, class }
    }

    /// How many machines to poll for the head `id`: `k`, doubled for each time in a row it
    /// was put back (capped at the machines known, which [`sample_machines`] also does).
    fn sample_size(&self, id: InvocationId) -> usize {
        let times = self.times_deferred(id);
        let all = self.machines as usize;
        // k << times, without overflow: past `all` the cap decides.
        (0..times).fold(self.k.min(all), |k, _| k.saturating_mul(2).min(all))
    }

    /// How many times in a row the head `id` was put back.
    fn times_deferred(&self, id: InvocationId) -> u32 {
        match self.deferred {
            Some((last, n)) if last == id => n,
            _ => 0,
        }
    }

    /// Whether a class that does not sit out has a head waiting.
    fn another_class_may_go(&self) -> bool {
        self.sitting_out
            .iter()
            .enumerate()
            .any(|(i, &out)| !out && self.queue.len_of(ClassId(i as u8)) > 0)
    }

    /// Whether to put a top-class head back rather than bind it to `chosen`, where it would
    /// wait behind work of its own class: another, larger poll (at once the first time, then
    /// a retry delay later) is likely to find a machine where it starts at once, while
    /// waiting on `chosen` costs a whole residual runtime. Only while recent top-class polls
    /// mostly found a free core ([`TOP_FREE_SHARE_DEFER_MIN`]), at most
    /// `top_class_defers_max` times in a row for one invocation, so a top class beyond the
    /// cluster's capacity is still placed. Also when every machine was polled: a retry delay
    /// later, the first core to free up anywhere takes the head, where binding now would
    /// queue it behind one machine's own residual runtime. Never with a single machine, where
    /// there is no other to wait for.
    fn defer(&mut self, id: InvocationId, chosen: Option<&PollReply>) -> bool {
        if self.machines <= 1 {
            return false;
        }
        let waits = chosen.is_some_and(|r| r.waits() > 0);
        let times = self.times_deferred(id);
        // Each head's first poll only: a deferred head's next polls are not a fresh sample.
        if times == 0 {
            let found = if waits { 0.0 } else { 1.0 };
            self.top_free_share += (found - self.top_free_share) * TOP_FREE_SHARE_WEIGHT;
        }
        let likely_luck = self.top_free_share >= TOP_FREE_SHARE_DEFER_MIN;
        if waits && likely_luck && times < self.top_class_defers_max {
            self.deferred = Some((id, times + 1));
            true
        } else {
            false
        }
    }

    /// The second half: places the held head on the least loaded polled machine with room
    /// for it, or puts it back at the front of its queue ([`ShardDecision::Blocked`]).
    /// Machines that did not answer are simply left out of `replies`.
    pub fn finish_decision(&mut self, replies: &[PollReply]) -> ShardDecision {
        let (class, enqueued_ns, pending) = self
            .polling
            .take()
            .expect("finish_decision after begin_decision asked to poll");
        let mut chosen;
        let mut deferred = false;
        if self.placement == PlacementRule::ClassAware {
            // What `choose` picks, and the best of the others, in one pass.
            let (best, second) = class_aware_best_two(replies, pending.start_mb);
            chosen = best.map(|i| replies[i].machine);
            let best_reply = best.map(|i| &replies[i]);
            if class == self.top_class && self.defer(pending.id, best_reply) {
                (chosen, deferred) = (None, true);
            }
            // Remember the best machine not chosen: the runner-up, or the best if deferred.
            let remembered = if deferred { best } else { second };
            self.remembered[class.index()] = remembered.map(|i| replies[i].machine);
        } else {
            chosen = self.placement.choose(replies, pending.start_mb);
        }
        match chosen {
            Some(machine) => ShardDecision::Place {
                pending,
                machine,
                via: Via::Polling,
                enqueued_ns,
            },
            None => {
                self.queue.handle_push_front(class, enqueued_ns, pending);
                if deferred {
                    // The first time, poll twice as many machines at once; after that, give
                    // the cores polled a retry delay to free up (each poll larger until it
                    // covers every machine).
                    if self.deferred.is_some_and(|(_, n)| n == 1) {
                        ShardDecision::Deferred
                    } else {
                        ShardDecision::Blocked
                    }
                } else {
                    self.sitting_out[class.index()] = true;
                    if self.another_class_may_go() {
                        ShardDecision::PassedOver
                    } else {
                        self.sitting_out.fill(false);
                        ShardDecision::Blocked
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn config(machines: u32, k: usize, use_idle_list: bool) -> ShardConfig {
        ShardConfig {
            machines,
            k,
            use_idle_list,
            placement: PlacementRule::ClassAware,
            top_class_defers_max: 0,
        }
    }

    fn pending(n: u64, class: u8) -> Pending {
        Pending {
            id: InvocationId(n),
            class: ClassId(class),
            start_mb: 100,
        }
    }

    #[test]
    fn idle_list_first_then_polling_then_blocked() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut shard = Shard::new(&classes, config(4, 2, true));
        shard.handle_idle_join(
            MachineId(2),
            IdleEntry {
                free_mb: 150,
                functions: 0,
                idle_cores: 4,
            },
        );
        shard.handle_invocation(0, pending(1, 0));
        shard.handle_invocation(0, pending(2, 0));
        shard.handle_invocation(0, pending(3, 0));
        let room = |m: MachineId, _| PollReply {
            machine: m,
            functions: m.0,
            room_mb: 1000,
            ahead: m.0,
            cores: 1,
        };
        let d = shard.poll_decision(1, &mut rng, room);
        assert!(matches!(
            d,
            ShardDecision::Place {
                machine: MachineId(2),
                via: Via::IdleList,
                ..
            }
        ));
        // The idle entry has 50 MB left: not enough, so poll.
        let d = shard.poll_decision(1, &mut rng, room);
        assert!(matches!(
            d,
            ShardDecision::Place {
                via: Via::Polling,
                ..
            }
        ));
        let full = |m: MachineId, _| PollReply {
            machine: m,
            functions: 0,
            room_mb: 10,
            ahead: 0,
            cores: 1,
        };
        assert_eq!(
            shard.poll_decision(1, &mut rng, full),
            ShardDecision::Blocked
        );
        assert_eq!(shard.queued(), 1);
        let d = shard.poll_decision(1, &mut rng, room);
        assert!(
            matches!(d, ShardDecision::Place { pending: p, enqueued_ns: 0, .. } if p.id == InvocationId(3))
        );
        assert_eq!(shard.poll_decision(1, &mut rng, room), ShardDecision::Idle);
    }

    #[test]
    fn a_blocked_head_lets_other_classes_that_fit_go_first_then_is_tried_again() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(9);
        let mut shard = Shard::new(&classes, config(3, 3, false));
        // A batch head that has waited long (its score beats every newer arrival's), then a
        // critical and a standard invocation behind it.
        shard.handle_invocation(0, pending(1, 0));
        shard.handle_invocation(900 * 1_000_000, pending(2, 3));
        shard.handle_invocation(900 * 1_000_000, pending(3, 1));
        let now = 1_000 * 1_000_000;
        // Room for the critical and the standard head (which may swap batch out), none for
        // batch.
        let room_above_batch = |m: MachineId, class: ClassId| PollReply {
            machine: m,
            functions: 1,
            room_mb: if class == ClassId(0) { 10 } else { 1000 },
            ahead: 0,
            cores: 1,
        };
        let mut polled_for = Vec::new();
        let mut decide = |shard: &mut Shard, polled_for: &mut Vec<ClassId>| {
            shard.poll_decision(now, &mut rng, |m, class| {
                polled_for.push(class);
                room_above_batch(m, class)
            })
        };
        // Batch first (the core's rule), blocked: passed over, not a wait for everyone.
        assert_eq!(
            decide(&mut shard, &mut polled_for),
            ShardDecision::PassedOver
        );
        // Then the others that fit, in the core's order: critical, then standard.
        for id in [2, 3] {
            let d = decide(&mut shard, &mut polled_for);
            assert!(
                matches!(d, ShardDecision::Place { pending: p, .. } if p.id == InvocationId(id)),
                "{d:?}"
            );
        }
        assert_eq!(polled_for[0], ClassId(0));
        assert_eq!(polled_for.last(), Some(&ClassId(1)));
        // Only the batch head is left, sitting out: blocked without a poll, and batch is back
        // in the running for the next decision, where, alone, it is blocked as before.
        let polls = polled_for.len();
        assert_eq!(decide(&mut shard, &mut polled_for), ShardDecision::Blocked);
        assert_eq!(polled_for.len(), polls, "no machine polled");
        assert_eq!(decide(&mut shard, &mut polled_for), ShardDecision::Blocked);
        assert_eq!(polled_for.len(), polls + 3);
        assert_eq!(polled_for.last(), Some(&ClassId(0)));
        // A machine with room joins: batch may go at once.
        shard.handle_invocation(now, pending(4, 3));
        shard.handle_idle_join(
            MachineId(1),
            IdleEntry {
                free_mb: 1000,
                functions: 0,
                idle_cores: 1,
            },
        );
        let mut with_idle_list = shard.clone();
        with_idle_list.use_idle_list = true;
        let d = with_idle_list.poll_decision(now, &mut rng, room_above_batch);
        assert!(
            matches!(d, ShardDecision::Place { pending: p, via: Via::IdleList, .. } if p.id == InvocationId(1)),
            "{d:?}"
        );
    }

    #[test]
    fn a_decision_in_two_halves_around_network_polls() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
        let mut shard = Shard::new(&classes, config(1, 2, true));
        shard.set_machines(3);
        shard.handle_invocation(0, pending(1, 2));
        let ShardStep::Poll { machines, class } = shard.begin_decision(1, &mut rng) else {
            panic!("an empty idle list means polling");
        };
        assert_eq!((machines.len(), class), (2, ClassId(2)));
        assert!(machines.iter().all(|m| m.0 < 3));
        assert_eq!(shard.queued(), 1, "the held head still counts as queued");
        // No machine answered: the head goes back and the shard is blocked.
        assert_eq!(shard.finish_decision(&[]), ShardDecision::Blocked);
        assert_eq!(shard.queued(), 1);
        let ShardStep::Poll { machines, .. } = shard.begin_decision(2, &mut rng) else {
            panic!("still nothing on the idle list");
        };
        let replies: Vec<_> = machines
            .iter()
            .enumerate()
            .map(|(i, &machine)| PollReply {
                machine,
                functions: 5 - i as u32,
                room_mb: 1000,
                ahead: 5 - i as u32,
                cores: 1,
            })
            .collect();
        let d = shard.finish_decision(&replies);
        assert!(
            matches!(d, ShardDecision::Place { machine, via: Via::Polling, enqueued_ns: 0, .. } if machine == machines[1]),
            "{d:?}"
        );
        assert_eq!(shard.queued(), 0);
        assert_eq!(
            shard.begin_decision(3, &mut rng),
            ShardStep::Decided(ShardDecision::Idle)
        );
    }

    #[test]
    #[should_panic(expected = "being polled")]
    fn a_second_decision_cannot_start_while_one_is_polled() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
        let mut shard = Shard::new(&classes, config(4, 2, false));
        shard.handle_invocation(0, pending(1, 0));
        shard.handle_invocation(0, pending(2, 0));
        let _ = shard.begin_decision(1, &mut rng);
        let _ = shard.begin_decision(1, &mut rng);
    }

    #[test]
    fn a_top_class_head_is_put_back_rather_than_queued_behind_its_class_a_bounded_number_of_times()
    {
        let classes = ClassSet::default_four();
        let top = classes.top();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(9);
        let mut shard = Shard::new(
            &classes,
            ShardConfig {
                top_class_defers_max: 2,
                ..config(8, 4, false)
            },
        );
        shard.handle_invocation(0, pending(1, top.0));
        // Every one-core machine already runs a top-class invocation.
        let busy = |m: MachineId, _| PollReply {
            machine: m,
            functions: 3,
            room_mb: 1000,
            ahead: 1,
            cores: 1,
        };
        // First another poll at once, then a retry delay for the cores it saw to free up.
        assert_eq!(
            shard.poll_decision(1, &mut rng, busy),
            ShardDecision::Deferred
        );
        assert_eq!(shard.queued(), 1);
        assert_eq!(
            shard.poll_decision(1, &mut rng, busy),
            ShardDecision::Blocked
        );
        // The third time it is bound anyway: a top class beyond capacity is still placed.
        assert!(matches!(
            shard.poll_decision(3, &mut rng, busy),
            ShardDecision::Place {
                via: Via::Polling,
                ..
            }
        ));
        // A lower class is bound at once, behind its own class if need be.
        shard.handle_invocation(4, pending(2, 1));
        assert!(matches!(
            shard.poll_decision(4, &mut rng, busy),
            ShardDecision::Place { .. }
        ));
    }

    #[test]
    fn a_deferred_top_class_heads_sample_doubles_up_to_every_machine_and_it_still_waits() {
        let classes = ClassSet::default_four();
        let top = classes.top();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(11);
        let mut shard = Shard::new(
            &classes,
            ShardConfig {
                top_class_defers_max: 6,
                ..config(20, 3, false)
            },
        );
        shard.handle_invocation(0, pending(1, top.0));
        // Every one-core machine already runs a top-class invocation.
        let busy = |m: MachineId| PollReply {
            machine: m,
            functions: 2,
            room_mb: 1000,
            ahead: 1,
            cores: 1,
        };
        let mut sizes = Vec::new();
        let mut decisions = Vec::new();
        for t in 0..7 {
            let d = shard.poll_decision(t, &mut rng, |m, _| busy(m));
            let polled = shard.sample.len();
            sizes.push(polled);
            decisions.push(d);
        }
        // k, then 2k and 4k (each plus the best machine of the last poll, unless drawn
        // again), then all 20; seen whole, the head is still put back until its bound.
        assert_eq!(sizes[0], 3, "{sizes:?}");
        assert!((6..=7).contains(&sizes[1]), "{sizes:?}");
        assert!((12..=13).contains(&sizes[2]), "{sizes:?}");
        assert!(sizes[3..].iter().all(|&n| n == 20), "{sizes:?}");
        assert_eq!(decisions[0], ShardDecision::Deferred);
        assert!(
            decisions[1..6].iter().all(|d| *d == ShardDecision::Blocked),
            "{decisions:?}"
        );
        assert!(
            matches!(decisions[6], ShardDecision::Place { .. }),
            "{decisions:?}"
        );
        // The next head starts again from k.
        shard.handle_invocation(8, pending(2, top.0));
        let _ = shard.poll_decision(8, &mut rng, |m, _| busy(m));
        assert!(shard.sample.len() <= 4, "{}", shard.sample.len());
    }

    #[test]
    fn a_shard_that_knows_one_machine_binds_a_top_class_head_at_once() {
        let classes = ClassSet::default_four();
        let top = classes.top();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(12);
        let mut shard = Shard::new(
            &classes,
            ShardConfig {
                top_class_defers_max: 32,
                ..config(1, 3, false)
            },
        );
        shard.handle_invocation(0, pending(1, top.0));
        let busy = |m: MachineId, _| PollReply {
            machine: m,
            functions: 1,
            room_mb: 1000,
            ahead: 1,
            cores: 1,
        };
        assert!(matches!(
            shard.poll_decision(1, &mut rng, busy),
            ShardDecision::Place {
                machine: MachineId(0),
                ..
            }
        ));
    }

    #[test]
    fn the_best_machine_not_chosen_is_polled_again_for_its_class() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(4);
        let mut shard = Shard::new(&classes, config(100, 2, false));
        let reply = |m: MachineId, _| PollReply {
            machine: m,
            functions: m.0,
            room_mb: 1000,
            ahead: m.0,
            cores: 1000,
        };
        shard.handle_invocation(0, pending(1, 2));
        let ShardStep::Poll { machines, .. } = shard.begin_decision(1, &mut rng) else {
            panic!("no idle list: polling");
        };
        assert_eq!(machines.len(), 2);
        let replies: Vec<PollReply> = machines.iter().map(|&m| reply(m, ClassId(2))).collect();
        let ShardDecision::Place { machine, .. } = shard.finish_decision(&replies) else {
            panic!("room everywhere");
        };
        let other = machines.iter().copied().find(|&m| m != machine);
        shard.handle_invocation(2, pending(2, 2));
        let ShardStep::Poll { machines, .. } = shard.begin_decision(3, &mut rng) else {
            panic!("no idle list: polling");
        };
        assert!(
            machines.contains(&other.expect("two were polled")),
            "{machines:?}"
        );
        assert!(machines.len() <= 3);
    }

    #[test]
    fn when_the_top_class_itself_fills_the_machines_its_heads_are_bound_at_once() {
        let classes = ClassSet::default_four();
        let top = classes.top();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(10);
        let mut shard = Shard::new(
            &classes,
            ShardConfig {
                top_class_defers_max: 32,
                ..config(8, 3, false)
            },
        );
        let busy = |m: MachineId, _| PollReply {
            machine: m,
            functions: 1,
            room_mb: 1000,
            ahead: 1,
            cores: 1,
        };
        let mut deferrals = Vec::new();
        for n in 0..40 {
            shard.handle_invocation(n, pending(n, top.0));
            let mut times = 0;
            while !matches!(
                shard.poll_decision(n, &mut rng, busy),
                ShardDecision::Place { .. }
            ) {
                times += 1;
            }
            deferrals.push(times);
        }
        // Every poll misses. The first head is put back as often as allowed; the share of
        // heads whose first poll found a free core falls under one half within a dozen heads,
        // and from then on nothing is put back.
        assert_eq!(deferrals[0], 32, "{deferrals:?}");
        assert!(deferrals[20..].iter().all(|&t| t == 0), "{deferrals:?}");
    }
}
