//! HTTP Basic credentials: the stored PBKDF2-HMAC-SHA256 hash (per-user salt and iteration
//! count), decoding the `Authorization: Basic` value, and the password checker thread.
//!
//! Checking a password costs milliseconds of CPU by design, so a core never does it: it hands
//! the check to the checker thread and serves its other connections meanwhile. A success is
//! then cached on the core for `auth.basic_cache_ttl`, a failure for a few seconds, so Basic
//! cannot be used to burn a core's CPU.

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use crossbeam_channel::{Receiver, Sender, TrySendError};
use ring::pbkdf2;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;

/// Iterations for newly made hashes.
pub const DEFAULT_ITERATIONS: u32 = 100_000;
const SALT_BYTES: usize = 16;
const HASH_BYTES: usize = 32;

/// A stored password hash: `pbkdf2-sha256$<iterations>$<salt>$<hash>` (base64url).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswordHash {
    pub iterations: NonZeroU32,
    pub salt: Box<[u8]>,
    pub hash: Box<[u8]>,
}

impl PasswordHash {
    pub fn parse(text: &str) -> Result<PasswordHash, String> {
        let shape = "expected pbkdf2-sha256$<iterations>$<salt>$<hash> (made by `credentialflow basic new`)";
        let mut parts = text.split('$');
        if parts.next() != Some("pbkdf2-sha256") {
            return Err(shape.into());
        }
        let iterations = parts
            .next()
            .and_then(|i| i.parse::<u32>().ok())
            .and_then(NonZeroU32::new)
            .ok_or_else(|| shape.to_string())?;
        if iterations.get() < 10_000 {
            return Err("PBKDF2 hashes need at least 10000 iterations".into());
        }
        let salt = parts
            .next()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .filter(|s| s.len() >= 8)
            .ok_or_else(|| shape.to_string())?;
        let hash = parts
            .next()
            .and_then(|s| URL_SAFE_NO_PAD.decode(s).ok())
            .filter(|h| h.len() >= 16)
            .ok_or_else(|| shape.to_string())?;
        if parts.next().is_some() {
            return Err(shape.into());
        }
        Ok(PasswordHash {
            iterations,
            salt: salt.into(),
            hash: hash.into(),
        })
    }

    /// Hashes `password` with a fresh random salt.
    pub fn new(password: &[u8], iterations: u32) -> PasswordHash {
        let mut salt = [0u8; SALT_BYTES];
        super::keys::random_bytes(&mut salt);
        let iterations = NonZeroU32::new(iterations.max(10_000)).expect("non-zero");
        let mut hash = [0u8; HASH_BYTES];
        pbkdf2::derive(
            pbkdf2::PBKDF2_HMAC_SHA256,
            iterations,
            &salt,
            password,
            &mut hash,
        );
        PasswordHash {
            iterations,
            salt: salt.into(),
            hash: hash.into(),
        }
    }

    /// Constant-time check of `password`.
    pub fn verify(&self, password: &[u8]) -> bool {
        pbkdf2::verify(
            pbkdf2::PBKDF2_HMAC_SHA256,
            self.iterations,
            &self.salt,
            password,
            &self.hash,
        )
        .is_ok()
    }

    pub fn encode(&self) -> String {
        format!(
            "pbkdf2-sha256${}${}${}",
            self.iterations,
            URL_SAFE_NO_PAD.encode(&self.salt),
            URL_SAFE_NO_PAD.encode(&self.hash)
        )
    }
}

/// The hash an unknown user's password is checked against: as costly as a real one, matched by
/// no password (its bytes are no PBKDF2 output of any password but by chance).
pub fn unknown_user_hash() -> &'static PasswordHash {
    static HASH: std::sync::OnceLock<PasswordHash> = std::sync::OnceLock::new();
    HASH.get_or_init(|| PasswordHash {
        iterations: NonZeroU32::new(DEFAULT_ITERATIONS).expect("non-zero"),
        salt: Box::new([0x5a; SALT_BYTES]),
        hash: Box::new([0; HASH_BYTES]),
    })
}

/// Decodes a Basic `user:password` value into `buf`; returns the split point (user length).
pub fn decode(value: &[u8], buf: &mut Vec<u8>) -> Option<usize> {
    buf.clear();
    if value.len() > 1024 {
        return None;
    }
    STANDARD.decode_vec(value, buf).ok()?;
    buf.iter().position(|&b| b == b':')
}

/// State of one password check handed to the checker thread.
pub struct Check {
    state: AtomicU8,
}

const PENDING: u8 = 0;
const GOOD: u8 = 1;
const BAD: u8 = 2;

impl Check {
    /// `None` while pending, then whether the password matched.
    pub fn result(&self) -> Option<bool> {
        match self.state.load(Ordering::Acquire) {
            PENDING => None,
            state => Some(state == GOOD),
        }
    }
}

struct Job {
    hash: PasswordHash,
    password: Vec<u8>,
    check: Arc<Check>,
}

/// The cores' handle on the checker thread.
#[derive(Clone)]
pub struct Checker {
    jobs: Sender<Job>,
}

/// Checks queued per process at most; beyond it a request is refused (503) rather than queued.
const QUEUE: usize = 256;

impl Checker {
    /// Starts the checker thread.
    pub fn start() -> Checker {
        let (jobs, queue) = crossbeam_channel::bounded::<Job>(QUEUE);
        std::thread::Builder::new()
            .name("cflow-basic".into())
            .spawn(move || run(queue))
            .expect("spawn the password checker thread");
        Checker { jobs }
    }

    /// Queues a check; `None` when the queue is full.
    pub fn submit(&self, hash: &PasswordHash, password: &[u8]) -> Option<Arc<Check>> {
        let check = Arc::new(Check {
            state: AtomicU8::new(PENDING),
        });
        let job = Job {
            hash: hash.clone(),
            password: password.to_vec(),
            check: check.clone(),
        };
        match self.jobs.try_send(job) {
            Ok(()) => Some(check),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => None,
        }
    }
}

fn run(queue: Receiver<Job>) {
    for mut job in queue {
        let good = job.hash.verify(&job.password);
        job.password.fill(0);
        job.check
            .state
            .store(if good { GOOD } else { BAD }, Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_round_trip_and_verify() {
        let hash = PasswordHash::new(b"s3cret", 10_000);
        let parsed = PasswordHash::parse(&hash.encode()).unwrap();
        assert_eq!(parsed, hash);
        assert!(parsed.verify(b"s3cret"));
        assert!(!parsed.verify(b"s3cret "));
    }

    #[test]
    fn malformed_hashes_are_refused() {
        for bad in [
            "s3cret",
            "pbkdf2-sha256$100$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2-sha1$100000$AAAAAAAAAAA$AAAAAAAAAAAAAAAAAAAAAA",
            "pbkdf2-sha256$100000$!!$AAAAAAAAAAAAAAAAAAAAAA",
        ] {
            assert!(PasswordHash::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn basic_values_decode() {
        let mut buf = Vec::new();
        let split = decode(b"YWxpY2U6b3BlbiBzZXNhbWU=", &mut buf).unwrap();
        assert_eq!(&buf[..split], b"alice");
        assert_eq!(&buf[split + 1..], b"open sesame");
        assert!(decode(b"bm9jb2xvbg==", &mut buf).is_none(), "no colon");
        assert!(decode(b"***", &mut buf).is_none());
    }

    #[test]
    fn the_checker_thread_answers() {
        let checker = Checker::start();
        let hash = PasswordHash::new(b"pw", 10_000);
        let good = checker.submit(&hash, b"pw").unwrap();
        let bad = checker.submit(&hash, b"nope").unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while (good.result().is_none() || bad.result().is_none())
            && std::time::Instant::now() < deadline
        {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        assert_eq!((good.result(), bad.result()), (Some(true), Some(false)));
    }
}
