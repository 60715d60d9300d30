//! Times for people: `expires in 1h12m (14:03 UTC)`, `expired 5m ago
//! (13:58 UTC)`, `2h ago`. Human views (`list`'s table, the note after
//! `status`, the pond lock's holder) print these instead of Unix seconds
//! or bare RFC 3339; JSON and Crabbox's `key=value` lines keep machine
//! values. Every function takes `now` (Unix seconds) from its caller, so
//! the output is a function of its arguments.

/// A length of time in at most two units: `45s`, `5m`, `1h12m`, `3d4h`
/// (seconds are dropped from a minute on, minutes from a day on).
#[must_use]
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, m) => format!("{m}m"),
        (0, h, 0) => format!("{h}h"),
        (0, h, m) => format!("{h}h{m}m"),
        (d, 0, _) => format!("{d}d"),
        (d, h, _) => format!("{d}d{h}h"),
    }
}

/// The time of day in UTC, `14:03 UTC`, with the date in front when it is
/// not `now`'s day: `2026-12-06 14:03 UTC`.
#[must_use]
pub fn clock(at: u64, now: u64) -> String {
    let time = format!("{:02}:{:02} UTC", at / 3600 % 24, at / 60 % 60);
    if at / 86_400 == now / 86_400 {
        time
    } else {
        let (y, m, d) = civil_date(at / 86_400);
        format!("{y:04}-{m:02}-{d:02} {time}")
    }
}

/// `expires in 1h12m (14:03 UTC)`, or `expired 5m ago (13:58 UTC)` once
/// `at` is not in the future.
#[must_use]
pub fn expiry(at: u64, now: u64) -> String {
    if at > now {
        format!("expires in {} ({})", span(at - now), clock(at, now))
    } else {
        format!("expired {} ago ({})", span(now - at), clock(at, now))
    }
}

/// `2h ago` (`in 5m` for a time still to come).
#[must_use]
pub fn ago(at: u64, now: u64) -> String {
    if at > now {
        format!("in {}", span(at - now))
    } else {
        format!("{} ago", span(now - at))
    }
}

/// The proleptic Gregorian date of a day counted from 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_date(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2026-12-05T12:51:00Z.
    const NOW: u64 = 1_796_475_060;

    #[test]
    fn spans_use_at_most_two_units() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(300), "5m");
        assert_eq!(span(359), "5m");
        assert_eq!(span(3600), "1h");
        assert_eq!(span(4320), "1h12m");
        assert_eq!(span(86_400), "1d");
        assert_eq!(span(3 * 86_400 + 4 * 3600 + 59), "3d4h");
    }

    #[test]
    fn expiry_in_the_future_and_in_the_past() {
        assert_eq!(expiry(NOW + 4320, NOW), "expires in 1h12m (14:03 UTC)");
        assert_eq!(expiry(NOW - 300, NOW), "expired 5m ago (12:46 UTC)");
        assert_eq!(expiry(NOW, NOW), "expired 0s ago (12:51 UTC)");
    }

    #[test]
    fn another_day_shows_its_date() {
        assert_eq!(clock(NOW + 86_400, NOW), "2026-12-06 12:51 UTC");
        assert_eq!(clock(0, NOW), "1970-01-01 00:00 UTC");
        // A leap day, and the turn of a year.
        assert_eq!(clock(1_709_164_800, NOW), "2024-02-29 00:00 UTC");
        assert_eq!(clock(1_798_761_599, NOW), "2026-12-31 23:59 UTC");
    }

    #[test]
    fn ago_and_in() {
        assert_eq!(ago(NOW - 7200, NOW), "2h ago");
        assert_eq!(ago(NOW + 300, NOW), "in 5m");
    }
}
