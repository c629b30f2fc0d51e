//! Quota counts that outlive the process: `quotas.jsonl` under the data directory, one JSON
//! object per key (`{"key":…,"period":…,"ends":…,"used":…}`).
//!
//! Each core sends the counts it owns (absolute values, never deltas) to one writer thread at
//! most once a second; the writer replaces the file atomically (write, fsync, rename) at most
//! once a second and once more at shutdown. A crash (`kill -9`) therefore loses at most the
//! last two seconds of counting; a clean stop loses nothing. The counts include tokens leased to
//! other cores and not yet used, so a restart errs towards refusing, never towards admitting.

use crossbeam_channel::{Receiver, Sender, TrySendError};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The file's name inside the data directory.
pub const FILE_NAME: &str = "quotas.jsonl";

/// Batches the writer may have queued; a core that finds the queue full sends again next time.
const QUEUE: usize = 64;

/// Why the file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum QuotaFileError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}:{line}: not a quota record: {message}")]
    Record {
        path: String,
        line: usize,
        message: String,
    },
}

/// One key's count in one period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuotaRecord {
    /// The limit's id and the key's values, as text.
    pub key: Box<str>,
    /// The period's number (see [`super::rate::Period::index`]).
    pub period: i64,
    /// When the period ends (seconds since the epoch); later records are dropped.
    pub ends: i64,
    pub used: u64,
}

/// The counts read at start, for the cores to continue from (read-only).
#[derive(Debug, Default)]
pub struct SavedQuotas {
    counts: HashMap<Box<str>, (i64, u64)>,
}

impl SavedQuotas {
    /// Reads the file; a missing file is an empty set.
    pub fn load(path: &Path) -> Result<SavedQuotas, QuotaFileError> {
        let display = path.display().to_string();
        let text = match std::fs::read_to_string(path) {
            Ok(text) => text,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                return Ok(SavedQuotas::default())
            }
            Err(source) => {
                return Err(QuotaFileError::Io {
                    path: display,
                    source,
                })
            }
        };
        let now = crate::auth::unix_now();
        let mut counts = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let record: QuotaRecord =
                serde_json::from_str(line).map_err(|err| QuotaFileError::Record {
                    path: display.clone(),
                    line: i + 1,
                    message: err.to_string(),
                })?;
            if record.ends > now {
                counts.insert(record.key, (record.period, record.used));
            }
        }
        Ok(SavedQuotas { counts })
    }

    /// The saved count of `key` in `period` (0 when none).
    pub fn used(&self, key: &str, period: i64) -> u64 {
        match self.counts.get(key) {
            Some(&(p, used)) if p == period => used,
            _ => 0,
        }
    }

    pub fn len(&self) -> usize {
        self.counts.len()
    }

    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    fn records(&self) -> impl Iterator<Item = (&str, i64, u64)> {
        self.counts.iter().map(|(k, &(p, u))| (&**k, p, u))
    }
}

/// What the writer receives.
enum WriterMsg {
    Counts(Vec<QuotaRecord>),
    /// Write what is left and stop.
    Stop,
}

/// A core's way to hand counts to the writer (never blocks).
#[derive(Clone)]
pub struct QuotaSink(Sender<WriterMsg>);

impl QuotaSink {
    /// Queues a batch; false when the queue is full (send the counts again later).
    pub fn offer(&self, batch: Vec<QuotaRecord>) -> bool {
        match self.0.try_send(WriterMsg::Counts(batch)) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => false,
            Err(TrySendError::Disconnected(_)) => true,
        }
    }
}

/// The writer thread.
pub struct QuotaWriter {
    thread: JoinHandle<()>,
    sender: Sender<WriterMsg>,
}

impl QuotaWriter {
    /// Starts the writer for `path`, seeded with the counts read at start.
    pub fn start(path: PathBuf, saved: &SavedQuotas) -> std::io::Result<(QuotaWriter, QuotaSink)> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let now = crate::auth::unix_now();
        let mut counts: HashMap<Box<str>, QuotaRecord> = HashMap::new();
        for (key, period, used) in saved.records() {
            counts.insert(
                key.into(),
                QuotaRecord {
                    key: key.into(),
                    period,
                    // Unknown here; kept until the owner reports it again or a day passes.
                    ends: now + 86_400,
                    used,
                },
            );
        }
        let (sender, receiver) = crossbeam_channel::bounded(QUEUE);
        let thread = std::thread::Builder::new()
            .name("cflow-quota".into())
            .spawn(move || write_loop(path, counts, receiver))?;
        Ok((
            QuotaWriter {
                thread,
                sender: sender.clone(),
            },
            QuotaSink(sender),
        ))
    }

    /// Writes what is left and stops (call it once the cores have sent their last counts).
    pub fn finish(self) {
        let _ = self.sender.send(WriterMsg::Stop);
        let _ = self.thread.join();
    }
}

/// Least time between two writes of the file.
const WRITE_INTERVAL: Duration = Duration::from_secs(1);

fn write_loop(
    path: PathBuf,
    mut counts: HashMap<Box<str>, QuotaRecord>,
    batches: Receiver<WriterMsg>,
) {
    let mut dirty = false;
    let mut last_write = Instant::now() - WRITE_INTERVAL;
    loop {
        let wait = (last_write + WRITE_INTERVAL).saturating_duration_since(Instant::now());
        let wait = if dirty {
            wait
        } else {
            Duration::from_secs(3600)
        };
        match batches.recv_timeout(wait) {
            Ok(WriterMsg::Counts(batch)) => {
                for record in batch {
                    counts.insert(record.key.clone(), record);
                }
                dirty = true;
            }
            Err(crossbeam_channel::RecvTimeoutError::Timeout) => {}
            Ok(WriterMsg::Stop) | Err(crossbeam_channel::RecvTimeoutError::Disconnected) => {
                if dirty {
                    write_file(&path, &mut counts);
                }
                return;
            }
        }
        if dirty && last_write.elapsed() >= WRITE_INTERVAL {
            write_file(&path, &mut counts);
            dirty = false;
            last_write = Instant::now();
        }
    }
}

/// Replaces the file with the current counts (periods that ended are dropped).
fn write_file(path: &Path, counts: &mut HashMap<Box<str>, QuotaRecord>) {
    let now = crate::auth::unix_now();
    counts.retain(|_, r| r.ends > now);
    let mut text = String::with_capacity(counts.len() * 96);
    for record in counts.values() {
        if let Ok(line) = serde_json::to_string(record) {
            text.push_str(&line);
            text.push('\n');
        }
    }
    if let Err(err) = replace_file(path, text.as_bytes()) {
        tracing::error!(path = %path.display(), error = %err, "cannot save quota counts");
    }
}

fn replace_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("jsonl.tmp");
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_survive_a_writer_restart() {
        let dir = std::env::temp_dir().join(format!("cflow-quota-{}", std::process::id()));
        let path = dir.join(FILE_NAME);
        let _ = std::fs::remove_file(&path);
        let saved = SavedQuotas::load(&path).unwrap();
        assert!(saved.is_empty());
        let (writer, sink) = QuotaWriter::start(path.clone(), &saved).unwrap();
        let now = crate::auth::unix_now();
        assert!(sink.offer(vec![
            QuotaRecord {
                key: "api orders|alice".into(),
                period: 7,
                ends: now + 60,
                used: 41,
            },
            QuotaRecord {
                key: "gone".into(),
                period: 1,
                ends: now - 1,
                used: 5,
            },
        ]));
        writer.finish();
        let saved = SavedQuotas::load(&path).unwrap();
        assert_eq!(saved.used("api orders|alice", 7), 41);
        assert_eq!(saved.used("api orders|alice", 8), 0, "another period");
        assert_eq!(saved.used("gone", 1), 0, "ended periods are dropped");
        std::fs::write(&path, "{not json}\n").unwrap();
        assert!(matches!(
            SavedQuotas::load(&path),
            Err(QuotaFileError::Record { line: 1, .. })
        ));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
