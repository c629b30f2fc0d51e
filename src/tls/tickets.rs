//! Session tickets that any core — and any node given the same key file — can decrypt.
//!
//! A ticket key set is one or more 32-byte secrets; the first encrypts, all decrypt (so a new
//! key can be put first while the old one still opens tickets in flight). Keys rotate without
//! any shared mutable state: time is cut into periods of `lifetime`, the AEAD key of a period is
//! derived from the secret with HKDF-SHA256, new tickets use the current period's key, and a
//! ticket opens only in its own period or the next one. Every core holds the same immutable
//! ticketer; nodes with the same secrets (and clocks) rotate in step.
//!
//! Ticket layout: key name (16) ‖ period (8, big-endian) ‖ nonce (12) ‖ AES-256-GCM(state) ‖ tag.

use super::TlsError;
use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::hkdf;
use ring::rand::{SecureRandom, SystemRandom};
use std::path::Path;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

const NAME_LEN: usize = 16;
const HEADER_LEN: usize = NAME_LEN + 8 + NONCE_LEN;
const SECRET_LEN: usize = 32;

struct TicketSecret {
    name: [u8; NAME_LEN],
    prk: hkdf::Prk,
}

impl TicketSecret {
    fn new(secret: &[u8; SECRET_LEN]) -> TicketSecret {
        let digest = ring::digest::digest(
            &ring::digest::SHA256,
            &[b"credentialflow ticket key name\0".as_slice(), secret].concat(),
        );
        let mut name = [0u8; NAME_LEN];
        name.copy_from_slice(&digest.as_ref()[..NAME_LEN]);
        let prk =
            hkdf::Salt::new(hkdf::HKDF_SHA256, b"credentialflow session tickets").extract(secret);
        TicketSecret { name, prk }
    }

    fn period_key(&self, period: u64) -> Option<LessSafeKey> {
        let info = period.to_be_bytes();
        let info = [info.as_slice()];
        let okm = self.prk.expand(&info, &AES_256_GCM).ok()?;
        let mut bytes = [0u8; SECRET_LEN];
        okm.fill(&mut bytes).ok()?;
        Some(LessSafeKey::new(
            UnboundKey::new(&AES_256_GCM, &bytes).ok()?,
        ))
    }
}

/// The ticket producer installed in every listener's rustls config.
pub struct Ticketer {
    secrets: Vec<TicketSecret>,
    lifetime: Duration,
    rng: SystemRandom,
}

impl std::fmt::Debug for Ticketer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ticketer")
            .field("keys", &self.secrets.len())
            .field("lifetime", &self.lifetime)
            .finish()
    }
}

impl Ticketer {
    /// A ticketer over the given secrets (first encrypts). `lifetime` is at least one second.
    pub fn new(secrets: &[[u8; SECRET_LEN]], lifetime: Duration) -> Ticketer {
        Ticketer {
            secrets: secrets.iter().map(TicketSecret::new).collect(),
            lifetime: lifetime.max(Duration::from_secs(1)),
            rng: SystemRandom::new(),
        }
    }

    /// Secrets from a key file: one key per line as 64 hex digits (e.g. `openssl rand -hex 32`),
    /// `#` comments and blank lines ignored, the first key encrypts.
    pub fn from_file(path: &Path, lifetime: Duration) -> Result<Ticketer, TlsError> {
        let text = std::fs::read_to_string(path).map_err(|source| TlsError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let secrets = parse_key_file(&text).map_err(|message| TlsError::Pem {
            path: path.display().to_string(),
            message,
        })?;
        Ok(Ticketer::new(&secrets, lifetime))
    }

    /// A ticketer on this process's own random secret: the same for every core and across
    /// reloads, different on every start.
    pub fn process_default(lifetime: Duration) -> Ticketer {
        static SECRET: OnceLock<[u8; SECRET_LEN]> = OnceLock::new();
        let secret = SECRET.get_or_init(|| {
            let mut secret = [0u8; SECRET_LEN];
            SystemRandom::new()
                .fill(&mut secret)
                .expect("the system random source works");
            secret
        });
        Ticketer::new(&[*secret], lifetime)
    }

    fn period_at(&self, time: SystemTime) -> u64 {
        let secs = time
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        secs / self.lifetime.as_secs().max(1)
    }

    fn encrypt_at(&self, plain: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        let secret = self.secrets.first()?;
        let period = self.period_at(now);
        let key = secret.period_key(period)?;
        let mut nonce = [0u8; NONCE_LEN];
        self.rng.fill(&mut nonce).ok()?;
        let mut ticket = Vec::with_capacity(HEADER_LEN + plain.len() + AES_256_GCM.tag_len());
        ticket.extend_from_slice(&secret.name);
        ticket.extend_from_slice(&period.to_be_bytes());
        ticket.extend_from_slice(&nonce);
        let mut body = plain.to_vec();
        key.seal_in_place_append_tag(
            Nonce::assume_unique_for_key(nonce),
            Aad::from(&ticket[..NAME_LEN + 8]),
            &mut body,
        )
        .ok()?;
        ticket.extend_from_slice(&body);
        Some(ticket)
    }

    fn decrypt_at(&self, ticket: &[u8], now: SystemTime) -> Option<Vec<u8>> {
        if ticket.len() < HEADER_LEN + AES_256_GCM.tag_len() {
            return None;
        }
        let (name, rest) = ticket.split_at(NAME_LEN);
        let (period, rest) = rest.split_at(8);
        let (nonce, sealed) = rest.split_at(NONCE_LEN);
        let period = u64::from_be_bytes(period.try_into().ok()?);
        let current = self.period_at(now);
        if period != current && period + 1 != current {
            return None;
        }
        let secret = self.secrets.iter().find(|s| s.name == name)?;
        let key = secret.period_key(period)?;
        let mut body = sealed.to_vec();
        let plain_len = key
            .open_in_place(
                Nonce::try_assume_unique_for_key(nonce).ok()?,
                Aad::from(&ticket[..NAME_LEN + 8]),
                &mut body,
            )
            .ok()?
            .len();
        body.truncate(plain_len);
        Some(body)
    }
}

impl rustls::server::ProducesTickets for Ticketer {
    fn enabled(&self) -> bool {
        !self.secrets.is_empty()
    }

    fn lifetime(&self) -> u32 {
        self.lifetime.as_secs().min(u32::MAX as u64) as u32
    }

    fn encrypt(&self, plain: &[u8]) -> Option<Vec<u8>> {
        self.encrypt_at(plain, SystemTime::now())
    }

    fn decrypt(&self, cipher: &[u8]) -> Option<Vec<u8>> {
        self.decrypt_at(cipher, SystemTime::now())
    }
}

fn parse_key_file(text: &str) -> Result<Vec<[u8; SECRET_LEN]>, String> {
    let mut keys = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bytes = line.as_bytes();
        if bytes.len() != SECRET_LEN * 2 || !bytes.iter().all(u8::is_ascii_hexdigit) {
            return Err(format!(
                "line {}: a ticket key is 64 hex digits (generate one with `openssl rand -hex 32`)",
                index + 1
            ));
        }
        let mut key = [0u8; SECRET_LEN];
        for (i, pair) in bytes.chunks(2).enumerate() {
            let text = std::str::from_utf8(pair).map_err(|_| "not hex".to_string())?;
            key[i] = u8::from_str_radix(text, 16).map_err(|_| "not hex".to_string())?;
        }
        keys.push(key);
    }
    if keys.is_empty() {
        return Err("holds no ticket key".to_string());
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn round_trip_within_its_period_and_the_next() {
        let t = Ticketer::new(&[[7; 32]], HOUR);
        let ticket = t.encrypt_at(b"session state", at(10 * 3600 + 5)).unwrap();
        assert_eq!(
            t.decrypt_at(&ticket, at(10 * 3600 + 100)).unwrap(),
            b"session state"
        );
        assert_eq!(
            t.decrypt_at(&ticket, at(11 * 3600 + 100)).unwrap(),
            b"session state"
        );
        assert!(
            t.decrypt_at(&ticket, at(12 * 3600 + 1)).is_none(),
            "expired after two periods"
        );
        assert!(
            t.decrypt_at(&ticket, at(9 * 3600)).is_none(),
            "from the future"
        );
    }

    #[test]
    fn another_node_with_the_same_keys_opens_it_and_others_do_not() {
        let a = Ticketer::new(&[[1; 32]], HOUR);
        let b = Ticketer::new(&[[1; 32]], HOUR);
        let c = Ticketer::new(&[[2; 32]], HOUR);
        let ticket = a.encrypt_at(b"state", at(50)).unwrap();
        assert_eq!(b.decrypt_at(&ticket, at(60)).unwrap(), b"state");
        assert!(c.decrypt_at(&ticket, at(60)).is_none());
    }

    #[test]
    fn old_key_still_decrypts_after_a_new_key_is_put_first() {
        let old = Ticketer::new(&[[1; 32]], HOUR);
        let rotated = Ticketer::new(&[[2; 32], [1; 32]], HOUR);
        let ticket = old.encrypt_at(b"state", at(50)).unwrap();
        assert_eq!(rotated.decrypt_at(&ticket, at(60)).unwrap(), b"state");
        let fresh = rotated.encrypt_at(b"new", at(60)).unwrap();
        assert!(old.decrypt_at(&fresh, at(60)).is_none());
        assert_eq!(&fresh[..NAME_LEN], &TicketSecret::new(&[2; 32]).name);
    }

    #[test]
    fn tampered_or_short_tickets_are_refused() {
        let t = Ticketer::new(&[[3; 32]], HOUR);
        let mut ticket = t.encrypt_at(b"state", at(50)).unwrap();
        let last = ticket.len() - 1;
        ticket[last] ^= 1;
        assert!(t.decrypt_at(&ticket, at(50)).is_none());
        assert!(t.decrypt_at(&ticket[..20], at(50)).is_none());
        assert!(t.decrypt_at(b"", at(50)).is_none());
    }

    #[test]
    fn key_file_format() {
        let keys = parse_key_file(&format!(
            "# current\n{}\n\n{}\n",
            "ab".repeat(32),
            "0F".repeat(32)
        ))
        .unwrap();
        assert_eq!(keys, [[0xab; 32], [0x0f; 32]]);
        assert!(parse_key_file("abcd\n").unwrap_err().contains("line 1"));
        assert!(parse_key_file("# nothing\n").is_err());
        assert!(parse_key_file(&"zz".repeat(32)).is_err());
    }
}
