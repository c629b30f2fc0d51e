//! Signing keys for the `jwk new` and `token mint` commands and for tests: generating EC,
//! Ed25519 and HMAC keys, reading PEM private keys (RSA from openssl included), writing the
//! public JWK, and minting tokens with `jsonwebtoken` (an implementation independent of the
//! gateway's own verifier).

use super::keys::{random_bytes, Algorithm};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RsaKeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::PrivateKeyDer;

/// A private signing key.
pub enum SigningKey {
    /// PKCS#1 DER (what `jsonwebtoken` signs with) and the public modulus/exponent.
    Rsa {
        pkcs1: Vec<u8>,
        n: Vec<u8>,
        e: Vec<u8>,
    },
    /// PKCS#8 DER and the uncompressed public point.
    Ec { pkcs8: Vec<u8>, point: Vec<u8> },
    /// PKCS#8 DER and the public key.
    Ed { pkcs8: Vec<u8>, public: Vec<u8> },
    /// The shared secret.
    Hmac(Vec<u8>),
}

fn ec_alg(alg: Algorithm) -> Option<&'static signature::EcdsaSigningAlgorithm> {
    match alg {
        Algorithm::ES256 => Some(&signature::ECDSA_P256_SHA256_FIXED_SIGNING),
        Algorithm::ES384 => Some(&signature::ECDSA_P384_SHA384_FIXED_SIGNING),
        _ => None,
    }
}

/// Reads one DER element (tag, content) from the front of `input`.
fn der_element(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let tag = *input.first()?;
    let first = *input.get(1)? as usize;
    let (len, header) = if first < 0x80 {
        (first, 2)
    } else {
        let n = first & 0x7f;
        if n == 0 || n > 4 {
            return None;
        }
        let mut len = 0usize;
        for i in 0..n {
            len = (len << 8) | *input.get(2 + i)? as usize;
        }
        (len, 2 + n)
    };
    let content = input.get(header..header + len)?;
    Some((tag, content, &input[header + len..]))
}

/// `RSAPublicKey ::= SEQUENCE { modulus INTEGER, publicExponent INTEGER }` → (n, e).
fn rsa_public_components(der: &[u8]) -> Option<(Vec<u8>, Vec<u8>)> {
    let (_, seq, _) = der_element(der)?;
    let (_, n, rest) = der_element(seq)?;
    let (_, e, _) = der_element(rest)?;
    let strip = |v: &[u8]| {
        v.iter()
            .skip_while(|&&b| b == 0)
            .copied()
            .collect::<Vec<u8>>()
    };
    Some((strip(n), strip(e)))
}

/// The PKCS#1 key inside a PKCS#8 `PrivateKeyInfo`.
fn pkcs8_inner(der: &[u8]) -> Option<&[u8]> {
    let (_, info, _) = der_element(der)?;
    let (_, _version, rest) = der_element(info)?;
    let (_, _algorithm, rest) = der_element(rest)?;
    let (tag, key, _) = der_element(rest)?;
    (tag == 0x04).then_some(key)
}

impl SigningKey {
    /// Generates a key for `alg` (RSA keys cannot be generated here: make one with
    /// `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048` and read it).
    pub fn generate(alg: Algorithm) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        if let Some(ec) = ec_alg(alg) {
            let pkcs8 = EcdsaKeyPair::generate_pkcs8(ec, &rng).map_err(|e| e.to_string())?;
            return SigningKey::from_der(alg, pkcs8.as_ref());
        }
        match alg {
            Algorithm::EdDSA => {
                let pkcs8 = Ed25519KeyPair::generate_pkcs8(&rng).map_err(|e| e.to_string())?;
                SigningKey::from_der(alg, pkcs8.as_ref())
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                let mut secret = vec![0u8; 64];
                random_bytes(&mut secret);
                Ok(SigningKey::Hmac(secret))
            }
            _ => Err(format!(
                "{} keys cannot be generated here: create one with `openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out key.pem` and pass it with --key",
                alg.name()
            )),
        }
    }

    /// Reads a key for `alg` from DER (PKCS#8, or PKCS#1 for RSA).
    pub fn from_der(alg: Algorithm, der: &[u8]) -> Result<SigningKey, String> {
        let rng = SystemRandom::new();
        if let Some(ec) = ec_alg(alg) {
            let pair = EcdsaKeyPair::from_pkcs8(ec, der, &rng)
                .map_err(|e| format!("not a {} key: {e}", alg.name()))?;
            return Ok(SigningKey::Ec {
                pkcs8: der.to_vec(),
                point: pair.public_key().as_ref().to_vec(),
            });
        }
        match alg {
            Algorithm::EdDSA => {
                let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
                    .map_err(|e| format!("not an Ed25519 key: {e}"))?;
                Ok(SigningKey::Ed {
                    pkcs8: der.to_vec(),
                    public: pair.public_key().as_ref().to_vec(),
                })
            }
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => {
                Ok(SigningKey::Hmac(der.to_vec()))
            }
            _ => {
                let pkcs1 = match RsaKeyPair::from_der(der) {
                    Ok(_) => der.to_vec(),
                    Err(_) => pkcs8_inner(der).ok_or("not an RSA private key")?.to_vec(),
                };
                let pair =
                    RsaKeyPair::from_der(&pkcs1).map_err(|e| format!("not an RSA key: {e}"))?;
                let (n, e) = rsa_public_components(pair.public().as_ref())
                    .ok_or("unreadable RSA public key")?;
                Ok(SigningKey::Rsa { pkcs1, n, e })
            }
        }
    }

    /// Reads a key from a PEM file's text (HMAC keys: a file holding the base64url secret).
    pub fn from_pem(alg: Algorithm, text: &[u8]) -> Result<SigningKey, String> {
        if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
            let secret = URL_SAFE_NO_PAD
                .decode(text.trim_ascii())
                .map_err(|_| "an HMAC key file holds the base64url secret")?;
            return Ok(SigningKey::Hmac(secret));
        }
        let der = PrivateKeyDer::from_pem_slice(text)
            .map_err(|e| format!("not a PEM private key: {e}"))?;
        SigningKey::from_der(alg, der.secret_der())
    }

    /// The private key as written by `jwk new --out-private`.
    pub fn private_pem(&self) -> String {
        let (label, der) = match self {
            SigningKey::Rsa { pkcs1, .. } => ("RSA PRIVATE KEY", pkcs1),
            SigningKey::Ec { pkcs8, .. } | SigningKey::Ed { pkcs8, .. } => ("PRIVATE KEY", pkcs8),
            SigningKey::Hmac(secret) => return format!("{}\n", URL_SAFE_NO_PAD.encode(secret)),
        };
        let b64 = base64::engine::general_purpose::STANDARD.encode(der);
        let mut out = format!("-----BEGIN {label}-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).unwrap_or(""));
            out.push('\n');
        }
        out.push_str(&format!("-----END {label}-----\n"));
        out
    }

    /// The JWK a verifier needs (for HMAC this is the secret itself).
    pub fn jwk(&self, alg: Algorithm, kid: &str) -> String {
        let b = |v: &[u8]| URL_SAFE_NO_PAD.encode(v);
        let common = format!(
            "\"kid\":\"{kid}\",\"alg\":\"{}\",\"use\":\"sig\"",
            alg.name()
        );
        match self {
            SigningKey::Rsa { n, e, .. } => format!(
                "{{\"kty\":\"RSA\",{common},\"n\":\"{}\",\"e\":\"{}\"}}",
                b(n),
                b(e)
            ),
            SigningKey::Ec { point, .. } => {
                let size = (point.len() - 1) / 2;
                let crv = if size == 32 { "P-256" } else { "P-384" };
                format!(
                    "{{\"kty\":\"EC\",{common},\"crv\":\"{crv}\",\"x\":\"{}\",\"y\":\"{}\"}}",
                    b(&point[1..1 + size]),
                    b(&point[1 + size..])
                )
            }
            SigningKey::Ed { public, .. } => {
                format!(
                    "{{\"kty\":\"OKP\",{common},\"crv\":\"Ed25519\",\"x\":\"{}\"}}",
                    b(public)
                )
            }
            SigningKey::Hmac(secret) => {
                format!("{{\"kty\":\"oct\",{common},\"k\":\"{}\"}}", b(secret))
            }
        }
    }

    /// Mints a compact JWS over `claims` (a JSON object) with `jsonwebtoken`.
    pub fn mint(
        &self,
        alg: Algorithm,
        kid: Option<&str>,
        claims: &serde_json::Value,
    ) -> Result<String, String> {
        use jsonwebtoken::{Algorithm as A, EncodingKey, Header};
        let jalg = match alg {
            Algorithm::HS256 => A::HS256,
            Algorithm::HS384 => A::HS384,
            Algorithm::HS512 => A::HS512,
            Algorithm::RS256 => A::RS256,
            Algorithm::RS384 => A::RS384,
            Algorithm::RS512 => A::RS512,
            Algorithm::PS256 => A::PS256,
            Algorithm::PS384 => A::PS384,
            Algorithm::PS512 => A::PS512,
            Algorithm::ES256 => A::ES256,
            Algorithm::ES384 => A::ES384,
            Algorithm::EdDSA => A::EdDSA,
        };
        let key = match self {
            SigningKey::Rsa { pkcs1, .. } => EncodingKey::from_rsa_der(pkcs1),
            SigningKey::Ec { pkcs8, .. } => EncodingKey::from_ec_der(pkcs8),
            SigningKey::Ed { pkcs8, .. } => EncodingKey::from_ed_der(pkcs8),
            SigningKey::Hmac(secret) => EncodingKey::from_secret(secret),
        };
        let mut header = Header::new(jalg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, &key).map_err(|e| e.to_string())
    }
}
