//! A phone number as written → E.164, with libphonenumber's rules.

use phonenumber::country;

/// E.164 has at most 15 digits; national forms add a trunk or international
/// prefix (`0`, `00`, `03`…): anything longer is not one number.
const MAX_DIGITS: usize = 17;
const MIN_DIGITS: usize = 4;

/// A group's numbering rules, resolved once per import (not once per row).
#[derive(Debug, Clone)]
pub(crate) struct PhoneRules {
    /// The region national numbers are read in (`CO`).
    country: Option<country::Id>,
    /// The calling code the group's prefix names (`57`), as digits.
    code: Option<String>,
}

impl PhoneRules {
    pub fn new(region: &str, prefix: &str) -> PhoneRules {
        let country = region.trim().to_ascii_uppercase().parse().ok();
        let code = crate::phone::prefix_code(prefix)
            .or_else(|| crate::phone::region_code(region))
            .map(|c| c.to_string());
        PhoneRules { country, code }
    }

    /// See [`super::normalize_phone`]. Each attempt is one libphonenumber
    /// parse; the later ones run only when the earlier ones gave nothing valid.
    pub fn normalize(&self, raw: &str) -> Option<String> {
        // `buf[0]` is a `+` so that `buf[..=n]` is the international form of
        // the `n` digits in `buf[1..=n]`, without allocating.
        let mut buf = [b'+'; MAX_DIGITS + 1];
        let mut n = 0;
        let mut plus = false;
        for ch in raw.trim().chars() {
            match ch {
                '0'..='9' => {
                    n += 1;
                    *buf.get_mut(n)? = ch as u8;
                }
                // Only before the first digit: `+57 …`, `(+57) …`.
                '+' if !plus && n == 0 => plus = true,
                ' ' | '\t' | '-' | '.' | '(' | ')' | '/' => {}
                // No-break and narrow spaces, Unicode hyphens and dashes, minus.
                '\u{a0}' | '\u{2007}' | '\u{202f}' | '\u{2010}'..='\u{2015}' | '\u{2212}' => {}
                _ => return None,
            }
        }
        if n < MIN_DIGITS {
            return None;
        }
        let international = std::str::from_utf8(buf.get(..=n)?).ok()?;
        let digits = international.get(1..)?;
        if plus {
            return valid_e164(international, None);
        }
        if let Some(rest) = digits.strip_prefix("00") {
            let mut idd = buf;
            // `00` is the international access code: `0057…` → `+57…`.
            *idd.get_mut(2)? = b'+';
            let candidate = std::str::from_utf8(idd.get(2..=n)?).ok()?;
            if !rest.is_empty()
                && let Some(e164) = valid_e164(candidate, None)
            {
                return Some(e164);
            }
        }
        let Some(country) = self.country else {
            let code = self.code.as_deref()?;
            return valid_e164(&format!("+{code}{digits}"), None);
        };
        valid_e164(digits, Some(country))
            // A trunk `0` that libphonenumber read otherwise (for CO it takes
            // `03…` as a carrier code): `03138539155` → `3138539155`.
            .or_else(|| {
                let rest = digits.strip_prefix('0')?;
                (!rest.starts_with('0'))
                    .then(|| valid_e164(rest, Some(country)))
                    .flatten()
            })
            // The calling code written without `+`: `573138539157`.
            .or_else(|| {
                let code = self.code.as_deref()?;
                digits
                    .starts_with(code)
                    .then(|| valid_e164(international, None))
                    .flatten()
            })
    }
}

/// One libphonenumber parse; `Some(E.164)` when the number is valid.
fn valid_e164(candidate: &str, country: Option<country::Id>) -> Option<String> {
    let number = phonenumber::parse(country, candidate).ok()?;
    if !phonenumber::is_valid(&number) {
        return None;
    }
    // libphonenumber's own E.164 formatter also picks a national format
    // first (regexes); E.164 is just the code and the national number.
    Some(format!("+{}{}", number.code().value(), number.national()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn co(raw: &str) -> Option<String> {
        PhoneRules::new("CO", "+57").normalize(raw)
    }

    #[test]
    fn every_written_form_of_a_colombian_number_normalises() {
        for raw in [
            "3138539155",
            "+57 313 853 9155",
            "+573138539155",
            "(+57) 313 853 9155",
            "573138539155",
            "57 313 853 9155",
            "0057 313 853 9155",
            "00573138539155",
            "03138539155",
            "0 313 853 9155",
            "(313) 853-9155",
            "313.853.9155",
            "313-853-9155",
            "313\u{a0}853\u{a0}9155",
            "313–853–9155",
            "  3138539155  ",
        ] {
            assert_eq!(co(raw).as_deref(), Some("+573138539155"), "{raw:?}");
        }
    }

    #[test]
    fn landlines_and_foreign_numbers_normalise() {
        assert_eq!(co("601 5550000").as_deref(), Some("+576015550000"));
        assert_eq!(co("(601) 555-0000").as_deref(), Some("+576015550000"));
        assert_eq!(co("576015550000").as_deref(), Some("+576015550000"));
        assert_eq!(co("+1 415 555 2671").as_deref(), Some("+14155552671"));
        assert_eq!(co("0014155552671").as_deref(), Some("+14155552671"));
        assert_eq!(co("+39 06 6988 0000").as_deref(), Some("+390669880000"));
        let mx = PhoneRules::new("MX", "+52");
        assert_eq!(
            mx.normalize("55 1234 5678").as_deref(),
            Some("+525512345678")
        );
    }

    #[test]
    fn invalid_numbers_are_refused() {
        for raw in [
            "",
            "   ",
            "12345",
            "abc",
            "313853915x",
            "3138539155 ext 12",
            "31385391551234567890",
            "57+3138539155",
            "++573138539155",
            "+",
            "00",
            "0000",
            "3361234567",
            "+57 12345",
            "3138539155 / 3001234567",
        ] {
            assert_eq!(co(raw), None, "{raw:?}");
        }
    }

    #[test]
    fn an_unknown_region_falls_back_to_the_prefix() {
        let rules = PhoneRules::new("", "+57");
        assert_eq!(
            rules.normalize("3138539155").as_deref(),
            Some("+573138539155")
        );
        let nothing = PhoneRules::new("", "");
        assert_eq!(nothing.normalize("3138539155"), None);
        assert_eq!(
            nothing.normalize("+573138539155").as_deref(),
            Some("+573138539155")
        );
    }
}
