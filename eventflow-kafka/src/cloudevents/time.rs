//! RFC 3339 timestamps for `ce_time`, written and read without a date library: the
//! calendar arithmetic is Howard Hinnant's `days_from_civil` / `civil_from_days`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The longest value [`write`] produces: `YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ`.
pub(crate) const MAX_LEN: usize = 30;

/// Writes `nanos` since the Unix epoch as RFC 3339 in UTC into `out`, with as many
/// fractional digits (0, 3, 6 or 9) as the value needs, and returns the text.
pub(crate) fn write(nanos: u64, out: &mut [u8; MAX_LEN]) -> &str {
    let secs = nanos / 1_000_000_000;
    let fraction = (nanos % 1_000_000_000) as u32;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut at = 0;
    let mut put = |n: u64, width: usize, then: Option<u8>| {
        for i in 0..width {
            out[at + i] = b'0' + (n / 10u64.pow((width - 1 - i) as u32) % 10) as u8;
        }
        at += width;
        if let Some(separator) = then {
            out[at] = separator;
            at += 1;
        }
    };
    // A u64 of nanoseconds ends in 2554: four digits of year always suffice.
    put(year as u64, 4, Some(b'-'));
    put(month.into(), 2, Some(b'-'));
    put(day.into(), 2, Some(b'T'));
    put(of_day / 3600, 2, Some(b':'));
    put(of_day / 60 % 60, 2, Some(b':'));
    put(of_day % 60, 2, None);
    if fraction != 0 {
        let (value, width) = if fraction % 1_000_000 == 0 {
            (fraction / 1_000_000, 3)
        } else if fraction % 1_000 == 0 {
            (fraction / 1_000, 6)
        } else {
            (fraction, 9)
        };
        put(0, 0, Some(b'.'));
        put(value.into(), width, None);
    }
    put(0, 0, Some(b'Z'));
    std::str::from_utf8(&out[..at]).expect("ASCII digits")
}

/// Reads an RFC 3339 timestamp (`2026-12-01T08:39:13.5+01:00`, `...Z`; `t`, `z` and a
/// space for `T` accepted, any number of fractional digits, nanoseconds kept).
pub(crate) fn parse(text: &str) -> Result<SystemTime, String> {
    let bad = |why: &str| {
        format!(
            "{text:?} is not an RFC 3339 timestamp ({why}); CloudEvents' `time` is written like \
             2026-12-01T08:39:13.123Z"
        )
    };
    let b = text.as_bytes();
    let number = |range: std::ops::Range<usize>, what: &str| -> Result<u32, String> {
        let digits = b
            .get(range)
            .ok_or_else(|| bad(&format!("it ends before the {what}")))?;
        if !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad(&format!("the {what} is not a number")));
        }
        Ok(digits.iter().fold(0, |n, d| n * 10 + u32::from(d - b'0')))
    };
    let separator = |at: usize, allowed: &[u8], what: &str| match b.get(at) {
        Some(c) if allowed.contains(c) => Ok(()),
        _ => Err(bad(&format!("expected {what} at position {at}"))),
    };
    let year = number(0..4, "year")?;
    separator(4, b"-", "'-'")?;
    let month = number(5..7, "month")?;
    separator(7, b"-", "'-'")?;
    let day = number(8..10, "day")?;
    separator(10, b"Tt ", "'T'")?;
    let hour = number(11..13, "hour")?;
    separator(13, b":", "':'")?;
    let minute = number(14..16, "minute")?;
    separator(16, b":", "':'")?;
    let second = number(17..19, "second")?;
    if !(1..=12).contains(&month) || day == 0 || day > days_in_month(year, month) {
        return Err(bad("no such date"));
    }
    if hour > 23 || minute > 59 || second > 60 {
        return Err(bad("no such time of day"));
    }
    let mut at = 19;
    let mut nanos = 0u32;
    if b.get(at) == Some(&b'.') {
        let digits = b[at + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return Err(bad("no digits after '.'"));
        }
        for (i, d) in b[at + 1..at + 1 + digits].iter().enumerate().take(9) {
            nanos += u32::from(d - b'0') * 10u32.pow(8 - i as u32);
        }
        at += 1 + digits;
    }
    let offset_secs: i64 = match b.get(at) {
        Some(b'Z' | b'z') if at + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if at + 6 == b.len() => {
            separator(at + 3, b":", "':' in the offset")?;
            let (h, m) = (
                number(at + 1..at + 3, "offset")?,
                number(at + 4..at + 6, "offset")?,
            );
            if h > 23 || m > 59 {
                return Err(bad("no such offset"));
            }
            let secs = i64::from(h * 3600 + m * 60);
            if *sign == b'+' {
                secs
            } else {
                -secs
            }
        }
        _ => return Err(bad("it needs a 'Z' or an offset such as +01:00 at the end")),
    };
    let days = days_from_civil(i64::from(year), month, day);
    let secs = days * 86_400 + i64::from(hour * 3600 + minute * 60 + second) - offset_secs;
    let since_epoch = Duration::from_secs(secs.unsigned_abs()) + Duration::from_nanos(nanos.into());
    if secs >= 0 {
        Ok(UNIX_EPOCH + since_epoch)
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .map(|t| t + Duration::from_nanos(nanos.into()))
            .ok_or_else(|| bad("too far before 1970"))
    }
}

fn days_in_month(year: u32, month: u32) -> u32 {
    match month {
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a date in the proleptic Gregorian calendar.
fn days_from_civil(year: i64, month: u32, day: u32) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = if year >= 0 { year } else { year - 399 } / 400;
    let year_of_era = year - era * 400;
    let march_based = i64::from((month + 9) % 12);
    let day_of_year = (153 * march_based + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The date `days` after 1970-01-01.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let day_of_era = z - era * 146_097;
    let year_of_era = (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * march_based + 2) / 5 + 1) as u32;
    let month = if march_based < 10 {
        march_based + 3
    } else {
        march_based - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
