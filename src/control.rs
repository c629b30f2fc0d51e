//! The process lifecycle on the control side: load and validate the config, open the store,
//! start the cores and the admin API, wait for signals (SIGHUP: reload; SIGUSR1: reopen the
//! access and audit logs), and drain on SIGTERM/SIGINT (a second signal exits at once).

use crate::admin::api::Api;
use crate::admin::plane::{credentials_for, ControlPlane};
use crate::auth::service::AuthService;
use crate::config::{Config, ConfigError};
use crate::filter::connections::ConnectionCounts;
use crate::limit::limiter::TableSizes;
use crate::limit::quota_file::{self, QuotaWriter, SavedQuotas};
use crate::observe::access_writer::AccessWriter;
use crate::observe::init_logging;
use crate::runtime::channel::ControlSender;
use crate::runtime::{
    allowed_cpus, block_control_signals, raise_nofile_limit, return_free_memory, start_workers,
    stop_workers, wait_for_signal, wait_for_signal_timeout, LimitSetup,
};
use crate::snapshot::Snapshot;
use crate::store::sqlite::SqliteStore;
use crate::store::Store;
use std::path::Path;
use std::sync::Arc;

/// How often the control thread hands memory freed by the cores back to the kernel.
const MEMORY_TRIM_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);

/// Loads a config, printing every error to stderr. `None` when it is not valid.
pub fn load_config(path: &Path) -> Option<Config> {
    match Config::load(path) {
        Ok(config) => {
            for warning in &config.warnings {
                eprintln!("warning: {warning}");
            }
            Some(config)
        }
        Err(errors) => {
            report_config_errors(&errors);
            None
        }
    }
}

/// Prints config errors, one per line, to stderr.
pub fn report_config_errors(errors: &[ConfigError]) {
    for error in errors {
        eprintln!("{error}");
    }
    eprintln!(
        "{} error{} in config",
        errors.len(),
        if errors.len() == 1 { "" } else { "s" }
    );
}

/// Checks that `address` is free. A listener held by another process (even with SO_REUSEPORT)
/// makes this bind fail, so two gateways never silently share a port. A gateway that just exited
/// can hold its port for a few milliseconds while the kernel tears its rings down, so a busy
/// address is retried for up to two seconds.
///
/// The probe binds without listening: a listening probe would briefly accept connections that
/// are then reset when it closes, before the cores listen.
fn probe_listen(address: std::net::SocketAddr) -> std::io::Result<()> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    loop {
        match bind_without_listening(address) {
            Ok(()) => return Ok(()),
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(err) => return Err(err),
        }
    }
}

/// Binds a TCP socket to `address` (with SO_REUSEADDR, like a listener) and closes it.
fn bind_without_listening(address: std::net::SocketAddr) -> std::io::Result<()> {
    let domain = match address {
        std::net::SocketAddr::V4(_) => libc::AF_INET,
        std::net::SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain socket calls on a descriptor this function owns and closes; the address
    // structs are fully initialised and passed with their sizes.
    unsafe {
        let fd = libc::socket(domain, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let on: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        let rc = match address {
            std::net::SocketAddr::V4(v4) => {
                let mut addr: libc::sockaddr_in = std::mem::zeroed();
                addr.sin_family = libc::AF_INET as libc::sa_family_t;
                addr.sin_port = v4.port().to_be();
                addr.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
                libc::bind(
                    fd,
                    (&addr as *const libc::sockaddr_in).cast(),
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
            std::net::SocketAddr::V6(v6) => {
                let mut addr: libc::sockaddr_in6 = std::mem::zeroed();
                addr.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                addr.sin6_port = v6.port().to_be();
                addr.sin6_addr.s6_addr = v6.ip().octets();
                addr.sin6_scope_id = v6.scope_id();
                libc::bind(
                    fd,
                    (&addr as *const libc::sockaddr_in6).cast(),
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        };
        let result = if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        };
        libc::close(fd);
        result
    }
}

/// Opens the store when the config uses one.
fn open_store(config: &Config) -> Result<Option<Box<dyn Store>>, String> {
    if !config.uses_store() {
        return Ok(None);
    }
    let path = config.store_path();
    let store = SqliteStore::open(&path).map_err(|e| e.to_string())?;
    tracing::info!(path = %path.display(), "store opened");
    Ok(Some(Box::new(store)))
}

/// Runs the gateway until SIGTERM/SIGINT; returns the process exit code.
///
/// `on_ready` runs once every core listens (the demo prints its hints there).
pub fn serve(config: Config, on_ready: impl FnOnce(&Snapshot)) -> i32 {
    init_logging(&config.logging.level, config.logging.format);
    let nofile = raise_nofile_limit();
    block_control_signals();
    for address in &config.resolved.listeners {
        if let Err(err) = probe_listen(*address) {
            tracing::error!(%address, error = %err, "cannot listen");
            return 1;
        }
    }
    let mut store = match open_store(&config) {
        Ok(store) => store,
        Err(message) => {
            tracing::error!(error = %message, "cannot start");
            return 1;
        }
    };
    let credentials = match credentials_for(&config, store.as_mut()) {
        Ok(credentials) => credentials,
        Err(err) => {
            tracing::error!(error = %err, "cannot start: the store cannot be read");
            return 1;
        }
    };
    let snapshot = Arc::new(Snapshot::compile(&config));
    let auth = Arc::new(AuthService::start(&config, credentials));
    let cpus = allowed_cpus();
    let worker_count = config.worker_count(cpus.len());
    let (mut limits, quota_writer) = match limit_setup(&config, &snapshot) {
        Ok(setup) => setup,
        Err(message) => {
            tracing::error!(error = %message, "cannot start");
            return 1;
        }
    };
    let access_writer = match config.access_log_target() {
        None => None,
        Some(target) => match AccessWriter::start(target.clone()) {
            Ok((writer, sink)) => {
                tracing::info!(access_log = %target, sample_2xx = config.logging.access_log_sample_2xx, "access log");
                limits.access_log = Some((sink, config.logging.access_log_sample_2xx));
                Some(writer)
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot start");
                return 1;
            }
        },
    };
    let connections = limits.connections.clone();
    let started = start_workers(
        snapshot.clone(),
        (auth.state(), auth.links()),
        limits,
        worker_count,
        config.gateway.pin,
    );
    let workers = match started {
        Ok(workers) => workers,
        Err(err) => {
            tracing::error!(error = %err, "cannot start");
            return 1;
        }
    };
    let senders = || -> Vec<ControlSender> {
        workers
            .iter()
            .filter_map(|w| w.control.try_clone().ok())
            .collect()
    };
    auth.attach(senders());
    log_credentials(&config);
    for listener in &snapshot.listeners {
        tracing::info!(listener = %listener.name, address = %listener.address, tls = listener.tls.is_some(), "listening");
    }
    log_certificates(&snapshot);
    let drain_timeout = config.gateway.drain_timeout.0;
    let admin = config.resolved.admin.clone();
    let plane = match ControlPlane::new(config, store, auth.clone(), senders(), connections) {
        Ok(plane) => Arc::new(plane),
        Err(err) => {
            tracing::error!(error = %err, "cannot open the audit log");
            stop_workers(workers);
            return 1;
        }
    };
    plane.start_health_checks(&snapshot.upstreams);
    if let Some(admin) = admin {
        match crate::admin::server::start(
            admin.address,
            admin.tls.clone(),
            Arc::new(Api::new(plane.clone())),
        ) {
            Ok(server) => {
                tracing::info!(address = %server.address, tls = admin.tls.is_some(), tokens = admin.tokens.len(), "admin API listening")
            }
            Err(err) => {
                tracing::error!(address = %admin.address, error = %err, "cannot start the admin API");
                stop_workers(workers);
                return 1;
            }
        }
    }
    tracing::info!(
        workers = worker_count,
        pinned = plane.lock().config.gateway.pin,
        nofile_limit = nofile,
        "credentialflow ready"
    );
    on_ready(&snapshot);
    loop {
        let Some(signal) = wait_for_signal_timeout(MEMORY_TRIM_INTERVAL) else {
            return_free_memory();
            continue;
        };
        if signal == libc::SIGUSR1 {
            plane.reopen_audit_log();
            match &access_writer {
                Some(writer) => {
                    tracing::info!("SIGUSR1: reopening the access log");
                    writer.reopen();
                }
                None => tracing::info!("SIGUSR1: the access log is off, nothing to reopen"),
            }
            continue;
        }
        if signal == libc::SIGHUP {
            tracing::info!("SIGHUP");
            let _ = plane.reload();
            continue;
        }
        tracing::info!(signal, drain_timeout = ?drain_timeout, "shutting down: draining in-flight requests");
        break;
    }
    plane.stop();
    std::thread::spawn(|| {
        // A log rotation during the drain is no reason to stop waiting.
        let mut signal = wait_for_signal();
        while signal == libc::SIGUSR1 {
            signal = wait_for_signal();
        }
        tracing::warn!(
            signal,
            "second signal: exiting without waiting for the drain"
        );
        crate::observe::flush_logs(std::time::Duration::from_millis(500));
        std::process::exit(1);
    });
    stop_workers(workers);
    if let Some(writer) = quota_writer {
        writer.finish();
    }
    if let Some(writer) = access_writer {
        writer.finish();
    }
    tracing::info!("stopped");
    0
}

/// The limit state every core starts from: quota counts saved by the last run, and the writer
/// that saves them (started when any quota is configured; kept across reloads).
fn limit_setup(
    config: &Config,
    snapshot: &Snapshot,
) -> Result<(LimitSetup, Option<QuotaWriter>), String> {
    let has_quotas = snapshot
        .routes
        .iter()
        .flat_map(|r| r.limits.iter())
        .chain(snapshot.plans.iter().flat_map(|p| p.limits.iter()))
        .any(|rule| matches!(rule.kind, crate::limit::RuleKind::Quota(_)));
    let sizes = TableSizes {
        keys: config.limits.rate_limit_keys,
        quota_keys: config.limits.quota_keys,
    };
    let connections = ConnectionCounts::new(snapshot.listeners.len());
    if !has_quotas {
        let setup = LimitSetup {
            sizes,
            saved: Arc::new(SavedQuotas::default()),
            sink: None,
            connections,
            access_log: None,
        };
        return Ok((setup, None));
    }
    let path = config.data_dir().join(quota_file::FILE_NAME);
    let saved = SavedQuotas::load(&path).map_err(|err| err.to_string())?;
    tracing::info!(path = %path.display(), keys = saved.len(), "quota counts loaded");
    let (writer, sink) = QuotaWriter::start(path.clone(), &saved)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let setup = LimitSetup {
        sizes,
        saved: Arc::new(saved),
        sink: Some(sink),
        connections,
        access_log: None,
    };
    Ok((setup, Some(writer)))
}

/// Logs how many consumers and credentials the config holds (never the credentials).
pub fn log_credentials(config: &Config) {
    let (consumers, api_keys, others) = config.resolved.credentials.counts();
    if consumers + api_keys + others + config.issuers.len() > 0 {
        tracing::info!(
            consumers,
            api_keys,
            other_credentials = others,
            issuers = config.issuers.len(),
            "credentials loaded"
        );
    }
}

/// Logs each TLS listener's certificates with their names and remaining validity.
pub fn log_certificates(snapshot: &Snapshot) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    for listener in &snapshot.listeners {
        let Some(tls) = &listener.tls else { continue };
        for (file, names, not_after) in &tls.certificates {
            tracing::info!(
                listener = %listener.name,
                certificate = %file,
                names = %names.join(","),
                days_left = (not_after - now) / 86_400,
                "TLS certificate"
            );
        }
    }
}
