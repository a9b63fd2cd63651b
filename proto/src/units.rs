//! Text forms shared by both sides' command lines and config files: durations such as `500ms`, `10s`,
//! `5m`, `1h`, and sizes such as `64KiB`, `256MiB`.

use std::time::Duration;

/// Parses `500ms`, `10s`, `5m`, `2h` (a bare number is seconds).
///
/// # Errors
/// A sentence saying what form is expected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a duration; write it like 500ms, 10s, 5m or 1h"))?;
    let ms = match unit {
        "ms" => Some(n),
        "" | "s" => n.checked_mul(1000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        _ => {
            return Err(format!("`{s}` has unknown unit `{unit}`; use ms, s, m or h"));
        }
    };
    ms.map(Duration::from_millis).ok_or_else(|| format!("`{s}` is too long"))
}

/// Parses `64KiB`, `256MiB`, `2GiB` or a bare number of bytes.
///
/// # Errors
/// A sentence saying what form is expected.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("`{s}` is not a size; write it like 64KiB, 256MiB or 2GiB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" | "KB" => 1 << 10,
        "MiB" | "M" | "MB" => 1 << 20,
        "GiB" | "G" | "GB" => 1 << 30,
        other => return Err(format!("`{s}` has unknown unit `{other}`; use KiB, MiB or GiB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("`{s}` is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64KiB"), Ok(65_536));
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("10"), Ok(10));
        for bad in ["", "MiB", "1.5GiB", "5TB", "99999999999999999999GiB", "-1K"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn forms() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        for bad in ["", "s", "10x", "-1s", "1.5s", "99999999999999999999h", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
