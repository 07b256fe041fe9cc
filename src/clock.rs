//! Wall-clock time as the broker sees it.
//!
//! Token lifetimes are epoch seconds (`expires_on`), so freshness is decided against the wall
//! clock. The broker takes a `Clock` so unit tests can move time by hand; production uses
//! `SystemClock`. Waiting (backoff sleeps) uses tokio's timer, which tests pause instead.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of the current time in whole seconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    /// Seconds since 1970-01-01T00:00:00Z.
    fn now(&self) -> u64;
}

/// The system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            // A clock before 1970 is a broken host; treating it as the epoch keeps every
            // token "expired", which fails safe (we fetch instead of serving stale tokens).
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to; for tests.
#[derive(Debug, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    /// Starts at `now` epoch seconds.
    pub fn new(now: u64) -> Self {
        Self(Arc::new(AtomicU64::new(now)))
    }

    /// Moves time forward.
    pub fn advance(&self, secs: u64) {
        self.0.fetch_add(secs, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// The proleptic Gregorian `(year, month, day)` of day `days` after 1970-01-01 (Howard
/// Hinnant's `civil_from_days`, for days on or after the epoch). For timestamps in logs and
/// `cache list`, without a date-time crate.
pub fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let day_of_era = z % 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * month_index + 2) / 5 + 1;
    let month = if month_index < 10 { month_index + 3 } else { month_index - 9 };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Writes epoch second `seconds` as RFC 3339 in UTC: `2026-11-29T12:00:00Z`, or with `micros`
/// `2026-11-29T12:00:00.904784Z`. The one date formatter of the program (log lines, `cache
/// list`, names of files moved aside). Digit by digit into a fixed buffer, because every log
/// line starts with one and `write!` with padded arguments costs more than the rest of the
/// line's fixed members together. A year past 9999 (a forged cache file's expiry) is written
/// in full rather than cut to four digits.
pub fn write_rfc3339(out: &mut impl fmt::Write, seconds: u64, micros: Option<u32>) -> fmt::Result {
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    let (hour, minute, second) = (second_of_day / 3600, second_of_day / 60 % 60, second_of_day % 60);
    if year > 9999 {
        write!(out, "{year}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}")?;
        if let Some(micros) = micros {
            write!(out, ".{micros:06}")?;
        }
        return out.write_char('Z');
    }
    let mut text = *b"0000-00-00T00:00:00.000000Z";
    put_digits(&mut text[0..4], year);
    put_digits(&mut text[5..7], month);
    put_digits(&mut text[8..10], day);
    put_digits(&mut text[11..13], hour);
    put_digits(&mut text[14..16], minute);
    put_digits(&mut text[17..19], second);
    let text = match micros {
        Some(micros) => {
            put_digits(&mut text[20..26], u64::from(micros));
            &text[..]
        }
        None => {
            text[19] = b'Z';
            &text[..20]
        }
    };
    out.write_str(std::str::from_utf8(text).expect("only ASCII digits and separators"))
}

/// [`write_rfc3339`] to a string, without fractional seconds.
pub fn rfc3339(seconds: u64) -> String {
    let mut text = String::with_capacity(20);
    write_rfc3339(&mut text, seconds, None).expect("writing to a String cannot fail");
    text
}

/// The day number since 1970-01-01 of a proleptic Gregorian date on or after the epoch (the
/// inverse of [`civil_from_days`], Howard Hinnant's `days_from_civil`).
pub fn days_from_civil(year: u64, month: u64, day: u64) -> u64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year / 400;
    let year_of_era = year - era * 400;
    let month_index = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * month_index + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    (era * 146_097 + day_of_era).saturating_sub(719_468)
}

/// Epoch seconds of an RFC 3339 date-time (`2026-11-29T12:00:00Z`, `2026-11-29T13:00:00+01:00`,
/// fractional seconds dropped), as developer tools print expiry times. `None` for anything
/// else, including dates before 1970.
pub fn parse_rfc3339(text: &str) -> Option<u64> {
    let text = text.trim().as_bytes();
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        let digits = text.get(range)?;
        digits.iter().all(u8::is_ascii_digit).then(|| digits.iter().fold(0, |n, d| n * 10 + u64::from(d - b'0')))
    };
    let separators = [(4, b'-'), (7, b'-'), (13, b':'), (16, b':')];
    if separators.iter().any(|&(at, byte)| text.get(at) != Some(&byte)) || !matches!(text.get(10), Some(b'T' | b't')) {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    if year < 1970 || !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let digits = fraction.iter().take_while(|b| b.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        rest = &fraction[digits..];
    }
    let local = days_from_civil(year, month, day) * 86_400 + hour * 3600 + minute * 60 + second;
    match rest {
        b"Z" | b"z" => Some(local),
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            if ![h1, h2, m1, m2].iter().all(|b| b.is_ascii_digit()) {
                return None;
            }
            let hours = u64::from(h1 - b'0') * 10 + u64::from(h2 - b'0');
            let minutes = u64::from(m1 - b'0') * 10 + u64::from(m2 - b'0');
            let offset = hours * 3600 + minutes * 60;
            if *sign == b'+' { local.checked_sub(offset) } else { Some(local + offset) }
        }
        _ => None,
    }
}

/// Writes the last `digits.len()` decimal digits of `value`, zero-padded, into `digits`.
fn put_digits(digits: &mut [u8], mut value: u64) {
    for digit in digits.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
}

#[cfg(test)]
mod civil_tests {
    use proptest::prelude::*;

    use super::{civil_from_days, rfc3339, write_rfc3339};

    #[test]
    fn parses_rfc3339_with_offsets_and_fractions() {
        use super::parse_rfc3339;
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2038-01-18T00:00:00Z"), Some(2_147_385_600));
        assert_eq!(parse_rfc3339("2038-01-18T01:30:00+01:30"), Some(2_147_385_600));
        assert_eq!(parse_rfc3339("2038-01-17T19:00:00.123456789-05:00"), Some(2_147_385_600));
        for bad in [
            "",
            "2038-01-18",
            "2038-01-18 00:00:00Z",
            "2038-01-18T00:00:00",
            "1969-12-31T23:59:59Z",
            "2038-13-18T00:00:00Z",
            "2038-01-18T00:00:00+0100",
            "2038-01-18T00:00:00.Z",
            "2038-01-18T00:00:00Zjunk",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn known_days() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_786), (2026, 11, 29));
    }

    #[test]
    fn formats_rfc3339_utc() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_764_417_600), "2025-11-29T12:00:00Z");
        let mut text = String::new();
        write_rfc3339(&mut text, 1_795_968_258, Some(904_784)).unwrap();
        assert_eq!(text, "2026-11-29T16:04:18.904784Z");
        let mut text = String::new();
        write_rfc3339(&mut text, 0, Some(7)).unwrap();
        assert_eq!(text, "1970-01-01T00:00:00.000007Z");
        assert!(rfc3339(u64::MAX).starts_with("584554051223-"), "{}", rfc3339(u64::MAX));
        assert_eq!(rfc3339(253_402_300_799), "9999-12-31T23:59:59Z");
        assert_eq!(rfc3339(253_402_300_800), "10000-01-01T00:00:00Z");
    }

    proptest! {
        #[test]
        fn parsing_reads_back_what_is_written(seconds in 0u64..253_402_300_799) {
            prop_assert_eq!(super::parse_rfc3339(&rfc3339(seconds)), Some(seconds));
        }

        #[test]
        fn the_inverse_gives_the_day_back(days in 0u64..200_000) {
            let (year, month, day) = civil_from_days(days);
            prop_assert_eq!(super::days_from_civil(year, month, day), days);
            prop_assert!((1..=12).contains(&month) && (1..=31).contains(&day));
        }
    }
}
