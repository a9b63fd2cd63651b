//! `policy evaluate-model` and restricted-party screening: `screen check`, `screen bench`.

use super::*;

/// `policy evaluate-model FILE|-`: the registry's verdict on a fingerprint.
///
/// # Errors
/// Usage errors for an unreadable or non-JSON fingerprint.
pub fn evaluate_model(at: &Place, file: &str, json: bool) -> Result {
    let policy = Policy::load_from_data(&at.data).map_err(config)?;
    let text = if file == "-" {
        let mut buf = Vec::new();
        std::io::Read::read_to_end(&mut std::io::Read::take(std::io::stdin(), 16 << 20), &mut buf)
            .map_err(|e| usage(format!("stdin: {e}")))?;
        buf
    } else {
        read_bounded_text(Path::new(file), "fingerprint")?
    };
    let fp: serde_json::Value = serde_json::from_slice(&text).map_err(|e| {
        usage(format!("{file}: not a JSON fingerprint ({e}); use `gpuattest-agent fingerprint PATH --json`"))
    })?;
    if !fp.is_object() {
        return Err(usage(format!("{file}: a fingerprint is a JSON object")));
    }
    let v = policy.evaluate_model(&fp);
    if json {
        return print_json(&v);
    }
    let mut text = format!(
        "family      {}\ndeveloper   {} ({})\nrestricted  {}\nseverity    {}\nconfidence  {:.2}\n",
        v.family,
        v.developer.as_deref().unwrap_or("?"),
        v.developer_country.as_deref().unwrap_or("?"),
        v.restricted,
        v.severity.as_str(),
        v.confidence
    );
    for r in &v.reasons {
        text.push_str(&format!("  - {r}\n"));
    }
    out(&text)
}

/// `screen bench --list FILE`: list import and name-check times (medians), for the sizing notes.
///
/// # Errors
/// Usage errors for an unreadable or malformed list.
pub fn screen_bench(list: &Path, iterations: u32) -> Result {
    let bytes = read_bounded_text(list, "list")?;
    let iterations = iterations.max(1);
    let median = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let mut import = Vec::new();
    let mut entries = Vec::new();
    for _ in 0..iterations {
        let t = std::time::Instant::now();
        entries = crate::screening::parse(&list.display().to_string(), &bytes).map_err(usage)?;
        import.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let names = ["Boyle Chemical Company Limited", "Acme AI, Inc.", "HUAWEI TECHNOLOGIES CO LTD", "Zhang Lei"];
    let mut check = Vec::new();
    for _ in 0..iterations {
        for n in names {
            let t = std::time::Instant::now();
            let _ = crate::screening::check(n, &entries, 0.8);
            check.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    print_json(&serde_json::json!({
        "list": list.display().to_string(),
        "bytes": bytes.len(),
        "entries": entries.len(),
        "iterations": iterations,
        "import_ms_median": median(import),
        "check_ms_median": median(check),
        "build": if cfg!(debug_assertions) { "debug" } else { "release" },
    }))
}

/// `screen check NAME --list FILE...`: matches against restricted-party lists, best first.
///
/// # Errors
/// Usage errors for unreadable or malformed list files (one line naming the file and line).
pub fn screen_check(name: &str, lists: &[std::path::PathBuf], threshold: f64, json: bool) -> Result {
    if lists.is_empty() {
        return Err(usage(
            "pass at least one --list FILE (OFAC sdn.csv, the trade.gov CSL as CSV or JSON, or your own CSV with a name column)",
        ));
    }
    if !(0.0..=1.0).contains(&threshold) {
        return Err(usage("--threshold is between 0 and 1"));
    }
    let mut entries = Vec::new();
    for l in lists {
        let bytes = std::fs::metadata(l).map_err(|e| usage(format!("list {}: {e}", l.display()))).and_then(|m| {
            if m.len() > crate::screening::MAX_LIST_BYTES {
                Err(usage(format!("list {} is larger than {} bytes", l.display(), crate::screening::MAX_LIST_BYTES)))
            } else {
                std::fs::read(l).map_err(|e| usage(format!("list {}: {e}", l.display())))
            }
        })?;
        entries.extend(crate::screening::parse(&l.display().to_string(), &bytes).map_err(usage)?);
    }
    let matches = crate::screening::check(name, &entries, threshold);
    if json {
        return print_json(&matches);
    }
    if matches.is_empty() {
        return out(&format!("no match for {name:?} in {} entries\n", entries.len()));
    }
    let mut text = String::new();
    for m in &matches {
        text.push_str(&format!(
            "{:.3}  {}  [{} {}]  {}\n",
            m.score, m.matched_name, m.list, m.source_id, m.primary_name
        ));
    }
    out(&text)
}
