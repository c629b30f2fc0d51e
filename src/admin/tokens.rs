//! Admin tokens: how they are made (`credentialflow admin token new`), kept (only their SHA-256
//! in the config) and checked (every configured token compared in constant time), and what each
//! role may do.

use base64::Engine as _;
use ring::rand::SecureRandom as _;

/// The prefix of every admin token (so secret scanners can find leaked ones).
pub const PREFIX: &str = "cfadm_";

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Everything.
    Admin,
    /// Read, and approve or reject subscriptions.
    Operator,
    /// Read only.
    Auditor,
}

/// What a request needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    Read,
    Approve,
    Write,
}

impl Role {
    pub fn from_name(name: &str) -> Option<Role> {
        match name {
            "admin" => Some(Role::Admin),
            "operator" => Some(Role::Operator),
            "auditor" => Some(Role::Auditor),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Auditor => "auditor",
        }
    }

    pub fn allows(self, need: Need) -> bool {
        match self {
            Role::Admin => true,
            Role::Operator => need != Need::Write,
            Role::Auditor => need == Need::Read,
        }
    }
}

/// SHA-256 of a token.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TokenHash(pub [u8; 32]);

impl std::fmt::Debug for TokenHash {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenHash(…)")
    }
}

impl TokenHash {
    pub fn of(token: &[u8]) -> TokenHash {
        let digest = ring::digest::digest(&ring::digest::SHA256, token);
        let mut hash = [0; 32];
        hash.copy_from_slice(digest.as_ref());
        TokenHash(hash)
    }

    pub fn parse(hex: &str) -> Option<TokenHash> {
        crate::auth::api_key::parse_hash_hex(hex).map(TokenHash)
    }

    pub fn hex(&self) -> String {
        crate::auth::api_key::hash_hex(&self.0)
    }
}

/// A new random token and its hash.
pub fn generate() -> (String, TokenHash) {
    let mut bytes = [0u8; 32];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    let token = format!(
        "{PREFIX}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    );
    let hash = TokenHash::of(token.as_bytes());
    (token, hash)
}

/// The index of the token in `hashes` that `presented` is, comparing against every one in
/// constant time (no early exit, so timing tells nothing about which or how many matched).
pub fn find<'t>(presented: &[u8], hashes: impl Iterator<Item = &'t TokenHash>) -> Option<usize> {
    let presented = TokenHash::of(presented);
    let mut found = None;
    for (at, hash) in hashes.enumerate() {
        let equal = constant_time_eq(&presented.0, &hash.0);
        if equal && found.is_none() {
            found = Some(at);
        }
    }
    found
}

/// Equality of two hashes that reads every byte whatever differs.
fn constant_time_eq(a: &[u8; 32], b: &[u8; 32]) -> bool {
    let difference = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(difference) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_tokens_are_found_by_their_hash_only() {
        let (token, hash) = generate();
        assert!(token.starts_with(PREFIX) && token.len() == PREFIX.len() + 43);
        let (_, other) = generate();
        let hashes = [other, hash];
        assert_eq!(find(token.as_bytes(), hashes.iter()), Some(1));
        assert_eq!(find(b"cfadm_guess", hashes.iter()), None);
        assert_eq!(TokenHash::parse(&hash.hex()), Some(hash));
        assert_eq!(format!("{hash:?}"), "TokenHash(…)");
    }

    #[test]
    fn roles_allow_what_the_contract_says() {
        assert!(Role::Admin.allows(Need::Write));
        assert!(Role::Operator.allows(Need::Approve) && !Role::Operator.allows(Need::Write));
        assert!(Role::Auditor.allows(Need::Read) && !Role::Auditor.allows(Need::Approve));
    }
}
