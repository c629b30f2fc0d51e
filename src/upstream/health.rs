//! Active health checks. One control-side thread (`cflow-health`) asks every target of each
//! upstream with `[upstreams.health_check]` for `GET <path>` every `interval`, over TLS when the
//! upstream uses TLS, and pushes each change of verdict to every core as
//! [`ControlMsg::Health`]: down after `unhealthy_threshold` failed checks in a row (connect
//! error, timeout, malformed answer, a status other than 2xx), up after `healthy_threshold`
//! passed ones. A core applies it with [`super::UpstreamPools::apply_health`].
//!
//! Checks are blocking socket calls bounded by `timeout` and run one at a time on this thread;
//! nothing of them runs on a core. A reload stops the thread and starts a new one for the new
//! snapshot; the new one pushes its first verdict per target as soon as a threshold is reached,
//! and the stopped one can no longer push anything once its [`HealthChecker`] has been dropped.

use crate::runtime::channel::ControlSender;
use crate::runtime::deadline_socket::DeadlineSocket;
use crate::runtime::ControlMsg;
use crate::snapshot::Upstream;
use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use rustls::pki_types::ServerName;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Bytes of a check's response read at most while looking for the status line.
const MAX_STATUS_LINE: usize = 1024;

/// How long pushing a verdict may wait for a core whose control queue is full.
const PUSH_TIMEOUT: Duration = Duration::from_secs(1);

/// One upstream's `[upstreams.health_check]`, compiled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthCheck {
    pub path: String,
    pub interval: Duration,
    pub timeout: Duration,
    pub unhealthy_threshold: u32,
    pub healthy_threshold: u32,
}

/// The config's defaults (`[upstreams.health_check]` with no keys).
impl Default for HealthCheck {
    fn default() -> Self {
        use crate::config as c;
        HealthCheck {
            path: c::default_health_path().into_inner(),
            interval: c::default_health_interval().into_inner().0,
            timeout: c::default_health_timeout().into_inner().0,
            unhealthy_threshold: c::default_unhealthy_threshold().into_inner(),
            healthy_threshold: c::default_healthy_threshold().into_inner(),
        }
    }
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("connect: {0}")]
    Connect(std::io::Error),
    #[error("TLS: {0}")]
    Tls(rustls::Error),
    #[error("timed out")]
    Timeout,
    #[error("{0}")]
    Io(std::io::Error),
    #[error("closed before the status line")]
    Closed,
    #[error("malformed status line")]
    Malformed,
    #[error("status {0}")]
    Status(u16),
}

/// Runs one check: connect, send `GET path`, read the status line. `Ok` with the status when
/// it is 2xx; everything must finish within `timeout`.
pub fn check_once(
    target: SocketAddr,
    tls: Option<(&Arc<rustls::ClientConfig>, &ServerName<'static>)>,
    path: &str,
    timeout: Duration,
) -> Result<u16, CheckError> {
    let socket =
        DeadlineSocket::connect(&target, Instant::now() + timeout).map_err(CheckError::Connect)?;
    let host = match tls {
        Some((_, ServerName::DnsName(name))) => name.as_ref().to_string(),
        _ => target.to_string(),
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: credentialflow-health-check\r\nConnection: close\r\n\r\n"
    );
    match tls {
        None => exchange(socket, &request),
        Some((config, name)) => {
            let session = rustls::ClientConnection::new(config.clone(), name.clone())
                .map_err(CheckError::Tls)?;
            exchange(rustls::StreamOwned::new(session, socket), &request)
        }
    }
}

fn io_error(err: std::io::Error) -> CheckError {
    match err.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => CheckError::Timeout,
        _ => CheckError::Io(err),
    }
}

fn exchange(mut stream: impl Read + Write, request: &str) -> Result<u16, CheckError> {
    stream.write_all(request.as_bytes()).map_err(io_error)?;
    stream.flush().map_err(io_error)?;
    let mut head = Vec::with_capacity(128);
    let mut buf = [0u8; 256];
    while !head.windows(2).any(|w| w == b"\r\n") {
        if head.len() >= MAX_STATUS_LINE {
            return Err(CheckError::Malformed);
        }
        match stream.read(&mut buf).map_err(io_error)? {
            0 => return Err(CheckError::Closed),
            n => head.extend_from_slice(&buf[..n]),
        }
    }
    let status = parse_status_line(&head).ok_or(CheckError::Malformed)?;
    if (200..300).contains(&status) {
        Ok(status)
    } else {
        Err(CheckError::Status(status))
    }
}

/// The status code of `HTTP/1.x NNN ...`.
fn parse_status_line(head: &[u8]) -> Option<u16> {
    let rest = head
        .strip_prefix(b"HTTP/1.1 ")
        .or_else(|| head.strip_prefix(b"HTTP/1.0 "))?;
    let code = rest.get(..3)?;
    if !code.iter().all(u8::is_ascii_digit) || rest.get(3).is_some_and(|&b| b != b' ' && b != b'\r')
    {
        return None;
    }
    std::str::from_utf8(code).ok()?.parse().ok()
}

/// One target's run of results and the verdict they led to.
#[derive(Debug, Default)]
struct Verdict {
    passes: u32,
    fails: u32,
    /// `None` until a threshold is first reached.
    up: Option<bool>,
}

impl Verdict {
    /// Counts one result; the new verdict when it changes (or is first reached).
    fn record(&mut self, passed: bool, check: &HealthCheck) -> Option<bool> {
        if passed {
            self.passes = self.passes.saturating_add(1);
            self.fails = 0;
            if self.up != Some(true) && self.passes >= check.healthy_threshold {
                self.up = Some(true);
                return self.up;
            }
        } else {
            self.fails = self.fails.saturating_add(1);
            self.passes = 0;
            if self.up != Some(false) && self.fails >= check.unhealthy_threshold {
                self.up = Some(false);
                return self.up;
            }
        }
        None
    }
}

/// One checked target.
struct Checked {
    upstream: String,
    target: SocketAddr,
    tls: Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>,
    check: HealthCheck,
    due: Instant,
    verdict: Verdict,
    /// The current verdict has not reached every core yet.
    undelivered: bool,
}

/// One checked target's current verdict, as the metrics show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub upstream: String,
    pub target: SocketAddr,
    /// `None` until a threshold is first reached.
    pub up: Option<bool>,
}

/// The running checker thread (see the module's notes).
pub struct HealthChecker {
    /// Dropped when the checker is: wakes the thread, which then exits.
    wake: Option<Sender<()>>,
    /// False once stopped; the thread pushes only while holding it true.
    live: Arc<Mutex<bool>>,
    /// Every checked target's verdict, in check order; written by the thread on each change,
    /// read by metrics scrapes (control side only).
    verdicts: Arc<Mutex<Vec<TargetHealth>>>,
}

impl HealthChecker {
    /// Starts checking the upstreams that have health checks; `None` when none has.
    pub fn start(upstreams: &[Upstream], cores: Vec<ControlSender>) -> Option<HealthChecker> {
        let now = Instant::now();
        let checked: Vec<Checked> = upstreams
            .iter()
            .filter_map(|u| u.health_check.as_ref().map(|check| (u, check)))
            .flat_map(|(u, check)| {
                u.targets
                    .iter()
                    .enumerate()
                    .map(move |(i, &target)| Checked {
                        upstream: u.name.clone(),
                        target,
                        tls: u
                            .tls
                            .as_ref()
                            .map(|tls| (tls.config.clone(), tls.server_names[i].clone())),
                        check: check.clone(),
                        due: now,
                        verdict: Verdict::default(),
                        undelivered: false,
                    })
            })
            .collect();
        if checked.is_empty() {
            return None;
        }
        let verdicts: Vec<TargetHealth> = checked
            .iter()
            .map(|c| TargetHealth {
                upstream: c.upstream.clone(),
                target: c.target,
                up: None,
            })
            .collect();
        let verdicts = Arc::new(Mutex::new(verdicts));
        let (wake, sleep) = crossbeam_channel::bounded(0);
        let live = Arc::new(Mutex::new(true));
        let thread_live = live.clone();
        let thread_verdicts = verdicts.clone();
        let spawned = std::thread::Builder::new()
            .name("cflow-health".into())
            .spawn(move || run(checked, cores, sleep, thread_live, thread_verdicts));
        if let Err(err) = spawned {
            tracing::error!(error = %err, "cannot start the health check thread: no active health checks");
            return None;
        }
        Some(HealthChecker {
            wake: Some(wake),
            live,
            verdicts,
        })
    }

    /// Every checked target's current verdict.
    pub fn verdicts(&self) -> Vec<TargetHealth> {
        self.verdicts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// Dropping the checker stops its thread: from then on it pushes nothing (a push in progress
/// finishes first). A check in progress ends within its timeout; nothing waits for it.
impl Drop for HealthChecker {
    fn drop(&mut self) {
        *self.live.lock().unwrap_or_else(|p| p.into_inner()) = false;
        self.wake = None;
    }
}

fn run(
    mut checked: Vec<Checked>,
    cores: Vec<ControlSender>,
    sleep: Receiver<()>,
    live: Arc<Mutex<bool>>,
    verdicts: Arc<Mutex<Vec<TargetHealth>>>,
) {
    loop {
        let Some(next) = (0..checked.len()).min_by_key(|&i| checked[i].due) else {
            return;
        };
        let wait = checked[next].due.saturating_duration_since(Instant::now());
        match sleep.recv_timeout(wait) {
            Err(RecvTimeoutError::Timeout) => {}
            Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
        }
        let item = &mut checked[next];
        item.due = Instant::now() + item.check.interval;
        let result = check_once(
            item.target,
            item.tls.as_ref().map(|(config, name)| (config, name)),
            &item.check.path,
            item.check.timeout,
        );
        let changed = item.verdict.record(result.is_ok(), &item.check).is_some();
        if !changed && !item.undelivered {
            continue;
        }
        let Some(up) = item.verdict.up else {
            continue;
        };
        let alive = live.lock().unwrap_or_else(|p| p.into_inner());
        if !*alive {
            return;
        }
        if changed {
            if let Some(shown) = verdicts
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .get_mut(next)
            {
                shown.up = Some(up);
            }
            match &result {
                Ok(status) => {
                    tracing::info!(upstream = %item.upstream, target = %item.target, status, "health check: target up")
                }
                Err(error) => {
                    tracing::warn!(upstream = %item.upstream, target = %item.target, %error, "health check: target down")
                }
            }
        }
        // A core whose queue stays full misses the verdict: it is sent again after every check
        // until every core has taken it (a repeat is harmless).
        let by = Instant::now() + PUSH_TIMEOUT;
        let mut delivered = true;
        for core in &cores {
            let message = ControlMsg::Health {
                upstream: item.upstream.clone(),
                target: item.target,
                up,
            };
            delivered &= core.send_by(message, by);
        }
        if !delivered && !item.undelivered {
            tracing::warn!(upstream = %item.upstream, target = %item.target, "health check: a core did not take the verdict; sending it again after the next check");
        }
        item.undelivered = !delivered;
        drop(alive);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn status_lines() {
        assert_eq!(parse_status_line(b"HTTP/1.1 200 OK\r\n"), Some(200));
        assert_eq!(parse_status_line(b"HTTP/1.0 503\r\n"), Some(503));
        assert_eq!(parse_status_line(b"HTTP/1.1 20 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/1.1 2000 OK\r\n"), None);
        assert_eq!(parse_status_line(b"HTTP/2 200\r\n"), None);
        assert_eq!(parse_status_line(b"garbage\r\n"), None);
    }

    #[test]
    fn verdicts_change_only_at_the_thresholds() {
        let check = HealthCheck {
            unhealthy_threshold: 2,
            healthy_threshold: 3,
            ..HealthCheck::default()
        };
        let mut v = Verdict::default();
        assert_eq!(v.record(false, &check), None);
        assert_eq!(v.record(false, &check), Some(false));
        assert_eq!(
            v.record(false, &check),
            None,
            "no repeat while it stays down"
        );
        assert_eq!(v.record(true, &check), None);
        assert_eq!(v.record(true, &check), None);
        assert_eq!(
            v.record(false, &check),
            None,
            "a failure restarts the count"
        );
        assert_eq!(v.record(true, &check), None);
        assert_eq!(v.record(true, &check), None);
        assert_eq!(v.record(true, &check), Some(true));
        assert_eq!(v.record(true, &check), None);
    }

    /// Serves one connection with `answer` after reading the request head; returns the
    /// request it read.
    fn serve_once(answer: &'static [u8]) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                let n = s.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                head.extend_from_slice(&buf[..n]);
            }
            let _ = s.write_all(answer);
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, handle)
    }

    #[test]
    fn a_2xx_passes_and_anything_else_fails() {
        let (addr, seen) = serve_once(b"HTTP/1.1 204 No Content\r\n\r\n");
        let status = check_once(addr, None, "/ready?deep=1", Duration::from_secs(2)).unwrap();
        assert_eq!(status, 204);
        let request = seen.join().unwrap();
        assert!(
            request.starts_with("GET /ready?deep=1 HTTP/1.1\r\n"),
            "{request}"
        );
        assert!(request.contains(&format!("Host: {addr}\r\n")), "{request}");

        let (addr, _) = serve_once(b"HTTP/1.1 503 Service Unavailable\r\n\r\n");
        let err = check_once(addr, None, "/healthz", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, CheckError::Status(503)), "{err}");

        let (addr, _) = serve_once(b"");
        let err = check_once(addr, None, "/healthz", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, CheckError::Closed), "{err}");
    }

    /// A client config trusting a fresh CA, and a server config with a certificate for
    /// `health.test` issued by it.
    fn tls_pair() -> (Arc<rustls::ClientConfig>, Arc<rustls::ServerConfig>) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca_params = CertificateParams::default();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = CertificateParams::new(vec!["health.test".to_string()])
            .unwrap()
            .signed_by(&leaf_key, &Issuer::from_params(&ca_params, &ca_key))
            .unwrap();
        let provider = crate::tls::provider();
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![leaf.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(leaf_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca.der().clone()).unwrap();
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        (Arc::new(client), Arc::new(server))
    }

    /// Serves one TLS connection: reads the request head, answers 200; returns the head.
    fn serve_tls_once(
        server: Arc<rustls::ServerConfig>,
    ) -> (SocketAddr, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let handle = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let session = rustls::ServerConnection::new(server).unwrap();
            let mut tls = rustls::StreamOwned::new(session, tcp);
            let mut head = Vec::new();
            let mut buf = [0u8; 512];
            while !head.ends_with(b"\r\n\r\n") {
                match tls.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = tls.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
            let _ = tls.flush();
            String::from_utf8_lossy(&head).into_owned()
        });
        (addr, handle)
    }

    #[test]
    fn a_tls_target_is_checked_over_verified_tls() {
        let (client, server) = tls_pair();
        let name = ServerName::try_from("health.test").unwrap();
        let (addr, seen) = serve_tls_once(server.clone());
        let status = check_once(
            addr,
            Some((&client, &name)),
            "/healthz",
            Duration::from_secs(2),
        );
        assert_eq!(status.unwrap(), 200);
        let request = seen.join().unwrap();
        assert!(request.contains("Host: health.test\r\n"), "{request}");

        // A name the certificate does not hold fails the check.
        let wrong = ServerName::try_from("other.test").unwrap();
        let (addr, _) = serve_tls_once(server);
        let err = check_once(
            addr,
            Some((&client, &wrong)),
            "/healthz",
            Duration::from_secs(2),
        )
        .unwrap_err();
        assert!(err.to_string().contains("certificate"), "{err}");
    }

    #[test]
    fn a_silent_target_fails_within_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let err = check_once(addr, None, "/healthz", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, CheckError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn a_silent_tls_target_fails_within_the_timeout() {
        // It accepts and never answers the ClientHello: the handshake must not wait forever.
        let (client, _) = tls_pair();
        let name = ServerName::try_from("health.test").unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let started = Instant::now();
        let err = check_once(
            addr,
            Some((&client, &name)),
            "/healthz",
            Duration::from_millis(300),
        )
        .unwrap_err();
        assert!(matches!(err, CheckError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        drop(listener);
    }

    #[test]
    fn a_target_trickling_bytes_fails_at_the_deadline() {
        // One byte every 50 ms and never a line end: each read succeeds, the whole must not.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..60 {
                if s.write_all(b"H").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let err = check_once(addr, None, "/healthz", Duration::from_millis(300)).unwrap_err();
        assert!(matches!(err, CheckError::Timeout), "{err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        server.join().unwrap();
    }

    #[test]
    fn a_refused_connect_fails() {
        let addr = {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            listener.local_addr().unwrap()
        };
        let err = check_once(addr, None, "/healthz", Duration::from_secs(1)).unwrap_err();
        assert!(matches!(err, CheckError::Connect(_)), "{err}");
    }
}
