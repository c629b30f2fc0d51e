//! Running a load test: prepares the shared plan (requests, TLS, address), checks that the
//! target answers, starts the worker threads on a common time line, measures this process's
//! CPU time over the measured window, shows progress, and merges the threads' results.

use crate::cli::Settings;
use crate::error::Error;
use crate::report::{Report, TlsReport};
use crate::request::{load_header_file, RequestSet};
use crate::response::ResponseParser;
use crate::stats::{ConnectionShare, LatencySummary, Stats};
use crate::target::Scheme;
use crate::tls::{self, Negotiated};
use crate::transport::Endpoint;
use crate::worker::{run_worker, Plan, Schedule, WorkerSpec};
use std::io::{Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a run produced.
pub struct Outcome {
    pub report: Report,
    /// All measured latencies (µs).
    pub stats: Stats,
}

/// Builds the plan every worker shares: reads the files, builds the requests and the TLS
/// configuration, resolves the target.
pub fn prepare(settings: &Settings) -> Result<Plan, Error> {
    let rotating = match &settings.header_file {
        Some(path) => load_header_file(path)?,
        None => Vec::new(),
    };
    let body = match &settings.body_file {
        Some(path) => Some(std::fs::read(path).map_err(|err| Error::file("body file", path, err))?),
        None => None,
    };
    let requests = RequestSet::build(
        &settings.method,
        &settings.target,
        &settings.headers,
        &rotating,
        body.as_deref(),
    )?;
    let tls = match (settings.target.scheme, &settings.ca) {
        (Scheme::Https, Some(ca)) => {
            let client = settings
                .client_cert
                .as_ref()
                .map(|(cert, key)| (cert.as_path(), key.as_path()));
            let resumption = tls::resumption(settings.resume, settings.connections);
            let config = tls::client_config(ca, client, resumption)?;
            let name = tls::server_name(settings.sni.as_deref().unwrap_or(&settings.target.host))?;
            Some((config, name))
        }
        _ => None,
    };
    let addr = settings.target.resolve()?;
    Ok(Plan {
        endpoint: Endpoint { addr, tls },
        requests,
        connections: settings.connections,
        pipeline: settings.pipeline,
        rate: settings.rate,
        timeout: settings.timeout,
    })
}

/// Sends one request with blocking I/O before the run, so that an unreachable target, a TLS
/// problem or a server that does not speak HTTP is reported as one error instead of a run
/// full of errors. A slow answer is not an error: the run goes ahead after waiting at most
/// a second (or the request timeout). For https, returns what the handshake negotiated.
pub fn check_target(plan: &Plan) -> Result<Option<Negotiated>, Error> {
    let addr = plan.endpoint.addr;
    let tcp = std::net::TcpStream::connect_timeout(&addr, plan.timeout.min(Duration::from_secs(5)))
        .map_err(|err| Error::Connect {
            addr,
            reason: err.to_string(),
        })?;
    let wait = Some(plan.timeout.min(Duration::from_secs(1)));
    let _ = tcp.set_read_timeout(wait);
    let _ = tcp.set_write_timeout(wait);
    let request = plan.requests.get(0);
    let (outcome, negotiated) = match &plan.endpoint.tls {
        None => (probe(tcp, request, plan.requests.head), None),
        Some((config, name)) => {
            let stream = tls::handshake_blocking(tcp, config, name)
                .map_err(|reason| Error::Handshake { addr, reason })?;
            let negotiated = Negotiated::of(&stream.conn);
            (probe(stream, request, plan.requests.head), Some(negotiated))
        }
    };
    outcome.map_err(|reason| Error::NoResponse { addr, reason })?;
    Ok(negotiated)
}

/// Writes `request` and reads one response; Ok also when no answer came in time.
fn probe<S: Read + Write>(mut stream: S, request: &[u8], head: bool) -> Result<(), String> {
    let slow = |err: &std::io::Error| {
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        )
    };
    match stream.write_all(request).and_then(|()| stream.flush()) {
        Err(err) if slow(&err) => return Ok(()),
        Err(err) => return Err(err.to_string()),
        Ok(()) => {}
    }
    let mut parser = ResponseParser::new(head);
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk) {
            Ok(0) if parser.on_eof().is_some() => return Ok(()),
            Ok(0) => return Err("the connection closed without a response".into()),
            Ok(n) => n,
            Err(err) if slow(&err) => return Ok(()),
            Err(err) => return Err(err.to_string()),
        };
        buf.extend_from_slice(&chunk[..n]);
        match parser.parse(&buf) {
            Ok((_, Some(_))) => return Ok(()),
            Ok((used, None)) => drop(buf.drain(..used)),
            Err(err) => return Err(err.to_string()),
        }
    }
}

/// Runs the load test described by `settings`.
pub fn execute(settings: &Settings) -> Result<Outcome, Error> {
    let plan = Arc::new(prepare(settings)?);
    let negotiated = check_target(&plan)?;
    raise_nofile_limit();

    let start = Instant::now();
    let schedule = Schedule {
        start,
        measure_start: start + settings.warmup,
        end: start + settings.warmup + settings.duration,
    };
    let counters: Vec<Arc<AtomicU64>> = (0..settings.threads)
        .map(|_| Arc::new(AtomicU64::new(0)))
        .collect();
    let mut workers = Vec::with_capacity(settings.threads);
    let mut first = 0;
    for (index, counter) in counters.iter().enumerate() {
        let count = settings.connections / settings.threads
            + usize::from(index < settings.connections % settings.threads);
        let spec = WorkerSpec {
            index,
            cpu: (!settings.cpus.is_empty()).then(|| settings.cpus[index % settings.cpus.len()]),
            connections: first..first + count,
            progress: counter.clone(),
        };
        first += count;
        let plan = plan.clone();
        let worker = std::thread::Builder::new()
            .name(format!("cflow-load-{index}"))
            .spawn(move || run_worker(plan, schedule, spec))
            .map_err(|err| Error::Worker(err.to_string()))?;
        workers.push(worker);
    }

    sleep_until(schedule.measure_start);
    let cpu_before = cpu_seconds();
    let progress = stderr_is_tty();
    let mut next_tick = schedule.measure_start + Duration::from_secs(1);
    let mut previous = 0;
    while progress && next_tick < schedule.end {
        sleep_until(next_tick);
        let done: u64 = counters.iter().map(|c| c.load(Ordering::Relaxed)).sum();
        let elapsed = next_tick.duration_since(schedule.measure_start).as_secs();
        let _ = write!(
            std::io::stderr(),
            "\r\x1b[K{elapsed:>5}s  {done} requests  {} req/s in the last second",
            done - previous
        );
        previous = done;
        next_tick += Duration::from_secs(1);
    }
    sleep_until(schedule.end);
    let cpu_after = cpu_seconds();
    if progress {
        let _ = write!(std::io::stderr(), "\r\x1b[K");
    }

    let mut stats = Stats::new();
    for worker in workers {
        let part = worker
            .join()
            .map_err(|_| Error::Worker("a worker thread panicked".into()))?;
        stats.merge(&part);
    }
    let duration_s = settings.duration.as_secs_f64();
    let report = Report {
        url: settings.target.url.clone(),
        mode: if settings.rate.is_some() {
            "open"
        } else {
            "closed"
        },
        connections: settings.connections,
        threads: settings.threads,
        duration_s,
        requests: stats.requests,
        rps: stats.requests as f64 / duration_s,
        status: stats.status_map(),
        errors: stats.errors,
        bytes_read: stats.bytes_read,
        bytes_written: stats.bytes_written,
        latency_us: LatencySummary::of(&stats.histogram),
        rx_latency_us: (!stats.rx_histogram.is_empty())
            .then(|| LatencySummary::of(&stats.rx_histogram)),
        per_connection: ConnectionShare::of(&stats.per_connection),
        target_rate: settings.rate,
        late_sends: settings.rate.map(|_| stats.late_sends),
        loadgen_cpu_s: ((cpu_after - cpu_before) * 1e6).round() / 1e6,
        tls: negotiated.map(|negotiated| TlsReport {
            negotiated,
            resumption: settings.resume,
            handshakes: stats.tls_handshakes,
            resumed: stats.tls_resumed,
        }),
    };
    Ok(Outcome { report, stats })
}

fn sleep_until(deadline: Instant) {
    let now = Instant::now();
    if deadline > now {
        std::thread::sleep(deadline - now);
    }
}

/// User plus system CPU time of this process so far, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the zeroed struct.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

fn stderr_is_tty() -> bool {
    // SAFETY: isatty only inspects the descriptor.
    unsafe { libc::isatty(libc::STDERR_FILENO) == 1 }
}

/// Raises the soft limit on open files to the hard limit (many connections need many).
fn raise_nofile_limit() {
    // SAFETY: getrlimit/setrlimit with a valid struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}
