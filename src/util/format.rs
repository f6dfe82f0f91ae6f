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
}
