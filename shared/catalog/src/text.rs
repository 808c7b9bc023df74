//! Small parsers for the text forms a catalogue author writes: tokens,
//! durations, clock times, currencies. Each returns the human-readable reason
//! on failure; the loader adds the file, service and field.

use std::time::Duration;

/// Longest token accepted (service codes, step names, queues, tiers, …).
pub const MAX_TOKEN_LEN: usize = 40;

/// Checks a lowercase token: 1 to 40 characters of `a-z`, `0-9` and `_`.
pub(crate) fn check_token(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Err("is empty; use lowercase letters, digits and '_' (e.g. \"refund\")".into());
    }
    if value.len() > MAX_TOKEN_LEN {
        return Err(format!(
            "{value:?} is {} characters long; shorten it to at most {MAX_TOKEN_LEN}",
            value.len()
        ));
    }
    if let Some(c) = value
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_'))
    {
        return Err(format!(
            "{value:?} contains {c:?}; use only lowercase letters a-z, digits and '_' (e.g. {:?})",
            suggest_token(value)
        ));
    }
    Ok(())
}

fn suggest_token(value: &str) -> String {
    value
        .chars()
        .map(|c| match c {
            'A'..='Z' => c.to_ascii_lowercase(),
            'a'..='z' | '0'..='9' | '_' => c,
            _ => '_',
        })
        .take(MAX_TOKEN_LEN)
        .collect()
}

/// Parses a duration such as `250ms`, `30s`, `5m`, `2h`, `1d`, `1h30m` or
/// `90 seconds`. Zero is allowed here; callers that need a positive value
/// say so.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "{text:?} is not a duration; write e.g. \"250ms\", \"30s\", \"5m\", \"2h\" or \"1h30m\""
        )
    };
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        let amount: u64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = rest[digits..].trim_start();
        let letters = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit_ms: u64 = match &rest[..letters] {
            "ms" | "millis" | "millisecond" | "milliseconds" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hr" | "hrs" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            _ => return Err(bad()),
        };
        let ms = amount.checked_mul(unit_ms).ok_or_else(bad)?;
        total = total
            .checked_add(Duration::from_millis(ms))
            .ok_or_else(bad)?;
        rest = rest[letters..].trim_start();
    }
    Ok(total)
}

/// Parses a wall-clock time `HH:MM` into minutes after midnight. `24:00` is
/// accepted only when `allow_midnight_end` (a closing time).
pub(crate) fn parse_clock(text: &str, allow_midnight_end: bool) -> Result<u16, String> {
    let bad = || {
        let example = if allow_midnight_end {
            "\"17:30\" (or \"24:00\" for midnight)"
        } else {
            "\"09:00\""
        };
        format!("{text:?} is not a time of day; write HH:MM on a 24-hour clock, e.g. {example}")
    };
    let (h, m) = text.split_once(':').ok_or_else(bad)?;
    if h.len() != 2 || m.len() != 2 {
        return Err(bad());
    }
    let h: u16 = h.parse().map_err(|_| bad())?;
    let m: u16 = m.parse().map_err(|_| bad())?;
    if m >= 60 || h > 24 || (h == 24 && (m != 0 || !allow_midnight_end)) {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// Formats minutes after midnight as `HH:MM`.
pub(crate) fn format_clock(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Checks a currency code: an ISO 4217 currency with minor units (amounts
/// are given in them, so a code without an exponent, like gold's `XAU`, or
/// one ISO does not know, could not be shown to anyone correctly).
pub(crate) fn check_currency(text: &str) -> Result<(), String> {
    if !(text.len() == 3 && text.chars().all(|c| c.is_ascii_uppercase())) {
        return Err(format!(
            "{text:?} is not a currency; write its ISO 4217 code in three uppercase letters, e.g. \"EUR\", \"USD\", \"GBP\""
        ));
    }
    match iso_currency::Currency::from_code(text) {
        Some(c) if c.exponent().is_some() => Ok(()),
        Some(_) => Err(format!(
            "{text:?} has no minor unit in ISO 4217, and amounts are given in minor units: use a currency such as \"EUR\""
        )),
        None => Err(format!(
            "{text:?} is not an ISO 4217 currency code: write one such as \"EUR\", \"USD\", \"JPY\""
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        let ok = [
            ("250ms", 250),
            ("30s", 30_000),
            ("5m", 300_000),
            ("2h", 7_200_000),
            ("1d", 86_400_000),
            ("1h30m", 5_400_000),
            ("1h 30m", 5_400_000),
            ("90 seconds", 90_000),
            ("2 minutes", 120_000),
            ("0s", 0),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for text in ["", "5", "m", "5 parsecs", "-5s", "1.5s", "5s5", "s5"] {
            let err = parse_duration(text).unwrap_err();
            assert!(err.contains("not a duration"), "{text}: {err}");
        }
    }

    #[test]
    fn clocks() {
        assert_eq!(parse_clock("09:00", false), Ok(540));
        assert_eq!(parse_clock("17:30", true), Ok(1050));
        assert_eq!(parse_clock("24:00", true), Ok(1440));
        for (text, end) in [
            ("24:00", false),
            ("9:00", false),
            ("12:60", true),
            ("25:00", true),
            ("ab:cd", true),
        ] {
            assert!(parse_clock(text, end).is_err(), "{text}");
        }
        assert_eq!(format_clock(1050), "17:30");
    }

    #[test]
    fn tokens_and_currencies() {
        assert!(check_token("device_replacement").is_ok());
        assert!(check_token("").is_err());
        assert!(check_token(&"a".repeat(41)).is_err());
        assert!(check_token("Refund").unwrap_err().contains("\"refund\""));
        assert!(check_currency("EUR").is_ok());
        assert!(check_currency("JPY").is_ok() && check_currency("BHD").is_ok());
        assert!(
            check_currency("XYZ")
                .unwrap_err()
                .contains("not an ISO 4217")
        );
        assert!(check_currency("XAU").unwrap_err().contains("no minor unit"));
        for bad in ["eur", "EURO", "E1R", ""] {
            assert!(check_currency(bad).is_err(), "{bad}");
        }
    }
}
