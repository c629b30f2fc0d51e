//! The control side of authentication: it owns the current [`AuthState`] (credentials and
//! issuer keys), publishes every change to all cores and waits for each core's ack, runs the
//! JWKS refresher thread (periodic refresh honouring `Cache-Control` within bounds, one
//! single-flight refetch per issuer and cooldown when a core meets an unknown `kid`, last good
//! keys kept while the IdP is down) and the Basic password checker thread.

use super::index::CredentialIndex;
use super::jwks::{self, JwksUrl, KeySet};
use super::keys::AlgorithmSet;
use super::{basic, AuthLinks, AuthState, Refetch};
use crate::config::Config;
use crate::runtime::channel::ControlSender;
use crate::runtime::ControlMsg;
use crossbeam_channel::{Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// How long a publication waits for every core's ack.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);
/// Time one JWKS fetch may take, from connect to the last byte of the body.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where one issuer's keys come from.
#[derive(Debug, Clone)]
struct KeySource {
    name: String,
    url: Option<JwksUrl>,
    /// For `https://`: the client config, and the CA bundle it came from (compared on reload).
    tls: Option<Arc<rustls::ClientConfig>>,
    ca: Option<String>,
    allowed: AlgorithmSet,
    refresh: Duration,
    min_refresh: Duration,
    max_refresh: Duration,
    cooldown: Duration,
}

impl PartialEq for KeySource {
    fn eq(&self, other: &Self) -> bool {
        self.name == other.name
            && self.url == other.url
            && self.ca == other.ca
            && self.allowed == other.allowed
            && self.refresh == other.refresh
            && self.min_refresh == other.min_refresh
            && self.max_refresh == other.max_refresh
            && self.cooldown == other.cooldown
    }
}

/// What the control side currently serves.
struct Published {
    state: Arc<AuthState>,
    sources: Vec<KeySource>,
    cores: Vec<ControlSender>,
    /// Per core: the last epoch it confirmed.
    confirmed: Vec<u64>,
    last: Option<Propagation>,
    /// Per issuer name: JWKS fetches and when its keys were last loaded.
    jwks: std::collections::BTreeMap<String, JwksCounts>,
    /// Publications some core had not acked by the deadline: their ack channels, read later
    /// so a late core shows as caught up.
    late: Vec<(u64, Receiver<usize>)>,
}

/// Publications whose late acks are still awaited, at most.
const LATE_PUBLICATIONS: usize = 32;

/// One issuer's key loads, for `/metrics`.
#[derive(Debug, Clone, Copy, Default)]
struct JwksCounts {
    ok: u64,
    failed: u64,
    loaded: Option<Instant>,
}

/// Marks the keys of issuers read from a `jwks_file` as loaded now.
fn note_file_keys(jwks: &mut std::collections::BTreeMap<String, JwksCounts>, config: &Config) {
    for (issuer, keys) in config.issuers.iter().zip(&config.resolved.issuer_keys) {
        let counts = jwks.entry(issuer.name.get_ref().clone()).or_default();
        if keys.is_some() {
            counts.loaded = Some(Instant::now());
        }
    }
}

/// How one change reached the cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Propagation {
    pub epoch: u64,
    pub cores: usize,
    /// Cores that confirmed within the timeout.
    pub applied: usize,
    /// From the change being handed to the cores to the last confirmation (or the timeout).
    pub elapsed: Duration,
    /// Unix microseconds when the propagation ended.
    pub at_us: i64,
}

impl Propagation {
    /// Every core applied the change.
    pub fn complete(&self) -> bool {
        self.applied == self.cores
    }
}

fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

impl Published {
    /// Replaces the state (epoch + 1) and hands it to every core; returns once all acked or
    /// `timeout` passed (a late core applies it when it reads the message).
    fn publish(
        &mut self,
        build: impl FnOnce(&AuthState) -> AuthState,
        timeout: Duration,
    ) -> Propagation {
        let mut next = build(&self.state);
        next.epoch = self.state.epoch + 1;
        self.state = Arc::new(next);
        let started = Instant::now();
        let deadline = started + timeout;
        let (ack, acks) = crossbeam_channel::unbounded();
        let mut sent = 0;
        for core in &self.cores {
            if core.send_by(ControlMsg::Auth(self.state.clone(), ack.clone()), deadline) {
                sent += 1;
            }
        }
        let mut applied = 0;
        while applied < sent {
            let Ok(core) = acks.recv_deadline(deadline) else {
                break;
            };
            self.confirm(core, self.state.epoch);
            applied += 1;
        }
        let propagation = Propagation {
            epoch: self.state.epoch,
            cores: self.cores.len(),
            applied,
            elapsed: started.elapsed(),
            at_us: unix_micros(),
        };
        if !propagation.complete() {
            tracing::warn!(
                applied,
                cores = self.cores.len(),
                epoch = self.state.epoch,
                "auth update: not every core confirmed in time"
            );
            if self.late.len() >= LATE_PUBLICATIONS {
                self.late.remove(0);
            }
            self.late.push((self.state.epoch, acks));
        }
        self.last = Some(propagation);
        propagation
    }

    /// Records the acks that arrived after their publication's deadline.
    fn collect_late_acks(&mut self) {
        let mut late = std::mem::take(&mut self.late);
        late.retain(|(epoch, acks)| loop {
            match acks.try_recv() {
                Ok(core) => self.confirm(core, *epoch),
                // Some core still holds the message (queued, not yet applied).
                Err(crossbeam_channel::TryRecvError::Empty) => return true,
                // Every copy of the message was applied or dropped.
                Err(crossbeam_channel::TryRecvError::Disconnected) => return false,
            }
        });
        self.late = late;
    }

    fn confirm(&mut self, core: usize, epoch: u64) {
        if let Some(slot) = self.confirmed.get_mut(core) {
            *slot = (*slot).max(epoch);
        }
    }
}

/// What `/v1/status` reports of the propagation.
#[derive(Debug, Clone)]
pub struct PropagationStatus {
    pub epoch: u64,
    /// Per core: the last epoch it confirmed.
    pub confirmed: Vec<u64>,
    pub last: Option<Propagation>,
}

/// The control side's authentication service.
pub struct AuthService {
    shared: Arc<Mutex<Published>>,
    links: AuthLinks,
    /// The refetch queue, until the refresher thread takes it.
    requests: Mutex<Option<Receiver<Refetch>>>,
}

fn sources(config: &Config) -> Vec<KeySource> {
    config
        .issuers
        .iter()
        .zip(&config.resolved.issuer_tls)
        .map(|(i, tls)| KeySource {
            name: i.name.get_ref().clone(),
            url: i
                .jwks_url
                .as_ref()
                .and_then(|u| JwksUrl::parse(u.get_ref()).ok()),
            tls: tls.clone(),
            ca: i.jwks_ca.as_ref().map(|c| c.get_ref().clone()),
            allowed: i.allowed_algorithms(),
            refresh: i.jwks_refresh.0,
            min_refresh: i.jwks_min_refresh.0,
            max_refresh: i.jwks_max_refresh.0,
            cooldown: i.jwks_refetch_cooldown.0,
        })
        .collect()
}

/// The state for `config` and `credentials` (the config's, with the store laid over them),
/// keeping fetched keys of issuers whose source did not change.
fn state_for(
    config: &Config,
    credentials: Arc<CredentialIndex>,
    old: Option<(&AuthState, &[KeySource])>,
) -> AuthState {
    let new_sources = sources(config);
    let keys = new_sources
        .iter()
        .zip(&config.resolved.issuer_keys)
        .map(|(source, file_keys)| {
            if file_keys.is_some() {
                return file_keys.clone();
            }
            let (state, old_sources) = old?;
            let at = old_sources.iter().position(|s| s == source)?;
            state.keys[at].clone()
        })
        .collect();
    AuthState {
        epoch: 0,
        credentials,
        keys,
    }
}

impl AuthService {
    /// Starts the refresher and checker threads for `config`.
    pub fn start(config: &Config, credentials: Arc<CredentialIndex>) -> AuthService {
        let shared = Arc::new(Mutex::new(Published {
            state: Arc::new(AuthState {
                epoch: 1,
                ..state_for(config, credentials, None)
            }),
            sources: sources(config),
            cores: Vec::new(),
            confirmed: Vec::new(),
            last: None,
            jwks: Default::default(),
            late: Vec::new(),
        }));
        note_file_keys(&mut shared.lock().expect("auth state lock").jwks, config);
        let (refetch, requests) = crossbeam_channel::bounded(1024);
        AuthService {
            shared,
            links: AuthLinks {
                refetch,
                checker: basic::Checker::start(),
            },
            requests: Mutex::new(Some(requests)),
        }
    }

    /// The handles the cores use.
    pub fn links(&self) -> AuthLinks {
        self.links.clone()
    }

    /// The current state.
    pub fn state(&self) -> Arc<AuthState> {
        self.shared.lock().expect("auth state lock").state.clone()
    }

    /// Publishes future changes to these cores and starts the JWKS refresher: keys fetched
    /// from now on reach every core (none can be published to a core list not yet complete).
    pub fn attach(&self, cores: Vec<ControlSender>) {
        let mut shared = self.shared.lock().expect("auth state lock");
        shared.confirmed = vec![shared.state.epoch; cores.len()];
        shared.cores = cores;
        drop(shared);
        if let Some(requests) = self.requests.lock().expect("refetch queue lock").take() {
            let refresher = self.shared.clone();
            std::thread::Builder::new()
                .name("cflow-jwks".into())
                .spawn(move || refresh_loop(refresher, requests))
                .expect("spawn the JWKS refresher thread");
        }
    }

    /// Applies `change` to a copy of the credential index (only the shards it touches are
    /// copied) and publishes the result to every core, returning once all have acked or
    /// `timeout` passed: the entry point for credential changes that do not come from the
    /// config file. Routes, TLS and keys are untouched. Each core empties its verified-credential
    /// cache when it adopts the new state.
    pub fn change_credentials(
        &self,
        change: impl FnOnce(&mut CredentialIndex),
        timeout: Duration,
    ) -> Propagation {
        let mut shared = self.shared.lock().expect("auth state lock");
        shared.publish(
            |old| {
                let mut credentials = (*old.credentials).clone();
                change(&mut credentials);
                AuthState {
                    epoch: 0,
                    credentials: Arc::new(credentials),
                    keys: old.keys.clone(),
                }
            },
            timeout,
        )
    }

    /// JWKS fetch counts and key ages per issuer.
    pub fn jwks_stats(&self) -> Vec<crate::observe::exposition::JwksStat> {
        let shared = self.shared.lock().expect("auth state lock");
        shared
            .jwks
            .iter()
            .map(|(issuer, c)| crate::observe::exposition::JwksStat {
                issuer: issuer.clone(),
                ok: c.ok,
                failed: c.failed,
                keys_age_s: c.loaded.map(|at| at.elapsed().as_secs_f64()),
            })
            .collect()
    }

    /// Epochs per core and the last propagation.
    pub fn propagation_status(&self) -> PropagationStatus {
        let mut shared = self.shared.lock().expect("auth state lock");
        shared.collect_late_acks();
        PropagationStatus {
            epoch: shared.state.epoch,
            confirmed: shared.confirmed.clone(),
            last: shared.last,
        }
    }

    /// Builds the state for a reloaded `config` (with `credentials`: its own plus the store's)
    /// and runs `apply` with it while no other update can slip in between; `apply` hands it to
    /// the cores with the new snapshot and returns the ids of the cores that confirmed.
    pub fn reload(
        &self,
        config: &Config,
        credentials: Arc<CredentialIndex>,
        apply: impl FnOnce(Arc<AuthState>) -> Vec<usize>,
    ) {
        let mut shared = self.shared.lock().expect("auth state lock");
        let mut next = state_for(config, credentials, Some((&shared.state, &shared.sources)));
        next.epoch = shared.state.epoch + 1;
        shared.state = Arc::new(next);
        shared.sources = sources(config);
        note_file_keys(&mut shared.jwks, config);
        let epoch = shared.state.epoch;
        for core in apply(shared.state.clone()) {
            shared.confirm(core, epoch);
        }
        drop(shared);
        // Wake the refresher so it fetches for new or changed issuers at once.
        let _ = self.links.refetch.try_send(Refetch { issuer: "".into() });
    }
}

/// Refresh schedule of one remote issuer.
struct Schedule {
    source: KeySource,
    next: Instant,
    /// When an unknown `kid` last caused a fetch (the cooldown counts from it).
    last_refetch: Option<Instant>,
    last_body: Option<ring::digest::Digest>,
    /// Fetches failed in a row (reset by a good one) and in all.
    failures_in_row: u64,
    failures: u64,
}

fn refresh_loop(shared: Arc<Mutex<Published>>, requests: Receiver<Refetch>) {
    let mut schedules: Vec<Schedule> = Vec::new();
    loop {
        // Follow the configured sources (reloads change them).
        let sources = shared.lock().expect("auth state lock").sources.clone();
        schedules.retain(|s| sources.contains(&s.source));
        for source in sources.into_iter().filter(|s| s.url.is_some()) {
            if !schedules.iter().any(|s| s.source == source) {
                schedules.push(Schedule {
                    source,
                    next: Instant::now(),
                    last_refetch: None,
                    last_body: None,
                    failures_in_row: 0,
                    failures: 0,
                });
            }
        }
        let now = Instant::now();
        for schedule in schedules.iter_mut().filter(|s| s.next <= now) {
            fetch_and_publish(&shared, schedule);
        }
        let wait = schedules
            .iter()
            .map(|s| s.next.saturating_duration_since(Instant::now()))
            .min()
            .unwrap_or(Duration::from_secs(3600));
        match requests.recv_timeout(wait) {
            Ok(request) => {
                let now = Instant::now();
                if let Some(schedule) = schedules
                    .iter_mut()
                    .find(|s| *s.source.name == *request.issuer)
                {
                    let cooled = schedule
                        .last_refetch
                        .is_none_or(|at| now.duration_since(at) >= schedule.source.cooldown);
                    if cooled {
                        tracing::info!(issuer = %schedule.source.name, "unknown key id: refetching the JWKS");
                        schedule.last_refetch = Some(now);
                        schedule.next = now;
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn fetch_and_publish(shared: &Arc<Mutex<Published>>, schedule: &mut Schedule) {
    let source = &schedule.source;
    let Some(url) = &source.url else { return };
    let now = Instant::now();
    let fetched = jwks::fetch(url, FETCH_TIMEOUT, source.tls.as_ref()).and_then(|fetched| {
        KeySet::parse(&fetched.body, source.allowed, true)
            .map(|keys| (keys, fetched))
            .map_err(|e| e.to_string())
    });
    {
        let mut published = shared.lock().expect("auth state lock");
        let counts = published.jwks.entry(source.name.clone()).or_default();
        match &fetched {
            Ok(_) => {
                counts.ok += 1;
                counts.loaded = Some(now);
            }
            Err(_) => counts.failed += 1,
        }
    }
    match fetched {
        Ok((keys, fetched)) => {
            if schedule.failures_in_row > 0 {
                tracing::info!(issuer = %source.name, failed_fetches = schedule.failures_in_row, "JWKS reachable again");
            }
            schedule.failures_in_row = 0;
            let interval = fetched.max_age.unwrap_or(source.refresh).clamp(
                source.min_refresh,
                source.max_refresh.max(source.min_refresh),
            );
            schedule.next = now + interval;
            let digest = ring::digest::digest(&ring::digest::SHA256, &fetched.body);
            if schedule.last_body.as_ref().map(|d| d.as_ref()) == Some(digest.as_ref()) {
                return;
            }
            schedule.last_body = Some(digest);
            tracing::info!(issuer = %source.name, url = %url.text, kids = %keys.kids().join(","), next_refresh = ?interval, "JWKS loaded");
            let keys = Arc::new(keys);
            let mut published = shared.lock().expect("auth state lock");
            let Some(at) = published.sources.iter().position(|s| s == source) else {
                return;
            };
            published.publish(
                |old| {
                    let mut all = old.keys.to_vec();
                    all[at] = Some(keys);
                    AuthState {
                        epoch: 0,
                        credentials: old.credentials.clone(),
                        keys: all.into(),
                    }
                },
                ACK_TIMEOUT,
            );
        }
        Err(error) => {
            schedule.next = now + source.min_refresh;
            schedule.failures_in_row += 1;
            schedule.failures += 1;
            tracing::warn!(
                issuer = %source.name,
                url = %url.text,
                %error,
                retry_in = ?source.min_refresh,
                failures_in_row = schedule.failures_in_row,
                failures_total = schedule.failures,
                keys_kept = schedule.last_body.is_some(),
                "JWKS fetch failed: keeping the last good keys"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::index::{Consumer, Credential, CredentialKind, Handle, Secret};

    const CONFIG: &str = r#"
[[listeners]]
name = "public"
address = "127.0.0.1:1"
"#;

    #[test]
    fn a_credential_change_publishes_a_new_epoch_without_a_reload() {
        let config = Config::parse("test.toml", CONFIG).unwrap();
        let service = AuthService::start(&config, config.resolved.credentials.clone());
        let before = service.state();
        let propagation = service.change_credentials(
            |index| {
                let consumer = Arc::new(Consumer {
                    id: "late".into(),
                    tenant: "default".into(),
                    groups: Box::new([]),
                    metadata: Box::new([]),
                });
                index
                    .add(
                        Handle::ApiKey("k1".into()),
                        Arc::new(Credential {
                            id: "k1".into(),
                            kind: CredentialKind::ApiKey,
                            consumer,
                            secret: Secret::ApiKey([0; 32]),
                            scopes: Box::new([]),
                            expires: None,
                            revoked: false,
                        }),
                    )
                    .unwrap();
            },
            ACK_TIMEOUT,
        );
        assert!(propagation.complete(), "no cores: nothing to wait for");
        let after = service.state();
        assert_eq!(after.epoch, before.epoch + 1);
        assert!(before.credentials.api_key("k1").is_none());
        assert!(after.credentials.api_key("k1").is_some());
    }
}
