//! UTC calendar arithmetic for the ledger and budgets: days (`YYYY-MM-DD`, the ledger's
//! grouping key) and months (a budget's period), from Unix seconds. No time zones: every day
//! and month is UTC.

use std::fmt;

/// A UTC calendar day.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Day {
    pub year: i32,
    pub month: u32,
    pub day: u32,
}

const SECONDS_PER_DAY: i64 = 86_400;

impl Day {
    /// The day containing the Unix time `secs`.
    pub fn of_unix(secs: i64) -> Self {
        let (year, month, day) = civil_from_days(secs.div_euclid(SECONDS_PER_DAY));
        Self { year, month, day }
    }

    /// Unix seconds of this day's first instant.
    pub fn start_unix(self) -> i64 {
        days_from_civil(self.year, self.month, self.day) * SECONDS_PER_DAY
    }

    /// The first day of this day's month.
    pub fn month_start(self) -> Self {
        Self { day: 1, ..self }
    }

    /// The first day of the next month.
    pub fn next_month_start(self) -> Self {
        if self.month == 12 {
            Self {
                year: self.year + 1,
                month: 1,
                day: 1,
            }
        } else {
            Self {
                month: self.month + 1,
                day: 1,
                ..self
            }
        }
    }

    /// `YYYY-MM`.
    pub fn month_label(self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    /// Parses `YYYY-MM-DD` (a real date).
    pub fn parse(text: &str) -> Option<Self> {
        let mut parts = text.splitn(3, '-');
        let year: i32 = parts.next()?.parse().ok()?;
        let month: u32 = parts.next()?.parse().ok()?;
        let day: u32 = parts.next()?.parse().ok()?;
        if text.len() != 10 || !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        let parsed = Self { year, month, day };
        // A day past the month's end (02-30) comes back as another date.
        (Self::of_unix(parsed.start_unix()) == parsed).then_some(parsed)
    }
}

impl fmt::Display for Day {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}-{:02}", self.year, self.month, self.day)
    }
}

/// Where `secs` falls in its UTC month: 0 at the month's first instant, approaching 1 at its
/// end.
pub fn month_fraction(secs: i64) -> f64 {
    let day = Day::of_unix(secs);
    let start = day.month_start().start_unix();
    let end = day.next_month_start().start_unix();
    (secs - start) as f64 / (end - start) as f64
}

/// Unix seconds at fraction `fraction` (clamped to 0..=1) of the month containing `secs`.
pub fn month_instant(secs: i64, fraction: f64) -> i64 {
    let day = Day::of_unix(secs);
    let start = day.month_start().start_unix();
    let end = day.next_month_start().start_unix();
    start + ((end - start) as f64 * fraction.clamp(0.0, 1.0)).ceil() as i64
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
pub fn rfc3339(secs: i64) -> String {
    let day = Day::of_unix(secs);
    let in_day = secs - day.start_unix();
    format!(
        "{day}T{:02}:{:02}:{:02}Z",
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

// Howard Hinnant's algorithms (http://howardhinnant.github.io/date_algorithms.html).
fn civil_from_days(z: i64) -> (i32, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y as i32, m, d)
}

fn days_from_civil(y: i32, m: u32, d: u32) -> i64 {
    let y = i64::from(y) - i64::from(m <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_round_trip_and_known_dates() {
        assert_eq!(Day::of_unix(0).to_string(), "1970-01-01");
        // 2026-11-23T08:00:00Z
        assert_eq!(Day::of_unix(1_795_420_800).to_string(), "2026-11-23");
        assert_eq!(rfc3339(1_795_420_800 + 3661), "2026-11-23T09:01:01Z");
        for days in [-800_000_i64, -1, 0, 59, 60, 11_016, 20_000, 2_932_896] {
            let d = Day::of_unix(days * SECONDS_PER_DAY);
            assert_eq!(d.start_unix(), days * SECONDS_PER_DAY, "{d}");
            assert_eq!(Day::parse(&d.to_string()), Some(d).filter(|d| d.year >= 0));
        }
        assert_eq!(Day::parse("2024-02-29").map(|d| d.day), Some(29));
        assert_eq!(Day::parse("2023-02-29"), None);
        assert_eq!(Day::parse("2023-13-01"), None);
        assert_eq!(Day::parse("2023-1-01"), None);
        assert_eq!(Day::parse("yesterday"), None);
    }

    #[test]
    fn month_fraction_runs_from_zero_to_one() {
        let nov = Day::parse("2026-11-01").unwrap().start_unix();
        assert_eq!(month_fraction(nov), 0.0);
        // Half of November's 30 days.
        assert!((month_fraction(nov + 15 * SECONDS_PER_DAY) - 0.5).abs() < 1e-12);
        assert_eq!(month_fraction(nov + 30 * SECONDS_PER_DAY), 0.0); // December 1st
        assert_eq!(month_instant(nov + 100, 0.5), nov + 15 * SECONDS_PER_DAY);
        let dec = Day::parse("2026-12-31").unwrap();
        assert_eq!(dec.next_month_start().to_string(), "2027-01-01");
        assert_eq!(dec.month_label(), "2026-12");
    }
}
