//! Process logging through `tracing`: level from the config or `CREDENTIALFLOW_LOG`, human or
//! JSON lines on stderr — written by one writer thread, so no core ever blocks on a log line.
//!
//! Each formatted line goes over a bounded channel to the `cflow-log` thread, which writes it
//! to stderr. When the channel is full (stderr drained slowly or not at all: a stalled log
//! driver, a pipe nobody reads), the line is dropped and counted instead of waited for; the
//! count is reported when the process stops.
//!
//! The access log (one JSON line per request) has its own record, per-core batches and writer
//! thread: see [`access`] and [`access_writer`]. Request metrics are counted by each core for
//! itself ([`metrics`]) and added up when `/metrics` is scraped ([`exposition`]).

pub mod access;
pub mod access_writer;
pub mod exposition;
pub mod metrics;
pub mod trace;

use crate::config::LogFormat;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Duration;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::EnvFilter;

/// Lines that may wait for the writer thread.
const QUEUE_LINES: usize = 8192;

/// What travels to the writer thread.
enum Message {
    Line(Vec<u8>),
    /// Answer once everything queued before has been written.
    Flush(Sender<()>),
}

/// The process's log sink.
struct Sink {
    lines: Sender<Message>,
    dropped: AtomicU64,
}

static SINK: OnceLock<Sink> = OnceLock::new();

fn sink() -> &'static Sink {
    SINK.get_or_init(|| {
        let (lines, queue) = crossbeam_channel::bounded(QUEUE_LINES);
        std::thread::Builder::new()
            .name("cflow-log".into())
            .spawn(move || write_lines(queue))
            .expect("spawn the log writer thread");
        Sink {
            lines,
            dropped: AtomicU64::new(0),
        }
    })
}

fn write_lines(queue: Receiver<Message>) {
    let stderr = std::io::stderr();
    for message in queue {
        match message {
            Message::Line(line) => {
                let _ = stderr.lock().write_all(&line);
            }
            Message::Flush(done) => {
                let _ = stderr.lock().flush();
                let _ = done.send(());
            }
        }
    }
}

/// The `tracing` writer: one per event, handing its line to the writer thread when dropped.
pub struct LineWriter {
    line: Vec<u8>,
}

impl Write for LineWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.line.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let sink = sink();
        let line = std::mem::take(&mut self.line);
        if let Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) =
            sink.lines.try_send(Message::Line(line))
        {
            sink.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Makes a [`LineWriter`] per event.
pub struct NonBlockingStderr;

impl<'a> MakeWriter<'a> for NonBlockingStderr {
    type Writer = LineWriter;

    fn make_writer(&'a self) -> LineWriter {
        LineWriter {
            line: Vec::with_capacity(256),
        }
    }
}

/// Log lines dropped so far because the writer could not keep up.
pub fn dropped_lines() -> u64 {
    SINK.get()
        .map_or(0, |sink| sink.dropped.load(Ordering::Relaxed))
}

/// Waits (up to `timeout`) until every line queued so far is written; reports dropped lines.
/// Called before the process exits.
pub fn flush_logs(timeout: Duration) {
    let Some(sink) = SINK.get() else { return };
    let dropped = sink.dropped.load(Ordering::Relaxed);
    if dropped > 0 {
        let line = format!("log: {dropped} line(s) dropped because stderr did not keep up\n");
        let _ = sink.lines.try_send(Message::Line(line.into_bytes()));
    }
    let (done, wait) = crossbeam_channel::bounded(1);
    if sink
        .lines
        .send_timeout(Message::Flush(done), timeout)
        .is_ok()
    {
        let _ = wait.recv_timeout(timeout);
    }
}

/// Installs the global log subscriber (once per process).
pub fn init_logging(level: &str, format: LogFormat) {
    let filter = EnvFilter::try_from_env("CREDENTIALFLOW_LOG")
        .unwrap_or_else(|_| EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(NonBlockingStderr)
        .with_thread_names(true)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let _ = match format {
        LogFormat::Json => builder.json().try_init(),
        LogFormat::Human => builder.try_init(),
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_reach_the_writer_and_flush_returns() {
        {
            let mut writer = NonBlockingStderr.make_writer();
            writer.write_all(b"observe test line\n").unwrap();
        }
        flush_logs(Duration::from_secs(5));
        assert_eq!(dropped_lines(), 0);
    }
}
