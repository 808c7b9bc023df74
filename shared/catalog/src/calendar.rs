//! Business calendars and business-time arithmetic.
//!
//! A [`Calendar`] is a time zone, the working days of the week, one daily
//! window of working hours (the same wall-clock hours every working day) and
//! a list of holidays. All arithmetic happens on real instants (UTC): each
//! working day contributes the interval from its local opening to its local
//! closing time, converted through the time zone, so DST changes are handled
//! by construction — a working day that contains a clock change is simply
//! one hour longer or shorter in real time.
//!
//! Local times that do not exist (the hour skipped when clocks go forward)
//! resolve to the first instant after the gap; local times that happen twice
//! (clocks go back) resolve to the earlier one. Both keep the conversion
//! monotonic, which the arithmetic relies on.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{
    DateTime, Datelike, LocalResult, NaiveDate, NaiveDateTime, NaiveTime, TimeDelta, TimeZone, Utc,
    Weekday,
};
use chrono_tz::Tz;

use crate::error::{Error, Problem, Result};
use crate::text::{check_token, format_clock, parse_clock};

const MINUTES_PER_DAY: u16 = 24 * 60;

/// A named business calendar: time zone, working days, working hours and
/// holidays. Built only through [`Calendar::new`] (or by loading a catalogue),
/// which guarantees at least one working day and a non-empty working window,
/// so the arithmetic always terminates.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Calendar {
    name: String,
    time_zone: Tz,
    /// Indexed by `Weekday::num_days_from_monday`.
    working_days: [bool; 7],
    /// Minutes after local midnight, `opens < closes <= 1440`.
    opens: u16,
    closes: u16,
    holidays: BTreeSet<NaiveDate>,
}

impl Calendar {
    /// Builds a calendar.
    ///
    /// `time_zone` is an IANA name (`"Europe/Berlin"`, `"UTC"`); `opens` and
    /// `closes` are `HH:MM` wall-clock times with `closes` after `opens`
    /// (`"24:00"` means midnight at the end of the day, so `"00:00"`–`"24:00"`
    /// on all seven days is a 24x7 calendar). Every problem is reported with
    /// the field it concerns (`time_zone`, `working_days`, `opens`, `closes`).
    pub fn new(
        name: &str,
        time_zone: &str,
        working_days: &[Weekday],
        opens: &str,
        closes: &str,
        holidays: &[NaiveDate],
    ) -> Result<Self> {
        Self::build(name, time_zone, working_days, opens, closes, holidays).map_err(|problems| {
            Error::Invalid {
                origin: "Calendar::new".into(),
                problems: problems
                    .into_iter()
                    .map(|(field, message)| Problem {
                        origin: "Calendar::new".into(),
                        position: None,
                        service: None,
                        field: format!("calendars.{name}.{field}"),
                        message,
                    })
                    .collect(),
            }
        })
    }

    /// Like [`Calendar::new`], returning `(field, message)` pairs so the
    /// loader can place them in the file.
    pub(crate) fn build(
        name: &str,
        time_zone: &str,
        working_days: &[Weekday],
        opens: &str,
        closes: &str,
        holidays: &[NaiveDate],
    ) -> std::result::Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        if let Err(why) = check_token(name) {
            problems.push(("name", format!("the calendar name {why}")));
        }
        let tz = match time_zone.parse::<Tz>() {
            Ok(tz) => Some(tz),
            Err(_) => {
                problems.push((
                    "time_zone",
                    format!(
                        "{time_zone:?} is not a known time zone; use an IANA name such as \"Europe/Berlin\", \"America/New_York\" or \"UTC\""
                    ),
                ));
                None
            }
        };
        let mut days = [false; 7];
        for day in working_days {
            let slot = &mut days[day.num_days_from_monday() as usize];
            if *slot {
                problems.push((
                    "working_days",
                    format!("{day} is listed twice; list each working day once"),
                ));
            }
            *slot = true;
        }
        if working_days.is_empty() {
            problems.push((
                "working_days",
                "no working days; list at least one, e.g. [\"mon\", \"tue\", \"wed\", \"thu\", \"fri\"]"
                    .into(),
            ));
        }
        let opens = parse_clock(opens, false)
            .map_err(|why| problems.push(("opens", why)))
            .ok();
        let closes = parse_clock(closes, true)
            .map_err(|why| problems.push(("closes", why)))
            .ok();
        if let (Some(o), Some(c)) = (opens, closes)
            && c <= o
        {
            problems.push((
                "closes",
                format!(
                    "closing time {} is not after opening time {}; working hours must not be empty or cross midnight (use \"24:00\" to close at midnight)",
                    format_clock(c),
                    format_clock(o)
                ),
            ));
        }
        match (tz, opens, closes) {
            (Some(time_zone), Some(opens), Some(closes)) if problems.is_empty() => Ok(Self {
                name: name.to_owned(),
                time_zone,
                working_days: days,
                opens,
                closes,
                holidays: holidays.iter().copied().collect(),
            }),
            _ => Err(problems),
        }
    }

    /// The calendar's name in the catalogue.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its time zone.
    pub fn time_zone(&self) -> Tz {
        self.time_zone
    }

    /// The working days of the week, Monday first.
    pub fn working_days(&self) -> Vec<Weekday> {
        (0u8..7)
            .filter(|i| self.working_days[usize::from(*i)])
            .filter_map(|i| Weekday::try_from(i).ok())
            .collect()
    }

    /// Opening and closing time as written (`"09:00"`, `"17:30"`; `"24:00"`
    /// for midnight).
    pub fn working_hours(&self) -> (String, String) {
        (format_clock(self.opens), format_clock(self.closes))
    }

    /// The holidays (local dates on which the calendar is closed all day).
    pub fn holidays(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.holidays.iter().copied()
    }

    /// Wall-clock length of one working day (closing minus opening time).
    pub fn working_day_length(&self) -> Duration {
        Duration::from_secs(u64::from(self.closes - self.opens) * 60)
    }

    /// Whether `date` (a local date) is a working day: a working weekday and
    /// not a holiday.
    pub fn is_working_day(&self, date: NaiveDate) -> bool {
        self.working_days[date.weekday().num_days_from_monday() as usize]
            && !self.holidays.contains(&date)
    }

    /// The working interval `[opening, closing]` of a local date, as instants,
    /// or `None` if it is not a working day.
    pub fn working_hours_on(&self, date: NaiveDate) -> Option<(DateTime<Utc>, DateTime<Utc>)> {
        self.is_working_day(date).then(|| {
            (
                self.to_utc(date, minutes(self.opens)),
                self.to_utc(date, minutes(self.closes)),
            )
        })
    }

    /// Whether the calendar is open at `at`: inside a working interval,
    /// opening instant included, closing instant excluded.
    pub fn is_open(&self, at: DateTime<Utc>) -> bool {
        self.candidate_dates(at)
            .filter_map(|d| self.working_hours_on(d))
            .any(|(open, close)| open <= at && at < close)
    }

    /// Whether `at` lies inside a working interval, both ends included. Every
    /// result of the arithmetic below satisfies this.
    pub fn is_within_hours(&self, at: DateTime<Utc>) -> bool {
        self.candidate_dates(at)
            .filter_map(|d| self.working_hours_on(d))
            .any(|(open, close)| open <= at && at <= close)
    }

    /// The earliest instant at or after `at` at which the calendar is within
    /// hours (`at` itself when it is; else the next opening).
    pub fn next_opening(&self, at: DateTime<Utc>) -> DateTime<Utc> {
        self.add_business_time(at, Duration::ZERO)
    }

    /// Adds `business` time to `start`, counting only working hours.
    ///
    /// A start outside working hours starts counting at the next opening; a
    /// result that lands exactly on a closing time stays there (due "by close
    /// of business") rather than moving to the next opening. A zero duration
    /// returns `start` when it is within hours, else the next opening.
    ///
    /// Example: in a 09:00–17:00 Monday–Friday calendar, 4 business hours from
    /// 16:00 on a Friday is 12:00 on Monday, local time.
    pub fn add_business_time(&self, start: DateTime<Utc>, business: Duration) -> DateTime<Utc> {
        let mut remaining = TimeDelta::from_std(business).unwrap_or(TimeDelta::MAX);
        // The day before too: with a "24:00" closing, the previous day's
        // interval ends exactly at local midnight.
        let mut date = local_date(self.time_zone, start)
            .pred_opt()
            .unwrap_or(NaiveDate::MIN);
        loop {
            if let Some((open, close)) = self.working_hours_on(date)
                && close >= start
            {
                let from = open.max(start);
                let available = close - from;
                if remaining <= available {
                    return from
                        .checked_add_signed(remaining)
                        .unwrap_or(DateTime::<Utc>::MAX_UTC);
                }
                remaining -= available;
            }
            match date.succ_opt() {
                Some(next) => date = next,
                None => return DateTime::<Utc>::MAX_UTC,
            }
        }
    }

    /// Adds `days` business days to `start`.
    ///
    /// A business day is counted on the wall clock, not as a number of hours:
    /// from a start inside working hours the result is the same local time
    /// on the `days`-th following working day (so 2 business days from 16:00
    /// Friday is 16:00 Tuesday, even across a DST change). A start before
    /// opening counts its own day as the first, and a start after closing or
    /// on a closed day counts from the next working day; either way the
    /// result is the close of business of the last day counted (1 business
    /// day from Saturday noon is Monday's closing time). Zero days behaves
    /// like [`Calendar::next_opening`].
    pub fn add_business_days(&self, start: DateTime<Utc>, days: u32) -> DateTime<Utc> {
        if days == 0 {
            return self.next_opening(start);
        }
        let local = start.with_timezone(&self.time_zone).naive_local();
        let date = local.date();
        let time_of_day = local.time() - NaiveTime::MIN;
        let (opens, closes) = (minutes(self.opens), minutes(self.closes));
        let working = self.is_working_day(date);
        if working && time_of_day > opens && time_of_day <= closes {
            let Some(day) = self.nth_working_day_after(date, days) else {
                return DateTime::<Utc>::MAX_UTC;
            };
            return self.to_utc(day, time_of_day);
        }
        let first = if working && time_of_day <= opens {
            Some(date)
        } else {
            self.nth_working_day_after(date, 1)
        };
        match first.and_then(|first| self.nth_working_day_after(first, days - 1)) {
            Some(day) => self.to_utc(day, closes),
            None => DateTime::<Utc>::MAX_UTC,
        }
    }

    /// The `n`-th working day strictly after `date` (`date` itself for 0).
    fn nth_working_day_after(&self, date: NaiveDate, n: u32) -> Option<NaiveDate> {
        let mut date = date;
        let mut left = n;
        while left > 0 {
            date = date.succ_opt()?;
            if self.is_working_day(date) {
                left -= 1;
            }
        }
        Some(date)
    }

    /// The local dates whose working interval might contain `at`.
    fn candidate_dates(&self, at: DateTime<Utc>) -> impl Iterator<Item = NaiveDate> {
        let date = local_date(self.time_zone, at);
        [date.pred_opt(), Some(date), date.succ_opt()]
            .into_iter()
            .flatten()
    }

    /// Converts a local date and a time of day (may be 24:00) to an instant.
    fn to_utc(&self, date: NaiveDate, time_of_day: TimeDelta) -> DateTime<Utc> {
        let local = date.and_time(NaiveTime::MIN) + time_of_day;
        resolve(self.time_zone, local)
    }
}

fn minutes(m: u16) -> TimeDelta {
    TimeDelta::minutes(i64::from(m.min(MINUTES_PER_DAY)))
}

fn local_date(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    at.with_timezone(&tz).date_naive()
}

/// Local wall-clock time to instant: the earlier of two, or the first instant
/// after a gap.
fn resolve(tz: Tz, local: NaiveDateTime) -> DateTime<Utc> {
    // Gaps are at most a few hours; step a minute at a time to the first
    // local time that exists (our times are whole minutes, so this lands on
    // the transition itself).
    for step in 0..=i64::from(MINUTES_PER_DAY) {
        let candidate = local + TimeDelta::minutes(step);
        match tz.from_local_datetime(&candidate) {
            LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => {
                return t.with_timezone(&Utc);
            }
            LocalResult::None => {}
        }
    }
    local.and_utc()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn weekdays() -> Vec<Weekday> {
        vec![
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
        ]
    }

    fn office(tz: &str, holidays: &[NaiveDate]) -> Calendar {
        Calendar::new("office", tz, &weekdays(), "09:00", "17:00", holidays).unwrap()
    }

    fn always(tz: &str) -> Calendar {
        let all = [
            Weekday::Mon,
            Weekday::Tue,
            Weekday::Wed,
            Weekday::Thu,
            Weekday::Fri,
            Weekday::Sat,
            Weekday::Sun,
        ];
        Calendar::new("always", tz, &all, "00:00", "24:00", &[]).unwrap()
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    /// A local wall-clock time in `cal`'s zone, as an instant.
    fn at(cal: &Calendar, y: i32, m: u32, d: u32, hh: u32, mm: u32) -> DateTime<Utc> {
        cal.time_zone
            .with_ymd_and_hms(y, m, d, hh, mm, 0)
            .single()
            .unwrap()
            .with_timezone(&Utc)
    }

    /// (case, calendar, start, amount, expected)
    type Case<'a, A> = (&'a str, &'a Calendar, DateTime<Utc>, A, DateTime<Utc>);

    fn hours(h: u64) -> Duration {
        Duration::from_secs(h * 3600)
    }

    #[test]
    fn business_hours_table() {
        let utc = office("UTC", &[]);
        let xmas = office("UTC", &[date(2026, 12, 25)]);
        let berlin = office("Europe/Berlin", &[]);
        let always_utc = always("UTC");
        let always_berlin = always("Europe/Berlin");
        // (case, calendar, start, business duration, expected)
        let cases: Vec<Case<'_, Duration>> = vec![
            (
                "within the day",
                &utc,
                at(&utc, 2026, 11, 3, 10, 0),
                hours(4),
                at(&utc, 2026, 11, 3, 14, 0),
            ),
            (
                "lands exactly on close",
                &utc,
                at(&utc, 2026, 11, 3, 13, 0),
                hours(4),
                at(&utc, 2026, 11, 3, 17, 0),
            ),
            (
                "overnight",
                &utc,
                at(&utc, 2026, 11, 3, 16, 0),
                hours(4),
                at(&utc, 2026, 11, 4, 12, 0),
            ),
            (
                "Friday 16:00 + 4h is Monday 12:00",
                &utc,
                at(&utc, 2026, 11, 6, 16, 0),
                hours(4),
                at(&utc, 2026, 11, 9, 12, 0),
            ),
            (
                "before opening starts at opening",
                &utc,
                at(&utc, 2026, 11, 3, 6, 30),
                hours(1),
                at(&utc, 2026, 11, 3, 10, 0),
            ),
            (
                "after closing starts next morning",
                &utc,
                at(&utc, 2026, 11, 3, 20, 0),
                hours(1),
                at(&utc, 2026, 11, 4, 10, 0),
            ),
            (
                "weekend starts Monday",
                &utc,
                at(&utc, 2026, 11, 7, 11, 0),
                Duration::from_secs(30 * 60),
                at(&utc, 2026, 11, 9, 9, 30),
            ),
            (
                "holiday skipped (Thu 24 Dec 16:00 + 2h -> Mon 28 Dec 10:00)",
                &xmas,
                at(&xmas, 2026, 12, 24, 16, 0),
                hours(2),
                at(&xmas, 2026, 12, 28, 10, 0),
            ),
            (
                "zero inside hours is start",
                &utc,
                at(&utc, 2026, 11, 3, 11, 15),
                Duration::ZERO,
                at(&utc, 2026, 11, 3, 11, 15),
            ),
            (
                "zero outside hours is next opening",
                &utc,
                at(&utc, 2026, 11, 7, 11, 0),
                Duration::ZERO,
                at(&utc, 2026, 11, 9, 9, 0),
            ),
            (
                "Berlin: Friday before spring-forward, 16:00 + 4h (Mon 12:00 CEST = 10:00 UTC)",
                &berlin,
                at(&berlin, 2026, 3, 27, 16, 0),
                hours(4),
                at(&berlin, 2026, 3, 30, 12, 0),
            ),
            (
                "Berlin: across fall-back weekend keeps local hours",
                &berlin,
                at(&berlin, 2026, 10, 23, 15, 0),
                hours(3),
                at(&berlin, 2026, 10, 26, 10, 0),
            ),
            (
                "24x7 UTC: plain addition",
                &always_utc,
                at(&always_utc, 2026, 11, 7, 23, 0),
                hours(48),
                at(&always_utc, 2026, 11, 9, 23, 0),
            ),
            (
                "24x7 Berlin: 24 real hours across spring-forward is 01:00 wall clock",
                &always_berlin,
                at(&always_berlin, 2026, 3, 28, 12, 0),
                hours(24),
                at(&always_berlin, 2026, 3, 29, 13, 0),
            ),
        ];
        for (case, cal, start, d, expected) in cases {
            assert_eq!(cal.add_business_time(start, d), expected, "{case}");
        }
        // The 24x7 Berlin case above: 12:00 CET + 24 h real = 13:00 CEST.
        assert_eq!(
            at(&always_berlin, 2026, 3, 29, 13, 0) - at(&always_berlin, 2026, 3, 28, 12, 0),
            TimeDelta::hours(24)
        );
    }

    #[test]
    fn berlin_utc_offsets_are_respected() {
        let berlin = office("Europe/Berlin", &[]);
        // Monday 30 March 2026 09:00 CEST is 07:00 UTC.
        let start = Utc.with_ymd_and_hms(2026, 3, 28, 12, 0, 0).unwrap();
        assert_eq!(
            berlin.add_business_time(start, Duration::ZERO),
            Utc.with_ymd_and_hms(2026, 3, 30, 7, 0, 0).unwrap()
        );
        // Friday 27 March 09:00 CET is 08:00 UTC.
        let friday = berlin.working_hours_on(date(2026, 3, 27)).unwrap();
        assert_eq!(
            friday.0,
            Utc.with_ymd_and_hms(2026, 3, 27, 8, 0, 0).unwrap()
        );
        assert!(berlin.working_hours_on(date(2026, 3, 28)).is_none());
    }

    #[test]
    fn business_days_table() {
        let utc = office("UTC", &[date(2026, 12, 25)]);
        let berlin = office("Europe/Berlin", &[]);
        let cases: Vec<Case<'_, u32>> = vec![
            (
                "Friday 16:00 + 2 days = Tuesday 16:00",
                &utc,
                at(&utc, 2026, 11, 6, 16, 0),
                2,
                at(&utc, 2026, 11, 10, 16, 0),
            ),
            (
                "Saturday + 1 day = Monday close",
                &utc,
                at(&utc, 2026, 11, 7, 12, 0),
                1,
                at(&utc, 2026, 11, 9, 17, 0),
            ),
            (
                "before opening counts the day itself",
                &utc,
                at(&utc, 2026, 11, 3, 7, 0),
                1,
                at(&utc, 2026, 11, 3, 17, 0),
            ),
            (
                "after closing counts from the next day",
                &utc,
                at(&utc, 2026, 11, 3, 18, 0),
                2,
                at(&utc, 2026, 11, 5, 17, 0),
            ),
            (
                "holiday skipped",
                &utc,
                at(&utc, 2026, 12, 24, 10, 0),
                1,
                at(&utc, 2026, 12, 28, 10, 0),
            ),
            (
                "Berlin across spring-forward keeps wall-clock time",
                &berlin,
                at(&berlin, 2026, 3, 27, 11, 0),
                1,
                at(&berlin, 2026, 3, 30, 11, 0),
            ),
        ];
        for (case, cal, start, n, expected) in cases {
            assert_eq!(cal.add_business_days(start, n), expected, "{case}");
        }
    }

    #[test]
    fn calendar_validation_names_fields() {
        let Err(Error::Invalid { problems, .. }) =
            Calendar::new("Bad Name", "Europe/Berln", &[], "17:00", "09:00", &[])
        else {
            panic!("expected invalid");
        };
        let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
        for want in ["name", "time_zone", "working_days", "closes"] {
            assert!(
                fields.iter().any(|f| f.ends_with(want)),
                "{want} missing from {fields:?}"
            );
        }
    }

    #[test]
    fn is_open_and_working_days() {
        let cal = office("UTC", &[]);
        assert!(cal.is_open(at(&cal, 2026, 11, 3, 9, 0)));
        assert!(!cal.is_open(at(&cal, 2026, 11, 3, 17, 0)));
        assert!(cal.is_within_hours(at(&cal, 2026, 11, 3, 17, 0)));
        assert_eq!(cal.working_days(), weekdays());
        assert_eq!(cal.working_day_length(), hours(8));
        assert_eq!(cal.working_hours(), ("09:00".into(), "17:00".into()));
    }

    fn calendars() -> Vec<Calendar> {
        vec![
            office("UTC", &[date(2026, 12, 25), date(2027, 1, 1)]),
            office("Europe/Berlin", &[date(2026, 10, 26)]),
            Calendar::new(
                "late",
                "America/New_York",
                &[Weekday::Sat, Weekday::Sun, Weekday::Wed],
                "01:30",
                "24:00",
                &[],
            )
            .unwrap(),
            always("Europe/Berlin"),
            // Working hours that contain Berlin's DST gap and overlap.
            Calendar::new("night", "Europe/Berlin", &weekdays(), "01:00", "04:00", &[]).unwrap(),
        ]
    }

    proptest! {
        #[test]
        fn add_business_time_is_monotonic_and_within_hours(
            which in 0usize..5,
            start_min in 0i64..(3 * 366 * 24 * 60),
            a in 0u64..(30 * 24 * 3600),
            b in 0u64..(30 * 24 * 3600),
        ) {
            let cal = &calendars()[which];
            let start = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap()
                + TimeDelta::minutes(start_min);
            let (lo, hi) = (a.min(b), a.max(b));
            let r_lo = cal.add_business_time(start, Duration::from_secs(lo));
            let r_hi = cal.add_business_time(start, Duration::from_secs(hi));
            prop_assert!(r_lo <= r_hi);
            prop_assert!(r_lo >= start);
            prop_assert!(cal.is_within_hours(r_lo));
            prop_assert!(cal.is_within_hours(r_hi));
            let zero = cal.add_business_time(start, Duration::ZERO);
            if cal.is_within_hours(start) {
                prop_assert_eq!(zero, start);
            }
            let days = u32::try_from(lo % 20).unwrap();
            let d_lo = cal.add_business_days(start, days);
            let d_hi = cal.add_business_days(start, days + 1);
            prop_assert!(d_lo <= d_hi);
            prop_assert!(cal.is_within_hours(d_hi));
        }
    }
}
