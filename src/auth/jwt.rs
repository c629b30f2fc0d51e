//! JWT bearer tokens (JWS compact): split the token where it lies in the request, decode and
//! parse its header and claims with simd-json from the core's scratch buffers (no allocation
//! once warm), pick the issuer by `iss` and the key by `kid`, verify the signature with `ring`
//! over the `header.payload` bytes in place, then check `exp`/`nbf`/`iat` with leeway, `aud`
//! and the required claims.

use super::keys::Algorithm;
use super::{Issuer, Reason};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use simd_json::tape::{Node, Tape};
use simd_json::StaticNode;

/// Largest signature accepted (RSA-8192).
const MAX_SIGNATURE: usize = 1024;

/// Per-core buffers the token is decoded and parsed in.
pub struct Scratch {
    header: Vec<u8>,
    payload: Vec<u8>,
    buffers: simd_json::Buffers,
    tape: Option<Tape<'static>>,
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch {
            header: Vec::with_capacity(256),
            payload: Vec::with_capacity(1024),
            buffers: simd_json::Buffers::new(1024),
            tape: Some(Tape::null().reset()),
        }
    }
}

/// The three parts of a compact JWS.
pub struct Parts<'t> {
    pub signing_input: &'t [u8],
    pub header: &'t [u8],
    pub payload: &'t [u8],
    pub signature: &'t [u8],
}

/// Splits `header.payload.signature`; `None` unless there are exactly three non-empty parts
/// of base64url characters.
pub fn split(token: &[u8]) -> Option<Parts<'_>> {
    let first = token.iter().position(|&b| b == b'.')?;
    let second = first + 1 + token[first + 1..].iter().position(|&b| b == b'.')?;
    let parts = Parts {
        signing_input: &token[..second],
        header: &token[..first],
        payload: &token[first + 1..second],
        signature: &token[second + 1..],
    };
    let b64url = |p: &[u8]| {
        !p.is_empty()
            && p.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    (b64url(parts.header) && b64url(parts.payload) && b64url(parts.signature)).then_some(parts)
}

/// The protected header fields the gateway reads.
pub struct Header {
    pub alg: Algorithm,
    kid: [u8; MAX_KID],
    /// `None` without a `kid`.
    kid_len: Option<usize>,
}

/// Longest `kid` accepted.
const MAX_KID: usize = 128;

/// Decodes and checks the protected header: a known `alg` (never `none`), no `crit`.
pub fn read_header(scratch: &mut Scratch, encoded: &[u8]) -> Result<Header, Reason> {
    scratch.header.clear();
    URL_SAFE_NO_PAD
        .decode_vec(encoded, &mut scratch.header)
        .map_err(|_| Reason::InvalidCredential)?;
    let mut alg = None;
    let mut kid = [0u8; MAX_KID];
    let mut kid_len = None;
    with_object(scratch, true, |object| {
        for (name, value) in object {
            match name {
                "alg" => {
                    alg = value
                        .as_str()
                        .and_then(|a| Algorithm::from_name(a.as_bytes()))
                }
                "kid" => {
                    let s = value.as_str().ok_or(Reason::InvalidCredential)?;
                    if s.len() > MAX_KID {
                        return Err(Reason::UnknownKey);
                    }
                    kid[..s.len()].copy_from_slice(s.as_bytes());
                    kid_len = Some(s.len());
                }
                // No extension is understood, so any critical one refuses the token (RFC 7515 §4.1.11).
                "crit" => return Err(Reason::InvalidCredential),
                _ => {}
            }
        }
        Ok(())
    })?;
    let alg = alg.ok_or(Reason::InvalidCredential)?;
    Ok(Header { alg, kid, kid_len })
}

impl Header {
    /// The `kid`, when the token has one.
    pub fn kid(&self) -> Option<&[u8]> {
        self.kid_len.map(|len| &self.kid[..len])
    }
}

/// Runs `f` over the top-level members of the JSON object in the header (`header` true) or
/// payload buffer.
fn with_object<R>(
    scratch: &mut Scratch,
    header: bool,
    f: impl for<'a> FnOnce(ObjectIter<'_, 'a>) -> Result<R, Reason>,
) -> Result<R, Reason> {
    let Scratch {
        header: h,
        payload,
        buffers,
        tape,
    } = scratch;
    let input: &mut [u8] = if header { h } else { payload };
    let mut local: Tape<'_> = tape.take().unwrap_or_else(|| Tape::null().reset()).reset();
    let result = match simd_json::fill_tape(input, buffers, &mut local) {
        Ok(()) => match local.0.first() {
            Some(Node::Object { .. }) => f(ObjectIter {
                nodes: &local.0,
                at: 1,
            }),
            _ => Err(Reason::InvalidCredential),
        },
        Err(_) => Err(Reason::InvalidCredential),
    };
    *tape = Some(local.reset());
    result
}

/// The members of a tape object, in order.
#[derive(Clone)]
pub struct ObjectIter<'t, 'i> {
    nodes: &'t [Node<'i>],
    at: usize,
}

impl<'t, 'i> Iterator for ObjectIter<'t, 'i> {
    type Item = (&'i str, Claim<'t, 'i>);

    fn next(&mut self) -> Option<Self::Item> {
        let Node::Object { count, .. } = self.nodes[0] else {
            return None;
        };
        if self.at > count {
            return None;
        }
        let Node::String(name) = self.nodes[self.at] else {
            return None;
        };
        let value_at = self.at + 1;
        let width = match self.nodes.get(value_at)? {
            Node::Object { count, .. } | Node::Array { count, .. } => count + 1,
            _ => 1,
        };
        self.at = value_at + width;
        Some((
            name,
            Claim {
                nodes: &self.nodes[value_at..value_at + width],
            },
        ))
    }
}

/// One claim's value on the tape.
#[derive(Clone, Copy)]
pub struct Claim<'t, 'i> {
    nodes: &'t [Node<'i>],
}

impl<'t, 'i> Claim<'t, 'i> {
    pub fn as_str(&self) -> Option<&'i str> {
        match self.nodes[0] {
            Node::String(s) => Some(s),
            _ => None,
        }
    }

    /// A NumericDate (integer or fractional seconds).
    pub fn as_seconds(&self) -> Option<i64> {
        match self.nodes[0] {
            Node::Static(StaticNode::I64(n)) => Some(n),
            Node::Static(StaticNode::U64(n)) => i64::try_from(n).ok(),
            Node::Static(StaticNode::F64(f)) if f.is_finite() => Some(f.floor() as i64),
            _ => None,
        }
    }

    /// The strings of an array (other elements skipped), or the string itself.
    pub fn strings(&self) -> impl Iterator<Item = &'i str> + '_ {
        let (start, items) = match self.nodes[0] {
            Node::Array { .. } => (1, &self.nodes[1..]),
            Node::String(_) => (0, &self.nodes[..1]),
            _ => (0, &self.nodes[..0]),
        };
        let _ = start;
        items.iter().filter_map(|n| match n {
            Node::String(s) => Some(*s),
            _ => None,
        })
    }

    /// Scalar values as text (strings as they are, numbers and booleans rendered); `None`
    /// for null, arrays and objects.
    pub fn scalar_text(&self, out: &mut String) -> bool {
        use std::fmt::Write as _;
        out.clear();
        match self.nodes[0] {
            Node::String(s) => out.push_str(s),
            Node::Static(StaticNode::I64(n)) => {
                let _ = write!(out, "{n}");
            }
            Node::Static(StaticNode::U64(n)) => {
                let _ = write!(out, "{n}");
            }
            Node::Static(StaticNode::F64(f)) => {
                let _ = write!(out, "{f}");
            }
            Node::Static(StaticNode::Bool(b)) => out.push_str(if b { "true" } else { "false" }),
            _ => return false,
        }
        true
    }

    pub fn is_present(&self) -> bool {
        !matches!(self.nodes[0], Node::Static(StaticNode::Null))
    }
}

/// Most scalar claims kept on an identity, and how deep nested objects are followed.
const MAX_SCALARS: usize = 64;
const MAX_DEPTH: usize = 4;

/// Adds the scalar claims under `name` to `out` as text: the value itself, or the members of a
/// nested object as `name.member` (arrays are skipped).
pub fn collect_scalars(
    name: &str,
    value: Claim<'_, '_>,
    text: &mut String,
    out: &mut Vec<(Box<str>, Box<str>)>,
) {
    collect_at(name, value, text, out, 0);
}

fn collect_at(
    name: &str,
    value: Claim<'_, '_>,
    text: &mut String,
    out: &mut Vec<(Box<str>, Box<str>)>,
    depth: usize,
) {
    if out.len() >= MAX_SCALARS {
        return;
    }
    if value.scalar_text(text) {
        out.push((name.into(), text.as_str().into()));
        return;
    }
    if depth >= MAX_DEPTH {
        return;
    }
    if let Node::Object { .. } = value.nodes[0] {
        let members = ObjectIter {
            nodes: value.nodes,
            at: 1,
        };
        for (member, inner) in members {
            collect_at(&format!("{name}.{member}"), inner, text, out, depth + 1);
        }
    }
}

/// Decodes the signature into a stack buffer; `None` when it is not base64url or too long.
pub fn decode_signature(encoded: &[u8], out: &mut [u8; MAX_SIGNATURE]) -> Option<usize> {
    if encoded.len() > MAX_SIGNATURE * 4 / 3 + 4 {
        return None;
    }
    URL_SAFE_NO_PAD.decode_slice(encoded, out).ok()
}

/// Decodes the payload into scratch and walks its claims with `f`.
pub fn with_claims<R>(
    scratch: &mut Scratch,
    encoded: &[u8],
    f: impl for<'a> FnOnce(ObjectIter<'_, 'a>) -> Result<R, Reason>,
) -> Result<R, Reason> {
    scratch.payload.clear();
    URL_SAFE_NO_PAD
        .decode_vec(encoded, &mut scratch.payload)
        .map_err(|_| Reason::InvalidCredential)?;
    with_object(scratch, false, f)
}

/// The registered claims the checks need, read in one pass.
#[derive(Default)]
pub struct TimeClaims {
    pub exp: Option<i64>,
    pub nbf: Option<i64>,
    pub iat: Option<i64>,
}

/// `exp`, `nbf` and `iat` against `now` with the issuer's leeway.
pub fn check_times(times: &TimeClaims, issuer: &Issuer, now: i64) -> Result<(), Reason> {
    let leeway = issuer.leeway;
    if let Some(exp) = times.exp {
        if now >= exp.saturating_add(leeway) {
            return Err(Reason::Expired);
        }
    }
    if let Some(nbf) = times.nbf {
        if now.saturating_add(leeway) < nbf {
            return Err(Reason::NotYetValid);
        }
    }
    if let Some(iat) = times.iat {
        if now.saturating_add(leeway) < iat {
            return Err(Reason::NotYetValid);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_needs_three_base64url_parts() {
        assert!(split(b"a.b.c").is_some());
        assert!(split(b"a.b.").is_none(), "empty signature (alg none)");
        assert!(split(b"a.b").is_none());
        assert!(split(b"a.b.c.d").is_none());
        assert!(split(b"a+.b.c").is_none());
        let p = split(b"hh.pp.ss").unwrap();
        assert_eq!(p.signing_input, b"hh.pp");
    }

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    #[test]
    fn headers_name_alg_and_kid_and_refuse_none_and_crit() {
        let mut scratch = Scratch::default();
        let h = read_header(
            &mut scratch,
            b64(r#"{"alg":"ES256","kid":"k1"}"#).as_bytes(),
        )
        .unwrap();
        assert_eq!(h.alg, Algorithm::ES256);
        assert_eq!(h.kid(), Some(&b"k1"[..]));
        let h = read_header(
            &mut scratch,
            b64(r#"{"typ":"JWT","alg":"HS256"}"#).as_bytes(),
        )
        .unwrap();
        assert!(h.kid().is_none());
        for bad in [
            r#"{"alg":"none"}"#,
            r#"{"alg":"HS256","crit":["exp"]}"#,
            r#"{"kid":"x"}"#,
            r#"["alg","HS256"]"#,
            r#"{"alg":"HS256""#,
        ] {
            assert!(
                read_header(&mut scratch, b64(bad).as_bytes()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn claims_are_walked_in_one_pass() {
        let mut scratch = Scratch::default();
        let payload = b64(
            r#"{"sub":"u1","aud":["a","b"],"exp":17e8,"n":{"x":[1,2]},"scope":"r w","ok":true}"#,
        );
        let (sub, aud, exp, scope, ok) = with_claims(&mut scratch, payload.as_bytes(), |claims| {
            let mut out = (
                String::new(),
                Vec::new(),
                None,
                String::new(),
                String::new(),
            );
            for (name, value) in claims {
                match name {
                    "sub" => out.0 = value.as_str().unwrap().to_string(),
                    "aud" => out.1 = value.strings().map(str::to_string).collect(),
                    "exp" => out.2 = value.as_seconds(),
                    "scope" => out.3 = value.as_str().unwrap().to_string(),
                    "ok" => {
                        value.scalar_text(&mut out.4);
                    }
                    _ => {}
                }
            }
            Ok(out)
        })
        .unwrap();
        assert_eq!(sub, "u1");
        assert_eq!(aud, vec!["a", "b"]);
        assert_eq!(exp, Some(1_700_000_000));
        assert_eq!(scope, "r w");
        assert_eq!(ok, "true");
    }
}
