//! Shared harness for the credentialflow black-box integration tests.
//!
//! * [`Gateway`] writes a TOML config to a temporary file, runs
//!   `credentialflow run -c FILE`, waits until every listener accepts
//!   connections and kills the process on drop.
//! * [`ConfigBuilder`] produces the usual single-listener / single-upstream
//!   configuration with optional limits, upstream options and routes.
//! * [`Client`] is a raw HTTP/1.1 client over a `TcpStream` with read and
//!   write timeouts, able to read responses framed by `Content-Length`,
//!   chunked encoding or connection close, and to observe connection close.
//! * [`TestUpstream`] is a thread-per-connection HTTP/1.1 origin server that
//!   understands keep-alive and chunked request bodies, counts connections,
//!   request heads and complete requests, records requests, and answers
//!   according to a [`Mode`].
//! * Credentials made with the real CLI ([`issue_key`], [`jwk_new`], [`Jwk::mint`]), requests
//!   carrying them ([`get_with`]), and the checks of refusals ([`assert_refused`]) and of
//!   `check` naming a config line ([`assert_refused_at`]).
#![allow(dead_code)]

pub mod pki;

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Read/write timeout applied to every client socket.
pub const IO_TIMEOUT: Duration = Duration::from_secs(10);

/// Path of the binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_credentialflow")
}

static COUNTER: AtomicUsize = AtomicUsize::new(0);

/// A unique path in the system temp directory.
pub fn unique_temp_path(ext: &str) -> PathBuf {
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let pid = std::process::id();
    std::env::temp_dir().join(format!("credentialflow-it-{pid}-{n}-{nanos}.{ext}"))
}

/// Ports handed out by [`free_port`]: below the kernel's ephemeral range (32768 and up by
/// default), so a port handed to a gateway is never taken meanwhile by a socket bound to port 0
/// (a test upstream) or by an outgoing connection, which would answer in the gateway's place.
const TEST_PORTS: std::ops::Range<usize> = 20_000..32_000;

/// A port on 127.0.0.1 that was free a moment ago and that no other call hands out again in
/// this test process.
pub fn free_port() -> u16 {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Test binaries run one after another; a per-process offset keeps them apart anyway.
    let offset = (std::process::id() as usize).wrapping_mul(7919) % span;
    loop {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        assert!(n < span, "free_port: ran out of test ports");
        let port = TEST_PORTS.start + (offset + n) % span;
        if TcpListener::bind(("127.0.0.1", port as u16)).is_ok() {
            return port as u16;
        }
    }
}

pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

/// Resident set size of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Samples the RSS of a process in the background and keeps the maximum.
pub struct RssMonitor {
    stop: Arc<AtomicBool>,
    max: Arc<AtomicU64>,
    handle: Option<JoinHandle<()>>,
    pid: u32,
}

impl RssMonitor {
    pub fn start(pid: u32) -> RssMonitor {
        let stop = Arc::new(AtomicBool::new(false));
        let max = Arc::new(AtomicU64::new(0));
        let (s, m) = (stop.clone(), max.clone());
        let handle = thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                if let Some(kib) = rss_kib(pid) {
                    m.fetch_max(kib, Ordering::SeqCst);
                }
                thread::sleep(Duration::from_millis(10));
            }
        });
        RssMonitor {
            stop,
            max,
            handle: Some(handle),
            pid,
        }
    }

    /// Maximum RSS observed so far (KiB), including one fresh sample.
    pub fn max_kib(&self) -> u64 {
        if let Some(kib) = rss_kib(self.pid) {
            self.max.fetch_max(kib, Ordering::SeqCst);
        }
        self.max.load(Ordering::SeqCst)
    }

    pub fn stop(mut self) -> u64 {
        let max = self.max_kib();
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
        max.max(self.max.load(Ordering::SeqCst))
    }
}

impl Drop for RssMonitor {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

// ---------------------------------------------------------------------------
// Download/upload byte pattern
// ---------------------------------------------------------------------------

const PATTERN_PERIOD: usize = 251;

/// Pattern bytes: the byte at stream offset `i` is `(i % 251) as u8`.
/// The returned buffer starts at offset 0 and its length is a multiple of
/// the period, so it can be repeated back to back.
pub fn pattern_block(periods: usize) -> Vec<u8> {
    (0..PATTERN_PERIOD * periods)
        .map(|i| (i % PATTERN_PERIOD) as u8)
        .collect()
}

/// Incrementally checks that a byte stream follows the pattern.
pub struct PatternChecker {
    reference: Vec<u8>,
    pub offset: u64,
    pub ok: bool,
}

impl Default for PatternChecker {
    fn default() -> Self {
        Self::new()
    }
}

impl PatternChecker {
    pub fn new() -> Self {
        PatternChecker {
            reference: pattern_block(300),
            offset: 0,
            ok: true,
        }
    }

    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            let p = (self.offset % PATTERN_PERIOD as u64) as usize;
            let n = data.len().min(self.reference.len() - p);
            if self.ok && data[..n] != self.reference[p..p + n] {
                self.ok = false;
            }
            data = &data[n..];
            self.offset += n as u64;
        }
    }
}

// ---------------------------------------------------------------------------
// Temporary files and the CLI
// ---------------------------------------------------------------------------

/// A file in the temp directory, removed on drop.
pub struct TempFile {
    pub path: PathBuf,
}

impl TempFile {
    pub fn new(content: &str, ext: &str) -> TempFile {
        let path = unique_temp_path(ext);
        fs::write(&path, content).expect("write temp file");
        TempFile { path }
    }

    pub fn path_str(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Result of running the binary to completion.
pub struct CliOutput {
    /// `None` when the process had to be killed after the timeout.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn code(&self) -> Option<i32> {
        self.status.and_then(|s| s.code())
    }

    pub fn combined(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

/// Runs the binary with `args`, killing it if it runs longer than `timeout`.
pub fn run_cli(args: &[&str], timeout: Duration) -> CliOutput {
    let out_path = unique_temp_path("stdout");
    let err_path = unique_temp_path("stderr");
    let out = File::create(&out_path).expect("create stdout file");
    let err = File::create(&err_path).expect("create stderr file");
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(out))
        .stderr(Stdio::from(err));
    if std::env::var_os("CREDENTIALFLOW_LOG").is_none() {
        cmd.env("CREDENTIALFLOW_LOG", "warn");
    }
    let mut child = cmd.spawn().expect("spawn credentialflow");
    let status = wait_child(&mut child, timeout);
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let stdout = fs::read_to_string(&out_path).unwrap_or_default();
    let stderr = fs::read_to_string(&err_path).unwrap_or_default();
    let _ = fs::remove_file(&out_path);
    let _ = fs::remove_file(&err_path);
    CliOutput {
        status,
        stdout,
        stderr,
    }
}

fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(Duration::from_millis(10));
    }
}

// ---------------------------------------------------------------------------
// Gateway process
// ---------------------------------------------------------------------------

/// A running `credentialflow run -c FILE` process.
pub struct Gateway {
    child: Child,
    config: TempFile,
    output_path: PathBuf,
    exited: Option<ExitStatus>,
    /// Ports of all `[[listeners]]`, in config order.
    pub ports: Vec<u16>,
}

/// Extracts the ports of the `address` keys inside `[[listeners]]` tables.
pub fn listener_ports(config_toml: &str) -> Vec<u16> {
    let mut section = String::new();
    let mut ports = Vec::new();
    for line in config_toml.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            section = t.to_string();
            continue;
        }
        if section == "[[listeners]]" && t.starts_with("address") {
            let value = t.split('=').nth(1).unwrap_or("").trim().trim_matches('"');
            if let Some(port) = value.rsplit(':').next().and_then(|p| p.parse().ok()) {
                ports.push(port);
            }
        }
    }
    ports
}

impl Gateway {
    /// Starts the gateway and waits (up to 10 s) until every listener port
    /// accepts connections. Panics with the gateway's output otherwise.
    pub fn start(config_toml: &str) -> Gateway {
        Gateway::start_with_log(config_toml, "warn")
    }

    /// Like [`Gateway::start`], logging at `level` (unless `CREDENTIALFLOW_LOG` is set).
    pub fn start_with_log(config_toml: &str, level: &str) -> Gateway {
        let ports = listener_ports(config_toml);
        assert!(!ports.is_empty(), "config has no [[listeners]] address");
        let config = TempFile::new(config_toml, "toml");
        let output_path = unique_temp_path("log");
        let log = File::create(&output_path).expect("create gateway log file");
        let log2 = log.try_clone().expect("clone log handle");
        let mut cmd = Command::new(bin());
        cmd.arg("run")
            .arg("-c")
            .arg(&config.path)
            .stdin(Stdio::null())
            .stdout(Stdio::from(log2))
            .stderr(Stdio::from(log));
        if std::env::var_os("CREDENTIALFLOW_LOG").is_none() {
            cmd.env("CREDENTIALFLOW_LOG", level);
        }
        let child = cmd.spawn().expect("spawn credentialflow");
        let mut gw = Gateway {
            child,
            config,
            output_path,
            exited: None,
            ports,
        };
        gw.wait_ready();
        gw
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        for port in self.ports.clone() {
            loop {
                if let Ok(Some(status)) = self.child.try_wait() {
                    self.exited = Some(status);
                    panic!(
                        "gateway exited during startup with {status}; output:\n{}",
                        self.output()
                    );
                }
                if TcpStream::connect_timeout(&local(port), Duration::from_millis(200)).is_ok() {
                    break;
                }
                if Instant::now() >= deadline {
                    panic!(
                        "gateway did not listen on 127.0.0.1:{port} within 10 s; output:\n{}",
                        self.output()
                    );
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// The first listener's port.
    pub fn port(&self) -> u16 {
        self.ports[0]
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn config_path(&self) -> &PathBuf {
        &self.config.path
    }

    /// Everything the gateway wrote to stdout and stderr so far.
    pub fn output(&self) -> String {
        fs::read_to_string(&self.output_path).unwrap_or_default()
    }

    /// Sends a signal ("TERM", "INT", ...) with the `kill` utility.
    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = wait_child(&mut self.child, timeout);
        }
        self.exited
    }

    /// Connects a [`Client`] to the first listener.
    pub fn client(&self) -> Client {
        Client::connect(self.port())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if self.exited.is_none() {
            if let Ok(None) = self.child.try_wait() {
                let _ = self.child.kill();
            }
            let _ = self.child.wait();
        }
        if thread::panicking() {
            eprintln!(
                "---- credentialflow output (pid {}) ----\n{}\n---- end ----",
                self.child.id(),
                self.output()
            );
        }
        let _ = fs::remove_file(&self.output_path);
    }
}

/// Builds the common test configuration: one listener, one upstream named
/// "app", one api named "demo" and the given routes (a catch-all "/" route
/// when none are given).
#[derive(Clone)]
pub struct ConfigBuilder {
    pub listen: u16,
    pub extra_listeners: Vec<u16>,
    pub targets: Vec<u16>,
    pub workers: u32,
    pub drain_timeout: String,
    pub limits: Vec<String>,
    pub upstream: Vec<String>,
    pub routes: Vec<String>,
}

impl ConfigBuilder {
    pub fn new(listen: u16, targets: &[u16]) -> ConfigBuilder {
        ConfigBuilder {
            listen,
            extra_listeners: Vec::new(),
            targets: targets.to_vec(),
            workers: 1,
            drain_timeout: "5s".to_string(),
            limits: Vec::new(),
            upstream: Vec::new(),
            routes: Vec::new(),
        }
    }

    /// Adds a line to `[limits]`, e.g. `head_timeout = "1s"`.
    pub fn limit(mut self, line: &str) -> Self {
        self.limits.push(line.to_string());
        self
    }

    /// Adds a line to the `[[upstreams]]` table, e.g. `max_fails = 1`.
    pub fn upstream_opt(mut self, line: &str) -> Self {
        self.upstream.push(line.to_string());
        self
    }

    /// Adds a route to upstream "app"; `extra` holds further key lines.
    pub fn route(mut self, path: &str, extra: &str) -> Self {
        self.routes.push(format!(
            "[[apis.routes]]\npath = \"{path}\"\nupstream = \"app\"\n{extra}\n"
        ));
        self
    }

    pub fn workers(mut self, n: u32) -> Self {
        self.workers = n;
        self
    }

    pub fn drain_timeout(mut self, d: &str) -> Self {
        self.drain_timeout = d.to_string();
        self
    }

    pub fn extra_listener(mut self, port: u16) -> Self {
        self.extra_listeners.push(port);
        self
    }

    pub fn build(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "[gateway]\nworkers = {}\npin = false\ndrain_timeout = \"{}\"\n\n",
            self.workers, self.drain_timeout
        ));
        s.push_str("[logging]\nlevel = \"warn\"\nformat = \"human\"\n\n");
        s.push_str("[limits]\n");
        for l in &self.limits {
            s.push_str(l);
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&format!(
            "[[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:{}\"\n\n",
            self.listen
        ));
        for (i, p) in self.extra_listeners.iter().enumerate() {
            s.push_str(&format!(
                "[[listeners]]\nname = \"extra{i}\"\naddress = \"127.0.0.1:{p}\"\n\n"
            ));
        }
        let targets: Vec<String> = self
            .targets
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        s.push_str(&format!(
            "[[upstreams]]\nname = \"app\"\ntargets = [{}]\n",
            targets.join(", ")
        ));
        for l in &self.upstream {
            s.push_str(l);
            s.push('\n');
        }
        s.push_str("\n[[apis]]\nname = \"demo\"\n\n");
        if self.routes.is_empty() {
            s.push_str("[[apis.routes]]\npath = \"/\"\nupstream = \"app\"\n");
        } else {
            for r in &self.routes {
                s.push_str(r);
                s.push('\n');
            }
        }
        s
    }

    pub fn start(&self) -> Gateway {
        Gateway::start(&self.build())
    }
}

// ---------------------------------------------------------------------------
// Raw HTTP client
// ---------------------------------------------------------------------------

/// A parsed response.
#[derive(Debug, Clone)]
pub struct Response {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// The body arrived with chunked transfer coding.
    pub chunked: bool,
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn find_headers<'a>(headers: &'a [(String, String)], name: &str) -> Vec<&'a str> {
    headers
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
        .collect()
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// A parsed response head (status line and header fields).
#[derive(Debug, Clone)]
pub struct ResponseHead {
    pub version: String,
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
}

impl ResponseHead {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn is_chunked(&self) -> bool {
        self.header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false)
    }

    pub fn content_length(&self) -> Option<u64> {
        self.header("content-length")
            .and_then(|v| v.trim().parse().ok())
    }
}

/// How a connection ended when waiting for the peer to close it.
#[derive(Debug)]
pub struct CloseOutcome {
    /// Bytes received before the close (or before the timeout).
    pub data: Vec<u8>,
    /// The peer closed (EOF) or reset the connection.
    pub closed: bool,
    /// Time spent waiting.
    pub elapsed: Duration,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

fn find_bytes(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A raw HTTP/1.1 client connection.
/// A socket with a read-ahead buffer: how both the test client and the test upstream read
/// lines, exact-length bodies and chunked bodies.
trait BufferedSocket {
    fn buffer(&mut self) -> &mut Vec<u8>;

    /// Reads more bytes from the socket into `tmp`; 0 at end of stream.
    fn read_some(&mut self, tmp: &mut [u8]) -> io::Result<usize>;

    /// Reads more bytes onto the buffer; 0 at end of stream.
    fn fill(&mut self) -> io::Result<usize> {
        let mut tmp = vec![0u8; 64 * 1024];
        // A signal meant for another test's child process may interrupt the read: try again.
        let n = loop {
            match self.read_some(&mut tmp) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        self.buffer().extend_from_slice(&tmp[..n]);
        Ok(n)
    }

    /// Reads one CRLF-terminated line (without the CRLF).
    fn read_line(&mut self) -> io::Result<Vec<u8>> {
        loop {
            let buf = self.buffer();
            if let Some(i) = find_bytes(buf, b"\r\n") {
                let line = buf[..i].to_vec();
                buf.drain(..i + 2);
                return Ok(line);
            }
            if buf.len() > 64 * 1024 {
                return Err(invalid("line longer than 64 KiB"));
            }
            if self.fill()? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// Passes exactly `n` bytes to `sink`.
    fn take_exact(&mut self, mut n: u64, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        let buf = self.buffer();
        let k = (n.min(buf.len() as u64)) as usize;
        if k > 0 {
            sink(&buf[..k]);
            buf.drain(..k);
            n -= k as u64;
        }
        let mut tmp = vec![0u8; 64 * 1024];
        while n > 0 {
            let want = (n.min(tmp.len() as u64)) as usize;
            let r = self.read_some(&mut tmp[..want])?;
            if r == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("connection closed with {n} body bytes missing"),
                ));
            }
            sink(&tmp[..r]);
            n -= r as u64;
        }
        Ok(())
    }

    /// Passes the data of a chunked body to `sink`, through the trailer section.
    fn read_chunked(&mut self, sink: &mut dyn FnMut(&[u8])) -> io::Result<()> {
        loop {
            let line = String::from_utf8_lossy(&self.read_line()?).into_owned();
            let size_str = line.split(';').next().unwrap_or("").trim();
            let size = u64::from_str_radix(size_str, 16)
                .map_err(|_| invalid(format!("bad chunk size line {line:?}")))?;
            if size == 0 {
                // Trailer section up to the empty line.
                loop {
                    if self.read_line()?.is_empty() {
                        return Ok(());
                    }
                }
            }
            self.take_exact(size, sink)?;
            if !self.read_line()?.is_empty() {
                return Err(invalid("missing CRLF after chunk data"));
            }
        }
    }
}

impl BufferedSocket for Client {
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn read_some(&mut self, tmp: &mut [u8]) -> io::Result<usize> {
        self.raw_read(tmp)
    }
}

impl BufferedSocket for UpConn {
    fn buffer(&mut self) -> &mut Vec<u8> {
        &mut self.buf
    }

    fn read_some(&mut self, tmp: &mut [u8]) -> io::Result<usize> {
        self.read_raw(tmp)
    }
}

pub struct Client {
    pub stream: TcpStream,
    buf: Vec<u8>,
    /// The TLS session when the client speaks TLS over `stream`.
    pub tls: Option<Box<rustls::ClientConnection>>,
}

impl Client {
    /// Connects over TLS (SNI `server_name`) and completes the handshake.
    pub fn try_connect_tls(
        port: u16,
        config: Arc<rustls::ClientConfig>,
        server_name: &str,
    ) -> io::Result<Client> {
        let mut client = Client::try_connect(port)?;
        let name = rustls::pki_types::ServerName::try_from(server_name.to_string())
            .map_err(|e| invalid(e.to_string()))?;
        let mut tls = rustls::ClientConnection::new(config, name).map_err(io::Error::other)?;
        while tls.is_handshaking() {
            tls.complete_io(&mut client.stream)?;
        }
        client.tls = Some(Box::new(tls));
        Ok(client)
    }

    /// The TLS session (panics on a plain client).
    pub fn session(&self) -> &rustls::ClientConnection {
        self.tls.as_deref().expect("a TLS client")
    }

    /// Reads from the connection (decrypting on a TLS client).
    fn raw_read(&mut self, tmp: &mut [u8]) -> io::Result<usize> {
        match &mut self.tls {
            None => self.stream.read(tmp),
            Some(tls) => rustls::Stream::new(tls.as_mut(), &mut self.stream).read(tmp),
        }
    }

    pub fn try_connect(port: u16) -> io::Result<Client> {
        let stream = TcpStream::connect_timeout(&local(port), Duration::from_secs(5))?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            stream,
            buf: Vec::new(),
            tls: None,
        })
    }

    pub fn connect(port: u16) -> Client {
        Client::try_connect(port).unwrap_or_else(|e| panic!("connect to 127.0.0.1:{port}: {e}"))
    }

    pub fn set_read_timeout(&self, d: Duration) {
        self.stream.set_read_timeout(Some(d)).expect("set timeout");
    }

    pub fn try_send(&mut self, data: &[u8]) -> io::Result<()> {
        match &mut self.tls {
            None => {
                self.stream.write_all(data)?;
                self.stream.flush()
            }
            Some(tls) => {
                let mut stream = rustls::Stream::new(tls.as_mut(), &mut self.stream);
                stream.write_all(data)?;
                stream.flush()
            }
        }
    }

    pub fn send(&mut self, data: &[u8]) {
        self.try_send(data).expect("write to gateway");
    }

    /// Sends `GET path` with `Host: localhost` and reads the response.
    pub fn get(&mut self, path: &str) -> Response {
        self.send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes());
        self.read_response()
    }

    /// Like [`Client::get`] but returns I/O errors instead of panicking.
    pub fn try_get(&mut self, path: &str) -> io::Result<Response> {
        self.try_send(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").as_bytes())?;
        self.try_read_response()
    }

    /// Sends raw bytes and reads one response.
    pub fn request(&mut self, raw: &[u8]) -> Response {
        self.send(raw);
        self.read_response()
    }

    /// Reads a response head (status line + headers).
    pub fn read_head(&mut self) -> io::Result<ResponseHead> {
        let end = loop {
            if let Some(i) = find_bytes(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 1024 * 1024 {
                return Err(invalid("response head longer than 1 MiB"));
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed before a complete response head; got {:?}",
                        String::from_utf8_lossy(&self.buf)
                    ),
                ));
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let status_line = lines.next().unwrap_or("");
        let mut parts = status_line.splitn(3, ' ');
        let version = parts.next().unwrap_or("").to_string();
        if !version.starts_with("HTTP/1.") {
            return Err(invalid(format!("bad status line {status_line:?}")));
        }
        let status: u16 = parts
            .next()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| invalid(format!("bad status line {status_line:?}")))?;
        let reason = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        for line in lines {
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| invalid(format!("bad header line {line:?}")))?;
            headers.push((name.to_string(), value.trim().to_string()));
        }
        Ok(ResponseHead {
            version,
            status,
            reason,
            headers,
        })
    }

    /// Reads the body belonging to `head` into `sink`. `no_body` is set for
    /// responses to HEAD requests. Returns whether the body was chunked.
    pub fn read_body_with(
        &mut self,
        head: &ResponseHead,
        no_body: bool,
        sink: &mut dyn FnMut(&[u8]),
    ) -> io::Result<bool> {
        if no_body || head.status < 200 || head.status == 204 || head.status == 304 {
            return Ok(false);
        }
        if head.is_chunked() {
            self.read_chunked(sink)?;
            return Ok(true);
        }
        if let Some(len) = head.content_length() {
            self.take_exact(len, sink)?;
            return Ok(false);
        }
        // Close-delimited.
        if !self.buf.is_empty() {
            sink(&self.buf);
            self.buf.clear();
        }
        let mut tmp = vec![0u8; 64 * 1024];
        loop {
            let r = self.raw_read(&mut tmp)?;
            if r == 0 {
                return Ok(false);
            }
            sink(&tmp[..r]);
        }
    }

    fn read_response_inner(&mut self, no_body: bool) -> io::Result<Response> {
        let head = self.read_head()?;
        let mut body = Vec::new();
        let chunked = self.read_body_with(&head, no_body, &mut |d| body.extend_from_slice(d))?;
        Ok(Response {
            version: head.version,
            status: head.status,
            reason: head.reason,
            headers: head.headers,
            body,
            chunked,
        })
    }

    /// Reads one response (interim 1xx responses are returned as such).
    pub fn try_read_response(&mut self) -> io::Result<Response> {
        self.read_response_inner(false)
    }

    pub fn read_response(&mut self) -> Response {
        self.try_read_response()
            .unwrap_or_else(|e| panic!("reading response from gateway: {e}"))
    }

    /// Reads a response to a HEAD request (never has a body).
    pub fn read_head_response(&mut self) -> Response {
        self.read_response_inner(true)
            .unwrap_or_else(|e| panic!("reading HEAD response from gateway: {e}"))
    }

    /// Waits up to `timeout` for the peer to close the connection.
    pub fn read_to_eof_or_timeout(&mut self, timeout: Duration) -> CloseOutcome {
        let start = Instant::now();
        let mut data = std::mem::take(&mut self.buf);
        let mut tmp = vec![0u8; 16 * 1024];
        let closed = loop {
            let remaining = match timeout.checked_sub(start.elapsed()) {
                Some(r) if !r.is_zero() => r,
                _ => break false,
            };
            self.stream
                .set_read_timeout(Some(remaining))
                .expect("set timeout");
            match self.raw_read(&mut tmp) {
                Ok(0) => break true,
                Ok(n) => data.extend_from_slice(&tmp[..n]),
                Err(e) if is_timeout(&e) => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break true,
            }
        };
        let _ = self.stream.set_read_timeout(Some(IO_TIMEOUT));
        CloseOutcome {
            data,
            closed,
            elapsed: start.elapsed(),
        }
    }

    /// Asserts that nothing more arrives within `wait` (and the connection
    /// stays open).
    pub fn assert_no_pending_data(&mut self, wait: Duration) {
        assert!(
            self.buf.is_empty(),
            "unexpected extra bytes after response: {:?}",
            String::from_utf8_lossy(&self.buf)
        );
        self.set_read_timeout(wait);
        let mut tmp = [0u8; 1024];
        match self.raw_read(&mut tmp) {
            Ok(0) => panic!("connection closed unexpectedly"),
            Ok(n) => panic!(
                "unexpected extra bytes after response: {:?}",
                String::from_utf8_lossy(&tmp[..n])
            ),
            Err(e) if is_timeout(&e) => {}
            Err(e) => panic!("connection error: {e}"),
        }
        self.set_read_timeout(IO_TIMEOUT);
    }
}

/// One `GET path` on a fresh connection.
pub fn get(port: u16, path: &str) -> Response {
    Client::connect(port).get(path)
}

/// Sends raw bytes on a fresh connection and reads one response.
pub fn request(port: u16, raw: &[u8]) -> Response {
    Client::connect(port).request(raw)
}

/// Extracts the integer value of `"status"` from a JSON body.
pub fn json_status(body: &str) -> Option<u16> {
    let i = body.find("\"status\"")?;
    let rest = body[i + "\"status\"".len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start();
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

/// Asserts a gateway-generated problem+json error response.
pub fn assert_problem(resp: &Response, status: u16) {
    assert_eq!(
        resp.status,
        status,
        "expected status {status}, got {} with body {:?}",
        resp.status,
        resp.body_str()
    );
    let ct = resp.header("content-type").unwrap_or("");
    assert!(
        ct.to_ascii_lowercase()
            .starts_with("application/problem+json"),
        "expected Content-Type application/problem+json, got {ct:?}"
    );
    let body = resp.body_str();
    for key in ["\"type\"", "\"title\"", "\"status\""] {
        assert!(body.contains(key), "problem body lacks {key}: {body}");
    }
    assert_eq!(
        json_status(&body),
        Some(status),
        "problem body status mismatch: {body}"
    );
}

// ---------------------------------------------------------------------------
// Test upstream
// ---------------------------------------------------------------------------

/// Bodies are recorded up to this many bytes.
pub const BODY_RECORD_LIMIT: usize = 1024 * 1024;
const MAX_RECORDS: usize = 10_000;

/// A request as received by the test upstream.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    pub method: String,
    pub target: String,
    pub version: String,
    pub headers: Vec<(String, String)>,
    /// First [`BODY_RECORD_LIMIT`] bytes of the de-chunked body.
    pub body: Vec<u8>,
    pub body_len: u64,
    /// The body arrived with chunked transfer coding.
    pub chunked: bool,
}

impl RecordedRequest {
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    pub fn headers_all(&self, name: &str) -> Vec<&str> {
        find_headers(&self.headers, name)
    }

    pub fn body_str(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

pub type Handler = Arc<dyn Fn(&RecordedRequest) -> Vec<u8> + Send + Sync>;

/// How the test upstream answers each complete request.
#[derive(Clone)]
pub enum Mode {
    /// 200 text/plain describing the request (headers `X-Echo-Method`,
    /// `X-Echo-Target`, `X-Upstream-Port`); no body for HEAD.
    Echo,
    /// Like `Echo`, after sleeping.
    Delay(Duration),
    /// Writes these bytes and keeps the connection open.
    Raw(Vec<u8>),
    /// Writes these bytes and closes the connection.
    RawThenClose(Vec<u8>),
    /// Writes whatever the function returns and keeps the connection open.
    Func(Handler),
    /// Reads the request and never answers.
    NeverAnswer,
    /// Waits `initial_delay` after the head, then reads and discards the body
    /// (counting it in `body_bytes`) and answers `received=N`.
    Discard { initial_delay: Duration },
    /// Answers 200 with `len` pattern bytes generated on the fly.
    Download { len: u64, chunked: bool },
    /// Like `Echo` but with `Connection: close`, then closes.
    CloseAfterResponse,
}

/// Counters shared between the upstream threads and the test.
#[derive(Default)]
pub struct UpstreamStats {
    pub connections: AtomicUsize,
    pub heads: AtomicUsize,
    pub requests: AtomicUsize,
    pub body_bytes: AtomicU64,
    pub recorded: Mutex<Vec<RecordedRequest>>,
}

pub struct TestUpstream {
    pub port: u16,
    pub stats: Arc<UpstreamStats>,
    stop: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
    accept_thread: Option<JoinHandle<()>>,
}

impl TestUpstream {
    pub fn start(mode: Mode) -> TestUpstream {
        TestUpstream::start_on(0, mode)
    }

    /// Listens on 127.0.0.1:`port` (0 = any free port).
    pub fn start_on(port: u16, mode: Mode) -> TestUpstream {
        let listener = TcpListener::bind(("127.0.0.1", port))
            .unwrap_or_else(|e| panic!("test upstream bind 127.0.0.1:{port}: {e}"));
        let port = listener.local_addr().expect("local addr").port();
        let stats = Arc::new(UpstreamStats::default());
        let stop = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<TcpStream>>> = Arc::new(Mutex::new(Vec::new()));
        let (st, sp, cs) = (stats.clone(), stop.clone(), conns.clone());
        let accept_thread = thread::spawn(move || {
            for incoming in listener.incoming() {
                if sp.load(Ordering::SeqCst) {
                    break;
                }
                match incoming {
                    Ok(stream) => {
                        st.connections.fetch_add(1, Ordering::SeqCst);
                        if let Ok(clone) = stream.try_clone() {
                            cs.lock().unwrap().push(clone);
                        }
                        let (st, sp, mode) = (st.clone(), sp.clone(), mode.clone());
                        thread::spawn(move || serve_connection(stream, port, mode, st, sp));
                    }
                    Err(_) => thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TestUpstream {
            port,
            stats,
            stop,
            conns,
            accept_thread: Some(accept_thread),
        }
    }

    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Accepted connections.
    pub fn connections(&self) -> usize {
        self.stats.connections.load(Ordering::SeqCst)
    }

    /// Request heads fully received.
    pub fn heads(&self) -> usize {
        self.stats.heads.load(Ordering::SeqCst)
    }

    /// Requests received completely (head and body).
    pub fn requests(&self) -> usize {
        self.stats.requests.load(Ordering::SeqCst)
    }

    pub fn body_bytes(&self) -> u64 {
        self.stats.body_bytes.load(Ordering::SeqCst)
    }

    pub fn recorded(&self) -> Vec<RecordedRequest> {
        self.stats.recorded.lock().unwrap().clone()
    }

    pub fn last_request(&self) -> RecordedRequest {
        self.recorded()
            .pop()
            .expect("the upstream received no complete request")
    }

    /// Polls until `requests() >= n` or the timeout passes.
    pub fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.requests() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.requests() >= n
    }

    /// Polls until `heads() >= n` or the timeout passes.
    pub fn wait_heads(&self, n: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.heads() >= n {
                return true;
            }
            thread::sleep(Duration::from_millis(10));
        }
        self.heads() >= n
    }

    /// Stops listening and closes every connection.
    pub fn shutdown(&mut self) {
        if self.stop.swap(true, Ordering::SeqCst) {
            return;
        }
        let _ = TcpStream::connect_timeout(&local(self.port), Duration::from_secs(1));
        if let Some(h) = self.accept_thread.take() {
            let _ = h.join();
        }
        for c in self.conns.lock().unwrap().drain(..) {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for TestUpstream {
    fn drop(&mut self) {
        self.shutdown();
    }
}

struct UpConn {
    stream: TcpStream,
    buf: Vec<u8>,
    stop: Arc<AtomicBool>,
}

impl UpConn {
    /// Reads into `tmp`, retrying on the short poll timeout until stopped.
    fn read_raw(&mut self, tmp: &mut [u8]) -> io::Result<usize> {
        loop {
            match self.stream.read(tmp) {
                Ok(n) => return Ok(n),
                Err(e) if is_timeout(&e) => {
                    if self.stop.load(Ordering::SeqCst) {
                        return Err(e);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Reads a request head; `Ok(None)` on a clean close between requests.
    fn read_head(&mut self) -> io::Result<Option<RecordedRequest>> {
        let end = loop {
            if let Some(i) = find_bytes(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 1024 * 1024 {
                return Err(invalid("request head too long"));
            }
            if self.fill()? == 0 {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        };
        let head: Vec<u8> = self.buf.drain(..end + 4).collect();
        let text = String::from_utf8_lossy(&head[..end]).into_owned();
        let mut lines = text.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let version = parts.next().unwrap_or("").to_string();
        let mut headers = Vec::new();
        for line in lines {
            if let Some((n, v)) = line.split_once(':') {
                headers.push((n.to_string(), v.trim().to_string()));
            }
        }
        Ok(Some(RecordedRequest {
            method,
            target,
            version,
            headers,
            body: Vec::new(),
            body_len: 0,
            chunked: false,
        }))
    }
}

fn echo_response(req: &RecordedRequest, port: u16, close: bool) -> Vec<u8> {
    let mut body = format!(
        "method={}\ntarget={}\nbody_len={}\n",
        req.method, req.target, req.body_len
    );
    for (n, v) in &req.headers {
        body.push_str(&format!("header {}: {}\n", n.to_ascii_lowercase(), v));
    }
    let mut out = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nX-Upstream-Port: {port}\r\nX-Echo-Method: {}\r\nX-Echo-Target: {}\r\n",
        body.len(),
        req.method,
        req.target
    );
    if close {
        out.push_str("Connection: close\r\n");
    }
    out.push_str("\r\n");
    let mut out = out.into_bytes();
    if req.method != "HEAD" {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

fn write_download(stream: &mut TcpStream, len: u64, chunked: bool) -> io::Result<()> {
    let head = if chunked {
        "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n".to_string()
    } else {
        format!("HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\n\r\n")
    };
    stream.write_all(head.as_bytes())?;
    let block = pattern_block(261);
    let framed_full = {
        let mut v = format!("{:x}\r\n", block.len()).into_bytes();
        v.extend_from_slice(&block);
        v.extend_from_slice(b"\r\n");
        v
    };
    let mut sent = 0u64;
    while sent < len {
        let n = (len - sent).min(block.len() as u64) as usize;
        if chunked {
            if n == block.len() {
                stream.write_all(&framed_full)?;
            } else {
                let mut v = format!("{n:x}\r\n").into_bytes();
                v.extend_from_slice(&block[..n]);
                v.extend_from_slice(b"\r\n");
                stream.write_all(&v)?;
            }
        } else {
            stream.write_all(&block[..n])?;
        }
        sent += n as u64;
    }
    if chunked {
        stream.write_all(b"0\r\n\r\n")?;
    }
    stream.flush()
}

fn serve_connection(
    stream: TcpStream,
    port: u16,
    mode: Mode,
    stats: Arc<UpstreamStats>,
    stop: Arc<AtomicBool>,
) {
    // The accept loop keeps a clone of every stream (to close them on
    // shutdown), so dropping this handle alone would not close the socket.
    let closer = stream.try_clone();
    serve_requests(stream, port, mode, stats, stop);
    if let Ok(c) = closer {
        let _ = c.shutdown(Shutdown::Both);
    }
}

fn serve_requests(
    stream: TcpStream,
    port: u16,
    mode: Mode,
    stats: Arc<UpstreamStats>,
    stop: Arc<AtomicBool>,
) {
    let _ = stream.set_read_timeout(Some(Duration::from_millis(200)));
    let _ = stream.set_write_timeout(Some(Duration::from_secs(30)));
    let _ = stream.set_nodelay(true);
    let mut conn = UpConn {
        stream,
        buf: Vec::new(),
        stop,
    };
    loop {
        let mut req = match conn.read_head() {
            Ok(Some(r)) => r,
            _ => return,
        };
        stats.heads.fetch_add(1, Ordering::SeqCst);
        let discard = if let Mode::Discard { initial_delay } = &mode {
            thread::sleep(*initial_delay);
            true
        } else {
            false
        };
        let chunked = req
            .header("transfer-encoding")
            .map(|v| v.to_ascii_lowercase().contains("chunked"))
            .unwrap_or(false);
        let content_length: u64 = req
            .header("content-length")
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = Vec::new();
        let mut body_len = 0u64;
        let result = {
            let mut sink = |d: &[u8]| {
                body_len += d.len() as u64;
                stats.body_bytes.fetch_add(d.len() as u64, Ordering::SeqCst);
                if !discard && body.len() < BODY_RECORD_LIMIT {
                    let room = BODY_RECORD_LIMIT - body.len();
                    body.extend_from_slice(&d[..d.len().min(room)]);
                }
            };
            if chunked {
                conn.read_chunked(&mut sink)
            } else {
                conn.take_exact(content_length, &mut sink)
            }
        };
        if result.is_err() {
            return;
        }
        req.body = body;
        req.body_len = body_len;
        req.chunked = chunked;
        stats.requests.fetch_add(1, Ordering::SeqCst);
        {
            let mut rec = stats.recorded.lock().unwrap();
            if rec.len() < MAX_RECORDS {
                rec.push(req.clone());
            }
        }
        let client_close = req
            .header("connection")
            .map(|v| v.to_ascii_lowercase().contains("close"))
            .unwrap_or(false);
        let s = &mut conn.stream;
        let written = match &mode {
            Mode::Echo => s.write_all(&echo_response(&req, port, false)),
            Mode::Delay(d) => {
                thread::sleep(*d);
                s.write_all(&echo_response(&req, port, false))
            }
            Mode::Raw(bytes) => s.write_all(bytes),
            Mode::RawThenClose(bytes) => {
                let _ = s.write_all(bytes);
                let _ = s.flush();
                return;
            }
            Mode::Func(f) => s.write_all(&f(&req)),
            Mode::NeverAnswer => {
                let mut tmp = vec![0u8; 16 * 1024];
                loop {
                    match conn.read_raw(&mut tmp) {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            }
            Mode::Discard { .. } => {
                let text = format!("received={body_len}");
                s.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{text}",
                        text.len()
                    )
                    .as_bytes(),
                )
            }
            Mode::Download { len, chunked } => write_download(s, *len, *chunked),
            Mode::CloseAfterResponse => {
                let _ = s.write_all(&echo_response(&req, port, true));
                let _ = s.flush();
                return;
            }
        };
        if written.is_err() || client_close {
            return;
        }
    }
}

// ---------------------------------------------------------------------------
// Credentials made with the CLI, and refusals
// ---------------------------------------------------------------------------

pub const CLI_TIMEOUT: Duration = Duration::from_secs(30);
pub const PEPPER: &str = "integration-test-pepper-0123456789";

pub fn file_name(f: &TempFile) -> String {
    f.path
        .file_name()
        .expect("file name")
        .to_string_lossy()
        .into_owned()
}

/// A pepper file next to the configs the harness writes (both live in the temp directory), so
/// the config can name it by a relative path.
pub fn pepper_file() -> TempFile {
    TempFile::new(&format!("{PEPPER}\n"), "pepper")
}

/// Runs the binary with `args`; it must succeed. Returns its standard output.
pub fn cli_ok(args: &[&str]) -> String {
    let out = run_cli(args, CLI_TIMEOUT);
    assert_eq!(
        out.code(),
        Some(0),
        "credentialflow {args:?} failed: {}",
        out.combined()
    );
    out.stdout
}

/// Parses JSON text (surrounding whitespace ignored), panicking with the text otherwise.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {text:?}"))
}

/// An API key issued by `key new --json` against a config using `pepper`.
pub struct IssuedKey {
    pub key: String,
    pub id: String,
    pub hash: String,
}

pub fn issue_key(pepper: &TempFile, consumer: &str) -> IssuedKey {
    let cfg = TempFile::new(
        &format!(
            "{}\n[auth]\nkey_pepper_file = \"{}\"\n",
            ConfigBuilder::new(free_port(), &[free_port()]).build(),
            file_name(pepper)
        ),
        "toml",
    );
    let out = cli_ok(&[
        "key",
        "new",
        "-c",
        &cfg.path_str(),
        "--consumer",
        consumer,
        "--json",
    ]);
    let v = json(&out);
    let key = v["key"].as_str().expect("key").to_string();
    let id = v["credential"]["id"].as_str().expect("id").to_string();
    let hash = v["credential"]["hash"].as_str().expect("hash").to_string();
    assert_eq!(v["credential"]["kind"], "api_key");
    assert!(key.starts_with(&format!("cf_{id}_")), "{key} / {id}");
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(
        !hash.contains(&key[3 + id.len() + 1..]),
        "hash holds the secret"
    );
    IssuedKey { key, id, hash }
}

/// Runs the gateway binary with `stdin` as its standard input and without the pepper variable.
pub fn run_with_stdin(args: &[&str], stdin: &str) -> CliOutput {
    let mut child = Command::new(bin())
        .args(args)
        .env_remove("CREDENTIALFLOW_KEY_PEPPER")
        .env("CREDENTIALFLOW_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn credentialflow");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin.as_bytes())
        .expect("write stdin");
    let out = child.wait_with_output().expect("wait credentialflow");
    CliOutput {
        status: Some(out.status),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// An ES256 signing key and its JWKS, made by `jwk new`.
pub struct Jwk {
    pub private: TempFile,
    pub jwks: TempFile,
    pub kid: String,
}

pub fn jwk_new(kid: &str) -> Jwk {
    let private = TempFile::new("", "pem");
    let jwks = TempFile::new("", "jwks");
    cli_ok(&[
        "jwk",
        "new",
        "--alg",
        "ES256",
        "--kid",
        kid,
        "--out-private",
        &private.path_str(),
        "--out-jwks",
        &jwks.path_str(),
    ]);
    let doc = json(&std::fs::read_to_string(&jwks.path).expect("read jwks"));
    assert_eq!(doc["keys"][0]["kid"], kid);
    assert!(
        doc["keys"][0].get("d").is_none(),
        "the JWKS holds a private key"
    );
    Jwk {
        private,
        jwks,
        kid: kid.to_string(),
    }
}

impl Jwk {
    /// `token mint` with these claims (iat/exp added unless present).
    pub fn mint(&self, claims: &serde_json::Value) -> String {
        self.mint_kid(&self.kid.clone(), claims)
    }

    pub fn mint_kid(&self, kid: &str, claims: &serde_json::Value) -> String {
        let claims = claims.to_string();
        cli_ok(&[
            "token",
            "mint",
            "--key",
            &self.private.path_str(),
            "--alg",
            "ES256",
            "--kid",
            kid,
            "--claims",
            &claims,
            "--ttl",
            "1h",
        ])
        .trim()
        .to_string()
    }
}

/// `GET path` on a fresh connection with extra header lines.
pub fn get_with(port: u16, path: &str, headers: &[(&str, &str)]) -> Response {
    call_with(port, "GET", path, headers)
}

/// `method path` (without a body) on a fresh connection with extra header lines.
pub fn call_with(port: u16, method: &str, path: &str, headers: &[(&str, &str)]) -> Response {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\n");
    for (name, value) in headers {
        raw.push_str(&format!("{name}: {value}\r\n"));
    }
    raw.push_str("\r\n");
    request(port, raw.as_bytes())
}

pub fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A refusal from the authentication phase: status, problem+json with the reason code.
pub fn assert_refused(resp: &Response, status: u16, reason: &str) {
    assert_problem(resp, status);
    let body = resp.body_str();
    assert!(
        body.contains(&format!("\"reason\":\"{reason}\"")),
        "expected reason {reason}, got {body}"
    );
}

/// Asserts a 200 that reached the upstream and returns what the upstream saw.
pub fn assert_passed(resp: &Response, up: &TestUpstream, before: usize) -> RecordedRequest {
    assert_eq!(
        resp.status,
        200,
        "expected 200, got {} {}",
        resp.status,
        resp.body_str()
    );
    assert!(
        up.wait_requests(before + 1, Duration::from_secs(5)),
        "the upstream did not receive the request"
    );
    up.last_request()
}

pub fn check(config_text: &str) -> (TempFile, CliOutput) {
    let file = TempFile::new(config_text, "toml");
    let out = run_with_stdin(&["check", "-c", &file.path_str()], "");
    (file, out)
}

pub fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in config"))
        + 1
}

/// Runs `check` on `config_text`: it must fail and name the line holding `needle`.
pub fn assert_refused_at(config_text: &str, needle: &str) -> CliOutput {
    let (file, out) = check(config_text);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    let at = format!("{}:{}", file.path_str(), line_of(config_text, needle));
    assert!(out.stderr.contains(&at), "expected {at} in {}", out.stderr);
    out
}
