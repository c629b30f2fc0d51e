//! `cflow-idp`: a small local identity provider for tests, the demo and the bench. It holds
//! signing keys, serves their public JWKS over HTTP (counting fetches), mints tokens, rotates
//! keys and can play dead.
//!
//! ```text
//! cflow-idp --listen 127.0.0.1:9300 --alg ES256 [--issuer URL] [--max-age SECS] [--key PEM]
//! GET  /jwks                 the public keys (Cache-Control: max-age), 503 while down
//! GET  /token?sub=&aud=&ttl=&scope=&kid=   a token signed with the current key
//! POST /rotate[?drop=1]      a new current key (old ones kept unless drop=1)
//! POST /down, POST /up       make /jwks fail, or serve again
//! GET  /stats                {"jwks_fetches": N, "kids": [...], "current": "kid"}
//! ```

use clap::Parser;
use credentialflow::auth::keygen::SigningKey;
use credentialflow::auth::keys::Algorithm;
use credentialflow::auth::unix_now;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "cflow-idp",
    about = "Local identity provider: serves a JWKS, mints tokens, rotates keys"
)]
struct Args {
    #[arg(long, default_value = "127.0.0.1:9300")]
    listen: String,
    #[arg(long, default_value = "ES256")]
    alg: String,
    #[arg(long, default_value = "https://idp.local")]
    issuer: String,
    /// `Cache-Control: max-age` on the JWKS.
    #[arg(long, default_value_t = 300)]
    max_age: u64,
    /// Start with this private key (PEM) instead of a generated one (needed for RS*/PS*).
    #[arg(long)]
    key: Option<std::path::PathBuf>,
}

struct Idp {
    alg: Algorithm,
    issuer: String,
    max_age: u64,
    keys: Vec<(String, SigningKey)>,
    next_kid: u32,
    fetches: u64,
    down: bool,
}

impl Idp {
    fn rotate(&mut self, drop_old: bool) -> Result<String, String> {
        let key = SigningKey::generate(self.alg)?;
        self.next_kid += 1;
        let kid = format!("k{}", self.next_kid);
        if drop_old {
            self.keys.clear();
        }
        self.keys.push((kid.clone(), key));
        Ok(kid)
    }

    fn jwks(&self) -> String {
        let keys: Vec<String> = self
            .keys
            .iter()
            .map(|(kid, k)| k.jwk(self.alg, kid))
            .collect();
        format!("{{\"keys\":[{}]}}", keys.join(","))
    }
}

fn main() {
    let args = Args::parse();
    let Some(alg) = Algorithm::from_name(args.alg.as_bytes()) else {
        eprintln!("unknown algorithm {}", args.alg);
        std::process::exit(2);
    };
    let mut idp = Idp {
        alg,
        issuer: args.issuer,
        max_age: args.max_age,
        keys: Vec::new(),
        next_kid: 0,
        fetches: 0,
        down: false,
    };
    match &args.key {
        Some(path) => {
            let key = std::fs::read(path)
                .map_err(|e| e.to_string())
                .and_then(|pem| SigningKey::from_pem(alg, &pem))
                .unwrap_or_else(|e| {
                    eprintln!("{}: {e}", path.display());
                    std::process::exit(2)
                });
            idp.next_kid = 1;
            idp.keys.push(("k1".into(), key));
        }
        None => {
            if let Err(e) = idp.rotate(false) {
                eprintln!("{e}");
                std::process::exit(2);
            }
        }
    }
    let listener = TcpListener::bind(&args.listen).unwrap_or_else(|e| {
        eprintln!("cannot listen on {}: {e}", args.listen);
        std::process::exit(2)
    });
    println!(
        "cflow-idp listening on http://{}",
        listener.local_addr().expect("bound address")
    );
    let _ = std::io::stdout().flush();
    let idp = Arc::new(Mutex::new(idp));
    for stream in listener.incoming().flatten() {
        let idp = idp.clone();
        std::thread::spawn(move || {
            let _ = serve(stream, &idp);
        });
    }
}

fn query<'a>(target: &'a str, name: &str) -> Option<&'a str> {
    let query = target.split_once('?')?.1;
    query.split('&').find_map(|p| {
        p.split_once('=')
            .filter(|(k, _)| *k == name)
            .map(|(_, v)| v)
    })
}

fn serve(mut stream: TcpStream, idp: &Mutex<Idp>) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let (method, target) = loop {
        let n = stream.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut req = httparse::Request::new(&mut headers);
        if let Ok(httparse::Status::Complete(_)) = req.parse(&buf) {
            break (
                req.method.unwrap_or("").to_string(),
                req.path.unwrap_or("/").to_string(),
            );
        }
        if buf.len() > 64 * 1024 {
            return Ok(());
        }
    };
    let path = target.split('?').next().unwrap_or("");
    let mut idp = idp.lock().expect("idp lock");
    let (status, extra, body) = match (method.as_str(), path) {
        ("GET", "/jwks") => {
            idp.fetches += 1;
            if idp.down {
                (503, String::new(), "{\"error\":\"down\"}".to_string())
            } else {
                (
                    200,
                    format!("Cache-Control: max-age={}\r\n", idp.max_age),
                    idp.jwks(),
                )
            }
        }
        ("GET", "/token") => {
            let ttl: i64 = query(&target, "ttl")
                .and_then(|t| t.parse().ok())
                .unwrap_or(3600);
            let now = unix_now();
            let mut claims = serde_json::json!({
                "iss": idp.issuer,
                "sub": query(&target, "sub").unwrap_or("demo-user"),
                "iat": now,
                "exp": now + ttl,
            });
            if let Some(aud) = query(&target, "aud") {
                claims["aud"] = aud.into();
            }
            if let Some(scope) = query(&target, "scope") {
                claims["scope"] = scope.replace('+', " ").into();
            }
            let (kid, key) = idp.keys.last().expect("at least one key");
            let kid = query(&target, "kid").unwrap_or(kid).to_string();
            match key.mint(idp.alg, Some(&kid), &claims) {
                Ok(token) => (200, String::new(), token),
                Err(e) => (500, String::new(), e),
            }
        }
        ("POST", "/rotate") => {
            let drop_old = query(&target, "drop") == Some("1");
            match idp.rotate(drop_old) {
                Ok(kid) => (200, String::new(), format!("{{\"kid\":\"{kid}\"}}")),
                Err(e) => (400, String::new(), e),
            }
        }
        ("POST", "/down") => {
            idp.down = true;
            (200, String::new(), "{}".into())
        }
        ("POST", "/up") => {
            idp.down = false;
            (200, String::new(), "{}".into())
        }
        ("GET", "/stats") => {
            let kids: Vec<String> = idp.keys.iter().map(|(k, _)| format!("\"{k}\"")).collect();
            let current = idp.keys.last().map(|(k, _)| k.clone()).unwrap_or_default();
            (
                200,
                String::new(),
                format!(
                    "{{\"jwks_fetches\":{},\"kids\":[{}],\"current\":\"{current}\"}}",
                    idp.fetches,
                    kids.join(",")
                ),
            )
        }
        _ => (404, String::new(), "{\"error\":\"not found\"}".into()),
    };
    drop(idp);
    let response = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n{body}",
        if status == 200 { "OK" } else { "Error" },
        body.len()
    );
    stream.write_all(response.as_bytes())
}
