//! `credentialflow demo`: the gateway on `config/demo.toml` plus a small built-in upstream that
//! answers every request with what it received (method, path, headers, body size) as JSON, and
//! the admin API on 127.0.0.1:9901 with a fresh admin token and store per run.

use crate::config::Config;
use crate::control::{report_config_errors, serve};
use crate::http::chunked::ChunkedScanner;
use crate::http::BodyFraming;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The demo config, used when `config/demo.toml` is not in the working directory.
const BUNDLED_DEMO_CONFIG: &str = include_str!("../config/demo.toml");

/// Runs the demo until SIGTERM/SIGINT; returns the exit code.
pub fn run(config_path: &Path) -> i32 {
    let (name, source) = match std::fs::read_to_string(config_path) {
        Ok(source) => (config_path.display().to_string(), source),
        Err(_) => (
            "(bundled demo.toml)".to_string(),
            BUNDLED_DEMO_CONFIG.to_string(),
        ),
    };
    let credentials = match demo_credentials() {
        Ok(credentials) => credentials,
        Err(err) => {
            eprintln!("demo: cannot make demo credentials: {err}");
            return 1;
        }
    };
    // The audit trail's copy goes beside the demo's store (a fresh one per run).
    let audit_line = format!(
        "audit_log = {}",
        json_string(&credentials.dir.join("audit.jsonl").display().to_string())
    );
    let source = match source.find("[logging]\n") {
        Some(at) => {
            let after = at + "[logging]\n".len();
            format!("{}{audit_line}\n{}", &source[..after], &source[after..])
        }
        None => format!("{source}\n[logging]\n{audit_line}\n"),
    };
    let source = format!("{source}\n{}", credentials.toml);
    let config = match Config::parse(&name, &source) {
        Ok(config) => config,
        Err(errors) => {
            report_config_errors(&errors);
            return 1;
        }
    };
    let Some(upstream_address) = config
        .resolved
        .upstream_targets
        .first()
        .and_then(|t| t.first())
        .copied()
    else {
        eprintln!("{name}: the demo needs one [[upstreams]] whose first target is where the demo upstream listens");
        return 1;
    };
    let listener = match TcpListener::bind(upstream_address) {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("demo upstream: cannot listen on {upstream_address}: {err}");
            return 1;
        }
    };
    std::thread::Builder::new()
        .name("demo-upstream".into())
        .spawn(move || serve_echo(listener))
        .expect("spawn demo upstream");
    let access_log = config.access_log_target();
    let admin_address = config.resolved.admin.as_ref().map(|a| a.address);
    serve(config, |snapshot| {
        let address = snapshot.listeners[0].address;
        println!("Credentialflow demo is up: gateway on http://{address}, demo upstream on http://{upstream_address}");
        println!("Try:");
        println!("  curl -i http://{address}/echo/hello");
        println!("  curl -i -X POST --data 'hello gateway' http://{address}/echo/items");
        println!("  curl -i http://{address}/nowhere            # 404 problem+json");
        println!("  curl -i -X DELETE http://{address}/echo/x   # 405 with Allow");
        println!("Protected API (API key or JWT; the upstream sees X-Consumer-Id, never the credential):");
        println!(
            "  curl -i -H 'X-API-Key: {}' http://{address}/orders/1",
            credentials.api_key
        );
        println!(
            "  curl -i -H 'Authorization: Bearer {}' http://{address}/orders/1",
            credentials.token
        );
        println!("  curl -i http://{address}/orders/1           # 401 missing_credential");
        println!(
            "  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{{http_code}} ' -H 'X-API-Key: {}' http://{address}/orders/1; done; echo   # 5 × 200, then 429",
            credentials.api_key
        );
        println!("  curl -i 'http://{address}/orders?q=1%27%20OR%20%271%27=%271'   # 403 blocked_by_filter");
        println!(
            "  curl -i -H 'X-API-Key: {}' http://{address}/orders/admin   # 403 insufficient_scope",
            credentials.api_key
        );
        if let Some(admin) = &admin_address {
            let token = &credentials.admin_token;
            let auth = format!("-H 'Authorization: Bearer {token}'");
            println!("Admin API on http://{admin} (admin token for this run: {token}):");
            println!(
                "  curl -s -X POST {auth} -d '{{\"id\":\"my-app\"}}' http://{admin}/v1/consumers"
            );
            println!("  curl -s -X POST {auth} -d '{{\"kind\":\"api_key\"}}' http://{admin}/v1/consumers/my-app/credentials   # {{\"id\": ID, \"key\": KEY, …}}");
            println!("  curl -i -H 'X-API-Key: KEY' http://{address}/orders/1   # 200");
            println!("  curl -s -X POST {auth} http://{admin}/v1/credentials/ID/revoke   # answered once every core applied it");
            println!("  curl -i -H 'X-API-Key: KEY' http://{address}/orders/1   # 401 revoked");
            println!("  curl -s {auth} http://{admin}/v1/audit   # who did what, hash-chained");
        }
        match &access_log {
            Some(target) => println!("Access log (one JSON line per request): {target}"),
            None => println!("Access log: off"),
        }
        println!("Stop with Ctrl-C.");
    })
}

/// Credentials made for one demo run: a pepper, an API key, an ES256 issuer and a token, and
/// an admin token for the admin API (its store lives in `dir`).
struct DemoCredentials {
    toml: String,
    api_key: String,
    token: String,
    admin_token: String,
    dir: std::path::PathBuf,
}

fn demo_credentials() -> Result<DemoCredentials, String> {
    use crate::auth::keygen::SigningKey;
    use crate::auth::keys::{random_bytes, Algorithm};
    let mut pepper = [0u8; 32];
    random_bytes(&mut pepper);
    let pepper_hex = crate::tls::certificate::hex(&pepper);
    let dir = std::env::temp_dir().join(format!("credentialflow-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let pepper_file = dir.join("pepper");
    std::fs::write(&pepper_file, &pepper_hex).map_err(|e| e.to_string())?;
    let pepper = crate::auth::api_key::Pepper::new(pepper_hex.as_bytes())?;
    let issued = crate::auth::api_key::issue();
    let hash = crate::auth::api_key::hash_hex(&pepper.hash(issued.secret.as_bytes()));
    let key = SigningKey::generate(Algorithm::ES256)?;
    let jwks_file = dir.join("demo.jwks");
    std::fs::write(
        &jwks_file,
        format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "demo-1")),
    )
    .map_err(|e| e.to_string())?;
    let now = crate::auth::unix_now();
    let claims = serde_json::json!({
        "iss": "https://idp.demo", "aud": "orders-api", "sub": "demo-user",
        "email": "demo@example.com", "iat": now, "exp": now + 24 * 3600,
    });
    let token = key.mint(Algorithm::ES256, Some("demo-1"), &claims)?;
    let (admin_token, admin_hash) = crate::admin::tokens::generate();
    let toml = format!(
        r#"
[auth]
key_pepper_file = {pepper}

[[issuers]]
name = "demo"
issuer = "https://idp.demo"
audiences = ["orders-api"]
jwks_file = {jwks}
claim_headers = {{ email = "X-User-Email" }}

[[consumers]]
id = "demo-app"
[[consumers.credentials]]
kind = "api_key"
id = "{id}"
hash = "{hash}"

[admin]
address = "127.0.0.1:9901"
[[admin.tokens]]
name = "demo-admin"
role = "admin"
hash = "{admin_hash}"

[store]
path = {store}
"#,
        pepper = json_string(&pepper_file.display().to_string()),
        jwks = json_string(&jwks_file.display().to_string()),
        id = issued.id,
        admin_hash = admin_hash.hex(),
        store = json_string(&dir.join("store.db").display().to_string()),
    );
    Ok(DemoCredentials {
        toml,
        api_key: issued.key,
        token,
        admin_token,
        dir,
    })
}

/// Accepts connections forever, one thread each.
pub fn serve_echo(listener: TcpListener) {
    for stream in listener.incoming().flatten() {
        let _ = std::thread::Builder::new()
            .name("demo-conn".into())
            .spawn(move || {
                let _ = echo_connection(stream);
            });
    }
}

/// Starts the echo upstream on `address` in a background thread; returns the bound address.
pub fn spawn_echo(address: SocketAddr) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(address)?;
    let bound = listener.local_addr()?;
    std::thread::spawn(move || serve_echo(listener));
    Ok(bound)
}

fn echo_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(60)))?;
    let _ = stream.set_nodelay(true);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let (head_len, framing, keep_alive, body_json) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 100];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let mut framing = BodyFraming::None;
                let mut keep_alive = req.version == Some(1);
                let mut header_json = String::new();
                for h in req.headers.iter() {
                    let value = String::from_utf8_lossy(h.value);
                    if h.name.eq_ignore_ascii_case("content-length") {
                        framing = BodyFraming::Length(value.trim().parse().unwrap_or(0));
                    } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                        framing = BodyFraming::Chunked;
                    } else if h.name.eq_ignore_ascii_case("connection") {
                        keep_alive = !value.eq_ignore_ascii_case("close");
                    }
                    if !header_json.is_empty() {
                        header_json.push(',');
                    }
                    header_json.push_str(&format!(
                        "{}:{}",
                        json_string(h.name),
                        json_string(&value)
                    ));
                }
                let json = format!(
                    "{{\"method\":{},\"path\":{},\"headers\":{{{header_json}}}",
                    json_string(req.method.unwrap_or("")),
                    json_string(req.path.unwrap_or(""))
                );
                break (n, framing, keep_alive, json);
            }
            if buf.len() > 64 * 1024 {
                return Ok(());
            }
            let n = stream.read(&mut chunk)?;
            if n == 0 {
                return Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        buf.drain(..head_len);
        let body_bytes = read_body(&mut stream, &mut buf, framing, &mut chunk)?;
        let body = format!("{body_json},\"body_bytes\":{body_bytes}}}\n");
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if keep_alive { "" } else { "Connection: close\r\n" }
        );
        stream.write_all(response.as_bytes())?;
        if !keep_alive {
            return Ok(());
        }
    }
}

/// Reads (and discards) one request body; leaves bytes of a following request in `buf`.
fn read_body(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    framing: BodyFraming,
    chunk: &mut [u8],
) -> std::io::Result<u64> {
    let mut scanner = ChunkedScanner::new();
    let mut remaining = match framing {
        BodyFraming::Length(n) => n,
        _ => 0,
    };
    let mut data_bytes = 0u64;
    loop {
        match framing {
            BodyFraming::Length(_) => {
                let take = (buf.len() as u64).min(remaining) as usize;
                buf.drain(..take);
                remaining -= take as u64;
                data_bytes += take as u64;
                if remaining == 0 {
                    return Ok(data_bytes);
                }
            }
            BodyFraming::Chunked => {
                let consumed = scanner
                    .scan(buf, |a, b| data_bytes += (b - a) as u64)
                    .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
                buf.drain(..consumed);
                if scanner.is_done() {
                    return Ok(data_bytes);
                }
            }
            _ => return Ok(0),
        }
        let n = stream.read(chunk)?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Quotes a string as a JSON string literal.
pub fn json_string(text: &str) -> String {
    let mut out = String::with_capacity(text.len() + 2);
    out.push('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn bundled_demo_config_is_valid() {
        let credentials = demo_credentials().unwrap();
        Config::parse(
            "demo.toml",
            &format!("{BUNDLED_DEMO_CONFIG}\n{}", credentials.toml),
        )
        .unwrap();
    }
}
