//! Pre-built request bytes. Every request the generator sends is one of a few complete byte
//! strings built once before the run; with a header file there is one variant per line and
//! request `i` uses variant `i mod n`.

use crate::error::Error;
use crate::target::Target;
use std::path::Path;

/// The complete requests to send, built once.
#[derive(Debug, Clone)]
pub struct RequestSet {
    variants: Vec<Box<[u8]>>,
    /// True for HEAD: responses have no body whatever their framing headers say.
    pub head: bool,
}

impl RequestSet {
    /// Builds one request per rotating header line (or a single request without any).
    pub fn build(
        method: &str,
        target: &Target,
        headers: &[String],
        rotating: &[String],
        body: Option<&[u8]>,
    ) -> Result<RequestSet, Error> {
        check_method(method)?;
        for header in headers {
            check_header(header).map_err(|reason| Error::Option {
                option: "--header",
                value: header.clone(),
                reason,
            })?;
        }
        let host = target.host_header();
        let build_one = |extra: Option<&str>| {
            let mut out = Vec::with_capacity(256 + body.map_or(0, <[u8]>::len));
            out.extend_from_slice(method.as_bytes());
            out.push(b' ');
            out.extend_from_slice(target.path.as_bytes());
            out.extend_from_slice(b" HTTP/1.1\r\n");
            let all = headers.iter().map(String::as_str).chain(extra);
            if !all
                .clone()
                .any(|h| header_name(h).eq_ignore_ascii_case("host"))
            {
                out.extend_from_slice(b"Host: ");
                out.extend_from_slice(host.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            for line in all {
                out.extend_from_slice(line.trim().as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            if let Some(body) = body {
                out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
                out.extend_from_slice(body);
            } else {
                out.extend_from_slice(b"\r\n");
            }
            out.into_boxed_slice()
        };
        let variants = if rotating.is_empty() {
            vec![build_one(None)]
        } else {
            rotating.iter().map(|line| build_one(Some(line))).collect()
        };
        Ok(RequestSet {
            variants,
            head: method.eq_ignore_ascii_case("HEAD"),
        })
    }

    /// The bytes of request number `i`.
    #[inline]
    pub fn get(&self, i: usize) -> &[u8] {
        &self.variants[i % self.variants.len()]
    }

    /// How many distinct requests there are.
    pub fn len(&self) -> usize {
        self.variants.len()
    }

    /// Never true: there is always at least one request.
    pub fn is_empty(&self) -> bool {
        self.variants.is_empty()
    }
}

/// Reads a header file: one full header line per non-empty line.
pub fn load_header_file(path: &Path) -> Result<Vec<String>, Error> {
    let text =
        std::fs::read_to_string(path).map_err(|err| Error::file("header file", path, err))?;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim_end_matches('\r');
        if line.trim().is_empty() {
            continue;
        }
        check_header(line).map_err(|reason| {
            Error::file(
                "header file",
                path,
                format!("line {}: {reason}", number + 1),
            )
        })?;
        lines.push(line.trim().to_string());
    }
    if lines.is_empty() {
        return Err(Error::file("header file", path, "no header lines"));
    }
    Ok(lines)
}

fn header_name(line: &str) -> &str {
    line.split_once(':').map_or("", |(name, _)| name.trim())
}

/// Checks that `line` is `Name: value` with a token name and no control characters.
pub fn check_header(line: &str) -> Result<(), String> {
    let (name, value) = line
        .split_once(':')
        .ok_or_else(|| "expected 'Name: value'".to_string())?;
    if name.is_empty() || !name.bytes().all(is_token_byte) {
        return Err(format!("bad header name '{name}'"));
    }
    if value.bytes().any(|b| (b < b' ' && b != b'\t') || b == 0x7f) {
        return Err("control characters in header value".into());
    }
    Ok(())
}

fn check_method(method: &str) -> Result<(), Error> {
    if method.is_empty() || !method.bytes().all(is_token_byte) {
        return Err(Error::Option {
            option: "--method",
            value: method.to_string(),
            reason: "not an HTTP method token".into(),
        });
    }
    Ok(())
}

fn is_token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> Target {
        Target::parse("http://127.0.0.1:8080/p?q=1").unwrap()
    }

    #[test]
    fn builds_a_plain_get() {
        let set = RequestSet::build("GET", &target(), &[], &[], None).unwrap();
        assert_eq!(set.len(), 1);
        assert_eq!(
            set.get(7),
            b"GET /p?q=1 HTTP/1.1\r\nHost: 127.0.0.1:8080\r\n\r\n".as_slice()
        );
        assert!(!set.head);
    }

    #[test]
    fn headers_body_and_rotation() {
        let headers = vec!["X-A: 1".to_string(), "host: override".to_string()];
        let rotating = vec!["K: a".to_string(), "K: b".to_string(), "K: c".to_string()];
        let set =
            RequestSet::build("POST", &target(), &headers, &rotating, Some(b"hello")).unwrap();
        assert_eq!(set.len(), 3);
        assert_eq!(
            set.get(4),
            b"POST /p?q=1 HTTP/1.1\r\nX-A: 1\r\nhost: override\r\nK: b\r\nContent-Length: 5\r\n\r\nhello"
                .as_slice()
        );
        assert!(set.get(0).windows(4).any(|w| w == b"K: a"));
        assert!(set.get(5).windows(4).any(|w| w == b"K: c"));
    }

    #[test]
    fn rejects_bad_input() {
        assert!(RequestSet::build("GE T", &target(), &[], &[], None).is_err());
        assert!(RequestSet::build("GET", &target(), &["NoColon".into()], &[], None).is_err());
        assert!(RequestSet::build("GET", &target(), &["Bad Name: x".into()], &[], None).is_err());
        assert!(RequestSet::build("GET", &target(), &["A: x\ny".into()], &[], None).is_err());
        assert!(
            RequestSet::build("HEAD", &target(), &[], &[], None)
                .unwrap()
                .head
        );
    }

    #[test]
    fn header_files() {
        let dir = std::env::temp_dir().join(format!("cflow-load-hf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let good = dir.join("good");
        std::fs::write(
            &good,
            "Authorization: Bearer a\r\n\nAuthorization: Bearer b\n",
        )
        .unwrap();
        assert_eq!(
            load_header_file(&good).unwrap(),
            vec!["Authorization: Bearer a", "Authorization: Bearer b"]
        );
        let bad = dir.join("bad");
        std::fs::write(&bad, "Authorization Bearer a\n").unwrap();
        assert!(load_header_file(&bad).is_err());
        let empty = dir.join("empty");
        std::fs::write(&empty, "\n\n").unwrap();
        assert!(load_header_file(&empty).is_err());
        assert!(load_header_file(&dir.join("missing")).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
