//! Scratch schemas on PostgreSQL: a schema of its own, dropped afterwards, for `bench --database`
//! (which must never write into the operator's tables) and for tests, in the server named by
//! `GPUATTEST_TEST_DATABASE` (default: the local one). With `GPUATTEST_REQUIRE_POSTGRES=1` (as in
//! `.ci/run`) an unreachable server fails a test instead of skipping it.

use std::sync::atomic::{AtomicU32, Ordering};

use crate::store::db::{Db, Pg};

/// The server tests use unless `GPUATTEST_TEST_DATABASE` names another.
pub const DEFAULT_TEST_DATABASE: &str = "postgres://postgres@127.0.0.1:5432/test";

/// A schema that exists for one test; `url` reaches it (its `search_path` set in the URL).
#[derive(Debug)]
pub struct ScratchSchema {
    admin: String,
    name: String,
    /// The `--database` URL for this schema.
    pub url: String,
}

fn admin_url() -> String {
    std::env::var("GPUATTEST_TEST_DATABASE").unwrap_or_else(|_| DEFAULT_TEST_DATABASE.into())
}

fn connect(url: &str) -> Result<Db, String> {
    let config = url.parse().map_err(|e: tokio_postgres::Error| format!("{url}: {e}"))?;
    Pg::connect(config, crate::store::pgtls::Transport::Plain)
        .map(|pg| Db::Pg(Box::new(pg)))
        .map_err(|e| format!("{}: {e}", crate::store::redact_url(url)))
}

impl ScratchSchema {
    /// Creates a fresh, empty schema in the test server.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub fn create() -> Result<ScratchSchema, String> {
        Self::create_in(&admin_url(), "gpuattest_test")
    }

    /// Creates a fresh, empty schema named `<prefix>_...` in the database `url` reaches.
    ///
    /// # Errors
    /// When the server cannot be reached or refuses.
    pub fn create_in(url: &str, prefix: &str) -> Result<ScratchSchema, String> {
        static N: AtomicU32 = AtomicU32::new(0);
        let admin = url.to_string();
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
        let name =
            format!("{prefix}_{}_{}_{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000);
        let mut db = connect(&admin)?;
        db.batch(&format!("CREATE SCHEMA {name}")).map_err(|e| format!("create schema {name}: {e}"))?;
        let sep = if admin.contains('?') { '&' } else { '?' };
        let url = format!("{admin}{sep}options=-csearch_path%3D{name}");
        Ok(ScratchSchema { admin, name, url })
    }

    /// A scratch schema, or `None` (with a line on stderr) when PostgreSQL is not reachable and not
    /// required.
    ///
    /// # Panics
    /// When PostgreSQL is required (`GPUATTEST_REQUIRE_POSTGRES=1`) and cannot be used.
    pub fn or_skip(what: &str) -> Option<ScratchSchema> {
        match ScratchSchema::create() {
            Ok(s) => Some(s),
            Err(e) if std::env::var("GPUATTEST_REQUIRE_POSTGRES").is_ok_and(|v| v == "1") => {
                panic!("{what}: PostgreSQL is required (GPUATTEST_REQUIRE_POSTGRES=1) but unusable: {e}")
            }
            Err(e) => {
                eprintln!("skipping {what} on PostgreSQL: {e}");
                None
            }
        }
    }
}

impl Drop for ScratchSchema {
    fn drop(&mut self) {
        if let Ok(mut db) = connect(&self.admin) {
            let _ = db.batch(&format!("DROP SCHEMA IF EXISTS {} CASCADE", self.name));
        }
    }
}
