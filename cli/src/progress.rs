//! Progress bars on stderr, drawn only where `Output::progress_enabled` allows.

use indicatif::{ProgressBar, ProgressStyle};

use crate::output::Output;

/// A byte-counting bar, or a hidden one that costs nothing when progress is off.
pub fn bytes_bar(out: &Output, total: u64, message: &str) -> ProgressBar {
    if !out.progress_enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style = ProgressStyle::with_template(
        "{msg} [{bar:30}] {binary_bytes}/{binary_total_bytes} {binary_bytes_per_sec} eta {eta}",
    )
    .map(|s| s.progress_chars("=> "))
    .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

/// A bar counting items (tensors), or a hidden one when progress is off; the caller sets the
/// length once it is known.
pub fn count_bar(out: &Output, message: &str) -> ProgressBar {
    if !out.progress_enabled() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    let style = ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {wide_msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar());
    bar.set_style(style);
    bar.set_prefix(message.to_string());
    bar
}
