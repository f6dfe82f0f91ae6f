//! Numbers as people read them: durations, ages, byte counts, round trips, dates. Every
//! number the window or the CLI shows as text goes through here, so the same quantity reads
//! the same in the tenant list, a tab, an export and `rac inspect`.

use std::time::Duration;

/// `42 s`, `5 min`, `3 h 20 min`, `2 d 4 h`.
pub fn span(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
        _ => format!("{} d {} h", secs / 86_400, secs % 86_400 / 3600),
    }
}

/// A past instant relative to now: `5 min ago`.
pub fn ago(unix_secs: u64, now_unix_secs: u64) -> String {
    format!("{} ago", span(now_unix_secs.saturating_sub(unix_secs)))
}

/// `512 B`, `1.5 KiB`, `3.2 GiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{n} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// A stage time: `12 ms`, `1.24 s`.
pub fn millis(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{:.2} s", d.as_secs_f64())
    }
}

/// A round trip in milliseconds: `0.4 ms`, or `—` when none was measured.
pub fn round_trip(ms: Option<f64>) -> String {
    ms.map(|r| format!("{r:.1} ms"))
        .unwrap_or_else(|| "—".into())
}

/// `HH:MM:SS` UTC of a Unix time (the log and session lists).
pub fn clock(unix_secs: u64) -> String {
    let s = unix_secs % 86_400;
    format!("{:02}:{:02}:{:02}", s / 3600, s % 3600 / 60, s % 60)
}

/// Unix seconds as `YYYY-MM-DD HH:MM UTC`.
pub fn date_time(unix_secs: u64) -> String {
    // Days to civil date (Howard Hinnant's algorithm).
    let days = (unix_secs / 86_400) as i64 + 719_468;
    let era = days.div_euclid(146_097);
    let doe = days - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let rem = unix_secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60
    )
}

/// A time as a person or a script writes it, to Unix seconds: Unix seconds themselves, or a
/// UTC date with an optional time, `YYYY-MM-DD`, `YYYY-MM-DD HH:MM` or `YYYY-MM-DDTHH:MM:SS`
/// (a trailing `Z` or ` UTC` allowed, as [`date_time`] writes it). The error says what is
/// taken.
pub fn parse_date_time(text: &str) -> Result<u64, String> {
    let bad = || {
        format!(
            "{text:?} is not a time: give Unix seconds, or a UTC date and time such as \
             2025-01-31, 2025-01-31T08:00 or \"2025-01-31 08:00:00\""
        )
    };
    let trimmed = text.trim();
    if let Ok(secs) = trimmed.parse::<u64>() {
        return Ok(secs);
    }
    let trimmed = trimmed
        .strip_suffix(" UTC")
        .or_else(|| trimmed.strip_suffix('Z'))
        .unwrap_or(trimmed);
    let (date, time) = match trimmed.split_once(['T', ' ']) {
        Some((date, time)) => (date, Some(time)),
        None => (trimmed, None),
    };
    let number = |part: &str, digits: usize| -> Result<i64, String> {
        if part.len() == digits && part.bytes().all(|b| b.is_ascii_digit()) {
            part.parse().map_err(|_| bad())
        } else {
            Err(bad())
        }
    };
    let mut fields = date.split('-');
    let (Some(y), Some(m), Some(d), None) =
        (fields.next(), fields.next(), fields.next(), fields.next())
    else {
        return Err(bad());
    };
    let (year, month, day) = (number(y, 4)?, number(m, 2)?, number(d, 2)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if year < 1970 || !(1..=days_in_month).contains(&day) {
        return Err(bad());
    }
    let secs_of_day = match time {
        None => 0,
        Some(time) => {
            let parts: Vec<&str> = time.split(':').collect();
            let (h, m, s) = match parts[..] {
                [h, m] => (number(h, 2)?, number(m, 2)?, 0),
                [h, m, s] => (number(h, 2)?, number(m, 2)?, number(s, 2)?),
                _ => return Err(bad()),
            };
            if h > 23 || m > 59 || s > 59 {
                return Err(bad());
            }
            h * 3600 + m * 60 + s
        }
    };
    // Civil date to days (Howard Hinnant's algorithm), the inverse of `date_time`'s.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Ok((days * 86_400 + secs_of_day) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_and_bytes_read_naturally() {
        assert_eq!(span(42), "42 s");
        assert_eq!(span(300), "5 min");
        assert_eq!(span(3600 * 3 + 1200), "3 h 20 min");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(3 << 30), "3.0 GiB");
        assert_eq!(span(90_061), "1 d 1 h");
        assert_eq!(date_time(0), "1970-01-01 00:00 UTC");
        assert_eq!(date_time(1_700_000_000), "2023-11-14 22:13 UTC");
        assert_eq!(clock(3661), "01:01:01");
        assert_eq!(millis(Duration::from_millis(12)), "12 ms");
        assert_eq!(round_trip(Some(0.44)), "0.4 ms");
        assert_eq!(round_trip(None), "—");
    }

    #[test]
    fn times_parse_as_unix_seconds_or_utc_dates() {
        assert_eq!(parse_date_time("1700000000"), Ok(1_700_000_000));
        assert_eq!(parse_date_time("1970-01-01"), Ok(0));
        assert_eq!(parse_date_time("2023-11-14T22:13:20"), Ok(1_700_000_000));
        assert_eq!(parse_date_time("2023-11-14 22:13"), Ok(1_699_999_980));
        assert_eq!(parse_date_time("2023-11-14 22:13 UTC"), Ok(1_699_999_980));
        assert_eq!(parse_date_time("2024-02-29Z"), Ok(1_709_164_800));
        for t in [1_700_000_000, 951_782_400, 4_102_444_800] {
            assert_eq!(parse_date_time(&date_time(t)), Ok(t - t % 60), "{t}");
        }
        for bad in [
            "",
            "yesterday",
            "2023-02-29",
            "2023-13-01",
            "2023-1-01",
            "1969-12-31",
            "2023-11-14T24:00",
            "2023-11-14T22",
            "-5",
        ] {
            let err = parse_date_time(bad).expect_err(bad);
            assert!(err.contains("Unix seconds"), "{err}");
        }
    }
}
