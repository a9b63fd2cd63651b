//! The store: hosts, tokens, signed reports (verbatim, beside their decoded fields), flags and the audit
//! log. The embedded default is SQLite in `--data DIR`; `--database postgres://...` shares one PostgreSQL
//! database between collector replicas. Both have the same versioned, append-only migrations (one file
//! per version and backend) and run the same SQL through [`db::Db`].
//!
//! Every write that belongs together happens in one transaction: a report, its decoded rows, the host's
//! new sequence position, its queued log leaf and the flags it raised commit together or not at all, so
//! a rejected or failed report never changes what is stored. A report's transaction locks its host's
//! row, not the store: replicas commit different hosts' reports in parallel, and the transparency log
//! is sequenced apart (`sequencer`).
//!
//! # Rooms
//! - [`open`](self::open): opening either backend, migrations, backups, the checkpoint thread.
//! - `hosts`, `tokens`: enrollment, keys, revocation; tokens by hash.
//! - `commit`: a report (or a group of them) in one transaction; `jobs`, `evidence`: what a commit
//!   accounts beside the report.
//! - `flags`, `audit`: flags and reviewers' decisions; who did what.
//! - `log`, `reports`: the transparency log's storage; stored reports as evidence (verify, export).
//! - `sequencer`: the log's indexes, assigned in batches apart from the commit (one elected replica).
//! - `review`, `location`: what the review page and the location verdicts read.
//! - [`db`]: one SQL dialect over SQLite and PostgreSQL; `group`: the group committer.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use gpuattest_proto::pb;
use serde::Serialize;

use crate::timefmt::rfc3339;
use crate::verify::SigningKey;

/// Membership in a JSON array of keys (jobs, GPU UUIDs), passed as parameter ?1 and expanded by each
/// backend's JSON functions, so one statement serves any number of keys. On PostgreSQL the array is
/// made once (`= ANY(ARRAY(..))`), which the planner answers from the key's index at any table size:
/// written as `IN (SELECT ..)`, the prepared plan scanned whole tables while they were small, every
/// dead row version of them included (3,370 scans of `gpu_locations` in 15 s of the benchmark).
macro_rules! keys_in {
    (sqlite) => {
        " IN (SELECT value FROM json_each(?1))"
    };
    (pg) => {
        " = ANY(ARRAY(SELECT jsonb_array_elements_text(CAST(?1 AS jsonb))))"
    };
}

mod account;
mod audit;
mod commit;
pub mod db;
mod evidence;
mod flags;
pub(crate) mod generations;
mod group;
mod hosts;
mod jobs;
mod location;
mod log;
mod open;
pub mod pgtls;
mod reports;
mod review;
mod rows;
mod sequencer;
mod sightings;
mod tokens;
// The rooms' public types keep their `crate::store::` paths; their private helpers are shared among
// the rooms through these globs.
pub use audit::*;
pub use commit::*;
pub use evidence::{GpuEvidenceState, HostEvidence, MovedDevice};
pub use flags::*;
pub use group::{GroupCommitter, MAX_BATCH};
pub use hosts::*;
pub use jobs::{CommitContext, MovedGpu};
pub use location::{LandmarkRow, Measurement, Site, kind as measurement_kind};
pub use log::*;
pub use open::*;
pub use reports::*;
pub use review::{ReportCheck, ReportRef, TimelinePoint};
pub use sequencer::{ELECTION_EVERY, OnSequenced, SEQUENCE_BATCH, SEQUENCE_EVERY, Sequenced, Sequencer};
pub use tokens::*;

use db::{Db, DbError, Row, params};

/// The names of the threads the store starts (`/proc` shows each cut to 15 bytes): the group commit,
/// the log's sequencer, the write-ahead-log checkpointer and a PostgreSQL connection's. `bench` sums
/// their CPU as the store's.
pub const THREAD_NAMES: [&str; 4] = [COMMIT_THREAD, SEQUENCER_THREAD, CHECKPOINT_THREAD, PG_THREAD];
const COMMIT_THREAD: &str = "gpuattest-commit";
const SEQUENCER_THREAD: &str = "gpuattest-sequencer";
const CHECKPOINT_THREAD: &str = "gpuattest-checkpoint";
const PG_THREAD: &str = "gpuattest-pg";

/// Store failures.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened or created.
    #[error("cannot open the store at {path}: {source}; check --data (env GPUATTEST_DATA) and its permissions")]
    Open {
        /// The database path.
        path: PathBuf,
        /// The backend's error.
        source: DbError,
    },
    /// The shared database could not be reached.
    #[error(
        "cannot connect to the shared store {url}: {source}; check --database (env GPUATTEST_DATABASE), that PostgreSQL is up and that the user may connect"
    )]
    Connect {
        /// The URL, without its password.
        url: String,
        /// The backend's error.
        source: DbError,
    },
    /// The `--database` URL is not one this build takes.
    #[error("--database {url}: {reason}")]
    BadUrl {
        /// The URL, without its password.
        url: String,
        /// Why.
        reason: String,
    },
    /// The database was written by a newer gpuattest.
    #[error(
        "the store at {path} has schema version {found}, newer than this collector knows ({known}); upgrade gpuattest-collector"
    )]
    TooNew {
        /// The database path or URL.
        path: PathBuf,
        /// Its version.
        found: i64,
        /// The newest this build knows.
        known: i64,
    },
    /// A query failed.
    #[error("store: {what}: {source}")]
    Sql {
        /// What was being done.
        what: &'static str,
        /// The backend's error.
        source: DbError,
    },
    /// An enrollment was refused.
    #[error("{0}")]
    Refused(String),
}

/// Result alias for store operations.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

fn sql(what: &'static str) -> impl FnOnce(DbError) -> StoreError {
    move |source| StoreError::Sql { what, source }
}

impl From<DbError> for StoreError {
    fn from(source: DbError) -> Self {
        StoreError::Sql { what: "store", source }
    }
}

/// Read-only connections per store (PostgreSQL: per replica, beside its one writing connection).
pub const READERS: usize = 4;

/// The store, on either backend.
pub struct Store {
    /// Writes, and reads inside write transactions.
    conn: Mutex<Db>,
    /// Reads outside transactions (the review UI, the API, exports): [`READERS`] read-only
    /// connections, so they do not queue behind the group commit, and one long read (an export) does
    /// not hold up the others. They see committed data only.
    readers: Vec<Mutex<Db>>,
    /// Where a read waits when every reader is busy.
    next_reader: std::sync::atomic::AtomicUsize,
    location: Location,
    /// Stops the embedded store's checkpoint thread when the store is dropped.
    checkpointer: Option<Checkpointer>,
    /// The embedded store's accounting state as the last commit left it (see [`account::Running`]).
    /// Locked only while `conn` is held.
    running: Mutex<account::Running>,
    /// PostgreSQL: job keys this replica saw committed with a row (see [`account::KnownJobs`]).
    /// Locked only while `conn` is held.
    known_jobs: Mutex<account::KnownJobs>,
    /// Counts the times `conn` was taken for anything but a report commit: such a write may change
    /// what [`account::Running`] holds, so it is then read again.
    generation: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("location", &self.location).finish()
    }
}

impl Store {
    fn conn(&self) -> std::sync::MutexGuard<'_, Db> {
        let conn = self.writer();
        // Counted once held, so a commit holding the connection sees every earlier taker's count.
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        conn
    }

    /// The writing connection, for a report commit (which keeps [`account::Running`] up to date itself)
    /// and for writes that never touch the accounting tables: the transparency log's sequencer, its
    /// subtrees and heads. Everything else takes [`Store::conn`].
    fn writer(&self) -> std::sync::MutexGuard<'_, Db> {
        self.conn.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn running(&self) -> std::sync::MutexGuard<'_, account::Running> {
        self.running.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn known_jobs(&self) -> std::sync::MutexGuard<'_, account::KnownJobs> {
        self.known_jobs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A free reader, or (all busy) the next one in turn, waited for.
    fn reader(&self) -> std::sync::MutexGuard<'_, Db> {
        use std::sync::TryLockError;
        for r in &self.readers {
            match r.try_lock() {
                Ok(g) => return g,
                Err(TryLockError::Poisoned(p)) => return p.into_inner(),
                Err(TryLockError::WouldBlock) => {}
            }
        }
        let i = self.next_reader.fetch_add(1, std::sync::atomic::Ordering::Relaxed) % self.readers.len();
        self.readers[i].lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Where the store is.
    pub fn location(&self) -> &Location {
        &self.location
    }
}

#[cfg(test)]
mod tests;
