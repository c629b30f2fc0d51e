//! The authentication phase, black-box: API keys, JWTs (JWKS files and JWKS URLs served by
//! `cflow-idp`), Basic and mTLS credentials, the identity fields the upstream receives, the
//! 401/503 answers with their challenges and reason codes, and `check`'s refusals of unsafe or
//! inconsistent auth configs. Credentials are made with the real CLI (`key new`, `basic new`,
//! `jwk new`, `token mint`), the real gateway serves them on loopback.

mod common;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use common::pki::{client_config, Ca, Issued, BOTH};
use common::*;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const ISS: &str = "https://corp.test";
const AUD: &str = "orders-api";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// The usual gateway config (listener, upstream "app", api "demo" with `routes`) followed by
/// the top-level tables in `extra` (`[auth]`, `[[issuers]]`, `[[consumers]]`).
fn config(listen: u16, upstream: u16, routes: &[(&str, &str)], extra: &str) -> String {
    let mut b = ConfigBuilder::new(listen, &[upstream]);
    for (path, keys) in routes {
        b = b.route(path, keys);
    }
    format!("{}\n{extra}\n", b.build())
}

/// A Basic credential hash from `basic new --json` (password on stdin).
fn basic_hash(user: &str, password: &str) -> String {
    let out = run_with_stdin(
        &[
            "basic",
            "new",
            "--consumer",
            "basic-user",
            "--username",
            user,
            "--iterations",
            "10000",
            "--json",
        ],
        &format!("{password}\n"),
    );
    assert_eq!(out.code(), Some(0), "basic new: {}", out.combined());
    let v = json(&out.stdout);
    assert_eq!(v["credential"]["kind"], "basic");
    assert_eq!(v["credential"]["username"], user);
    let hash = v["credential"]["hash"].as_str().expect("hash").to_string();
    assert!(hash.starts_with("pbkdf2-sha256$"), "{hash}");
    assert!(!hash.contains(password), "hash holds the password");
    hash
}

fn b64(data: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(data)
}

fn decode_part(token: &str, i: usize) -> serde_json::Value {
    let part = token.split('.').nth(i).expect("token part");
    let bytes = URL_SAFE_NO_PAD.decode(part).expect("base64url part");
    serde_json::from_slice(&bytes).expect("JSON part")
}

fn challenges(resp: &Response) -> Vec<String> {
    resp.headers_all("www-authenticate")
        .into_iter()
        .map(str::to_string)
        .collect()
}

// ---------------------------------------------------------------------------
// API keys
// ---------------------------------------------------------------------------

struct KeyFixture {
    _pepper: TempFile,
    up: TestUpstream,
    gw: Gateway,
    good: IssuedKey,
    expired: IssuedKey,
    revoked: IssuedKey,
}

/// Consumers alice (active key), bob (expired key) and carol (revoked key); routes `/k`
/// (api_key), `/q` (api_key, also in the `api_key` query parameter), `/fwd` (api_key, the
/// credential forwarded) and `/pub` (public).
fn key_fixture() -> KeyFixture {
    let pepper = pepper_file();
    let good = issue_key(&pepper, "alice");
    let expired = issue_key(&pepper, "bob");
    let revoked = issue_key(&pepper, "carol");
    let up = TestUpstream::start(Mode::Echo);
    let extra = format!(
        "[auth]\nkey_pepper_file = \"{pepper}\"\n\n\
         [[consumers]]\nid = \"alice\"\ngroups = [\"ops\"]\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{gi}\"\nhash = \"{gh}\"\nexpires = \"2099-01-01T00:00:00Z\"\n\n\
         [[consumers]]\nid = \"bob\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{ei}\"\nhash = \"{eh}\"\nexpires = \"2020-01-01T00:00:00Z\"\n\n\
         [[consumers]]\nid = \"carol\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{ri}\"\nhash = \"{rh}\"\nstate = \"revoked\"\n",
        pepper = file_name(&pepper),
        gi = good.id,
        gh = good.hash,
        ei = expired.id,
        eh = expired.hash,
        ri = revoked.id,
        rh = revoked.hash,
    );
    let cfg = config(
        free_port(),
        up.port,
        &[
            ("/k", "auth = [\"api_key\"]"),
            ("/q", "auth = [\"api_key\"]\napi_key_query = \"api_key\""),
            ("/fwd", "auth = [\"api_key\"]\nforward_credential = true"),
            ("/pub", ""),
        ],
        &extra,
    );
    let gw = Gateway::start(&cfg);
    KeyFixture {
        _pepper: pepper,
        up,
        gw,
        good,
        expired,
        revoked,
    }
}

#[test]
fn api_key_in_header_or_authorization_identifies_the_consumer() {
    let f = key_fixture();
    let port = f.gw.port();

    let n = f.up.requests();
    let resp = get_with(port, "/k/orders", &[("X-API-Key", &f.good.key)]);
    let seen = assert_passed(&resp, &f.up, n);
    assert_eq!(seen.target, "/k/orders");
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert_eq!(seen.headers_all("x-credential-id"), [f.good.id.as_str()]);
    assert!(
        seen.header("x-api-key").is_none(),
        "the key reached the upstream: {:?}",
        seen.headers
    );

    // The same key as `Authorization: ApiKey …` (scheme without case), twice on one
    // connection (the second from the verified-credential cache).
    let mut c = f.gw.client();
    for scheme in ["ApiKey", "apikey"] {
        let n = f.up.requests();
        let resp = c.request(
            format!(
                "GET /k/a HTTP/1.1\r\nHost: localhost\r\nAuthorization: {scheme} {}\r\n\r\n",
                f.good.key
            )
            .as_bytes(),
        );
        let seen = assert_passed(&resp, &f.up, n);
        assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
        assert_eq!(seen.headers_all("x-credential-id"), [f.good.id.as_str()]);
        assert!(
            seen.header("authorization").is_none(),
            "Authorization reached the upstream: {:?}",
            seen.headers
        );
    }
}

#[test]
fn api_key_refusals_carry_reason_and_challenge() {
    let f = key_fixture();
    let port = f.gw.port();
    let before = f.up.requests();

    // Missing: the challenge names the accepted scheme.
    let resp = get(port, "/k");
    assert_refused(&resp, 401, "missing_credential");
    let ch = challenges(&resp);
    assert_eq!(ch, ["ApiKey realm=\"credentialflow\""], "{ch:?}");

    // Right id, wrong secret.
    let wrong = format!("cf_{}_{}", f.good.id, "x".repeat(32));
    let resp = get_with(port, "/k", &[("X-API-Key", &wrong)]);
    assert_refused(&resp, 401, "invalid_credential");
    assert_eq!(challenges(&resp), ["ApiKey realm=\"credentialflow\""]);

    // The secret of one key under another key's id.
    let secret = &f.good.key[3 + f.good.id.len() + 1..];
    let swapped = format!("cf_{}_{secret}", f.expired.id);
    let resp = get_with(port, "/k", &[("X-API-Key", &swapped)]);
    assert_refused(&resp, 401, "invalid_credential");

    // Unknown id; not shaped like a key at all.
    let unknown = format!("cf_Zz9Zz9Zz9Zz9_{secret}");
    assert_refused(
        &get_with(port, "/k", &[("X-API-Key", &unknown)]),
        401,
        "invalid_credential",
    );
    assert_refused(
        &get_with(port, "/k", &[("X-API-Key", "hunter2")]),
        401,
        "invalid_credential",
    );

    // Expired (expires in the past) and revoked keys, with their right secrets.
    let resp = get_with(port, "/k", &[("X-API-Key", &f.expired.key)]);
    assert_refused(&resp, 401, "expired");
    assert!(challenges(&resp)[0].starts_with("ApiKey "));
    let resp = get_with(
        port,
        "/k",
        &[("Authorization", &format!("ApiKey {}", f.revoked.key))],
    );
    assert_refused(&resp, 401, "revoked");
    // Asked again (a refusal is not turned into a pass by any cache).
    assert_refused(
        &get_with(port, "/k", &[("X-API-Key", &f.revoked.key)]),
        401,
        "revoked",
    );

    // A key-only route does not take the key as a Bearer token.
    assert_refused(
        &get_with(port, "/k", &[("Authorization", &bearer(&f.good.key))]),
        401,
        "missing_credential",
    );

    assert_eq!(
        f.up.requests(),
        before,
        "a refused request reached the upstream"
    );
}

#[test]
fn api_key_in_query_only_where_the_route_allows_it_and_never_forwarded() {
    let f = key_fixture();
    let port = f.gw.port();

    let n = f.up.requests();
    let path = format!("/q/items?page=2&api_key={}&sort=asc", f.good.key);
    let seen = assert_passed(&get(port, &path), &f.up, n);
    assert_eq!(seen.target, "/q/items?page=2&sort=asc");
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert!(!seen.target.contains(&f.good.id));

    // The key as the only parameter.
    let n = f.up.requests();
    let seen = assert_passed(&get(port, &format!("/q?api_key={}", f.good.key)), &f.up, n);
    assert!(
        !seen.target.contains("api_key") && !seen.target.contains(&f.good.key),
        "the key reached the upstream in {:?}",
        seen.target
    );
    assert_eq!(seen.target.trim_end_matches('?'), "/q");

    // A wrong key in the query is refused like anywhere else.
    let wrong = format!("/q?api_key=cf_{}_{}", f.good.id, "y".repeat(32));
    assert_refused(&get(port, &wrong), 401, "invalid_credential");

    // A route without api_key_query ignores the parameter.
    let before = f.up.requests();
    let resp = get(port, &format!("/k?api_key={}", f.good.key));
    assert_refused(&resp, 401, "missing_credential");
    assert_eq!(f.up.requests(), before);
}

#[test]
fn identity_fields_from_the_client_are_replaced_or_removed() {
    let f = key_fixture();
    let port = f.gw.port();
    let spoof = [
        ("X-Consumer-Id", "admin"),
        ("X-Credential-Id", "root-key"),
        ("x-consumer-id", "admin2"),
    ];

    // Authenticated route: exactly the gateway's values.
    let n = f.up.requests();
    let mut headers = spoof.to_vec();
    headers.push(("X-API-Key", &f.good.key));
    let seen = assert_passed(&get_with(port, "/k", &headers), &f.up, n);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert_eq!(seen.headers_all("x-credential-id"), [f.good.id.as_str()]);

    // Public route: removed.
    let n = f.up.requests();
    let seen = assert_passed(&get_with(port, "/pub", &spoof), &f.up, n);
    assert!(seen.header("x-consumer-id").is_none(), "{:?}", seen.headers);
    assert!(
        seen.header("x-credential-id").is_none(),
        "{:?}",
        seen.headers
    );

    // A public route leaves an Authorization header alone.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(port, "/pub", &[("Authorization", "Bearer opaque")]),
        &f.up,
        n,
    );
    assert_eq!(seen.header("authorization"), Some("Bearer opaque"));
}

#[test]
fn forward_credential_keeps_the_credential_for_the_upstream() {
    let f = key_fixture();
    let port = f.gw.port();
    let auth = format!("ApiKey {}", f.good.key);

    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(port, "/fwd", &[("Authorization", &auth)]),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("authorization"), [auth.as_str()]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);

    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/fwd",
            &[("X-API-Key", &f.good.key), ("X-Consumer-Id", "evil")],
        ),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("x-api-key"), [f.good.key.as_str()]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);

    // Without forward_credential both are stripped.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/k",
            &[
                ("X-API-Key", &f.good.key),
                ("Authorization", "Bearer other"),
            ],
        ),
        &f.up,
        n,
    );
    assert!(seen.header("x-api-key").is_none(), "{:?}", seen.headers);
    assert!(seen.header("authorization").is_none(), "{:?}", seen.headers);
}

#[test]
fn a_custom_api_key_header_is_read_and_stripped() {
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let up = TestUpstream::start(Mode::Echo);
    let extra = format!(
        "[auth]\nkey_pepper_file = \"{}\"\napi_key_header = \"X-Partner-Key\"\n\n\
         [[consumers]]\nid = \"alice\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n",
        file_name(&pepper),
        key.id,
        key.hash
    );
    let gw = Gateway::start(&config(
        free_port(),
        up.port,
        &[("/", "auth = [\"api_key\"]")],
        &extra,
    ));
    assert_refused(
        &get_with(gw.port(), "/", &[("X-API-Key", &key.key)]),
        401,
        "missing_credential",
    );
    let n = up.requests();
    let seen = assert_passed(
        &get_with(gw.port(), "/", &[("x-partner-key", &key.key)]),
        &up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert!(seen.header("x-partner-key").is_none(), "{:?}", seen.headers);
}

// ---------------------------------------------------------------------------
// JWT with a JWKS file
// ---------------------------------------------------------------------------

struct JwtFixture {
    up: TestUpstream,
    gw: Gateway,
    jwk: Jwk,
    /// Another key with the same kid, not in the JWKS.
    other: Jwk,
}

/// Issuer "corp" (ES256, JWKS file from `jwk new`, audience orders-api, email → X-User-Email,
/// max_token_bytes 512); consumer svc-orders mapped from subject client-123; routes `/j`
/// (jwt:corp), `/fwd` (jwt:corp, forwarded), `/pub` (public).
fn jwt_fixture() -> JwtFixture {
    let jwk = jwk_new("k1");
    let other = jwk_new("k1");
    let up = TestUpstream::start(Mode::Echo);
    let extra = format!(
        "[auth]\nmax_token_bytes = 512\n\n\
         [[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
         jwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n\
         claim_headers = {{ email = \"X-User-Email\" }}\n\n\
         [[consumers]]\nid = \"svc-orders\"\n\
         [[consumers.credentials]]\nkind = \"jwt\"\nid = \"orders-client\"\nissuer = \"corp\"\nsubject = \"client-123\"\n",
        jwk.jwks.path_str()
    );
    let cfg = config(
        free_port(),
        up.port,
        &[
            ("/j", "auth = [\"jwt:corp\"]"),
            ("/fwd", "auth = [\"jwt:corp\"]\nforward_credential = true"),
            ("/pub", ""),
        ],
        &extra,
    );
    let gw = Gateway::start(&cfg);
    JwtFixture { up, gw, jwk, other }
}

fn claims(sub: &str) -> serde_json::Value {
    serde_json::json!({ "iss": ISS, "aud": AUD, "sub": sub })
}

#[test]
fn jwt_from_a_jwks_file_identifies_the_subject_and_maps_claims() {
    let f = jwt_fixture();
    let port = f.gw.port();

    let mut c = claims("alice");
    c["email"] = "alice@corp.test".into();
    let token = f.jwk.mint(&c);
    assert_eq!(decode_part(&token, 0)["alg"], "ES256");
    assert_eq!(decode_part(&token, 0)["kid"], "k1");
    let payload = decode_part(&token, 1);
    assert!(payload["exp"].as_i64().expect("exp") > now() + 3000);
    assert!(payload["iat"].is_i64());

    let n = f.up.requests();
    let resp = get_with(
        port,
        "/j/x",
        &[
            ("Authorization", &bearer(&token)),
            ("X-User-Email", "root@evil.test"),
        ],
    );
    let seen = assert_passed(&resp, &f.up, n);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert_eq!(seen.headers_all("x-credential-id"), ["jwt:corp"]);
    assert_eq!(seen.headers_all("x-user-email"), ["alice@corp.test"]);
    assert!(seen.header("authorization").is_none(), "{:?}", seen.headers);

    // The same token again (cached): the same identity.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(port, "/j/x", &[("Authorization", &bearer(&token))]),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    assert_eq!(seen.headers_all("x-user-email"), ["alice@corp.test"]);

    // A subject mapped to a consumer by a jwt credential.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/j",
            &[("Authorization", &bearer(&f.jwk.mint(&claims("client-123"))))],
        ),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["svc-orders"]);
    assert_eq!(seen.headers_all("x-credential-id"), ["orders-client"]);

    // No email claim: a client-sent X-User-Email does not get through.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/j",
            &[
                ("Authorization", &bearer(&f.jwk.mint(&claims("bob")))),
                ("X-User-Email", "root@evil.test"),
            ],
        ),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["bob"]);
    assert!(seen.header("x-user-email").is_none(), "{:?}", seen.headers);

    // Public route: the claim header and identity fields from the client are removed.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/pub",
            &[
                ("X-User-Email", "root@evil.test"),
                ("X-Consumer-Id", "admin"),
            ],
        ),
        &f.up,
        n,
    );
    assert!(seen.header("x-user-email").is_none(), "{:?}", seen.headers);
    assert!(seen.header("x-consumer-id").is_none(), "{:?}", seen.headers);

    // forward_credential keeps the bearer token.
    let n = f.up.requests();
    let seen = assert_passed(
        &get_with(port, "/fwd", &[("Authorization", &bearer(&token))]),
        &f.up,
        n,
    );
    assert_eq!(seen.headers_all("authorization"), [bearer(&token).as_str()]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
}

#[test]
fn jwt_times_audience_and_issuer_are_enforced() {
    let f = jwt_fixture();
    let port = f.gw.port();
    let before = f.up.requests();
    let t = now();

    let check = |claims: serde_json::Value, reason: &str| {
        let token = f.jwk.mint(&claims);
        let resp = get_with(port, "/j", &[("Authorization", &bearer(&token))]);
        assert_refused(&resp, 401, reason);
        assert_eq!(
            challenges(&resp),
            ["Bearer realm=\"credentialflow\", error=\"invalid_token\""],
            "for {reason}"
        );
    };

    let mut c = claims("alice");
    c["exp"] = (t - 3600).into();
    c["iat"] = (t - 7200).into();
    check(c, "expired");

    let mut c = claims("alice");
    c["nbf"] = (t + 3600).into();
    check(c, "not_yet_valid");

    let mut c = claims("alice");
    c["aud"] = "billing-api".into();
    check(c, "wrong_audience");

    let mut c = claims("alice");
    c["aud"] = serde_json::json!(["billing-api", "crm"]);
    check(c, "wrong_audience");

    let mut c = claims("alice");
    c["iss"] = "https://evil.test".into();
    check(c, "unknown_issuer");

    assert_eq!(
        f.up.requests(),
        before,
        "a refused token reached the upstream"
    );

    // Inside the 30 s leeway: still accepted. An audience list holding ours: accepted.
    let mut c = claims("alice");
    c["exp"] = (t - 5).into();
    let n = f.up.requests();
    assert_passed(
        &get_with(port, "/j", &[("Authorization", &bearer(&f.jwk.mint(&c)))]),
        &f.up,
        n,
    );
    let mut c = claims("alice");
    c["aud"] = serde_json::json!(["crm", AUD]);
    let n = f.up.requests();
    assert_passed(
        &get_with(port, "/j", &[("Authorization", &bearer(&f.jwk.mint(&c)))]),
        &f.up,
        n,
    );

    // Missing token: the plain Bearer challenge.
    let resp = get(port, "/j");
    assert_refused(&resp, 401, "missing_credential");
    assert_eq!(challenges(&resp), ["Bearer realm=\"credentialflow\""]);
}

#[test]
fn forged_oversized_and_unsigned_jwts_are_refused() {
    let f = jwt_fixture();
    let port = f.gw.port();
    let before = f.up.requests();
    let good = f.jwk.mint(&claims("alice"));

    // A changed signature byte.
    let parts: Vec<&str> = good.split('.').collect();
    let mut sig: Vec<u8> = parts[2].bytes().collect();
    sig[10] = if sig[10] == b'A' { b'B' } else { b'A' };
    let tampered = format!(
        "{}.{}.{}",
        parts[0],
        parts[1],
        String::from_utf8(sig).unwrap()
    );
    let resp = get_with(port, "/j", &[("Authorization", &bearer(&tampered))]);
    assert_refused(&resp, 401, "invalid_credential");
    assert_eq!(
        challenges(&resp),
        ["Bearer realm=\"credentialflow\", error=\"invalid_token\""]
    );

    // A changed payload under the original signature.
    let mut c = claims("admin");
    c["exp"] = decode_part(&good, 1)["exp"].clone();
    c["iat"] = decode_part(&good, 1)["iat"].clone();
    let forged = format!(
        "{}.{}.{}",
        parts[0],
        b64(c.to_string().as_bytes()),
        parts[2]
    );
    assert_refused(
        &get_with(port, "/j", &[("Authorization", &bearer(&forged))]),
        401,
        "invalid_credential",
    );

    // Signed by another key under the trusted kid.
    let impostor = f.other.mint(&claims("alice"));
    assert_refused(
        &get_with(port, "/j", &[("Authorization", &bearer(&impostor))]),
        401,
        "invalid_credential",
    );

    // A kid the JWKS file does not hold (no refetch for a file).
    let unknown = f.jwk.mint_kid("k9", &claims("alice"));
    assert_refused(
        &get_with(port, "/j", &[("Authorization", &bearer(&unknown))]),
        401,
        "unknown_key",
    );

    // Larger than max_token_bytes (512), validly signed.
    let mut c = claims("alice");
    c["pad"] = "p".repeat(600).into();
    let big = f.jwk.mint(&c);
    assert!(big.len() > 512);
    let resp = get_with(port, "/j", &[("Authorization", &bearer(&big))]);
    assert_problem(&resp, 401);
    assert_refused(&resp, 401, "invalid_credential");

    // alg none, with no signature and with the good one.
    let header = b64(br#"{"alg":"none","typ":"JWT","kid":"k1"}"#);
    let payload = b64(
        serde_json::json!({"iss": ISS, "aud": AUD, "sub": "alice", "exp": now() + 600})
            .to_string()
            .as_bytes(),
    );
    for token in [
        format!("{header}.{payload}."),
        format!("{header}.{payload}"),
        format!("{header}.{payload}.{}", parts[2]),
    ] {
        let resp = get_with(port, "/j", &[("Authorization", &bearer(&token))]);
        assert_problem(&resp, 401);
    }
    // HS256 with the public key's coordinates is not a thing; a HS256 token under the ES256
    // kid is refused (the key pins the algorithm).
    let hs_header = b64(br#"{"alg":"HS256","kid":"k1"}"#);
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"guess");
    let input = format!("{hs_header}.{payload}");
    let sig = b64(ring::hmac::sign(&key, input.as_bytes()).as_ref());
    assert_refused(
        &get_with(
            port,
            "/j",
            &[("Authorization", &bearer(&format!("{input}.{sig}")))],
        ),
        401,
        "invalid_credential",
    );

    // Garbage.
    for junk in ["abc", "a.b.c", "....", "eyJ.eyJ.x"] {
        assert_problem(
            &get_with(port, "/j", &[("Authorization", &bearer(junk))]),
            401,
        );
    }

    assert_eq!(
        f.up.requests(),
        before,
        "a refused token reached the upstream"
    );

    // The gateway still serves the good token.
    let n = f.up.requests();
    assert_passed(
        &get_with(port, "/j", &[("Authorization", &bearer(&good))]),
        &f.up,
        n,
    );
}

// ---------------------------------------------------------------------------
// JWKS URL served by cflow-idp
// ---------------------------------------------------------------------------

/// A running `cflow-idp`, killed on drop.
struct Idp {
    child: Child,
    port: u16,
}

impl Idp {
    fn start(port: u16, max_age: u64) -> Idp {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cflow-idp"))
            .args([
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--alg",
                "ES256",
                "--issuer",
                ISS,
                "--max-age",
                &max_age.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn cflow-idp");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("idp stdout"))
            .read_line(&mut line)
            .expect("read idp stdout");
        assert!(
            line.contains(&format!("cflow-idp listening on http://127.0.0.1:{port}")),
            "cflow-idp did not start: {line:?}"
        );
        Idp { child, port }
    }

    fn call(&self, method: &str, target: &str) -> Response {
        let resp = request(
            self.port,
            format!("{method} {target} HTTP/1.1\r\nHost: idp\r\n\r\n").as_bytes(),
        );
        assert_eq!(
            resp.status,
            200,
            "idp {method} {target}: {}",
            resp.body_str()
        );
        resp
    }

    fn token(&self, query: &str) -> String {
        self.call("GET", &format!("/token?aud={AUD}&{query}"))
            .body_str()
    }

    fn stats(&self) -> serde_json::Value {
        json(&self.call("GET", "/stats").body_str())
    }

    fn fetches(&self) -> u64 {
        self.stats()["jwks_fetches"].as_u64().expect("jwks_fetches")
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A gateway whose issuer "corp" takes its keys from `http://127.0.0.1:idp_port/jwks`, with
/// extra issuer keys; route `/j` takes jwt:corp.
fn url_gateway(idp_port: u16, up: &TestUpstream, auth: &str, issuer_extra: &str) -> Gateway {
    let extra = format!(
        "[auth]\n{auth}\n\n\
         [[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
         jwks_url = \"http://127.0.0.1:{idp_port}/jwks\"\nalgorithms = [\"ES256\"]\n{issuer_extra}\n"
    );
    Gateway::start(&config(
        free_port(),
        up.port,
        &[("/j", "auth = [\"jwt:corp\"]")],
        &extra,
    ))
}

fn bearer_get(port: u16, token: &str) -> Response {
    get_with(port, "/j", &[("Authorization", &bearer(token))])
}

/// Polls until a request with `token` passes, within `timeout`; the last response otherwise.
fn poll_until_ok(port: u16, token: &str, timeout: Duration) -> Response {
    let deadline = Instant::now() + timeout;
    loop {
        let resp = bearer_get(port, token);
        if resp.status == 200 || Instant::now() >= deadline {
            return resp;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn jwks_url_keys_unavailable_until_the_idp_answers() {
    let up = TestUpstream::start(Mode::Echo);
    let idp_port = free_port();
    let gw = url_gateway(idp_port, &up, "", "jwks_min_refresh = \"1s\"");

    // Any token naming the issuer: the gateway has no keys yet.
    let stand_in = jwk_new("k1");
    let token = stand_in.mint(&claims("alice"));
    let resp = bearer_get(gw.port(), &token);
    assert_refused(&resp, 503, "keys_unavailable");
    assert!(resp.header("retry-after").is_some(), "{:?}", resp.headers);
    assert_eq!(up.requests(), 0);

    let idp = Idp::start(idp_port, 300);
    let token = idp.token("sub=alice");
    let started = Instant::now();
    let resp = poll_until_ok(gw.port(), &token, Duration::from_secs(5));
    assert_eq!(
        resp.status,
        200,
        "keys not loaded {:?} after the IdP started: {}",
        started.elapsed(),
        resp.body_str()
    );
    assert_eq!(up.last_request().headers_all("x-consumer-id"), ["alice"]);
}

/// Starts the gateway first, pointing at a port where nothing listens yet (its first fetch
/// fails and is retried every second), then the IdP on that port, and waits until a token
/// passes. (Starting the IdP first can lose the start-up keys: see
/// `jwks_loaded_at_start_up_reach_the_cores`.)
fn gateway_then_idp(up: &TestUpstream, max_age: u64, auth: &str, issuer: &str) -> (Idp, Gateway) {
    let idp_port = free_port();
    let gw = url_gateway(
        idp_port,
        up,
        auth,
        &format!("jwks_min_refresh = \"1s\"\n{issuer}"),
    );
    let idp = Idp::start(idp_port, max_age);
    let resp = poll_until_ok(gw.port(), &idp.token("sub=warmup"), Duration::from_secs(5));
    assert_eq!(resp.status, 200, "keys never loaded: {}", resp.body_str());
    (idp, gw)
}

#[test]
fn jwks_rotation_is_picked_up_by_the_first_request_with_the_new_kid() {
    let up = TestUpstream::start(Mode::Echo);
    let (idp, gw) = gateway_then_idp(&up, 300, "", "");
    let fetches = idp.fetches();
    assert_eq!(fetches, 1, "one successful fetch at start-up");

    let rotated = json(&idp.call("POST", "/rotate").body_str());
    assert_eq!(rotated["kid"], "k2");
    let token = idp.token("sub=bob");
    assert_eq!(decode_part(&token, 0)["kid"], "k2");
    let resp = bearer_get(gw.port(), &token);
    assert_eq!(
        resp.status,
        200,
        "the first request with the new kid: {}",
        resp.body_str()
    );
    assert_eq!(up.last_request().headers_all("x-consumer-id"), ["bob"]);
    assert_eq!(idp.fetches(), fetches + 1, "exactly one refetch");
}

#[test]
fn jwks_rotation_after_the_cooldown_is_picked_up_by_the_first_request() {
    // A short refetch cooldown that has passed since the last fetch.
    let up = TestUpstream::start(Mode::Echo);
    let (idp, gw) = gateway_then_idp(&up, 300, "", "jwks_refetch_cooldown = \"1s\"");
    let fetches = idp.fetches();
    std::thread::sleep(Duration::from_millis(1200));

    let rotated = json(&idp.call("POST", "/rotate").body_str());
    assert_eq!(rotated["kid"], "k2");
    let token = idp.token("sub=bob");
    assert_eq!(decode_part(&token, 0)["kid"], "k2");
    let resp = bearer_get(gw.port(), &token);
    assert_eq!(
        resp.status,
        200,
        "the first request with the new kid: {}",
        resp.body_str()
    );
    assert_eq!(up.last_request().headers_all("x-consumer-id"), ["bob"]);
    assert_eq!(idp.fetches(), fetches + 1, "exactly one refetch");

    // Another token under the new key: no further fetch.
    let resp = bearer_get(gw.port(), &idp.token("sub=erin"));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    // A token naming k1 but signed with k2's key: a bad signature, and no further fetch.
    let resp = bearer_get(gw.port(), &idp.token("sub=carol&kid=k1"));
    assert_refused(&resp, 401, "invalid_credential");
    assert_eq!(idp.fetches(), fetches + 1);

    // A rotation that drops the old key, after the cooldown: picked up as well.
    std::thread::sleep(Duration::from_millis(1200));
    idp.call("POST", "/rotate?drop=1");
    let resp = bearer_get(gw.port(), &idp.token("sub=dave"));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(idp.fetches(), fetches + 2);
}

#[test]
fn jwks_loaded_at_start_up_reach_the_cores() {
    // The IdP is up before the gateway starts; several cores widen the window between the
    // refresher's first fetch and the cores' attachment.
    let up = TestUpstream::start(Mode::Echo);
    let idp = Idp::start(free_port(), 300);
    let token = idp.token("sub=alice");
    for attempt in 0..5 {
        let extra = format!(
            "[[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
             jwks_url = \"http://127.0.0.1:{}/jwks\"\n",
            idp.port
        );
        let mut b = ConfigBuilder::new(free_port(), &[up.port]).workers(4);
        b = b.route("/j", "auth = [\"jwt:corp\"]");
        let gw = Gateway::start(&format!("{}\n{extra}", b.build()));
        let resp = poll_until_ok(gw.port(), &token, Duration::from_secs(3));
        assert_eq!(
            resp.status,
            200,
            "start {attempt}: keys fetched at start-up never reached the cores: {}",
            resp.body_str()
        );
    }
}

#[test]
fn a_flood_of_unknown_kids_causes_at_most_one_fetch() {
    let up = TestUpstream::start(Mode::Echo);
    let (idp, gw) = gateway_then_idp(
        &up,
        300,
        "jwks_wait = \"1s\"",
        "jwks_refetch_cooldown = \"60s\"",
    );
    let fetches = idp.fetches();
    let n = up.requests();

    let tokens: Vec<String> = (0..50)
        .map(|i| idp.token(&format!("sub=u{i}&kid=random-{i}")))
        .collect();
    let started = Instant::now();
    for token in &tokens {
        let resp = bearer_get(gw.port(), token);
        assert_refused(&resp, 401, "unknown_key");
        assert_eq!(
            challenges(&resp),
            ["Bearer realm=\"credentialflow\", error=\"invalid_token\""]
        );
    }
    let elapsed = started.elapsed();
    let now_fetches = idp.fetches();
    assert!(
        now_fetches <= fetches + 1,
        "{} fetches for 50 unknown kids",
        now_fetches - fetches
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "50 refusals took {elapsed:?}: every request waited for keys"
    );
    assert_eq!(up.requests(), n);

    // The known key keeps working, without a fetch.
    let resp = bearer_get(gw.port(), &idp.token("sub=bob"));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(idp.fetches(), now_fetches);
}

#[test]
fn idp_down_keeps_the_last_good_keys() {
    let up = TestUpstream::start(Mode::Echo);
    // The IdP asks for a refresh every second, so the gateway does try while it is down.
    let (idp, gw) = gateway_then_idp(
        &up,
        1,
        "jwks_wait = \"500ms\"",
        "jwks_refetch_cooldown = \"1s\"",
    );

    idp.call("POST", "/down");
    let fetches = idp.fetches();
    // Fresh tokens (not cached) under the known kid, while refreshes fail.
    let deadline = Instant::now() + Duration::from_millis(2500);
    let mut i = 0;
    while Instant::now() < deadline {
        let resp = bearer_get(gw.port(), &idp.token(&format!("sub=down{i}")));
        assert_eq!(
            resp.status,
            200,
            "while the IdP is down: {}",
            resp.body_str()
        );
        assert_eq!(
            up.last_request().headers_all("x-consumer-id"),
            [format!("down{i}").as_str()]
        );
        i += 1;
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        idp.fetches() > fetches,
        "the gateway did not try the IdP while it was down"
    );
    // An unknown kid while the IdP is down: refused as unknown, not unavailable.
    let resp = bearer_get(gw.port(), &idp.token("sub=x&kid=nope"));
    assert_refused(&resp, 401, "unknown_key");

    idp.call("POST", "/up");
    let resp = bearer_get(gw.port(), &idp.token("sub=back"));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
}

// ---------------------------------------------------------------------------
// Basic
// ---------------------------------------------------------------------------

#[test]
fn basic_credentials_from_basic_new() {
    let hash = basic_hash("ops", "correct horse battery");
    let up = TestUpstream::start(Mode::Echo);
    let extra = format!(
        "[[consumers]]\nid = \"ops-team\"\n\
         [[consumers.credentials]]\nkind = \"basic\"\nid = \"ops-login\"\nusername = \"ops\"\nhash = \"{hash}\"\n"
    );
    let gw = Gateway::start(&config(
        free_port(),
        up.port,
        &[("/b", "auth = [\"basic\"]")],
        &extra,
    ));
    let port = gw.port();
    let basic = |user: &str, pass: &str| format!("Basic {}", b64_std(&format!("{user}:{pass}")));

    let n = up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/b",
            &[("Authorization", &basic("ops", "correct horse battery"))],
        ),
        &up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["ops-team"]);
    assert_eq!(seen.headers_all("x-credential-id"), ["ops-login"]);
    assert!(seen.header("authorization").is_none(), "{:?}", seen.headers);

    let before = up.requests();
    for (user, pass) in [
        ("ops", "wrong"),
        ("ops", "correct horse batter"),
        ("nobody", "x"),
    ] {
        let resp = get_with(port, "/b", &[("Authorization", &basic(user, pass))]);
        assert_refused(&resp, 401, "invalid_credential");
        assert_eq!(
            challenges(&resp),
            ["Basic realm=\"credentialflow\", charset=\"UTF-8\""]
        );
    }
    let resp = get(port, "/b");
    assert_refused(&resp, 401, "missing_credential");
    assert_eq!(
        challenges(&resp),
        ["Basic realm=\"credentialflow\", charset=\"UTF-8\""]
    );
    assert_refused(
        &get_with(port, "/b", &[("Authorization", "Basic !!!notbase64")]),
        401,
        "invalid_credential",
    );
    assert_eq!(up.requests(), before);

    // Repeated good requests, on one connection and on new ones.
    let mut c = Client::connect(port);
    let good = basic("ops", "correct horse battery");
    for i in 0..10 {
        let resp = if i % 2 == 0 {
            c.request(
                format!("GET /b/{i} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {good}\r\n\r\n")
                    .as_bytes(),
            )
        } else {
            get_with(port, &format!("/b/{i}"), &[("Authorization", &good)])
        };
        assert_eq!(resp.status, 200, "request {i}: {}", resp.body_str());
    }
    // And the wrong password stays wrong after the good one was cached.
    assert_refused(
        &get_with(port, "/b", &[("Authorization", &basic("ops", "wrong"))]),
        401,
        "invalid_credential",
    );
}

fn b64_std(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text.as_bytes())
}

// ---------------------------------------------------------------------------
// Several methods on one route
// ---------------------------------------------------------------------------

#[test]
fn a_route_with_several_methods_challenges_for_each() {
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let jwk = jwk_new("k1");
    let up = TestUpstream::start(Mode::Echo);
    let extra = format!(
        "[auth]\nkey_pepper_file = \"{}\"\n\n\
         [[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\njwks_file = \"{}\"\n\n\
         [[consumers]]\nid = \"alice\"\n\
         [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n",
        file_name(&pepper),
        jwk.jwks.path_str(),
        key.id,
        key.hash
    );
    let gw = Gateway::start(&config(
        free_port(),
        up.port,
        &[("/", "auth = [\"jwt:corp\", \"api_key\"]")],
        &extra,
    ));
    let port = gw.port();

    let resp = get(port, "/");
    assert_refused(&resp, 401, "missing_credential");
    assert_eq!(
        challenges(&resp),
        [
            "Bearer realm=\"credentialflow\"",
            "ApiKey realm=\"credentialflow\""
        ]
    );
    let resp = get_with(port, "/", &[("Authorization", "Bearer a.b.c")]);
    assert_refused(&resp, 401, "invalid_credential");
    assert_eq!(
        challenges(&resp),
        [
            "Bearer realm=\"credentialflow\", error=\"invalid_token\"",
            "ApiKey realm=\"credentialflow\""
        ]
    );

    let n = up.requests();
    let seen = assert_passed(&get_with(port, "/", &[("X-API-Key", &key.key)]), &up, n);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);
    let n = up.requests();
    let seen = assert_passed(
        &get_with(
            port,
            "/",
            &[("Authorization", &bearer(&jwk.mint(&claims("zed"))))],
        ),
        &up,
        n,
    );
    assert_eq!(seen.headers_all("x-consumer-id"), ["zed"]);
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

#[test]
fn check_refuses_plaintext_keys_missing_pepper_and_unknown_issuers() {
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let base = |extra: &str| {
        config(
            free_port(),
            free_port(),
            &[("/", "auth = [\"api_key\"]")],
            &format!(
                "[auth]\nkey_pepper_file = \"{}\"\n\n[[consumers]]\nid = \"alice\"\n{extra}",
                file_name(&pepper)
            ),
        )
    };

    // The hash from `key new`: fine.
    let good = base(&format!(
        "[[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n",
        key.id, key.hash
    ));
    let (file, out) = check(&good);
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    drop(file);

    // The key itself as the hash.
    let bad = base(&format!(
        "[[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n",
        key.id, key.key
    ));
    let (file, out) = check(&bad);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    let line = line_of(&bad, &key.key);
    let at = format!("{}:{line}", file.path_str());
    assert!(out.stderr.contains(&at), "expected {at} in {}", out.stderr);
    assert!(
        !out.combined().contains(&key.key[3 + key.id.len() + 1..]),
        "the error repeats the secret: {}",
        out.combined()
    );

    // The key pasted into a comment next to its hash: refused too (docs/CONFIG.md: "comments
    // included, since a key pasted into a comment is just as leaked").
    let bad = base(&format!(
        "# issued {}\n[[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\" # {}\n",
        key.key, key.id, key.hash, key.key
    ));
    let (file, out) = check(&bad);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    let first = line_of(&bad, &format!("# issued {}", key.key));
    let second = line_of(&bad, "hash = ");
    for line in [first, second] {
        let at = format!("{}:{line}:", file.path_str());
        assert!(out.stderr.contains(&at), "expected {at} in {}", out.stderr);
    }
    // Text that only resembles a key (too short a secret, or cf_ inside a word) is not refused.
    let fine = base("groups = [\"cf_docs\", \"abc_cf_x\", \"cf_abc_short\"]\n");
    let (_file, out) = check(&fine);
    assert_eq!(out.code(), Some(0), "{}", out.combined());

    // A key anywhere else on a line (here a consumer group).
    let bad = base(&format!("groups = [\"{}\"]\n", key.key));
    assert_refused_at(&bad, &key.key);

    // A JWT pasted into the config.
    let token = jwk_new("k1").mint(&claims("alice"));
    let bad = base(&format!("groups = [\"{token}\"]\n"));
    assert_refused_at(&bad, &token);

    // api_key on a route and no pepper anywhere.
    let no_pepper = config(
        free_port(),
        free_port(),
        &[("/", "auth = [\"api_key\"]")],
        "",
    );
    let out = assert_refused_at(&no_pepper, "api_key");
    assert!(out.stderr.contains("pepper"), "{}", out.stderr);

    // An api_key credential and no pepper.
    let no_pepper = config(
        free_port(),
        free_port(),
        &[],
        &format!(
            "[[consumers]]\nid = \"alice\"\n[[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\n",
            key.id, key.hash
        ),
    );
    let (_file, out) = check(&no_pepper);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("pepper"), "{}", out.stderr);

    // A pepper file that is too short.
    let short = TempFile::new("short", "pepper");
    let cfg = config(
        free_port(),
        free_port(),
        &[("/", "auth = [\"api_key\"]")],
        &format!("[auth]\nkey_pepper_file = \"{}\"\n", file_name(&short)),
    );
    assert_refused_at(&cfg, "key_pepper_file");

    // jwt:<name> naming no issuer.
    let cfg = config(
        free_port(),
        free_port(),
        &[("/", "auth = [\"jwt:nosuch\"]")],
        "",
    );
    let out = assert_refused_at(&cfg, "jwt:nosuch");
    assert!(out.stderr.contains("nosuch"), "{}", out.stderr);

    // An unknown method, and alg none among an issuer's algorithms.
    let jwk = jwk_new("k1");
    let cfg = config(
        free_port(),
        free_port(),
        &[("/", "auth = [\"oauth\"]")],
        &format!(
            "[[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\njwks_file = \"{}\"\nalgorithms = [\"none\"]\n",
            jwk.jwks.path_str()
        ),
    );
    let (file, out) = check(&cfg);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    for needle in ["\"oauth\"", "\"none\""] {
        let at = format!("{}:{}", file.path_str(), line_of(&cfg, needle));
        assert!(out.stderr.contains(&at), "expected {at} in {}", out.stderr);
    }
}

// ---------------------------------------------------------------------------
// mTLS
// ---------------------------------------------------------------------------

fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[test]
fn mtls_certificates_map_to_consumers() {
    let server_ca = Ca::new("Server CA");
    let client_ca = Ca::new("Client CA");
    let server = server_ca.server(&["api.test"]);
    let partner = client_ca.client("partner", 1);
    let named = client_ca.client("billing", 2);
    let stranger = client_ca.client("stranger", 3);
    let files = [
        TempFile::new(&server.cert_pem, "pem"),
        TempFile::new(&server.key_pem, "key"),
        TempFile::new(&client_ca.pem(), "pem"),
    ];
    let up = TestUpstream::start(Mode::Echo);
    let (required, optional) = (free_port(), free_port());
    let tls = |port: u16, mode: &str| {
        format!(
            "[[listeners]]\nname = \"{mode}\"\naddress = \"127.0.0.1:{port}\"\n\n\
             [listeners.tls]\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\
             client_auth = \"{mode}\"\nclient_ca = \"{}\"\n\n",
            files[0].path_str(),
            files[1].path_str(),
            files[2].path_str()
        )
    };
    // Fingerprint written upper case with colons (as tools print it).
    let fp_colons: String = sha256_hex(&partner.der)
        .to_ascii_uppercase()
        .as_bytes()
        .chunks(2)
        .map(|c| String::from_utf8_lossy(c).into_owned())
        .collect::<Vec<_>>()
        .join(":");
    let cfg = format!(
        "[gateway]\nworkers = 1\npin = false\n\n[logging]\nlevel = \"warn\"\n\n{}{}\
         [[upstreams]]\nname = \"app\"\ntargets = [\"127.0.0.1:{}\"]\n\n\
         [[apis]]\nname = \"demo\"\n\n\
         [[apis.routes]]\npath = \"/m\"\nupstream = \"app\"\nauth = [\"mtls\"]\n\n\
         [[apis.routes]]\npath = \"/pub\"\nupstream = \"app\"\nclient_cert_headers = true\n\n\
         [[consumers]]\nid = \"partner-co\"\n\
         [[consumers.credentials]]\nkind = \"mtls\"\nid = \"partner-cert\"\nfingerprint = \"{fp_colons}\"\n\n\
         [[consumers]]\nid = \"billing-svc\"\n\
         [[consumers.credentials]]\nkind = \"mtls\"\nsubject_cn = \"billing\"\n",
        tls(required, "required"),
        tls(optional, "optional"),
        up.port
    );
    let _gw = Gateway::start(&cfg);

    let connect = |port: u16, who: Option<&Issued>| {
        Client::try_connect_tls(port, client_config(&server_ca.pem(), BOTH, who), "api.test")
            .unwrap_or_else(|e| panic!("TLS connect to {port}: {e}"))
    };
    let get_m = |c: &mut Client, path: &str| {
        c.request(
            format!("GET {path} HTTP/1.1\r\nHost: api.test\r\nX-Consumer-Id: admin\r\n\r\n")
                .as_bytes(),
        )
    };

    // The fingerprint the gateway forwards on a public route is the one configured.
    let mut c = connect(required, Some(&partner));
    let n = up.requests();
    let seen = assert_passed(&get_m(&mut c, "/pub"), &up, n);
    assert_eq!(
        seen.header("x-client-cert-fingerprint"),
        Some(sha256_hex(&partner.der).as_str())
    );
    assert!(seen.header("x-consumer-id").is_none(), "{:?}", seen.headers);

    // By fingerprint, on both listeners.
    for port in [required, optional] {
        let mut c = connect(port, Some(&partner));
        let n = up.requests();
        let seen = assert_passed(&get_m(&mut c, "/m"), &up, n);
        assert_eq!(seen.headers_all("x-consumer-id"), ["partner-co"]);
        assert_eq!(seen.headers_all("x-credential-id"), ["partner-cert"]);
    }

    // By subject CN.
    let mut c = connect(required, Some(&named));
    let n = up.requests();
    let seen = assert_passed(&get_m(&mut c, "/m"), &up, n);
    assert_eq!(seen.headers_all("x-consumer-id"), ["billing-svc"]);

    // A trusted certificate that maps to no consumer.
    let mut c = connect(required, Some(&stranger));
    let resp = get_m(&mut c, "/m");
    assert_refused(&resp, 401, "invalid_credential");
    assert_eq!(challenges(&resp), ["Mutual realm=\"credentialflow\""]);

    // No certificate (optional listener): missing.
    let mut c = connect(optional, None);
    let resp = get_m(&mut c, "/m");
    assert_refused(&resp, 401, "missing_credential");
    assert_eq!(challenges(&resp), ["Mutual realm=\"credentialflow\""]);

    // A plain-text Authorization does not stand in for the certificate.
    let mut c = connect(optional, None);
    let resp =
        c.request(b"GET /m HTTP/1.1\r\nHost: api.test\r\nAuthorization: Basic b3BzOng=\r\n\r\n");
    assert_refused(&resp, 401, "missing_credential");
}

// ---------------------------------------------------------------------------
// JWKS over HTTPS
// ---------------------------------------------------------------------------

/// A JWKS server over TLS: answers every request with `jwks`, counting them.
struct HttpsJwks {
    port: u16,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl HttpsJwks {
    fn start(server: &common::pki::Issued, jwks: String) -> HttpsJwks {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let chain = vec![rustls::pki_types::CertificateDer::from(server.der.clone())];
        let key = rustls::pki_types::PrivateKeyDer::try_from(server.key_der.clone()).expect("key");
        let config = std::sync::Arc::new(
            rustls::ServerConfig::builder_with_provider(common::pki::provider())
                .with_safe_default_protocol_versions()
                .expect("versions")
                .with_no_client_auth()
                .with_single_cert(chain, key)
                .expect("server cert"),
        );
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let fetches = std::sync::Arc::new(AtomicUsize::new(0));
        let counter = fetches.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let config = config.clone();
                let counter = counter.clone();
                let jwks = jwks.clone();
                std::thread::spawn(move || {
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let session = rustls::ServerConnection::new(config).expect("session");
                    let mut tls = rustls::StreamOwned::new(session, stream);
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n\r\n") {
                        match std::io::Read::read(&mut tls, &mut byte) {
                            Ok(1) => head.push(byte[0]),
                            _ => return,
                        }
                    }
                    counter.fetch_add(1, Ordering::SeqCst);
                    let response = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{jwks}",
                        jwks.len()
                    );
                    let _ = tls.write_all(response.as_bytes());
                    tls.conn.send_close_notify();
                    let _ = tls.flush();
                });
            }
        });
        HttpsJwks { port, fetches }
    }

    fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[test]
fn jwks_over_https_is_verified_against_the_configured_ca() {
    let ca = Ca::new("IdP CA");
    let server = ca.server(&["localhost"]);
    let ca_file = TempFile::new(&ca.pem(), "pem");
    let other_ca_file = TempFile::new(&Ca::new("Another CA").pem(), "pem");
    let key = jwk_new("k1");
    let jwks = std::fs::read_to_string(&key.jwks.path).expect("jwks");
    let idp = HttpsJwks::start(&server, jwks);
    let token = key.mint(&claims("alice"));
    let up = TestUpstream::start(Mode::Echo);
    let start = |ca: &TempFile| {
        let extra = format!(
            "[[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
             jwks_url = \"https://localhost:{}/jwks\"\njwks_ca = \"{}\"\njwks_min_refresh = \"1s\"\n",
            idp.port,
            ca.path_str()
        );
        Gateway::start(&config(
            free_port(),
            up.port,
            &[("/j", "auth = [\"jwt:corp\"]")],
            &extra,
        ))
    };

    let gw = start(&ca_file);
    let resp = poll_until_ok(gw.port(), &token, Duration::from_secs(5));
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert_eq!(up.last_request().headers_all("x-consumer-id"), ["alice"]);
    drop(gw);

    // A certificate the configured CA did not issue: the keys never load.
    let fetched = idp.fetches();
    let gw = start(&other_ca_file);
    std::thread::sleep(Duration::from_millis(1500));
    assert_refused(&bearer_get(gw.port(), &token), 503, "keys_unavailable");
    assert_eq!(
        idp.fetches(),
        fetched,
        "no request got past the TLS handshake"
    );
    assert!(gw.output().contains("JWKS fetch failed"), "{}", gw.output());
}
