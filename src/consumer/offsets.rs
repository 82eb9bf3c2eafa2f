//! Which offset of each partition may be committed. Workers finish messages
//! out of order (several workers per partition with the `free` strategy, or
//! different keys of one partition on different workers with `by-key`), so
//! the committable position is one past the highest offset below which every
//! dispatched message is done: a crash then re-delivers, never skips.

use std::collections::{BTreeMap, HashMap};

#[derive(Debug, Default)]
struct Partition {
    /// Dispatched offsets → finished?
    pending: BTreeMap<i64, bool>,
    /// Next offset to commit (one past the last contiguous finished one).
    committable: Option<i64>,
    /// The position last handed to `commit`, to skip no-op commits.
    committed: Option<i64>,
}

#[derive(Debug, Default)]
pub struct OffsetTracker {
    partitions: HashMap<i32, Partition>,
}

impl OffsetTracker {
    pub fn dispatched(&mut self, partition: i32, offset: i64) {
        self.partitions
            .entry(partition)
            .or_default()
            .pending
            .insert(offset, false);
    }

    /// Marks `offset` finished (handled, skipped or dead-lettered). Unknown
    /// partitions (revoked meanwhile) are ignored: their new owner decides.
    pub fn finished(&mut self, partition: i32, offset: i64) {
        let Some(p) = self.partitions.get_mut(&partition) else {
            return;
        };
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

    pub fn in_flight(&self, partition: i32) -> usize {
        self.partitions
            .get(&partition)
            .map_or(0, |p| p.pending.len())
    }

    pub fn total_in_flight(&self) -> usize {
        self.partitions.values().map(|p| p.pending.len()).sum()
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
        for o in 10..15 {
            t.dispatched(0, o);
        }
        t.finished(0, 12);
        t.finished(0, 14);
        assert_eq!(t.position(0), None, "10 is still running");
        t.finished(0, 10);
        assert_eq!(t.position(0), Some(11));
        t.finished(0, 11);
        assert_eq!(t.position(0), Some(13), "12 was done, 13 is not");
        assert_eq!(t.in_flight(0), 2);
        t.finished(0, 13);
        assert_eq!(t.position(0), Some(15));
        assert_eq!(t.in_flight(0), 0);
    }

    #[test]
    fn partitions_are_independent_and_commits_are_not_repeated() {
        let mut t = OffsetTracker::default();
        t.dispatched(0, 0);
        t.dispatched(1, 7);
        t.finished(1, 7);
        assert_eq!(t.take_commits(), vec![(1, 8)]);
        assert_eq!(t.take_commits(), vec![]);
        t.finished(0, 0);
        assert_eq!(t.take_commits(), vec![(0, 1)]);
        assert_eq!(t.total_in_flight(), 0);
    }

    #[test]
    fn revoked_partitions_ignore_late_completions() {
        let mut t = OffsetTracker::default();
        t.dispatched(3, 5);
        t.forget(3);
        t.finished(3, 5);
        assert_eq!(t.position(3), None);
        assert_eq!(t.take_commits(), vec![]);
    }
}
