//! A blocking TCP socket bounded by one deadline, for the control-side threads that speak HTTP
//! to other servers (active health checks, JWKS fetches; never a core). The connect and every
//! read and write wait only for the time left before the deadline, so neither a TLS handshake
//! (several reads inside one write) nor a peer trickling bytes one at a time can hold the
//! thread past it. Once the deadline has passed, every call fails with `TimedOut`.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// A connected socket whose calls all end by `deadline`.
pub struct DeadlineSocket {
    tcp: TcpStream,
    deadline: Instant,
}

impl DeadlineSocket {
    /// Connects to `addr` within the time left before `deadline` (no Nagle delay: the callers
    /// send one small request).
    pub fn connect(addr: &SocketAddr, deadline: Instant) -> std::io::Result<DeadlineSocket> {
        let left = time_left(deadline)?;
        let tcp = TcpStream::connect_timeout(addr, left)?;
        let _ = tcp.set_nodelay(true);
        Ok(DeadlineSocket { tcp, deadline })
    }

    /// Moves the deadline (a connect given part of a larger budget then gets the rest).
    pub fn extend_to(&mut self, deadline: Instant) {
        self.deadline = deadline;
    }
}

/// The time left before `deadline`, or `TimedOut` when none is.
fn time_left(deadline: Instant) -> std::io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        return Err(ErrorKind::TimedOut.into());
    }
    Ok(left)
}

/// A socket timeout shows as `WouldBlock` (EAGAIN) on Linux: name it for what it is.
fn timed_out(err: std::io::Error) -> std::io::Error {
    if err.kind() == ErrorKind::WouldBlock {
        ErrorKind::TimedOut.into()
    } else {
        err
    }
}

impl Read for DeadlineSocket {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.tcp.set_read_timeout(Some(time_left(self.deadline)?))?;
        self.tcp.read(buf).map_err(timed_out)
    }
}

impl Write for DeadlineSocket {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.tcp
            .set_write_timeout(Some(time_left(self.deadline)?))?;
        self.tcp.write(buf).map_err(timed_out)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn reads_from_a_trickling_peer_end_at_the_deadline() {
        // A byte every 50 ms: each read succeeds, reading to the end must not outlast 300 ms.
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            for _ in 0..60 {
                if s.write_all(b"x").is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        let started = Instant::now();
        let mut socket =
            DeadlineSocket::connect(&addr, started + Duration::from_millis(300)).unwrap();
        let mut got = Vec::new();
        let err = socket.read_to_end(&mut got).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");
        assert!(!got.is_empty(), "the bytes before the deadline were read");
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(250), "{took:?}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        drop(socket);
        server.join().unwrap();
    }

    #[test]
    fn nothing_is_attempted_after_the_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let past = Instant::now() - Duration::from_millis(1);
        let err = DeadlineSocket::connect(&addr, past).err().unwrap();
        assert_eq!(err.kind(), ErrorKind::TimedOut);

        let mut socket =
            DeadlineSocket::connect(&addr, Instant::now() + Duration::from_millis(100)).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        std::thread::sleep(Duration::from_millis(120));
        assert_eq!(
            socket.write(b"GET").unwrap_err().kind(),
            ErrorKind::TimedOut
        );
        assert_eq!(
            socket.read(&mut [0u8; 8]).unwrap_err().kind(),
            ErrorKind::TimedOut
        );
    }
}
