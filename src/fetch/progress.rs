//! Download progress: an indicatif bar per file when stderr is a terminal, otherwise one log
//! line per file every few seconds (RunPod's log viewer shows lines, not redraws).

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How progress is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ProgressMode {
    /// Bars on a terminal, log lines otherwise.
    #[default]
    Auto,
    /// Log lines only.
    Lines,
    /// Nothing but the final summary.
    Hidden,
}

/// Creates per-file progress reporters.
#[derive(Clone)]
pub struct ProgressHub {
    bars: Option<indicatif::MultiProgress>,
    mode: ProgressMode,
    interval: Duration,
}

impl ProgressHub {
    pub fn new(mode: ProgressMode) -> Self {
        let bars = (mode == ProgressMode::Auto && std::io::stderr().is_terminal())
            .then(indicatif::MultiProgress::new);
        ProgressHub {
            bars,
            mode,
            interval: Duration::from_secs(5),
        }
    }

    pub fn file(&self, label: &str) -> FileProgress {
        let bar = self.bars.as_ref().map(|m| {
            let b = m.add(indicatif::ProgressBar::new(0));
            let style = indicatif::ProgressStyle::with_template(
                "{msg:40!} {bar:30} {bytes:>10}/{total_bytes:10} {binary_bytes_per_sec:>12} ETA {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
            b.set_style(style);
            b.set_message(label.to_string());
            b
        });
        FileProgress {
            inner: Arc::new(Inner {
                label: label.to_string(),
                pos: AtomicU64::new(0),
                start_pos: AtomicU64::new(0),
                total: AtomicU64::new(0),
                last_log_ms: AtomicU64::new(0),
                announced: AtomicBool::new(false),
                start: Instant::now(),
                bar,
                lines: self.mode != ProgressMode::Hidden,
                interval_ms: self.interval.as_millis() as u64,
            }),
        }
    }
}

struct Inner {
    label: String,
    pos: AtomicU64,
    /// Position when this run started (resumed bytes do not count toward the rate).
    start_pos: AtomicU64,
    total: AtomicU64,
    last_log_ms: AtomicU64,
    announced: AtomicBool,
    start: Instant,
    bar: Option<indicatif::ProgressBar>,
    lines: bool,
    interval_ms: u64,
}

/// Progress of one file; cheap to clone and to update from the download loop.
#[derive(Clone)]
pub struct FileProgress {
    inner: Arc<Inner>,
}

pub(crate) fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

impl FileProgress {
    /// First line for a file: what is downloaded from where (host only), and the resume point.
    pub fn announce(&self, total: Option<u64>, offset: u64, host: &str) {
        let i = &self.inner;
        if i.announced.swap(true, Ordering::Relaxed) || !(i.lines || i.bar.is_some()) {
            return;
        }
        let size = total
            .map(human_bytes)
            .unwrap_or_else(|| "unknown size".into());
        if offset > 0 {
            tracing::info!(
                "{}: downloading {size} from {host}, resuming at {}",
                i.label,
                human_bytes(offset)
            );
        } else {
            tracing::info!("{}: downloading {size} from {host}", i.label);
        }
    }

    pub fn set_total(&self, total: u64) {
        self.inner.total.store(total, Ordering::Relaxed);
        if let Some(b) = &self.inner.bar {
            b.set_length(total);
        }
    }

    /// Jumps to an absolute position (resume, restart).
    pub fn set_position(&self, pos: u64) {
        let i = &self.inner;
        if i.pos.load(Ordering::Relaxed) == 0 {
            i.start_pos.store(pos, Ordering::Relaxed);
        }
        i.pos.store(pos, Ordering::Relaxed);
        if let Some(b) = &i.bar {
            b.set_position(pos);
        }
    }

    pub fn inc(&self, n: u64) {
        let i = &self.inner;
        let pos = i.pos.fetch_add(n, Ordering::Relaxed) + n;
        if let Some(b) = &i.bar {
            b.set_position(pos);
            return;
        }
        if !i.lines {
            return;
        }
        let now = i.start.elapsed().as_millis() as u64;
        let last = i.last_log_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= i.interval_ms
            && i.last_log_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.log_line(pos);
        }
    }

    fn rate(&self, pos: u64) -> f64 {
        let secs = self.inner.start.elapsed().as_secs_f64().max(1e-3);
        pos.saturating_sub(self.inner.start_pos.load(Ordering::Relaxed)) as f64 / secs
    }

    fn log_line(&self, pos: u64) {
        let total = self.inner.total.load(Ordering::Relaxed);
        let rate = self.rate(pos);
        if total > 0 {
            let eta = if rate > 0.0 {
                format!("{:.0}s", total.saturating_sub(pos) as f64 / rate)
            } else {
                "?".into()
            };
            tracing::info!(
                "{}: {} / {} ({:.0}%), {}/s, ETA {eta}",
                self.inner.label,
                human_bytes(pos),
                human_bytes(total),
                pos as f64 * 100.0 / total as f64,
                human_bytes(rate as u64)
            );
        } else {
            tracing::info!(
                "{}: {}, {}/s",
                self.inner.label,
                human_bytes(pos),
                human_bytes(rate as u64)
            );
        }
    }

    /// Final line for this file.
    pub fn finish(&self, outcome: &str) {
        let i = &self.inner;
        if let Some(b) = &i.bar {
            b.finish_with_message(format!("{} ({outcome})", i.label));
        }
        if i.lines || i.bar.is_some() {
            let pos = i.pos.load(Ordering::Relaxed);
            tracing::info!(
                "{}: {outcome}, {} in {:.1}s ({}/s)",
                i.label,
                human_bytes(pos.saturating_sub(i.start_pos.load(Ordering::Relaxed))),
                i.start.elapsed().as_secs_f64(),
                human_bytes(self.rate(pos) as u64)
            );
        }
    }

    pub fn abandon(&self) {
        if let Some(b) = &self.inner.bar {
            b.abandon();
        }
    }
}
