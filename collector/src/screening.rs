//! Restricted-party screening: import OFAC's SDN CSV (legacy `sdn.csv`), the trade.gov Consolidated
//! Screening List (CSV by header, or JSON), or an operator's own list, and match names against them in
//! a way that survives case, punctuation, diacritics, legal suffixes, word order and aliases.

use std::collections::BTreeSet;

use serde::Serialize;

/// Largest list file read.
pub const MAX_LIST_BYTES: u64 = 256 * 1024 * 1024;

/// One listed party.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The list it comes from.
    pub list: String,
    /// The list's own id for it.
    pub source_id: String,
    /// Primary name.
    pub name: String,
    /// All names (primary first), normalised to token sets.
    names: Vec<(String, BTreeSet<String>)>,
}

/// A match, as `screen check` prints it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Match {
    /// The listed name (or alias) that matched.
    pub matched_name: String,
    /// The list.
    pub list: String,
    /// 0 to 1.
    pub score: f64,
    /// The list's id of the entry.
    pub source_id: String,
    /// The entry's primary name.
    pub primary_name: String,
}

/// A list file that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("list {file}: {reason}")]
pub struct ListError {
    /// The file.
    pub file: String,
    /// What is wrong, with the line where known.
    pub reason: String,
}

const LEGAL_SUFFIXES: &[&str] = &[
    "co",
    "company",
    "corp",
    "corporation",
    "inc",
    "incorporated",
    "ltd",
    "limited",
    "llc",
    "llp",
    "lp",
    "plc",
    "gmbh",
    "ag",
    "sa",
    "sas",
    "sarl",
    "srl",
    "spa",
    "bv",
    "nv",
    "oy",
    "ab",
    "as",
    "kk",
    "pte",
    "pvt",
    "private",
    "jsc",
    "ojsc",
    "pjsc",
    "cjsc",
    "ooo",
    "zao",
    "oao",
    "group",
    "holdings",
    "holding",
];
const CJK_SUFFIXES: &[&str] = &["股份有限公司", "有限责任公司", "有限公司", "集团"];

fn fold(c: char) -> char {
    match c {
        'à' | 'á' | 'â' | 'ã' | 'ä' | 'å' | 'ā' => 'a',
        'ç' | 'č' | 'ć' => 'c',
        'è' | 'é' | 'ê' | 'ë' | 'ē' | 'ė' | 'ę' => 'e',
        'ì' | 'í' | 'î' | 'ï' | 'ī' => 'i',
        'ñ' | 'ń' => 'n',
        'ò' | 'ó' | 'ô' | 'õ' | 'ö' | 'ø' | 'ō' => 'o',
        'ù' | 'ú' | 'û' | 'ü' | 'ū' => 'u',
        'ý' | 'ÿ' => 'y',
        'š' | 'ś' | 'ş' => 's',
        'ž' | 'ź' | 'ż' => 'z',
        'ł' => 'l',
        'ğ' => 'g',
        'ı' => 'i',
        other => other,
    }
}

/// Normalises a name to its set of significant tokens.
pub fn tokens(name: &str) -> BTreeSet<String> {
    let mut s = name.to_lowercase();
    for suffix in CJK_SUFFIXES {
        s = s.replace(suffix, " ");
    }
    // Dots and apostrophes join (S.A. is SA, O'Brien is OBrien); other punctuation separates.
    let folded: String = s
        .chars()
        .filter(|c| !matches!(c, '.' | '\'' | '’'))
        .map(fold)
        .map(|c| if c.is_alphanumeric() { c } else { ' ' })
        .collect();
    let all: Vec<&str> = folded.split_whitespace().collect();
    let kept: BTreeSet<String> = all.iter().filter(|t| !LEGAL_SUFFIXES.contains(t)).map(|t| t.to_string()).collect();
    if kept.is_empty() { all.into_iter().map(str::to_string).collect() } else { kept }
}

/// Levenshtein distance, bounded to short tokens.
fn distance(a: &str, b: &str) -> usize {
    let (a, b): (Vec<char>, Vec<char>) = (a.chars().collect(), b.chars().collect());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            cur[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

fn token_match(a: &str, b: &str) -> bool {
    if a == b {
        return true;
    }
    let longest = a.chars().count().max(b.chars().count());
    // One typo per five letters, for tokens long enough to carry it.
    longest >= 5 && a.len() < 64 && b.len() < 64 && distance(a, b) * 5 <= longest
}

/// Similarity of two token sets (0 to 1): matched tokens (exact or one typo per five letters) over the
/// tokens of both, order-free.
pub fn score(query: &BTreeSet<String>, name: &BTreeSet<String>) -> f64 {
    if query.is_empty() || name.is_empty() {
        return 0.0;
    }
    if query == name {
        return 1.0;
    }
    let matched = query.iter().filter(|q| name.iter().any(|n| token_match(q, n))).count();
    let matched_back = name.iter().filter(|n| query.iter().any(|q| token_match(q, n))).count();
    (matched + matched_back) as f64 / (query.len() + name.len()) as f64 * 0.99
}

impl Entry {
    fn new(list: &str, source_id: String, name: String, aliases: Vec<String>) -> Entry {
        let mut names = vec![(name.clone(), tokens(&name))];
        for a in aliases {
            if !a.trim().is_empty() {
                let t = tokens(&a);
                names.push((a, t));
            }
        }
        Entry { list: list.to_string(), source_id, name, names }
    }
}

/// Splits CSV text into records (RFC 4180: quoted fields, doubled quotes, CRLF or LF).
pub fn csv_records(text: &str) -> Vec<Vec<String>> {
    let mut records = Vec::new();
    let mut record = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (true, '"') if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            (true, '"') => quoted = false,
            (true, c) => field.push(c),
            (false, '"') if field.is_empty() => quoted = true,
            (false, ',') => record.push(std::mem::take(&mut field)),
            (false, '\r') => {}
            (false, '\n') => {
                record.push(std::mem::take(&mut field));
                records.push(std::mem::take(&mut record));
            }
            (false, c) => field.push(c),
        }
    }
    if !field.is_empty() || !record.is_empty() {
        record.push(field);
        records.push(record);
    }
    records
}

fn clean(v: &str) -> String {
    let t = v.trim();
    if t == "-0-" { String::new() } else { t.to_string() }
}

/// Aliases OFAC writes into the remarks: `a.k.a. 'NAME'`, `f.k.a.`, `n.k.a.`.
fn remark_aliases(remarks: &str) -> Vec<String> {
    let mut out = Vec::new();
    for marker in ["a.k.a. '", "f.k.a. '", "n.k.a. '"] {
        let mut rest = remarks;
        while let Some(i) = rest.find(marker) {
            rest = &rest[i + marker.len()..];
            if let Some(end) = rest.find('\'') {
                out.push(rest[..end].to_string());
                rest = &rest[end..];
            }
        }
    }
    out
}

/// Parses a list file; the format is detected from its content.
///
/// # Errors
/// [`ListError`] naming the file and line for unusable content.
pub fn parse(file: &str, bytes: &[u8]) -> Result<Vec<Entry>, ListError> {
    let err = |reason: String| ListError { file: file.to_string(), reason };
    // OFAC's files are Latin-1; valid UTF-8 (the CSL) is taken as such.
    let text: String = match std::str::from_utf8(bytes) {
        Ok(t) => t.to_string(),
        Err(_) => bytes.iter().map(|&b| b as char).collect(),
    };
    let text = text.trim_start_matches('\u{feff}').trim_end_matches(['\u{1a}', '\n', '\r', ' ']);
    if text.is_empty() {
        return Err(err("the file is empty".into()));
    }
    let base = std::path::Path::new(file).file_name().map_or(file.to_string(), |n| n.to_string_lossy().into_owned());
    if text.starts_with('{') || text.starts_with('[') {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| err(format!("JSON: {e}")))?;
        let results = v
            .get("results")
            .or(Some(&v))
            .and_then(|r| r.as_array())
            .ok_or_else(|| err("JSON without a results array".into()))?;
        let mut out = Vec::with_capacity(results.len());
        for (i, r) in results.iter().enumerate() {
            let name = r["name"].as_str().ok_or_else(|| err(format!("results[{i}] has no name")))?;
            let aliases = match &r["alt_names"] {
                serde_json::Value::Array(a) => a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect(),
                serde_json::Value::String(s) => s.split(';').map(|x| x.trim().to_string()).collect(),
                _ => Vec::new(),
            };
            let list = r["source"].as_str().map_or_else(|| base.clone(), str::to_string);
            let id = r["entity_number"].as_str().or(r["id"].as_str()).or(r["_id"].as_str()).unwrap_or_default();
            out.push(Entry::new(&list, id.to_string(), name.to_string(), aliases));
        }
        return Ok(out);
    }
    let records = csv_records(text);
    let header: Vec<String> =
        records.first().map(|h| h.iter().map(|c| c.trim().to_ascii_lowercase()).collect()).unwrap_or_default();
    let col = |n: &str| header.iter().position(|h| h == n);
    if let (Some(name_i), Some(source_i)) = (col("name"), col("source")) {
        // The Consolidated Screening List: columns by header, several values joined by "; ".
        let (alt_i, id_i) = (col("alt_names"), col("entity_number").or(col("_id")));
        return records[1..]
            .iter()
            .enumerate()
            .filter(|(_, r)| !(r.len() == 1 && r[0].trim().is_empty()))
            .map(|(i, r)| {
                let name = r
                    .get(name_i)
                    .map(|s| clean(s))
                    .filter(|s| !s.is_empty())
                    .ok_or_else(|| err(format!("line {}: no name", i + 2)))?;
                let aliases = alt_i
                    .and_then(|a| r.get(a))
                    .map(|s| s.split(';').map(|x| x.trim().to_string()).collect())
                    .unwrap_or_default();
                let list = r.get(source_i).map(|s| clean(s)).unwrap_or_default();
                Ok(Entry::new(&list, id_i.and_then(|x| r.get(x)).map(|s| clean(s)).unwrap_or_default(), name, aliases))
            })
            .collect();
    }
    if let Some(name_i) = col("name") {
        // An operator's list: name[,aliases separated by ";"][,...].
        let alt_i = col("aliases");
        return Ok(records[1..]
            .iter()
            .filter_map(|r| {
                let name = clean(r.get(name_i)?);
                (!name.is_empty()).then(|| {
                    let aliases = alt_i
                        .and_then(|a| r.get(a))
                        .map(|s| s.split(';').map(|x| x.trim().to_string()).collect())
                        .unwrap_or_default();
                    Entry::new(&base, name.clone(), name, aliases)
                })
            })
            .collect());
    }
    // OFAC legacy sdn.csv: no header; ent_num, SDN_Name, SDN_Type, Program, ..., Remarks (12 columns).
    let mut out = Vec::with_capacity(records.len());
    for (i, r) in records.iter().enumerate() {
        if r.len() == 1 && r[0].trim().is_empty() {
            continue;
        }
        if r.len() != 12 || r[0].trim().parse::<u64>().is_err() {
            return Err(err(format!(
                "line {}: not a recognised list format (OFAC sdn.csv rows have 12 columns starting with a number; CSL and operator lists need a header with `name`)",
                i + 1
            )));
        }
        out.push(Entry::new("OFAC SDN", r[0].trim().to_string(), clean(&r[1]), remark_aliases(&r[11])));
    }
    Ok(out)
}

/// Screens `name` against entries; matches at or above `threshold`, best first (one per entry).
pub fn check(name: &str, entries: &[Entry], threshold: f64) -> Vec<Match> {
    let q = tokens(name);
    let mut out: Vec<Match> = entries
        .iter()
        .filter_map(|e| {
            let (matched, s) = e.names.iter().map(|(n, t)| (n, score(&q, t))).max_by(|a, b| a.1.total_cmp(&b.1))?;
            (s >= threshold).then(|| Match {
                matched_name: matched.clone(),
                list: e.list.clone(),
                score: (s * 1000.0).round() / 1000.0,
                source_id: e.source_id.clone(),
                primary_name: e.name.clone(),
            })
        })
        .collect();
    out.sort_by(|a, b| b.score.total_cmp(&a.score).then_with(|| a.matched_name.cmp(&b.matched_name)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sdn() -> Vec<Entry> {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("test-data/lists/ofac_sdn_2024-05-03.csv");
        let bytes = std::fs::read(&path).expect("collector/test-data/lists/ofac_sdn_2024-05-03.csv");
        parse("ofac_sdn_2024-05-03.csv", &bytes).expect("parse SDN")
    }

    #[test]
    fn imports_the_real_sdn_file() {
        let entries = sdn();
        assert_eq!(entries.len(), 14_965);
        assert_eq!(entries[0].name, "AEROCARIBBEAN AIRLINES");
        let bnc = entries.iter().find(|e| e.source_id == "306").expect("BNC");
        assert!(bnc.names.iter().any(|(n, _)| n == "BNC"), "a.k.a. from remarks");
    }

    #[test]
    fn matches_survive_spelling_variants_and_clean_names_match_nothing() {
        let entries = sdn();
        for variant in [
            "Banco Nacional de Cuba",
            "banco nacional de cuba S.A.",
            "CUBA, BANCO NACIONAL DE",
            "Banco Naciónal de Cuba",
            "Banco Nacionl de Cuba",
        ] {
            let m = check(variant, &entries, 0.8);
            assert!(m.first().is_some_and(|m| m.source_id == "306"), "{variant}: {m:?}");
        }
        assert!(check("Anthropic PBC", &entries, 0.8).is_empty());
        assert!(check("Acme AI Cloud Services Ltd", &entries, 0.8).is_empty());
    }

    #[test]
    fn csl_csv_by_header_and_json() {
        let csv = "_id,source,entity_number,type,programs,name,title,addresses,federal_register_notice,start_date,end_date,standard_order,license_requirement,license_policy,call_sign,vessel_type,gross_tonnage,gross_registered_tonnage,vessel_flag,vessel_owner,remarks,source_list_url,alt_names,citizenships,dates_of_birth,nationalities,places_of_birth,source_information_url,ids\n\
abc1,Entity List (EL) - Bureau of Industry and Security,,Entity,,\"Beijing Zhipu Huazhang Technology Co., Ltd.\",,\"Beijing, CN\",90 FR 4617,2025-01-16,,,,,,,,,,,,,Zhipu AI; Knowledge Atlas Technology Joint Stock Co. Ltd.,,,,,,\n";
        let e = parse("csl.csv", csv.as_bytes()).expect("csl");
        assert_eq!(e.len(), 1);
        let m = check("ZHIPU AI", &e, 0.8);
        assert_eq!(m[0].list, "Entity List (EL) - Bureau of Industry and Security");
        assert_eq!(m[0].matched_name, "Zhipu AI");
        assert_eq!(check("Beijing Zhipu Huazhang Technology Company Limited", &e, 0.8).len(), 1);
        assert_eq!(check("北京智谱华章科技有限公司", &e, 0.8).len(), 0);
        let json = r#"{"results":[{"source":"Entity List (EL) - Bureau of Industry and Security","entity_number":"7","name":"Beijing Academy of Artificial Intelligence","alt_names":["BAAI"]}]}"#;
        let e = parse("csl.json", json.as_bytes()).expect("json");
        assert_eq!(check("BAAI", &e, 0.8)[0].source_id, "7");
    }

    #[test]
    fn hostile_lists_are_refused_with_a_line() {
        assert!(parse("x.csv", b"").is_err());
        let e = parse("x.csv", b"1,\"A\",x\n").expect_err("wrong width");
        assert!(e.to_string().contains("line 1"), "{e}");
        assert!(parse("x.json", b"{\"results\": [{\"noname\": 1}]}").is_err());
        assert!(parse("x.json", b"{").is_err());
        let ok = parse("mine.csv", "name,aliases\nEvil Corp,EC; E Corp\n".as_bytes()).expect("operator list");
        assert_eq!(check("E Corp", &ok, 0.8)[0].primary_name, "Evil Corp");
    }
}
