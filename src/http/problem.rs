//! The gateway's own error responses: `application/problem+json` (RFC 9457) with a stable `type`
//! per failure, never carrying internal details.

use std::io::Write;

/// The stable `type`, `title` pair for a status the gateway generates itself.
fn describe(status: u16) -> (&'static str, &'static str) {
    match status {
        400 => ("bad-request", "Bad Request"),
        401 => ("unauthorized", "Unauthorized"),
        403 => ("forbidden", "Forbidden"),
        404 => ("no-route", "Not Found"),
        405 => ("method-not-allowed", "Method Not Allowed"),
        408 => ("request-timeout", "Request Timeout"),
        413 => ("body-too-large", "Content Too Large"),
        414 => ("uri-too-long", "URI Too Long"),
        417 => ("expectation-failed", "Expectation Failed"),
        429 => ("too-many-requests", "Too Many Requests"),
        431 => ("headers-too-large", "Request Header Fields Too Large"),
        502 => ("bad-gateway", "Bad Gateway"),
        503 => ("no-healthy-upstream", "Service Unavailable"),
        504 => ("upstream-timeout", "Gateway Timeout"),
        _ => ("error", "Error"),
    }
}

/// Appends a complete problem response to `out`.
///
/// `extra_headers` are full header lines (each ending in CRLF); `close` adds `Connection: close`.
pub fn write_problem(
    out: &mut Vec<u8>,
    status: u16,
    close: bool,
    request_id: &[u8],
    extra_headers: &[u8],
) {
    write_problem_with_reason(out, status, None, None, close, request_id, extra_headers);
}

/// [`write_problem`] with a reason code (`"reason":"expired"`) and, for a refusal by a rule, the
/// rule's name (`"rule":"own-tenant-only"`); a 503 with a reason is the gateway's
/// authentication being unavailable, not the upstream. Reason codes and rule names are plain
/// names (checked when the config is loaded), so they need no escaping.
pub fn write_problem_with_reason(
    out: &mut Vec<u8>,
    status: u16,
    reason: Option<&str>,
    rule: Option<&str>,
    close: bool,
    request_id: &[u8],
    extra_headers: &[u8],
) {
    let (slug, title) = match (status, reason) {
        (503, Some("limit_unavailable")) => ("limit-unavailable", "Service Unavailable"),
        (503, Some(_)) => ("auth-unavailable", "Service Unavailable"),
        _ => describe(status),
    };
    let mut body = [0u8; 384];
    let body_len = {
        let mut cursor = &mut body[..];
        let _ = write!(
            cursor,
            "{{\"type\":\"urn:credentialflow:problem:{slug}\",\"title\":\"{title}\",\"status\":{status}"
        );
        if let Some(reason) = reason {
            let _ = write!(cursor, ",\"reason\":\"{reason}\"");
        }
        if let Some(rule) = rule {
            let _ = write!(cursor, ",\"rule\":\"{rule}\"");
        }
        let _ = write!(cursor, "}}");
        384 - cursor.len()
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {title}\r\nContent-Type: application/problem+json\r\nContent-Length: {body_len}\r\n"
    );
    if !request_id.is_empty() {
        out.extend_from_slice(b"X-Request-Id: ");
        out.extend_from_slice(request_id);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(extra_headers);
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(&body[..body_len]);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problem_is_well_framed() {
        for status in [400, 404, 405, 408, 413, 414, 417, 431, 502, 503, 504, 599] {
            let mut out = Vec::new();
            write_problem(&mut out, status, true, b"abc", b"Allow: GET\r\n");
            let text = String::from_utf8(out).unwrap();
            let (head, body) = text.split_once("\r\n\r\n").unwrap();
            assert!(
                head.contains(&format!("Content-Length: {}", body.len())),
                "{head}"
            );
            assert!(head.contains("Connection: close"));
            assert!(body.contains(&format!("\"status\":{status}")));
        }
    }

    #[test]
    fn reasons_are_in_the_body() {
        let mut out = Vec::new();
        write_problem_with_reason(&mut out, 401, Some("expired"), None, false, b"", b"");
        let text = String::from_utf8(out).unwrap();
        assert!(text.ends_with(r#"{"type":"urn:credentialflow:problem:unauthorized","title":"Unauthorized","status":401,"reason":"expired"}"#), "{text}");
    }
}
