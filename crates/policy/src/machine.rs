//! The machine scheduler: strict preemptive priority by price class over `cores` slots, first
//! come first served within a class (like Linux `SCHED_FIFO`), together with the memory
//! manager's rules (see [`crate::memory`]).
//!
//! Invariant: the running invocations are the top `cores` of the eligible ones ordered by
//! (class descending, arrival at this machine ascending). When a higher class arrives and all
//! slots run lower classes, the lowest-class, latest-arrived running invocation is preempted
//! and parked; it resumes when it is again among the top. Low classes may starve: intended.
//! "Eligible" excludes only invocations whose memory does not fit yet: a swapped-out one
//! until it fits under the high watermark, an unstarted one until its start memory fits
//! under capacity (unless nothing runs; see [`crate::memory`]).
//!
//! An invocation blocked on I/O (a sleep, an outgoing request) holds no slot and no queue
//! place, but keeps its memory, which the memory manager may swap out as it would a parked
//! one's. When it is ready again it rejoins its class's queue in arrival order: ahead of later
//! arrivals, behind earlier ones (it does not preempt its own class). This keeps "first come
//! first served" meaning "first arrived" rather than "last woken", unlike Linux `SCHED_FIFO`,
//! which puts a woken thread at the tail; an invocation that started earlier finishes earlier
//! and holds its memory for less time.
//!
//! The driver reports arrivals, completions, blocking and measured memory (`handle_*`) and
//! carries out the decisions it polls ([`MachineAction`]) in order.

use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::class::ClassId;
use crate::idle_list::IdleEntry;
use crate::memory::{MemoryConfig, MemoryLedger, MemoryStats};
use crate::placement::PollReply;
use crate::{InvocationId, MachineId};

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MachineConfig {
    /// Core slots: at most this many invocations run at once.
    pub cores: u32,
    /// `None`: unlimited memory, no memory management (Figure 4's setting).
    pub memory: Option<MemoryConfig>,
}

/// A decision for the driver, polled with [`Machine::poll_action`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum MachineAction {
    /// Run an invocation for the first time.
    Start(InvocationId),
    /// Stop a running invocation and park it (its memory stays as it is).
    Preempt(InvocationId),
    /// Run a parked invocation again (after a `SwapIn` if it had been swapped out).
    Resume(InvocationId),
    /// Write a parked invocation's memory to swap space and release it.
    SwapOut { id: InvocationId, mb: u64 },
    /// Read a swapped-out invocation's memory back (it is about to run).
    SwapIn { id: InvocationId, mb: u64 },
    /// The invocation was removed to free memory; the driver requeues it or fails it.
    Kill(InvocationId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Residence {
    /// Not started: holds no memory yet.
    NotStarted,
    Resident,
    Swapped,
}

#[derive(Clone, Copy, Debug)]
struct Entry {
    class: ClassId,
    /// Arrival order at this machine: FIFO within a class, latest-first for victims.
    seq: u64,
    mem_mb: u64,
    running: bool,
    /// Waiting on I/O: neither running nor in a queue.
    blocked: bool,
    residence: Residence,
}

/// [`Machine::handle_arrival`] of an id the machine already holds: the driver's bug, reported
/// rather than corrupting the queues.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invocation {} is already on this machine", .0 .0)]
pub struct AlreadyPlaced(pub InvocationId);

/// Orders victims: the smallest key is the lowest class and, within it, the latest arrival.
fn victim_key(class: ClassId, seq: u64) -> u64 {
    debug_assert!(seq < 1 << 56, "arrival sequence numbers fit in 56 bits");
    (u64::from(class.0) << 56) | ((1 << 56) - 1 - seq)
}

#[derive(Debug, Clone)]
pub struct Machine {
    cores: usize,
    entries: FxHashMap<InvocationId, Entry>,
    /// Per class, waiting invocations in run order (preempted ones go back to the front).
    waiting: Vec<VecDeque<InvocationId>>,
    running: Vec<InvocationId>,
    /// `victim_key` of each running invocation, same order as `running`: the victim search
    /// scans these integers instead of looking every running entry up.
    running_keys: Vec<u64>,
    memory: MemoryLedger,
    /// Per class, invocations that compete for a core: running, parked or not started, but
    /// not blocked on I/O. What [`Machine::ahead_of`] and [`Machine::idle_cores`] count.
    competing_by_class: Vec<u32>,
    next_seq: u64,
    actions: VecDeque<MachineAction>,
}

impl Machine {
    pub fn new(config: MachineConfig, classes: usize) -> Self {
        assert!(config.cores > 0, "a machine needs at least one core");
        Self {
            cores: config.cores as usize,
            entries: FxHashMap::default(),
            waiting: vec![VecDeque::new(); classes],
            running: Vec::with_capacity(config.cores as usize),
            running_keys: Vec::with_capacity(config.cores as usize),
            memory: MemoryLedger::new(config.memory, classes),
            competing_by_class: vec![0; classes],
            next_seq: 0,
            actions: VecDeque::new(),
        }
    }

    /// Invocations on this machine (running, parked, blocked on I/O, or not started).
    pub fn functions(&self) -> u32 {
        self.entries.len() as u32
    }

    pub fn cores(&self) -> u32 {
        self.cores as u32
    }

    /// Invocations of `class` or higher that compete for this machine's cores (running,
    /// parked or not started; not blocked on I/O): what a new invocation of `class` would
    /// share the cores with, since everything lower is preempted for it.
    pub fn ahead_of(&self, class: ClassId) -> u32 {
        self.competing_by_class[class.index()..].iter().sum()
    }

    /// Cores that no competing invocation of any class holds or waits for: a new invocation
    /// of any class would start at once on one of them.
    pub fn idle_cores(&self) -> u32 {
        let competing: u32 = self.competing_by_class.iter().sum();
        (self.cores as u32).saturating_sub(competing)
    }

    /// What this machine answers when a shard polls it for an invocation of `class`.
    pub fn poll_reply(&self, machine: MachineId, class: ClassId) -> PollReply {
        PollReply {
            machine,
            functions: self.functions(),
            room_mb: self.room_for(class),
            ahead: self.ahead_of(class),
            cores: self.cores(),
        }
    }

    /// This machine's idle-list entry as its dispatcher reports it.
    pub fn idle_entry(&self) -> IdleEntry {
        IdleEntry {
            free_mb: self.free_mb(),
            functions: self.functions(),
            idle_cores: self.idle_cores(),
        }
    }

    pub fn running(&self) -> &[InvocationId] {
        &self.running
    }

    pub fn is_running(&self, id: InvocationId) -> bool {
        self.entries.get(&id).is_some_and(|e| e.running)
    }

    pub fn used_mb(&self) -> u64 {
        self.memory.used_mb()
    }

    pub fn free_mb(&self) -> u64 {
        self.memory.free_mb()
    }

    pub fn swap_used_mb(&self) -> u64 {
        self.memory.swap_used_mb()
    }

    /// See [`MemoryLedger::room_for`].
    pub fn room_for(&self, class: ClassId) -> u64 {
        self.memory.room_for(class)
    }

    pub fn memory_stats(&self) -> &MemoryStats {
        self.memory.stats()
    }

    /// A new invocation was placed here. It will hold `start_mb` once it starts. An id the
    /// machine already holds is refused and changes nothing.
    pub fn handle_arrival(
        &mut self,
        id: InvocationId,
        class: ClassId,
        start_mb: u64,
    ) -> Result<(), AlreadyPlaced> {
        // One hash lookup for both the check and the insertion.
        let std::collections::hash_map::Entry::Vacant(slot) = self.entries.entry(id) else {
            return Err(AlreadyPlaced(id));
        };
        let seq = self.next_seq;
        self.next_seq += 1;
        slot.insert(Entry {
            class,
            seq,
            mem_mb: start_mb,
            running: false,
            blocked: false,
            residence: Residence::NotStarted,
        });
        self.waiting[class.index()].push_back(id);
        self.competing_by_class[class.index()] += 1;
        self.settle();
        Ok(())
    }

    /// A started invocation (running, or parked by a preemption that crossed its last run)
    /// now waits on I/O: it gives up its slot or queue place and keeps its memory. Ignored
    /// for unknown, unstarted and already blocked invocations.
    pub fn handle_blocked(&mut self, id: InvocationId) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.blocked || e.residence == Residence::NotStarted {
            return;
        }
        e.blocked = true;
        let e = *e;
        self.competing_by_class[e.class.index()] -= 1;
        if e.running {
            let at = self.running_position(id);
            self.remove_running(at);
            self.entries.get_mut(&id).expect("present").running = false;
            self.memory.park(e.class, e.seq, id);
        } else {
            self.remove_waiting(id, e.class);
        }
        self.settle();
    }

    /// A blocked invocation's I/O completed: it rejoins its class's queue in arrival order
    /// (see the module docs) and runs when the rules let it. Ignored unless it is blocked.
    pub fn handle_ready(&mut self, id: InvocationId) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if !e.blocked {
            return;
        }
        e.blocked = false;
        let (class, seq) = (e.class, e.seq);
        self.competing_by_class[class.index()] += 1;
        let entries = &self.entries;
        let q = &mut self.waiting[class.index()];
        let at = q.partition_point(|w| entries[w].seq < seq);
        q.insert(at, id);
        self.settle();
    }

    /// Whether the invocation is blocked on I/O.
    pub fn is_blocked(&self, id: InvocationId) -> bool {
        self.entries.get(&id).is_some_and(|e| e.blocked)
    }

    /// An invocation ended (completed, failed, timed out or cancelled) in whatever state it
    /// was; its slot and memory are freed. Unknown ids are ignored (it may have been killed).
    pub fn handle_completion(&mut self, id: InvocationId) {
        if self.remove_entry(id) {
            self.settle();
        }
    }

    /// The driver measured a running or parked resident invocation's memory at `mb`.
    /// Reports for swapped-out, unstarted or unknown invocations are ignored.
    pub fn handle_memory(&mut self, id: InvocationId, mb: u64) {
        let Some(e) = self.entries.get_mut(&id) else {
            return;
        };
        if e.residence != Residence::Resident || e.mem_mb == mb {
            return;
        }
        let (class, old) = (e.class, e.mem_mb);
        e.mem_mb = mb;
        self.memory.remove_resident(class, old);
        self.memory.add_resident(class, mb);
        if self.memory.config.is_some() {
            self.settle();
        }
    }

    /// The next decision to carry out, in order.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<MachineAction> {
        self.actions.pop_front()
    }

    /// Applies the scheduling and memory rules until nothing changes.
    fn settle(&mut self) {
        loop {
            self.schedule();
            if !self.relieve_memory() {
                break;
            }
        }
        debug_assert!(self.running.len() <= self.cores);
    }

    /// Fills free slots and preempts lower classes, highest eligible first.
    fn schedule(&mut self) {
        while let Some((class, pos)) = self.best_eligible() {
            if self.running.len() == self.cores {
                let (victim_at, victim) = self.lowest_running().expect("slots are full");
                if class <= victim.class {
                    return;
                }
                self.preempt(victim_at);
            }
            self.run(class, pos);
        }
    }

    /// The first eligible waiting invocation in priority order: `(class, position in FIFO)`.
    fn best_eligible(&self) -> Option<(ClassId, usize)> {
        if self.memory.config.is_none() {
            // Unlimited memory: every waiting invocation is eligible, so the best is the head
            // of the highest non-empty FIFO; no entry needs looking up.
            return self
                .waiting
                .iter()
                .rposition(|q| !q.is_empty())
                .map(|c| (ClassId(c as u8), 0));
        }
        let nothing_running = self.running.is_empty();
        for (c, q) in self.waiting.iter().enumerate().rev() {
            // The whole FIFO: an eligible invocation behind any number of memory-blocked ones
            // must be found, or a lower class would run in its place. With unlimited memory
            // the head is always eligible, so this costs one look.
            for (pos, id) in q.iter().enumerate() {
                let e = &self.entries[id];
                let eligible = match e.residence {
                    Residence::Resident => true,
                    Residence::NotStarted => self.memory.may_start(e.mem_mb, nothing_running),
                    Residence::Swapped => self.memory.may_swap_in(e.mem_mb, nothing_running),
                };
                if eligible {
                    return Some((ClassId(c as u8), pos));
                }
            }
        }
        None
    }

    /// The running invocation to preempt or kill first: lowest class, latest arrival.
    fn lowest_running(&self) -> Option<(usize, Entry)> {
        let (at, _) = self
            .running_keys
            .iter()
            .enumerate()
            .min_by_key(|&(_, k)| *k)?;
        Some((at, self.entries[&self.running[at]]))
    }

    fn push_running(&mut self, id: InvocationId, class: ClassId, seq: u64) {
        self.running.push(id);
        self.running_keys.push(victim_key(class, seq));
    }

    fn remove_running(&mut self, at: usize) -> InvocationId {
        self.running_keys.swap_remove(at);
        self.running.swap_remove(at)
    }

    fn run(&mut self, class: ClassId, pos: usize) {
        let id = self.waiting[class.index()]
            .remove(pos)
            .expect("position from best_eligible");
        let e = self.entries.get_mut(&id).expect("waiting entry");
        e.running = true;
        let (seq, mb, residence) = (e.seq, e.mem_mb, e.residence);
        e.residence = Residence::Resident;
        match residence {
            Residence::NotStarted => {
                self.memory.add_resident(class, mb);
                self.actions.push_back(MachineAction::Start(id));
            }
            Residence::Resident => {
                self.memory.unpark(class, seq);
                self.actions.push_back(MachineAction::Resume(id));
            }
            Residence::Swapped => {
                self.memory.swapped_in(class, mb);
                self.actions.push_back(MachineAction::SwapIn { id, mb });
                self.actions.push_back(MachineAction::Resume(id));
            }
        }
        self.push_running(id, class, seq);
    }

    fn preempt(&mut self, running_at: usize) {
        let id = self.remove_running(running_at);
        let e = self.entries.get_mut(&id).expect("running entry");
        e.running = false;
        // It arrived after every running invocation of its class that stays, and before every
        // waiting one (those arrived later, or they would be running): the front keeps order.
        self.waiting[e.class.index()].push_front(id);
        self.memory.park(e.class, e.seq, id);
        self.actions.push_back(MachineAction::Preempt(id));
    }

    /// Swaps out and, as the last resort, kills. Returns whether anything changed.
    fn relieve_memory(&mut self) -> bool {
        let mut changed = false;
        if self.memory.above_high() {
            while self.memory.above_low() {
                let entries = &self.entries;
                let Some(id) = self.memory.swap_victim(|id| entries[&id].mem_mb) else {
                    break;
                };
                self.swap_out(id);
                changed = true;
            }
        }
        while self.memory.over_capacity() {
            // Running work alone overflows: park and swap the lowest running invocation while
            // others keep running and swap has room; kill only when that is impossible.
            if self.running.len() > 1 {
                let (at, victim) = self.lowest_running().expect("more than one running");
                if victim.mem_mb <= self.memory.swap_free_mb() {
                    let id = self.running[at];
                    self.preempt(at);
                    self.swap_out(id);
                    changed = true;
                    continue;
                }
            }
            let Some(id) = self.kill_victim() else { break };
            self.kill(id);
            changed = true;
        }
        changed
    }

    /// Swaps out a parked (or blocked) resident invocation.
    fn swap_out(&mut self, id: InvocationId) {
        let e = self.entries.get_mut(&id).expect("parked entry");
        debug_assert!(!e.running && e.residence == Residence::Resident);
        e.residence = Residence::Swapped;
        let (class, seq, mb) = (e.class, e.seq, e.mem_mb);
        self.memory.unpark(class, seq);
        self.memory.swapped_out(class, mb);
        self.actions.push_back(MachineAction::SwapOut { id, mb });
    }

    /// Lowest class, latest arrival, among invocations holding memory.
    fn kill_victim(&self) -> Option<InvocationId> {
        self.entries
            .iter()
            .filter(|(_, e)| e.residence == Residence::Resident)
            .min_by_key(|(_, e)| (e.class, std::cmp::Reverse(e.seq)))
            .map(|(&id, _)| id)
    }

    fn kill(&mut self, id: InvocationId) {
        let class = self.entries[&id].class;
        self.remove_entry(id);
        self.memory.stats.kills[class.index()] += 1;
        self.actions.push_back(MachineAction::Kill(id));
    }

    fn running_position(&self, id: InvocationId) -> usize {
        self.running
            .iter()
            .position(|&r| r == id)
            .expect("running entry")
    }

    fn remove_waiting(&mut self, id: InvocationId, class: ClassId) {
        let q = &mut self.waiting[class.index()];
        let at = q.iter().position(|&w| w == id).expect("waiting entry");
        q.remove(at);
    }

    /// Frees an invocation's slot, queue place and memory. Returns whether it was here.
    fn remove_entry(&mut self, id: InvocationId) -> bool {
        let Some(e) = self.entries.remove(&id) else {
            return false;
        };
        if !e.blocked {
            self.competing_by_class[e.class.index()] -= 1;
        }
        if e.running {
            let at = self.running_position(id);
            self.remove_running(at);
        } else if !e.blocked {
            self.remove_waiting(id, e.class);
        }
        match e.residence {
            Residence::NotStarted => {}
            Residence::Resident => {
                self.memory.remove_resident(e.class, e.mem_mb);
                if !e.running {
                    self.memory.unpark(e.class, e.seq);
                }
            }
            Residence::Swapped => self.memory.release_swap(e.mem_mb),
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use MachineAction::*;

    fn id(n: u64) -> InvocationId {
        InvocationId(n)
    }

    fn drain(m: &mut Machine) -> Vec<MachineAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    fn unlimited(cores: u32) -> Machine {
        Machine::new(
            MachineConfig {
                cores,
                memory: None,
            },
            4,
        )
    }

    #[test]
    fn higher_class_preempts_lowest_latest_and_it_resumes() {
        let mut m = unlimited(2);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_arrival(id(2), ClassId(0), 100).unwrap();
        assert_eq!(drain(&mut m), vec![Start(id(1)), Start(id(2))]);
        m.handle_arrival(id(3), ClassId(3), 100).unwrap();
        // Both running are batch: the latest-arrived (2) is preempted.
        assert_eq!(drain(&mut m), vec![Preempt(id(2)), Start(id(3))]);
        m.handle_completion(id(3));
        assert_eq!(drain(&mut m), vec![Resume(id(2))]);
    }

    #[test]
    fn fifo_within_a_class_no_preemption_among_equals() {
        let mut m = unlimited(1);
        for n in 1..=3 {
            m.handle_arrival(id(n), ClassId(2), 100).unwrap();
        }
        assert_eq!(drain(&mut m), vec![Start(id(1))]);
        m.handle_completion(id(1));
        assert_eq!(drain(&mut m), vec![Start(id(2))]);
        m.handle_completion(id(2));
        assert_eq!(drain(&mut m), vec![Start(id(3))]);
    }

    #[test]
    fn preempted_one_goes_before_later_arrivals_of_its_class() {
        let mut m = unlimited(1);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_arrival(id(2), ClassId(0), 100).unwrap();
        m.handle_arrival(id(3), ClassId(3), 100).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Start(id(1)), Preempt(id(1)), Start(id(3))]
        );
        m.handle_completion(id(3));
        assert_eq!(drain(&mut m), vec![Resume(id(1))]);
    }

    #[test]
    fn low_class_starves_while_higher_keeps_the_slot_busy() {
        let mut m = unlimited(1);
        m.handle_arrival(id(0), ClassId(0), 100).unwrap();
        let _ = drain(&mut m);
        for n in 1..100 {
            m.handle_arrival(id(n), ClassId(1), 100).unwrap();
            if n > 1 {
                m.handle_completion(id(n - 1));
            }
            assert!(
                !m.is_running(id(0)),
                "batch ran while standard work was waiting"
            );
            let _ = drain(&mut m);
        }
        m.handle_completion(id(99));
        assert_eq!(drain(&mut m), vec![Resume(id(0))]);
    }

    fn limited(cores: u32, capacity_mb: u64, swap_mb: u64) -> Machine {
        let memory = MemoryConfig::new(capacity_mb, swap_mb);
        Machine::new(
            MachineConfig {
                cores,
                memory: Some(memory),
            },
            4,
        )
    }

    #[test]
    fn parked_lowest_class_is_swapped_out_and_back_in_before_it_runs() {
        let mut m = limited(1, 1000, 10_000);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), 600);
        m.handle_arrival(id(2), ClassId(3), 100).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Start(id(1)), Preempt(id(1)), Start(id(2))]
        );
        // 600 + 350 = 950 > 900 (high watermark): the parked batch one goes to swap.
        m.handle_memory(id(2), 350);
        assert_eq!(drain(&mut m), vec![SwapOut { id: id(1), mb: 600 }]);
        assert_eq!((m.used_mb(), m.swap_used_mb()), (350, 600));
        m.handle_completion(id(2));
        assert_eq!(
            drain(&mut m),
            vec![SwapIn { id: id(1), mb: 600 }, Resume(id(1))]
        );
        assert_eq!((m.used_mb(), m.swap_used_mb()), (600, 0));
        assert_eq!(m.memory_stats().swapped_out_mb, vec![600, 0, 0, 0]);
    }

    #[test]
    fn kills_lowest_latest_when_swap_is_exhausted() {
        let mut m = limited(1, 1000, 0);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), 700);
        m.handle_arrival(id(2), ClassId(3), 100).unwrap();
        let _ = drain(&mut m);
        // 700 parked + 400 running > 1000 and no swap: the parked batch one is killed.
        m.handle_memory(id(2), 400);
        assert_eq!(drain(&mut m), vec![Kill(id(1))]);
        assert_eq!(m.functions(), 1);
        assert_eq!(m.used_mb(), 400);
        assert_eq!(m.memory_stats().kills, vec![1, 0, 0, 0]);
    }

    #[test]
    fn running_overflow_parks_and_swaps_the_lowest_before_any_kill() {
        let mut m = limited(2, 1000, 10_000);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_arrival(id(2), ClassId(3), 100).unwrap();
        let _ = drain(&mut m);
        m.handle_memory(id(1), 600);
        let _ = drain(&mut m);
        m.handle_memory(id(2), 500);
        assert_eq!(
            drain(&mut m),
            vec![Preempt(id(1)), SwapOut { id: id(1), mb: 600 }]
        );
        assert_eq!(m.memory_stats().kills, vec![0; 4]);
        // A single invocation bigger than the machine is killed: nothing else can make room.
        m.handle_memory(id(2), 1200);
        assert_eq!(
            drain(&mut m),
            vec![Kill(id(2)), SwapIn { id: id(1), mb: 600 }, Resume(id(1))]
        );
    }

    #[test]
    fn room_for_counts_lower_class_memory_that_could_be_swapped() {
        let mut m = limited(2, 1000, 300);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), 500);
        m.handle_arrival(id(2), ClassId(2), 100).unwrap();
        m.handle_memory(id(2), 400);
        assert_eq!(m.free_mb(), 100);
        assert_eq!(m.room_for(ClassId(0)), 100);
        // Batch's 500 MB could be swapped, but only 300 MB of swap is free.
        assert_eq!(m.room_for(ClassId(3)), 400);
    }

    #[test]
    fn a_second_arrival_of_one_id_is_refused_and_changes_nothing() {
        let mut m = unlimited(1);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        let _ = drain(&mut m);
        assert_eq!(
            m.handle_arrival(id(1), ClassId(3), 100),
            Err(AlreadyPlaced(id(1)))
        );
        assert_eq!(drain(&mut m), vec![]);
        assert_eq!((m.functions(), m.running()), (1, &[id(1)][..]));
    }

    #[test]
    fn blocked_gives_up_its_slot_and_rejoins_in_arrival_order() {
        let mut m = unlimited(1);
        for n in 1..=3 {
            m.handle_arrival(id(n), ClassId(1), 100).unwrap();
        }
        assert_eq!(drain(&mut m), vec![Start(id(1))]);
        m.handle_blocked(id(1));
        assert_eq!(drain(&mut m), vec![Start(id(2))]);
        assert!(m.is_blocked(id(1)));
        assert_eq!((m.functions(), m.used_mb()), (3, 200));
        // Ready again: it does not preempt its own class, but goes ahead of 3, a later arrival.
        m.handle_ready(id(1));
        assert_eq!(drain(&mut m), vec![]);
        m.handle_completion(id(2));
        assert_eq!(drain(&mut m), vec![Resume(id(1))]);
        m.handle_completion(id(1));
        assert_eq!(drain(&mut m), vec![Start(id(3))]);
    }

    #[test]
    fn a_ready_higher_class_preempts_and_repeated_reports_are_ignored() {
        let mut m = unlimited(1);
        m.handle_arrival(id(1), ClassId(3), 100).unwrap();
        m.handle_arrival(id(2), ClassId(0), 100).unwrap();
        assert_eq!(drain(&mut m), vec![Start(id(1))]);
        m.handle_blocked(id(1));
        m.handle_blocked(id(1));
        // Unstarted and unknown invocations cannot block; a non-blocked one cannot be ready.
        m.handle_blocked(id(9));
        m.handle_ready(id(2));
        assert_eq!(drain(&mut m), vec![Start(id(2))]);
        m.handle_ready(id(1));
        m.handle_ready(id(1));
        assert_eq!(drain(&mut m), vec![Preempt(id(2)), Resume(id(1))]);
    }

    #[test]
    fn a_blocked_one_is_swapped_like_a_parked_one_and_back_in_when_it_runs() {
        let mut m = limited(1, 1000, 10_000);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), 600);
        let _ = drain(&mut m);
        m.handle_blocked(id(1));
        m.handle_arrival(id(2), ClassId(3), 100).unwrap();
        assert_eq!(drain(&mut m), vec![Start(id(2))]);
        m.handle_memory(id(2), 350);
        assert_eq!(drain(&mut m), vec![SwapOut { id: id(1), mb: 600 }]);
        // Ready, but 350 + 600 is over the high watermark while 2 runs: it waits.
        m.handle_ready(id(1));
        assert_eq!(drain(&mut m), vec![]);
        m.handle_completion(id(2));
        assert_eq!(
            drain(&mut m),
            vec![SwapIn { id: id(1), mb: 600 }, Resume(id(1))]
        );
    }

    #[test]
    fn ending_a_blocked_invocation_frees_its_memory() {
        let mut m = limited(1, 1000, 10_000);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), 600);
        m.handle_blocked(id(1));
        let _ = drain(&mut m);
        m.handle_completion(id(1));
        assert_eq!((m.functions(), m.used_mb(), m.swap_used_mb()), (0, 0, 0));
    }

    #[test]
    fn unlimited_memory_never_swaps_or_kills() {
        let mut m = unlimited(1);
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        m.handle_memory(id(1), u64::MAX / 4);
        m.handle_arrival(id(2), ClassId(3), 100).unwrap();
        assert_eq!(
            drain(&mut m),
            vec![Start(id(1)), Preempt(id(1)), Start(id(2))]
        );
        assert_eq!(m.room_for(ClassId(0)), u64::MAX);
    }
}
