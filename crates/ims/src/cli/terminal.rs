//! What the CLI shows on the terminal while it works, and how it reacts to Ctrl-C: `--quiet`,
//! progress bars on stderr (drawn only when stderr is a terminal), the interruption token.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, Ordering};
use tokio_util::sync::CancellationToken;

static QUIET: AtomicBool = AtomicBool::new(false);

/// No progress bars or progress lines from now on in this process (`--quiet`).
pub fn set_quiet() {
    QUIET.store(true, Ordering::Relaxed);
}

/// Whether `--quiet` was given.
pub fn quiet() -> bool {
    QUIET.load(Ordering::Relaxed)
}

/// Whether progress is drawn: on a terminal, unless quiet.
fn drawn() -> bool {
    !quiet() && std::io::stderr().is_terminal()
}

/// A byte-count progress bar on stderr, drawn only when stderr is a terminal (and not quiet).
pub fn progress(len: u64, what: &str) -> ProgressBar {
    if !drawn() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// A progress line on stderr for work of unknown total size (`what`: the bytes so far and what
/// happened to them, e.g. "written"; elapsed time), drawn only when stderr is a terminal (and not
/// quiet).
pub fn bytes_progress(what: &str, done: &str) -> ProgressBar {
    if !drawn() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    bar.set_style(
        ProgressStyle::with_template(&format!(
            "{{spinner}} {{msg}}: {{bytes}} {done}, {{elapsed}}"
        ))
        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    bar.set_message(what.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// The S3 transfers' progress as bars (one per object).
pub struct Bars;

impl ims_client::s3::Progress for Bars {
    fn start(&self, what: &str, total: u64) -> Box<dyn ims_client::s3::Meter> {
        Box::new(Bar(progress(total, what)))
    }
}

struct Bar(ProgressBar);

impl ims_client::s3::Meter for Bar {
    fn advance(&self, bytes: u64) {
        self.0.inc(bytes);
    }
    fn finish(&self) {
        self.0.finish_and_clear();
    }
}

/// A token cancelled by the first Ctrl-C (SIGINT) from now on. Commands that take it handle the
/// interruption themselves — abort uploads, remove partial files, undo records — and exit with an
/// error instead of dying half-way. Call inside the runtime.
pub fn interrupt_token() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            t.cancel();
        }
    });
    token
}

/// The async runtime of a client command.
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))
}
