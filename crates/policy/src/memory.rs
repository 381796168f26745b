//! The memory manager's ledger and rules: price-class-based swapping, and killing as the last
//! resort (paper 3.2, "Dispatcher"; `DESIGN.md`, "Memory manager").
//!
//! Invocations declare no memory size. Each starts small and grows; the driver reports what it
//! measures (`Machine::handle_memory`). The rules, applied by [`crate::machine::Machine`]:
//!
//! - When used memory passes the high watermark, parked invocations are swapped out, lowest
//!   class first and within a class latest arrival first, until usage is under the low
//!   watermark (or nothing parked is left, or swap space is full). Parked invocations are the
//!   right victims: strict priority means they will not run until higher classes are done.
//! - A swapped-out invocation is swapped back in just before it runs, when memory allows: its
//!   memory must fit under the high watermark, or nothing else may be running on the machine
//!   (so a big invocation cannot be locked out forever). An unstarted invocation starts when
//!   its start memory fits under capacity, or when nothing else runs.
//! - When the running invocations alone overflow physical capacity, the lowest-class,
//!   latest-arrived running one is preempted and swapped out (if another keeps running and
//!   swap has room): growth is not the invocation's fault, and a kill wastes its work.
//! - Kill is the last resort, when used memory exceeds physical capacity and nothing more can
//!   be swapped (swap space exhausted, or a lone invocation bigger than the machine): lowest
//!   class, latest arrival first, among the invocations holding memory. The driver requeues a killed
//!   invocation (bounded) or fails it with a clear error.

/// Memory an invocation is assumed to hold when it starts, MB, unless its platform knows
/// better: what placement checks for room, and what a machine charges an invocation until it
/// reports its real use. Small, because invocations declare no size and most start small
/// (a wasm component's instance is a few pages); the simulator's workloads set their own
/// (`workload.start_mb`, the paper's 100 MB).
pub const START_MB_DEFAULT: u64 = 2;

/// Why a [`MemoryConfig`] is refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum MemoryConfigError {
    #[error("memory capacity_mb must be positive")]
    NoCapacity,
    #[error("watermarks must satisfy 0 < low_watermark <= high_watermark <= 1, got low {low} and high {high}")]
    Watermarks { low: f64, high: f64 },
}

use std::collections::BTreeMap;

use crate::class::ClassId;

/// A machine's memory limits. Absent (`None` in `MachineConfig`) means unlimited memory.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MemoryConfig {
    pub capacity_mb: u64,
    pub swap_mb: u64,
    /// Start swapping parked invocations out above this fraction of capacity.
    pub high_watermark: f64,
    /// Swap out until usage is at or below this fraction of capacity.
    pub low_watermark: f64,
}

impl MemoryConfig {
    pub fn new(capacity_mb: u64, swap_mb: u64) -> Self {
        Self {
            capacity_mb,
            swap_mb,
            high_watermark: 0.9,
            low_watermark: 0.8,
        }
    }

    /// Checks `0 < low <= high <= 1` and a non-zero capacity; the error names the field.
    pub fn validate(&self) -> Result<(), MemoryConfigError> {
        if self.capacity_mb == 0 {
            return Err(MemoryConfigError::NoCapacity);
        }
        let (low, high) = (self.low_watermark, self.high_watermark);
        if !(low > 0.0 && low <= high && high <= 1.0) {
            return Err(MemoryConfigError::Watermarks { low, high });
        }
        Ok(())
    }

    fn high_mb(&self) -> u64 {
        (self.capacity_mb as f64 * self.high_watermark) as u64
    }

    fn low_mb(&self) -> u64 {
        (self.capacity_mb as f64 * self.low_watermark) as u64
    }
}

/// Swap and kill counts by class (index = `ClassId`), for the evaluation and for operators.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemoryStats {
    pub swap_outs: Vec<u64>,
    pub swapped_out_mb: Vec<u64>,
    pub swap_ins: Vec<u64>,
    pub kills: Vec<u64>,
}

impl MemoryStats {
    fn new(classes: usize) -> Self {
        Self {
            swap_outs: vec![0; classes],
            swapped_out_mb: vec![0; classes],
            swap_ins: vec![0; classes],
            kills: vec![0; classes],
        }
    }
}

/// Where each megabyte of a machine is: resident (by class), swapped, and which parked
/// invocations are resident (the swap candidates, by class and arrival).
#[derive(Debug, Clone)]
pub struct MemoryLedger {
    pub(crate) config: Option<MemoryConfig>,
    used_mb: u64,
    swap_used_mb: u64,
    resident_by_class: Vec<u64>,
    /// Per class: parked resident invocations by arrival sequence, as their machine's slots.
    parked: Vec<BTreeMap<u64, u32>>,
    pub(crate) stats: MemoryStats,
}

impl MemoryLedger {
    pub fn new(config: Option<MemoryConfig>, classes: usize) -> Self {
        Self {
            config,
            used_mb: 0,
            swap_used_mb: 0,
            resident_by_class: vec![0; classes],
            parked: vec![BTreeMap::new(); classes],
            stats: MemoryStats::new(classes),
        }
    }

    pub fn used_mb(&self) -> u64 {
        self.used_mb
    }

    pub fn swap_used_mb(&self) -> u64 {
        self.swap_used_mb
    }

    /// Free memory; `u64::MAX` when unlimited.
    pub fn free_mb(&self) -> u64 {
        match self.config {
            None => u64::MAX,
            Some(c) => c.capacity_mb.saturating_sub(self.used_mb),
        }
    }

    /// Memory an invocation of `class` could get: free memory plus the resident memory of
    /// lower classes that could be swapped out (as far as swap space allows).
    pub fn room_for(&self, class: ClassId) -> u64 {
        let Some(c) = self.config else {
            return u64::MAX;
        };
        let lower: u64 = self.resident_by_class[..class.index()].iter().sum();
        let swap_free = c.swap_mb.saturating_sub(self.swap_used_mb);
        self.free_mb().saturating_add(lower.min(swap_free))
    }

    pub(crate) fn add_resident(&mut self, class: ClassId, mb: u64) {
        self.used_mb += mb;
        self.resident_by_class[class.index()] += mb;
    }

    pub(crate) fn remove_resident(&mut self, class: ClassId, mb: u64) {
        debug_assert!(self.used_mb >= mb && self.resident_by_class[class.index()] >= mb);
        self.used_mb -= mb;
        self.resident_by_class[class.index()] -= mb;
    }

    pub(crate) fn park(&mut self, class: ClassId, seq: u64, slot: u32) {
        self.parked[class.index()].insert(seq, slot);
    }

    pub(crate) fn unpark(&mut self, class: ClassId, seq: u64) {
        self.parked[class.index()].remove(&seq);
    }

    pub(crate) fn swapped_out(&mut self, class: ClassId, mb: u64) {
        self.remove_resident(class, mb);
        self.swap_used_mb += mb;
        self.stats.swap_outs[class.index()] += 1;
        self.stats.swapped_out_mb[class.index()] += mb;
    }

    pub(crate) fn swapped_in(&mut self, class: ClassId, mb: u64) {
        self.swap_used_mb -= mb;
        self.add_resident(class, mb);
        self.stats.swap_ins[class.index()] += 1;
    }

    pub(crate) fn release_swap(&mut self, mb: u64) {
        self.swap_used_mb -= mb;
    }

    pub(crate) fn swap_free_mb(&self) -> u64 {
        self.config
            .map_or(0, |c| c.swap_mb.saturating_sub(self.swap_used_mb))
    }

    /// Whether a swapped-out invocation of `mb` may come back in now.
    pub(crate) fn may_swap_in(&self, mb: u64, nothing_running: bool) -> bool {
        match self.config {
            None => true,
            Some(c) => nothing_running || self.used_mb + mb <= c.high_mb(),
        }
    }

    /// Whether an unstarted invocation may start with `mb`: it must fit in physical memory,
    /// so that starting work never forces a kill (the swap rules make room for it first).
    pub(crate) fn may_start(&self, mb: u64, nothing_running: bool) -> bool {
        match self.config {
            None => true,
            Some(c) => nothing_running || self.used_mb + mb <= c.capacity_mb,
        }
    }

    /// Whether usage is above the high watermark (swapping should start).
    pub(crate) fn above_high(&self) -> bool {
        self.config.is_some_and(|c| self.used_mb > c.high_mb())
    }

    /// Whether usage is above the low watermark (swapping, once started, goes on).
    pub(crate) fn above_low(&self) -> bool {
        self.config.is_some_and(|c| self.used_mb > c.low_mb())
    }

    /// Whether usage exceeds physical capacity (only a kill can fix what swapping could not).
    pub(crate) fn over_capacity(&self) -> bool {
        self.config.is_some_and(|c| self.used_mb > c.capacity_mb)
    }

    /// The next parked invocation to swap out: lowest class, latest arrival, whose memory fits
    /// in the remaining swap space, as its machine slot. `mem_of` gives a slot's resident
    /// memory.
    pub(crate) fn swap_victim(&self, mem_of: impl Fn(u32) -> u64) -> Option<u32> {
        let c = self.config?;
        let swap_free = c.swap_mb.saturating_sub(self.swap_used_mb);
        self.parked
            .iter()
            .flat_map(|by_seq| by_seq.values().rev())
            .copied()
            .find(|&slot| mem_of(slot) <= swap_free)
    }

    pub fn stats(&self) -> &MemoryStats {
        &self.stats
    }
}
