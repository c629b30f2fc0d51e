//! API keys: the `cf_<id>_<secret>` format, issuing a key (192 random bits of secret), and the
//! stored form — HMAC-SHA256 of the secret under the pepper, never the key itself — checked
//! in constant time after a lookup by id.

use super::keys::random_bytes;
use ring::hmac;

/// Prefix of every key the gateway issues.
pub const PREFIX: &str = "cf_";
const ID_LEN: usize = 12;
const SECRET_LEN: usize = 32;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The server-side secret mixed into every stored key hash, so a leaked config or database
/// alone does not allow offline guessing.
pub struct Pepper(hmac::Key);

impl std::fmt::Debug for Pepper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pepper(redacted)")
    }
}

/// Shortest pepper accepted.
pub const MIN_PEPPER_BYTES: usize = 16;

impl Pepper {
    pub fn new(secret: &[u8]) -> Result<Pepper, String> {
        if secret.len() < MIN_PEPPER_BYTES {
            return Err(format!(
                "the key pepper must be at least {MIN_PEPPER_BYTES} bytes"
            ));
        }
        Ok(Pepper(hmac::Key::new(hmac::HMAC_SHA256, secret)))
    }

    /// The stored hash of a key secret.
    pub fn hash(&self, secret: &[u8]) -> [u8; 32] {
        let tag = hmac::sign(&self.0, secret);
        let mut out = [0u8; 32];
        out.copy_from_slice(tag.as_ref());
        out
    }

    /// Whether `secret` hashes to `stored` (constant-time comparison).
    pub fn matches(&self, secret: &[u8], stored: &[u8; 32]) -> bool {
        hmac::verify(&self.0, secret, stored).is_ok()
    }
}

/// A presented key split into its parts (borrowed from the request).
#[derive(Debug, PartialEq, Eq)]
pub struct PresentedKey<'a> {
    pub id: &'a str,
    pub secret: &'a [u8],
}

/// Splits `cf_<id>_<secret>`; `None` when the text is not shaped like a key.
pub fn parse(key: &[u8]) -> Option<PresentedKey<'_>> {
    let rest = key.strip_prefix(PREFIX.as_bytes())?;
    let split = rest.iter().position(|&b| b == b'_')?;
    let (id, secret) = (&rest[..split], &rest[split + 1..]);
    let id_ok = !id.is_empty() && id.len() <= 64 && id.iter().all(u8::is_ascii_alphanumeric);
    let secret_ok = secret.len() >= 16
        && secret.len() <= 256
        && secret
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if !id_ok || !secret_ok {
        return None;
    }
    Some(PresentedKey {
        id: std::str::from_utf8(id).ok()?,
        secret,
    })
}

/// A newly issued key: the full key (shown once) and its id.
pub struct IssuedKey {
    pub key: String,
    pub id: String,
    pub secret: String,
}

/// Issues a new key with a random id and a secret of 32 base62 characters (~190 bits).
pub fn issue() -> IssuedKey {
    let id = random_base62(ID_LEN);
    let secret = random_base62(SECRET_LEN);
    IssuedKey {
        key: format!("{PREFIX}{id}_{secret}"),
        id,
        secret,
    }
}

fn random_base62(len: usize) -> String {
    let mut out = String::with_capacity(len);
    let mut bytes = [0u8; 64];
    while out.len() < len {
        random_bytes(&mut bytes);
        for &b in &bytes {
            // 248 = 4 × 62: rejecting larger bytes keeps every character equally likely.
            if b < 248 && out.len() < len {
                out.push(BASE62[(b % 62) as usize] as char);
            }
        }
    }
    out
}

/// Lower-case hex of a stored hash.
pub fn hash_hex(hash: &[u8; 32]) -> String {
    crate::tls::certificate::hex(hash)
}

/// Reads a stored hash written as 64 hex digits.
pub fn parse_hash_hex(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, pair) in text.as_bytes().chunks(2).enumerate() {
        let s = std::str::from_utf8(pair).ok()?;
        out[i] = u8::from_str_radix(s, 16).ok()?;
    }
    Some(out)
}

/// Whether `text` contains something shaped like an issued key (a plaintext secret).
pub fn contains_key(text: &str) -> bool {
    let bytes = text.as_bytes();
    let mut from = 0;
    while let Some(at) = text[from..].find(PREFIX) {
        let start = from + at;
        let boundary = start == 0 || !bytes[start - 1].is_ascii_alphanumeric();
        let end = bytes[start..]
            .iter()
            .position(|&b| !(b.is_ascii_alphanumeric() || b == b'_' || b == b'-'))
            .map_or(bytes.len(), |p| start + p);
        if boundary && parse(&bytes[start..end]).is_some() {
            return true;
        }
        from = start + PREFIX.len();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_keys_parse_and_verify_against_their_hash() {
        let pepper = Pepper::new(b"0123456789abcdef0123").unwrap();
        let issued = issue();
        assert!(issued.key.starts_with("cf_"));
        assert_eq!(issued.secret.len(), 32);
        let presented = parse(issued.key.as_bytes()).unwrap();
        assert_eq!(presented.id, issued.id);
        let stored = pepper.hash(issued.secret.as_bytes());
        assert!(pepper.matches(presented.secret, &stored));
        assert!(!pepper.matches(b"wrong-secret-wrong-secret", &stored));
        let other = Pepper::new(b"another pepper, other hash").unwrap();
        assert!(!other.matches(presented.secret, &stored));
        assert_eq!(parse_hash_hex(&hash_hex(&stored)), Some(stored));
    }

    #[test]
    fn malformed_keys_are_not_keys() {
        for bad in [
            &b"cf_abc"[..],
            b"cf__0123456789abcdef",
            b"xx_abc_0123456789abcdef",
            b"cf_abc_short",
            b"cf_a b_0123456789abcdef",
            b"cf_abc_0123456789abcdef!",
        ] {
            assert!(parse(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn plaintext_keys_are_spotted_in_text() {
        let issued = issue();
        assert!(contains_key(&format!("hash = \"{}\"", issued.key)));
        assert!(!contains_key("path = \"/cf_docs\""));
        assert!(!contains_key("id = \"abc_cf_x\""));
        assert!(short_pepper_refused());
    }

    fn short_pepper_refused() -> bool {
        Pepper::new(b"short").is_err()
    }
}
