//! Sizes and durations as people write them on the command line and in variables: `4G`,
//! `700M` (`--split-size`, `--max-size`, `AIRLOCK_CHUNK_SIZE`, `AIRLOCK_STREAM_OVER`), `90s`,
//! `2m`, `500ms` (`--timeout`, `AIRLOCK_TIMEOUT`), `30d` (`cache prune --older-than`); and
//! times as RFC 3339 UTC.

use crate::error::{Error, Result};
use std::time::Duration;

/// `1 image`, `2 images`: a count with its noun, singular for one.
pub fn count(n: u64, one: &str, many: &str) -> String {
    if n == 1 {
        format!("1 {one}")
    } else {
        format!("{n} {many}")
    }
}

/// Parses `4G`, `700M`, `512K`, `1T` or a plain byte count.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let m: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                'B' => 1,
                _ => return Err(Error::Usage(format!("size {s:?}: unknown suffix {c}"))),
            };
            (&t[..i], m)
        }
        _ => (t, 1),
    };
    let n: u64 = num.trim().parse().map_err(|_| {
        Error::Usage(format!(
            "size {s:?} is not a number with an optional K/M/G/T suffix"
        ))
    })?;
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| Error::Usage(format!("size {s:?} is out of range")))
}

/// Parses a duration for `--timeout`: `90`, `90s`, `2m`, `500ms`, `1h`.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 60, 90s, 2m, 500ms)"))?;
    let secs = match unit.trim() {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {s:?} (use ms, s, m or h)"
            ))
        }
    };
    if !(secs > 0.0 && secs < 1e7) {
        return Err(format!("{s:?}: the duration must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A duration as a person reads it: `500ms`, `2s`, `90s`.
pub fn show_duration(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{}ms", d.as_millis())
    } else if d.subsec_millis() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{:.1}s", d.as_secs_f64())
    }
}

/// Parses an age: `30d`, `12h`, `90m`, `45s`.
pub fn parse_age(s: &str) -> Result<Duration> {
    let t = s.trim();
    if let Some(days) = t.strip_suffix('d') {
        let n: u64 = days
            .parse()
            .map_err(|_| Error::Usage(format!("{s:?} is not an age (e.g. 30d, 12h)")))?;
        return Ok(Duration::from_secs(n * 86_400));
    }
    parse_duration(t).map_err(Error::Usage)
}

/// RFC 3339 UTC from seconds since the epoch.
pub fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_singular_for_one_only() {
        assert_eq!(count(0, "image", "images"), "0 images");
        assert_eq!(count(1, "image", "images"), "1 image");
        assert_eq!(count(2, "entry", "entries"), "2 entries");
    }

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_764_374_400), "2025-11-29T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4G").unwrap(), 4 << 30);
        assert_eq!(parse_size("700m").unwrap(), 700 << 20);
        assert_eq!(parse_size("1234").unwrap(), 1234);
        assert!(parse_size("4X").is_err());
        assert!(parse_size("0").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("0").is_err());
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("3d").is_err());
        assert_eq!(show_duration(Duration::from_millis(250)), "250ms");
        assert_eq!(show_duration(Duration::from_secs(90)), "90s");
    }

    #[test]
    fn ages() {
        assert_eq!(
            parse_age("30d").expect("30d"),
            Duration::from_secs(30 * 86_400)
        );
        assert_eq!(
            parse_age("12h").expect("12h"),
            Duration::from_secs(12 * 3600)
        );
        assert!(parse_age("soon").is_err());
    }
}
