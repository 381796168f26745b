//! A shard's idle list: machines that announced significant free memory.
//!
//! Inspired by join-idle-queue, but idleness is free memory, not an empty queue (paper 3.2).
//! Each entry holds the machine, its free memory and its number of functions. Placement takes
//! the entry with the fewest functions; ties go to the most free memory, then the lowest id.
//! The list is ordered by that key, so a placement is `O(log n)`.

use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap};

use crate::MachineId;

/// What a machine last told this shard (plus the shard's own placements since).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IdleEntry {
    pub free_mb: u64,
    pub functions: u32,
}

type Key = (u32, Reverse<u64>, MachineId);

#[derive(Debug, Default, Clone)]
pub struct IdleList {
    ordered: BTreeSet<Key>,
    entries: HashMap<MachineId, IdleEntry>,
}

impl IdleList {
    pub fn new() -> Self {
        Self::default()
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
            self.ordered.remove(&key(machine, old));
        }
        self.ordered.insert(key(machine, entry));
        debug_assert_eq!(self.ordered.len(), self.entries.len());
    }

    /// A machine leaves (memory became short). Leaving a list one is not on is a no-op.
    pub fn handle_leave(&mut self, machine: MachineId) {
        if let Some(old) = self.entries.remove(&machine) {
            self.ordered.remove(&key(machine, old));
        }
    }

    /// Takes the machine with the fewest functions that has at least `need_mb` free, and
    /// records the placement in its entry (one more function, `need_mb` less free) until the
    /// machine next reports.
    #[must_use]
    pub fn poll_place(&mut self, need_mb: u64) -> Option<MachineId> {
        let &(_, _, machine) = self
            .ordered
            .iter()
            .find(|(_, Reverse(free), _)| *free >= need_mb)?;
        let old = self.entries[&machine];
        self.handle_upsert(
            machine,
            IdleEntry {
                free_mb: old.free_mb - need_mb,
                functions: old.functions + 1,
            },
        );
        Some(machine)
    }
}

fn key(machine: MachineId, e: IdleEntry) -> Key {
    (e.functions, Reverse(e.free_mb), machine)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(free_mb: u64, functions: u32) -> IdleEntry {
        IdleEntry { free_mb, functions }
    }

    #[test]
    fn fewest_functions_then_most_free() {
        let mut l = IdleList::new();
        l.handle_upsert(MachineId(1), e(1000, 3));
        l.handle_upsert(MachineId(2), e(500, 1));
        l.handle_upsert(MachineId(3), e(900, 1));
        assert_eq!(l.poll_place(100), Some(MachineId(3)));
        assert_eq!(l.get(MachineId(3)), Some(e(800, 2)));
        assert_eq!(l.poll_place(100), Some(MachineId(2)));
        // Now 3 has (800, 2) and 2 has (400, 2): tie on functions, most free wins.
        assert_eq!(l.poll_place(100), Some(MachineId(3)));
    }

    #[test]
    fn skips_machines_without_room_and_updates_replace() {
        let mut l = IdleList::new();
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
}
