//! Worker threads: one per CPU of the process's affinity set (or the configured count), each
//! pinned, each running its own monoio reactor (io_uring, or the epoll driver when io_uring
//! cannot be set up) with its own SO_REUSEPORT listeners. Also the process-level set-up the
//! data plane needs: file-descriptor limit, signal mask, CPU discovery.

pub mod channel;
pub mod deadline;
pub mod deadline_socket;
pub mod drain;

use crate::auth::{AuthLinks, AuthState};
use crate::filter::connections::ConnectionCounts;
use crate::limit::limiter::TableSizes;
use crate::limit::quota_file::{QuotaSink, SavedQuotas};
use crate::limit::CoreLimits;
use crate::observe::access::CoreAccessLog;
use crate::observe::access_writer::AccessSink;
use crate::proxy::{request_id::random_seed, serve_connection, Core};
use crate::snapshot::Snapshot;
use channel::{control_channel, ControlReceiver, ControlSender, Incoming, PeerSender};
use crossbeam_channel::Sender;
use monoio::net::{ListenerOpts, TcpListener};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use std::os::fd::{AsRawFd, RawFd};
use std::rc::Rc;
use std::sync::mpsc;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages from the control side to one core.
#[derive(Debug)]
pub enum ControlMsg {
    /// Stop accepting, finish in-flight requests, close idle connections, then exit.
    Drain,
    /// Serve new requests from this snapshot and authentication state; the core sends its id
    /// on the ack channel once it has.
    Adopt(Arc<Snapshot>, Arc<AuthState>, Sender<usize>),
    /// New credentials or issuer keys: authenticate from this state (verified-credential
    /// caches are emptied); acked like `Adopt`.
    Auth(Arc<AuthState>, Sender<usize>),
    /// Shutting down: give every unused lease back to its owner core, then ack (sent to every
    /// core before `Drain`, so each owner counts the returns before it saves its quotas).
    ReturnLeases(Sender<usize>),
    /// A scrape: send a copy of the core's metrics.
    Metrics(Sender<crate::observe::metrics::MetricsReport>),
    /// An active health check's new verdict on one target of the upstream named `upstream`.
    Health {
        upstream: String,
        target: std::net::SocketAddr,
        up: bool,
    },
}

/// Why the workers could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot start worker thread: {0}")]
    Spawn(std::io::Error),
    #[error("worker {worker}: cannot listen on {address}: {source}")]
    Listen {
        worker: usize,
        address: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error("worker {0} exited during start-up")]
    Lost(usize),
}

/// A running worker thread and its control channel.
pub struct Worker {
    pub thread: JoinHandle<()>,
    pub control: ControlSender,
}

/// The CPUs this process may run on (its affinity set).
pub fn allowed_cpus() -> Vec<usize> {
    // SAFETY: `set` is a plain bitmask struct that sched_getaffinity fills in.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// Pins the calling thread to one CPU.
fn pin_current_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: the set is initialised by CPU_ZERO/CPU_SET before use.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Raises the soft RLIMIT_NOFILE to the hard limit; returns the new soft limit.
pub fn raise_nofile_limit() -> u64 {
    // SAFETY: getrlimit/setrlimit with a valid rlimit struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 0;
        }
        if limit.rlim_cur < limit.rlim_max {
            let wanted = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &wanted) == 0 {
                return wanted.rlim_max;
            }
        }
        limit.rlim_cur
    }
}

/// The soft limit of `resource`, `None` when it cannot be read.
fn soft_limit(resource: libc::__rlimit_resource_t) -> Option<u64> {
    // SAFETY: getrlimit with a valid rlimit struct.
    unsafe {
        let mut limit: libc::rlimit = std::mem::zeroed();
        (libc::getrlimit(resource, &mut limit) == 0).then_some(limit.rlim_cur)
    }
}

/// The soft RLIMIT_NOFILE.
fn nofile_limit() -> u64 {
    soft_limit(libc::RLIMIT_NOFILE).unwrap_or(1024)
}

/// Client connections each of `cores` keeps open at most: the descriptor limit minus a reserve
/// for upstream connections and the process's own descriptors (a quarter, at least 64), shared
/// evenly. Clients past it are accepted and closed at once, so a flood can never take the
/// descriptors upstream connections need.
pub fn connection_budget(nofile: u64, cores: usize) -> usize {
    let nofile = nofile.min(u64::from(u32::MAX)) as usize;
    let reserve = (nofile / 4).max(64);
    (nofile.saturating_sub(reserve) / cores.max(1)).max(1)
}

/// The soft RLIMIT_MEMLOCK in bytes (older kernels charge io_uring rings against it).
fn memlock_limit() -> u64 {
    soft_limit(libc::RLIMIT_MEMLOCK).unwrap_or(0)
}

/// Signals the control thread handles itself; blocked in every thread.
pub fn control_signals() -> libc::sigset_t {
    // SAFETY: the set is initialised by sigemptyset before use.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        set
    }
}

/// Blocks the control signals in the calling thread (threads started later inherit it).
pub fn block_control_signals() {
    let set = control_signals();
    // SAFETY: valid set pointer, null old-set pointer.
    unsafe {
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Waits for one of the control signals and returns its number.
pub fn wait_for_signal() -> i32 {
    let set = control_signals();
    let mut signal = 0;
    // SAFETY: valid set and output pointers; the signals are blocked in this thread.
    unsafe {
        libc::sigwait(&set, &mut signal);
    }
    signal
}

/// Waits up to `timeout` for one of the control signals; `None` when none arrived.
pub fn wait_for_signal_timeout(timeout: Duration) -> Option<i32> {
    let set = control_signals();
    let wait = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: valid set and timespec pointers; a null siginfo pointer is allowed.
    let signal = unsafe { libc::sigtimedwait(&set, std::ptr::null_mut(), &wait) };
    (signal > 0).then_some(signal)
}

/// Gives memory freed by the cores (connection buffers after a burst of connections) back to
/// the kernel; the allocator otherwise keeps it in its per-thread arenas.
pub fn return_free_memory() {
    // SAFETY: malloc_trim has no preconditions.
    unsafe {
        libc::malloc_trim(0);
    }
}

static FALLBACK_WARNING: Once = Once::new();
static TASK_SIZE: Once = Once::new();

/// What every core's limit state starts from.
#[derive(Clone)]
pub struct LimitSetup {
    pub sizes: TableSizes,
    /// Quota counts saved by the previous run.
    pub saved: Arc<SavedQuotas>,
    /// Where quota counts are saved (`None` when no quota is configured).
    pub sink: Option<QuotaSink>,
    /// Open connections per listener and client address, all cores together.
    pub connections: Arc<ConnectionCounts>,
    /// The access log's writer queue and the fraction of 2xx records kept (`None`: off).
    pub access_log: Option<(AccessSink, f64)>,
}

/// Starts `count` workers serving `snapshot`; returns once every worker listens.
pub fn start_workers(
    snapshot: Arc<Snapshot>,
    auth: (Arc<AuthState>, AuthLinks),
    limits: LimitSetup,
    count: usize,
    pin: bool,
) -> Result<Vec<Worker>, StartError> {
    let cpus = allowed_cpus();
    let seed = random_seed();
    let budget = connection_budget(nofile_limit(), count);
    let (ready_tx, ready_rx) = mpsc::channel();
    let mut workers = Vec::with_capacity(count);
    let mut channels = Vec::with_capacity(count);
    for _ in 0..count {
        channels.push(control_channel().map_err(StartError::Spawn)?);
    }
    // Every core can reach every other for leases (with one core, nobody needs to).
    let peers: Vec<PeerSender> = if count > 1 {
        channels
            .iter()
            .map(|(_, peer, _)| peer)
            .map(PeerSender::try_clone)
            .collect::<Result<_, _>>()
            .map_err(StartError::Spawn)?
    } else {
        Vec::new()
    };
    for (id, (control, _, control_rx)) in channels.into_iter().enumerate() {
        let cpu = (pin && !cpus.is_empty()).then(|| cpus[id % cpus.len()]);
        let snapshot = snapshot.clone();
        let auth = (auth.0.clone(), auth.1.clone());
        let ready = ready_tx.clone();
        let peers = peers
            .iter()
            .map(PeerSender::try_clone)
            .collect::<Result<Vec<_>, _>>()
            .map_err(StartError::Spawn)?;
        let limits = CoreLimitsSeed {
            setup: limits.clone(),
            peers,
        };
        let thread = std::thread::Builder::new()
            .name(format!("cflow-core-{id}"))
            .spawn(move || {
                worker_thread(
                    id, cpu, budget, snapshot, auth, limits, seed, control_rx, ready,
                )
            })
            .map_err(StartError::Spawn)?;
        workers.push(Worker { thread, control });
    }
    drop(ready_tx);
    for _ in 0..count {
        match ready_rx.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                stop_workers(workers);
                return Err(err);
            }
            Err(_) => {
                stop_workers(workers);
                return Err(StartError::Lost(0));
            }
        }
    }
    Ok(workers)
}

/// How long shutdown waits for the cores to give their leases back.
const LEASE_RETURN_TIMEOUT: Duration = Duration::from_secs(1);

/// Tells every worker to drain and waits for all of them to finish.
pub fn stop_workers(workers: Vec<Worker>) {
    let (ack, acks) = crossbeam_channel::unbounded();
    for worker in &workers {
        worker.control.send(ControlMsg::ReturnLeases(ack.clone()));
    }
    let deadline = Instant::now() + LEASE_RETURN_TIMEOUT;
    for _ in &workers {
        if acks.recv_deadline(deadline).is_err() {
            break;
        }
    }
    for worker in &workers {
        worker.control.send(ControlMsg::Drain);
    }
    for worker in workers {
        let _ = worker.thread.join();
    }
}

type Ready = mpsc::Sender<Result<(), StartError>>;

/// What a worker thread builds its [`CoreLimits`] from.
struct CoreLimitsSeed {
    setup: LimitSetup,
    peers: Vec<PeerSender>,
}

#[allow(clippy::too_many_arguments)]
fn worker_thread(
    id: usize,
    cpu: Option<usize>,
    budget: usize,
    snapshot: Arc<Snapshot>,
    auth: (Arc<AuthState>, AuthLinks),
    limits: CoreLimitsSeed,
    seed: u64,
    control: ControlReceiver,
    ready: Ready,
) {
    if let Some(cpu) = cpu {
        if let Err(err) = pin_current_thread(cpu) {
            tracing::warn!(worker = id, cpu, error = %err, "cannot pin worker to its CPU");
        }
    }
    let limits_seed_connections = limits.setup.connections.clone();
    let access_log = limits
        .setup
        .access_log
        .clone()
        .map(|(sink, sample)| CoreAccessLog::new(sink, sample));
    let limits = CoreLimits::new(
        id,
        limits.peers,
        limits.setup.sizes,
        limits.setup.saved,
        limits.setup.sink,
    );
    let connections = limits_seed_connections;
    let core = Rc::new(Core::new(
        id,
        snapshot,
        auth.0,
        Some(auth.1),
        limits,
        connections,
        seed,
        budget,
        access_log,
    ));
    if monoio::utils::detect_uring() {
        // Deferred task running needs Linux 6.1; older kernels get a plain ring.
        let mut last_error = None;
        for flags in [RingFlags::Deferred, RingFlags::Plain] {
            match RuntimeBuilder::<IoUringDriver>::new()
                .enable_timer()
                .with_entries(4096)
                .uring_builder(ring_setup(flags))
                .build()
            {
                Ok(mut runtime) => {
                    runtime.block_on(worker_main(core, control, ready));
                    return;
                }
                Err(err) => last_error = Some(err),
            }
        }
        if let Some(err) = last_error {
            FALLBACK_WARNING.call_once(|| {
                tracing::warn!(
                    error = %err,
                    memlock_limit_bytes = memlock_limit(),
                    "io_uring ring setup failed (a low RLIMIT_MEMLOCK on kernels before 5.12 is the usual cause: raise it with `ulimit -l` or LimitMEMLOCK=); falling back to the epoll driver"
                )
            });
        }
    } else {
        FALLBACK_WARNING.call_once(|| {
            tracing::warn!("io_uring is unavailable (old kernel, seccomp or io_uring_disabled); falling back to the epoll driver")
        });
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut runtime) => runtime.block_on(worker_main(core, control, ready)),
        Err(err) => tracing::error!(worker = id, error = %err, "cannot build any runtime"),
    }
}

/// How a core's io_uring ring is set up.
#[derive(Clone, Copy)]
enum RingFlags {
    /// One submitting thread, completions processed only when the core asks for them (one
    /// batch per reactor turn, no interruptions): `SINGLE_ISSUER | DEFER_TASKRUN`, Linux 6.1+.
    Deferred,
    /// No setup flags, for older kernels.
    Plain,
}

fn ring_setup(flags: RingFlags) -> io_uring::Builder {
    let mut builder = io_uring::IoUring::builder();
    if let RingFlags::Deferred = flags {
        builder.setup_single_issuer().setup_defer_taskrun();
    }
    builder
}

async fn worker_main(core: Rc<Core>, control: ControlReceiver, ready: Ready) {
    let _timers = deadline::start();
    let mut control = match control.into_stream() {
        Ok(control) => control,
        Err(err) => {
            let _ = ready.send(Err(StartError::Spawn(err)));
            return;
        }
    };
    let mut listeners = Vec::new();
    for (index, listener) in core.current().snapshot.listeners.iter().enumerate() {
        let options = ListenerOpts::new()
            .reuse_port(true)
            .reuse_addr(true)
            .backlog(4096);
        match TcpListener::bind_with_config(listener.address, &options) {
            Ok(bound) => {
                set_nodelay(bound.as_raw_fd());
                listeners.push((index, bound));
            }
            Err(source) => {
                let _ = ready.send(Err(StartError::Listen {
                    worker: core.id,
                    address: listener.address,
                    source,
                }));
                return;
            }
        }
    }
    let _ = ready.send(Ok(()));
    let listening_fds: Vec<RawFd> = listeners.iter().map(|(_, l)| l.as_raw_fd()).collect();
    for (index, listener) in listeners {
        let listener = Rc::new(listener);
        for _ in 0..ACCEPTS_IN_FLIGHT {
            monoio::spawn(accept_loop(core.clone(), index, listener.clone()));
        }
    }
    monoio::spawn(limit_upkeep(core.clone()));
    while let Some(message) = control.next().await {
        match message {
            Incoming::Peer(message) => core.limits.on_message(message),
            Incoming::Control(ControlMsg::Drain) => break,
            Incoming::Control(ControlMsg::Adopt(snapshot, auth, ack)) => {
                core.adopt(snapshot, auth);
                let _ = ack.send(core.id);
            }
            Incoming::Control(ControlMsg::Auth(auth, ack)) => {
                let old = core.auth.adopt(auth);
                let _ = ack.send(core.id);
                drop(old);
            }
            Incoming::Control(ControlMsg::Metrics(reply)) => {
                let _ = reply.send(core.metrics_report());
            }
            Incoming::Control(ControlMsg::Health {
                upstream,
                target,
                up,
            }) => core.apply_health(&upstream, target, up),
            Incoming::Control(ControlMsg::ReturnLeases(ack)) => {
                core.limits.return_leases();
                let _ = ack.send(core.id);
            }
        }
    }
    // Leases the other cores gave back before the drain are counted before the quotas are
    // saved.
    while let Some(message) = control.try_next_peer() {
        core.limits.on_message(message);
    }
    // Stop listening before anything else: a pending io_uring accept keeps a listening socket
    // alive in the kernel until the ring is torn down, which can outlive the process.
    for fd in listening_fds {
        // SAFETY: the accept loops own these sockets and only close them after the drain signal,
        // which fires below, so each fd is still the listening socket here.
        unsafe {
            libc::shutdown(fd, libc::SHUT_RDWR);
        }
    }
    core.drain.fire();
    let deadline = Instant::now() + core.current().snapshot.drain_timeout;
    while core.active_connections.get() > 0 && Instant::now() < deadline {
        monoio::time::sleep(Duration::from_millis(10)).await;
    }
    if core.active_connections.get() > 0 {
        tracing::warn!(
            core = core.id,
            connections = core.active_connections.get(),
            "drain timeout: closing remaining connections"
        );
    }
    // Lease answers still arriving are not needed any more; the counts this core owns are.
    core.limits.flush_quotas();
    if let Some(log) = &core.access_log {
        log.flush();
        if log.dropped() > 0 {
            tracing::warn!(
                core = core.id,
                dropped = log.dropped(),
                "access log records dropped"
            );
        }
    }
    log_auth_totals(&core);
    log_limit_totals(&core);
    let counters = &core.counters;
    if counters.over_budget.get() > 0 {
        tracing::info!(
            core = core.id,
            closed = counters.over_budget.get(),
            budget = core.connection_budget,
            "connections closed at the connection budget"
        );
    }
    if counters.tls_handshakes.get() + counters.tls_failures.get() > 0 {
        tracing::info!(
            core = core.id,
            handshakes = counters.tls_handshakes.get(),
            resumed = counters.tls_resumed.get(),
            failed = counters.tls_failures.get(),
            "TLS totals"
        );
    }
}

/// How often a core gives back idle leases, saves quota counts and hands its access-log batch
/// to the writer.
const LIMIT_UPKEEP: Duration = Duration::from_millis(100);

/// The core's limit and access-log upkeep, until the drain.
async fn limit_upkeep(core: Rc<Core>) {
    loop {
        monoio::select! {
            _ = monoio::time::sleep(LIMIT_UPKEEP) => {},
            _ = core.drain.wait() => return,
        }
        core.limits.upkeep();
        if let Some(log) = &core.access_log {
            log.flush();
        }
    }
}

/// Logs what the core's limits did.
fn log_limit_totals(core: &Core) {
    let c = &core.limits.counters;
    if c.rate_limited.get() + c.quota_exceeded.get() + c.throttled.get() > 0 {
        let (buckets, quotas, leases) = core.limits.tracked();
        tracing::info!(
            core = core.id,
            allowed = c.allowed.get(),
            rate_limited = c.rate_limited.get(),
            quota_exceeded = c.quota_exceeded.get(),
            throttled = c.throttled.get(),
            lease_requests = c.lease_requests.get(),
            buckets,
            quotas,
            leases,
            "limit totals"
        );
    }
}

/// Logs what the core's authentication did (counts only, never credentials).
fn log_auth_totals(core: &Core) {
    let counters = &core.auth.counters;
    let (mut hits, mut misses) = (0, 0);
    for cache in &core.current().token_caches {
        let stats = cache.borrow().stats;
        hits += stats.hits;
        misses += stats.misses;
    }
    if counters.authenticated.get() + counters.refused.get() > 0 {
        tracing::info!(
            core = core.id,
            authenticated = counters.authenticated.get(),
            refused = counters.refused.get(),
            cache_hits = hits,
            cache_misses = misses,
            basic_failures = counters.basic_failures.get(),
            jwks_refetch_requests = counters.refetch_requests.get(),
            "authentication totals"
        );
    }
}

/// Sets TCP_NODELAY on a socket. On a listening socket, Linux hands the option down to every
/// accepted connection, which saves one `setsockopt` per connection.
fn set_nodelay(fd: RawFd) {
    let on: libc::c_int = 1;
    // SAFETY: setsockopt on an open socket with a pointer to a c_int of the stated size.
    unsafe {
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Whether TCP_NODELAY is set on a socket.
fn has_nodelay(fd: RawFd) -> bool {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: getsockopt on an open socket with a c_int-sized output buffer.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_NODELAY,
            (&mut value as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    rc == 0 && value != 0
}

/// The pause after a failed accept, and its ceiling when descriptors or memory run out.
const ACCEPT_PAUSE_MIN: Duration = Duration::from_millis(10);
const ACCEPT_PAUSE_MAX: Duration = Duration::from_secs(1);

/// Accept operations kept in flight per listener on each core: a burst of new connections is
/// taken in one pass of the reactor instead of one per pass.
const ACCEPTS_IN_FLIGHT: usize = 8;

async fn accept_loop(core: Rc<Core>, index: usize, listener: Rc<TcpListener>) {
    // Checked on the first connection: does this kernel hand TCP_NODELAY down from the
    // listener? If not, every accepted socket gets it set.
    let mut set_per_connection = None;
    let mut pause = ACCEPT_PAUSE_MIN;
    loop {
        let accepted = monoio::select! {
            accepted = listener.accept() => accepted,
            _ = core.drain.wait() => break,
        };
        match accepted {
            Ok((stream, peer)) => {
                pause = ACCEPT_PAUSE_MIN;
                if core.active_connections.get() >= core.connection_budget {
                    drop(stream);
                    core.counters.over_budget.bump();
                    if let Some(suppressed) = core.warnings.over_budget.allow(Instant::now()) {
                        tracing::warn!(
                            core = core.id,
                            budget = core.connection_budget,
                            suppressed,
                            "connection budget reached: closing new connections"
                        );
                    }
                    continue;
                }
                let per_connection =
                    *set_per_connection.get_or_insert_with(|| !has_nodelay(stream.as_raw_fd()));
                if per_connection {
                    let _ = stream.set_nodelay(true);
                }
                let task = serve_connection(core.clone(), index, stream, peer);
                TASK_SIZE.call_once(|| {
                    tracing::debug!(
                        bytes = std::mem::size_of_val(&task),
                        "connection task state (an idle connection's memory besides its socket)"
                    )
                });
                monoio::spawn(deadline::scope(task));
            }
            Err(err) => {
                if let Some(suppressed) = core.warnings.accept.allow(Instant::now()) {
                    tracing::warn!(core = core.id, error = %err, suppressed, "accept failed");
                }
                // Out of descriptors or memory: back off (doubling, up to 1 s) while the
                // established connections go on; anything else is retried soon.
                let exhausted = matches!(
                    err.raw_os_error(),
                    Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
                );
                pause = if exhausted {
                    (pause * 2).clamp(ACCEPT_PAUSE_MIN, ACCEPT_PAUSE_MAX)
                } else {
                    ACCEPT_PAUSE_MIN
                };
                monoio::time::sleep(pause).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_budget_leaves_a_reserve() {
        assert_eq!(connection_budget(256, 1), 192);
        assert_eq!(connection_budget(256, 2), 96);
        assert_eq!(connection_budget(20_000, 2), 7_500);
        assert_eq!(connection_budget(16, 4), 1);
    }
}
