//! Reading and writing NAB-format CSV text (`timestamp,value`), without I/O:
//! callers hand in the text and get rows or an error naming the line.

use thiserror::Error;

/// One input row: the timestamp as written (echoed back unchanged) and as
/// seconds since the Unix epoch, and the value as written and as a number.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub line: usize,
    pub timestamp_text: String,
    pub timestamp: f64,
    pub value_text: String,
    pub value: f64,
}

/// Why a CSV text could not be read.
#[derive(Debug, Error, PartialEq)]
pub enum CsvError {
    #[error("line {line}: expected `timestamp,value`, found {found} field(s)")]
    FieldCount { line: usize, found: usize },
    #[error("line {line}: invalid timestamp `{text}`: expected `YYYY-MM-DD HH:MM:SS[.ffffff]`")]
    Timestamp { line: usize, text: String },
    #[error("line {line}: invalid value `{text}`: expected a number")]
    Value { line: usize, text: String },
    #[error("line 1: expected the header `timestamp,value`, found `{found}`")]
    Header { found: String },
    #[error("no data rows after the header")]
    Empty,
    #[error("the file is empty: expected the header `timestamp,value` and rows")]
    NoHeader,
}

/// Parses NAB CSV text: a `timestamp,value` header, then one row per line.
/// Blank lines are skipped; `nan`, `inf` and empty values are kept as NaN
/// or infinities (the detector skips them) rather than rejected, since
/// exported metrics do contain them.
pub fn parse(text: &str) -> Result<Vec<Row>, CsvError> {
    let mut lines = text.lines().enumerate();
    let header = loop {
        match lines.next() {
            Some((_, l)) if l.trim().is_empty() => continue,
            Some((_, l)) => break l,
            None => return Err(CsvError::NoHeader),
        }
    };
    let cols: Vec<String> =
        header.split(',').map(|c| c.trim().trim_matches('"').to_ascii_lowercase()).collect();
    if cols.len() < 2 || cols[0] != "timestamp" || cols[1] != "value" {
        return Err(CsvError::Header { found: header.to_string() });
    }
    let mut rows = Vec::new();
    for (i, l) in lines {
        let line = i + 1;
        let l = l.trim_end_matches('\r');
        if l.trim().is_empty() {
            continue;
        }
        let fields: Vec<&str> = l.split(',').collect();
        if fields.len() != cols.len() {
            return Err(CsvError::FieldCount { line, found: fields.len() });
        }
        let ts_text = fields[0].trim().trim_matches('"');
        let timestamp = parse_timestamp(ts_text)
            .ok_or_else(|| CsvError::Timestamp { line, text: ts_text.to_string() })?;
        let v_text = fields[1].trim().trim_matches('"');
        let value = parse_value(v_text).ok_or_else(|| CsvError::Value { line, text: v_text.to_string() })?;
        rows.push(Row {
            line,
            timestamp_text: ts_text.to_string(),
            timestamp,
            value_text: v_text.to_string(),
            value,
        });
    }
    if rows.is_empty() {
        return Err(CsvError::Empty);
    }
    Ok(rows)
}

fn parse_value(s: &str) -> Option<f64> {
    match s.to_ascii_lowercase().as_str() {
        "" | "nan" | "null" => Some(f64::NAN),
        _ => s.parse::<f64>().ok(),
    }
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fraction]` (also with `T` and a trailing `Z`)
/// as UTC, into seconds since the Unix epoch.
pub fn parse_timestamp(s: &str) -> Option<f64> {
    let s = s.strip_suffix('Z').unwrap_or(s);
    let b = s.as_bytes();
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !(b[10] == b' ' || b[10] == b'T')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let t = &s[r];
        if t.bytes().all(|c| c.is_ascii_digit()) {
            t.parse().ok()
        } else {
            None
        }
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, se) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || se > 60 {
        return None;
    }
    let mut frac = 0.0;
    if b.len() > 19 {
        if b[19] != b'.' || b.len() == 20 || !s[20..].bytes().all(|c| c.is_ascii_digit()) {
            return None;
        }
        frac = format!("0.{}", &s[20..]).parse().ok()?;
    }
    let days = days_from_civil(y, mo, d);
    Some((days * 86_400 + h * 3600 + mi * 60 + se) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats an anomaly score for the output column.
pub fn format_score(s: f64) -> String {
    // Enough digits that distinct scores stay distinct for threshold sweeps.
    let t = format!("{s:.12}");
    let t = t.trim_end_matches('0');
    t.strip_suffix('.').map(|x| format!("{x}.0")).unwrap_or_else(|| t.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_parse_as_utc_seconds() {
        assert_eq!(parse_timestamp("1970-01-01 00:00:00"), Some(0.0));
        assert_eq!(parse_timestamp("2014-07-01 00:00:00"), Some(1_404_172_800.0));
        assert_eq!(parse_timestamp("2014-07-01T00:00:01Z"), Some(1_404_172_801.0));
        assert_eq!(parse_timestamp("2014-02-19 10:50:00.500000"), Some(1_392_807_000.5));
        assert_eq!(parse_timestamp("2000-02-29 00:00:00"), Some(951_782_400.0));
        for bad in ["2014-07-01", "2014/07/01 00:00:00", "2014-13-01 00:00:00", "2014-07-01 00:00:00.", "x"] {
            assert_eq!(parse_timestamp(bad), None, "{bad}");
        }
    }

    #[test]
    fn csv_rows_keep_their_text_and_line() {
        let rows = parse("timestamp,value\n2014-07-01 00:00:00,1.5\n\n2014-07-01 00:05:00,nan\n").unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].value, 1.5);
        assert_eq!(rows[1].line, 4);
        assert!(rows[1].value.is_nan());
        assert_eq!(rows[1].timestamp_text, "2014-07-01 00:05:00");
    }

    #[test]
    fn malformed_csv_names_the_line() {
        let e = parse("timestamp,value\n2014-07-01 00:00:00,1\n2014-07-01 00:05:00,abc\n").unwrap_err();
        assert_eq!(e.to_string(), "line 3: invalid value `abc`: expected a number");
        let e = parse("timestamp,value\n2014-07-01 00:00:00,1,2\n").unwrap_err();
        assert_eq!(e, CsvError::FieldCount { line: 2, found: 3 });
        let e = parse("timestamp,value\nyesterday,1\n").unwrap_err();
        assert!(e.to_string().starts_with("line 2: invalid timestamp `yesterday`"), "{e}");
        assert!(matches!(parse("time,val\n"), Err(CsvError::Header { .. })));
        assert_eq!(parse("timestamp,value\n"), Err(CsvError::Empty));
        assert_eq!(parse("\n"), Err(CsvError::NoHeader));
    }

    #[test]
    fn scores_format_compactly() {
        assert_eq!(format_score(0.0), "0.0");
        assert_eq!(format_score(1.0), "1.0");
        assert_eq!(format_score(0.25), "0.25");
    }
}
