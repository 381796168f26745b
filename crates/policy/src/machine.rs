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
    id: InvocationId,
    class: ClassId,
    /// Arrival order at this machine: FIFO within a class, latest-first for victims.
    seq: u64,
    mem_mb: u64,
    /// The slot holds an invocation (a free slot keeps its last one's fields).
    live: bool,
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

/// Where a machine keeps one invocation: returned by [`Machine::handle_arrival_at`], valid
/// until that invocation ends (completed, or killed: its `Kill` action). A driver that keeps
/// it can name the invocation without the machine looking its id up.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MachineSlot(pub u32);

/// Orders victims: the smallest key is the lowest class and, within it, the latest arrival.
fn victim_key(class: ClassId, seq: u64) -> u64 {
    debug_assert!(seq < 1 << 56, "arrival sequence numbers fit in 56 bits");
    (u64::from(class.0) << 56) | ((1 << 56) - 1 - seq)
}

/// The machine scheduler (see the module docs).
///
/// Invocations live in a dense table of slots (reused once their invocation ends); queues
/// and the running set hold slots. The id -> slot index is a hash map, kept unless the driver
/// holds the slots itself ([`Machine::with_driver_slots`]): on a simulated 2,000 x 64 cluster
/// that map's insert and remove, cold in cache at every event, were 29% of the run
/// (docs/benchmarks.md, "Issue 20").
///
/// Calling order: `handle_arrival` (or `handle_arrival_at`), then `poll_action` until `None`;
/// the same after every other `handle_*`.
#[derive(Debug, Clone)]
pub struct Machine {
    cores: usize,
    slots: Vec<Entry>,
    /// Slots whose invocation ended, reused before the table grows.
    free: Vec<u32>,
    /// Invocations on the machine: live slots.
    live: u32,
    /// Id -> slot, unless the driver holds slots (`None`).
    index: Option<FxHashMap<InvocationId, u32>>,
    /// Per class, waiting invocations' slots in run order (preempted ones go back to the
    /// front).
    waiting: Vec<VecDeque<u32>>,
    running: Vec<InvocationId>,
    /// The same running invocations' slots and `victim_key`s, in the same order: the victim
    /// search scans these integers instead of looking every running entry up.
    running_slots: Vec<MachineSlot>,
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
            slots: Vec::new(),
            free: Vec::new(),
            live: 0,
            index: Some(FxHashMap::default()),
            waiting: vec![VecDeque::new(); classes],
            running: Vec::with_capacity(config.cores as usize),
            running_slots: Vec::with_capacity(config.cores as usize),
            running_keys: Vec::with_capacity(config.cores as usize),
            memory: MemoryLedger::new(config.memory, classes),
            competing_by_class: vec![0; classes],
            next_seq: 0,
            actions: VecDeque::new(),
        }
    }

    /// A machine whose driver names its invocations by the [`MachineSlot`]s
    /// [`Machine::handle_arrival_at`] returns (the `*_at` methods) and never places an id
    /// twice: no id index is kept. The methods taking an [`InvocationId`] still work, by a
    /// scan of the machine's invocations (for tests and rare calls).
    pub fn with_driver_slots(config: MachineConfig, classes: usize) -> Self {
        Self {
            index: None,
            ..Self::new(config, classes)
        }
    }

    /// Invocations on this machine (running, parked, blocked on I/O, or not started).
    pub fn functions(&self) -> u32 {
        self.live
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

    /// The running invocations' slots, in the order of [`Machine::running`].
    pub fn running_slots(&self) -> &[MachineSlot] {
        &self.running_slots
    }

    /// The invocation in a live slot.
    pub fn id_at(&self, slot: MachineSlot) -> InvocationId {
        self.slots[slot.0 as usize].id
    }

    /// The slot of an invocation on this machine.
    fn slot_of(&self, id: InvocationId) -> Option<u32> {
        match &self.index {
            Some(index) => index.get(&id).copied(),
            None => self
                .slots
                .iter()
                .position(|e| e.live && e.id == id)
                .map(|s| s as u32),
        }
    }

    fn live_slot(&self, slot: MachineSlot) -> Option<&Entry> {
        self.slots.get(slot.0 as usize).filter(|e| e.live)
    }

    pub fn is_running(&self, id: InvocationId) -> bool {
        self.slot_of(id)
            .is_some_and(|s| self.is_running_at(MachineSlot(s)))
    }

    pub fn is_running_at(&self, slot: MachineSlot) -> bool {
        self.live_slot(slot).is_some_and(|e| e.running)
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
        if self.index.is_none() && self.slot_of(id).is_some() {
            return Err(AlreadyPlaced(id));
        }
        self.handle_arrival_at(id, class, start_mb).map(|_| ())
    }

    /// [`Machine::handle_arrival`], returning the slot the machine keeps the invocation in.
    /// Without an id index ([`Machine::with_driver_slots`]) the driver must not place an id
    /// twice (checked only in debug builds).
    pub fn handle_arrival_at(
        &mut self,
        id: InvocationId,
        class: ClassId,
        start_mb: u64,
    ) -> Result<MachineSlot, AlreadyPlaced> {
        let slot = match self.free.last() {
            Some(&s) => s,
            None => self.slots.len() as u32,
        };
        match &mut self.index {
            // One hash lookup for both the check and the insertion.
            Some(index) => match index.entry(id) {
                std::collections::hash_map::Entry::Occupied(_) => return Err(AlreadyPlaced(id)),
                std::collections::hash_map::Entry::Vacant(v) => {
                    v.insert(slot);
                }
            },
            None => debug_assert!(
                !self.slots.iter().any(|e| e.live && e.id == id),
                "a driver holding slots placed {id:?} twice"
            ),
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        let entry = Entry {
            id,
            class,
            seq,
            mem_mb: start_mb,
            live: true,
            running: false,
            blocked: false,
            residence: Residence::NotStarted,
        };
        if self.free.pop().is_some() {
            self.slots[slot as usize] = entry;
        } else {
            self.slots.push(entry);
        }
        self.live += 1;
        self.waiting[class.index()].push_back(slot);
        self.competing_by_class[class.index()] += 1;
        self.settle();
        Ok(MachineSlot(slot))
    }

    /// A started invocation (running, or parked by a preemption that crossed its last run)
    /// now waits on I/O: it gives up its slot or queue place and keeps its memory. Ignored
    /// for unknown, unstarted and already blocked invocations.
    pub fn handle_blocked(&mut self, id: InvocationId) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        let e = &mut self.slots[slot as usize];
        if e.blocked || e.residence == Residence::NotStarted {
            return;
        }
        e.blocked = true;
        let e = *e;
        self.competing_by_class[e.class.index()] -= 1;
        if e.running {
            let at = self.running_position(slot);
            self.remove_running(at);
            self.slots[slot as usize].running = false;
            self.memory.park(e.class, e.seq, slot);
        } else {
            self.remove_waiting(slot, e.class);
        }
        self.settle();
    }

    /// A blocked invocation's I/O completed: it rejoins its class's queue in arrival order
    /// (see the module docs) and runs when the rules let it. Ignored unless it is blocked.
    pub fn handle_ready(&mut self, id: InvocationId) {
        let Some(slot) = self.slot_of(id) else {
            return;
        };
        let e = &mut self.slots[slot as usize];
        if !e.blocked {
            return;
        }
        e.blocked = false;
        let (class, seq) = (e.class, e.seq);
        self.competing_by_class[class.index()] += 1;
        let slots = &self.slots;
        let q = &mut self.waiting[class.index()];
        let at = q.partition_point(|&w| slots[w as usize].seq < seq);
        q.insert(at, slot);
        self.settle();
    }

    /// Whether the invocation is blocked on I/O.
    pub fn is_blocked(&self, id: InvocationId) -> bool {
        self.slot_of(id)
            .is_some_and(|s| self.slots[s as usize].blocked)
    }

    /// An invocation ended (completed, failed, timed out or cancelled) in whatever state it
    /// was; its slot and memory are freed. Unknown ids are ignored (it may have been killed).
    pub fn handle_completion(&mut self, id: InvocationId) {
        if let Some(slot) = self.slot_of(id) {
            self.handle_completion_at(MachineSlot(slot));
        }
    }

    /// [`Machine::handle_completion`] of the invocation in `slot`; a free slot is ignored.
    pub fn handle_completion_at(&mut self, slot: MachineSlot) {
        if self.remove_entry(slot.0) {
            self.settle();
        }
    }

    /// The driver measured a running or parked resident invocation's memory at `mb`.
    /// Reports for swapped-out, unstarted or unknown invocations are ignored.
    pub fn handle_memory(&mut self, id: InvocationId, mb: u64) {
        if let Some(slot) = self.slot_of(id) {
            self.handle_memory_at(MachineSlot(slot), mb);
        }
    }

    /// [`Machine::handle_memory`] of the invocation in `slot`; a free slot is ignored.
    pub fn handle_memory_at(&mut self, slot: MachineSlot, mb: u64) {
        let Some(e) = self.slots.get_mut(slot.0 as usize).filter(|e| e.live) else {
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
            // must be found, or a lower class would run in its place.
            for (pos, &slot) in q.iter().enumerate() {
                let e = &self.slots[slot as usize];
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
        Some((at, self.slots[self.running_slots[at].0 as usize]))
    }

    fn push_running(&mut self, slot: u32) {
        let e = &self.slots[slot as usize];
        self.running.push(e.id);
        self.running_slots.push(MachineSlot(slot));
        self.running_keys.push(victim_key(e.class, e.seq));
    }

    /// Removes the `at`-th running invocation from the running set; returns its slot.
    fn remove_running(&mut self, at: usize) -> u32 {
        self.running_keys.swap_remove(at);
        self.running.swap_remove(at);
        self.running_slots.swap_remove(at).0
    }

    fn run(&mut self, class: ClassId, pos: usize) {
        let slot = self.waiting[class.index()]
            .remove(pos)
            .expect("position from best_eligible");
        let e = &mut self.slots[slot as usize];
        e.running = true;
        let (id, seq, mb, residence) = (e.id, e.seq, e.mem_mb, e.residence);
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
        self.push_running(slot);
    }

    fn preempt(&mut self, running_at: usize) {
        let slot = self.remove_running(running_at);
        let e = &mut self.slots[slot as usize];
        e.running = false;
        let (id, class, seq) = (e.id, e.class, e.seq);
        // It arrived after every running invocation of its class that stays, and before every
        // waiting one (those arrived later, or they would be running): the front keeps order.
        self.waiting[class.index()].push_front(slot);
        self.memory.park(class, seq, slot);
        self.actions.push_back(MachineAction::Preempt(id));
    }

    /// Swaps out and, as the last resort, kills. Returns whether anything changed.
    fn relieve_memory(&mut self) -> bool {
        let mut changed = false;
        if self.memory.above_high() {
            while self.memory.above_low() {
                let slots = &self.slots;
                let Some(slot) = self.memory.swap_victim(|s| slots[s as usize].mem_mb) else {
                    break;
                };
                self.swap_out(slot);
                changed = true;
            }
        }
        while self.memory.over_capacity() {
            // Running work alone overflows: park and swap the lowest running invocation while
            // others keep running and swap has room; kill only when that is impossible.
            if self.running.len() > 1 {
                let (at, victim) = self.lowest_running().expect("more than one running");
                if victim.mem_mb <= self.memory.swap_free_mb() {
                    let slot = self.running_slots[at].0;
                    self.preempt(at);
                    self.swap_out(slot);
                    changed = true;
                    continue;
                }
            }
            let Some(slot) = self.kill_victim() else {
                break;
            };
            self.kill(slot);
            changed = true;
        }
        changed
    }

    /// Swaps out a parked (or blocked) resident invocation.
    fn swap_out(&mut self, slot: u32) {
        let e = &mut self.slots[slot as usize];
        debug_assert!(e.live && !e.running && e.residence == Residence::Resident);
        e.residence = Residence::Swapped;
        let (id, class, seq, mb) = (e.id, e.class, e.seq, e.mem_mb);
        self.memory.unpark(class, seq);
        self.memory.swapped_out(class, mb);
        self.actions.push_back(MachineAction::SwapOut { id, mb });
    }

    /// Lowest class, latest arrival, among invocations holding memory.
    fn kill_victim(&self) -> Option<u32> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, e)| e.live && e.residence == Residence::Resident)
            .min_by_key(|(_, e)| (e.class, std::cmp::Reverse(e.seq)))
            .map(|(s, _)| s as u32)
    }

    fn kill(&mut self, slot: u32) {
        let Entry { id, class, .. } = self.slots[slot as usize];
        self.remove_entry(slot);
        self.memory.stats.kills[class.index()] += 1;
        self.actions.push_back(MachineAction::Kill(id));
    }

    fn running_position(&self, slot: u32) -> usize {
        self.running_slots
            .iter()
            .position(|&r| r.0 == slot)
            .expect("running entry")
    }

    fn remove_waiting(&mut self, slot: u32, class: ClassId) {
        let q = &mut self.waiting[class.index()];
        let at = q.iter().position(|&w| w == slot).expect("waiting entry");
        q.remove(at);
    }

    /// Frees an invocation's slot, queue place and memory. Returns whether the slot held one.
    fn remove_entry(&mut self, slot: u32) -> bool {
        let Some(e) = self.slots.get_mut(slot as usize).filter(|e| e.live) else {
            return false;
        };
        e.live = false;
        let e = *e;
        if let Some(index) = &mut self.index {
            index.remove(&e.id);
        }
        self.free.push(slot);
        self.live -= 1;
        if !e.blocked {
            self.competing_by_class[e.class.index()] -= 1;
        }
        if e.running {
            let at = self.running_position(slot);
            self.remove_running(at);
        } else if !e.blocked {
            self.remove_waiting(slot, e.class);
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

    /// A machine whose driver holds slots decides exactly as one that indexes ids, over
    /// random arrivals, completions, memory reports, blocking and kills (4 GB, little swap),
    /// and its slots name the same invocations.
    #[test]
    fn driver_slots_decide_exactly_as_the_id_index() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(20);
        for round in 0..50 {
            let config = MachineConfig {
                cores: rng.random_range(1..5),
                memory: (round % 2 == 0).then(|| MemoryConfig::new(4000, 3000)),
            };
            let mut indexed = Machine::new(config, 4);
            let mut slotted = Machine::with_driver_slots(config, 4);
            let mut here: Vec<(InvocationId, MachineSlot)> = Vec::new();
            for n in 0..400u64 {
                match rng.random_range(0..10) {
                    0..4 => {
                        let class = ClassId(rng.random_range(0..4));
                        indexed.handle_arrival(id(n), class, 100).unwrap();
                        let slot = slotted.handle_arrival_at(id(n), class, 100).unwrap();
                        here.push((id(n), slot));
                    }
                    4..7 if !here.is_empty() => {
                        let (i, slot) = here.swap_remove(rng.random_range(0..here.len()));
                        indexed.handle_completion(i);
                        slotted.handle_completion_at(slot);
                    }
                    7 if !here.is_empty() => {
                        let (i, slot) = here[rng.random_range(0..here.len())];
                        let mb = rng.random_range(50..2500);
                        indexed.handle_memory(i, mb);
                        slotted.handle_memory_at(slot, mb);
                    }
                    8 if !here.is_empty() => {
                        let (i, _) = here[rng.random_range(0..here.len())];
                        indexed.handle_blocked(i);
                        slotted.handle_blocked(i);
                    }
                    _ if !here.is_empty() => {
                        let (i, _) = here[rng.random_range(0..here.len())];
                        indexed.handle_ready(i);
                        slotted.handle_ready(i);
                    }
                    _ => {}
                }
                let (a, b) = (drain(&mut indexed), drain(&mut slotted));
                assert_eq!(a, b, "round {round}, step {n}");
                // Killed invocations leave the machine: forget their slots.
                here.retain(|(i, _)| !a.contains(&Kill(*i)));
                for &(i, slot) in &here {
                    assert_eq!(slotted.id_at(slot), i);
                    assert_eq!(slotted.is_running_at(slot), indexed.is_running(i));
                }
                assert_eq!(indexed.running(), slotted.running());
                assert_eq!(indexed.functions(), slotted.functions());
                assert_eq!(indexed.used_mb(), slotted.used_mb());
            }
        }
    }

    #[test]
    fn a_driver_holding_slots_still_gets_duplicate_ids_refused_by_id() {
        let mut m = Machine::with_driver_slots(
            MachineConfig {
                cores: 1,
                memory: None,
            },
            4,
        );
        m.handle_arrival(id(1), ClassId(0), 100).unwrap();
        assert_eq!(
            m.handle_arrival(id(1), ClassId(0), 100),
            Err(AlreadyPlaced(id(1)))
        );
        assert_eq!(drain(&mut m), vec![Start(id(1))]);
        m.handle_completion(id(1));
        assert_eq!(m.functions(), 0);
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
