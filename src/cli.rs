//! The credential helper commands: issue an API key (`key new`), hash a Basic password
//! (`basic new`), make a signing key and its JWKS (`jwk new`), sign a token (`token mint`), make
//! an admin token (`admin token new`) and check the audit chain (`audit verify`).
//! Each returns the process exit code and prints errors to stderr.

use crate::auth::api_key;
use crate::auth::basic::PasswordHash;
use crate::auth::keygen::SigningKey;
use crate::auth::keys::Algorithm;
use crate::auth::unix_now;
use crate::config::parse_duration;
use crate::demo::json_string;
use std::io::BufRead;
use std::path::Path;

fn fail(message: impl std::fmt::Display) -> i32 {
    eprintln!("{message}");
    1
}

/// `key new`: issues a key, hashed with the config's pepper.
pub fn key_new(config: &Path, consumer: &str, json: bool) -> i32 {
    let Some(config) = crate::control::load_config(config) else {
        return 1;
    };
    let Some(pepper) = &config.resolved.pepper else {
        return fail(format!(
            "no pepper: set auth.key_pepper_file in the config or the {} environment variable",
            crate::config::PEPPER_ENV
        ));
    };
    let issued = api_key::issue();
    let hash = api_key::hash_hex(&pepper.hash(issued.secret.as_bytes()));
    if json {
        println!(
            "{{\"key\":{},\"credential\":{{\"kind\":\"api_key\",\"id\":{},\"hash\":{}}}}}",
            json_string(&issued.key),
            json_string(&issued.id),
            json_string(&hash)
        );
        return 0;
    }
    println!(
        "API key for `{consumer}` (shown once; store it now):\n\n  {}\n",
        issued.key
    );
    let known = config.resolved.credentials.consumer(consumer).is_some();
    if !known {
        println!(
            "Add the consumer and its credential to the config:\n\n[[consumers]]\nid = {}",
            json_string(consumer)
        );
    } else {
        println!("Add the credential under the consumer `{consumer}` in the config:\n");
    }
    println!(
        "[[consumers.credentials]]\nkind = \"api_key\"\nid = {}\nhash = {}",
        json_string(&issued.id),
        json_string(&hash)
    );
    0
}

/// `basic new`: hashes the password on stdin's first line.
pub fn basic_new(consumer: &str, username: &str, iterations: u32, json: bool) -> i32 {
    let mut line = String::new();
    if std::io::stdin().lock().read_line(&mut line).is_err() {
        return fail("cannot read the password from stdin");
    }
    let password = line.trim_end_matches(['\r', '\n']);
    if password.is_empty() {
        return fail("the password (first line of stdin) is empty");
    }
    let hash = PasswordHash::new(password.as_bytes(), iterations).encode();
    if json {
        println!(
            "{{\"credential\":{{\"kind\":\"basic\",\"username\":{},\"hash\":{}}}}}",
            json_string(username),
            json_string(&hash)
        );
    } else {
        println!("# for the consumer `{consumer}`\n[[consumers.credentials]]\nkind = \"basic\"\nusername = {}\nhash = {}", json_string(username), json_string(&hash));
    }
    0
}

fn algorithm(name: &str) -> Result<Algorithm, String> {
    Algorithm::from_name(name.as_bytes()).ok_or_else(|| {
        format!("unknown algorithm `{name}` (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA)")
    })
}

/// `jwk new`: writes the private key and a JWKS holding its public key.
pub fn jwk_new(
    alg: &str,
    kid: &str,
    key: Option<&Path>,
    out_private: &Path,
    out_jwks: &Path,
) -> i32 {
    let alg = match algorithm(alg) {
        Ok(alg) => alg,
        Err(e) => return fail(e),
    };
    let signing = match key {
        Some(path) => std::fs::read(path)
            .map_err(|e| format!("{}: {e}", path.display()))
            .and_then(|pem| SigningKey::from_pem(alg, &pem)),
        None => SigningKey::generate(alg),
    };
    let signing = match signing {
        Ok(k) => k,
        Err(e) => return fail(e),
    };
    let jwks = format!("{{\"keys\":[{}]}}\n", signing.jwk(alg, kid));
    if let Err(e) = write_private(out_private, signing.private_pem().as_bytes()) {
        return fail(format!("{}: {e}", out_private.display()));
    }
    if let Err(e) = std::fs::write(out_jwks, jwks) {
        return fail(format!("{}: {e}", out_jwks.display()));
    }
    println!(
        "private key: {} (keep it secret)\nJWKS: {} (kid {kid}, alg {})",
        out_private.display(),
        out_jwks.display(),
        alg.name()
    );
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
        println!(
            "note: an HMAC JWKS holds the shared secret itself; protect it like the private key"
        );
    }
    0
}

/// Writes a file readable by its owner only.
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(bytes)
}

/// `token mint`: prints `count` signed tokens (with distinct `jti` when more than one).
pub fn token_mint(
    key: &Path,
    alg: &str,
    kid: Option<&str>,
    claims: &str,
    ttl: &str,
    count: usize,
) -> i32 {
    let result = (|| -> Result<String, String> {
        let alg = algorithm(alg)?;
        let pem = std::fs::read(key).map_err(|e| format!("{}: {e}", key.display()))?;
        let signing = SigningKey::from_pem(alg, &pem)?;
        let mut claims: serde_json::Value =
            serde_json::from_str(claims).map_err(|e| format!("--claims: {e}"))?;
        let object = claims
            .as_object_mut()
            .ok_or("--claims must be a JSON object")?;
        let ttl = parse_duration(ttl)?;
        let now = unix_now();
        object.entry("iat").or_insert(now.into());
        object
            .entry("exp")
            .or_insert((now + ttl.as_secs() as i64).into());
        if count <= 1 {
            return signing.mint(alg, kid, &claims);
        }
        let mut out = String::new();
        for n in 0..count {
            claims["jti"] = format!("t{n}").into();
            out.push_str(&signing.mint(alg, kid, &claims)?);
            if n + 1 < count {
                out.push('\n');
            }
        }
        Ok(out)
    })();
    match result {
        Ok(token) => {
            println!("{token}");
            0
        }
        Err(e) => fail(e),
    }
}

/// `admin token new`: a new admin token and the hash to put in `[[admin.tokens]]`.
pub fn admin_token_new(role: &str, json: bool) -> i32 {
    use crate::admin::tokens;
    if tokens::Role::from_name(role).is_none() {
        return fail(format!(
            "unknown role `{role}` (admin, operator or auditor)"
        ));
    }
    let (token, hash) = tokens::generate();
    if json {
        println!(
            "{{\"token\":{},\"hash\":{}}}",
            json_string(&token),
            json_string(&hash.hex())
        );
        return 0;
    }
    println!("Admin token (shown once; store it now):\n\n  {token}\n");
    println!(
        "Add it to the config:\n\n[[admin.tokens]]\nname = \"CHANGE-ME\"\nrole = {}\nhash = {}",
        json_string(role),
        json_string(&hash.hex())
    );
    0
}

/// `audit verify`: checks the hash chain of the store's audit trail and of its JSONL copy, and
/// that the copy agrees with the store. Exit 0 when both verify.
pub fn audit_verify(config: &Path) -> i32 {
    use crate::store::audit;
    let Some(config) = crate::control::load_config(config) else {
        return 1;
    };
    let path = config.store_path();
    if !path.exists() {
        return fail(format!("{}: no store", path.display()));
    }
    let store = match crate::store::sqlite::SqliteStore::open(&path) {
        Ok(store) => store,
        Err(e) => return fail(e),
    };
    let records = match store.all_audit() {
        Ok(records) => records,
        Err(e) => return fail(e),
    };
    match audit::verify(&records) {
        Ok(n) => println!("{}: {n} audit records, chain intact", path.display()),
        Err(e) => return fail(format!("{}: {e}", path.display())),
    }
    let Some(log) = config.audit_log_path().filter(|p| p.exists()) else {
        return 0;
    };
    let text = match std::fs::read_to_string(&log) {
        Ok(text) => text,
        Err(e) => return fail(format!("{}: {e}", log.display())),
    };
    // The copy may start after record 1 (an older file was rotated away with SIGUSR1): it is
    // then checked as a segment that follows the store's record before its first one.
    let copied = match audit::read_jsonl(&text) {
        Ok(copied) => copied,
        Err(e) => return fail(format!("{}: {e}", log.display())),
    };
    let first = copied.first().map_or(1, |r| r.seq);
    let anchor = match first {
        0 | 1 => (0, audit::GENESIS.to_string()),
        seq => match records.get(seq as usize - 2) {
            Some(before) => (before.seq, before.hash.clone()),
            None => {
                return fail(format!(
                    "{} starts at record {seq}, which the store does not hold: records were removed from the store",
                    log.display()
                ))
            }
        },
    };
    match audit::verify_segment(&copied, (anchor.0, &anchor.1)) {
        Ok(n) => println!("{}: records {first} to {n}, chain intact", log.display()),
        Err(e) => return fail(format!("{}: {e}", log.display())),
    }
    let stored = &records[(first as usize).saturating_sub(1).min(records.len())..];
    if copied.len() > stored.len() {
        return fail(format!(
            "{} holds {} records the store does not: records were removed from the store",
            log.display(),
            copied.len() - stored.len()
        ));
    }
    if let Some((a, _)) = copied.iter().zip(stored).find(|(a, b)| a != b) {
        return fail(format!(
            "record {} differs between {} and the store",
            a.seq,
            log.display()
        ));
    }
    let records = stored;
    if copied.len() < records.len() {
        println!(
            "note: {} lags the store by {} record(s) (appended after each commit; a crash in between loses the copy, not the record)",
            log.display(),
            records.len() - copied.len()
        );
    }
    0
}
