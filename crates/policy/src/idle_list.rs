//! A shard's idle list: machines that announced significant free memory.
//!
//! Inspired by join-idle-queue, but idleness is free memory, not an empty queue (paper 3.2).
//! Each entry holds the machine, its free memory, its number of functions and its idle cores.
//! Placement takes the entry with the fewest functions; ties go to the most free memory, then
//! the lowest id. With `need_core` (the class-aware rule,
//! [`crate::placement::PlacementRule`]) only entries with an idle core qualify: the list then
//! holds machines where an invocation of any class starts at once, as join-idle-queue's does.
//! The list is ordered by that key (entries without an idle core last), so a placement scans
//! only past entries without room.
//!
//! Over a network a machine's messages carry a sequence number ([`IdleList::handle_report`]):
//! one that arrives after a later one (delayed, or sent again) is ignored, so the list never
//! goes back to an older view. The numbers are per machine and start again when the shard
//! forgets the machine ([`IdleList::forget`]: it registered anew). The simulator delivers in
//! order and uses [`IdleList::handle_upsert`] and [`IdleList::handle_leave`] directly.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::MachineId;

/// What a machine last told this shard (plus the shard's own placements since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleEntry {
    pub free_mb: u64,
    pub functions: u32,
    /// Cores no invocation holds or waits for (`Machine::idle_cores`).
    pub idle_cores: u32,
}

/// (needs a core and has none, functions, most free first, id).
type Key = (bool, u32, Reverse<u64>, MachineId);

#[derive(Debug, Default, Clone)]
pub struct IdleList {
    ordered: BTreeSet<Key>,
    entries: HashMap<MachineId, IdleEntry>,
    /// The sequence number of each machine's last report taken (kept after it leaves).
    last_seq: HashMap<MachineId, u64>,
    /// Only entries with an idle core qualify for a placement.
    need_core: bool,
}

impl IdleList {
    /// An empty list; with `need_core` a placement needs an idle core (the class-aware rule).
    pub fn new(need_core: bool) -> Self {
        Self {
            need_core,
            ..Self::default()
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn get(&self, machine: MachineId) -> Option<IdleEntry> {
        self.entries.get(&machine).copied()
    }

    /// A machine joins, or updates its entry.
    pub fn handle_upsert(&mut self, machine: MachineId, entry: IdleEntry) {
        if let Some(old) = self.entries.insert(machine, entry) {
            self.ordered.remove(&self.key(machine, old));
        }
        self.ordered.insert(self.key(machine, entry));
        debug_assert_eq!(self.ordered.len(), self.entries.len());
    }

    /// A machine leaves (memory became short). Leaving a list one is not on is a no-op.
    pub fn handle_leave(&mut self, machine: MachineId) {
        if let Some(old) = self.entries.remove(&machine) {
            self.ordered.remove(&self.key(machine, old));
        }
    }

    /// A machine's report numbered `seq`: its entry (it joins or updates), or `None` (it
    /// leaves). Taken only if `seq` is above that of every report taken from the machine
    /// since the shard last forgot it; whether it was.
    pub fn handle_report(
        &mut self,
        machine: MachineId,
        seq: u64,
        entry: Option<IdleEntry>,
    ) -> bool {
        let last = self.last_seq.entry(machine).or_insert(0);
        if seq <= *last {
            return false;
        }
        *last = seq;
        match entry {
            Some(entry) => self.handle_upsert(machine, entry),
            None => self.handle_leave(machine),
        }
        true
    }

    /// Forgets `machine`: its entry and its sequence numbers (it registered anew, maybe as a
    /// restarted process numbering from the start).
    pub fn forget(&mut self, machine: MachineId) {
        self.handle_leave(machine);
        self.last_seq.remove(&machine);
    }

    /// Takes the machine with the fewest functions that has at least `need_mb` free (and, if
    /// the list needs one, an idle core), and records the placement in its entry (one more
    /// function, one idle core and `need_mb` less) until the machine next reports.
    #[must_use]
    pub fn poll_place(&mut self, need_mb: u64) -> Option<MachineId> {
        let &(_, _, _, machine) = self
            .ordered
            .iter()
            .take_while(|(no_core, ..)| !*no_core)
            .find(|(_, _, Reverse(free), _)| *free >= need_mb)?;
        let old = self.entries[&machine];
        self.handle_upsert(
            machine,
            IdleEntry {
                free_mb: old.free_mb - need_mb,
                functions: old.functions + 1,
                idle_cores: old.idle_cores.saturating_sub(1),
            },
        );
        Some(machine)
    }

    fn key(&self, machine: MachineId, e: IdleEntry) -> Key {
        let no_core = self.need_core && e.idle_cores == 0;
        (no_core, e.functions, Reverse(e.free_mb), machine)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(free_mb: u64, functions: u32) -> IdleEntry {
        IdleEntry {
            free_mb,
            functions,
            idle_cores: 8u32.saturating_sub(functions),
        }
    }

    #[test]
    fn fewest_functions_then_most_free() {
        let mut l = IdleList::new(false);
        l.handle_upsert(MachineId(1), e(1000, 3));
        l.handle_upsert(MachineId(2), e(500, 1));
        l.handle_upsert(MachineId(3), e(900, 1));
        assert_eq!(l.poll_place(100), Some(MachineId(3)));
        assert_eq!(l.get(MachineId(3)), Some(e(800, 2)));
        assert_eq!(l.get(MachineId(3)).map(|e| e.idle_cores), Some(6));
        assert_eq!(l.poll_place(100), Some(MachineId(2)));
        // Now 3 has (800, 2) and 2 has (400, 2): tie on functions, most free wins.
        assert_eq!(l.poll_place(100), Some(MachineId(3)));
    }

    #[test]
    fn skips_machines_without_room_and_updates_replace() {
        let mut l = IdleList::new(false);
        l.handle_upsert(MachineId(1), e(50, 0));
        l.handle_upsert(MachineId(2), e(5000, 4));
        assert_eq!(l.poll_place(100), Some(MachineId(2)));
        l.handle_upsert(MachineId(1), e(200, 0));
        assert_eq!(l.len(), 2);
        assert_eq!(l.poll_place(100), Some(MachineId(1)));
        l.handle_leave(MachineId(1));
        l.handle_leave(MachineId(1));
        l.handle_leave(MachineId(2));
        assert!(l.is_empty());
        assert_eq!(l.poll_place(1), None);
    }

    #[test]
    fn a_report_older_than_one_taken_is_ignored_until_the_machine_is_forgotten() {
        let mut l = IdleList::new(false);
        let m = MachineId(1);
        assert!(l.handle_report(m, 2, Some(e(500, 1))));
        // Report 1 arrives late: the list keeps report 2's view.
        assert!(!l.handle_report(m, 1, Some(e(900, 0))));
        assert_eq!(l.get(m), Some(e(500, 1)));
        // A late join after a leave does not bring the machine back.
        assert!(l.handle_report(m, 4, None));
        assert!(!l.handle_report(m, 3, Some(e(900, 0))));
        assert_eq!(l.get(m), None);
        // A restarted machine numbers from 1 again once the shard forgot it.
        assert!(!l.handle_report(m, 1, Some(e(700, 0))));
        l.forget(m);
        assert!(l.handle_report(m, 1, Some(e(700, 0))));
        assert_eq!(l.get(m), Some(e(700, 0)));
    }

    #[test]
    fn with_need_core_only_machines_with_an_idle_core_qualify() {
        let mut paper = IdleList::new(false);
        let mut l = IdleList::new(true);
        let entry = |free_mb, functions, idle_cores| IdleEntry {
            free_mb,
            functions,
            idle_cores,
        };
        // Machine 1 has the fewest functions, but they fill its one core.
        for list in [&mut paper, &mut l] {
            list.handle_upsert(MachineId(1), entry(5000, 1, 0));
            list.handle_upsert(MachineId(2), entry(5000, 3, 1));
            list.handle_upsert(MachineId(3), entry(50, 2, 2));
        }
        assert_eq!(paper.poll_place(100), Some(MachineId(1)));
        assert_eq!(l.poll_place(100), Some(MachineId(2)));
        assert_eq!(l.get(MachineId(2)), Some(entry(4900, 4, 0)));
        // Machine 3 has cores but no room; 2's only idle core is now taken.
        assert_eq!(l.poll_place(100), None);
        assert_eq!(l.poll_place(10), Some(MachineId(3)));
    }
}
