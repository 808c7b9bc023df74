//! Amounts as people read them. Every amount in Casework is an integer of
//! minor units (`amount_minor`) and an ISO 4217 code; a person must never
//! read those minor units as if they were the major unit (500 EUR for a
//! compensation of 5.00 EUR). [`format`] places the decimal point by the
//! currency's ISO 4217 exponent (JPY 0, EUR 2, BHD 3; the table is the
//! `iso_currency` crate's) and groups digits as the reader's locale does
//! (`num-format`'s CLDR data).

use num_format::Buffer;
pub use num_format::Locale;

/// The number of decimal places of `code` (ISO 4217), or `None` when the
/// code is not a currency with minor units (unknown, or e.g. `XAU`).
pub fn exponent(code: &str) -> Option<u16> {
    iso_currency::Currency::from_code(code)?.exponent()
}

/// Whether `code` is an ISO 4217 currency with a fixed exponent, the only
/// kind an amount in minor units can be given in.
pub fn is_currency(code: &str) -> bool {
    exponent(code).is_some()
}

/// A reader's locale for numbers: a CLDR name (`en`, `de`, `fr`, `en-IN`,
/// …). An unknown name reads as `en`.
pub fn locale(name: &str) -> Locale {
    Locale::from_name(name)
        .or_else(|_| Locale::from_name(name.split(['-', '_']).next().unwrap_or_default()))
        .unwrap_or(Locale::en)
}

/// `amount_minor` of `code` for a reader in `locale`: `EUR 1,234.50` in
/// `en`, `1.234,50 EUR` in `de`, `JPY 500`, `BHD 0.500`. A code that has no
/// exponent (not a currency) is shown as what it is: `500 minor units of
/// XYZ`, never as a guess.
pub fn format(amount_minor: i64, code: &str, locale: &Locale) -> String {
    let Some(exp) = exponent(code) else {
        return format!("{amount_minor} minor units of {code}");
    };
    let scale = 10u64.pow(u32::from(exp));
    let abs = amount_minor.unsigned_abs();
    let mut major = Buffer::new();
    major.write_formatted(&(abs / scale), locale);
    let mut number = String::new();
    if amount_minor < 0 {
        number.push_str(locale.minus_sign());
    }
    number.push_str(major.as_str());
    if exp > 0 {
        number.push_str(locale.decimal());
        number.push_str(&format!(
            "{:0width$}",
            abs % scale,
            width = usize::from(exp)
        ));
    }
    // The code before the number where the locale writes it there (English),
    // after it elsewhere; the code rather than a symbol, which several
    // currencies share ($, kr).
    if locale.name().starts_with("en") {
        format!("{code} {number}")
    } else {
        format!("{number}\u{a0}{code}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minor_units_by_the_currency_exponent() {
        let english = locale("en");
        assert_eq!(format(500, "EUR", &english), "EUR 5.00");
        assert_eq!(format(123_456, "EUR", &english), "EUR 1,234.56");
        assert_eq!(format(500, "JPY", &english), "JPY 500");
        assert_eq!(format(1_234_567, "JPY", &english), "JPY 1,234,567");
        assert_eq!(format(500, "BHD", &english), "BHD 0.500");
        assert_eq!(format(12_345, "BHD", &english), "BHD 12.345");
        assert_eq!(format(-7, "EUR", &english), "EUR -0.07");
        assert_eq!(format(0, "USD", &english), "USD 0.00");
    }

    #[test]
    fn grouped_and_pointed_as_the_reader_reads() {
        let german = locale("de");
        assert_eq!(format(123_456, "EUR", &german), "1.234,56\u{a0}EUR");
        assert_eq!(format(500, "BHD", &german), "0,500\u{a0}BHD");
        assert_eq!(format(500, "JPY", &german), "500\u{a0}JPY");
        // A region falls back to its language; an unknown name to English.
        assert_eq!(format(500, "EUR", &locale("de-ZZ")), "5,00\u{a0}EUR");
        assert_eq!(format(500, "EUR", &locale("xx")), "EUR 5.00");
    }

    #[test]
    fn what_is_not_a_currency_is_not_guessed() {
        assert_eq!(format(500, "XYZ", &locale("en")), "500 minor units of XYZ");
        assert!(!is_currency("XAU"), "gold has no minor unit");
        assert!(is_currency("EUR") && is_currency("JPY") && is_currency("BHD"));
        assert_eq!(exponent("JPY"), Some(0));
        assert_eq!(exponent("BHD"), Some(3));
    }
}
