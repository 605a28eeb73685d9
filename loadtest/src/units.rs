//! Parsing and formatting of byte sizes and durations given on the command line.

use std::time::Duration;

/// One kibibyte.
pub const KIB: u64 = 1024;
/// One mebibyte.
pub const MIB: u64 = 1024 * KIB;
/// One gibibyte.
pub const GIB: u64 = 1024 * MIB;

/// Parses a byte size such as `1MiB`, `10mib`, `512KiB`, `1GiB`, `4096`, `1MB` (decimal, 10^6) or `64m` (binary).
///
/// Binary units: `k`/`KiB`, `m`/`MiB`, `g`/`GiB`; decimal units: `KB`, `MB`, `GB`; a bare number or `B` is bytes.
/// Fractions are accepted (`1.5MiB`) and rounded down to whole bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    if num.is_empty() {
        return Err(format!("invalid size {text:?}: expected a number such as 1MiB"));
    }
    let value: f64 = num.parse().map_err(|_| format!("invalid size {text:?}"))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => KIB,
        "m" | "mib" => MIB,
        "g" | "gib" => GIB,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "invalid size unit {other:?} in {text:?} (use KiB, MiB, GiB, KB, MB, GB)"
            ));
        }
    };
    let bytes = value * mult as f64;
    if !bytes.is_finite() || bytes < 1.0 || bytes > (1u64 << 50) as f64 {
        return Err(format!("size {text:?} out of range (1 byte to 1 PiB)"));
    }
    Ok(bytes as u64)
}

/// Formats a byte count compactly, using the largest binary unit that divides it exactly (`1MiB`, `1536KiB`).
pub fn format_size(bytes: u64) -> String {
    for (unit, div) in [("GiB", GIB), ("MiB", MIB), ("KiB", KIB)] {
        if bytes >= div && bytes.is_multiple_of(div) {
            return format!("{}{unit}", bytes / div);
        }
    }
    format!("{bytes}B")
}

/// Parses a duration such as `10s`, `500ms`, `2m`, `1h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("invalid duration {text:?}: expected e.g. 10s"))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("invalid duration unit {other:?} in {text:?} (use ms, s, m, h)")),
    };
    if !secs.is_finite() || secs <= 0.0 {
        return Err(format!("duration {text:?} must be positive"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// The default chunk size for a chunked push of a `size`-byte blob: a sixteenth of it, at least 64 KiB.
pub fn default_chunk(size: u64) -> u64 {
    (size.div_ceil(16)).max(64 * KIB)
}

/// Splits `0..size` into consecutive chunks of at most `chunk` bytes (the last one may be shorter).
pub fn split_chunks(size: u64, chunk: u64) -> Vec<std::ops::Range<u64>> {
    let chunk = chunk.max(1);
    let mut out = Vec::with_capacity(size.div_ceil(chunk) as usize);
    let mut start = 0;
    while start < size {
        let end = (start + chunk).min(size);
        out.push(start..end);
        start = end;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size("1MiB").unwrap(), MIB);
        assert_eq!(parse_size("10mib").unwrap(), 10 * MIB);
        assert_eq!(parse_size("100MiB").unwrap(), 100 * MIB);
        assert_eq!(parse_size("1GiB").unwrap(), GIB);
        assert_eq!(parse_size("64m").unwrap(), 64 * MIB);
        assert_eq!(parse_size("512KiB").unwrap(), 512 * KIB);
        assert_eq!(parse_size("1MB").unwrap(), 1_000_000);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert_eq!(parse_size("1.5MiB").unwrap(), MIB + MIB / 2);
        assert!(parse_size("").is_err());
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("3 parsecs").is_err());
        assert!(parse_size("0").is_err());
    }

    #[test]
    fn sizes_format_round_trip() {
        for s in [1, 1000, KIB, 1536 * KIB, MIB, 10 * MIB, 100 * MIB, GIB] {
            assert_eq!(parse_size(&format_size(s)).unwrap(), s);
        }
        assert_eq!(format_size(GIB), "1GiB");
        assert_eq!(format_size(10 * MIB), "10MiB");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("10s").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("10").unwrap(), Duration::from_secs(10));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn chunks_cover_exactly() {
        assert_eq!(split_chunks(10, 4), vec![0..4, 4..8, 8..10]);
        assert_eq!(split_chunks(8, 4), vec![0..4, 4..8]);
        assert_eq!(split_chunks(3, 64), vec![0..3]);
        assert!(split_chunks(0, 4).is_empty());
        for size in [MIB, 10 * MIB + 7, GIB] {
            let chunks = split_chunks(size, default_chunk(size));
            assert!(chunks.len() <= 16);
            assert_eq!(chunks.first().unwrap().start, 0);
            assert_eq!(chunks.last().unwrap().end, size);
            assert!(chunks.windows(2).all(|w| w[0].end == w[1].start));
        }
        assert_eq!(default_chunk(GIB), 64 * MIB);
        assert_eq!(default_chunk(KIB), 64 * KIB);
    }
}
