//! Worker threads. Each thread runs its own monoio runtime (io_uring, or epoll when io_uring
//! is unavailable) with its share of the connections as tasks. A connection task sends
//! pre-built requests and parses the responses, in a closed loop (next request as soon as
//! the previous responses arrive, optionally pipelined) or an open loop (requests on a fixed
//! global schedule, latency counted from the intended send time). Results land in the
//! thread's own `Stats`; nothing is shared between threads but a progress counter.

use crate::pacer::Pacer;
use crate::request::RequestSet;
use crate::response::{Response, ResponseParser};
use crate::stats::{ErrorKind, Stats};
use crate::transport::{Endpoint, Transport};
use monoio::{IoUringDriver, LegacyDriver, RuntimeBuilder};
use std::cell::{Cell, RefCell};
use std::future::Future;
use std::ops::Range;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Read buffer room kept free for each read.
const READ_SPARE: usize = 16 * 1024;
/// Pause after a failed connection attempt, or a connection that failed before any response.
const CONNECT_BACKOFF: Duration = Duration::from_millis(10);
/// In open loop, a send later than this while the connection was idle counts as the load
/// generator falling behind its own schedule.
pub const LATE_SEND: Duration = Duration::from_millis(2);

/// What every worker needs, shared read-only.
pub struct Plan {
    pub endpoint: Endpoint,
    pub requests: RequestSet,
    /// Total connections over all threads.
    pub connections: usize,
    /// Requests in flight per connection (closed loop).
    pub pipeline: usize,
    /// Open loop: total requests per second.
    pub rate: Option<f64>,
    pub timeout: Duration,
}

/// The run's time line: traffic from `start`, measured from `measure_start` until `end`.
#[derive(Debug, Clone, Copy)]
pub struct Schedule {
    pub start: Instant,
    pub measure_start: Instant,
    pub end: Instant,
}

impl Schedule {
    fn in_window(&self, t: Instant) -> bool {
        t >= self.measure_start && t < self.end
    }
}

/// One worker thread's share.
pub struct WorkerSpec {
    pub index: usize,
    pub cpu: Option<usize>,
    /// Global indices of this thread's connections.
    pub connections: Range<usize>,
    /// Requests measured so far, for the progress line.
    pub progress: Arc<AtomicU64>,
}

static FALLBACK_WARNED: AtomicBool = AtomicBool::new(false);

/// Runs one worker thread to the end of the schedule and returns what it measured.
pub fn run_worker(plan: Arc<Plan>, schedule: Schedule, spec: WorkerSpec) -> Stats {
    if let Some(cpu) = spec.cpu {
        if let Err(err) = pin_current_thread(cpu) {
            eprintln!(
                "cflow-load: warning: cannot pin thread {} to CPU {cpu}: {err}",
                spec.index
            );
        }
    }
    let entries = (spec.connections.len() * 4).clamp(256, 32768) as u32;
    let ctx = Rc::new(Ctx {
        plan,
        schedule,
        stats: RefCell::new(Stats::new()),
        progress: spec.progress,
        next_request: Cell::new(spec.index),
    });
    let connections = spec.connections;
    // `precise`: the thread runs on io_uring, so open-loop connections pace sends with
    // timerfds (see [`Pacer`]).
    let main = |precise: bool| thread_main(ctx.clone(), connections.clone(), precise);
    if monoio::utils::detect_uring() {
        let mut ring = io_uring::IoUring::builder();
        ring.setup_single_issuer().setup_defer_taskrun();
        if let Ok(mut runtime) = RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .with_entries(entries)
            .uring_builder(ring)
            .build()
        {
            runtime.block_on(main(true));
            return ctx.take_stats();
        }
        if let Ok(mut runtime) = RuntimeBuilder::<IoUringDriver>::new()
            .enable_timer()
            .with_entries(entries)
            .build()
        {
            runtime.block_on(main(true));
            return ctx.take_stats();
        }
    }
    if !FALLBACK_WARNED.swap(true, Ordering::Relaxed) {
        eprintln!("cflow-load: warning: io_uring is unavailable; using the epoll driver");
    }
    match RuntimeBuilder::<LegacyDriver>::new().enable_timer().build() {
        Ok(mut runtime) => runtime.block_on(main(false)),
        Err(err) => eprintln!(
            "cflow-load: warning: thread {} has no runtime: {err}",
            spec.index
        ),
    }
    ctx.take_stats()
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

/// A thread's state, shared by its connection tasks (single-threaded: `Rc`, `RefCell`
/// borrows never held across an `.await`).
struct Ctx {
    plan: Arc<Plan>,
    schedule: Schedule,
    stats: RefCell<Stats>,
    progress: Arc<AtomicU64>,
    /// Closed loop: the thread's request counter for header rotation.
    next_request: Cell<usize>,
}

impl Ctx {
    fn take_stats(&self) -> Stats {
        std::mem::take(&mut *self.stats.borrow_mut())
    }

    fn next_request(&self) -> &[u8] {
        let i = self.next_request.get();
        self.next_request.set(i.wrapping_add(1));
        self.plan.requests.get(i)
    }

    fn error_at(&self, kind: ErrorKind, at: Instant) {
        if self.schedule.in_window(at) {
            self.stats.borrow_mut().error(kind);
        }
    }

    /// Records a response read at `done`; `rx` is when the kernel received its last bytes,
    /// when the stream keeps receive timestamps.
    fn record(
        &self,
        clock_start: Instant,
        done: Instant,
        rx: Option<Instant>,
        response: Response,
        conn: &mut Conn,
    ) {
        let read = std::mem::take(&mut conn.pending_read);
        let written = std::mem::take(&mut conn.pending_written);
        if !self.schedule.in_window(done) {
            return;
        }
        let micros = done.duration_since(clock_start).as_micros() as u64;
        conn.completed += 1;
        let mut stats = self.stats.borrow_mut();
        stats.record(micros, response.status, read, written);
        if let Some(rx) = rx {
            // Never later than the read that saw it; a stamp is missing only when the kernel
            // attached none, and then the read's own time stands in.
            let rx = rx.min(done);
            stats.record_rx(rx.saturating_duration_since(clock_start).as_micros() as u64);
        } else if matches!(conn.transport, Some(Transport::Stamped { .. })) {
            stats.record_rx(micros);
        }
        self.progress.store(stats.requests, Ordering::Relaxed);
    }
}

async fn thread_main(ctx: Rc<Ctx>, connections: Range<usize>, precise_pacing: bool) {
    let tasks: Vec<_> = connections
        .map(|index| {
            let ctx = ctx.clone();
            monoio::spawn(async move {
                let mut conn = Conn::new(ctx.plan.requests.head);
                match ctx.plan.rate {
                    None => closed_loop(&ctx, &mut conn).await,
                    Some(rate) => open_loop(&ctx, &mut conn, index, rate, precise_pacing).await,
                }
                ctx.stats.borrow_mut().per_connection.push(conn.completed);
            })
        })
        .collect();
    for task in tasks {
        task.await;
    }
}

/// One connection: its stream (reopened after errors and `Connection: close`) and buffers
/// reused for every request.
struct Conn {
    transport: Option<Transport>,
    inbuf: Vec<u8>,
    /// Start of the unparsed bytes in `inbuf`.
    start: usize,
    out: Vec<u8>,
    parser: ResponseParser,
    pending_read: u64,
    pending_written: u64,
    /// A response arrived since the connection was opened.
    answered: bool,
    /// Responses completed inside the measured window (across reconnects).
    completed: u64,
}

impl Conn {
    fn new(head: bool) -> Conn {
        Conn {
            transport: None,
            inbuf: Vec::with_capacity(READ_SPARE * 2),
            start: 0,
            out: Vec::with_capacity(1024),
            parser: ResponseParser::new(head),
            pending_read: 0,
            pending_written: 0,
            answered: false,
            completed: 0,
        }
    }

    fn close(&mut self) {
        self.transport = None;
        self.inbuf.clear();
        self.start = 0;
        self.parser.reset();
    }

    /// Opens the connection; on failure counts a connect error and pauses briefly.
    async fn connect(&mut self, ctx: &Ctx) -> bool {
        let end = ctx.schedule.end;
        let deadline = (Instant::now() + ctx.plan.timeout).min(end);
        // Open loop reads plain streams with the kernel's receive timestamps.
        let attempt = Transport::connect(&ctx.plan.endpoint, ctx.plan.rate.is_some());
        match monoio::time::timeout_at(deadline.into(), attempt).await {
            Ok(Ok(transport)) => {
                if let Some(resumed) = transport.tls_resumed() {
                    if ctx.schedule.in_window(Instant::now()) {
                        ctx.stats.borrow_mut().handshake(resumed);
                    }
                }
                self.close();
                self.transport = Some(transport);
                self.answered = false;
                true
            }
            Ok(Err(_)) | Err(_) => {
                let now = Instant::now();
                if now < end {
                    ctx.error_at(ErrorKind::Connect, now);
                    let pause = (now + CONNECT_BACKOFF).min(end);
                    monoio::time::sleep_until(pause.into()).await;
                }
                false
            }
        }
    }

    /// Sends `out` and reads `count` responses, recording each with latency from
    /// `clock_start`.
    async fn exchange(
        &mut self,
        ctx: &Ctx,
        count: usize,
        clock_start: Instant,
    ) -> Result<(), ErrorKind> {
        let transport = self.transport.as_mut().ok_or(ErrorKind::Write)?;
        transport
            .write_all(&mut self.out)
            .await
            .map_err(|_| ErrorKind::Write)?;
        self.pending_written += self.out.len() as u64;
        for _ in 0..count {
            let response = self.read_response().await?;
            self.answered = true;
            let rx = self.transport.as_ref().and_then(Transport::last_rx);
            ctx.record(clock_start, Instant::now(), rx, response, self);
            if response.close {
                self.close();
                break;
            }
        }
        Ok(())
    }

    async fn read_response(&mut self) -> Result<Response, ErrorKind> {
        loop {
            if self.start < self.inbuf.len() {
                let (used, done) = self
                    .parser
                    .parse(&self.inbuf[self.start..])
                    .map_err(|_| ErrorKind::Parse)?;
                self.start += used;
                if self.start == self.inbuf.len() {
                    self.inbuf.clear();
                    self.start = 0;
                }
                if let Some(response) = done {
                    return Ok(response);
                }
            }
            if self.start > 0 && self.inbuf.capacity() - self.inbuf.len() < READ_SPARE {
                self.inbuf.copy_within(self.start.., 0);
                self.inbuf.truncate(self.inbuf.len() - self.start);
                self.start = 0;
            }
            let transport = self.transport.as_mut().ok_or(ErrorKind::Read)?;
            match transport.read_more(&mut self.inbuf, READ_SPARE).await {
                Ok(0) => {
                    let response = self.parser.on_eof().ok_or(ErrorKind::Read)?;
                    return Ok(Response {
                        close: true,
                        ..response
                    });
                }
                Ok(n) => self.pending_read += n as u64,
                Err(_) => return Err(ErrorKind::Read),
            }
        }
    }

    /// Runs one exchange, sent now (`sent`), under the request timeout (cut at the end of
    /// the run, which is not an error). Failures close the connection.
    async fn timed_exchange(
        &mut self,
        ctx: &Ctx,
        count: usize,
        sent: Instant,
        clock_start: Instant,
    ) {
        let end = ctx.schedule.end;
        let timeout_at = sent + ctx.plan.timeout;
        let deadline = timeout_at.min(end);
        let exchange = self.exchange(ctx, count, clock_start);
        let result = with_deadline(deadline, exchange).await;
        match result {
            Some(Ok(())) => {}
            Some(Err(kind)) => {
                let now = Instant::now();
                ctx.error_at(kind, now);
                self.close();
                if !self.answered && now < end {
                    // A server that fails every fresh connection is not hammered.
                    let pause = (now + CONNECT_BACKOFF).min(end);
                    monoio::time::sleep_until(pause.into()).await;
                }
            }
            None => {
                if timeout_at < end {
                    ctx.error_at(ErrorKind::Timeout, timeout_at);
                }
                // The cancelled operation kept the buffers; start with fresh ones.
                self.close();
            }
        }
    }
}

async fn with_deadline<F: Future>(deadline: Instant, future: F) -> Option<F::Output> {
    monoio::time::timeout_at(deadline.into(), future).await.ok()
}

/// Closed loop: send the next `pipeline` requests as soon as the previous responses are in.
async fn closed_loop(ctx: &Ctx, conn: &mut Conn) {
    let end = ctx.schedule.end;
    let pipeline = ctx.plan.pipeline;
    loop {
        if conn.transport.is_none() && Instant::now() < end && !conn.connect(ctx).await {
            continue;
        }
        let sent = Instant::now();
        if sent >= end {
            return;
        }
        conn.out.clear();
        for _ in 0..pipeline {
            conn.out.extend_from_slice(ctx.next_request());
        }
        conn.timed_exchange(ctx, pipeline, sent, sent).await;
    }
}

/// Open loop: connection `index` of `C` sends requests `k ≡ index (mod C)` of the global
/// schedule, request `k` intended at `start + k / rate`.
///
/// Latency starts at the intended time when the connection was still busy with its previous
/// response then (a stalled server delays the requests behind it, and that delay counts).
/// When the connection was idle, it starts when the request actually leaves: the tens of
/// microseconds a timer wake-up may lag are the generator's, not the server's. Such lag
/// beyond `LATE_SEND` is counted separately. The wait for the intended time is the
/// connection's [`Pacer`] (a timerfd on io_uring), not the runtime's millisecond timer, so
/// the requests reach the server spread as scheduled rather than bunched per timer tick.
async fn open_loop(ctx: &Ctx, conn: &mut Conn, index: usize, rate: f64, precise_pacing: bool) {
    let Schedule { start, end, .. } = ctx.schedule;
    let step = ctx.plan.connections as u64;
    let mut k = index as u64;
    let mut previous_done = start;
    let mut pacer = Pacer::new(precise_pacing);
    if conn.transport.is_none() {
        conn.connect(ctx).await;
    }
    loop {
        let intended = start + Duration::from_secs_f64(k as f64 / rate);
        // A connection behind schedule stops at the end of the run too: the backlog it could
        // not send is the overload the latencies already show, not work for after the window.
        if intended >= end || Instant::now() >= end {
            return;
        }
        pacer.until(intended).await;
        let now = Instant::now();
        let clock_start = if previous_done > intended {
            intended
        } else {
            if now.duration_since(intended) > LATE_SEND && ctx.schedule.in_window(intended) {
                ctx.stats.borrow_mut().late_sends += 1;
            }
            now
        };
        if conn.transport.is_some() || conn.connect(ctx).await {
            conn.out.clear();
            conn.out
                .extend_from_slice(ctx.plan.requests.get(k as usize));
            conn.timed_exchange(ctx, 1, Instant::now(), clock_start)
                .await;
        }
        previous_done = Instant::now();
        k += step;
    }
}
