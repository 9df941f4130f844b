//! Time as a parameter: a [`Clock`] is injected wherever "now" matters, and FHIR date/dateTime/instant
//! values are turned into half-open-free inclusive millisecond ranges for searching.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use time::{Date, Month, OffsetDateTime, PrimitiveDateTime, Time, UtcOffset};

/// Source of the current time. Production uses [`SystemClock`]; tests use [`ManualClock`].
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// Now.
    fn now(&self) -> OffsetDateTime;
}

/// A clock shared by the server's parts.
pub type SharedClock = Arc<dyn Clock>;

/// The system's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)]
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// A clock that moves only when told to.
#[derive(Debug)]
pub struct ManualClock {
    unix_ms: AtomicI64,
}

impl ManualClock {
    /// A clock standing at `start`.
    pub fn new(start: OffsetDateTime) -> Self {
        Self { unix_ms: AtomicI64::new((start.unix_timestamp_nanos() / 1_000_000) as i64) }
    }
    /// Moves the clock forward.
    pub fn advance(&self, by: time::Duration) {
        self.unix_ms.fetch_add(by.whole_milliseconds() as i64, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> OffsetDateTime {
        from_unix_ms(self.unix_ms.load(Ordering::SeqCst))
    }
}

/// An instant in Unix milliseconds.
pub fn unix_ms(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000_000) as i64
}

/// The instant of Unix milliseconds `ms`.
pub fn from_unix_ms(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(ms as i128 * 1_000_000).unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Formats an instant as FHIR `instant` with millisecond precision in UTC, e.g. `2024-01-02T03:04:05.678Z`.
pub fn format_instant(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z", t.year(), t.month() as u8, t.day(), t.hour(), t.minute(), t.second(), t.millisecond())
}

/// RFC 7231 HTTP-date, for `Last-Modified`.
pub fn format_http_date(t: OffsetDateTime) -> String {
    let t = t.to_offset(UtcOffset::UTC);
    const DAYS: [&str; 7] = ["Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun"];
    const MONTHS: [&str; 12] = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        DAYS[t.weekday().number_days_from_monday() as usize],
        t.day(),
        MONTHS[t.month() as usize - 1],
        t.year(),
        t.hour(),
        t.minute(),
        t.second()
    )
}

/// An inclusive range of Unix milliseconds that a (possibly partial) FHIR date value covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsRange {
    /// The first millisecond (Unix ms).
    pub lo: i64,
    /// The last millisecond (Unix ms).
    pub hi: i64,
}

/// The earliest instant FHIR dates reach (0001-01-01).
pub const MIN_MS: i64 = -62_135_596_800_000; // 0001-01-01
/// The latest instant FHIR dates reach (9999-12-31T23:59:59.999).
pub const MAX_MS: i64 = 253_402_300_799_999; // 9999-12-31T23:59:59.999

/// Parses FHIR `date`, `dateTime` or `instant` (`YYYY`, `YYYY-MM`, `YYYY-MM-DD`, `YYYY-MM-DDThh:mm(:ss(.sss))(Z|±hh:mm)`)
/// into the range of instants it denotes. Values without a zone are taken as UTC.
pub fn parse_date_range(s: &str) -> Option<MsRange> {
    let s = s.trim();
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i32> {
        let part = s.get(r)?;
        if part.bytes().all(|c| c.is_ascii_digit()) { part.parse().ok() } else { None }
    };
    let year = num(0..4)?;
    if s.len() == 4 {
        let lo = date_ms(year, 1, 1)?;
        let hi = date_ms(year + 1, 1, 1)? - 1;
        return Some(MsRange { lo, hi });
    }
    if b.get(4) != Some(&b'-') {
        return None;
    }
    let month = num(5..7)?;
    if s.len() == 7 {
        let lo = date_ms(year, month as u8, 1)?;
        let (ny, nm) = if month == 12 { (year + 1, 1) } else { (year, month + 1) };
        let hi = date_ms(ny, nm as u8, 1)? - 1;
        return Some(MsRange { lo, hi });
    }
    if b.get(7) != Some(&b'-') {
        return None;
    }
    let day = num(8..10)?;
    let date = Date::from_calendar_date(year, Month::try_from(month as u8).ok()?, day as u8).ok()?;
    if s.len() == 10 {
        let lo = unix_ms(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc());
        return Some(MsRange { lo, hi: lo + 86_400_000 - 1 });
    }
    if b.get(10) != Some(&b'T') {
        return None;
    }
    let hour = num(11..13)?;
    if b.get(13) != Some(&b':') {
        return None;
    }
    let minute = num(14..16)?;
    let mut pos = 16;
    let mut second = 0;
    let mut millis = 0i64;
    let mut precision_ms = 60_000i64;
    if b.get(pos) == Some(&b':') {
        second = num(17..19)?;
        pos = 19;
        precision_ms = 1000;
        if b.get(pos) == Some(&b'.') {
            let start = pos + 1;
            let mut end = start;
            while end < b.len() && b[end].is_ascii_digit() {
                end += 1;
            }
            if end == start {
                return None;
            }
            let frac = &s[start..end];
            let digits = frac.len().min(3);
            millis = frac[..digits].parse::<i64>().ok()? * 10i64.pow(3 - digits as u32);
            precision_ms = if frac.len() >= 3 { 1 } else { 10i64.pow(3 - digits as u32) };
            pos = end;
        }
    }
    let offset_secs: i64 = match &s[pos..] {
        "" | "Z" => 0,
        z if z.len() == 6 && (z.starts_with('+') || z.starts_with('-')) && z.as_bytes()[3] == b':' => {
            let h: i64 = z[1..3].parse().ok()?;
            let m: i64 = z[4..6].parse().ok()?;
            let v = h * 3600 + m * 60;
            if z.starts_with('-') { -v } else { v }
        }
        _ => return None,
    };
    let time = Time::from_hms(hour as u8, minute as u8, second as u8).ok()?;
    let lo = unix_ms(PrimitiveDateTime::new(date, time).assume_utc()) + millis - offset_secs * 1000;
    Some(MsRange { lo, hi: lo + precision_ms - 1 })
}

fn date_ms(year: i32, month: u8, day: u8) -> Option<i64> {
    let date = Date::from_calendar_date(year, Month::try_from(month).ok()?, day).ok()?;
    Some(unix_ms(PrimitiveDateTime::new(date, Time::MIDNIGHT).assume_utc()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partial_dates_are_ranges() {
        let y = parse_date_range("2020").unwrap();
        assert_eq!(format_instant(from_unix_ms(y.lo)), "2020-01-01T00:00:00.000Z");
        assert_eq!(format_instant(from_unix_ms(y.hi)), "2020-12-31T23:59:59.999Z");
        let m = parse_date_range("2020-02").unwrap();
        assert_eq!(format_instant(from_unix_ms(m.hi)), "2020-02-29T23:59:59.999Z");
        let d = parse_date_range("2020-02-03").unwrap();
        assert_eq!(d.hi - d.lo, 86_400_000 - 1);
    }

    #[test]
    fn date_times_with_zones() {
        let a = parse_date_range("2020-02-03T10:00:00+02:00").unwrap();
        let b = parse_date_range("2020-02-03T08:00:00Z").unwrap();
        assert_eq!(a, b);
        let ms = parse_date_range("2020-02-03T08:00:00.123Z").unwrap();
        assert_eq!(ms.lo, b.lo + 123);
        assert_eq!(ms.hi, ms.lo);
        let minute = parse_date_range("2020-02-03T08:00").unwrap();
        assert_eq!(minute.hi - minute.lo, 59_999);
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["", "20", "2020-13", "2020-02-30", "2020/01/01", "2020-01-01T25:00:00Z", "2020-01-01T10:00:00+0200", "abcd"] {
            assert!(parse_date_range(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn http_date() {
        let t = parse_date_range("1994-11-06T08:49:37Z").unwrap();
        assert_eq!(format_http_date(from_unix_ms(t.lo)), "Sun, 06 Nov 1994 08:49:37 GMT");
    }
}
