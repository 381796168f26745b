//! A scheduler shard: the multi-queue of invocations waiting to be placed, the idle list, and
//! the placement rule (paper 3.2, "Global Scheduler Shards"; `DESIGN.md`, "Placement").
//!
//! One decision: pick the head with the best score ([`crate::multi_queue`]), then place it on
//! the idle-list machine with the fewest functions, or, when the idle list has no machine with
//! room, on the least loaded of `k` polled machines. A shard only places where the machine has
//! room for the invocation's starting memory (free, or freeable by swapping lower classes);
//! otherwise the invocation goes back to the front of its queue and the shard reports itself
//! blocked until the driver retries (after a machine joins the idle list or a retry delay).

use rand::Rng;

use crate::class::{ClassId, ClassSet};
use crate::idle_list::{IdleEntry, IdleList};
use crate::multi_queue::MultiQueue;
use crate::placement::{least_loaded, sample_machines, PollReply};
use crate::{InvocationId, MachineId};

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
    /// The chosen head fits nowhere it looked; it is back at the front of its queue.
    Blocked,
    /// Nothing is waiting.
    Idle,
}

#[derive(Debug, Clone)]
pub struct Shard {
    queue: MultiQueue<Pending>,
    idle: IdleList,
    machines: u32,
    k: usize,
    use_idle_list: bool,
    sample: Vec<MachineId>,
    replies: Vec<PollReply>,
    /// The head taken by [`Shard::begin_decision`] while its machines are polled.
    polling: Option<(ClassId, u64, Pending)>,
}

impl Shard {
    /// A shard placing over `machines` machines, polling `k` of them when its idle list cannot
    /// help; `use_idle_list = false` reverts to polling only (the paper's Figure 4 setting).
    pub fn new(classes: &ClassSet, machines: u32, k: usize, use_idle_list: bool) -> Self {
        assert!(machines > 0 && k > 0, "a shard needs machines and k >= 1");
        Self {
            queue: MultiQueue::new(classes),
            idle: IdleList::new(),
            machines,
            k,
            use_idle_list,
            sample: Vec::with_capacity(k),
            replies: Vec::with_capacity(k),
            polling: None,
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

    pub fn handle_idle_join(&mut self, machine: MachineId, entry: IdleEntry) {
        self.idle.handle_upsert(machine, entry);
    }

    pub fn handle_idle_leave(&mut self, machine: MachineId) {
        self.idle.handle_leave(machine);
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
    pub fn begin_decision<R: Rng + ?Sized>(&mut self, now_ns: u64, rng: &mut R) -> ShardStep {
        assert!(
            self.polling.is_none(),
            "begin_decision while a decision is being polled"
        );
        let Some((class, enqueued_ns, pending)) = self.queue.poll_next(now_ns) else {
            return ShardStep::Decided(ShardDecision::Idle);
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
        sample_machines(rng, self.machines, self.k, &mut machines);
        self.polling = Some((class, enqueued_ns, pending));
        ShardStep::Poll { machines, class }
    }

    /// The second half: places the held head on the least loaded polled machine with room
    /// for it, or puts it back at the front of its queue ([`ShardDecision::Blocked`]).
    /// Machines that did not answer are simply left out of `replies`.
    pub fn finish_decision(&mut self, replies: &[PollReply]) -> ShardDecision {
        let (class, enqueued_ns, pending) = self
            .polling
            .take()
            .expect("finish_decision after begin_decision asked to poll");
        match least_loaded(replies, pending.start_mb) {
            Some(machine) => ShardDecision::Place {
                pending,
                machine,
                via: Via::Polling,
                enqueued_ns,
            },
            None => {
                self.queue.handle_push_front(class, enqueued_ns, pending);
                ShardDecision::Blocked
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

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
        let mut shard = Shard::new(&classes, 4, 2, true);
        shard.handle_idle_join(
            MachineId(2),
            IdleEntry {
                free_mb: 150,
                functions: 0,
            },
        );
        shard.handle_invocation(0, pending(1, 0));
        shard.handle_invocation(0, pending(2, 0));
        shard.handle_invocation(0, pending(3, 0));
        let room = |m: MachineId, _| PollReply {
            machine: m,
            functions: m.0,
            room_mb: 1000,
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
    fn a_decision_in_two_halves_around_network_polls() {
        let classes = ClassSet::default_four();
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(5);
        let mut shard = Shard::new(&classes, 1, 2, true);
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
        let mut shard = Shard::new(&classes, 4, 2, false);
        shard.handle_invocation(0, pending(1, 0));
        shard.handle_invocation(0, pending(2, 0));
        let _ = shard.begin_decision(1, &mut rng);
        let _ = shard.begin_decision(1, &mut rng);
    }
}
