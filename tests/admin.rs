//! The admin API, black-box: admin tokens and roles (401 with the Bearer challenge, 403 for a
//! role too weak), the API-key lifecycle (issue, rotate with a grace period, revoke, delete the
//! consumer) seen by proxied requests on every core, the subscription approval workflow, JWT
//! revocation by `jti` and `sub`, config objects shown read-only, request errors (404, 405, 400,
//! 411, 413), the hash-chained audit trail and `audit verify` against tampering, durability of
//! acknowledged writes across a `kill -9`, status and reload, and the OpenAPI document. The real
//! gateway runs with two cores, its admin listener and store on loopback and a temp directory;
//! requests are raw HTTP/1.1 over `TcpStream`.

mod common;

use common::*;
use serde_json::{json, Value};
use std::fs;
use std::net::TcpStream;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

const ISS: &str = "https://corp.test";
const AUD: &str = "orders-api";
const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// Status, header fields and JSON body (`Null` when empty) of one admin response.
type Reply = (u16, Vec<(String, String)>, Value);

/// One admin request on a fresh connection (`Connection: close`), the body sent with
/// `Content-Length`; I/O errors are returned.
fn try_admin(
    port: u16,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<Reply> {
    let mut raw =
        format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n");
    if let Some(token) = token {
        raw.push_str(&format!("Authorization: Bearer {token}\r\n"));
    }
    if let Some(body) = body {
        raw.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    try_raw(port, raw.as_bytes())
}

/// Sends raw bytes on a fresh connection and reads one response.
fn try_raw(port: u16, raw: &[u8]) -> std::io::Result<Reply> {
    let mut client = Client::try_connect(port)?;
    client.try_send(raw)?;
    let resp = client.try_read_response()?;
    let value = if resp.body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&resp.body).unwrap_or_else(|e| {
            panic!(
                "admin answered {} with a body that is not JSON ({e}): {:?}",
                resp.status,
                resp.body_str()
            )
        })
    };
    Ok((resp.status, resp.headers, value))
}

fn admin(port: u16, method: &str, path: &str, token: Option<&str>, body: Option<&str>) -> Reply {
    try_admin(port, method, path, token, body)
        .unwrap_or_else(|e| panic!("admin {method} {path}: {e}"))
}

fn raw(port: u16, bytes: &[u8]) -> Reply {
    try_raw(port, bytes).unwrap_or_else(|e| panic!("admin raw request: {e}"))
}

fn header<'r>(reply: &'r Reply, name: &str) -> Option<&'r str> {
    reply
        .1
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Asserts the status and returns the body.
fn expect(reply: &Reply, status: u16) -> &Value {
    assert_eq!(reply.0, status, "expected {status}, got {:?}", reply);
    &reply.2
}

/// Asserts a problem+json answer with `status` and `reason`.
fn expect_problem<'r>(reply: &'r Reply, status: u16, reason: &str) -> &'r Value {
    let body = expect(reply, status);
    let content_type = header(reply, "content-type").unwrap_or("");
    assert!(
        content_type.starts_with("application/problem+json"),
        "content type {content_type:?} for {reply:?}"
    );
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["reason"], reason, "{body}");
    body
}

/// No object in `value` has a field that could hold a secret.
fn assert_no_secret_fields(value: &Value) {
    match value {
        Value::Object(map) => {
            for (name, inner) in map {
                assert!(
                    !["hash", "secret", "password", "pepper"].contains(&name.as_str()),
                    "field `{name}` in {value}"
                );
                assert_no_secret_fields(inner);
            }
        }
        Value::Array(items) => items.iter().for_each(assert_no_secret_fields),
        _ => {}
    }
}

fn propagated(body: &Value) -> u64 {
    body["propagated_us"]
        .as_u64()
        .unwrap_or_else(|| panic!("propagated_us is not an integer: {body}"))
}

/// The admin tokens every gateway here accepts: "ops" (admin), "approver" (operator) and
/// "reader" (auditor), made once with `admin token new`.
struct Tokens {
    admin: String,
    operator: String,
    auditor: String,
    admin_hash: String,
    toml: String,
}

fn admin_token(role: &str) -> (String, String) {
    let v = json(&cli_ok(&[
        "admin", "token", "new", "--role", role, "--json",
    ]));
    let token = v["token"].as_str().expect("token").to_string();
    let hash = v["hash"].as_str().expect("hash").to_string();
    assert!(token.starts_with("cfadm_"), "{token}");
    assert_eq!(hash.len(), 64, "{hash}");
    assert!(!hash.contains(&token[6..]), "the hash holds the token");
    (token, hash)
}

fn tokens() -> &'static Tokens {
    static TOKENS: OnceLock<Tokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let (admin, admin_hash) = admin_token("admin");
        let (operator, operator_hash) = admin_token("operator");
        let (auditor, auditor_hash) = admin_token("auditor");
        let toml = format!(
            "[[admin.tokens]]\nname = \"ops\"\nrole = \"admin\"\nhash = \"{admin_hash}\"\n\n\
             [[admin.tokens]]\nname = \"approver\"\nrole = \"operator\"\nhash = \"{operator_hash}\"\n\n\
             [[admin.tokens]]\nname = \"reader\"\nrole = \"auditor\"\nhash = \"{auditor_hash}\"\n"
        );
        Tokens {
            admin,
            operator,
            auditor,
            admin_hash,
            toml,
        }
    })
}

/// A directory in the temp directory (store, audit log, data_dir), removed on drop.
struct DataDir {
    path: PathBuf,
}

impl DataDir {
    fn new() -> DataDir {
        let path = unique_temp_path("admin");
        fs::create_dir_all(&path).expect("create data dir");
        DataDir { path }
    }

    fn file(&self, name: &str) -> String {
        self.path.join(name).to_string_lossy().into_owned()
    }

    fn store(&self) -> String {
        self.file("store.db")
    }

    fn audit_log(&self) -> String {
        self.file("audit.jsonl")
    }
}

impl Drop for DataDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// What a gateway here serves beyond the common config.
#[derive(Clone, Default)]
struct Setup {
    /// Lines of the `[[apis]]` table "demo" (whose only route is `/`).
    api: String,
    /// Lines of `[admin]` besides the address.
    admin: String,
    /// Top-level tables (`[[issuers]]`, `[[consumers]]`).
    extra: String,
    /// Targets of upstream "app" after the test upstream.
    extra_targets: Vec<u16>,
    /// Lines of the `[[upstreams]]` table "app".
    upstream: Vec<String>,
}

impl Setup {
    /// API "demo" guarded by API keys.
    fn keys() -> Setup {
        Setup {
            api: "auth = [\"api_key\"]".into(),
            ..Setup::default()
        }
    }

    /// API "demo" guarded by API keys, open only to approved subscriptions.
    fn approval() -> Setup {
        Setup {
            api: "auth = [\"api_key\"]\nsubscription = \"approval\"".into(),
            ..Setup::default()
        }
    }
}

/// Two cores, listener on `listen`, upstream "app" at `upstream`, the admin API on `admin`
/// with [`tokens`], store and audit log in `data`, the pepper file, and `setup`.
fn config_text(
    setup: &Setup,
    listen: u16,
    admin: u16,
    upstream: u16,
    data: &DataDir,
    pepper: &TempFile,
) -> String {
    let targets: Vec<u16> = std::iter::once(upstream)
        .chain(setup.extra_targets.iter().copied())
        .collect();
    let builder = setup
        .upstream
        .iter()
        .fold(ConfigBuilder::new(listen, &targets), |b, line| {
            b.upstream_opt(line)
        });
    let text = builder
        .workers(2)
        .build()
        .replacen(
            "[gateway]\n",
            &format!("[gateway]\ndata_dir = \"{}\"\n", data.path.display()),
            1,
        )
        .replacen(
            "[logging]\n",
            &format!("[logging]\naudit_log = \"{}\"\n", data.audit_log()),
            1,
        )
        .replacen(
            "[[apis]]\nname = \"demo\"\n",
            &format!("[[apis]]\nname = \"demo\"\n{}\n", setup.api),
            1,
        );
    format!(
        "{text}\n[admin]\naddress = \"127.0.0.1:{admin}\"\n{}\n\n{}\n[store]\npath = \"{}\"\n\n\
         [auth]\nkey_pepper_file = \"{}\"\n\n{}\n",
        setup.admin,
        tokens().toml,
        data.store(),
        file_name(pepper),
        setup.extra
    )
}

/// Waits (up to 5 s) until the admin port accepts connections.
fn wait_admin(gw: &Gateway, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while TcpStream::connect_timeout(&local(port), Duration::from_millis(200)).is_err() {
        assert!(
            Instant::now() < deadline,
            "the admin API did not listen on 127.0.0.1:{port} within 5 s; output:\n{}",
            gw.output()
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A running gateway with its upstream, data directory and pepper.
struct Fixture {
    gw: Gateway,
    admin: u16,
    up: TestUpstream,
    setup: Setup,
    data: DataDir,
    pepper: TempFile,
}

impl Fixture {
    fn start(setup: Setup) -> Fixture {
        let up = TestUpstream::start(Mode::Echo);
        let data = DataDir::new();
        let pepper = pepper_file();
        let (gw, admin) = Fixture::launch(&setup, up.port, &data, &pepper);
        Fixture {
            gw,
            admin,
            up,
            setup,
            data,
            pepper,
        }
    }

    fn launch(setup: &Setup, upstream: u16, data: &DataDir, pepper: &TempFile) -> (Gateway, u16) {
        let admin = free_port();
        let gw = Gateway::start(&config_text(
            setup,
            free_port(),
            admin,
            upstream,
            data,
            pepper,
        ));
        wait_admin(&gw, admin);
        (gw, admin)
    }

    /// A new gateway (new ports) on the same store and audit log; the old one must be gone.
    fn restart(&mut self) {
        let (gw, admin) = Fixture::launch(&self.setup, self.up.port, &self.data, &self.pepper);
        self.gw = gw;
        self.admin = admin;
    }

    fn port(&self) -> u16 {
        self.gw.port()
    }

    /// A request with the admin ("ops") token.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Reply {
        let body = body.map(|b| b.to_string());
        admin(
            self.admin,
            method,
            path,
            Some(&tokens().admin),
            body.as_deref(),
        )
    }

    fn create_consumer(&self, id: &str) -> Value {
        let reply = self.call("POST", "/v1/consumers", Some(json!({ "id": id })));
        let body = expect(&reply, 201).clone();
        assert_eq!(body["id"], id);
        assert_eq!(body["source"], "store");
        propagated(&body);
        body
    }

    /// Issues an API key to `consumer`: (credential id, plaintext key).
    fn new_key(&self, consumer: &str) -> (String, String) {
        let reply = self.call(
            "POST",
            &format!("/v1/consumers/{consumer}/credentials"),
            Some(json!({"kind": "api_key"})),
        );
        let body = expect(&reply, 201);
        assert_no_secret_fields(body);
        assert_eq!(body["kind"], "api_key");
        assert_eq!(body["consumer"], consumer);
        assert_eq!(body["state"], "active");
        assert_eq!(body["source"], "store");
        propagated(body);
        let id = body["id"].as_str().expect("credential id").to_string();
        let key = body["key"].as_str().expect("key").to_string();
        assert!(key.starts_with(&format!("cf_{id}_")), "{key} / {id}");
        (id, key)
    }

    /// A proxied `GET /orders` with `key` in `X-API-Key`, on a fresh connection.
    fn with_key(&self, key: &str) -> Response {
        get_with(self.port(), "/orders", &[("X-API-Key", key)])
    }

    /// Asserts that `key` passes to the upstream as `consumer`.
    fn assert_key_passes(&self, key: &str, consumer: &str) {
        let before = self.up.requests();
        let seen = assert_passed(&self.with_key(key), &self.up, before);
        assert_eq!(seen.headers_all("x-consumer-id"), [consumer]);
    }

    fn audit(&self, query: &str) -> Vec<Value> {
        let reply = self.call("GET", &format!("/v1/audit{query}"), None);
        expect(&reply, 200)["records"]
            .as_array()
            .expect("records")
            .clone()
    }

    fn audit_verify(&self) -> CliOutput {
        run_cli(
            &[
                "audit",
                "verify",
                "-c",
                &self.gw.config_path().to_string_lossy(),
            ],
            CLI_TIMEOUT,
        )
    }
}

/// `GET /orders` with `key` on `connections` fresh connections: each answer.
fn key_on_fresh_connections(port: u16, key: &str, connections: usize) -> Vec<Response> {
    (0..connections)
        .map(|_| get_with(port, "/orders", &[("X-API-Key", key)]))
        .collect()
}

// ---------------------------------------------------------------------------
// Tokens and roles
// ---------------------------------------------------------------------------

#[test]
fn every_endpoint_needs_a_token_and_each_role_gets_only_its_operations() {
    let f = Fixture::start(Setup::approval());
    let t = tokens();
    let endpoints = [
        ("GET", "/v1/consumers"),
        ("POST", "/v1/consumers"),
        ("GET", "/v1/consumers/c1"),
        ("DELETE", "/v1/consumers/c1"),
        ("POST", "/v1/consumers/c1/credentials"),
        ("GET", "/v1/credentials/k1"),
        ("POST", "/v1/credentials/k1/rotate"),
        ("POST", "/v1/credentials/k1/revoke"),
        ("POST", "/v1/jwt/revocations"),
        ("GET", "/v1/subscriptions"),
        ("POST", "/v1/subscriptions"),
        ("GET", "/v1/subscriptions/s1"),
        ("POST", "/v1/subscriptions/s1/approve"),
        ("POST", "/v1/subscriptions/s1/reject"),
        ("POST", "/v1/subscriptions/s1/revoke"),
        ("GET", "/v1/audit"),
        ("GET", "/v1/status"),
        ("GET", "/v1/openapi.json"),
        ("POST", "/v1/reload"),
        ("GET", "/v1/no-such-path"),
    ];
    let wrong = format!("cfadm_{}", "A".repeat(43));
    for (method, path) in endpoints {
        let body = (method == "POST").then_some("{\"id\": \"intruder\"}");
        for token in [None, Some(wrong.as_str()), Some(t.admin_hash.as_str())] {
            let reply = admin(f.admin, method, path, token, body);
            expect_problem(&reply, 401, "unauthorized");
            assert_eq!(
                header(&reply, "www-authenticate"),
                Some("Bearer realm=\"credentialflow-admin\""),
                "{method} {path}: {reply:?}"
            );
        }
    }
    // The right token under another scheme is no bearer token.
    let basic = raw(
        f.admin,
        format!(
            "GET /v1/status HTTP/1.1\r\nHost: a\r\nAuthorization: Basic {}\r\nConnection: close\r\n\r\n",
            t.admin
        )
        .as_bytes(),
    );
    expect_problem(&basic, 401, "unauthorized");

    // The auditor writes nothing.
    let by_auditor = |method: &str, path: &str, body: Option<&str>| {
        admin(f.admin, method, path, Some(&t.auditor), body)
    };
    let reply = by_auditor("POST", "/v1/consumers", Some("{\"id\": \"by-auditor\"}"));
    expect_problem(&reply, 403, "forbidden");
    expect_problem(
        &f.call("GET", "/v1/consumers/by-auditor", None),
        404,
        "not_found",
    );
    expect_problem(&by_auditor("POST", "/v1/reload", None), 403, "forbidden");

    // The operator approves but does not create, delete or revoke.
    f.create_consumer("acme");
    let sub = f.call(
        "POST",
        "/v1/subscriptions",
        Some(json!({"consumer": "acme", "api": "demo"})),
    );
    let sub_id = expect(&sub, 201)["id"].as_str().expect("id").to_string();
    let by_operator = |method: &str, path: &str, body: Option<&str>| {
        admin(f.admin, method, path, Some(&t.operator), body)
    };
    expect_problem(
        &by_operator("POST", "/v1/consumers", Some("{\"id\": \"by-operator\"}")),
        403,
        "forbidden",
    );
    expect_problem(
        &by_operator("DELETE", "/v1/consumers/acme", None),
        403,
        "forbidden",
    );
    expect_problem(
        &by_operator(
            "POST",
            "/v1/consumers/acme/credentials",
            Some("{\"kind\": \"api_key\"}"),
        ),
        403,
        "forbidden",
    );
    expect_problem(
        &by_operator("POST", &format!("/v1/subscriptions/{sub_id}/revoke"), None),
        403,
        "forbidden",
    );
    expect_problem(
        &by_auditor("POST", &format!("/v1/subscriptions/{sub_id}/approve"), None),
        403,
        "forbidden",
    );
    let approved = by_operator("POST", &format!("/v1/subscriptions/{sub_id}/approve"), None);
    assert_eq!(expect(&approved, 200)["state"], "approved");
    expect_problem(
        &f.call("GET", "/v1/consumers/by-operator", None),
        404,
        "not_found",
    );

    // Every GET works for the auditor and the operator; the audit names who did what.
    for token in [&t.auditor, &t.operator] {
        for path in [
            "/v1/consumers".to_string(),
            "/v1/consumers/acme".to_string(),
            "/v1/subscriptions".to_string(),
            format!("/v1/subscriptions/{sub_id}"),
            "/v1/audit".to_string(),
            "/v1/status".to_string(),
            "/v1/openapi.json".to_string(),
        ] {
            let reply = admin(f.admin, "GET", &path, Some(token), None);
            expect(&reply, 200);
        }
    }
    let records = f.audit("");
    let trail: Vec<(&str, &str)> = records
        .iter()
        .map(|r| (r["actor"].as_str().unwrap(), r["action"].as_str().unwrap()))
        .collect();
    assert_eq!(
        trail,
        [
            ("ops", "consumer.create"),
            ("ops", "subscription.create"),
            ("approver", "subscription.approve"),
        ]
    );
}

// ---------------------------------------------------------------------------
// API-key lifecycle
// ---------------------------------------------------------------------------

#[test]
fn api_key_issue_rotate_with_grace_and_revoke_take_effect_on_every_core() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("acme-billing");
    let (old_id, old_key) = f.new_key("acme-billing");
    f.assert_key_passes(&old_key, "acme-billing");

    // The credential and its consumer never show the key again.
    let cred = f.call("GET", &format!("/v1/credentials/{old_id}"), None);
    let view = expect(&cred, 200);
    assert_no_secret_fields(view);
    assert!(view.get("key").is_none(), "{view}");
    let consumer = f.call("GET", "/v1/consumers/acme-billing", None);
    let view = expect(&consumer, 200);
    assert_no_secret_fields(view);
    assert_eq!(view["credentials"][0]["id"], old_id.as_str());
    assert!(!view.to_string().contains(&old_key), "{view}");

    // Rotate with a 2 s grace: both keys work meanwhile.
    let rotated = f.call(
        "POST",
        &format!("/v1/credentials/{old_id}/rotate"),
        Some(json!({"grace": "2s"})),
    );
    let rotated_at = Instant::now();
    let body = expect(&rotated, 201);
    assert_no_secret_fields(body);
    assert_eq!(body["replaces"], old_id.as_str());
    propagated(body);
    let new_id = body["id"].as_str().expect("id").to_string();
    let new_key = body["key"].as_str().expect("key").to_string();
    assert_ne!(new_id, old_id);
    assert!(new_key.starts_with(&format!("cf_{new_id}_")), "{new_key}");
    assert!(body["old_expires_at"].is_string(), "{body}");
    // Both keys verified (and cached) on both cores.
    for key in [&old_key, &new_key] {
        for resp in key_on_fresh_connections(f.port(), key, 8) {
            assert_eq!(resp.status, 200, "{}", resp.body_str());
        }
        f.assert_key_passes(key, "acme-billing");
    }
    let old = f.call("GET", &format!("/v1/credentials/{old_id}"), None);
    assert_eq!(expect(&old, 200)["replaced_by"], new_id.as_str());
    // Rotating the retired key again is a conflict.
    expect_problem(
        &f.call("POST", &format!("/v1/credentials/{old_id}/rotate"), None),
        409,
        "conflict",
    );

    // After the grace the old key has expired; the new one works.
    thread::sleep(Duration::from_secs(3).saturating_sub(rotated_at.elapsed()));
    for resp in key_on_fresh_connections(f.port(), &old_key, 6) {
        assert_refused(&resp, 401, "expired");
    }
    let old = f.call("GET", &format!("/v1/credentials/{old_id}"), None);
    assert_eq!(expect(&old, 200)["state"], "expired");
    // Warm both cores' verification caches with the new key, and keep a few connections open
    // that have used it.
    for resp in key_on_fresh_connections(f.port(), &new_key, 12) {
        assert_eq!(resp.status, 200, "{}", resp.body_str());
    }
    let request =
        format!("GET /orders HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {new_key}\r\n\r\n");
    let mut open: Vec<Client> = (0..6).map(|_| f.gw.client()).collect();
    for client in &mut open {
        let resp = client.request(request.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.body_str());
    }

    // Revoke: from the answer on, every core refuses the key.
    let revoked = f.call("POST", &format!("/v1/credentials/{new_id}/revoke"), None);
    let body = expect(&revoked, 200);
    propagated(body);
    assert_eq!(body["state"], "revoked");
    assert!(body["revoked_at"].is_string(), "{body}");
    let passed_before = f.up.requests();
    for resp in key_on_fresh_connections(f.port(), &new_key, 24) {
        assert_refused(&resp, 401, "revoked");
    }
    // The connections that used the key before are refused on their next request.
    for client in &mut open {
        assert_refused(&client.request(request.as_bytes()), 401, "revoked");
    }
    assert_eq!(
        f.up.requests(),
        passed_before,
        "a revoked key reached the upstream"
    );
    // Revoking again is idempotent.
    let again = f.call("POST", &format!("/v1/credentials/{new_id}/revoke"), None);
    assert_eq!(expect(&again, 200)["state"], "revoked");
}

// ---------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------

#[test]
fn subscription_requested_approved_and_revoked_gates_the_api() {
    let f = Fixture::start(Setup::approval());
    f.create_consumer("sub-user");
    let (_, key) = f.new_key("sub-user");
    assert_refused(&f.with_key(&key), 403, "not_subscribed");

    let created = f.call(
        "POST",
        "/v1/subscriptions",
        Some(json!({"consumer": "sub-user", "api": "demo"})),
    );
    let body = expect(&created, 201);
    assert_eq!(body["state"], "requested");
    assert_eq!(body["consumer"], "sub-user");
    assert_eq!(body["api"], "demo");
    assert_eq!(body["source"], "store");
    propagated(body);
    let id = body["id"].as_str().expect("id").to_string();
    assert_refused(&f.with_key(&key), 403, "subscription_pending");

    // The approval queue holds it; the approved list does not.
    let ids = |state: &str| -> Vec<String> {
        let reply = f.call("GET", &format!("/v1/subscriptions?state={state}"), None);
        expect(&reply, 200)["subscriptions"]
            .as_array()
            .expect("subscriptions")
            .iter()
            .map(|s| s["id"].as_str().expect("id").to_string())
            .collect()
    };
    assert_eq!(ids("requested"), [id.as_str()]);
    assert!(ids("approved").is_empty());
    // The same pair again is a conflict; unknown consumers and APIs are invalid.
    expect_problem(
        &f.call(
            "POST",
            "/v1/subscriptions",
            Some(json!({"consumer": "sub-user", "api": "demo"})),
        ),
        409,
        "conflict",
    );
    for body in [
        json!({"consumer": "nobody", "api": "demo"}),
        json!({"consumer": "sub-user", "api": "nope"}),
    ] {
        expect_problem(
            &f.call("POST", "/v1/subscriptions", Some(body)),
            400,
            "invalid_request",
        );
    }

    let approved = f.call("POST", &format!("/v1/subscriptions/{id}/approve"), None);
    assert_eq!(expect(&approved, 200)["state"], "approved");
    propagated(&approved.2);
    f.assert_key_passes(&key, "sub-user");
    assert!(ids("requested").is_empty());
    assert_eq!(ids("approved"), [id.as_str()]);

    let revoked = f.call("POST", &format!("/v1/subscriptions/{id}/revoke"), None);
    assert_eq!(expect(&revoked, 200)["state"], "revoked");
    for resp in key_on_fresh_connections(f.port(), &key, 8) {
        assert_refused(&resp, 403, "subscription_revoked");
    }

    // A revoked subscription can be neither rejected nor approved again.
    for action in ["reject", "approve", "revoke"] {
        expect_problem(
            &f.call("POST", &format!("/v1/subscriptions/{id}/{action}"), None),
            409,
            "invalid_transition",
        );
    }
    let got = f.call("GET", &format!("/v1/subscriptions/{id}"), None);
    assert_eq!(expect(&got, 200)["state"], "revoked");
    assert_refused(&f.with_key(&key), 403, "subscription_revoked");
}

// ---------------------------------------------------------------------------
// Config objects
// ---------------------------------------------------------------------------

#[test]
fn config_objects_are_listed_as_config_and_read_only() {
    let fingerprint = "ab".repeat(32);
    let setup = Setup {
        extra: format!(
            "[[consumers]]\nid = \"partner-cfg\"\ngroups = [\"partners\"]\n\
             [[consumers.credentials]]\nkind = \"mtls\"\nid = \"partner-cert\"\nfingerprint = \"{fingerprint}\"\n"
        ),
        ..Setup::keys()
    };
    let f = Fixture::start(setup);
    f.create_consumer("store-made");

    let list = f.call("GET", "/v1/consumers", None);
    let consumers = expect(&list, 200)["consumers"].as_array().expect("list");
    let sources: Vec<(&str, &str)> = consumers
        .iter()
        .map(|c| (c["id"].as_str().unwrap(), c["source"].as_str().unwrap()))
        .collect();
    assert_eq!(
        sources,
        [("partner-cfg", "config"), ("store-made", "store")]
    );

    let got = f.call("GET", "/v1/consumers/partner-cfg", None);
    let view = expect(&got, 200);
    assert_eq!(view["source"], "config");
    assert_eq!(view["groups"], json!(["partners"]));
    assert_eq!(view["credentials"][0]["id"], "partner-cert");
    assert_eq!(view["credentials"][0]["source"], "config");
    assert_eq!(view["credentials"][0]["kind"], "mtls");
    assert_no_secret_fields(view);
    let cred = f.call("GET", "/v1/credentials/partner-cert", None);
    assert_eq!(expect(&cred, 200)["source"], "config");
    assert_eq!(cred.2["state"], "active");

    expect_problem(
        &f.call("DELETE", "/v1/consumers/partner-cfg", None),
        409,
        "read_only",
    );
    expect_problem(
        &f.call("POST", "/v1/credentials/partner-cert/revoke", None),
        409,
        "read_only",
    );
    expect_problem(
        &f.call("POST", "/v1/credentials/partner-cert/rotate", None),
        409,
        "read_only",
    );
    expect_problem(
        &f.call("POST", "/v1/consumers", Some(json!({"id": "partner-cfg"}))),
        409,
        "conflict",
    );
    // The config's certificate cannot be claimed by a store consumer either.
    expect_problem(
        &f.call(
            "POST",
            "/v1/consumers/store-made/credentials",
            Some(json!({"kind": "mtls", "fingerprint": fingerprint})),
        ),
        409,
        "conflict",
    );

    // Nothing changed.
    let cred = f.call("GET", "/v1/credentials/partner-cert", None);
    assert_eq!(expect(&cred, 200)["state"], "active");
    expect(&f.call("GET", "/v1/consumers/partner-cfg", None), 200);
    let actions: Vec<Value> = f.audit("").iter().map(|r| r["action"].clone()).collect();
    assert_eq!(actions, [json!("consumer.create")]);
}

// ---------------------------------------------------------------------------
// Request errors
// ---------------------------------------------------------------------------

#[test]
fn bad_requests_get_404_405_400_411_413_problems() {
    let setup = Setup {
        admin: "max_body_bytes = 2048".into(),
        ..Setup::keys()
    };
    let f = Fixture::start(setup);
    let token = &tokens().admin;

    for path in [
        "/v1/nope",
        "/v2/consumers",
        "/v1/consumers/a/b/c",
        "/",
        "/v1",
    ] {
        expect_problem(&f.call("GET", path, None), 404, "not_found");
    }
    for (method, path, allow) in [
        ("PUT", "/v1/consumers", "GET, POST"),
        ("PATCH", "/v1/consumers/x", "GET, DELETE"),
        ("DELETE", "/v1/status", "GET"),
        ("GET", "/v1/credentials/x/revoke", "POST"),
        ("GET", "/v1/reload", "POST"),
    ] {
        let reply = f.call(method, path, None);
        expect_problem(&reply, 405, "method_not_allowed");
        assert_eq!(header(&reply, "allow"), Some(allow), "{method} {path}");
    }

    // Malformed, unknown field, missing id, bad id: 400 with the problems listed.
    for (body, mention) in [
        ("{\"id\": ", ""),
        ("[1, 2]", ""),
        ("{\"id\": \"x\", \"colour\": \"red\"}", "colour"),
        ("{\"tenant\": \"default\"}", "id"),
        ("{\"id\": \"a b\"}", "id"),
        ("{\"id\": \"\"}", "id"),
    ] {
        let reply = admin(f.admin, "POST", "/v1/consumers", Some(token), Some(body));
        let problem = expect_problem(&reply, 400, "invalid_request");
        let errors = problem["errors"].as_array().expect("errors");
        assert!(!errors.is_empty(), "{problem}");
        assert!(
            errors.iter().all(Value::is_string),
            "errors are strings: {problem}"
        );
        assert!(problem.to_string().contains(mention), "{body}: {problem}");
    }
    expect_problem(
        &f.call(
            "POST",
            "/v1/consumers/ghost/credentials",
            Some(json!({"kind": "api_token"})),
        ),
        400,
        "invalid_request",
    );

    // A body over max_body_bytes: 413 before it is read (the head alone is sent).
    let head = format!(
        "POST /v1/consumers HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: 2049\r\n\r\n"
    );
    expect_problem(&raw(f.admin, head.as_bytes()), 413, "body_too_large");
    // A body just under the limit is read.
    let fits = json!({"id": "big", "metadata": {"note": "n".repeat(2000)}}).to_string();
    assert!(fits.len() <= 2048, "{}", fits.len());
    let reply = admin(f.admin, "POST", "/v1/consumers", Some(token), Some(&fits));
    expect(&reply, 201);

    // A chunked body: 411.
    let chunked = format!(
        "POST /v1/consumers HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    );
    expect_problem(&raw(f.admin, chunked.as_bytes()), 411, "length_required");

    // Unknown objects.
    for path in [
        "/v1/consumers/ghost",
        "/v1/credentials/ghost",
        "/v1/subscriptions/ghost",
    ] {
        expect_problem(&f.call("GET", path, None), 404, "not_found");
    }
    for path in [
        "/v1/credentials/ghost/revoke",
        "/v1/credentials/ghost/rotate",
        "/v1/subscriptions/ghost/approve",
    ] {
        expect_problem(&f.call("POST", path, None), 404, "not_found");
    }
    expect_problem(
        &f.call(
            "POST",
            "/v1/consumers/ghost/credentials",
            Some(json!({"kind": "api_key"})),
        ),
        404,
        "not_found",
    );
    expect_problem(
        &f.call("DELETE", "/v1/consumers/ghost", None),
        404,
        "not_found",
    );

    // Only the consumer that fit was created.
    let list = f.call("GET", "/v1/consumers", None);
    let ids: Vec<&Value> = expect(&list, 200)["consumers"]
        .as_array()
        .expect("list")
        .iter()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(ids, [&json!("big")]);
    assert_eq!(f.audit("").len(), 1);
}

// ---------------------------------------------------------------------------
// Deleting a consumer
// ---------------------------------------------------------------------------

#[test]
fn deleting_a_consumer_revokes_all_its_keys() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("leaving");
    f.create_consumer("staying");
    let (first_id, first) = f.new_key("leaving");
    let (second_id, second) = f.new_key("leaving");
    let (_, other) = f.new_key("staying");
    for key in [&first, &second] {
        f.assert_key_passes(key, "leaving");
    }

    let deleted = f.call("DELETE", "/v1/consumers/leaving", None);
    let body = expect(&deleted, 200);
    assert_eq!(body["id"], "leaving");
    assert_eq!(body["revoked_credentials"], 2);
    propagated(body);
    for key in [&first, &second] {
        for resp in key_on_fresh_connections(f.port(), key, 6) {
            assert_refused(&resp, 401, "revoked");
        }
    }
    f.assert_key_passes(&other, "staying");

    expect_problem(
        &f.call("GET", "/v1/consumers/leaving", None),
        404,
        "not_found",
    );
    for id in [&first_id, &second_id] {
        let cred = f.call("GET", &format!("/v1/credentials/{id}"), None);
        assert_eq!(expect(&cred, 200)["state"], "revoked");
    }
    // A deleted id is not reused.
    expect_problem(
        &f.call("POST", "/v1/consumers", Some(json!({"id": "leaving"}))),
        409,
        "conflict",
    );
    let list = f.call("GET", "/v1/consumers", None);
    assert_eq!(
        expect(&list, 200)["consumers"]
            .as_array()
            .expect("list")
            .len(),
        1
    );
}

// ---------------------------------------------------------------------------
// JWT revocation
// ---------------------------------------------------------------------------

#[test]
fn jwt_revocation_by_jti_and_by_sub_refuses_matching_tokens() {
    let jwk = jwk_new("k1");
    let setup = Setup {
        api: "auth = [\"jwt:corp\"]".into(),
        extra: format!(
            "[[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
             jwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n",
            jwk.jwks.path_str()
        ),
        ..Setup::default()
    };
    let f = Fixture::start(setup);
    let token =
        |sub: &str, jti: &str| jwk.mint(&json!({"iss": ISS, "aud": AUD, "sub": sub, "jti": jti}));
    let t1 = token("alice", "t-1");
    let t2 = token("alice", "t-2");
    let t3 = token("bob", "t-3");
    let jwt_get = |token: &str| get_with(f.port(), "/orders", &[("Authorization", &bearer(token))]);
    let passes = |token: &str, sub: &str| {
        let before = f.up.requests();
        let seen = assert_passed(&jwt_get(token), &f.up, before);
        assert_eq!(seen.headers_all("x-consumer-id"), [sub]);
    };
    // Cached on both cores before the revocation, and used on connections that stay open.
    for _ in 0..6 {
        passes(&t1, "alice");
    }
    let request = format!(
        "GET /orders HTTP/1.1\r\nHost: localhost\r\nAuthorization: {}\r\n\r\n",
        bearer(&t1)
    );
    let mut open: Vec<Client> = (0..4).map(|_| f.gw.client()).collect();
    for client in &mut open {
        let resp = client.request(request.as_bytes());
        assert_eq!(resp.status, 200, "{}", resp.body_str());
    }

    let revoked = f.call(
        "POST",
        "/v1/jwt/revocations",
        Some(json!({"issuer": "corp", "jti": "t-1"})),
    );
    let body = expect(&revoked, 201);
    assert_eq!(body["issuer"], "corp");
    assert_eq!(body["claim"], "jti");
    assert_eq!(body["value"], "t-1");
    assert!(body["until"].is_string(), "{body}");
    propagated(body);
    for client in &mut open {
        assert_refused(&client.request(request.as_bytes()), 401, "revoked");
    }
    for _ in 0..10 {
        assert_refused(&jwt_get(&t1), 401, "revoked");
    }
    passes(&t2, "alice");
    passes(&t3, "bob");

    let by_sub = f.call(
        "POST",
        "/v1/jwt/revocations",
        Some(json!({"issuer": "corp", "sub": "alice", "until": "2099-01-01T00:00:00Z"})),
    );
    let body = expect(&by_sub, 201);
    assert_eq!(body["claim"], "sub");
    assert_eq!(body["until"], "2099-01-01T00:00:00Z");
    let t4 = token("alice", "t-4");
    for _ in 0..6 {
        assert_refused(&jwt_get(&t2), 401, "revoked");
        assert_refused(&jwt_get(&t4), 401, "revoked");
    }
    passes(&t3, "bob");

    // Exactly one of jti and sub, a configured issuer, a future `until`.
    for body in [
        json!({"issuer": "corp", "jti": "a", "sub": "b"}),
        json!({"issuer": "corp"}),
        json!({"issuer": "other", "jti": "a"}),
        json!({"issuer": "corp", "jti": "a", "until": "2001-01-01T00:00:00Z"}),
    ] {
        expect_problem(
            &f.call("POST", "/v1/jwt/revocations", Some(body)),
            400,
            "invalid_request",
        );
    }
}

// ---------------------------------------------------------------------------
// Audit trail
// ---------------------------------------------------------------------------

#[test]
fn the_audit_trail_is_chained_secret_free_and_verify_detects_tampering() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("a1");
    let (key_id, key) = f.new_key("a1");
    f.create_consumer("a2");
    expect(
        &f.call("POST", &format!("/v1/credentials/{key_id}/revoke"), None),
        200,
    );
    let rotated_from = f.new_key("a1").0;
    let rotated = f.call(
        "POST",
        &format!("/v1/credentials/{rotated_from}/rotate"),
        None,
    );
    let rotated_key = expect(&rotated, 201)["key"]
        .as_str()
        .expect("key")
        .to_string();
    expect(&f.call("DELETE", "/v1/consumers/a2", None), 200);

    let records = f.audit("");
    let actions: Vec<&str> = records
        .iter()
        .map(|r| r["action"].as_str().expect("action"))
        .collect();
    assert_eq!(
        actions,
        [
            "consumer.create",
            "credential.create",
            "consumer.create",
            "credential.revoke",
            "credential.create",
            "credential.rotate",
            "consumer.delete",
        ]
    );
    let mut prev = GENESIS.to_string();
    for (at, record) in records.iter().enumerate() {
        assert_eq!(record["seq"], at as u64 + 1, "{record}");
        assert_eq!(record["prev_hash"], prev.as_str(), "{record}");
        assert_eq!(record["actor"], "ops", "{record}");
        assert!(
            record["ts"].is_string() && record["ts_us"].is_i64(),
            "{record}"
        );
        let hash = record["hash"].as_str().expect("hash");
        assert_eq!(hash.len(), 64, "{record}");
        prev = hash.to_string();
    }
    assert!(records[0]["before"].is_null());
    assert_eq!(records[3]["before"]["state"], "active");
    assert_eq!(records[3]["after"]["state"], "revoked");

    // No record holds a plaintext key, a key's secret or the admin token.
    let jsonl = fs::read_to_string(f.data.audit_log()).expect("audit log");
    let api_text = Value::Array(records.clone()).to_string();
    for secret in [
        key.as_str(),
        &key[key.len() - 20..],
        rotated_key.as_str(),
        &rotated_key[rotated_key.len() - 20..],
        tokens().admin.as_str(),
        &tokens().admin[6..],
    ] {
        assert!(!api_text.contains(secret), "the audit API shows {secret}");
        assert!(!jsonl.contains(secret), "the audit log holds {secret}");
    }
    // The JSONL copy holds the same records.
    let copied: Vec<Value> = jsonl.lines().map(json).collect();
    assert_eq!(copied, records);

    // Filters and paging.
    assert!(f.audit("?actor=nobody").is_empty());
    assert_eq!(f.audit("?actor=ops").len(), records.len());
    let page = f.call("GET", "/v1/audit?limit=3", None);
    let page = expect(&page, 200);
    assert_eq!(page["records"].as_array().expect("records").len(), 3);
    assert_eq!(page["next"], 3);
    let rest = f.audit("?after=3");
    assert_eq!(rest.first().map(|r| r["seq"].clone()), Some(json!(4)));
    assert_eq!(rest.len(), records.len() - 3);
    assert!(f.audit("?since=2099-01-01T00:00:00Z").is_empty());

    let out = f.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());

    // One character of line 2's actor changed in the JSONL copy.
    let mut lines: Vec<String> = jsonl.lines().map(str::to_string).collect();
    assert!(lines[1].contains("\"actor\":\"ops\""), "{}", lines[1]);
    lines[1] = lines[1].replacen("\"actor\":\"ops\"", "\"actor\":\"opz\"", 1);
    fs::write(f.data.audit_log(), lines.join("\n") + "\n").expect("write audit log");
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(out.stderr.contains("record 2"), "{}", out.stderr);

    // A fresh gateway: a row deleted from the store's audit table.
    let g = Fixture::start(Setup::keys());
    for id in ["b1", "b2", "b3"] {
        g.create_consumer(id);
    }
    let out = g.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    let store = rusqlite::Connection::open(g.data.store()).expect("open the store");
    let deleted = store
        .execute("DELETE FROM audit WHERE seq = 2", [])
        .expect("delete an audit row");
    assert_eq!(deleted, 1);
    drop(store);
    let out = g.audit_verify();
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.stderr.contains(&g.data.store()),
        "the store's chain is named: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// Durability
// ---------------------------------------------------------------------------

/// A burst of 500 creates from four clients, `kill -9` after 200 answers: after a restart every
/// acknowledged consumer is there and the audit chain verifies.
#[test]
fn acknowledged_creates_survive_kill_9_during_a_burst() {
    let mut f = Fixture::start(Setup::keys());
    let answered = Arc::new(AtomicUsize::new(0));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let dead = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..4)
        .map(|t| {
            let (answered, acked, dead) = (answered.clone(), acked.clone(), dead.clone());
            let port = f.admin;
            thread::spawn(move || {
                for i in 0..125 {
                    if dead.load(Ordering::SeqCst) {
                        return;
                    }
                    let id = format!("burst-{t}-{i:03}");
                    let body = json!({ "id": id }).to_string();
                    match try_admin(
                        port,
                        "POST",
                        "/v1/consumers",
                        Some(&tokens().admin),
                        Some(&body),
                    ) {
                        Ok((201, _, _)) => {
                            acked.lock().unwrap().push(id);
                            answered.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(other) => panic!("create {id}: {other:?}"),
                        // The gateway is gone.
                        Err(_) => return,
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.load(Ordering::SeqCst) < 200 {
        assert!(Instant::now() < deadline, "the burst stalled");
        thread::sleep(Duration::from_millis(1));
    }
    f.gw.signal("KILL");
    dead.store(true, Ordering::SeqCst);
    assert!(
        f.gw.wait_exit(Duration::from_secs(5)).is_some(),
        "kill -9 did not stop the gateway"
    );
    for worker in workers {
        worker.join().expect("burst thread");
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 200 && acked.len() < 500,
        "the kill should land mid-burst: {} acknowledged",
        acked.len()
    );

    f.restart();
    for id in &acked {
        let got = f.call("GET", &format!("/v1/consumers/{id}"), None);
        let body = expect(&got, 200);
        assert_eq!(body["id"], id.as_str());
        assert_eq!(body["source"], "store");
    }
    // Every stored consumer has its audit record, and the chain holds.
    let list = f.call("GET", "/v1/consumers?limit=1000", None);
    let stored = expect(&list, 200)["consumers"]
        .as_array()
        .expect("list")
        .len();
    assert!(stored >= acked.len(), "{stored} < {}", acked.len());
    assert_eq!(f.audit("?limit=1000").len(), stored);
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
}

/// The state a `kill -9` leaves when it lands between a write's store commit and the append of
/// its record to the JSONL copy (the copy lags by one record; `audit verify` accepts that), then
/// one more write after the restart.
#[test]
fn a_crash_between_commit_and_the_jsonl_append_keeps_the_copy_verifiable() {
    let mut f = Fixture::start(Setup::keys());
    f.create_consumer("c1");
    f.create_consumer("c2");
    f.gw.signal("KILL");
    assert!(f.gw.wait_exit(Duration::from_secs(5)).is_some());
    let jsonl = fs::read_to_string(f.data.audit_log()).expect("audit log");
    let first = jsonl.lines().next().expect("record 1").to_string() + "\n";
    fs::write(f.data.audit_log(), first).expect("write audit log");
    f.restart();
    // The restart copied record 2 from the store; record 3 follows it.
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    f.create_consumer("c3");
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    let copy = fs::read_to_string(f.data.audit_log()).expect("audit log");
    assert_eq!(copy.lines().count(), 3, "{copy}");
}

/// Admin writes (consumers, keys, revocations: each one a new credential state on every core,
/// emptying the cores' verified-credential caches) while proxied traffic runs on keep-alive
/// connections over both cores: not one proxied request fails, and every write is acknowledged.
#[test]
fn an_admin_write_storm_during_proxy_load_fails_no_proxied_request() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("steady");
    let (_, key) = f.new_key("steady");
    let stop = Arc::new(AtomicBool::new(false));
    let port = f.port();
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = stop.clone();
            let key = key.clone();
            thread::spawn(move || {
                let raw =
                    format!("GET /orders HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {key}\r\n\r\n");
                let (mut served, mut failed) = (0u64, Vec::new());
                let mut client = Client::connect(port);
                while !stop.load(Ordering::Relaxed) {
                    match client
                        .try_send(raw.as_bytes())
                        .and_then(|_| client.try_read_response())
                    {
                        Ok(response) if response.status == 200 => served += 1,
                        Ok(response) => {
                            failed.push(format!("{} {}", response.status, response.body_str()))
                        }
                        Err(error) => {
                            failed.push(error.to_string());
                            client = Client::connect(port);
                        }
                    }
                }
                (served, failed)
            })
        })
        .collect();
    thread::sleep(Duration::from_millis(200));
    let mut writes = 0;
    for i in 0..40 {
        let consumer = format!("storm-{i}");
        f.create_consumer(&consumer);
        let (id, _) = f.new_key(&consumer);
        let reply = f.call("POST", &format!("/v1/credentials/{id}/revoke"), None);
        propagated(expect(&reply, 200));
        writes += 3;
    }
    stop.store(true, Ordering::Relaxed);
    let mut served = 0;
    for client in clients {
        let (n, failed) = client.join().expect("client thread");
        assert!(failed.is_empty(), "proxied requests failed: {failed:?}");
        served += n;
    }
    assert_eq!(writes, 120);
    assert!(
        served > 100,
        "too little traffic to mean anything: {served}"
    );
    let status = f.call("GET", "/v1/status", None);
    let status = expect(&status, 200);
    let version = status["version"].as_u64().expect("version");
    for core in status["cores"].as_array().expect("cores") {
        assert_eq!(core["version"].as_u64(), Some(version), "{status}");
    }
}

// ---------------------------------------------------------------------------
// Status and reload
// ---------------------------------------------------------------------------

#[test]
fn status_shows_every_core_in_sync_and_reload_keeps_store_objects() {
    let f = Fixture::start(Setup::keys());
    let status = f.call("GET", "/v1/status", None);
    let before = expect(&status, 200)["version"].as_u64().expect("version");
    f.create_consumer("reloaded");
    let (key_id, key) = f.new_key("reloaded");

    let status = f.call("GET", "/v1/status", None);
    let body = expect(&status, 200);
    let version = body["version"].as_u64().expect("version");
    assert!(version >= before + 2, "{before} -> {body}");
    let cores = body["cores"].as_array().expect("cores");
    assert_eq!(cores.len(), 2, "{body}");
    for (at, core) in cores.iter().enumerate() {
        assert_eq!(core["core"], at as u64, "{body}");
        assert_eq!(core["version"], version, "{body}");
    }
    assert_eq!(body["last_propagation"]["cores"], 2, "{body}");
    assert_eq!(body["last_propagation"]["applied"], 2, "{body}");
    assert!(body["last_propagation"]["propagated_us"].is_u64(), "{body}");
    assert_eq!(body["store"]["path"], f.data.store().as_str(), "{body}");
    assert!(
        body["store"]["size_bytes"].as_u64().unwrap_or(0) > 0,
        "{body}"
    );

    // An invalid config is refused and the old one keeps serving.
    let path = f.gw.config_path().clone();
    let original = fs::read_to_string(&path).expect("config");
    let broken = original.replacen(
        "[[upstreams]]\nname = \"app\"\n",
        "[[upstreams]]\nname = \"app\"\nbogus_key = 1\n",
        1,
    );
    assert_ne!(broken, original);
    fs::write(&path, &broken).expect("write config");
    let reload = f.call("POST", "/v1/reload", None);
    let problem = expect_problem(&reload, 400, "invalid_config");
    let errors = problem["errors"].as_array().expect("errors");
    assert!(!errors.is_empty(), "{problem}");
    assert!(problem.to_string().contains("bogus_key"), "{problem}");
    f.assert_key_passes(&key, "reloaded");
    f.create_consumer("after-refusal");

    // A valid config (with one more config consumer) is adopted by every core.
    let valid = format!("{original}\n[[consumers]]\nid = \"from-reload\"\n");
    fs::write(&path, valid).expect("write config");
    let reload = f.call("POST", "/v1/reload", None);
    let body = expect(&reload, 200);
    assert_eq!(body["reloaded"], true, "{body}");
    assert!(body["version"].is_u64(), "{body}");
    let got = f.call("GET", "/v1/consumers/from-reload", None);
    assert_eq!(expect(&got, 200)["source"], "config");

    // Store objects survive the reload and still change on every core.
    for resp in key_on_fresh_connections(f.port(), &key, 6) {
        assert_eq!(resp.status, 200, "{}", resp.body_str());
    }
    expect(&f.call("GET", "/v1/consumers/after-refusal", None), 200);
    expect(
        &f.call("POST", &format!("/v1/credentials/{key_id}/revoke"), None),
        200,
    );
    for resp in key_on_fresh_connections(f.port(), &key, 8) {
        assert_refused(&resp, 401, "revoked");
    }
    let status = f.call("GET", "/v1/status", None);
    let body = expect(&status, 200);
    let version = &body["version"];
    let cores = body["cores"].as_array().expect("cores");
    assert_eq!(cores.len(), 2, "{body}");
    assert!(cores.iter().all(|c| c["version"] == *version), "{body}");
}

// ---------------------------------------------------------------------------
// OpenAPI
// ---------------------------------------------------------------------------

#[test]
fn the_openapi_document_is_served_and_matches_the_routes() {
    let f = Fixture::start(Setup::keys());
    let reply = admin(
        f.admin,
        "GET",
        "/v1/openapi.json",
        Some(&tokens().auditor),
        None,
    );
    let doc = expect(&reply, 200).clone();
    assert!(header(&reply, "content-type")
        .unwrap_or("")
        .starts_with("application/json"));
    assert_eq!(doc["openapi"], "3.1.0");
    let file: Value = json(include_str!("../docs/admin-openapi.json"));
    assert_eq!(doc, file);

    // Every documented operation exists (the auditor changes nothing: 200, 403 or 404), and
    // every other method on a documented path is 405.
    let paths = doc["paths"].as_object().expect("paths");
    assert!(paths.contains_key("/v1/consumers"), "{paths:?}");
    for (template, item) in paths {
        let path = template.replace("{id}", "x");
        for method in ["get", "post", "delete", "put", "patch"] {
            let upper = method.to_ascii_uppercase();
            let body = (method != "get" && method != "delete").then_some("{}");
            let reply = admin(f.admin, &upper, &path, Some(&tokens().auditor), body);
            if item.get(method).is_some() {
                assert!(
                    [200, 403, 404].contains(&reply.0),
                    "{upper} {path}: {reply:?}"
                );
                if reply.0 == 404 {
                    assert!(
                        reply.2["detail"].as_str().unwrap_or("").contains(" x"),
                        "{upper} {path} is not routed: {reply:?}"
                    );
                }
            } else {
                expect_problem(&reply, 405, "method_not_allowed");
            }
        }
    }
    assert!(f.audit("").is_empty());
}

// ---------------------------------------------------------------------------
// Metrics (/metrics on the admin listener)
// ---------------------------------------------------------------------------

/// `GET /metrics` with `token` (when given): status and body.
fn scrape(port: u16, token: Option<&str>) -> (u16, String, Option<String>) {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let raw =
        format!("GET /metrics HTTP/1.1\r\nHost: localhost\r\n{auth}Connection: close\r\n\r\n");
    let response = request(port, raw.as_bytes());
    let content_type = response.header("content-type").map(str::to_string);
    (response.status, response.body_str(), content_type)
}

/// The sum of every sample of `name` whose labels include all of `with` (`key="value"`).
fn sample_sum(text: &str, name: &str, with: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, labels) = series.split_once('{').unwrap_or((series, ""));
            (metric == name && with.iter().all(|w| labels.contains(w)))
                .then(|| value.parse::<f64>().ok())?
        })
        .sum()
}

/// Parses `text` with `prometheus-parse`: every sample line on its own must give exactly one
/// sample (so none is silently skipped), and the whole text must parse; returns the number of
/// documented families.
fn assert_prometheus_text(text: &str) -> usize {
    let lines = || text.lines().map(|l| Ok(l.to_string()));
    for line in text
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let one = prometheus_parse::Scrape::parse(std::iter::once(Ok(line.to_string())))
            .unwrap_or_else(|e| panic!("unparsable sample line {line:?}: {e}"));
        assert_eq!(one.samples.len(), 1, "sample line {line:?} was not read");
    }
    let scrape = prometheus_parse::Scrape::parse(lines()).expect("the exposition parses");
    assert!(!scrape.samples.is_empty());
    scrape.docs.len()
}

#[test]
fn metrics_count_every_request_exactly_and_parse_as_prometheus_text() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("metered");
    let (_, key) = f.new_key("metered");
    let (status, _, _) = scrape(f.admin, None);
    assert_eq!(status, 401, "/metrics needs an admin token");
    for i in 0..7 {
        let response = get_with(
            f.port(),
            &format!("/orders/secret-path-{i}?q=x"),
            &[("X-API-Key", &key)],
        );
        assert_eq!(response.status, 200, "{}", response.body_str());
    }
    for _ in 0..3 {
        assert_eq!(get(f.port(), "/orders").status, 401);
    }
    for _ in 0..2 {
        let bad = get_with(
            f.port(),
            "/orders",
            &[("X-API-Key", "cf_nosuchkey_0123456789abcdefghij")],
        );
        assert_eq!(bad.status, 401);
    }
    let (status, text, content_type) = scrape(f.admin, Some(&tokens().auditor));
    assert_eq!(status, 200, "{text}");
    assert_eq!(
        content_type.as_deref(),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );

    // Counters equal the requests sent, whichever core served them.
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_requests_total",
            &["status_class=\"2xx\""]
        ),
        7.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_requests_total",
            &["status_class=\"4xx\""]
        ),
        5.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_requests_total",
            &["status_class=\"5xx\""]
        ),
        0.0
    );
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_auth_failures_total",
            &["api=\"demo\"", "reason=\"missing_credential\""]
        ),
        3.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_auth_failures_total",
            &["reason=\"invalid_credential\""]
        ),
        2.0,
        "{text}"
    );
    assert_eq!(
        sample_sum(&text, "credentialflow_access_denied_total", &[]),
        0.0
    );

    // Histogram counts agree with the counters; buckets are cumulative.
    assert_eq!(
        sample_sum(&text, "credentialflow_request_duration_seconds_count", &[]),
        12.0
    );
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_request_duration_seconds_bucket",
            &["le=\"+Inf\""]
        ),
        12.0
    );
    let mut previous = 0.0;
    for le in ["0.0005", "0.001", "0.005", "0.05", "0.5", "5", "10", "+Inf"] {
        let n = sample_sum(
            &text,
            "credentialflow_request_duration_seconds_bucket",
            &[&format!("le=\"{le}\"")],
        );
        assert!(
            n >= previous,
            "bucket le={le} ({n}) below the one before ({previous})"
        );
        previous = n;
    }
    assert_eq!(
        sample_sum(&text, "credentialflow_upstream_duration_seconds_count", &[]),
        7.0,
        "{text}"
    );

    // Every core reports the credential-state version the status shows.
    let status = f.call("GET", "/v1/status", None);
    let version = expect(&status, 200)["version"].as_u64().expect("version") as f64;
    for core in ["0", "1"] {
        assert_eq!(
            sample_sum(
                &text,
                "credentialflow_snapshot_version",
                &[&format!("core=\"{core}\"")]
            ),
            version
        );
    }

    // Label values come from the config, never from the request or the credential.
    assert!(!text.contains("secret-path"), "a raw path became a label");
    assert!(
        !text.contains(&key) && !text.contains("metered"),
        "a credential or consumer became a label"
    );

    // A real Prometheus text parser reads every sample line (none skipped) and every family.
    let families = assert_prometheus_text(&text);
    assert!(families >= 15, "{families} metric families");
}

#[test]
fn metrics_are_served_as_openmetrics_on_request() {
    let f = Fixture::start(Setup::keys());
    assert_eq!(get(f.port(), "/orders").status, 401);
    let raw = format!(
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Accept: application/openmetrics-text; version=1.0.0, text/plain;q=0.5\r\nConnection: close\r\n\r\n",
        tokens().auditor
    );
    let response = request(f.admin, raw.as_bytes());
    assert_eq!(response.status, 200);
    assert_eq!(
        response.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = response.body_str();
    assert!(text.ends_with("# EOF\n"), "{text}");
    // OpenMetrics: counter families are named without `_total`, their samples keep it.
    assert!(
        text.contains("# TYPE credentialflow_auth_failures counter\n"),
        "{text}"
    );
    assert!(
        !text.contains("# TYPE credentialflow_auth_failures_total"),
        "{text}"
    );
    let body = text.strip_suffix("# EOF\n").expect("ends with # EOF");
    assert!(!body.contains("# EOF"), "one # EOF, at the end");
    assert_prometheus_text(body);
    assert_eq!(
        sample_sum(
            &text,
            "credentialflow_auth_failures_total",
            &["reason=\"missing_credential\""]
        ),
        1.0
    );
}

/// Log rotation of the audit copy: after a rename and SIGUSR1 the new file starts mid-chain,
/// and `audit verify` checks it as a segment that follows the store's record before it.
#[test]
fn a_rotated_audit_copy_still_verifies() {
    let f = Fixture::start(Setup::keys());
    f.create_consumer("r1");
    f.create_consumer("r2");
    fs::rename(f.data.audit_log(), f.data.file("audit.jsonl.1")).expect("rotate");
    f.gw.signal("USR1");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !std::path::Path::new(&f.data.audit_log()).exists() {
        assert!(
            Instant::now() < deadline,
            "SIGUSR1 did not reopen the audit log"
        );
        thread::sleep(Duration::from_millis(20));
    }
    f.create_consumer("r3");
    f.create_consumer("r4");
    let copy = fs::read_to_string(f.data.audit_log()).expect("new audit log");
    let seqs: Vec<u64> = copy
        .lines()
        .map(|l| json(l)["seq"].as_u64().expect("seq"))
        .collect();
    assert_eq!(seqs, [3, 4]);
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    // A record edited in the new segment is still found.
    fs::write(
        f.data.audit_log(),
        copy.replacen("\"ops\"", "\"mallory\"", 1),
    )
    .expect("edit");
    let out = f.audit_verify();
    assert_eq!(out.code(), Some(1), "{}", out.combined());
}

/// TLS on the admin listener: the API answers over TLS with the configured certificate, a
/// plain-text request on that port gets no HTTP answer, and `check` refuses a non-loopback admin
/// address without TLS.
#[test]
fn the_admin_api_speaks_tls_when_configured_and_public_addresses_need_it() {
    use common::pki::{client_config, Ca, BOTH};
    let ca = Ca::new("admin CA");
    let server = ca.server(&["localhost"]);
    let files = DataDir::new();
    fs::write(files.file("admin.pem"), &server.cert_pem).expect("write cert");
    fs::write(files.file("admin.key"), &server.key_pem).expect("write key");
    let setup = Setup {
        admin: format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"",
            files.file("admin.pem"),
            files.file("admin.key")
        ),
        ..Setup::keys()
    };
    let f = Fixture::start(setup);
    let mut client =
        Client::try_connect_tls(f.admin, client_config(&ca.pem(), BOTH, None), "localhost")
            .expect("TLS handshake with the admin listener");
    let raw = format!(
        "GET /v1/status HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\nConnection: close\r\n\r\n",
        tokens().auditor
    );
    let response = client.request(raw.as_bytes());
    assert_eq!(response.status, 200, "{}", response.body_str());
    assert!(json(&response.body_str())["cores"].is_array());
    // Plain text on the TLS port: no HTTP answer.
    assert!(
        try_admin(f.admin, "GET", "/v1/status", Some(&tokens().auditor), None).is_err(),
        "a plain-text request was answered on the TLS admin port"
    );

    let public = ConfigBuilder::new(free_port(), &[free_port()]).build()
        + "\n[admin]\naddress = \"0.0.0.0:9901\"\n";
    let (_file, out) = check(&public);
    assert_eq!(out.code(), Some(1), "{}", out.combined());
    assert!(
        out.combined().contains("not loopback"),
        "{}",
        out.combined()
    );
}

#[test]
fn metrics_show_each_checked_targets_health_check_verdict() {
    // Nothing listens on `dead`: its checks fail (connection refused); the test upstream
    // answers /healthz with 200.
    let dead = free_port();
    let f = Fixture::start(Setup {
        extra_targets: vec![dead],
        upstream: vec!["health_check = { path = \"/healthz\", interval = \"100ms\", timeout = \"100ms\", unhealthy_threshold = 1, healthy_threshold = 1 }".into()],
        ..Setup::default()
    });
    let name = "credentialflow_upstream_health_check_up";
    let alive = format!("target=\"127.0.0.1:{}\"", f.up.port);
    let down = format!("target=\"127.0.0.1:{dead}\"");
    let deadline = Instant::now() + Duration::from_secs(5);
    let text = loop {
        let (status, text, _) = scrape(f.admin, Some(&tokens().auditor));
        assert_eq!(status, 200, "{text}");
        if text.contains(&alive) && text.contains(&down) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no verdict for both targets within 5 s:\n{text}"
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert!(text.contains(&format!("# TYPE {name} gauge")), "{text}");
    let with = |target: &str| sample_sum(&text, name, &["upstream=\"app\"", target]);
    assert_eq!(with(&alive), 1.0, "{text}");
    assert_eq!(with(&down), 0.0, "{text}");
    assert_prometheus_text(&text);
}
