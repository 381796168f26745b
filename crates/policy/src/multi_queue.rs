//! A scheduler shard's multi-queue: one FIFO per price class, and the rule that picks which
//! queue's head is placed next.
//!
//! The paper compares "the ratio of price class to time spent in the queue" of the heads; its
//! stated intent is that high classes wait less while low classes still get placed once they
//! have waited long enough. `DESIGN.md` settles the form: the score is `price x time waited`
//! ([`head_score`]) and the largest score wins, ties to the higher class. A head of class `a`
//! beats a head of class `b` that has waited `w_b` once it has waited `w_b x price_b / price_a`:
//! a class with twice the price waits half as long, and any head's score grows without bound,
//! so nothing waits forever behind a stream of higher-class arrivals.

use std::collections::VecDeque;

use crate::class::{ClassId, ClassSet};

/// The score of a queue head: `price x time waited`. The one place this rule lives.
pub fn head_score(price: f64, waited_ns: u64) -> f64 {
    price * waited_ns as f64
}

/// One FIFO per class, each entry stamped with the time it joined.
#[derive(Debug, Clone)]
pub struct MultiQueue<T> {
    queues: Vec<VecDeque<(u64, T)>>,
    prices: Vec<f64>,
    len: usize,
}

impl<T> MultiQueue<T> {
    pub fn new(classes: &ClassSet) -> Self {
        Self {
            queues: (0..classes.len()).map(|_| VecDeque::new()).collect(),
            prices: classes.prices(),
            len: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn len_of(&self, class: ClassId) -> usize {
        self.queues[class.index()].len()
    }

    /// Appends `item` to its class FIFO; `enqueued_ns` is when it started waiting.
    pub fn handle_push(&mut self, class: ClassId, enqueued_ns: u64, item: T) {
        self.queues[class.index()].push_back((enqueued_ns, item));
        self.len += 1;
    }

    /// Puts back an item that was popped but could not be placed, keeping its original wait
    /// time and its place at the front of its FIFO.
    pub fn handle_push_front(&mut self, class: ClassId, enqueued_ns: u64, item: T) {
        self.queues[class.index()].push_front((enqueued_ns, item));
        self.len += 1;
    }

    /// Removes the first item of `class`'s FIFO that `is` picks (a cancelled invocation);
    /// linear in that FIFO's length, which a shard bounds.
    pub fn handle_remove(&mut self, class: ClassId, is: impl Fn(&T) -> bool) -> Option<T> {
        let queue = &mut self.queues[class.index()];
        let at = queue.iter().position(|(_, item)| is(item))?;
        self.len -= 1;
        queue.remove(at).map(|(_, item)| item)
    }

    /// The class whose head scores highest at `now_ns`, ties to the higher class.
    pub fn choice(&self, now_ns: u64) -> Option<ClassId> {
        self.choice_except(now_ns, &[])
    }

    /// [`MultiQueue::choice`] among the classes `i` with `sitting_out[i]` false (or
    /// past its end).
    pub fn choice_except(&self, now_ns: u64, sitting_out: &[bool]) -> Option<ClassId> {
        let mut best: Option<(usize, f64)> = None;
        // Highest class first, so a strictly larger score is needed to displace it: ties go up.
        for i in (0..self.queues.len()).rev() {
            if sitting_out.get(i).copied().unwrap_or(false) {
                continue;
            }
            if let Some(&(since, _)) = self.queues[i].front() {
                let score = head_score(self.prices[i], now_ns.saturating_sub(since));
                if best.is_none_or(|(_, s)| score > s) {
                    best = Some((i, score));
                }
            }
        }
        best.map(|(i, _)| ClassId(i as u8))
    }

    /// Removes and returns the chosen head: `(class, enqueued_ns, item)`.
    #[must_use]
    pub fn poll_next(&mut self, now_ns: u64) -> Option<(ClassId, u64, T)> {
        self.poll_next_except(now_ns, &[])
    }

    /// [`MultiQueue::poll_next`] among the classes `i` with `sitting_out[i]` false (or
    /// past its end).
    #[must_use]
    pub fn poll_next_except(
        &mut self,
        now_ns: u64,
        sitting_out: &[bool],
    ) -> Option<(ClassId, u64, T)> {
        let class = self.choice_except(now_ns, sitting_out)?;
        let (since, item) = self.queues[class.index()]
            .pop_front()
            .expect("choice() names a non-empty queue");
        self.len -= 1;
        Some((class, since, item))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn classes() -> ClassSet {
        ClassSet::default_four()
    }

    #[test]
    fn fifo_within_a_class() {
        let mut q = MultiQueue::new(&classes());
        for i in 0..5 {
            q.handle_push(ClassId(1), i * MS, i);
        }
        let got: Vec<_> = std::iter::from_fn(|| q.poll_next(10 * MS).map(|x| x.2)).collect();
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn a_removed_item_leaves_its_fifo_and_the_rest_keep_their_order() {
        let mut q = MultiQueue::new(&classes());
        for i in 0..4 {
            q.handle_push(ClassId(1), i * MS, i);
        }
        assert_eq!(q.handle_remove(ClassId(1), |&i| i == 2), Some(2));
        assert_eq!(q.handle_remove(ClassId(1), |&i| i == 2), None);
        // Looked for in its own class only.
        assert_eq!(q.handle_remove(ClassId(0), |&i| i == 1), None);
        assert_eq!(q.len(), 3);
        let got: Vec<_> = std::iter::from_fn(|| q.poll_next(10 * MS).map(|x| x.2)).collect();
        assert_eq!(got, vec![0, 1, 3]);
    }

    #[test]
    fn ties_go_to_the_higher_class() {
        let mut q = MultiQueue::new(&classes());
        q.handle_push(ClassId(0), 5 * MS, "low");
        q.handle_push(ClassId(3), 5 * MS, "top");
        // Both have waited zero at 5 ms: equal scores.
        assert_eq!(q.poll_next(5 * MS).unwrap().2, "top");
    }

    /// Property one: a high class waits less. Arriving together, the top class goes first; and
    /// a top-class head that arrived later still beats a low head until the low one has waited
    /// price_top / price_low = 4 times as long.
    #[test]
    fn high_class_waits_less() {
        let mut q = MultiQueue::new(&classes());
        q.handle_push(ClassId(0), 0, "batch");
        q.handle_push(ClassId(3), 70 * MS, "critical");
        // At 100 ms: batch waited 100 ms (score 50), critical 30 ms (score 60).
        assert_eq!(q.choice(100 * MS), Some(ClassId(3)));
    }

    /// Property two: a low class is placed once it has waited long enough, even while fresh
    /// high-class work keeps arriving.
    #[test]
    fn low_class_is_placed_once_it_has_waited_long_enough() {
        let mut q = MultiQueue::new(&classes());
        q.handle_push(ClassId(0), 0, u64::MAX);
        // A critical invocation arrives every ms and the shard places one every ms.
        let mut placed_low_at = None;
        for t in 1..10_000u64 {
            q.handle_push(ClassId(3), t * MS, t);
            let (class, _, _) = q.poll_next(t * MS + MS / 2).unwrap();
            if class == ClassId(0) {
                placed_low_at = Some(t);
                break;
            }
        }
        // The head of critical has waited 0.5 ms (score 1.0); batch wins once 0.5 x t > 1.
        let t = placed_low_at.expect("the batch invocation must not starve in the shard queue");
        assert!(t <= 3, "placed at {t} ms");
    }

    #[test]
    fn push_front_keeps_wait_time() {
        let mut q = MultiQueue::new(&classes());
        q.handle_push(ClassId(1), 0, 1);
        q.handle_push(ClassId(1), 2 * MS, 2);
        let (c, since, item) = q.poll_next(3 * MS).unwrap();
        q.handle_push_front(c, since, item);
        assert_eq!(q.poll_next(3 * MS).unwrap(), (ClassId(1), 0, 1));
    }
}
