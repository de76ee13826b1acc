//! Duration literals: `"250ms"`, `"5s"`, `"30m"`, `"2h"`, `"1d"`, and sums such as `"1m30s"`.

/// The units a duration literal may use, with their length in milliseconds.
const UNITS: &[(&str, u64)] = &[
    ("ms", 1),
    ("s", 1_000),
    ("m", 60_000),
    ("h", 3_600_000),
    ("d", 86_400_000),
];

/// What every duration error ends with: the accepted forms.
pub const ACCEPTED: &str = "write a number followed by a unit (ms, s, m, h, d), e.g. \"250ms\", \
                            \"30s\", \"5m\", \"2h\", \"30d\", or a sum such as \"1m30s\"";

/// Parses a duration literal into milliseconds. The error says what is wrong; callers add
/// [`ACCEPTED`].
pub fn parse_millis(text: &str) -> Result<u64, String> {
    if text.is_empty() {
        return Err("empty duration".to_owned());
    }
    let mut total: u64 = 0;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '_'))
            .unwrap_or(rest.len());
        let number_text = &rest[..digits];
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];

        let cleaned: String = number_text.chars().filter(|&c| c != '_').collect();
        if cleaned.is_empty() {
            return Err(if unit.trim().is_empty() {
                format!("`{text}` is not a duration")
            } else {
                format!("expected a number before `{unit}` in `{text}`")
            });
        }
        let number: u64 = cleaned
            .parse()
            .map_err(|_| format!("`{number_text}` is too large in `{text}`"))?;
        if unit.is_empty() {
            return Err(if number_text == text {
                format!("`{text}` has no unit")
            } else {
                format!("`{number_text}` at the end of `{text}` has no unit")
            });
        }
        let Some(&(_, factor)) = UNITS.iter().find(|(name, _)| *name == unit) else {
            return Err(format!("unknown unit `{unit}` in `{text}`"));
        };
        total = number
            .checked_mul(factor)
            .and_then(|ms| total.checked_add(ms))
            .ok_or_else(|| format!("`{text}` is too long a duration"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::parse_millis;

    #[test]
    fn accepts_units_and_sums() {
        assert_eq!(parse_millis("250ms"), Ok(250));
        assert_eq!(parse_millis("5s"), Ok(5_000));
        assert_eq!(parse_millis("30m"), Ok(1_800_000));
        assert_eq!(parse_millis("2h"), Ok(7_200_000));
        assert_eq!(parse_millis("1d"), Ok(86_400_000));
        assert_eq!(parse_millis("1m30s"), Ok(90_000));
        assert_eq!(parse_millis("1h1m1s1ms"), Ok(3_661_001));
        assert_eq!(parse_millis("10_000ms"), Ok(10_000));
        assert_eq!(parse_millis("0s"), Ok(0));
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "30",
            "5x",
            "s",
            "1m30",
            "5 s",
            "-5s",
            "1.5s",
            "ms5",
            "99999999999999999999s",
            "999999999999999d",
        ] {
            assert!(parse_millis(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
