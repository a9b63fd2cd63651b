//! Group commit: reports from many streams are committed together, one transaction and one fsync per
//! batch, and each is acknowledged only after its batch is durable. Under load batches grow (up to
//! [`MAX_BATCH`]); alone, a report commits at once with no added wait.

use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};

use super::{Commit, PendingCommit, Result, Store, StoreError};

/// Most reports in one transaction.
pub const MAX_BATCH: usize = 512;

type Reply = SyncSender<Result<Commit>>;

/// The committing thread's handle. Dropping every handle stops the thread once its queue is empty.
#[derive(Clone)]
pub struct GroupCommitter {
    tx: SyncSender<(PendingCommit, Reply)>,
}

impl GroupCommitter {
    /// Starts the committing thread over `store`.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(store: Arc<Store>) -> std::io::Result<GroupCommitter> {
        let (tx, rx) = sync_channel::<(PendingCommit, Reply)>(MAX_BATCH * 4);
        std::thread::Builder::new().name("gpuattest-commit".into()).spawn(move || run(&store, &rx))?;
        Ok(GroupCommitter { tx })
    }

    /// Queues a report and waits (blocking) until its batch is committed.
    ///
    /// # Errors
    /// The store's error for this report, or a refusal when the committer has stopped.
    pub fn commit(&self, item: PendingCommit) -> Result<Commit> {
        let (reply, answer) = sync_channel(1);
        self.tx
            .send((item, reply))
            .map_err(|_| StoreError::Refused("the commit thread has stopped; restart the collector".into()))?;
        answer.recv().map_err(|_| StoreError::Refused("the commit thread stopped before answering".into()))?
    }
}

fn run(store: &Store, rx: &Receiver<(PendingCommit, Reply)>) {
    while let Ok(first) = rx.recv() {
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
