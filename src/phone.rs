//! Country prefixes and regions (libphonenumber's metadata): which `prefix`
//! goes with which `selectedCountryCode`.

use phonenumber::metadata::DATABASE;

pub const DEFAULT_PREFIX: &str = "+57";
pub const DEFAULT_REGION: &str = "CO";
pub const MSG_BAD_PREFIX: &str = "Prefijo telefónico inválido";

/// `+` and 1–4 digits → the calling code.
pub fn prefix_code(prefix: &str) -> Option<u16> {
    let digits = prefix.trim().strip_prefix('+')?;
    if digits.is_empty() || digits.len() > 4 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let code: u16 = digits.parse().ok()?;
    DATABASE.region(&code).map(|_| code)
}

/// An ISO 3166 region libphonenumber knows → its calling code.
pub fn region_code(region: &str) -> Option<u16> {
    DATABASE
        .by_id(region.trim().to_ascii_uppercase().as_str())
        .map(|m| m.country_code())
}

/// The main region of a calling code (`+1` → `US`, `+57` → `CO`).
fn main_region(code: u16) -> Option<String> {
    let regions = DATABASE.by_code(&code)?;
    regions
        .iter()
        .find(|m| m.is_main_country_for_code())
        .or_else(|| regions.first())
        .map(|m| m.id().to_owned())
}

/// A new group's `(prefix, region)`: defaults when neither is given, the other
/// derived when one is, and both must agree when both are.
pub fn resolve_region(prefix: Option<&str>, region: Option<&str>) -> Option<(String, String)> {
    match (prefix, region) {
        (None, None) => Some((DEFAULT_PREFIX.into(), DEFAULT_REGION.into())),
        (Some(prefix), None) => {
            let code = prefix_code(prefix)?;
            Some((format!("+{code}"), main_region(code)?))
        }
        (None, Some(region)) => {
            let code = region_code(region)?;
            Some((format!("+{code}"), region.trim().to_ascii_uppercase()))
        }
        (Some(prefix), Some(region)) => {
            let code = prefix_code(prefix)?;
            (region_code(region)? == code)
                .then(|| (format!("+{code}"), region.trim().to_ascii_uppercase()))
        }
    }
}

/// An update's `(prefix, region)`: a prefix alone keeps the current region when
/// it still agrees (`+1` for a `CA` group), else takes the prefix's main region.
pub fn resolve_region_update(
    prefix: Option<&str>,
    region: Option<&str>,
    current_prefix: &str,
    current_region: &str,
) -> Option<(String, String)> {
    match (prefix, region) {
        (Some(prefix), None)
            if prefix_code(prefix).is_some()
                && prefix_code(prefix) == region_code(current_region) =>
        {
            Some((
                format!("+{}", prefix_code(prefix)?),
                current_region.to_owned(),
            ))
        }
        (None, None) => Some((current_prefix.to_owned(), current_region.to_owned())),
        _ => resolve_region(prefix, region),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_colombia() {
        assert_eq!(
            resolve_region(None, None),
            Some(("+57".into(), "CO".into()))
        );
    }

    #[test]
    fn one_side_gives_the_other() {
        assert_eq!(
            resolve_region(Some("+52"), None),
            Some(("+52".into(), "MX".into()))
        );
        assert_eq!(
            resolve_region(Some("+1"), None),
            Some(("+1".into(), "US".into()))
        );
        assert_eq!(
            resolve_region(None, Some("es")),
            Some(("+34".into(), "ES".into()))
        );
    }

    #[test]
    fn both_sides_must_agree() {
        assert_eq!(
            resolve_region(Some("+57"), Some("CO")),
            Some(("+57".into(), "CO".into()))
        );
        assert_eq!(resolve_region(Some("+57"), Some("MX")), None);
        for bad in ["57", "+", "+12345", "+5a", "+999"] {
            assert_eq!(resolve_region(Some(bad), None), None, "{bad}");
        }
        assert_eq!(resolve_region(None, Some("XX")), None);
    }

    #[test]
    fn an_update_keeps_a_region_that_still_agrees() {
        assert_eq!(
            resolve_region_update(Some("+1"), None, "+1", "CA"),
            Some(("+1".into(), "CA".into()))
        );
        assert_eq!(
            resolve_region_update(Some("+52"), None, "+57", "CO"),
            Some(("+52".into(), "MX".into()))
        );
        assert_eq!(
            resolve_region_update(None, Some("MX"), "+57", "CO"),
            Some(("+52".into(), "MX".into()))
        );
    }
}
