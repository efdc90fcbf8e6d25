//! Where output goes and how numbers look.
//!
//! Results go to stdout (a table, or exactly one JSON document under `--json`); progress and
//! logs go to stderr, and only when stderr is a terminal and neither `--json` nor `-q` was given,
//! so scripts never see escape codes.

use std::io::{self, IsTerminal, Write};

/// The global output settings.
#[derive(Clone, Copy, Debug)]
pub struct Output {
    pub json: bool,
    pub quiet: bool,
}

impl Output {
    /// Whether progress bars may be drawn.
    pub fn progress_enabled(&self) -> bool {
        !self.json && !self.quiet && io::stderr().is_terminal()
    }

    /// Writes `text` to stdout. A closed pipe (`qtool inspect x | head`) is not an error: the
    /// reader has what it wanted, so qtool stops quietly with success.
    pub fn print(&self, text: &str) -> anyhow::Result<()> {
        let mut out = io::stdout().lock();
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
            Err(e) => Err(anyhow::anyhow!("writing to stdout: {e}")),
        }
    }

    /// Prints a JSON document followed by a newline.
    pub fn print_json(&self, value: &impl serde::Serialize) -> anyhow::Result<()> {
        let mut text = serde_json::to_string_pretty(value)?;
        text.push('\n');
        self.print(&text)
    }
}

/// `1234567` → `1,234,567`.
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Bytes in binary units: `1536` → `1.50 KiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.2} {}", UNITS[unit])
}

/// A float in a table cell: plain notation for ordinary magnitudes, scientific otherwise, so
/// columns stay narrow without hiding tiny or huge values.
pub fn short_float(x: f64) -> String {
    if x.is_nan() {
        return "nan".to_string();
    }
    if x.is_infinite() {
        return if x > 0.0 { "inf".to_string() } else { "-inf".to_string() };
    }
    let a = x.abs();
    if a == 0.0 {
        "0".to_string()
    } else if (1e-3..1e5).contains(&a) {
        let s = format!("{x:.5}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{x:.4e}")
    }
}

/// A message as one line: errors may quote multi-line text (a JSON parser's context, a
/// library's message), but the contract is a single `error:` line.
pub fn one_line(msg: &str) -> String {
    msg.split(['\n', '\r']).map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn number_formats() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.50 KiB");
        assert_eq!(human_bytes(3 << 30), "3.00 GiB");
        assert_eq!(short_float(0.0), "0");
        assert_eq!(short_float(1.5), "1.5");
        assert_eq!(short_float(-0.03125), "-0.03125");
        assert_eq!(short_float(1e-7), "1.0000e-7");
        assert_eq!(short_float(f64::NAN), "nan");
        assert_eq!(short_float(f64::NEG_INFINITY), "-inf");
        assert_eq!(one_line("a\n  b\r\n\nc"), "a b c");
    }
}
