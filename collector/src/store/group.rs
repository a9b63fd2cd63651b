//! Group commit: reports from many streams are committed together, one transaction and one fsync per
//! batch, and each is acknowledged only after its batch is durable. Under load batches grow (up to
//! [`MAX_BATCH`]); alone, a report commits at once with no added wait. Callers wait for their answer
//! without holding a thread.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::{Commit, PendingCommit, Result, Store, StoreError};

/// The largest batch committed in one transaction.
pub const MAX_BATCH: usize = 512;

type Reply = oneshot::Sender<Result<Commit>>;

/// A handle to the committing thread.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: mpsc::Sender<(PendingCommit, Reply)>,
}

fn stopped() -> StoreError {
    StoreError::Refused("the commit thread has stopped; restart the collector".into())
}

impl GroupCommitter {
    /// Starts the committing thread over `store`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(store: Arc<Store>) -> std::io::Result<GroupCommitter> {
        let (tx, rx) = mpsc::channel::<(PendingCommit, Reply)>(MAX_BATCH * 4);
        std::thread::Builder::new().name(super::COMMIT_THREAD.into()).spawn(move || run(&store, rx))?;
        Ok(GroupCommitter { tx })
    }

    /// Queues `item` and waits (asynchronously) until its batch is durable.
    ///
    /// # Errors
    /// The store's error for this report, or a refusal when the committer has stopped.
    pub async fn commit_async(&self, item: PendingCommit) -> Result<Commit> {
        let (reply, answer) = oneshot::channel();
        self.tx.send((item, reply)).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| StoreError::Refused("the commit thread stopped before answering".into()))?
    }
}

fn run(store: &Store, mut rx: mpsc::Receiver<(PendingCommit, Reply)>) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (items, replies): (Vec<PendingCommit>, Vec<Reply>) = batch.into_iter().unzip();
        for (result, reply) in store.commit_batch(items).into_iter().zip(replies) {
            let _ = reply.send(result);
        }
    }
}
