//! Catalogue versions and their order.

use std::cmp::Ordering;
use std::fmt;

/// A catalogue version such as `2026-11-01.1`.
///
/// Versions are ordered "naturally": runs of digits compare as numbers and
/// everything else compares as text, so `2026-11-01.10` is newer than
/// `2026-11-01.9`. Two spellings of the same numbers (`1.01`, `1.1`) are still
/// different versions; they are ordered by their text to keep the order total.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CatalogVersion(String);

impl CatalogVersion {
    /// Longest version accepted.
    pub const MAX_LEN: usize = 64;

    /// Checks a version: 1 to 64 characters of ASCII letters, digits and
    /// `.`, `-`, `_`, `+`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > Self::MAX_LEN {
            return Err(format!(
                "{text:?} is not a catalogue version; write 1 to {} characters, e.g. \"2026-11-01.1\" (date and revision)",
                Self::MAX_LEN
            ));
        }
        if let Some(c) = text
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '+')))
        {
            return Err(format!(
                "{text:?} contains {c:?}; a catalogue version uses letters, digits and . - _ + only, e.g. \"2026-11-01.1\""
            ));
        }
        Ok(Self(text.to_owned()))
    }

    /// The version as written in the file.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CatalogVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for CatalogVersion {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for CatalogVersion {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Ord for CatalogVersion {
    fn cmp(&self, other: &Self) -> Ordering {
        natural_cmp(&self.0, &other.0).then_with(|| self.0.cmp(&other.0))
    }
}

impl PartialOrd for CatalogVersion {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Splits into alternating digit / non-digit runs and compares run by run.
fn natural_cmp(a: &str, b: &str) -> Ordering {
    let (mut a, mut b) = (a, b);
    loop {
        match (a.is_empty(), b.is_empty()) {
            (true, true) => return Ordering::Equal,
            (true, false) => return Ordering::Less,
            (false, true) => return Ordering::Greater,
            (false, false) => {}
        }
        let (run_a, rest_a) = split_run(a);
        let (run_b, rest_b) = split_run(b);
        let a_digits = run_a.starts_with(|c: char| c.is_ascii_digit());
        let b_digits = run_b.starts_with(|c: char| c.is_ascii_digit());
        let order = if a_digits && b_digits {
            let (ta, tb) = (run_a.trim_start_matches('0'), run_b.trim_start_matches('0'));
            ta.len().cmp(&tb.len()).then_with(|| ta.cmp(tb))
        } else {
            run_a.cmp(run_b)
        };
        if order != Ordering::Equal {
            return order;
        }
        (a, b) = (rest_a, rest_b);
    }
}

fn split_run(s: &str) -> (&str, &str) {
    let digits = s.starts_with(|c: char| c.is_ascii_digit());
    let end = s
        .find(|c: char| c.is_ascii_digit() != digits)
        .unwrap_or(s.len());
    s.split_at(end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> CatalogVersion {
        CatalogVersion::parse(text).unwrap()
    }

    #[test]
    fn natural_order() {
        let ordered = [
            "2026-01-01.1",
            "2026-01-01.2",
            "2026-01-01.10",
            "2026-02-01.1",
            "2026-11-01.1",
            "2027-01-01",
            "2027-01-01.1",
        ];
        for pair in ordered.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
        assert_ne!(v("1.01").cmp(&v("1.1")), Ordering::Equal);
    }

    #[test]
    fn rejects_bad_versions() {
        for bad in ["", "2026 11", "v/1", &"1".repeat(65)] {
            assert!(CatalogVersion::parse(bad).is_err(), "{bad}");
        }
    }
}
