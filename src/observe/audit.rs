//! The audit log: one JSON line per request, written by its own thread. Request handling only
//! ever `try_send`s into a bounded queue; when the queue is full the line is dropped and
//! counted, never waited for. The file is opened in append mode (safe with logrotate's
//! copytruncate) and reopened on SIGHUP (for rename-style rotation).

use std::fs::OpenOptions;
use std::io::{BufWriter, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, TrySendError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::metrics::Metrics;

/// One request, as the audit line records it. No token, key or body ever goes in here.
#[derive(Debug, Serialize)]
pub struct AuditRecord {
    pub ts: String,
    pub request_id: String,
    pub client: String,
    pub client_ip: Option<String>,
    pub method: String,
    pub path: String,
    pub model: Option<String>,
    pub status: u16,
    pub upstream_request_id: Option<String>,
    pub ttfb_ms: Option<f64>,
    pub duration_ms: f64,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub prompt_tokens: Option<u64>,
    pub completion_tokens: Option<u64>,
    pub total_tokens: Option<u64>,
    /// The response ended early (client gone, upstream broke): the counts may be incomplete.
    pub usage_partial: bool,
    pub stream: bool,
    pub error_code: Option<String>,
}

/// After writing a burst the writer rests this long before it waits again, so that under load
/// lines are written in batches and a request does not wake the writer thread (a futex call
/// and two context switches, on the worker's own core when pinned). A line reaches the file
/// at most this much later; at shutdown `finish` writes what is queued.
const LINGER: Duration = Duration::from_millis(5);
const FINISH_WITHIN: Duration = Duration::from_secs(5);

enum Message {
    Line(Box<AuditRecord>),
    Finish,
}

pub struct AuditLog {
    queue: SyncSender<Message>,
    reopen: Arc<AtomicBool>,
    metrics: Arc<Metrics>,
    writer: Mutex<Option<JoinHandle<()>>>,
}

enum Sink {
    Stdout,
    File(PathBuf),
}

impl AuditLog {
    /// `target` is a path, or `-` for stdout. The file is opened here, so a bad path is a
    /// startup error.
    pub fn start(target: &str, capacity: usize, metrics: Arc<Metrics>) -> Result<AuditLog, String> {
        let sink = if target == "-" {
            Sink::Stdout
        } else {
            Sink::File(PathBuf::from(target))
        };
        let writer = open(&sink)
            .map_err(|e| format!("invalid setting AUDIT_LOG: cannot open {target}: {e}"))?;
        let (queue, rx) = sync_channel(capacity);
        let reopen = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&reopen);
        let writer = std::thread::Builder::new()
            .name("audit-log".into())
            .spawn(move || write_loop(rx, sink, writer, flag))
            .map_err(|e| format!("cannot start the audit log writer: {e}"))?;
        Ok(AuditLog {
            queue,
            reopen,
            metrics,
            writer: Mutex::new(Some(writer)),
        })
    }

    /// Writes every queued line and stops the writer; for the end of a shutdown, after the
    /// last response has finished. Gives up after `FINISH_WITHIN` (a sink that stopped
    /// reading, such as a stuck stdout pipe, must not hold the exit).
    pub fn finish(&self) {
        let Some(writer) = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let deadline = Instant::now() + FINISH_WITHIN;
        let mut message = Message::Finish;
        loop {
            match self.queue.try_send(message) {
                Ok(()) => break,
                Err(TrySendError::Full(m)) if Instant::now() < deadline => {
                    message = m;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(_) => return,
            }
        }
        while !writer.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        if writer.is_finished() {
            let _ = writer.join();
        } else {
            log::warn!(
                "audit log writer still busy after {FINISH_WITHIN:?}: queued lines may be lost"
            );
        }
    }

    /// Never blocks: a full queue drops the line (counted, warned about).
    pub fn record(&self, record: AuditRecord) {
        match self.queue.try_send(Message::Line(Box::new(record))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                let n = self.metrics.audit_dropped.fetch_add(1, Ordering::Relaxed) + 1;
                if n.is_power_of_two() {
                    log::warn!("audit log queue full: {n} lines dropped so far");
                }
            }
        }
    }

    /// Reopen the file before the next line (after logrotate renamed it).
    pub fn reopen(&self) {
        self.reopen.store(true, Ordering::Relaxed);
    }
}

fn open(sink: &Sink) -> std::io::Result<Box<dyn Write + Send>> {
    Ok(match sink {
        Sink::Stdout => Box::new(std::io::stdout()),
        Sink::File(path) => Box::new(OpenOptions::new().create(true).append(true).open(path)?)
            as Box<dyn Write + Send>,
    })
}

fn write_loop(
    rx: Receiver<Message>,
    sink: Sink,
    writer: Box<dyn Write + Send>,
    reopen: Arc<AtomicBool>,
) {
    let mut out = BufWriter::new(writer);
    while let Ok(first) = rx.recv() {
        if reopen.swap(false, Ordering::Relaxed) {
            let _ = out.flush();
            match open(&sink) {
                Ok(w) => out = BufWriter::new(w),
                Err(e) => log::error!("audit log not reopened, writing to the old file: {e}"),
            }
        }
        let mut next = Some(first);
        let mut finished = false;
        // Write what has queued up, then flush once: a line per request, a syscall per burst.
        while let Some(message) = next {
            match message {
                Message::Line(record) => {
                    if let Ok(line) = serde_json::to_string(&record) {
                        let _ = writeln!(out, "{line}");
                    }
                }
                Message::Finish => finished = true,
            }
            next = rx.try_recv().ok();
        }
        if let Err(e) = out.flush() {
            log::error!("audit log write failed: {e}");
        }
        if finished {
            return;
        }
        std::thread::sleep(LINGER);
    }
}
