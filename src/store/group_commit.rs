//! Group commit: writes of one kind that callers make at the same time share
//! one statement, and so one transaction, one round trip and one WAL flush.
//!
//! A few lanes take requests from one queue. A free lane takes the first
//! request at once and, with it, whatever else is already waiting (up to a
//! ceiling): nothing waits for a batch to fill, so a lone request costs what
//! it did before, and under load the batches grow by themselves while the
//! lanes are busy. Several lanes keep more than one statement in flight, as
//! concurrent callers would.

use std::future::Future;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, Mutex};

type Request<Req, Resp> = (Req, oneshot::Sender<Resp>);

pub struct GroupCommit<Req, Resp> {
    requests: mpsc::Sender<Request<Req, Resp>>,
}

impl<Req: Send + 'static, Resp: Send + 'static> GroupCommit<Req, Resp> {
    /// Starts `lanes` tasks that hand batches of at most `max_batch`
    /// requests to `write`, which answers each request, in order. `name`
    /// labels the metrics (batches and requests per statement kind).
    pub fn start<F, Fut>(name: &'static str, lanes: usize, max_batch: usize, write: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<Resp>> + Send,
    {
        let (requests, queue) = mpsc::channel::<Request<Req, Resp>>(lanes * max_batch);
        let queue = Arc::new(Mutex::new(queue));
        let write = Arc::new(write);
        for _ in 0..lanes.max(1) {
            let (queue, write) = (queue.clone(), write.clone());
            tokio::spawn(async move {
                while let Some(batch) = next_batch(&queue, max_batch).await {
                    metrics::counter!(crate::metrics::DB_GROUPS, "statement" => name).increment(1);
                    metrics::counter!(crate::metrics::DB_GROUPED, "statement" => name)
                        .increment(batch.len() as u64);
                    let (batch, replies): (Vec<Req>, Vec<_>) = batch.into_iter().unzip();
                    let answers = write(batch).await;
                    // A caller that went away (its request was cancelled)
                    // does not need its answer; the write stands.
                    for (reply, answer) in replies.into_iter().zip(answers) {
                        let _ = reply.send(answer);
                    }
                }
            });
        }
        Self { requests }
    }

    /// The answer to `request`, or `None` if the lanes are gone (the
    /// runtime is shutting down).
    pub async fn submit(&self, request: Req) -> Option<Resp> {
        let (reply, answer) = oneshot::channel();
        self.requests.send((request, reply)).await.ok()?;
        answer.await.ok()
    }
}

/// The first request to arrive and every one already queued behind it.
async fn next_batch<T>(queue: &Mutex<mpsc::Receiver<T>>, max_batch: usize) -> Option<Vec<T>> {
    // One lane waits on the queue at a time; the others wait for the lock
    // and get the requests that arrive while this lane writes.
    let mut queue = queue.lock().await;
    let first = queue.recv().await?;
    let mut batch = Vec::with_capacity(max_batch.min(queue.len() + 1));
    batch.push(first);
    while batch.len() < max_batch {
        match queue.try_recv() {
            Ok(request) => batch.push(request),
            Err(_) => break,
        }
    }
    Some(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A lone request is written alone and at once; requests that queue
    /// while every lane is busy share the next batch, in arrival order.
    #[tokio::test]
    async fn requests_waiting_together_share_a_batch() {
        let (seen_tx, mut seen) = mpsc::unbounded_channel::<Vec<u32>>();
        // Holds the batch with 2 in it until the others have queued.
        let gate = Arc::new(tokio::sync::Semaphore::new(0));
        let lane_gate = gate.clone();
        let group = Arc::new(GroupCommit::start("test", 1, 8, move |batch: Vec<u32>| {
            let (seen_tx, gate) = (seen_tx.clone(), lane_gate.clone());
            async move {
                if batch.contains(&2) {
                    let _ = gate.acquire().await;
                }
                let _ = seen_tx.send(batch.clone());
                batch.into_iter().map(|n| n * 10).collect()
            }
        }));
        assert_eq!(group.submit(1).await, Some(10));
        assert_eq!(seen.recv().await, Some(vec![1]));

        // One thread: each spawned caller queues its request at the yield.
        let mut calls = Vec::new();
        for n in 2..=12 {
            let group = group.clone();
            calls.push(tokio::spawn(async move { group.submit(n).await }));
            tokio::task::yield_now().await;
        }
        gate.add_permits(1);
        let mut answers = Vec::new();
        for call in calls {
            answers.push(call.await.expect("caller"));
        }
        assert_eq!(answers, (2..=12).map(|n| Some(n * 10)).collect::<Vec<_>>());
        let batches: Vec<Vec<u32>> = std::iter::from_fn(|| seen.try_recv().ok()).collect();
        assert_eq!(
            batches,
            vec![vec![2], (3..=10).collect(), vec![11, 12]],
            "one alone, then the queue in arrival order, 8 at most"
        );
    }
}
