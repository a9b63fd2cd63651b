//! The transparency log's sequencer, apart from the commit, as Certificate Transparency logs do it: a
//! report's commit queues its leaf (`log_queue`) under its host's row alone, and is acknowledged then
//! (durable and queued); the sequencer moves queued leaves into the log in batches, giving them dense
//! indexes, and hands the new leaves to whoever signs the new head.
//!
//! One sequencing pass is one transaction under the log's lock ([`db::Lock::Log`]): it reads the log's
//! size and the oldest queued leaves, inserts them at the next indexes and deletes exactly those queue
//! rows, so a leaf is sequenced once or (the pass failed, its replica died) not at all and still
//! queued. On PostgreSQL one replica is elected to run the passes (the session-level sequencer lock, on
//! a connection of its own, `gpuattest-sequencer-PID` in `pg_stat_activity`); when its session ends,
//! another replica takes the lock within [`ELECTION_EVERY`]. Anyone else may still run a pass (the CLI
//! does before an export): the log lock keeps passes apart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use super::*;

/// Most leaves one pass sequences.
pub const SEQUENCE_BATCH: usize = 4096;
/// How often an idle sequencer looks at the queue: the most an acknowledged report waits for its log
/// index, beside the pass itself, while the elected replica is up.
pub const SEQUENCE_EVERY: Duration = Duration::from_millis(50);
/// How often a replica that is not the sequencer asks for the lock (and the sequencer confirms it
/// still holds it): the longest the log stands still after the sequencer's replica dies.
pub const ELECTION_EVERY: Duration = Duration::from_secs(1);

/// Leaves one pass appended to the log.
#[derive(Debug, Clone, Default)]
pub struct Sequenced {
    /// The log's size before the pass (the first new leaf's 0-based index); 0 when the pass found the
    /// queue empty (it then reads nothing else).
    pub from: u64,
    /// The new leaves' hashes, in log order.
    pub leaves: Vec<[u8; 32]>,
}

impl Sequenced {
    /// The log's size after the pass.
    pub fn size(&self) -> u64 {
        self.from + self.leaves.len() as u64
    }
}

/// One sequencing pass over `db`: up to `max` queued leaves, oldest first. An empty queue costs one
/// read, no write transaction (an idle sequencer looks every [`SEQUENCE_EVERY`]).
pub(super) fn sequence_on(db: &mut Db, max: usize) -> Result<Sequenced> {
    // By the primary key: a plain `LIMIT 1` scanned the table from its start, through every row the
    // passes before had dequeued and PostgreSQL had not yet vacuumed (0.26 ms a look under load).
    let queued = db
        .row("SELECT id FROM log_queue ORDER BY id LIMIT 1", params![], |r| r.get::<i64>(0))
        .map_err(sql("look at the log queue"))?;
    if queued.is_none() {
        return Ok(Sequenced::default());
    }
    let mut tx = db.write_under(db::Lock::Log).map_err(sql("begin sequencing"))?;
    let from = tx
        .row("SELECT COALESCE(MAX(idx), 0) FROM log_leaves", params![], |r| r.u64(0))
        .map_err(sql("read log size"))?
        .unwrap_or_default();
    let queued: Vec<(i64, String, i64, Vec<u8>)> = tx
        .rows("SELECT id, host_id, seq, leaf_hash FROM log_queue ORDER BY id LIMIT ?1", params![max as i64], |r| {
            Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
        })
        .map_err(sql("read the log queue"))?;
    if queued.is_empty() {
        return Ok(Sequenced { from, leaves: Vec::new() });
    }
    let mut ps = Vec::with_capacity(4 * queued.len());
    for (i, (_, host, seq, leaf)) in queued.iter().enumerate() {
        ps.extend_from_slice(params![(from + 1 + i as u64) as i64, host, *seq, leaf]);
    }
    tx.defer_values("INSERT INTO log_leaves (idx, host_id, seq, leaf_hash) VALUES ", 4, "", &ps)
        .map_err(sql("append to the transparency log"))?;
    // Exactly the rows read: a leaf queued after the read (its commit raced this pass) stays queued.
    let ids: Vec<i64> = queued.iter().map(|q| q.0).collect();
    let delete = if tx.is_postgres() {
        "DELETE FROM log_queue WHERE id = ANY(ARRAY(SELECT CAST(jsonb_array_elements_text(CAST(?1 AS jsonb)) AS BIGINT)))"
    } else {
        "DELETE FROM log_queue WHERE id IN (SELECT value FROM json_each(?1))"
    };
    tx.defer(delete, params![&serde_json::to_string(&ids).unwrap_or_default()]).map_err(sql("dequeue leaves"))?;
    tx.commit().map_err(sql("commit sequencing"))?;
    let leaves = queued.into_iter().map(|(_, _, _, leaf)| leaf.try_into().unwrap_or([0u8; 32])).collect();
    Ok(Sequenced { from, leaves })
}

impl Store {
    /// Sequences everything queued now (on this process's writer connection), pass after pass; what
    /// the passes appended, in order. The CLI runs it before it reads the log or exports, so what it
    /// shows holds every report committed so far.
    ///
    /// # Errors
    /// [`StoreError::Sql`]; what earlier passes appended stays appended.
    pub fn sequence_pending(&self) -> Result<Sequenced> {
        let mut conn = self.writer();
        let mut all: Option<Sequenced> = None;
        loop {
            let pass = sequence_on(&mut conn, SEQUENCE_BATCH)?;
            let full = pass.leaves.len() == SEQUENCE_BATCH;
            match &mut all {
                Some(a) => a.leaves.extend(pass.leaves),
                None => all = Some(pass),
            }
            if !full {
                return Ok(all.unwrap_or_default());
            }
        }
    }

    /// Reports committed and not yet given a log index.
    ///
    /// # Errors
    /// [`StoreError::Sql`].
    pub fn unsequenced(&self) -> Result<u64> {
        self.reader()
            .row("SELECT COUNT(*) FROM log_queue", params![], |r| r.u64(0))
            .map_err(sql("count the log queue"))
            .map(Option::unwrap_or_default)
    }
}

/// What the sequencer calls after each pass that appended leaves (signing the new head).
pub type OnSequenced = Box<dyn FnMut(&Sequenced) + Send>;

/// The running sequencer of one collector; stops (its connection closing, so its election is
/// released) when dropped.
pub struct Sequencer {
    stop: Arc<AtomicBool>,
    leader: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sequencer {
    /// Starts the sequencing thread over `store`.
    ///
    /// # Errors
    /// When the thread cannot be spawned.
    pub fn start(store: Arc<Store>, mut on_sequenced: OnSequenced) -> std::io::Result<Sequencer> {
        let stop = Arc::new(AtomicBool::new(false));
        let leader = Arc::new(AtomicBool::new(false));
        let (s, l) = (stop.clone(), leader.clone());
        let thread = std::thread::Builder::new()
            .name(super::SEQUENCER_THREAD.into())
            .spawn(move || run(&store, &s, &l, &mut on_sequenced))?;
        Ok(Sequencer { stop, leader, thread: Some(thread) })
    }

    /// This collector is the store's elected sequencer now.
    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::Relaxed)
    }
}

impl Drop for Sequencer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

fn run(store: &Store, stop: &AtomicBool, leader: &AtomicBool, on_sequenced: &mut OnSequenced) {
    // PostgreSQL: a connection of its own, holding the election; SQLite: the store's writer.
    let mut own: Option<Db> = None;
    let mut elected_at: Option<Instant> = None;
    while !stop.load(Ordering::Relaxed) {
        let pass = if matches!(store.location(), Location::Postgres(_)) {
            if own.is_none() {
                let name = format!("gpuattest-sequencer-{}", std::process::id());
                match store.writer().another(&name) {
                    Some(Ok(db)) => own = Some(db),
                    Some(Err(e)) => tracing::warn!(error = %e, "the sequencer cannot connect; will retry"),
                    None => {}
                }
            }
            let Some(db) = own.as_mut() else {
                std::thread::park_timeout(ELECTION_EVERY);
                continue;
            };
            if elected_at.is_none_or(|at| at.elapsed() >= ELECTION_EVERY) {
                let was = leader.load(Ordering::Relaxed);
                let now = db.hold_sequencer_lock().unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "the sequencer's election query failed; will retry");
                    false
                });
                if now != was {
                    if now {
                        tracing::info!("this replica is now the transparency log's sequencer");
                    } else {
                        tracing::warn!("this replica is no longer the transparency log's sequencer");
                    }
                }
                leader.store(now, Ordering::Relaxed);
                elected_at = Some(Instant::now());
            }
            if !leader.load(Ordering::Relaxed) {
                std::thread::park_timeout(ELECTION_EVERY);
                continue;
            }
            sequence_on(db, SEQUENCE_BATCH)
        } else {
            leader.store(true, Ordering::Relaxed);
            sequence_on(&mut store.writer(), SEQUENCE_BATCH)
        };
        match pass {
            Ok(p) if !p.leaves.is_empty() => {
                let full = p.leaves.len() == SEQUENCE_BATCH;
                on_sequenced(&p);
                if full {
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => {
                // Ask again before the next pass: a lost connection may have lost the election too.
                tracing::warn!(error = %e, "a sequencing pass failed; its leaves stay queued");
                elected_at = None;
            }
        }
        std::thread::park_timeout(SEQUENCE_EVERY);
    }
}
