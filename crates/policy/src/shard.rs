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
        }
    }

    pub fn queued(&self) -> usize {
        self.queue.len()
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

    /// Makes one placement decision. `poll` answers for a machine (a real shard asks it over
    /// the network; the simulator reads its state).
    pub fn poll_decision<R: Rng + ?Sized>(
        &mut self,
        now_ns: u64,
        rng: &mut R,
        mut poll: impl FnMut(MachineId, ClassId) -> PollReply,
    ) -> ShardDecision {
        let Some((class, enqueued_ns, pending)) = self.queue.poll_next(now_ns) else {
            return ShardDecision::Idle;
        };
        if self.use_idle_list {
            if let Some(machine) = self.idle.poll_place(pending.start_mb) {
                return ShardDecision::Place {
                    pending,
                    machine,
                    via: Via::IdleList,
                    enqueued_ns,
                };
            }
        }
        sample_machines(rng, self.machines, self.k, &mut self.sample);
        self.replies.clear();
        self.replies
            .extend(self.sample.iter().map(|&m| poll(m, class)));
        match least_loaded(&self.replies, pending.start_mb) {
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
}
