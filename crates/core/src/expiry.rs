//! When a lease expires, by Crabbox's rule (`directLeaseExpiresAtFrom`,
//! provider_labels.go:112-121): `min(last_touched_at + idle_timeout,
//! created_at + ttl)`, the ttl term only when the ttl is positive. A touch
//! (`touchDirectLeaseLabelsWithIdleTimeoutOverride`, provider_labels.go:71-110)
//! moves `last_touched_at` to now and recomputes `expires_at`, keeping every
//! other label. Every place crabbox judges expiry (the planner, `sweep`)
//! reads it through [`expires_at`], so both tools agree on it.

use std::time::Duration;

use crate::labels::{
    CREATED_AT, EXPIRES_AT, IDLE_TIMEOUT, IDLE_TIMEOUT_SECS, LAST_TOUCHED_AT, Labels, TTL_SECS,
};

/// Crabbox's default lease lifetime (config.go:2981).
pub const DEFAULT_TTL: Duration = Duration::from_secs(90 * 60);
/// Crabbox's default idle timeout (config.go:2982).
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// Legacy expiry key Crabbox's cleanup falls back to (pool.go:575-586).
const LEGACY_TTL: &str = "ttl";

/// `min(touched + idle, created + ttl)`; the ttl term only when `ttl` > 0.
#[must_use]
pub fn rule(created: u64, touched: u64, ttl: Duration, idle: Duration) -> u64 {
    let idle_end = touched.saturating_add(idle.as_secs());
    if ttl.is_zero() {
        idle_end
    } else {
        idle_end.min(created.saturating_add(ttl.as_secs()))
    }
}

/// A label time as Crabbox reads it (`parseLeaseLabelTime`,
/// provider_labels.go:123-141): positive Unix seconds, or RFC 3339.
#[must_use]
pub fn parse_time(value: &str) -> Option<u64> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<i64>() {
        return u64::try_from(secs).ok().filter(|s| *s > 0);
    }
    rfc3339_secs(value)
}

/// Unix seconds of an RFC 3339 time (`2026-12-01T10:00:00Z`, fractions and
/// `±hh:mm` offsets accepted), as Go's `time.RFC3339`/`RFC3339Nano` read it.
fn rfc3339_secs(value: &str) -> Option<u64> {
    let b = value.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = value.get(r)?;
        part.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &value[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6 && rest.as_bytes()[3] == b':' => {
            let sign = match rest.as_bytes()[0] {
                b'+' => 1,
                b'-' => -1,
                _ => return None,
            };
            let (h, m) = (num_of(&rest[1..3])?, num_of(&rest[4..6])?);
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset;
    u64::try_from(secs).ok().filter(|s| *s > 0)
}

fn num_of(text: &str) -> Option<i64> {
    text.bytes()
        .all(|c| c.is_ascii_digit())
        .then(|| text.parse().ok())?
}

/// A label duration as Crabbox reads it (`parseDurationSecondsLabel`,
/// provider_labels.go:151-170): positive integer seconds, or a duration
/// such as `30m`.
#[must_use]
pub fn parse_duration(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<i64>() {
        return u64::try_from(secs)
            .ok()
            .filter(|s| *s > 0)
            .map(Duration::from_secs);
    }
    crate::duration::parse(value).filter(|d| !d.is_zero())
}

/// When the lease expires, as Crabbox's cleanup reads it: `expires_at`,
/// else the legacy `ttl` label (pool.go:575-586); `None` when neither is a
/// time (Crabbox's cleanup then leaves the lease alone).
#[must_use]
pub fn expires_at(labels: &Labels) -> Option<u64> {
    [EXPIRES_AT, LEGACY_TTL]
        .iter()
        .filter_map(|k| labels.get(k))
        .find(|v| !v.trim().is_empty())
        .and_then(|v| parse_time(v))
}

/// Whether the lease has expired at `now` (Unix seconds).
#[must_use]
pub fn is_expired(labels: &Labels, now: u64) -> bool {
    expires_at(labels).is_some_and(|exp| exp <= now)
}

/// The labels after a touch at `now`, as Crabbox's touch writes them:
/// `created_at` kept (now when unreadable), `last_touched_at` now, the idle
/// timeout from `idle` (else the labels, else Crabbox's default), the ttl
/// from `ttl` (else the labels, else the default), both written as integer
/// seconds, `expires_at` by [`rule`]. Every other key is kept.
#[must_use]
pub fn touch(labels: &Labels, now: u64, ttl: Option<Duration>, idle: Option<Duration>) -> Labels {
    let mut next = labels.clone();
    touch_in_place(&mut next, now, ttl, idle);
    next
}

/// [`touch`] of labels the caller owns: no copy of them (a plan touches
/// every lease of the pond it projects).
pub fn touch_in_place(next: &mut Labels, now: u64, ttl: Option<Duration>, idle: Option<Duration>) {
    let created = match next.get(CREATED_AT).and_then(|v| parse_time(v)) {
        Some(created) => created,
        None => {
            next.insert(CREATED_AT.into(), compact_str::format_compact!("{now}"));
            now
        }
    };
    let stored = |k: &str| next.get(k).and_then(|v| parse_duration(v));
    let idle = idle
        .or_else(|| stored(IDLE_TIMEOUT_SECS))
        .or_else(|| stored(IDLE_TIMEOUT))
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_IDLE_TIMEOUT);
    let ttl = ttl
        .or_else(|| stored(TTL_SECS))
        .filter(|d| !d.is_zero())
        .unwrap_or(DEFAULT_TTL);
    for (k, v) in [
        (LAST_TOUCHED_AT, now),
        (IDLE_TIMEOUT, idle.as_secs()),
        (IDLE_TIMEOUT_SECS, idle.as_secs()),
        (TTL_SECS, ttl.as_secs()),
        (EXPIRES_AT, rule(created, now, ttl, idle)),
    ] {
        crate::labels::set(next, k, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    /// provider_labels.go:112-121.
    #[test]
    fn the_rule_takes_the_earlier_end() {
        let m = |n: u64| Duration::from_secs(n * 60);
        assert_eq!(rule(1000, 1000, m(90), m(30)), 1000 + 30 * 60);
        assert_eq!(rule(1000, 1000 + 80 * 60, m(90), m(30)), 1000 + 90 * 60);
        assert_eq!(rule(1000, 5000, Duration::ZERO, m(30)), 5000 + 30 * 60);
    }

    /// provider_labels.go:71-110: a touch keeps `created_at` and every other
    /// key, moves `last_touched_at`, and recomputes `expires_at`.
    #[test]
    fn a_touch_moves_the_idle_end_but_never_past_the_ttl() {
        let before = labels(&[
            ("created_at", "1000"),
            ("ttl_secs", "5400"),
            ("idle_timeout_secs", "1800"),
            ("expires_at", "2800"),
            ("pond_spec", "abc"),
        ]);
        let after = touch(&before, 2000, None, None);
        assert_eq!(after["last_touched_at"], "2000");
        assert_eq!(after["expires_at"], "3800");
        assert_eq!(after["idle_timeout"], "1800");
        assert_eq!(after["created_at"], "1000");
        assert_eq!(after["pond_spec"], "abc");
        let late = touch(&before, 6000, None, None);
        assert_eq!(late["expires_at"], "6400", "created + ttl caps it");
        // No stored values, no overrides: Crabbox's defaults (90m / 30m).
        let bare = touch(&labels(&[("created_at", "garbage")]), 100, None, None);
        assert_eq!(bare["created_at"], "100");
        assert_eq!(bare["ttl_secs"], "5400");
        assert_eq!(bare["idle_timeout_secs"], "1800");
        assert_eq!(bare["expires_at"], "1900");
        // A Go duration label is read (provider_labels.go:151-170).
        let go = touch(
            &labels(&[("created_at", "1"), ("idle_timeout", "10m")]),
            1,
            None,
            None,
        );
        assert_eq!(go["idle_timeout_secs"], "600");
    }

    /// pool.go:575-586: `expires_at`, else `ttl`; RFC 3339 is read too.
    #[test]
    fn expiry_is_read_as_crabboxs_cleanup_reads_it() {
        assert_eq!(expires_at(&labels(&[("expires_at", "2000")])), Some(2000));
        assert_eq!(
            expires_at(&labels(&[
                ("expires_at", ""),
                ("ttl", "1970-01-01T00:33:20Z")
            ])),
            Some(2000)
        );
        assert_eq!(expires_at(&labels(&[("expires_at", "soon")])), None);
        assert_eq!(parse_time("2026-12-01T10:00:00Z"), Some(1_796_119_200));
        assert_eq!(
            parse_time("2026-12-01T12:00:00.5+02:00"),
            Some(1_796_119_200)
        );
        assert_eq!(parse_time("2000-02-29T00:00:00Z"), Some(951_782_400));
        assert_eq!(parse_time("2026-12-01 10:00:00Z"), None);
        assert_eq!(parse_time("-5"), None);
        assert!(is_expired(&labels(&[("expires_at", "2000")]), 2000));
        assert!(!is_expired(&labels(&[("expires_at", "2000")]), 1999));
        assert!(!is_expired(&labels(&[]), u64::MAX));
    }
}
