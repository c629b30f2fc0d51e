//! The channels into a core: a bounded crossbeam channel for the control side's messages, an
//! unbounded one for the other cores' lease messages, and one wake-up socket the core's reactor
//! awaits for both (one byte per message on a socketpair, read through the reactor like any
//! other socket). A core reacts to a message at once and sleeps while there is none; no timer
//! polls the channels.
//!
//! The peer channel is unbounded so that a core never waits on another: each core has at most
//! one lease request in flight per key, and keys per core are bounded.

use super::ControlMsg;
use crate::limit::LeaseMsg;
use crossbeam_channel::{Receiver, Sender, TryRecvError};
use monoio::io::AsyncReadRent;
use std::io::Write;
use std::os::unix::net::UnixStream;

/// Messages a core may have queued; the control side waits (reload acks) rather than queueing.
const CAPACITY: usize = 16;

/// The control thread's end.
pub struct ControlSender {
    messages: Sender<ControlMsg>,
    wake: UnixStream,
}

/// Another core's end (lease messages).
pub struct PeerSender {
    messages: Sender<LeaseMsg>,
    wake: UnixStream,
}

/// A core's end, before its reactor runs.
pub struct ControlReceiver {
    messages: Receiver<ControlMsg>,
    peers: Receiver<LeaseMsg>,
    wake: UnixStream,
}

/// The ends of one core's channels: the control side's, the other cores', and the core's own.
pub fn control_channel() -> std::io::Result<(ControlSender, PeerSender, ControlReceiver)> {
    let (messages, receiver) = crossbeam_channel::bounded(CAPACITY);
    let (peer_messages, peer_receiver) = crossbeam_channel::unbounded();
    let (wake_tx, wake_rx) = UnixStream::pair()?;
    wake_tx.set_nonblocking(true)?;
    wake_rx.set_nonblocking(true)?;
    Ok((
        ControlSender {
            messages,
            wake: wake_tx.try_clone()?,
        },
        PeerSender {
            messages: peer_messages,
            wake: wake_tx,
        },
        ControlReceiver {
            messages: receiver,
            peers: peer_receiver,
            wake: wake_rx,
        },
    ))
}

impl PeerSender {
    /// A handle for another core.
    pub fn try_clone(&self) -> std::io::Result<PeerSender> {
        Ok(PeerSender {
            messages: self.messages.clone(),
            wake: self.wake.try_clone()?,
        })
    }

    /// Queues `message` and wakes the core (never blocks; a gone core drops it).
    pub fn send(&self, message: LeaseMsg) {
        if self.messages.send(message).is_ok() {
            let _ = (&self.wake).write(&[1]);
        }
    }
}

/// What arrives on a core's channels.
#[derive(Debug)]
pub enum Incoming {
    Control(ControlMsg),
    Peer(LeaseMsg),
}

impl ControlSender {
    /// A second handle on the same core (for the control side's other threads).
    pub fn try_clone(&self) -> std::io::Result<ControlSender> {
        Ok(ControlSender {
            messages: self.messages.clone(),
            wake: self.wake.try_clone()?,
        })
    }

    /// Queues `message` and wakes the core. False when the core is gone.
    pub fn send(&self, message: ControlMsg) -> bool {
        if self.messages.send(message).is_err() {
            return false;
        }
        self.wake();
        true
    }

    /// Like [`ControlSender::send`], but gives up at `deadline` when the core's queue stays
    /// full (a core that does not read its queue must not hang the control side).
    pub fn send_by(&self, message: ControlMsg, deadline: std::time::Instant) -> bool {
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        if self.messages.send_timeout(message, wait).is_err() {
            return false;
        }
        self.wake();
        true
    }

    fn wake(&self) {
        // A full socket buffer means wake-ups are already pending: nothing to add.
        let _ = (&self.wake).write(&[1]);
    }
}

impl ControlReceiver {
    /// Runs on the core's reactor: yields each message as it arrives. Ends (returns `None`)
    /// when the control side is gone, which the core treats like a drain.
    pub fn into_stream(self) -> std::io::Result<ControlStream> {
        Ok(ControlStream {
            messages: self.messages,
            peers: self.peers,
            wake: monoio::net::UnixStream::from_std(self.wake)?,
            buf: Some(vec![0u8; 64]),
        })
    }
}

/// A core's end inside its reactor.
pub struct ControlStream {
    messages: Receiver<ControlMsg>,
    peers: Receiver<LeaseMsg>,
    wake: monoio::net::UnixStream,
    buf: Option<Vec<u8>>,
}

#[cfg(test)]
impl ControlReceiver {
    /// A control message already queued (tests play a core by hand).
    pub fn try_next_control(&self) -> Option<ControlMsg> {
        self.messages.try_recv().ok()
    }
}

impl ControlStream {
    /// A peer message already queued, without waiting.
    pub fn try_next_peer(&mut self) -> Option<LeaseMsg> {
        self.peers.try_recv().ok()
    }

    /// The next message; `None` when the control side is gone.
    pub async fn next(&mut self) -> Option<Incoming> {
        loop {
            match self.messages.try_recv() {
                Ok(message) => return Some(Incoming::Control(message)),
                Err(TryRecvError::Disconnected) => return None,
                Err(TryRecvError::Empty) => {}
            }
            if let Ok(message) = self.peers.try_recv() {
                return Some(Incoming::Peer(message));
            }
            let buf = self.buf.take().unwrap_or_else(|| vec![0u8; 64]);
            let (result, buf) = self.wake.read(buf).await;
            self.buf = Some(buf);
            match result {
                Ok(0) => return None,
                Ok(_) => {}
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
}
