//! When schedules fire: standard five-field cron expressions and fixed intervals, in UTC.
//!
//! - `MIN HOUR DAY-OF-MONTH MONTH DAY-OF-WEEK`, each `*`, a number, a range `a-b`, a step
//!   `*/n` or `a-b/n` or `a/n` (from `a` to the field's end), or a comma list of those.
//!   Months are 1-12 (or `jan`-`dec`), days of the week 0-7 with 0 and 7 Sunday (or
//!   `sun`-`sat`). As in Vixie cron, when both day fields are restricted (neither is `*`), a
//!   day matches if either does.
//! - `@yearly` (`@annually`), `@monthly`, `@weekly`, `@daily` (`@midnight`), `@hourly`.
//! - `@every N{s,m,h,d}` (e.g. `@every 30s`, at least one second): every N from the Unix
//!   epoch, so every gateway computes the same ticks.
//!
//! [`Cron::next_after`] is the first tick strictly after an instant, in Unix milliseconds.

use std::fmt;

use crate::calendar::Day;

/// A parsed schedule expression.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cron {
    /// Five fields, each the set of values it matches (bit `v` set for value `v`).
    Fields {
        minutes: u64,
        hours: u64,
        days_of_month: u64,
        months: u64,
        /// Sunday is 0 (a 7 in the expression is folded onto it).
        days_of_week: u64,
        /// Whether each day field was `*` (the Vixie rule for the two day fields).
        any_day_of_month: bool,
        any_day_of_week: bool,
    },
    /// Every this many milliseconds from the epoch.
    Every(i64),
}

/// Why an expression is not a schedule: a message naming the part that is wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CronError(pub String);

impl fmt::Display for CronError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];
const WEEKDAYS: [&str; 7] = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"];

/// One field's name, range and value names.
struct Field {
    name: &'static str,
    min: u32,
    max: u32,
    names: &'static [&'static str],
    /// The number the first name stands for.
    names_from: u32,
}

const FIELDS: [Field; 5] = [
    Field {
        name: "minute",
        min: 0,
        max: 59,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "hour",
        min: 0,
        max: 23,
        names: &[],
        names_from: 0,
    },
    Field {
        name: "day of month",
        min: 1,
        max: 31,
        names: &[],
        names_from: 1,
    },
    Field {
        name: "month",
        min: 1,
        max: 12,
        names: &MONTHS,
        names_from: 1,
    },
    Field {
        name: "day of week",
        min: 0,
        max: 7,
        names: &WEEKDAYS,
        names_from: 0,
    },
];

impl Field {
    fn value(&self, text: &str) -> Result<u32, CronError> {
        let lower = text.to_ascii_lowercase();
        if let Some(i) = self.names.iter().position(|n| *n == lower) {
            return Ok(self.names_from + i as u32);
        }
        let value: u32 = text
            .parse()
            .map_err(|_| CronError(format!("{} `{text}` is not a number", self.name)))?;
        if value < self.min || value > self.max {
            return Err(CronError(format!(
                "{} {value} is out of its range {}-{}",
                self.name, self.min, self.max
            )));
        }
        Ok(value)
    }

    /// The set of values `text` matches, and whether it was `*`.
    fn parse(&self, text: &str) -> Result<(u64, bool), CronError> {
        let mut set = 0u64;
        for item in text.split(',') {
            let (range, step) = match item.split_once('/') {
                Some((range, step)) => {
                    let step: u32 = step.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        CronError(format!(
                            "{} step `{step}` is not a number above 0",
                            self.name
                        ))
                    })?;
                    (range, step)
                }
                None => (item, 1),
            };
            let (from, to) = if range == "*" {
                (self.min, self.max)
            } else if let Some((a, b)) = range.split_once('-') {
                (self.value(a)?, self.value(b)?)
            } else {
                let a = self.value(range)?;
                // `a/n` runs from `a` to the end; a lone `a` is just `a`.
                (a, if item.contains('/') { self.max } else { a })
            };
            if from > to {
                return Err(CronError(format!(
                    "{} range `{range}` runs backwards",
                    self.name
                )));
            }
            let mut v = from;
            while v <= to {
                set |= 1 << v;
                v += step;
            }
        }
        Ok((set, text == "*"))
    }
}

impl Cron {
    pub fn parse(text: &str) -> Result<Cron, CronError> {
        let text = text.trim();
        let expanded = match text {
            "@yearly" | "@annually" => "0 0 1 1 *",
            "@monthly" => "0 0 1 * *",
            "@weekly" => "0 0 * * 0",
            "@daily" | "@midnight" => "0 0 * * *",
            "@hourly" => "0 * * * *",
            other => other,
        };
        if let Some(interval) = expanded.strip_prefix("@every") {
            return parse_every(interval.trim()).map(Cron::Every);
        }
        if expanded.starts_with('@') {
            return Err(CronError(format!(
                "`{text}`: unknown; use five fields, @hourly, @daily, @weekly, @monthly, @yearly or @every N(s|m|h|d)"
            )));
        }
        let parts: Vec<&str> = expanded.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(CronError(format!(
                "`{text}` has {} fields: a cron expression has five (minute hour day-of-month month day-of-week)",
                parts.len()
            )));
        }
        let mut sets = [(0u64, false); 5];
        for (i, (field, part)) in FIELDS.iter().zip(&parts).enumerate() {
            sets[i] = field.parse(part)?;
        }
        let mut days_of_week = sets[4].0;
        if days_of_week & (1 << 7) != 0 {
            days_of_week = (days_of_week & !(1 << 7)) | 1;
        }
        Ok(Cron::Fields {
            minutes: sets[0].0,
            hours: sets[1].0,
            days_of_month: sets[2].0,
            months: sets[3].0,
            days_of_week,
            any_day_of_month: sets[2].1,
            any_day_of_week: sets[4].1,
        })
    }

    /// The first tick strictly after `after_ms` (Unix milliseconds); `None` if the expression
    /// never fires (e.g. `0 0 31 2 *`), looked for over eight years.
    pub fn next_after(&self, after_ms: i64) -> Option<i64> {
        match *self {
            Cron::Every(every) => Some((after_ms.div_euclid(every) + 1) * every),
            Cron::Fields {
                minutes,
                hours,
                days_of_month,
                months,
                days_of_week,
                any_day_of_month,
                any_day_of_week,
            } => {
                let has = |set: u64, v: u32| set & (1 << v) != 0;
                // From the next whole minute.
                let start_minute = after_ms.div_euclid(60_000) + 1;
                let first_day = start_minute.div_euclid(1440);
                let mut minute_of_day = start_minute.rem_euclid(1440);
                for day in first_day..first_day + 8 * 366 {
                    let date = Day::of_unix(day * 86_400);
                    let weekday = (day + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
                    let dom = has(days_of_month, date.day);
                    let dow = has(days_of_week, weekday);
                    let day_matches = match (any_day_of_month, any_day_of_week) {
                        (true, true) => true,
                        (false, true) => dom,
                        (true, false) => dow,
                        (false, false) => dom || dow,
                    };
                    if has(months, date.month) && day_matches {
                        while minute_of_day < 1440 {
                            let (h, m) = ((minute_of_day / 60) as u32, (minute_of_day % 60) as u32);
                            if has(hours, h) && has(minutes, m) {
                                return Some((day * 1440 + minute_of_day) * 60_000);
                            }
                            minute_of_day += 1;
                        }
                    }
                    minute_of_day = 0;
                }
                None
            }
        }
    }
}

/// `N{s,m,h,d}`: milliseconds, at least a second.
fn parse_every(text: &str) -> Result<i64, CronError> {
    let bad = || {
        CronError(format!(
            "`@every {text}`: use a whole number and s, m, h or d, e.g. @every 30s"
        ))
    };
    let unit = text.chars().last().ok_or_else(bad)?;
    let ms = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        _ => return Err(bad()),
    };
    let n: i64 = text[..text.len() - 1].parse().map_err(|_| bad())?;
    if !(1..=366 * 86_400).contains(&n) {
        return Err(bad());
    }
    Ok(n * ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unix ms of a UTC date and time.
    fn at(y: i32, mo: u32, d: u32, h: i64, mi: i64) -> i64 {
        let day = Day::parse(&format!("{y:04}-{mo:02}-{d:02}")).unwrap();
        (day.start_unix() + h * 3600 + mi * 60) * 1000
    }

    fn next(expr: &str, after: i64) -> i64 {
        Cron::parse(expr).unwrap().next_after(after).unwrap()
    }

    #[test]
    fn fields_find_the_next_minute_that_matches() {
        let t = at(2026, 12, 5, 8, 30);
        assert_eq!(next("* * * * *", t), at(2026, 12, 5, 8, 31));
        assert_eq!(next("* * * * *", t + 59_999), at(2026, 12, 5, 8, 31));
        assert_eq!(next("*/15 * * * *", t), at(2026, 12, 5, 8, 45));
        assert_eq!(next("0 * * * *", t), at(2026, 12, 5, 9, 0));
        assert_eq!(
            next("30 8 * * *", t),
            at(2026, 12, 6, 8, 30),
            "strictly after"
        );
        assert_eq!(next("0 0 1 * *", t), at(2027, 1, 1, 0, 0));
        assert_eq!(next("0 9-17/4 * * *", t), at(2026, 12, 5, 9, 0));
        assert_eq!(next("5,10 12 * * *", t), at(2026, 12, 5, 12, 5));
        assert_eq!(next("0 0 29 2 *", t), at(2028, 2, 29, 0, 0), "leap day");
        assert_eq!(next("@hourly", t), at(2026, 12, 5, 9, 0));
        assert_eq!(next("@yearly", t), at(2027, 1, 1, 0, 0));
    }

    #[test]
    fn days_of_week_and_the_either_rule() {
        // 2026-12-05 is a Saturday.
        let t = at(2026, 12, 5, 8, 30);
        assert_eq!(next("0 0 * * mon", t), at(2026, 12, 7, 0, 0));
        assert_eq!(next("0 0 * * 0", t), at(2026, 12, 6, 0, 0));
        assert_eq!(
            next("0 0 * * 7", t),
            at(2026, 12, 6, 0, 0),
            "7 is Sunday too"
        );
        assert_eq!(next("0 0 * dec sun", t), at(2026, 12, 6, 0, 0));
        // Both day fields restricted: the 15th or a Monday, whichever is first.
        assert_eq!(next("0 0 15 * 1", t), at(2026, 12, 7, 0, 0));
        assert_eq!(next("0 0 6 * 1", t), at(2026, 12, 6, 0, 0));
    }

    #[test]
    fn intervals_tick_from_the_epoch() {
        assert_eq!(next("@every 30s", 1_000), 30_000);
        assert_eq!(next("@every 30s", 30_000), 60_000);
        assert_eq!(next("@every 2m", 59_000), 120_000);
        assert_eq!(Cron::parse("@every 1d").unwrap(), Cron::Every(86_400_000));
    }

    #[test]
    fn bad_expressions_are_named() {
        let error = |e: &str| Cron::parse(e).unwrap_err().0;
        assert!(error("* * * *").contains("4 fields"));
        assert!(error("60 * * * *").contains("minute 60 is out of its range 0-59"));
        assert!(error("* 24 * * *").contains("hour"));
        assert!(error("* * 0 * *").contains("day of month"));
        assert!(error("* * * 13 *").contains("month"));
        assert!(error("* * * * 8").contains("day of week"));
        assert!(error("*/0 * * * *").contains("step"));
        assert!(error("5-1 * * * *").contains("backwards"));
        assert!(error("x * * * *").contains("`x` is not a number"));
        assert!(error("@every 0s").contains("@every"));
        assert!(error("@every 10").contains("@every"));
        assert!(error("@every").contains("@every"));
        assert!(error("@sometimes").contains("unknown"));
        assert!(error("").contains("0 fields"));
        assert_eq!(Cron::parse("0 0 31 2 *").unwrap().next_after(0), None);
    }
}
