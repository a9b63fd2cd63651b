//! Text forms shared by both sides' command lines and config files: durations such as `500ms`, `10s`,
//! `5m`, `1h`, `7d`, points in time such as `2026-11-28T10:00:00Z`, and sizes such as `64KiB`, `256MiB`.
//! Each parser takes outside text (flags, config files, query strings) and has a fuzz target
//! (`agent/fuzz`, `units`).

use std::time::Duration;

/// Parses `500ms`, `10s`, `5m`, `2h`, `7d` (a bare number is seconds).
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
        "d" => n.checked_mul(86_400_000),
        _ => {
            return Err(format!(
                "`{}` has unknown unit `{}`; use ms, s, m, h or d",
                s.escape_debug(),
                unit.escape_debug()
            ));
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

/// Parses a period bound: RFC 3339 (`2026-11-28T10:00:00Z`), a date (`2026-11-28`), or a duration
/// before now (`24h`, `7d`). Outside text: every byte is checked before it is read as a number, and
/// nothing is sliced where a character could be split.
///
/// # Errors
/// A sentence with the accepted forms.
pub fn parse_time(s: &str, now: i64) -> Result<i64, String> {
    if let Ok(d) = parse_duration(s) {
        return Ok(now.saturating_sub(d.as_millis().min(i64::MAX as u128) as i64));
    }
    // Shown with escapes, so a hostile value cannot forge log or terminal output.
    let bad = || {
        format!(
            "`{}` is not a time; write 2026-11-28, 2026-11-28T10:00:00Z or a duration before now like 24h",
            s.chars().take(64).collect::<String>().escape_debug()
        )
    };
    // Byte-wise over ASCII only: no slicing of outside text at a position that may split a character.
    let b = s.as_bytes();
    if !s.is_ascii() || !(b.len() == 10 || (b.len() >= 20 && b.len() <= 30)) {
        return Err(bad());
    }
    let num = |from: usize, len: usize| -> Option<i64> {
        let digits = b.get(from..from + len)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    let (Some(y), Some(m), Some(day)) = (num(0, 4), num(5, 2), num(8, 2)) else { return Err(bad()) };
    if !sep(4, b'-') || !sep(7, b'-') {
        return Err(bad());
    }
    let (mut hh, mut mm, mut ss, mut ms) = (0, 0, 0, 0);
    if b.len() > 10 {
        if !sep(10, b'T') || !sep(13, b':') || !sep(16, b':') || b.last() != Some(&b'Z') {
            return Err(bad());
        }
        let (Some(h), Some(mi), Some(se)) = (num(11, 2), num(14, 2), num(17, 2)) else { return Err(bad()) };
        (hh, mm, ss) = (h, mi, se);
        let frac = &b[19..b.len() - 1];
        match frac.split_first() {
            None => {}
            Some((b'.', digits)) if !digits.is_empty() && digits.iter().all(u8::is_ascii_digit) => {
                ms = digits.iter().take(3).fold(0i64, |n, d| n * 10 + i64::from(d - b'0'))
                    * [100, 10, 1][digits.len().min(3) - 1];
            }
            _ => return Err(bad()),
        }
    }
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if !(1..=12).contains(&m) || day < 1 || day > month_days[(m - 1) as usize] || hh > 23 || mm > 59 || ss > 60 {
        return Err(bad());
    }
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok(((days * 86_400 + hh * 3600 + mm * 60 + ss) * 1000) + ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(parse_time("1970-01-01", 0), Ok(0));
        assert_eq!(parse_time("2026-11-28T22:33:54.123Z", 0), Ok(1_795_905_234_123));
        assert_eq!(parse_time("2000-02-29T00:00:00Z", 0), Ok(951_782_400_000));
        assert_eq!(parse_time("24h", 100_000_000), Ok(100_000_000 - 86_400_000));
        assert_eq!(parse_time("2026-11-28T22:33:54.1Z", 0), Ok(1_795_905_234_100));
        assert_eq!(parse_time("2026-11-28T22:33:54Z", 0), Ok(1_795_905_234_000));
        for bad in ["", "2026-13-01", "yesterday", "2026-11-28T25:00:00Z", "2026-11-28T10:00:00", "2026-02-30"] {
            assert!(parse_time(bad, 0).is_err(), "{bad}");
        }
    }

    #[test]
    fn finding_8_hostile_times_are_refused_without_a_panic() {
        for bad in [
            "2026-01-01T00:00:00.a\u{20ac}Z",
            "2026-01-01T00:00:00.\u{20ac}Z",
            "\u{20ac}\u{20ac}\u{20ac}-01-01",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.12x4Z",
            "+026-01-01",
            "2026-1-01T00:00:00Z",
            "2026-01-01T00:00:00\u{0}Z",
            "99999999999999999999999h",
        ] {
            let e = parse_time(bad, 0).expect_err(bad);
            assert!(!e.contains('\n') && e.len() < 300, "{e}");
        }
        // Every prefix of a valid time, cut at any byte, is refused or parsed, never a panic.
        let s = "2026-11-28T22:33:54.123Z";
        for i in 0..s.len() {
            let _ = parse_time(&s[..i], 0);
        }
    }

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
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        for bad in ["", "s", "10x", "-1s", "1.5s", "99999999999999999999h", "18446744073709551615h"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }
}
