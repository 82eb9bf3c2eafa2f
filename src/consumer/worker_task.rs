//! One worker task: the messages of its queue, several at a time.
//!
//! A worker handles up to [`IN_FLIGHT_PER_WORKER`] messages at once and
//! starts the next as soon as one finishes, but never two of one key: a
//! message whose key is being handled waits, and the queue behind it with
//! it, so one order's events are still handled one at a time, in order.
//! Several in flight let their transactions share the store's grouped
//! statements: eight workers handling one message each gave groups of under
//! two, and PostgreSQL reserves about six times as many events a second in
//! groups of eight as one by one (BENCHMARKS.md).

use std::collections::HashSet;
use std::future::Future;

use futures::stream::{FuturesUnordered, StreamExt};
use rdkafka::message::{Message, OwnedMessage};
use tokio::sync::mpsc::{self, error::TryRecvError};

use crate::shutdown::Shutdown;

pub const IN_FLIGHT_PER_WORKER: usize = 8;

/// A message handed to a worker.
pub struct Delivery {
    pub message: OwnedMessage,
    /// The generation of its partition's ownership it was dispatched under.
    pub generation: u64,
    /// Fires when its partition is revoked or the role shuts down: a
    /// message not started is left to the partition's next owner, one
    /// waiting to retry gives up.
    pub cancel: Shutdown,
}

impl Delivery {
    fn key(&self) -> Option<Vec<u8>> {
        self.message.key().map(<[u8]>::to_vec)
    }
}

/// Handles the queue's messages with `handle` until the queue is closed
/// and empty and every message is finished.
pub async fn run<F, Fut>(mut queue: mpsc::Receiver<Delivery>, handle: F)
where
    F: Fn(Delivery) -> Fut,
    Fut: Future<Output = ()>,
{
    let mut running = FuturesUnordered::new();
    let mut busy: HashSet<Option<Vec<u8>>> = HashSet::new();
    // The next message, waiting for its key to be free.
    let mut held: Option<Delivery> = None;
    let mut open = true;
    loop {
        while running.len() < IN_FLIGHT_PER_WORKER {
            let next = match held.take() {
                Some(message) => message,
                None if open => match queue.try_recv() {
                    Ok(message) => message,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        open = false;
                        break;
                    }
                },
                None => break,
            };
            let key = next.key();
            if !busy.insert(key.clone()) {
                held = Some(next);
                break;
            }
            let handling = handle(next);
            running.push(async move {
                handling.await;
                key
            });
        }
        if running.is_empty() {
            // Nothing runs, so nothing is held: wait for the queue.
            match queue.recv().await {
                Some(message) if open => held = Some(message),
                _ => return,
            }
            continue;
        }
        let room = held.is_none() && open && running.len() < IN_FLIGHT_PER_WORKER;
        tokio::select! {
            Some(key) = running.next() => {
                busy.remove(&key);
            }
            next = queue.recv(), if room => match next {
                Some(message) => held = Some(message),
                None => open = false,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    fn message(key: &str, offset: i64) -> Delivery {
        Delivery {
            message: OwnedMessage::new(
                None,
                Some(key.as_bytes().to_vec()),
                "orders".into(),
                rdkafka::Timestamp::NotAvailable,
                0,
                offset,
                None,
            ),
            generation: 1,
            cancel: crate::shutdown::channel().1,
        }
    }

    /// Messages of different keys overlap; one key's messages never do, and
    /// they finish in queue order.
    #[tokio::test]
    async fn keys_overlap_but_one_key_runs_alone_and_in_order() {
        let (tx, rx) = mpsc::channel(64);
        let queued = [("a", 0), ("b", 1), ("a", 2), ("c", 3), ("a", 4), ("b", 5)];
        for (key, offset) in queued {
            tx.send(message(key, offset)).await.expect("queued");
        }
        drop(tx);
        // (key, offset, started or finished), and the most running at once.
        let log = Arc::new(Mutex::new(Vec::new()));
        let running = Arc::new(Mutex::new((0usize, 0usize)));
        let (log_in, running_in) = (log.clone(), running.clone());
        run(rx, move |d: Delivery| {
            let (log, running) = (log_in.clone(), running_in.clone());
            async move {
                let m = d.message;
                let key =
                    String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap_or_default();
                {
                    let mut r = running.lock().expect("running");
                    r.0 += 1;
                    r.1 = r.1.max(r.0);
                }
                log.lock()
                    .expect("log")
                    .push((key.clone(), m.offset(), "start"));
                tokio::time::sleep(Duration::from_millis(20)).await;
                log.lock().expect("log").push((key, m.offset(), "end"));
                running.lock().expect("running").0 -= 1;
            }
        })
        .await;
        let log = log.lock().expect("log").clone();
        assert_eq!(log.len(), 12, "every message handled once: {log:?}");
        for key in ["a", "b"] {
            let events: Vec<_> = log.iter().filter(|(k, _, _)| k == key).collect();
            for pair in events.chunks(2) {
                assert_eq!(pair[0].1, pair[1].1, "{key}: one at a time: {log:?}");
                assert_eq!((pair[0].2, pair[1].2), ("start", "end"));
            }
            let offsets: Vec<i64> = events.iter().step_by(2).map(|e| e.1).collect();
            let mut sorted = offsets.clone();
            sorted.sort_unstable();
            assert_eq!(offsets, sorted, "{key} in queue order");
        }
        assert!(
            running.lock().expect("running").1 >= 2,
            "different keys overlap"
        );
    }
}
