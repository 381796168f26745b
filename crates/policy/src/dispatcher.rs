//! The dispatcher's idle-list decisions (paper 3.2, the blue arrows of Figure 3).
//!
//! A machine is on at most one shard's idle list. It joins when its free memory is
//! significant, choosing the shard by power-of-k (look at `shard_choices` shards' idle lists
//! and join the shortest), updates its entry when free memory changed significantly since it
//! last reported, and leaves when memory is short. All three thresholds are fractions of the
//! machine's memory capacity. Between the join and the leave thresholds the machine stays
//! where it is (hysteresis), so a machine near a threshold does not flap.
//!
//! The paper updates the entry on significant memory change only. Entries also carry the
//! number of functions, which the shard bumps locally on each placement; if only memory
//! triggered updates, an emptied machine could keep a stale high count and be passed over
//! while others queue (seen in the simulator: 6% of machine samples idle at load 0.9). So an
//! update is also sent when the function count moved by `update_functions_change`.
//!
//! With `need_idle_core` (the class-aware placement rule,
//! [`crate::placement::PlacementRule::ClassAware`]) a machine is idle only while it also has
//! an idle core: it joins when both hold and leaves when either fails. This is what makes
//! idleness mean something without a memory bound (capacity `u64::MAX`): with memory alone
//! every machine would be idle forever, each shard would place only on the machines that
//! happened to join its list, and never poll the others (the collapse of issue 21: 60%
//! utilization at twice the cluster's capacity). Under overload no machine has an idle core,
//! the lists empty, and shards poll.
//!
//! Over a network ([`Dispatcher::handle_refresh`], [`Dispatcher::handle_send_failed`]): the
//! shard changes its copy of an entry on each placement, and the machine compares with what
//! it last sent, so under one-at-a-time traffic (each invocation over before the next) the
//! copy drifts from the truth and nothing corrects it. Every refresh period the driver asks
//! for a refresh: a member sends its entry as it is, changed or not. A message that failed
//! may or may not have been taken, so the machine counts that shard as possibly holding an
//! entry and, at the next refresh, sends it a leave (again at each refresh until one goes
//! through) unless it is a member there. Every message carries a sequence number, higher
//! than every earlier one's, so a shard takes none older than one it took. Hence, with the
//! messages of one refresh delivered, every shard's view of the machine is the truth: its
//! entry on the shard it is a member of, none elsewhere (`tests/properties.rs` checks this
//! over random placements, completions, failed, late and repeated messages and shard
//! restarts). The simulator delivers every message at once and in order, and never
//! refreshes: its figures are the paper's rule.

use std::collections::VecDeque;

use rand::Rng;

use crate::idle_list::IdleEntry;
use crate::ShardId;

#[derive(Clone, Copy, Debug, PartialEq)]
pub struct DispatcherConfig {
    /// Join an idle list when free memory is at least this fraction of capacity.
    pub join_free_fraction: f64,
    /// Leave the idle list when free memory drops below this fraction of capacity.
    pub leave_free_fraction: f64,
    /// Update the entry when free memory moved by at least this fraction of capacity.
    pub update_change_fraction: f64,
    /// Update the entry when the number of functions moved by at least this much.
    pub update_functions_change: u32,
    /// How many shards' idle lists to compare when joining.
    pub shard_choices: usize,
    /// Idle also needs an idle core (see the module docs).
    pub need_idle_core: bool,
}

impl Default for DispatcherConfig {
    fn default() -> Self {
        Self {
            join_free_fraction: 0.25,
            leave_free_fraction: 0.10,
            update_change_fraction: 0.10,
            update_functions_change: 2,
            shard_choices: 2,
            need_idle_core: true,
        }
    }
}

/// A message from the dispatcher to one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum IdleListAction {
    Join { shard: ShardId, entry: IdleEntry },
    Update { shard: ShardId, entry: IdleEntry },
    Leave { shard: ShardId },
}

/// What the dispatcher asks its driver to do ([`Dispatcher::poll_output`]).
#[derive(Clone, Debug, PartialEq, Eq)]
#[must_use]
pub enum DispatcherOutput {
    /// Find out the idle-list lengths of these shards and give them to
    /// [`Dispatcher::handle_lengths`]: the machine is choosing a list to join.
    AskLengths(Vec<ShardId>),
    /// Send this to its shard, numbered `seq` (above every earlier message's); if it fails,
    /// tell [`Dispatcher::handle_send_failed`].
    Send { action: IdleListAction, seq: u64 },
}

/// A machine's idle-list membership, as a state machine without I/O: the driver (the
/// simulator, or a worker node talking to shards over RPC) feeds it inputs (`handle_*`) and
/// carries out its outputs ([`Dispatcher::poll_output`]) in order. The simulator answers an
/// [`DispatcherOutput::AskLengths`] by looking; a node by asking the sampled shards.
#[derive(Debug, Clone)]
pub struct Dispatcher {
    config: DispatcherConfig,
    member_of: Option<(ShardId, IdleEntry)>,
    /// A join waiting for the sampled shards' lengths: the entry it would join with, and the
    /// shards sampled.
    joining: Option<(IdleEntry, Vec<ShardId>)>,
    /// At most a leave per stale shard and one more message, or a request for lengths.
    output: VecDeque<DispatcherOutput>,
    /// The last message's number.
    seq: u64,
    /// The last load input: (entry, capacity, shards).
    last_load: Option<(IdleEntry, u64, u32)>,
    /// Shards a failed message went to, which may hold an entry for this machine.
    stale: Vec<ShardId>,
}

impl Dispatcher {
    pub fn new(config: DispatcherConfig) -> Self {
        Self {
            config,
            member_of: None,
            joining: None,
            output: VecDeque::new(),
            seq: 0,
            last_load: None,
            stale: Vec::new(),
        }
    }

    fn send(&mut self, action: IdleListAction) {
        self.seq += 1;
        self.output.push_back(DispatcherOutput::Send {
            action,
            seq: self.seq,
        });
    }

    /// The shard whose idle list holds this machine, if any.
    pub fn member_of(&self) -> Option<ShardId> {
        self.member_of.map(|(s, _)| s)
    }

    fn joinable(&self, now: IdleEntry, capacity_mb: u64) -> bool {
        now.free_mb as f64 >= self.config.join_free_fraction * capacity_mb as f64
            && (!self.config.need_idle_core || now.idle_cores > 0)
    }

    fn must_leave(&self, now: IdleEntry, capacity_mb: u64) -> bool {
        (now.free_mb as f64) < self.config.leave_free_fraction * capacity_mb as f64
            || (self.config.need_idle_core && now.idle_cores == 0)
    }

    /// Input: the machine's memory or load is now `now`; `capacity_mb` is `u64::MAX` when
    /// memory is unlimited, `shards` how many shards there are. A join in progress (waiting
    /// for lengths) is dropped: the machine's state it was for is gone.
    pub fn handle_load<R: Rng + ?Sized>(
        &mut self,
        now: IdleEntry,
        capacity_mb: u64,
        shards: u32,
        rng: &mut R,
    ) {
        self.joining = None;
        self.output.clear();
        self.last_load = Some((now, capacity_mb, shards));
        let cap = capacity_mb as f64;
        match self.member_of {
            None if shards > 0 && self.joinable(now, capacity_mb) => {
                let mut sampled = Vec::with_capacity(self.config.shard_choices);
                while sampled.len() < self.config.shard_choices.min(shards as usize) {
                    let s = ShardId(rng.random_range(0..shards));
                    if !sampled.contains(&s) {
                        sampled.push(s);
                    }
                }
                self.output
                    .push_back(DispatcherOutput::AskLengths(sampled.clone()));
                self.joining = Some((now, sampled));
            }
            None => {}
            Some((shard, _)) if self.must_leave(now, capacity_mb) => {
                self.member_of = None;
                self.send(IdleListAction::Leave { shard });
            }
            Some((shard, last)) => {
                let moved = (now.free_mb as f64 - last.free_mb as f64).abs();
                let functions_moved = now.functions.abs_diff(last.functions);
                if moved >= self.config.update_change_fraction * cap
                    || functions_moved >= self.config.update_functions_change
                {
                    self.member_of = Some((shard, now));
                    self.send(IdleListAction::Update { shard, entry: now });
                }
            }
        }
    }

    /// Input: the idle-list lengths of the shards an [`DispatcherOutput::AskLengths`] named,
    /// in its order (`usize::MAX` for a shard that did not answer). The machine joins the
    /// shortest (the first of equals).
    pub fn handle_lengths(&mut self, lengths: &[usize]) {
        let Some((entry, sampled)) = self.joining.take() else {
            return;
        };
        let mut best: Option<(ShardId, usize)> = None;
        for (&s, &len) in sampled.iter().zip(lengths) {
            if best.is_none_or(|(_, l)| len < l) {
                best = Some((s, len));
            }
        }
        let Some((shard, _)) = best.or_else(|| sampled.first().map(|&s| (s, usize::MAX))) else {
            return;
        };
        self.member_of = Some((shard, entry));
        self.stale.retain(|&s| s != shard);
        self.send(IdleListAction::Join { shard, entry });
    }

    /// Input: the shard restarted and lost its idle list (or forgot this machine): forget
    /// the membership, so the next load input chooses again.
    pub fn handle_shard_lost(&mut self) {
        self.member_of = None;
        self.joining = None;
        self.output.clear();
    }

    /// Input: `action` was not delivered for sure (the shard did not answer, or refused it).
    /// The membership it made or kept is forgotten, and its shard, which may have taken it,
    /// gets a leave at the next refresh unless the machine is a member there by then.
    pub fn handle_send_failed(&mut self, action: IdleListAction) {
        let shard = match action {
            IdleListAction::Join { shard, .. }
            | IdleListAction::Update { shard, .. }
            | IdleListAction::Leave { shard } => shard,
        };
        if self.member_of() == Some(shard) {
            self.member_of = None;
        }
        if !self.stale.contains(&shard) {
            self.stale.push(shard);
        }
    }

    /// Input: the refresh period passed. The last load input is taken again (a machine not
    /// on a list joins if it may, one that must leave leaves); a member that sends nothing
    /// else sends its entry unchanged (the shard's copy has its own placements in it since);
    /// each shard a failed message went to gets a leave.
    pub fn handle_refresh<R: Rng + ?Sized>(&mut self, rng: &mut R) {
        let Some((now, capacity_mb, shards)) = self.last_load else {
            return;
        };
        self.handle_load(now, capacity_mb, shards, rng);
        if let (Some((shard, _)), true) = (self.member_of, self.output.is_empty()) {
            self.member_of = Some((shard, now));
            self.send(IdleListAction::Update { shard, entry: now });
        }
        for shard in std::mem::take(&mut self.stale) {
            if self.member_of() != Some(shard) {
                self.send(IdleListAction::Leave { shard });
            }
        }
    }

    /// Output: the next thing to do, if any.
    pub fn poll_output(&mut self) -> Option<DispatcherOutput> {
        self.output.pop_front()
    }

    /// [`Dispatcher::handle_load`] and the outputs that follow, for tests that know the
    /// idle-list lengths at once (`idle_list_len`): the message to send, if any.
    #[cfg(test)]
    fn decide<R: Rng + ?Sized>(
        &mut self,
        now: IdleEntry,
        capacity_mb: u64,
        shards: u32,
        rng: &mut R,
        mut idle_list_len: impl FnMut(ShardId) -> usize,
    ) -> Option<IdleListAction> {
        self.handle_load(now, capacity_mb, shards, rng);
        loop {
            match self.poll_output()? {
                DispatcherOutput::AskLengths(sampled) => {
                    let lengths: Vec<usize> = sampled.iter().map(|&s| idle_list_len(s)).collect();
                    self.handle_lengths(&lengths);
                }
                DispatcherOutput::Send { action, .. } => return Some(action),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    fn e(free_mb: u64) -> IdleEntry {
        IdleEntry {
            free_mb,
            functions: 0,
            idle_cores: 1,
        }
    }

    #[test]
    fn joins_the_shortest_sampled_list_updates_and_leaves() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(1);
        let config = DispatcherConfig {
            shard_choices: 4,
            ..Default::default()
        };
        let mut d = Dispatcher::new(config);
        let lens = [5, 3, 0, 9];
        // 20% free: not significant.
        assert_eq!(
            d.decide(e(200), 1000, 4, &mut rng, |s| lens[s.0 as usize]),
            None
        );
        // 50% free: join; with all 4 shards sampled the shortest (shard 2) wins.
        let a = d.decide(e(500), 1000, 4, &mut rng, |s| lens[s.0 as usize]);
        assert_eq!(
            a,
            Some(IdleListAction::Join {
                shard: ShardId(2),
                entry: e(500)
            })
        );
        // A 5% move is not significant; a 15% move is.
        assert_eq!(d.decide(e(450), 1000, 4, &mut rng, |_| 0), None);
        assert_eq!(
            d.decide(e(350), 1000, 4, &mut rng, |_| 0),
            Some(IdleListAction::Update {
                shard: ShardId(2),
                entry: e(350)
            })
        );
        // Two more functions with the same memory is significant too.
        let busier = IdleEntry {
            free_mb: 350,
            functions: 2,
            idle_cores: 1,
        };
        assert_eq!(
            d.decide(busier, 1000, 4, &mut rng, |_| 0),
            Some(IdleListAction::Update {
                shard: ShardId(2),
                entry: busier
            })
        );
        // Below 10%: leave.
        assert_eq!(
            d.decide(e(50), 1000, 4, &mut rng, |_| 0),
            Some(IdleListAction::Leave { shard: ShardId(2) })
        );
        assert_eq!(d.member_of(), None);
    }

    #[test]
    fn with_unlimited_memory_an_idle_core_decides() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(2);
        let entry = |functions, idle_cores| IdleEntry {
            free_mb: u64::MAX,
            functions,
            idle_cores,
        };
        let mut d = Dispatcher::new(DispatcherConfig::default());
        // Every core taken: not idle, whatever the memory.
        assert_eq!(d.decide(entry(2, 0), u64::MAX, 4, &mut rng, |_| 0), None);
        let Some(IdleListAction::Join { shard, .. }) =
            d.decide(entry(1, 1), u64::MAX, 4, &mut rng, |_| 0)
        else {
            panic!("an idle core with unlimited memory joins");
        };
        d.handle_load(entry(1, 1), u64::MAX, 4, &mut rng);
        assert_eq!(d.poll_output(), None, "already a member, nothing changed");
        assert_eq!(
            d.decide(entry(2, 0), u64::MAX, 4, &mut rng, |_| 0),
            Some(IdleListAction::Leave { shard })
        );
        // The paper's rule: memory alone, so an unlimited machine never leaves.
        let mut paper = Dispatcher::new(DispatcherConfig {
            need_idle_core: false,
            ..DispatcherConfig::default()
        });
        let _ = paper.decide(entry(2, 0), u64::MAX, 4, &mut rng, |_| 0);
        assert!(paper.member_of().is_some());
        assert_eq!(
            paper.decide(entry(3, 0), u64::MAX, 4, &mut rng, |_| 0),
            None
        );
    }

    /// Every output left, as (action, seq).
    fn sends(d: &mut Dispatcher) -> Vec<(IdleListAction, u64)> {
        std::iter::from_fn(|| d.poll_output())
            .map(|o| match o {
                DispatcherOutput::Send { action, seq } => (action, seq),
                other => panic!("expected a send, got {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_refresh_reports_an_unchanged_entry_and_a_failed_message_brings_a_leave() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(4);
        let mut d = Dispatcher::new(DispatcherConfig {
            shard_choices: 1,
            ..DispatcherConfig::default()
        });
        // Nothing known yet: nothing to refresh.
        d.handle_refresh(&mut rng);
        assert_eq!(d.poll_output(), None);
        let joined = d.decide(e(500), 1000, 1, &mut rng, |_| 0);
        assert_eq!(
            joined,
            Some(IdleListAction::Join {
                shard: ShardId(0),
                entry: e(500)
            })
        );
        // Nothing changed: a load input sends nothing, a refresh sends the entry as it is.
        d.handle_load(e(500), 1000, 1, &mut rng);
        assert_eq!(d.poll_output(), None);
        d.handle_refresh(&mut rng);
        let update = IdleListAction::Update {
            shard: ShardId(0),
            entry: e(500),
        };
        assert_eq!(sends(&mut d), vec![(update, 2)]);
        // That update failed: no longer a member; the next load input joins again (the
        // shard chosen is the same one, so no leave is owed to it).
        d.handle_send_failed(update);
        assert_eq!(d.member_of(), None);
        assert_eq!(d.decide(e(500), 1000, 1, &mut rng, |_| 0), joined);
        d.handle_refresh(&mut rng);
        assert_eq!(sends(&mut d), vec![(update, 4)]);
        // A machine that must leave and whose leave failed sends it again at each refresh
        // until one goes through.
        let leave = IdleListAction::Leave { shard: ShardId(0) };
        assert_eq!(d.decide(e(50), 1000, 1, &mut rng, |_| 0), Some(leave));
        d.handle_send_failed(leave);
        d.handle_refresh(&mut rng);
        assert_eq!(sends(&mut d), vec![(leave, 6)]);
        d.handle_send_failed(leave);
        d.handle_refresh(&mut rng);
        assert_eq!(sends(&mut d), vec![(leave, 7)]);
        d.handle_refresh(&mut rng);
        assert_eq!(sends(&mut d), vec![]);
    }

    #[test]
    fn a_join_waits_for_the_sampled_lengths_and_new_load_cancels_it() {
        let mut rng = rand_pcg::Pcg64Mcg::seed_from_u64(3);
        let mut d = Dispatcher::new(DispatcherConfig::default());
        d.handle_load(e(500), 1000, 8, &mut rng);
        let Some(DispatcherOutput::AskLengths(sampled)) = d.poll_output() else {
            panic!("a join asks for lengths first");
        };
        assert_eq!(sampled.len(), 2);
        assert_ne!(sampled[0], sampled[1]);
        assert_eq!(d.poll_output(), None, "one output at a time");
        // The machine filled up before the answer: the join is off.
        d.handle_load(e(50), 1000, 8, &mut rng);
        d.handle_lengths(&[0, 0]);
        assert_eq!(d.poll_output(), None);
        assert_eq!(d.member_of(), None);
        // Asked again; a shard that did not answer counts as longest.
        d.handle_load(e(500), 1000, 8, &mut rng);
        let Some(DispatcherOutput::AskLengths(sampled)) = d.poll_output() else {
            panic!("asks again");
        };
        d.handle_lengths(&[usize::MAX, 4]);
        assert!(matches!(
            d.poll_output(),
            Some(DispatcherOutput::Send {
                action: IdleListAction::Join { shard, entry },
                ..
            }) if shard == sampled[1] && entry == e(500)
        ));
        // A shard lost: membership forgotten, the next load input joins again.
        d.handle_shard_lost();
        assert_eq!(d.member_of(), None);
        d.handle_load(e(500), 1000, 8, &mut rng);
        assert!(matches!(
            d.poll_output(),
            Some(DispatcherOutput::AskLengths(_))
        ));
    }
}
