//! The control plane's shared state and its change pipeline. Every admin write goes
//! store commit (durable, with its audit record) → audit JSONL copy → credential-index delta
//! published to every core → wait for every core's ack (or the propagation timeout). Writes
//! are serialized by one lock, so the audit chain, the store and the cores see them in one
//! order. Reloads (SIGHUP or `POST /v1/reload`) run under the same lock.

use crate::auth::index::CredentialIndex;
use crate::auth::service::{AuthService, Propagation};
use crate::config::{AdminSettings, Config, ConfigError};
use crate::filter::connections::ConnectionCounts;
use crate::observe::exposition::ControlFacts;
use crate::runtime::channel::ControlSender;
use crate::runtime::ControlMsg;
use crate::snapshot::{Snapshot, Upstream};
use crate::store::audit::{AuditEntry, AuditRecord};
use crate::store::{Store, StoreError, Write};
use crate::upstream::health::HealthChecker;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

/// How long a scrape waits for the cores' metrics.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(1);

/// How long a reload waits for every core to switch to the new snapshot.
const RELOAD_ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a change did not complete.
#[derive(Debug, thiserror::Error)]
pub enum ChangeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Stored, but not every core confirmed in time.
    #[error("{applied} of {cores} cores confirmed the change in time")]
    PropagationTimeout { applied: usize, cores: usize },
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

/// Why a reload was refused.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("invalid configuration")]
    Invalid(Vec<String>),
    #[error("{0}")]
    Refused(String),
    /// Applied, but not every core confirmed in time (it adopts the new config when it reads
    /// its queue).
    #[error("{applied} of {cores} cores confirmed the new configuration in time")]
    NotConfirmed { applied: usize, cores: usize },
}

/// The control plane's state, behind [`ControlPlane::lock`].
pub struct PlaneState {
    pub config: Config,
    pub store: Option<Box<dyn Store>>,
    audit_log: Option<AuditFile>,
    cores: Vec<ControlSender>,
    stopping: bool,
    /// The active health checks of the current snapshot's upstreams (none configured: `None`).
    health: Option<HealthChecker>,
}

impl PlaneState {
    /// Stops the active health checks (once this returns, they push nothing more).
    fn stop_health_checks(&mut self) {
        self.health = None;
    }

    fn restart_health_checks(&mut self, upstreams: &[Upstream]) {
        self.stop_health_checks();
        let cores = self
            .cores
            .iter()
            .filter_map(|core| core.try_clone().ok())
            .collect();
        self.health = HealthChecker::start(upstreams, cores);
    }
}

/// The audit trail's JSONL copy (appended after each commit).
struct AuditFile {
    path: PathBuf,
    file: std::fs::File,
    /// A write failed: the copy misses records, and the next change brings it in line with
    /// the store first.
    lagging: bool,
}

impl AuditFile {
    fn open(path: PathBuf) -> std::io::Result<AuditFile> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)?;
        Ok(AuditFile {
            path,
            file,
            lagging: false,
        })
    }

    fn append(&mut self, record: &AuditRecord) {
        let mut line = record.to_json().to_string();
        line.push('\n');
        if let Err(error) = self.file.write_all(line.as_bytes()) {
            self.lagging = true;
            tracing::error!(path = %self.path.display(), %error, "cannot append to the audit log");
        }
    }

    /// Brings the copy in line with the store after a crash: a torn last line is cut off and
    /// the records committed after the copy's last one are appended, so the copy stays a
    /// gap-free prefix of the chain.
    fn catch_up(&mut self, store: &dyn Store) -> Result<usize, String> {
        let text = std::fs::read(&self.path).map_err(|e| e.to_string())?;
        let whole = match text.iter().rposition(|&b| b == b'\n') {
            Some(at) => at + 1,
            None => 0,
        };
        if whole < text.len() {
            tracing::warn!(path = %self.path.display(), bytes = text.len() - whole, "audit log: cutting off a torn last line");
            self.file.set_len(whole as u64).map_err(|e| e.to_string())?;
        }
        let last_seq = String::from_utf8_lossy(&text[..whole])
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line)
                    .ok()
                    .and_then(|v| v["seq"].as_u64())
                    .ok_or_else(|| "its last line is not an audit record".to_string())
            })
            .transpose()?
            .unwrap_or(0);
        let mut appended = 0;
        let mut after = last_seq;
        loop {
            let query = crate::store::AuditQuery {
                after_seq: Some(after),
                limit: 1000,
                ..Default::default()
            };
            let records = store.audit(&query).map_err(|e| e.to_string())?;
            let Some(last) = records.last() else { break };
            after = last.seq;
            for record in &records {
                self.append(record);
            }
            appended += records.len();
        }
        Ok(appended)
    }

    fn reopen(&mut self) {
        match AuditFile::open(self.path.clone()) {
            Ok(fresh) => *self = fresh,
            Err(error) => {
                tracing::error!(path = %self.path.display(), %error, "cannot reopen the audit log")
            }
        }
    }
}

/// The control plane, shared by the admin API and the signal loop.
pub struct ControlPlane {
    state: Mutex<PlaneState>,
    /// Open connections per listener (for `/metrics`).
    connections: Arc<ConnectionCounts>,
    /// The admin settings (tokens, limits) apart from the state lock, so authenticating a
    /// request never waits for a write in progress.
    settings: Mutex<Option<AdminSettings>>,
    pub auth: Arc<AuthService>,
}

/// The credential index every core should serve: the config's, with the store laid over it.
pub fn credentials_for(
    config: &Config,
    store: Option<&mut Box<dyn Store>>,
) -> Result<Arc<CredentialIndex>, StoreError> {
    let Some(store) = store else {
        return Ok(config.resolved.credentials.clone());
    };
    let started = std::time::Instant::now();
    let contents = store.load(crate::auth::unix_now())?;
    let mut index = (*config.resolved.credentials).clone();
    for warning in crate::store::index::lay_over(&mut index, &contents) {
        tracing::warn!(%warning, "store");
    }
    tracing::info!(
        consumers = contents.consumers.len(),
        credentials = contents.credentials.len(),
        subscriptions = contents.subscriptions.len(),
        jwt_revocations = contents.jwt_revocations.len(),
        load_ms = started.elapsed().as_millis() as u64,
        "store loaded"
    );
    Ok(Arc::new(index))
}

fn propagation_timeout(state: &PlaneState) -> Duration {
    state
        .config
        .resolved
        .admin
        .as_ref()
        .map_or(Duration::from_secs(2), |a| a.propagation_timeout)
}

fn micros_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl ControlPlane {
    pub fn new(
        config: Config,
        store: Option<Box<dyn Store>>,
        auth: Arc<AuthService>,
        cores: Vec<ControlSender>,
        connections: Arc<ConnectionCounts>,
    ) -> std::io::Result<ControlPlane> {
        let audit_log = match config.audit_log_path() {
            Some(path) => {
                let mut file = AuditFile::open(path)?;
                if let Some(store) = store.as_deref() {
                    match file.catch_up(store) {
                        Ok(0) => {}
                        Ok(n) => {
                            tracing::warn!(path = %file.path.display(), records = n, "audit log: copied records the last run committed but did not copy")
                        }
                        Err(error) => {
                            tracing::error!(path = %file.path.display(), %error, "audit log: cannot bring the copy in line with the store")
                        }
                    }
                }
                Some(file)
            }
            None => None,
        };
        Ok(ControlPlane {
            connections,
            settings: Mutex::new(config.resolved.admin.clone()),
            state: Mutex::new(PlaneState {
                config,
                store,
                audit_log,
                cores,
                stopping: false,
                health: None,
            }),
            auth,
        })
    }

    /// The state, locked (one writer at a time; reads take it briefly).
    pub fn lock(&self) -> MutexGuard<'_, PlaneState> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The admin settings now in force.
    pub fn settings(&self) -> Option<AdminSettings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Every core's metrics plus the control side's own, in the Prometheus text format. A core
    /// that does not answer within a second is left out of this scrape (and logged).
    pub fn scrape(&self, format: crate::observe::exposition::Format) -> String {
        let (reply, replies) = crossbeam_channel::unbounded();
        let deadline = std::time::Instant::now() + SCRAPE_TIMEOUT;
        let (sent, listeners, health) = {
            let state = self.lock();
            let sent = state
                .cores
                .iter()
                .filter(|core| core.send_by(ControlMsg::Metrics(reply.clone()), deadline))
                .count();
            let listeners: Vec<String> = state
                .config
                .listeners
                .iter()
                .map(|l| l.name.get_ref().clone())
                .collect();
            let health = state
                .health
                .as_ref()
                .map(HealthChecker::verdicts)
                .unwrap_or_default();
            (sent, listeners, health)
        };
        drop(reply);
        let mut reports = Vec::with_capacity(sent);
        while reports.len() < sent {
            match replies.recv_deadline(deadline) {
                Ok(report) => reports.push(report),
                Err(_) => break,
            }
        }
        if reports.len() < sent {
            tracing::warn!(
                answered = reports.len(),
                cores = sent,
                "metrics: not every core answered the scrape in time"
            );
        }
        let facts = ControlFacts {
            connections: listeners
                .into_iter()
                .enumerate()
                .map(|(at, name)| (name, u64::from(self.connections.open(at))))
                .collect(),
            core_versions: self.auth.propagation_status().confirmed,
            jwks: self.auth.jwks_stats(),
            health,
            process_log_dropped: crate::observe::dropped_lines(),
        };
        crate::observe::exposition::render(&reports, &facts, format)
    }

    /// Refuses further writes (the gateway is draining).
    pub fn stop(&self) {
        let mut state = self.lock();
        state.stopping = true;
        state.stop_health_checks();
    }

    /// (Re)starts the active health checks for `upstreams`, stopping the previous ones.
    pub fn start_health_checks(&self, upstreams: &[Upstream]) {
        let mut state = self.lock();
        state.restart_health_checks(upstreams);
    }

    /// Reopens the audit JSONL file (SIGUSR1).
    pub fn reopen_audit_log(&self) {
        if let Some(file) = &mut self.lock().audit_log {
            file.reopen();
        }
    }

    /// Commits `writes` with their audit `entry`, then publishes them to every core and waits
    /// for every ack (or `timeout`). The caller holds the lock from validation to here.
    pub fn change(
        &self,
        state: &mut PlaneState,
        writes: Vec<Write>,
        entry: AuditEntry,
    ) -> Result<Propagation, ChangeError> {
        if state.stopping {
            return Err(ChangeError::ShuttingDown);
        }
        let timeout = propagation_timeout(state);
        let store = state
            .store
            .as_mut()
            .ok_or_else(|| StoreError::Engine("no store is open".into()))?;
        let record = store.commit(&writes, entry)?;
        if let Some(file) = &mut state.audit_log {
            if file.lagging {
                match file.catch_up(store.as_ref()) {
                    Ok(_) => file.lagging = false,
                    Err(error) => {
                        tracing::error!(path = %file.path.display(), %error, "audit log: still behind the store")
                    }
                }
            } else {
                file.append(&record);
            }
        }
        let propagation = self.auth.change_credentials(
            |index| {
                for write in &writes {
                    if let Err(error) = crate::store::index::apply(index, write) {
                        tracing::warn!(%error, "store write not applied to the credential index");
                    }
                }
            },
            timeout,
        );
        if !propagation.complete() {
            return Err(ChangeError::PropagationTimeout {
                applied: propagation.applied,
                cores: propagation.cores,
            });
        }
        Ok(propagation)
    }

    /// Publishes the current credential state again (unchanged) and waits for every core's
    /// ack: after it, every core serves every change stored so far.
    pub fn confirm_all(&self, state: &PlaneState) -> Result<Propagation, ChangeError> {
        if state.stopping {
            return Err(ChangeError::ShuttingDown);
        }
        let propagation = self
            .auth
            .change_credentials(|_| {}, propagation_timeout(state));
        if !propagation.complete() {
            return Err(ChangeError::PropagationTimeout {
                applied: propagation.applied,
                cores: propagation.cores,
            });
        }
        Ok(propagation)
    }

    /// An audit entry stamped now.
    pub fn entry(
        actor: &str,
        action: &str,
        object: String,
        before: Option<serde_json::Value>,
        after: Option<serde_json::Value>,
    ) -> AuditEntry {
        AuditEntry {
            ts_us: micros_now(),
            actor: actor.to_string(),
            action: action.to_string(),
            object,
            before,
            after,
        }
    }

    /// Re-reads the config file and, when it is valid and keeps the same listener addresses,
    /// hands the new snapshot (and credentials: the config's with the store laid over them) to
    /// every core. Connections stay open; each serves its next request from the new snapshot.
    pub fn reload(&self) -> Result<u64, ReloadError> {
        let span = tracing::info_span!("reload");
        let _entered = span.enter();
        let mut state = self.lock();
        let path = state.config.source_path.clone();
        tracing::info!(config = %path.display(), "reloading configuration");
        let config = match Config::load(&path) {
            Ok(config) => config,
            Err(errors) => {
                for error in &errors {
                    tracing::error!(error = %error, "reload refused: invalid configuration");
                }
                return Err(ReloadError::Invalid(
                    errors.iter().map(ConfigError::to_string).collect(),
                ));
            }
        };
        for warning in &config.warnings {
            tracing::warn!(%warning, "configuration warning");
        }
        let current = &state.config;
        if config.resolved.listeners != current.resolved.listeners {
            let message = "listener addresses changed (restart to apply)";
            tracing::error!("reload refused: {message}");
            return Err(ReloadError::Refused(message.into()));
        }
        if config.gateway.workers != current.gateway.workers
            || config.gateway.pin != current.gateway.pin
            || config.logging.level != current.logging.level
            || config.logging.format != current.logging.format
            || config.logging.access_log != current.logging.access_log
            || config.logging.access_log_sample_2xx != current.logging.access_log_sample_2xx
            || config.logging.audit_log != current.logging.audit_log
            || config.store_path() != current.store_path()
            || config.resolved.admin.as_ref().map(|a| a.address)
                != current.resolved.admin.as_ref().map(|a| a.address)
        {
            tracing::warn!(
                "[gateway], [logging], [store] and admin.address changes take effect on restart only"
            );
        }
        let credentials = credentials_for(&config, state.store.as_mut())
            .map_err(|e| ReloadError::Refused(e.to_string()))?;
        let snapshot = Arc::new(Snapshot::compile(&config));
        // The old health checks stop before the cores adopt the new snapshot: any verdict of
        // theirs is then queued ahead of the snapshot, and `carry_over` decides what it keeps
        // (a verdict landing after it could take out a target no check brings back).
        state.stop_health_checks();
        let cores = &state.cores;
        let mut confirmed = Vec::new();
        self.auth.reload(&config, credentials, |auth_state| {
            let (ack, acks) = crossbeam_channel::unbounded();
            let deadline = std::time::Instant::now() + RELOAD_ACK_TIMEOUT;
            for core in cores {
                core.send_by(
                    ControlMsg::Adopt(snapshot.clone(), auth_state.clone(), ack.clone()),
                    deadline,
                );
            }
            while confirmed.len() < cores.len() {
                match acks.recv_deadline(deadline) {
                    Ok(core) => confirmed.push(core),
                    Err(_) => break,
                }
            }
            confirmed.clone()
        });
        let (applied, total) = (confirmed.len(), cores.len());
        if applied < total {
            tracing::warn!(
                applied,
                cores = total,
                "reload: not every core confirmed the new configuration in time"
            );
        } else {
            tracing::info!(cores = applied, "configuration reloaded");
        }
        crate::control::log_certificates(&snapshot);
        crate::control::log_credentials(&config);
        state.restart_health_checks(&snapshot.upstreams);
        // Admin tokens and the propagation timeout apply at once.
        *self
            .settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = config.resolved.admin.clone();
        state.config = config;
        if applied < total {
            return Err(ReloadError::NotConfirmed {
                applied,
                cores: total,
            });
        }
        Ok(self.auth.propagation_status().epoch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::sqlite::SqliteStore;
    use crate::store::ConsumerRecord;

    fn config(dir: &std::path::Path) -> Config {
        let text = format!(
            "[gateway]\ndata_dir = {:?}\n[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:1\"\n[admin]\naddress = \"127.0.0.1:1\"\npropagation_timeout = \"50ms\"\n",
            dir.display().to_string()
        );
        Config::parse("test.toml", &text).unwrap()
    }

    fn consumer(id: &str) -> Write {
        Write::Consumer(ConsumerRecord {
            id: id.into(),
            tenant: "default".into(),
            groups: Vec::new(),
            metadata: Default::default(),
            created_at: 1,
            deleted_at: None,
        })
    }

    /// A core that never reads its control channel: the change is stored, but answered as a
    /// propagation timeout, never as a success.
    #[test]
    fn a_core_that_does_not_ack_makes_the_change_a_propagation_timeout() {
        let dir = std::env::temp_dir().join(format!("cflow-plane-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let config = config(&dir);
        let store: Box<dyn Store> = Box::new(SqliteStore::open(&config.store_path()).unwrap());
        let auth = Arc::new(AuthService::start(
            &config,
            config.resolved.credentials.clone(),
        ));
        let (stuck, _peer, receiver) = crate::runtime::channel::control_channel().unwrap();
        auth.attach(vec![stuck.try_clone().unwrap()]);
        let plane = ControlPlane::new(
            config,
            Some(store),
            auth.clone(),
            vec![stuck],
            ConnectionCounts::new(1),
        )
        .unwrap();
        let mut state = plane.lock();
        let entry =
            ControlPlane::entry("ops", "consumer.create", "consumer/late".into(), None, None);
        let started = std::time::Instant::now();
        let result = plane.change(&mut state, vec![consumer("late")], entry);
        assert!(
            matches!(
                result,
                Err(ChangeError::PropagationTimeout {
                    applied: 0,
                    cores: 1
                })
            ),
            "{result:?}"
        );
        assert!(started.elapsed() >= Duration::from_millis(50));
        let store = state.store.as_deref().unwrap();
        assert!(
            store.consumer("late").unwrap().is_some(),
            "stored all the same"
        );
        assert_eq!(
            auth.propagation_status().confirmed,
            vec![1],
            "the core never confirmed"
        );
        // The core applies it late: the status shows it caught up.
        match receiver.try_next_control() {
            Some(ControlMsg::Auth(adopted, ack)) => {
                assert_eq!(adopted.epoch, 2);
                ack.send(0).unwrap();
            }
            _ => panic!("the change was not queued for the core"),
        }
        assert_eq!(
            auth.propagation_status().confirmed,
            vec![2],
            "the late ack counts"
        );
        drop(state);
        plane.stop();
        let mut state = plane.lock();
        let entry = ControlPlane::entry(
            "ops",
            "consumer.create",
            "consumer/after".into(),
            None,
            None,
        );
        assert!(matches!(
            plane.change(&mut state, vec![consumer("after")], entry),
            Err(ChangeError::ShuttingDown)
        ));
        drop(state);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
