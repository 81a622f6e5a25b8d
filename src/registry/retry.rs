//! The one retry layer: which answers are worth another try, how long to wait (capped,
//! jittered exponential back-off, or the registry's `Retry-After` in seconds or as an HTTP
//! date), and how many tries an operation gets. Requests retry here; a transfer (an upload or
//! a download, which resumes) is one operation with the same budget, never a loop in a loop.

use reqwest::StatusCode;
use std::time::{Duration, SystemTime};

/// Retry policy for requests and transfers.
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    /// Tries per operation (the first one included).
    pub attempts: u32,
    /// The first back-off; each further one doubles, up to `max_delay`.
    pub first_delay: Duration,
    pub max_delay: Duration,
    /// The longest `Retry-After` we honour.
    pub max_retry_after: Duration,
    /// The idle limit: no byte moved in either direction for this long is a stall.
    pub idle_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 5,
            first_delay: Duration::from_millis(500),
            max_delay: Duration::from_secs(20),
            max_retry_after: Duration::from_secs(60),
            idle_timeout: super::transport::DEFAULT_IDLE_TIMEOUT,
        }
    }
}

impl RetryPolicy {
    /// How long to wait after failed try number `failed` (1, 2, …): the registry's
    /// `Retry-After` when it gave one (capped), else `first_delay · 2^(failed-1)` capped at
    /// `max_delay`, with "equal jitter" (between half and all of it) so that many clients
    /// do not come back at the same instant.
    pub fn backoff(&self, failed: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(ra) = retry_after {
            return ra.min(self.max_retry_after);
        }
        let exp = self
            .first_delay
            .saturating_mul(2u32.saturating_pow(failed.saturating_sub(1).min(20)))
            .min(self.max_delay);
        let half = exp / 2;
        half + half.mul_f64(jitter())
    }
}

/// The tries left to one operation (a request, an upload, a download with its resumes):
/// every failure that may pass spends one, and waits its back-off before the next.
pub struct Budget {
    policy: RetryPolicy,
    failures: u32,
    /// The furthest its transfer has got (see [`reached`](Self::reached)).
    furthest: u64,
}

impl Budget {
    pub fn new(policy: &RetryPolicy) -> Budget {
        Budget {
            policy: policy.clone(),
            failures: 0,
            furthest: 0,
        }
    }

    /// Spends a try on a failure that may pass: waits the back-off and returns true when
    /// another try is allowed, false when the budget is spent.
    pub async fn again(&mut self, retry_after: Option<Duration>) -> bool {
        self.failures += 1;
        if self.failures >= self.policy.attempts.max(1) {
            return false;
        }
        tokio::time::sleep(self.policy.backoff(self.failures, retry_after)).await;
        true
    }

    /// Where a transfer stands at a failure (bytes that stay: a download's, an upload's the
    /// registry holds). Past the furthest it had got, it starts its count again: the budget is
    /// for failures in a row, so a long transfer on a link that drops now and then goes on as
    /// long as each try gets somewhere, and one that gets nowhere (or must start over from the
    /// first byte, and has not passed where it was) still ends.
    pub fn reached(&mut self, at: u64) {
        if at > self.furthest {
            self.furthest = at;
            self.failures = 0;
        }
    }

    /// Tries that failed (in a row, for a transfer that moves forward).
    pub fn failures(&self) -> u32 {
        self.failures
    }
}

/// A number in [0, 1) that differs between calls and processes.
fn jitter() -> f64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
        ^ (std::process::id() as u64).rotate_left(32);
    let mut x = STATE.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed) ^ seed;
    // splitmix64
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64
}

/// Answers worth another try: 408, 429 and the 5xx that mean "not now".
pub fn retryable_status(s: StatusCode) -> bool {
    s == StatusCode::TOO_MANY_REQUESTS
        || s == StatusCode::REQUEST_TIMEOUT
        || matches!(s.as_u16(), 500 | 502 | 503 | 504)
}

/// `Retry-After`: delay-seconds or an HTTP date (RFC 9110), as a wait from now.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = parse_http_date(v)?;
    Some(
        at.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

/// Parses the IMF-fixdate form of an HTTP date (`Sun, 06 Nov 1994 08:49:37 GMT`), the only
/// form a sender may generate.
fn parse_http_date(s: &str) -> Option<SystemTime> {
    let rest = s.split_once(", ")?.1;
    let parts: Vec<&str> = rest.split(' ').collect();
    if parts.len() != 5 || parts[4] != "GMT" {
        return None;
    }
    let day: u64 = parts[0].parse().ok()?;
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let month = MONTHS.iter().position(|m| *m == parts[1])? as u64 + 1;
    let year: u64 = parts[2].parse().ok()?;
    let hms: Vec<u64> = parts[3]
        .split(':')
        .map(|p| p.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 || !(1..=31).contains(&day) || year < 1970 || hms[0] > 23 || hms[1] > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2];
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = RetryPolicy {
            first_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(1),
            ..Default::default()
        };
        for failed in 1..=10 {
            let full = (Duration::from_millis(100) * 2u32.pow(failed - 1)).min(p.max_delay);
            let d = p.backoff(failed, None);
            assert!(
                d >= full / 2 && d <= full,
                "try {failed}: {d:?} vs {full:?}"
            );
        }
        let many: std::collections::HashSet<u128> =
            (0..20).map(|_| p.backoff(3, None).as_micros()).collect();
        assert!(many.len() > 1, "no jitter: {many:?}");
    }

    #[test]
    fn retry_after_is_honoured_and_capped() {
        let p = RetryPolicy::default();
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            p.backoff(1, Some(Duration::from_secs(3600))),
            p.max_retry_after
        );
    }

    #[test]
    fn retry_after_in_seconds_and_as_a_date() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777))
        );
        // A date in the past means "now".
        assert_eq!(
            parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT"),
            Some(Duration::ZERO)
        );
        let in_a_minute = SystemTime::now() + Duration::from_secs(60);
        let secs = in_a_minute
            .duration_since(SystemTime::UNIX_EPOCH)
            .expect("after 1970")
            .as_secs();
        let (days, rem) = (secs / 86_400, secs % 86_400);
        // 1970-01-01 was a Thursday.
        let wd = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"][(days % 7) as usize];
        let date = civil(days);
        let header = format!(
            "{wd}, {:02} {} {} {:02}:{:02}:{:02} GMT",
            date.2,
            ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
                [date.1 as usize - 1],
            date.0,
            rem / 3600,
            rem % 3600 / 60,
            rem % 60
        );
        let d = parse_retry_after(&header).expect("parses");
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(60),
            "{header}: {d:?}"
        );
        assert_eq!(parse_retry_after("soon"), None);
        assert_eq!(parse_retry_after("Sun, 06 Nov 1994 08:49:37 CET"), None);
    }

    /// (year, month, day) of a day count since 1970-01-01.
    fn civil(z: u64) -> (u64, u64, u64) {
        let z = z + 719_468;
        let era = z / 146_097;
        let doe = z - era * 146_097;
        let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
        let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
        let mp = (5 * doy + 2) / 153;
        let d = doy - (153 * mp + 2) / 5 + 1;
        let m = if mp < 10 { mp + 3 } else { mp - 9 };
        (yoe + era * 400 + u64::from(m <= 2), m, d)
    }
}
