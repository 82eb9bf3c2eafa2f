//! Which offset of each partition may be committed. Workers finish messages
//! out of order (several workers per partition with the `free` strategy, or
//! different keys of one partition on different workers with `by-key`), so
//! the committable position is one past the highest offset below which every
//! dispatched message is done: a crash then re-delivers, never skips.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct Partition {
    /// Which ownership of the partition this is: a message dispatched
    /// under an earlier one (revoked since) settles nothing here.
    generation: u64,
    /// Dispatched offsets → handled?
    pending: BTreeMap<i64, bool>,
    /// Dispatched messages not yet settled (queued or running).
    unsettled: usize,
    /// Of those, the ones a worker has started.
    running: usize,
    /// Being revoked: messages not yet started are left to the next owner.
    revoking: bool,
    /// Next offset to commit (one past the last contiguous handled one).
    committable: Option<i64>,
    /// The position last handed to `commit`, to skip no-op commits.
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
    generations: u64,
}

impl OffsetTracker {
    /// Records a message handed to a worker; returns the partition's
    /// generation, to settle it with.
    pub fn dispatched(&mut self, partition: i32, offset: i64) -> u64 {
        let generations = &mut self.generations;
        let p = self.partitions.entry(partition).or_insert_with(|| {
            *generations += 1;
            Partition {
                generation: *generations,
                ..Partition::default()
            }
        });
        p.pending.insert(offset, false);
        p.unsettled += 1;
        p.generation
    }

    /// The worker is done with `offset`: `handled` (handled, skipped or
    /// dead-lettered: its offset may be committed) or not (abandoned at
    /// shutdown or revocation: it is delivered again, and the position
    /// stays below it). A message of an earlier generation (its partition
    /// was revoked meanwhile) is ignored: its new owner decides.
    pub fn settled(
        &mut self,
        partition: i32,
        generation: u64,
        offset: i64,
        started: bool,
        handled: bool,
    ) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
        if p.generation != generation {
            return;
        }
        p.unsettled = p.unsettled.saturating_sub(1);
        if started {
            p.running = p.running.saturating_sub(1);
        }
        if !handled {
            return;
        }
        if let Some(done) = p.pending.get_mut(&offset) {
            *done = true;
        }
        while let Some(entry) = p.pending.first_entry() {
            if !*entry.get() {
                break;
            }
            p.committable = Some(entry.key() + 1);
            entry.remove();
        }
    }

    /// Whether a message dispatched under `generation` should still be
    /// handled: its partition is neither revoked nor being revoked.
    pub fn owns(&self, partition: i32, generation: u64) -> bool {
        self.partitions
            .get(&partition)
            .is_some_and(|p| p.generation == generation && !p.revoking)
    }

    /// A worker starts a message dispatched under `generation`, if the
    /// partition is still owned ([`Self::owns`]); false: leave it.
    pub fn start(&mut self, partition: i32, generation: u64) -> bool {
        if !self.owns(partition, generation) {
            return false;
        }
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.running += 1;
        }
        true
    }

    /// Messages of the partition a worker is handling now (a revocation
    /// waits for these; queued ones are left without waiting).
    pub fn running(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, |p| p.running)
    }

    /// The partition is being revoked: see [`Self::owns`].
    pub fn revoking(&mut self, partition: i32) {
        if let Some(p) = self.partitions.get_mut(&partition) {
            p.revoking = true;
        }
    }

    /// Messages of the partition queued or running.
    pub fn in_flight(&self, partition: i32) -> usize {
        self.partitions.get(&partition).map_or(0, |p| p.unsettled)
    }

    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.unsettled).sum()
    }

    /// Positions that moved since the last call, to commit now.
    pub fn take_commits(&mut self) -> Vec<(i32, i64)> {
        let mut out = Vec::new();
        for (id, p) in &mut self.partitions {
            if let Some(pos) = p.committable {
                if p.committed != Some(pos) {
                    p.committed = Some(pos);
                    out.push((*id, pos));
                }
            }
        }
        out.sort_unstable();
        out
    }

    /// Offers every position again at the next [`Self::take_commits`]:
    /// after a rebalance, whose commits in flight the group refuses (its
    /// generation changed), positions that do not move again would
    /// otherwise stay uncommitted.
    pub fn recommit_all(&mut self) {
        for p in self.partitions.values_mut() {
            p.committed = None;
        }
    }

    /// The committable position of a partition, whether or not committed.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.partitions.get(&partition).and_then(|p| p.committable)
    }

    pub fn forget(&mut self, partition: i32) {
        self.partitions.remove(&partition);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_the_contiguous_prefix() {
        let mut t = OffsetTracker::default();
        let mut g = 0;
        for o in 10..15 {
            g = t.dispatched(0, o);
        }
        t.settled(0, g, 12, true, true);
        t.settled(0, g, 14, true, true);
        assert_eq!(t.position(0), None, "10 is still running");
        t.settled(0, g, 10, true, true);
        assert_eq!(t.position(0), Some(11));
        t.settled(0, g, 11, true, true);
        assert_eq!(t.position(0), Some(13), "12 was done, 13 is not");
        assert_eq!(t.in_flight(0), 1);
        t.settled(0, g, 13, true, true);
        assert_eq!(t.position(0), Some(15));
        assert_eq!(t.in_flight(0), 0);
    }

    #[test]
    fn partitions_are_independent_and_commits_are_not_repeated() {
        let mut t = OffsetTracker::default();
        let g0 = t.dispatched(0, 0);
        let g1 = t.dispatched(1, 7);
        t.settled(1, g1, 7, true, true);
        assert_eq!(t.take_commits(), vec![(1, 8)]);
        assert_eq!(t.take_commits(), vec![]);
        t.settled(0, g0, 0, true, true);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn revoked_partitions_ignore_late_completions_even_once_assigned_again() {
        let mut t = OffsetTracker::default();
        let old = t.dispatched(3, 5);
        t.forget(3);
        t.settled(3, old, 5, true, true);
        assert_eq!(t.position(3), None);
        assert_eq!(t.take_commits(), vec![]);
        // Assigned again: the new owner's dispatch of 5 is not settled by
        // the old one's late completion.
        let old = t.dispatched(3, 4);
        t.forget(3);
        let new = t.dispatched(3, 4);
        t.settled(3, old, 4, true, true);
        assert_eq!((t.position(3), t.in_flight(3)), (None, 1));
        t.settled(3, new, 4, true, true);
        assert_eq!((t.position(3), t.in_flight(3)), (Some(5), 0));
    }

    #[test]
    fn an_abandoned_message_holds_the_position_but_is_no_longer_in_flight() {
        let mut t = OffsetTracker::default();
        let g = t.dispatched(0, 1);
        t.dispatched(0, 2);
        t.settled(0, g, 1, false, false);
        t.settled(0, g, 2, true, true);
        assert_eq!(
            t.position(0),
            None,
            "1 is delivered again, so nothing past it commits"
        );
        assert_eq!(t.in_flight(0), 0);
    }

    #[test]
    fn after_a_rebalance_every_position_is_offered_again() {
        let mut t = OffsetTracker::default();
        let g = t.dispatched(0, 3);
        t.settled(0, g, 3, true, true);
        assert_eq!(t.take_commits(), vec![(0, 4)]);
        assert_eq!(t.take_commits(), vec![]);
        t.recommit_all();
        assert_eq!(t.take_commits(), vec![(0, 4)], "again");
    }

    #[test]
    fn a_revocation_waits_for_started_messages_only() {
        let mut t = OffsetTracker::default();
        let g = t.dispatched(5, 0);
        t.dispatched(5, 1);
        assert!(t.start(5, g));
        assert_eq!(
            (t.running(5), t.in_flight(5)),
            (1, 2),
            "one running, one queued"
        );
        t.revoking(5);
        assert!(!t.start(5, g), "a queued message is left once revoking");
        t.settled(5, g, 1, false, false);
        assert_eq!(t.running(5), 1);
        t.settled(5, g, 0, true, true);
        assert_eq!((t.running(5), t.in_flight(5)), (0, 0));
    }

    #[test]
    fn a_partition_being_revoked_is_no_longer_owned() {
        let mut t = OffsetTracker::default();
        let g = t.dispatched(2, 0);
        assert!(t.owns(2, g));
        assert!(!t.owns(2, g + 1), "another generation");
        t.revoking(2);
        assert!(!t.owns(2, g));
    }
}
