//! EDF: one centralized machine with all the cluster's cores, preemptive earliest deadline
//! first. The paper's ideal scheduler with respect to deadlines; an oracle because the
//! deadline depends on the true runtime.

use std::collections::BTreeSet;
use std::collections::VecDeque;

use rustc_hash::FxHashMap;

use crate::machine::MachineAction;
use crate::InvocationId;

/// `deadline = arrival + runtime x max_price / price`: the top class's deadline is its own
/// runtime, lower classes get proportionally more slack.
pub fn deadline_ns(arrival_ns: u64, runtime_ns: u64, price: f64, max_price: f64) -> u64 {
    arrival_ns + (runtime_ns as f64 * max_price / price).round() as u64
}

type Key = (u64, u64, InvocationId);

#[derive(Debug, Clone)]
pub struct EdfMachine {
    cores: usize,
    running: BTreeSet<Key>,
    waiting: BTreeSet<Key>,
    /// Every present invocation's key and whether it has started.
    keys: FxHashMap<InvocationId, (Key, bool)>,
    next_seq: u64,
    actions: VecDeque<MachineAction>,
}

impl EdfMachine {
    pub fn new(cores: u32) -> Self {
        assert!(cores > 0, "a machine needs at least one core");
        Self {
            cores: cores as usize,
            running: BTreeSet::new(),
            waiting: BTreeSet::new(),
            keys: FxHashMap::default(),
            next_seq: 0,
            actions: VecDeque::new(),
        }
    }

    pub fn functions(&self) -> u32 {
        self.keys.len() as u32
    }

    pub fn running_len(&self) -> usize {
        self.running.len()
    }

    pub fn handle_arrival(&mut self, id: InvocationId, deadline_ns: u64) {
        let key = (deadline_ns, self.next_seq, id);
        self.next_seq += 1;
        self.keys.insert(id, (key, false));
        self.waiting.insert(key);
        self.schedule();
    }

    pub fn handle_completion(&mut self, id: InvocationId) {
        let Some((key, _)) = self.keys.remove(&id) else {
            return;
        };
        if !self.running.remove(&key) {
            self.waiting.remove(&key);
        }
        self.schedule();
    }

    #[must_use]
    pub fn poll_action(&mut self) -> Option<MachineAction> {
        self.actions.pop_front()
    }

    fn schedule(&mut self) {
        while let Some(&first) = self.waiting.first() {
            if self.running.len() == self.cores {
                let &last = self.running.last().expect("cores > 0");
                if first >= last {
                    break;
                }
                self.running.remove(&last);
                self.waiting.insert(last);
                self.actions.push_back(MachineAction::Preempt(last.2));
            }
            self.waiting.remove(&first);
            self.running.insert(first);
            let started = &mut self.keys.get_mut(&first.2).expect("present").1;
            let action = if *started {
                MachineAction::Resume(first.2)
            } else {
                MachineAction::Start(first.2)
            };
            *started = true;
            self.actions.push_back(action);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(m: &mut EdfMachine) -> Vec<MachineAction> {
        std::iter::from_fn(|| m.poll_action()).collect()
    }

    #[test]
    fn earlier_deadline_preempts_the_latest() {
        use MachineAction::*;
        let mut m = EdfMachine::new(2);
        m.handle_arrival(InvocationId(1), 100);
        m.handle_arrival(InvocationId(2), 300);
        assert_eq!(
            drain(&mut m),
            vec![Start(InvocationId(1)), Start(InvocationId(2))]
        );
        m.handle_arrival(InvocationId(3), 200);
        assert_eq!(
            drain(&mut m),
            vec![Preempt(InvocationId(2)), Start(InvocationId(3))]
        );
        m.handle_arrival(InvocationId(4), 400);
        assert_eq!(drain(&mut m), vec![]);
        m.handle_completion(InvocationId(1));
        assert_eq!(drain(&mut m), vec![Resume(InvocationId(2))]);
    }

    #[test]
    fn deadline_scales_with_price() {
        assert_eq!(deadline_ns(10, 100, 2.0, 2.0), 110);
        assert_eq!(deadline_ns(10, 100, 0.5, 2.0), 410);
    }
}
