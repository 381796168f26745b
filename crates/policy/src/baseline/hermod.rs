//! Hermod's machine: processor sharing over `cores` cores.
//!
//! With `n` invocations on the machine each progresses at rate `min(1, cores / n)`. The
//! machine keeps a virtual clock `v` (the service every present invocation has received since
//! `v = 0`); an invocation arriving at `v_a` with `work` finishes when `v` reaches `v_a + work`,
//! so the next completion is always the smallest finish tag. Processor sharing is a statement
//! about rates, so this model takes `now_ns` and answers when the next completion is due.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::InvocationId;

/// Virtual-time tolerance (ns) when deciding that a finish tag has been reached, to absorb
/// the rounding of completion times to whole nanoseconds.
const FINISH_SLACK_NS: f64 = 1.0;

#[derive(Debug, Clone)]
pub struct PsMachine {
    cores: f64,
    /// Finish tags in virtual nanoseconds (bit patterns of non-negative f64 order like u64).
    tags: BinaryHeap<Reverse<(u64, InvocationId)>>,
    virtual_ns: f64,
    last_ns: u64,
}

impl PsMachine {
    pub fn new(cores: u32) -> Self {
        assert!(cores > 0, "a machine needs at least one core");
        Self {
            cores: f64::from(cores),
            tags: BinaryHeap::new(),
            virtual_ns: 0.0,
            last_ns: 0,
        }
    }

    /// Invocations on the machine.
    pub fn functions(&self) -> u32 {
        self.tags.len() as u32
    }

    /// Cores in use: `min(n, cores)`.
    pub fn busy_cores(&self) -> f64 {
        (self.tags.len() as f64).min(self.cores)
    }

    fn rate(&self) -> f64 {
        if self.tags.is_empty() {
            0.0
        } else {
            (self.cores / self.tags.len() as f64).min(1.0)
        }
    }

    fn advance(&mut self, now_ns: u64) {
        debug_assert!(now_ns >= self.last_ns, "time went backwards");
        self.virtual_ns += (now_ns - self.last_ns) as f64 * self.rate();
        self.last_ns = now_ns;
    }

    /// An invocation needing `work_ns` of one core arrives.
    pub fn handle_arrival(&mut self, now_ns: u64, id: InvocationId, work_ns: u64) {
        self.advance(now_ns);
        let tag = self.virtual_ns + work_ns as f64;
        self.tags.push(Reverse((tag.to_bits(), id)));
    }

    /// When the next completion is due (rounded up to a whole nanosecond), if any.
    pub fn next_completion_ns(&self) -> Option<u64> {
        let &Reverse((bits, _)) = self.tags.peek()?;
        let remaining = (f64::from_bits(bits) - self.virtual_ns).max(0.0);
        Some(self.last_ns + (remaining / self.rate()).ceil() as u64)
    }

    /// Takes the next invocation whose work is done at `now_ns`, if any. Call until `None`.
    #[must_use]
    pub fn poll_completion(&mut self, now_ns: u64) -> Option<InvocationId> {
        self.advance(now_ns);
        let &Reverse((bits, id)) = self.tags.peek()?;
        if f64::from_bits(bits) <= self.virtual_ns + FINISH_SLACK_NS {
            self.tags.pop();
            Some(id)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    #[test]
    fn shares_one_core_between_two() {
        let mut m = PsMachine::new(1);
        m.handle_arrival(0, InvocationId(1), 10 * MS);
        m.handle_arrival(0, InvocationId(2), 20 * MS);
        // Both at rate 1/2: the 10 ms one is done at 20 ms.
        assert_eq!(m.next_completion_ns(), Some(20 * MS));
        assert_eq!(m.poll_completion(19 * MS), None);
        assert_eq!(m.poll_completion(20 * MS), Some(InvocationId(1)));
        // The other has 10 ms left, alone at rate 1.
        assert_eq!(m.next_completion_ns(), Some(30 * MS));
        assert_eq!(m.poll_completion(30 * MS), Some(InvocationId(2)));
        assert_eq!(m.next_completion_ns(), None);
    }

    #[test]
    fn no_slowdown_while_cores_suffice() {
        let mut m = PsMachine::new(4);
        for i in 0..4 {
            m.handle_arrival(0, InvocationId(i), 5 * MS);
        }
        assert_eq!(m.busy_cores(), 4.0);
        assert_eq!(m.next_completion_ns(), Some(5 * MS));
        m.handle_arrival(MS, InvocationId(9), 5 * MS);
        // From 1 ms, 5 jobs share 4 cores (rate 0.8): 4 ms of work left takes 5 ms.
        assert_eq!(m.next_completion_ns(), Some(6 * MS));
    }
}
