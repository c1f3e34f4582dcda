//! Human-readable sizes for the CLI's output.

/// Formats a byte count with binary units, e.g. `1.50 MiB`; exact bytes below 1 KiB.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// Parses a rate for `--max-download-rate` / `--max-upload-rate` into bytes per second: a bare number
/// is bytes per second; `KiB`/`MiB`/`GiB` are binary, `KB`/`MB`/`GB` decimal (`1.5MB` = 1,500,000),
/// `B` is bytes; an optional `/s` may follow. `0` means unlimited.
pub fn parse_rate(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let t = t.strip_suffix("/s").unwrap_or(t).trim_end();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let factor: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?} (use B, KiB, MiB, GiB, KB, MB or GB)"
            ))
        }
    };
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(format!(
            "{text:?} is not a rate (e.g. 500KiB, 20MiB, 1.5MB)"
        ));
    }
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a rate (e.g. 500KiB, 20MiB, 1.5MB)"))?;
    let bytes = (value * factor as f64).round();
    if !bytes.is_finite() || bytes >= u64::MAX as f64 {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn parses_rates() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("1000"), Ok(1000));
        assert_eq!(parse_rate("500KiB"), Ok(500 * 1024));
        assert_eq!(parse_rate("20MiB"), Ok(20 * 1024 * 1024));
        assert_eq!(parse_rate("1GiB"), Ok(1 << 30));
        assert_eq!(parse_rate("1.5MB"), Ok(1_500_000));
        assert_eq!(parse_rate("2KB"), Ok(2000));
        assert_eq!(parse_rate("3GB"), Ok(3_000_000_000));
        assert_eq!(parse_rate("100 kib/s"), Ok(102_400));
        assert_eq!(parse_rate("12B"), Ok(12));
        for bad in [
            "",
            "KiB",
            "-1",
            "1.2.3MB",
            "5 parsecs",
            "1e400",
            "99999999999999999999GB",
        ] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn formats_sizes() {
        assert_eq!(super::bytes(0), "0 B");
        assert_eq!(super::bytes(1023), "1023 B");
        assert_eq!(super::bytes(1536), "1.50 KiB");
        assert_eq!(super::bytes(16 * 1024 * 1024), "16.00 MiB");
        assert_eq!(super::bytes(u64::MAX), "16.00 EiB");
    }
}
