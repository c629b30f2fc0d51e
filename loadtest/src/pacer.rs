//! Open-loop send times to the tens of microseconds.
//!
//! monoio's timer counts whole milliseconds, so every request due within one tick would leave
//! in the same wake-up: a steady 10 000 req/s would reach the server as bursts of 10–20
//! requests every 1–2 ms, and the open-loop latency would measure how the server queues a
//! burst rather than how it serves a steady rate. On io_uring a [`Pacer`] sleeps on its own
//! timerfd (nanosecond expiry, its expiry read through the ring like any other I/O), so a
//! request leaves within the machine's wake-up latency of its intended time. On the epoll
//! fallback it keeps the runtime's timer.

use monoio::fs::File;
use std::fs::File as StdFile;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Instant;

/// One connection's wait for its next intended send time.
pub enum Pacer {
    /// A timerfd read through io_uring, with the 8-byte buffer its expiry count lands in.
    Precise { timer: File, buf: Option<Vec<u8>> },
    /// The runtime's millisecond timer.
    Coarse,
}

impl Pacer {
    /// A precise pacer when `precise` (the thread runs on io_uring) and a timerfd can be made;
    /// the coarse one otherwise.
    pub fn new(precise: bool) -> Pacer {
        if !precise {
            return Pacer::Coarse;
        }
        match timerfd().and_then(|fd| File::from_std(StdFile::from(fd))) {
            Ok(timer) => Pacer::Precise {
                timer,
                buf: Some(Vec::with_capacity(8)),
            },
            Err(_) => Pacer::Coarse,
        }
    }

    /// Returns at `at`, or at once when it has passed.
    pub async fn until(&mut self, at: Instant) {
        let wait = at.saturating_duration_since(Instant::now());
        if wait.is_zero() {
            return;
        }
        let Pacer::Precise { timer, buf } = self else {
            monoio::time::sleep_until(at.into()).await;
            return;
        };
        let spec = libc::itimerspec {
            it_interval: libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            },
            it_value: libc::timespec {
                tv_sec: wait.as_secs() as libc::time_t,
                tv_nsec: wait.subsec_nanos() as libc::c_long,
            },
        };
        // SAFETY: `timer` is an open timerfd and `spec` a valid, non-zero relative expiry.
        let armed =
            unsafe { libc::timerfd_settime(timer.as_raw_fd(), 0, &spec, std::ptr::null_mut()) };
        let mut bytes = buf.take().unwrap_or_else(|| Vec::with_capacity(8));
        if armed == 0 {
            bytes.clear();
            let (result, back) = timer.read_at(bytes, 0).await;
            bytes = back;
            if result.is_ok() {
                *buf = Some(bytes);
                return;
            }
        }
        // The timer failed: fall back to the runtime's timer for this and later waits.
        *self = Pacer::Coarse;
        monoio::time::sleep_until(at.into()).await;
    }
}

/// A monotonic-clock timerfd, close-on-exec.
fn timerfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; a non-negative result is a new descriptor we own.
    let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just created and is owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_precise_pacer_waits_on_its_timerfd_until_the_time() {
        if !monoio::utils::detect_uring() {
            return; // no io_uring here: the generator uses the coarse timer, tested below
        }
        let mut runtime = monoio::RuntimeBuilder::<monoio::IoUringDriver>::new()
            .enable_timer()
            .build()
            .expect("io_uring runtime");
        runtime.block_on(async {
            let mut pacer = Pacer::new(true);
            assert!(matches!(pacer, Pacer::Precise { .. }));
            for _ in 0..3 {
                let at = Instant::now() + Duration::from_micros(700);
                pacer.until(at).await;
                assert!(Instant::now() >= at, "returned before its time");
            }
            // The timerfd reads succeeded: the pacer did not fall back to the runtime's timer.
            assert!(matches!(pacer, Pacer::Precise { .. }));
            // A time already passed returns at once.
            pacer.until(Instant::now() - Duration::from_millis(5)).await;
        });
    }

    #[test]
    fn a_coarse_pacer_waits_on_the_runtime_timer() {
        let mut runtime = monoio::RuntimeBuilder::<monoio::LegacyDriver>::new()
            .enable_timer()
            .build()
            .expect("epoll runtime");
        runtime.block_on(async {
            let mut pacer = Pacer::new(false);
            assert!(matches!(pacer, Pacer::Coarse));
            let at = Instant::now() + Duration::from_millis(2);
            pacer.until(at).await;
            assert!(Instant::now() >= at);
        });
    }
}
