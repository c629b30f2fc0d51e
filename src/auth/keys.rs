//! JSON Web Keys as verification keys: the JWS algorithms, what each key type may verify (the
//! algorithm is pinned by the key, never chosen by the token), and signature verification with
//! `ring` over the signing input where it lies.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use ring::{hmac, rand};

/// A JWS `alg` the gateway verifies. `none` and anything else is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Algorithm {
    HS256,
    HS384,
    HS512,
    RS256,
    RS384,
    RS512,
    PS256,
    PS384,
    PS512,
    ES256,
    ES384,
    EdDSA,
}

impl Algorithm {
    pub const ALL: [Algorithm; 12] = [
        Algorithm::HS256,
        Algorithm::HS384,
        Algorithm::HS512,
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::PS384,
        Algorithm::PS512,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];

    /// The algorithm named by a JWS `alg` value (exact, case-sensitive).
    pub fn from_name(name: &[u8]) -> Option<Algorithm> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name().as_bytes() == name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Algorithm::HS256 => "HS256",
            Algorithm::HS384 => "HS384",
            Algorithm::HS512 => "HS512",
            Algorithm::RS256 => "RS256",
            Algorithm::RS384 => "RS384",
            Algorithm::RS512 => "RS512",
            Algorithm::PS256 => "PS256",
            Algorithm::PS384 => "PS384",
            Algorithm::PS512 => "PS512",
            Algorithm::ES256 => "ES256",
            Algorithm::ES384 => "ES384",
            Algorithm::EdDSA => "EdDSA",
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

/// A set of algorithms (bit per [`Algorithm`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AlgorithmSet(u16);

impl AlgorithmSet {
    pub const ANY: AlgorithmSet = AlgorithmSet(0x0fff);

    pub fn of(algorithms: &[Algorithm]) -> AlgorithmSet {
        AlgorithmSet(algorithms.iter().fold(0, |bits, a| bits | a.bit()))
    }

    pub fn contains(self, algorithm: Algorithm) -> bool {
        self.0 & algorithm.bit() != 0
    }

    pub fn intersect(self, other: AlgorithmSet) -> AlgorithmSet {
        AlgorithmSet(self.0 & other.0)
    }

    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// The public (or, for HMAC, shared) material of one key.
// One value per key of a JWKS: the HMAC variant's size does not matter.
#[allow(clippy::large_enum_variant)]
pub enum KeyMaterial {
    /// `kty: oct`: one ring key per HMAC digest, built once.
    Hmac {
        sha256: hmac::Key,
        sha384: hmac::Key,
        sha512: hmac::Key,
    },
    /// `kty: RSA`: big-endian modulus and exponent.
    Rsa { n: Box<[u8]>, e: Box<[u8]> },
    /// `kty: EC`, `crv: P-256`: the uncompressed point (0x04 ‖ x ‖ y).
    P256(Box<[u8]>),
    /// `kty: EC`, `crv: P-384`.
    P384(Box<[u8]>),
    /// `kty: OKP`, `crv: Ed25519`.
    Ed25519([u8; 32]),
}

impl std::fmt::Debug for KeyMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            KeyMaterial::Hmac { .. } => "Hmac(redacted)",
            KeyMaterial::Rsa { .. } => "Rsa",
            KeyMaterial::P256(_) => "P256",
            KeyMaterial::P384(_) => "P384",
            KeyMaterial::Ed25519(_) => "Ed25519",
        })
    }
}

/// One verification key: its id, the algorithms it may verify, its material.
#[derive(Debug)]
pub struct VerifyKey {
    pub kid: Option<Box<str>>,
    /// What the key type (and the JWK's own `alg`, when given) allows, intersected with the
    /// issuer's allow-list.
    pub algorithms: AlgorithmSet,
    pub material: KeyMaterial,
}

/// Why a JWK cannot be used.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KeyError {
    #[error("unsupported key type `{0}`")]
    UnsupportedType(String),
    #[error("unsupported curve `{0}`")]
    UnsupportedCurve(String),
    #[error("member `{0}` is missing or not base64url")]
    BadMember(&'static str),
    #[error("`alg` `{0}` is not one this key type can verify")]
    AlgorithmMismatch(String),
    #[error("key is too short: {0}")]
    TooShort(&'static str),
    #[error("key `use` is `{0}`, not `sig`")]
    NotForSignatures(String),
}

/// What a JWK says, as strings (parsed by the JWKS reader).
#[derive(Debug, Default, Clone)]
pub struct JwkFields {
    pub kty: String,
    pub kid: Option<String>,
    pub alg: Option<String>,
    pub use_: Option<String>,
    pub crv: Option<String>,
    pub n: Option<String>,
    pub e: Option<String>,
    pub x: Option<String>,
    pub y: Option<String>,
    pub k: Option<String>,
}

fn member(value: &Option<String>, name: &'static str) -> Result<Vec<u8>, KeyError> {
    let text = value.as_deref().ok_or(KeyError::BadMember(name))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(text.trim_end_matches('='))
        .map_err(|_| KeyError::BadMember(name))?;
    if bytes.is_empty() {
        return Err(KeyError::BadMember(name));
    }
    Ok(bytes)
}

impl VerifyKey {
    /// Builds a key from JWK members, pinned to what its type can verify and to `allowed`.
    pub fn from_jwk(jwk: &JwkFields, allowed: AlgorithmSet) -> Result<VerifyKey, KeyError> {
        use Algorithm::*;
        if let Some(use_) = &jwk.use_ {
            if use_ != "sig" {
                return Err(KeyError::NotForSignatures(use_.clone()));
            }
        }
        let (material, by_type) = match jwk.kty.as_str() {
            "oct" => {
                let k = member(&jwk.k, "k")?;
                if k.len() < 32 {
                    return Err(KeyError::TooShort("HMAC keys need at least 32 bytes"));
                }
                let material = KeyMaterial::Hmac {
                    sha256: hmac::Key::new(hmac::HMAC_SHA256, &k),
                    sha384: hmac::Key::new(hmac::HMAC_SHA384, &k),
                    sha512: hmac::Key::new(hmac::HMAC_SHA512, &k),
                };
                (material, AlgorithmSet::of(&[HS256, HS384, HS512]))
            }
            "RSA" => {
                let n = strip_leading_zeros(member(&jwk.n, "n")?);
                let e = strip_leading_zeros(member(&jwk.e, "e")?);
                if n.len() < 256 {
                    return Err(KeyError::TooShort("RSA keys need at least 2048 bits"));
                }
                let material = KeyMaterial::Rsa {
                    n: n.into(),
                    e: e.into(),
                };
                (
                    material,
                    AlgorithmSet::of(&[RS256, RS384, RS512, PS256, PS384, PS512]),
                )
            }
            "EC" => {
                let crv = jwk.crv.as_deref().unwrap_or("");
                let (size, alg) = match crv {
                    "P-256" => (32, ES256),
                    "P-384" => (48, ES384),
                    other => return Err(KeyError::UnsupportedCurve(other.to_string())),
                };
                let x = member(&jwk.x, "x")?;
                let y = member(&jwk.y, "y")?;
                if x.len() != size {
                    return Err(KeyError::BadMember("x"));
                }
                if y.len() != size {
                    return Err(KeyError::BadMember("y"));
                }
                let mut point = Vec::with_capacity(1 + 2 * size);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                let material = if alg == ES256 {
                    KeyMaterial::P256(point.into())
                } else {
                    KeyMaterial::P384(point.into())
                };
                (material, AlgorithmSet::of(&[alg]))
            }
            "OKP" => {
                let crv = jwk.crv.as_deref().unwrap_or("");
                if crv != "Ed25519" {
                    return Err(KeyError::UnsupportedCurve(crv.to_string()));
                }
                let x: [u8; 32] = member(&jwk.x, "x")?
                    .try_into()
                    .map_err(|_| KeyError::BadMember("x"))?;
                (KeyMaterial::Ed25519(x), AlgorithmSet::of(&[EdDSA]))
            }
            other => return Err(KeyError::UnsupportedType(other.to_string())),
        };
        let mut algorithms = by_type.intersect(allowed);
        if let Some(alg) = &jwk.alg {
            match Algorithm::from_name(alg.as_bytes()) {
                Some(a) if by_type.contains(a) => {
                    algorithms = algorithms.intersect(AlgorithmSet::of(&[a]))
                }
                _ => return Err(KeyError::AlgorithmMismatch(alg.clone())),
            }
        }
        Ok(VerifyKey {
            kid: jwk.kid.as_deref().map(Into::into),
            algorithms,
            material,
        })
    }

    /// Verifies `signature` over `signing_input` with `alg`. False when the key may not verify
    /// `alg` (pinning) or the signature is wrong.
    pub fn verify(&self, alg: Algorithm, signing_input: &[u8], signature: &[u8]) -> bool {
        use Algorithm::*;
        if !self.algorithms.contains(alg) {
            return false;
        }
        match (&self.material, alg) {
            (KeyMaterial::Hmac { sha256, .. }, HS256) => {
                hmac::verify(sha256, signing_input, signature).is_ok()
            }
            (KeyMaterial::Hmac { sha384, .. }, HS384) => {
                hmac::verify(sha384, signing_input, signature).is_ok()
            }
            (KeyMaterial::Hmac { sha512, .. }, HS512) => {
                hmac::verify(sha512, signing_input, signature).is_ok()
            }
            (KeyMaterial::Rsa { n, e }, _) => {
                let params: &signature::RsaParameters = match alg {
                    RS256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    RS384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    RS512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    PS256 => &signature::RSA_PSS_2048_8192_SHA256,
                    PS384 => &signature::RSA_PSS_2048_8192_SHA384,
                    PS512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, signing_input, signature)
                    .is_ok()
            }
            (KeyMaterial::P256(point), ES256) => {
                UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point)
                    .verify(signing_input, signature)
                    .is_ok()
            }
            (KeyMaterial::P384(point), ES384) => {
                UnparsedPublicKey::new(&signature::ECDSA_P384_SHA384_FIXED, point)
                    .verify(signing_input, signature)
                    .is_ok()
            }
            (KeyMaterial::Ed25519(x), EdDSA) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(signing_input, signature)
                .is_ok(),
            _ => false,
        }
    }

    /// The algorithm to verify with: the token's `alg` when this key may verify it.
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algorithms.contains(alg)
    }
}

fn strip_leading_zeros(mut bytes: Vec<u8>) -> Vec<u8> {
    let zeros = bytes.iter().take_while(|&&b| b == 0).count();
    bytes.drain(..zeros.min(bytes.len().saturating_sub(1)));
    bytes
}

/// Fills `out` with random bytes from the system generator.
pub fn random_bytes(out: &mut [u8]) {
    use rand::SecureRandom as _;
    rand::SystemRandom::new()
        .fill(out)
        .expect("the system random generator is available");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn oct(k: &[u8], alg: Option<&str>) -> JwkFields {
        JwkFields {
            kty: "oct".into(),
            k: Some(URL_SAFE_NO_PAD.encode(k)),
            alg: alg.map(Into::into),
            ..JwkFields::default()
        }
    }

    #[test]
    fn algorithm_names_round_trip_and_none_is_unknown() {
        for a in Algorithm::ALL {
            assert_eq!(Algorithm::from_name(a.name().as_bytes()), Some(a));
        }
        assert_eq!(Algorithm::from_name(b"none"), None);
        assert_eq!(Algorithm::from_name(b"hs256"), None);
        assert_eq!(Algorithm::from_name(b"ES512"), None);
    }

    #[test]
    fn hmac_key_is_pinned_to_hmac_and_to_its_alg() {
        let key = VerifyKey::from_jwk(&oct(&[7; 32], Some("HS256")), AlgorithmSet::ANY).unwrap();
        assert!(key.allows(Algorithm::HS256));
        assert!(!key.allows(Algorithm::HS512));
        assert!(!key.allows(Algorithm::RS256));
        let tag = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &[7; 32]), b"a.b");
        assert!(key.verify(Algorithm::HS256, b"a.b", tag.as_ref()));
        assert!(!key.verify(Algorithm::HS256, b"a.c", tag.as_ref()));
    }

    #[test]
    fn short_hmac_keys_and_mismatched_alg_are_refused() {
        assert!(matches!(
            VerifyKey::from_jwk(&oct(&[1; 16], None), AlgorithmSet::ANY),
            Err(KeyError::TooShort(_))
        ));
        assert!(matches!(
            VerifyKey::from_jwk(&oct(&[1; 32], Some("RS256")), AlgorithmSet::ANY),
            Err(KeyError::AlgorithmMismatch(_))
        ));
    }

    #[test]
    fn issuer_allow_list_narrows_the_key() {
        let allowed = AlgorithmSet::of(&[Algorithm::HS384]);
        let key = VerifyKey::from_jwk(&oct(&[7; 48], None), allowed).unwrap();
        assert!(key.allows(Algorithm::HS384));
        assert!(!key.allows(Algorithm::HS256));
    }
}
