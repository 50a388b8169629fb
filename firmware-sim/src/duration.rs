//! Durations on the command line: `500ms`, `5s`, `10m`, `1h`, or plain seconds (`20`, `2.5`).

use std::time::Duration;

/// The longest duration a flag takes (about 31 years): longer ones are surely a typo.
const MAX_SECONDS: f64 = 1e9;

/// Parses a positive duration: a number with an optional unit, `ms`, `s`, `m` or `h` (no unit:
/// seconds). The clap value parser of `--duration` and `--connect-timeout`; the error says
/// what is accepted.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let scale = match unit.trim() {
        "" | "s" => 1.0,
        "ms" => 0.001,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(expected(text)),
    };
    let value: f64 = number.parse().map_err(|_| expected(text))?;
    let seconds = value * scale;
    if !(seconds.is_finite() && seconds > 0.0) {
        return Err(format!("{text:?} is not above 0"));
    }
    if seconds >= MAX_SECONDS {
        return Err(format!("{text:?} is too long (at most {MAX_SECONDS:e} s)"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

fn expected(text: &str) -> String {
    format!(
        "{text:?} is not a duration: give seconds (20, 2.5) or a number with a unit \
         (500ms, 5s, 10m, 1h)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn units_and_plain_seconds() {
        let ok = |s: &str| parse_duration(s).unwrap();
        assert_eq!(ok("20"), Duration::from_secs(20));
        assert_eq!(ok("2.5"), Duration::from_millis(2500));
        assert_eq!(ok("5s"), Duration::from_secs(5));
        assert_eq!(ok("500ms"), Duration::from_millis(500));
        assert_eq!(ok("10m"), Duration::from_secs(600));
        assert_eq!(ok("1h"), Duration::from_secs(3600));
        assert_eq!(ok("1.5h"), Duration::from_secs(5400));
        assert_eq!(ok(" 3 s "), Duration::from_secs(3));
    }

    #[test]
    fn bad_values_say_what_is_accepted() {
        for bad in [
            "", "s", "5x", "5 sec", "-1", "1e3", "five", "1.2.3s", "ms5", "nan",
        ] {
            let err = parse_duration(bad).unwrap_err();
            assert!(err.contains("not a duration"), "{bad:?}: {err}");
        }
        assert!(parse_duration("0").unwrap_err().contains("not above 0"));
        assert!(parse_duration("0ms").unwrap_err().contains("not above 0"));
        assert!(parse_duration("1000000000")
            .unwrap_err()
            .contains("too long"));
    }
}
