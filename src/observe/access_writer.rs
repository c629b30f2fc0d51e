//! The `cflow-access` thread: appends the cores' access-log batches to the access log file (or
//! stdout), reopens the file on request (log rotation: `SIGUSR1`), and stops after the cores
//! did, writing what they handed over last.
//!
//! Cores hand batches over with `try_send` on a bounded channel and never wait: when the queue
//! is full the batch is dropped and its lines counted by the core. Written batches come back
//! (emptied, capacity kept) on a second channel, so a core's batches are reused instead of
//! allocated anew.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::Duration;

/// Batches (of about 128 KiB each) that may wait for the writer, all cores together.
const QUEUE_BATCHES: usize = 64;
/// Emptied batches kept for reuse.
const SPARE_BATCHES: usize = 16;
/// How long the control thread waits to queue a reopen or stop request.
const CONTROL_SEND_TIMEOUT: Duration = Duration::from_secs(2);

/// Where access records go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessLogTarget {
    Stdout,
    /// A file, appended to (its directory is created).
    File(PathBuf),
}

impl std::fmt::Display for AccessLogTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AccessLogTarget::Stdout => f.write_str("stdout"),
            AccessLogTarget::File(path) => write!(f, "{}", path.display()),
        }
    }
}

/// Why the access log cannot be written.
#[derive(Debug, thiserror::Error)]
pub enum AccessLogError {
    #[error("access log {path}: {source}")]
    Open {
        path: String,
        source: std::io::Error,
    },
    #[error("cannot start the access log writer thread: {0}")]
    Spawn(std::io::Error),
}

/// What the writer receives.
pub enum AccessMsg {
    /// Formatted lines, whole lines only.
    Batch(Vec<u8>),
    /// Reopen the file at its path (after a rotation moved the old one away).
    Reopen,
    /// Write what was queued before, then stop.
    Stop,
}

/// A core's way to hand batches to the writer (never blocks).
#[derive(Clone)]
pub struct AccessSink {
    batches: Sender<AccessMsg>,
    spares: Receiver<Vec<u8>>,
}

impl AccessSink {
    /// Queues a batch; false when the queue is full (the batch is dropped).
    pub fn offer(&self, batch: Vec<u8>) -> bool {
        match self.batches.try_send(AccessMsg::Batch(batch)) {
            Ok(()) => true,
            Err(TrySendError::Full(_) | TrySendError::Disconnected(_)) => false,
        }
    }

    /// An empty buffer for the next batch: a written one given back, else a new one.
    pub fn spare(&self, capacity: usize) -> Vec<u8> {
        self.spares
            .try_recv()
            .unwrap_or_else(|_| Vec::with_capacity(capacity))
    }
}

/// A sink and the receiving end of its queue (`capacity` batches); the spare channel is fed by
/// whoever drains the queue.
pub fn access_channel(capacity: usize) -> (AccessSink, Receiver<AccessMsg>) {
    let (batches, queue) = crossbeam_channel::bounded(capacity);
    let (_, spares) = crossbeam_channel::bounded(1);
    (AccessSink { batches, spares }, queue)
}

/// The running writer thread, held by the control thread.
pub struct AccessWriter {
    thread: JoinHandle<()>,
    control: Sender<AccessMsg>,
}

impl AccessWriter {
    /// Opens the target (creating the file's directory) and starts `cflow-access`.
    pub fn start(target: AccessLogTarget) -> Result<(AccessWriter, AccessSink), AccessLogError> {
        let output = match &target {
            AccessLogTarget::Stdout => Output::Stdout,
            AccessLogTarget::File(path) => Output::File(open(path)?),
        };
        let (batches, queue) = crossbeam_channel::bounded(QUEUE_BATCHES);
        let (give_back, spares) = crossbeam_channel::bounded(SPARE_BATCHES);
        let thread = std::thread::Builder::new()
            .name("cflow-access".into())
            .spawn(move || write_batches(target, output, queue, give_back))
            .map_err(AccessLogError::Spawn)?;
        let sink = AccessSink {
            batches: batches.clone(),
            spares,
        };
        Ok((
            AccessWriter {
                thread,
                control: batches,
            },
            sink,
        ))
    }

    /// Asks the writer to reopen the file at its path (SIGUSR1, after a rotation).
    pub fn reopen(&self) {
        if self
            .control
            .send_timeout(AccessMsg::Reopen, CONTROL_SEND_TIMEOUT)
            .is_err()
        {
            tracing::warn!("access log: the writer did not take the reopen request");
        }
    }

    /// Writes what the cores handed over and stops the writer (after the cores stopped).
    pub fn finish(self) {
        if self
            .control
            .send_timeout(AccessMsg::Stop, CONTROL_SEND_TIMEOUT)
            .is_ok()
        {
            let _ = self.thread.join();
        }
    }
}

/// Where the writer writes.
enum Output {
    Stdout,
    File(File),
}

impl Output {
    fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Output::Stdout => {
                let mut out = std::io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
            Output::File(file) => file.write_all(bytes),
        }
    }
}

fn open(path: &Path) -> Result<File, AccessLogError> {
    let error = |source| AccessLogError::Open {
        path: path.display().to_string(),
        source,
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(error)?;
    }
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(error)
}

fn write_batches(
    target: AccessLogTarget,
    mut output: Output,
    queue: Receiver<AccessMsg>,
    give_back: Sender<Vec<u8>>,
) {
    let mut failing = false;
    for message in queue {
        match message {
            AccessMsg::Batch(mut batch) => {
                match output.write_all(&batch) {
                    Ok(()) => failing = false,
                    Err(err) => {
                        if !failing {
                            tracing::warn!(destination = %target, error = %err, "access log write failed");
                        }
                        failing = true;
                    }
                }
                batch.clear();
                let _ = give_back.try_send(batch);
            }
            AccessMsg::Reopen => {
                let AccessLogTarget::File(path) = &target else {
                    continue;
                };
                match open(path) {
                    Ok(file) => {
                        output = Output::File(file);
                        failing = false;
                        tracing::info!(path = %path.display(), "access log reopened");
                    }
                    Err(err) => {
                        tracing::warn!(error = %err, "access log reopen failed: still writing the old file")
                    }
                }
            }
            AccessMsg::Stop => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_are_appended_and_a_reopen_follows_a_rename() {
        let dir = std::env::temp_dir().join(format!(
            "cflow-access-test-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let path = dir.join("nested").join("access.jsonl");
        let (writer, sink) = AccessWriter::start(AccessLogTarget::File(path.clone())).unwrap();
        assert!(sink.offer(b"{\"n\":1}\n".to_vec()));
        let rotated = dir.join("access.jsonl.1");
        // Let the first batch reach the old file before it is moved.
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::fs::metadata(&path).map_or(0, |m| m.len()) == 0
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(5));
        }
        std::fs::rename(&path, &rotated).unwrap();
        writer.reopen();
        assert!(sink.offer(b"{\"n\":2}\n".to_vec()));
        writer.finish();
        assert_eq!(std::fs::read_to_string(&rotated).unwrap(), "{\"n\":1}\n");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "{\"n\":2}\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
