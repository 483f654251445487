//! [`Timestamp`]: when a record was written, in milliseconds since the Unix epoch (UTC).
//!
//! The journal stores times as integers (cheap to index and compare) and shows them as RFC 3339
//! text. The conversion is done here, without a date crate: the civil-calendar arithmetic is
//! Howard Hinnant's `days_from_civil` / `civil_from_days`, exact for the proleptic Gregorian
//! calendar.

use std::fmt;
use std::str::FromStr;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time, in whole milliseconds since 1970-01-01T00:00:00Z.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Timestamp(pub i64);

const MS_PER_DAY: i64 = 86_400_000;

impl Timestamp {
    /// The current wall-clock time.
    pub fn now() -> Self {
        let ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        Self(ms)
    }

    /// Milliseconds since the epoch.
    pub fn millis(self) -> i64 {
        self.0
    }

    /// Parses a time as a person gives it: RFC 3339 in UTC as [`Timestamp::parse`] reads it, or
    /// an age before `now` as humantime reads it (`90s`, `30m`, `2h`, `7d`, `1h 30m`). The error
    /// says which forms are accepted.
    pub fn parse_or_age(text: &str, now: Timestamp) -> Result<Self, String> {
        if let Some(t) = Self::parse(text) {
            return Ok(t);
        }
        match humantime::parse_duration(text.trim()) {
            Ok(age) => {
                let ms = i64::try_from(age.as_millis()).unwrap_or(i64::MAX);
                Ok(Timestamp(now.millis().saturating_sub(ms)))
            }
            Err(e) => Err(format!(
                "not a time (2026-11-25T10:00:00Z, 2026-11-25) or an age (90s, 30m, 2h, 7d): {e}"
            )),
        }
    }

    /// Parses `YYYY-MM-DD`, optionally followed by `THH:MM`, `:SS`, `.fff` and a `Z` (a space
    /// may stand for the `T`). Times are UTC; an explicit offset other than `Z` or `+00:00` is
    /// refused. Returns `None` for anything else.
    pub fn parse(text: &str) -> Option<Self> {
        let text = text.trim();
        let text = text
            .strip_suffix('Z')
            .or_else(|| text.strip_suffix("+00:00"))
            .unwrap_or(text);
        let (date, time) = match text.split_once(['T', ' ']) {
            Some((d, t)) => (d, Some(t)),
            None => (text, None),
        };
        let mut d = date.splitn(3, '-');
        let year: i64 = digits(d.next()?, 4)?;
        let month: u32 = digits(d.next()?, 2)?;
        let day: u32 = digits(d.next()?, 2)?;
        if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
            return None;
        }
        let mut ms = days_from_civil(year, month, day) * MS_PER_DAY;
        if let Some(time) = time {
            let (hms, frac) = match time.split_once('.') {
                Some((a, f)) => (a, Some(f)),
                None => (time, None),
            };
            let mut t = hms.split(':');
            let h: i64 = digits(t.next()?, 2)?;
            let m: i64 = digits(t.next()?, 2)?;
            let s: i64 = match t.next() {
                Some(s) => digits(s, 2)?,
                None => 0,
            };
            if t.next().is_some() || h > 23 || m > 59 || s > 60 {
                return None;
            }
            ms += ((h * 60 + m) * 60 + s) * 1000;
            if let Some(frac) = frac {
                if frac.is_empty() || !frac.bytes().all(|b| b.is_ascii_digit()) {
                    return None;
                }
                let padded = format!("{:0<3}", &frac[..frac.len().min(3)]);
                ms += padded.parse::<i64>().ok()?;
            }
        }
        Some(Self(ms))
    }
}

/// Exactly `len` ASCII digits.
fn digits<T: FromStr>(s: &str, len: usize) -> Option<T> {
    (s.len() == len && s.bytes().all(|b| b.is_ascii_digit()))
        .then(|| s.parse().ok())
        .flatten()
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = i64::from((m + 9) % 12);
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date of a day count since 1970-01-01.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

impl fmt::Display for Timestamp {
    /// RFC 3339 in UTC with milliseconds: `2026-11-25T09:30:00.000Z`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = self.0.div_euclid(MS_PER_DAY);
        let ms = self.0.rem_euclid(MS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
        let (min, rest) = (rest / 60_000, rest % 60_000);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{h:02}:{min:02}:{:02}.{:03}Z",
            rest / 1000,
            rest % 1000
        )
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Timestamp::parse(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("not an RFC 3339 UTC time: {text}")))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn a_time_is_read_as_rfc_3339_or_as_an_age_before_now() {
        let now = Timestamp(1_000_000_000);
        assert_eq!(
            Timestamp::parse_or_age("1970-01-01T00:00:01Z", now),
            Ok(Timestamp(1000))
        );
        assert_eq!(
            Timestamp::parse_or_age("2h", now),
            Ok(Timestamp(1_000_000_000 - 7_200_000))
        );
        assert_eq!(
            Timestamp::parse_or_age("1h 30m", now),
            Ok(Timestamp(1_000_000_000 - 5_400_000))
        );
        let e = Timestamp::parse_or_age("yesterday", now).unwrap_err();
        assert!(e.contains("an age (90s"), "{e}");
    }

    use super::*;

    #[test]
    fn formats_and_parses_round_trip() {
        for text in [
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
            "2026-11-25T09:30:00.123Z",
            "1969-12-31T23:59:59.000Z",
        ] {
            let t = Timestamp::parse(text).unwrap();
            assert_eq!(t.to_string(), text);
        }
        assert_eq!(Timestamp::parse("1970-01-02").unwrap().0, MS_PER_DAY);
        assert_eq!(
            Timestamp::parse("2026-11-25 10:00").unwrap(),
            Timestamp::parse("2026-11-25T10:00:00Z").unwrap()
        );
    }

    #[test]
    fn refuses_what_is_not_a_utc_time() {
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-02-30",
            "2026-1-01",
            "2026-11-25T25:00",
            "2026-11-25T10:00+02:00",
            "2026-11-25T10:00:00.",
        ] {
            assert_eq!(Timestamp::parse(bad), None, "{bad}");
        }
    }
}
