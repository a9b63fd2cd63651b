//! Not the collector: what the binary's `demo` and `bench` commands and the tests run around it.
//!
//! - [`demo`]: the whole system on one machine (a collector, agents on the simulated NVML, workloads).
//! - [`bench`]: the end-to-end ingest benchmark beside the signature-verification ceiling.
//! - [`scratch`]: PostgreSQL schemas of their own, dropped afterwards (for `bench --database` and tests).
//! - [`cli`]: the `demo` and `bench` commands over them.
//!
//! The boundary runs one way: these modules use the collector's public API (and the store's `db`
//! layer, for scratch schemas), and no module of the collector imports them; `main.rs` dispatches to
//! them. The test below reads the sources and fails on an import from the production side.

pub mod bench;
pub mod cli;
pub mod demo;
pub mod scratch;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read src") {
            let path = entry.expect("entry").path();
            if path.is_dir() {
                sources(&path, out);
            } else if path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }

    #[test]
    fn no_production_module_imports_the_tools() {
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
        let mut files = Vec::new();
        sources(&src, &mut files);
        let mut offenders = Vec::new();
        for path in &files {
            let rel = path.strip_prefix(&src).expect("under src");
            // The tools themselves, the binary's dispatch, and test-only files may use them.
            if rel.starts_with("tools") || rel == Path::new("main.rs") || rel.ends_with("tests.rs") {
                continue;
            }
            let text = std::fs::read_to_string(path).expect("read source");
            // Inline test modules come last in a file; only what precedes them is production code.
            let production = text.split("#[cfg(test)]").next().unwrap_or_default();
            if production.contains("tools::") || production.contains("mod tools") && rel != Path::new("lib.rs") {
                offenders.push(rel.display().to_string());
            }
        }
        assert!(files.len() > 40, "the walk found the collector's sources ({})", files.len());
        assert!(offenders.is_empty(), "production modules import the tools: {offenders:?}");
    }
}
