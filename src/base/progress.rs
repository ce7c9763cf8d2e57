//! Everything nix-seed prints goes through here: log lines (text or JSON) and the
//! progress display, which is an indicatif bar on a terminal and a plain line every few
//! seconds otherwise (indicatif draws nothing when stderr is not a TTY, as in Kubernetes
//! logs, and has no text mode). The copy engine only updates counters; a thread here
//! samples them.

use std::ffi::OsStr;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{HumanBytes, HumanDuration, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{json, Map, Value};

use std::sync::atomic::AtomicU64;

/// How progress is shown: a bar on a terminal, plain lines in logs, or nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProgressMode {
    Auto,
    Bar,
    Log,
    None,
}

/// The format of every line printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// What a command prints, and how.
#[derive(Debug, Clone, Copy)]
pub struct Output {
    pub progress: ProgressMode,
    pub log_format: LogFormat,
    pub quiet: bool,
    pub verbose: bool,
}

/// `30s`, `10m`, `1h`, `1h30m`, `500ms`; a bare number means seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<u64>() {
        return Ok(Duration::from_secs(secs));
    }
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 30s, 10m, 1h, 1h30m)"))
}

/// Counters the progress display samples; the engine only ever adds to them.
#[derive(Default)]
pub struct Counters {
    pub paths_total: AtomicU64,
    pub paths_done: AtomicU64,
    pub paths_skipped: AtomicU64,
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Bytes the run will write, when known beforehand (for the ETA).
    pub bytes_total: AtomicU64,
    pub dirs: AtomicU64,
    pub symlinks: AtomicU64,
    pub hardlinks: AtomicU64,
}

impl Counters {
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// One call per store path finished, plus warnings. Implemented by the progress module.
pub trait Events: Sync {
    fn path_copied(&self, name: &OsStr, files: u64, bytes: u64);
    fn path_skipped(&self, name: &OsStr, why: &str);
    fn warning(&self, msg: &str);
}

/// `1 file`, `2 files`: a number and its noun, in the right number.
pub fn count(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn name(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warning",
            Level::Error => "error",
        }
    }
}

pub struct Log {
    pub format: LogFormat,
    pub quiet: bool,
    pub verbose: bool,
    bar: Mutex<Option<ProgressBar>>,
}

impl Log {
    pub fn new(out: &Output) -> Log {
        Log {
            format: out.log_format,
            quiet: out.quiet,
            verbose: out.verbose,
            bar: Mutex::new(None),
        }
    }

    pub fn info(&self, msg: &str) {
        self.event(Level::Info, "info", msg, json!({}));
    }

    pub fn warn(&self, msg: &str) {
        self.event(Level::Warn, "warning", msg, json!({}));
    }

    pub fn error(&self, msg: &str) {
        self.event(Level::Error, "error", msg, json!({}));
    }

    /// A line with machine-readable fields (shown only in JSON) and a human message.
    pub fn event(&self, level: Level, event: &str, msg: &str, fields: Value) {
        if self.quiet && level == Level::Info {
            return;
        }
        let line = self.render(level, event, msg, fields);
        let bar = self.bar.lock().unwrap();
        match bar.as_ref() {
            Some(b) => b.suspend(|| eprintln!("{line}")),
            None => eprintln!("{line}"),
        }
    }

    /// Detail shown with -v.
    pub fn detail(&self, event: &str, msg: &str, fields: Value) {
        if self.verbose {
            self.event(Level::Info, event, msg, fields);
        }
    }

    /// The final summary goes to stdout (unless -q), so scripts can capture it.
    pub fn summary(&self, msg: &str, fields: Value) {
        if self.quiet {
            return;
        }
        let line = self.render(Level::Info, "summary", msg, fields);
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{line}");
    }

    /// A multi-line report on stdout (`status`): plain lines, or one JSON object.
    pub fn report(&self, text: &str, fields: Value) {
        let mut out = std::io::stdout().lock();
        let _ = match self.format {
            LogFormat::Text => writeln!(out, "{text}"),
            LogFormat::Json => writeln!(out, "{}", self.render(Level::Info, "status", "status", fields)),
        };
    }

    /// One line of a listing on stdout (`images`, `prune`), shown even with -q: the line as
    /// it is, or one JSON object with the fields (the line is its `msg`).
    pub fn out(&self, event: &str, text: &str, fields: Value) {
        let mut out = std::io::stdout().lock();
        let _ = match self.format {
            LogFormat::Text => writeln!(out, "{text}"),
            LogFormat::Json => writeln!(out, "{}", self.render(Level::Info, event, text, fields)),
        };
    }

    fn render(&self, level: Level, event: &str, msg: &str, fields: Value) -> String {
        match self.format {
            LogFormat::Text => match level {
                Level::Info => format!("nix-seed: {msg}"),
                _ => format!("nix-seed: {}: {msg}", level.name()),
            },
            LogFormat::Json => {
                let mut m = Map::new();
                m.insert(
                    "ts".into(),
                    Value::String(humantime::format_rfc3339_millis(SystemTime::now()).to_string()),
                );
                m.insert("level".into(), Value::String(level.name().into()));
                m.insert("event".into(), Value::String(event.into()));
                m.insert("msg".into(), Value::String(msg.into()));
                if let Value::Object(f) = fields {
                    m.extend(f);
                }
                Value::Object(m).to_string()
            }
        }
    }
}

/// Path events from the copy engine, turned into log lines.
pub struct PathEvents<'a>(pub &'a Log);

impl Events for PathEvents<'_> {
    fn path_copied(&self, name: &OsStr, files: u64, bytes: u64) {
        let n = name.to_string_lossy();
        self.0.detail(
            "copied",
            &format!("copied {n} ({}, {})", count(files, "file", "files"), HumanBytes(bytes)),
            json!({"path": n, "files": files, "bytes": bytes}),
        );
    }

    fn path_skipped(&self, name: &OsStr, why: &str) {
        let n = name.to_string_lossy();
        self.0.detail(
            "skipped",
            &format!("skipped {n}: {why}"),
            json!({"path": n, "why": why}),
        );
    }

    fn warning(&self, msg: &str) {
        self.0.warn(msg);
    }
}

/// The running progress display; `finish` stops it.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    log: Arc<Log>,
}

fn log_interval() -> Duration {
    std::env::var("NIX_SEED_PROGRESS_INTERVAL")
        .ok()
        .and_then(|s| parse_duration(&s).ok())
        .unwrap_or(Duration::from_secs(5))
}

pub fn start(log: Arc<Log>, counters: Arc<Counters>, mode: ProgressMode) -> Progress {
    let stop = Arc::new(AtomicBool::new(false));
    let mode = match mode {
        _ if log.quiet => ProgressMode::None,
        ProgressMode::Auto => {
            let dumb = std::env::var("TERM").map_or(true, |t| t.is_empty() || t == "dumb");
            if std::io::stderr().is_terminal() && !dumb {
                ProgressMode::Bar
            } else {
                ProgressMode::Log
            }
        }
        // indicatif draws nothing where stderr is not a terminal: lines, not silence.
        ProgressMode::Bar if !std::io::stderr().is_terminal() => ProgressMode::Log,
        m => m,
    };
    let thread = match mode {
        ProgressMode::None | ProgressMode::Auto => None,
        ProgressMode::Bar => {
            let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
            bar.set_style(
                ProgressStyle::with_template("{spinner} [{elapsed_precise}] {wide_bar} {pos}/{len} store paths  {msg}")
                    .expect("valid template"),
            );
            *log.bar.lock().unwrap() = Some(bar.clone());
            let stop = stop.clone();
            Some(std::thread::spawn(move || {
                let t0 = Instant::now();
                while !stop.load(Ordering::Relaxed) {
                    let s = Snapshot::take(&counters, t0);
                    bar.set_length(s.total);
                    bar.set_position(s.finished);
                    bar.set_message(format!(
                        "{} files  {}  {}/s  eta {}",
                        s.files,
                        HumanBytes(s.bytes),
                        HumanBytes(s.rate as u64),
                        s.eta.map_or("-".into(), |d| HumanDuration(d).to_string())
                    ));
                    std::thread::sleep(Duration::from_millis(100));
                }
                bar.finish_and_clear();
            }))
        }
        ProgressMode::Log => {
            let stop = stop.clone();
            let log = log.clone();
            let every = log_interval();
            Some(std::thread::spawn(move || {
                let t0 = Instant::now();
                let mut next = t0 + every;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50).min(every));
                    if Instant::now() < next {
                        continue;
                    }
                    next += every;
                    let s = Snapshot::take(&counters, t0);
                    log.event(
                        Level::Info,
                        "progress",
                        &format!(
                            "progress: {}/{} store paths, {} files, {}, {}/s, elapsed {}s, eta {}",
                            s.finished,
                            s.total,
                            s.files,
                            HumanBytes(s.bytes),
                            HumanBytes(s.rate as u64),
                            s.elapsed.as_secs(),
                            s.eta.map_or("-".into(), |d| format!("{}s", d.as_secs()))
                        ),
                        json!({"paths_done": s.finished, "paths_total": s.total, "files": s.files,
                               "bytes": s.bytes, "bytes_per_sec": s.rate as u64,
                               "elapsed_secs": s.elapsed.as_secs_f64()}),
                    );
                }
            }))
        }
    };
    Progress { stop, thread, log }
}

impl Progress {
    pub fn finish(mut self) {
        self.stop_thread();
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        *self.log.bar.lock().unwrap() = None;
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

struct Snapshot {
    total: u64,
    finished: u64,
    files: u64,
    bytes: u64,
    rate: f64,
    elapsed: Duration,
    eta: Option<Duration>,
}

impl Snapshot {
    fn take(c: &Counters, t0: Instant) -> Snapshot {
        let total = Counters::get(&c.paths_total);
        let finished = Counters::get(&c.paths_done) + Counters::get(&c.paths_skipped);
        let bytes = Counters::get(&c.bytes);
        let elapsed = t0.elapsed();
        let secs = elapsed.as_secs_f64().max(1e-3);
        // By bytes when the total is known (store paths differ wildly in size), else by the
        // fraction of store paths done.
        let bytes_total = Counters::get(&c.bytes_total);
        let eta = if bytes_total > 0 && bytes > 0 {
            (bytes < bytes_total).then(|| Duration::from_secs_f64(secs * (bytes_total - bytes) as f64 / bytes as f64))
        } else {
            (finished > 0 && total > finished)
                .then(|| Duration::from_secs_f64(secs * (total - finished) as f64 / finished as f64))
        };
        Snapshot {
            total,
            finished,
            files: Counters::get(&c.files),
            bytes,
            rate: bytes as f64 / secs,
            elapsed,
            eta,
        }
    }
}
