//! The authorization phase, black-box: tenants (and shared APIs), subscriptions in every state
//! under `subscription = "approval"` and `"auto"`, groups, scopes per method (from API key
//! credentials and from the JWT `scope` / `scp` claims), rules with claim, header, consumer and
//! client-address conditions (deny beats allow, shadow rules only log), the 403 answers with
//! their reason codes, and `check`'s refusals of inconsistent access configs. The real gateway
//! serves credentials made with the real CLI on loopback; a refused request never reaches the
//! upstream.

mod common;

use common::*;
use serde_json::json;
use std::time::Duration;

const ISS: &str = "https://corp.test";
const AUD: &str = "orders-api";

// ---------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------

/// A consumer of the fixture: its id, further lines of its `[[consumers]]` table (tenant,
/// groups, metadata) and the scopes of its API key.
type Member<'a> = (&'a str, &'a str, &'a [&'a str]);

/// The usual gateway config with `api` (lines such as `tenant`, `shared`, `subscription`,
/// `auth`) added to api "demo" and its `routes`, followed by `extra` (top-level tables and
/// further `[[apis]]`).
fn config(listen: u16, upstream: u16, api: &str, routes: &[(&str, &str)], extra: &str) -> String {
    let mut b = ConfigBuilder::new(listen, &[upstream]);
    for (path, keys) in routes {
        b = b.route(path, keys);
    }
    let demo = "[[apis]]\nname = \"demo\"\n";
    let text = b.build().replacen(demo, &format!("{demo}{api}\n"), 1);
    format!("{text}\n{extra}\n")
}

/// A gateway whose api "demo" accepts API keys and JWTs of issuer "corp", its upstream, and
/// one API key per member.
struct Env {
    _pepper: TempFile,
    jwk: Jwk,
    keys: Vec<(String, String)>,
    up: TestUpstream,
    gw: Gateway,
}

impl Env {
    fn start(api: &str, routes: &[(&str, &str)], members: &[Member<'_>], extra: &str) -> Env {
        Env::start_with_log(api, routes, members, extra, "warn")
    }

    fn start_with_log(
        api: &str,
        routes: &[(&str, &str)],
        members: &[Member<'_>],
        extra: &str,
        level: &str,
    ) -> Env {
        let pepper = pepper_file();
        let jwk = jwk_new("k1");
        let mut keys = Vec::new();
        let mut tables = String::new();
        for (id, lines, scopes) in members {
            let issued = issue_key(&pepper, id);
            let scopes: Vec<String> = scopes.iter().map(|s| format!("\"{s}\"")).collect();
            tables.push_str(&format!(
                "[[consumers]]\nid = \"{id}\"\n{lines}\n\
                 [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\nscopes = [{}]\n\n",
                issued.id,
                issued.hash,
                scopes.join(", ")
            ));
            keys.push((id.to_string(), issued.key));
        }
        let up = TestUpstream::start(Mode::Echo);
        let cfg = config(
            free_port(),
            up.port,
            &format!("auth = [\"api_key\", \"jwt:corp\"]\n{api}"),
            routes,
            &format!(
                "[auth]\nkey_pepper_file = \"{}\"\n\n\
                 [[issuers]]\nname = \"corp\"\nissuer = \"{ISS}\"\naudiences = [\"{AUD}\"]\n\
                 jwks_file = \"{}\"\nalgorithms = [\"ES256\"]\n\n{tables}\n{extra}",
                file_name(&pepper),
                jwk.jwks.path_str()
            ),
        );
        let gw = Gateway::start_with_log(&cfg, level);
        Env {
            _pepper: pepper,
            jwk,
            keys,
            up,
            gw,
        }
    }

    /// The `X-API-Key` field carrying the key of `member`.
    fn key(&self, member: &str) -> (&'static str, &str) {
        let (_, key) = self
            .keys
            .iter()
            .find(|(id, _)| id == member)
            .unwrap_or_else(|| panic!("no member {member}"));
        ("X-API-Key", key.as_str())
    }

    /// A bearer token of issuer "corp" for `sub` with the further `claims`.
    fn token(&self, sub: &str, claims: serde_json::Value) -> String {
        let mut all = json!({ "iss": ISS, "aud": AUD, "sub": sub });
        for (name, value) in claims.as_object().expect("claims object") {
            all[name] = value.clone();
        }
        bearer(&self.jwk.mint(&all))
    }

    /// Asserts that `method path` with `headers` passes and reaches the upstream; returns what
    /// the upstream saw.
    fn allowed(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> RecordedRequest {
        let before = self.up.requests();
        let resp = call_with(self.gw.port(), method, path, headers);
        assert_eq!(
            resp.status,
            200,
            "{method} {path} {headers:?}: expected 200, got {} {}",
            resp.status,
            resp.body_str()
        );
        assert!(
            self.up.wait_requests(before + 1, Duration::from_secs(5)),
            "the upstream did not receive {method} {path}"
        );
        let seen = self.up.last_request();
        assert_eq!((seen.method.as_str(), seen.target.as_str()), (method, path));
        seen
    }

    /// Like [`Env::allowed`], for a request whose path the gateway normalizes to `forwarded`.
    fn allowed_as(
        &self,
        method: &str,
        path: &str,
        forwarded: &str,
        headers: &[(&str, &str)],
    ) -> RecordedRequest {
        let before = self.up.requests();
        let resp = call_with(self.gw.port(), method, path, headers);
        assert_eq!(resp.status, 200, "{method} {path}: {}", resp.body_str());
        assert!(self.up.wait_requests(before + 1, Duration::from_secs(5)));
        let seen = self.up.last_request();
        assert_eq!(seen.target, forwarded);
        seen
    }

    /// Asserts that `method path` with `headers` is refused with 403 and `reason` (and, for
    /// `denied_by_rule`, names `rule` or no rule), before reaching the upstream.
    fn denied(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        reason: &str,
        rule: Option<&str>,
    ) -> Response {
        let before = self.up.heads();
        let resp = call_with(self.gw.port(), method, path, headers);
        assert_refused(&resp, 403, reason);
        let body = resp.body_str();
        match rule {
            Some(rule) => assert!(
                body.contains(&format!("\"rule\":\"{rule}\"")),
                "{method} {path}: expected rule {rule} in {body}"
            ),
            None => assert!(
                !body.contains("\"rule\""),
                "{method} {path}: no rule expected in {body}"
            ),
        }
        if reason != "insufficient_scope" {
            assert!(
                resp.header("www-authenticate").is_none(),
                "{method} {path}: unexpected challenge {:?}",
                resp.headers
            );
        }
        assert_eq!(
            self.up.heads(),
            before,
            "{method} {path}: a refused request reached the upstream"
        );
        resp
    }

    /// Waits up to 5 s for the gateway's output to contain `text`.
    fn wait_log(&self, text: &str) -> String {
        for _ in 0..250 {
            let out = self.gw.output();
            if out.contains(text) {
                return out;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("{text:?} not in the gateway log:\n{}", self.gw.output());
    }
}

fn rule(name: &str, effect: &str, keys: &str) -> String {
    format!("[[apis.routes.rules]]\nname = \"{name}\"\neffect = \"{effect}\"\n{keys}")
}

fn challenge(resp: &Response) -> Vec<&str> {
    resp.headers_all("www-authenticate")
}

// ---------------------------------------------------------------------------
// Decision order and reason codes
// ---------------------------------------------------------------------------

#[test]
fn checks_run_tenant_subscription_groups_scopes_rules_in_order() {
    let routes = [(
        "/orders",
        &*format!(
            "scopes = {{ GET = [\"orders:read\"] }}\ngroups = [\"partners\", \"staff\"]\n{}\n{}",
            rule(
                "tiers",
                "allow",
                "when = [\"consumer.metadata.tier in ['gold', 'silver']\"]"
            ),
            rule("blocked", "deny", "when = [\"header.X-Block == 'yes'\"]"),
        ),
    )];
    let members: &[Member] = &[
        (
            "alice",
            "tenant = \"acme\"\ngroups = [\"staff\"]\nmetadata = { tier = \"gold\" }",
            &["orders:read"],
        ),
        (
            "globex",
            "tenant = \"globex\"\ngroups = [\"staff\"]\nmetadata = { tier = \"gold\" }",
            &["orders:read"],
        ),
        ("unsub", "tenant = \"acme\"", &[]),
        ("nogroup", "tenant = \"acme\"", &[]),
        ("noscope", "tenant = \"acme\"\ngroups = [\"partners\"]", &[]),
        (
            "bronze",
            "tenant = \"acme\"\ngroups = [\"partners\"]\nmetadata = { tier = \"bronze\" }",
            &["orders:read"],
        ),
    ];
    let mut subs =
        String::from("[[plans]]\nname = \"gold\"\nrate = \"100/s\"\nquota = \"1000000/month\"\n\n");
    for who in ["alice", "globex", "nogroup", "noscope", "bronze"] {
        subs.push_str(&format!(
            "[[subscriptions]]\nconsumer = \"{who}\"\napi = \"demo\"\nstate = \"approved\"\nplan = \"gold\"\nexpires = \"2099-01-01T00:00:00Z\"\n\n"
        ));
    }
    let env = Env::start(
        "tenant = \"acme\"\nsubscription = \"approval\"",
        &routes,
        members,
        &subs,
    );

    // Every requirement met.
    let seen = env.allowed("GET", "/orders", &[env.key("alice")]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["alice"]);

    // Each consumer fails one more check than the next; the first failing check answers.
    env.denied(
        "GET",
        "/orders",
        &[env.key("globex")],
        "tenant_mismatch",
        None,
    );
    env.denied(
        "GET",
        "/orders",
        &[env.key("unsub")],
        "not_subscribed",
        None,
    );
    env.denied(
        "GET",
        "/orders",
        &[env.key("nogroup")],
        "group_required",
        None,
    );
    let resp = env.denied(
        "GET",
        "/orders",
        &[env.key("noscope")],
        "insufficient_scope",
        None,
    );
    assert_eq!(
        challenge(&resp),
        ["Bearer error=\"insufficient_scope\", scope=\"orders:read\""]
    );
    // No enforced allow rule applies: refused without a rule name.
    env.denied(
        "GET",
        "/orders",
        &[env.key("bronze")],
        "denied_by_rule",
        None,
    );
    // A deny rule that applies names itself.
    env.denied(
        "GET",
        "/orders",
        &[env.key("alice"), ("X-Block", "yes")],
        "denied_by_rule",
        Some("blocked"),
    );
    env.allowed("GET", "/orders", &[env.key("alice"), ("X-Block", "no")]);
}

#[test]
fn a_refusal_keeps_a_bodyless_keep_alive_connection_usable() {
    let env = Env::start(
        "",
        &[("/orders", "scopes = { GET = [\"orders:read\"] }")],
        &[("reader", "", &["orders:read"]), ("nobody", "", &[])],
        "",
    );
    let mut c = env.gw.client();
    let (_, nobody) = env.key("nobody");
    let (_, reader) = env.key("reader");
    let before = env.up.heads();
    let resp = c.request(
        format!("GET /orders HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {nobody}\r\n\r\n")
            .as_bytes(),
    );
    assert_refused(&resp, 403, "insufficient_scope");
    assert_eq!(env.up.heads(), before);
    let resp = c.request(
        format!("GET /orders HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {reader}\r\n\r\n")
            .as_bytes(),
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
}

#[test]
fn a_refused_head_request_gets_no_body() {
    let env = Env::start(
        "",
        &[("/admin", "scopes = { \"*\" = [\"orders:admin\"] }")],
        &[("reader", "", &["orders:read"])],
        "",
    );
    let (_, reader) = env.key("reader");
    let mut c = env.gw.client();
    // HEAD is not listed: "*" applies.
    c.send(
        format!("HEAD /admin HTTP/1.1\r\nHost: localhost\r\nX-API-Key: {reader}\r\n\r\n")
            .as_bytes(),
    );
    let resp = c.read_head_response();
    assert_eq!(resp.status, 403);
    // The connection stays in step: the next response is the next request's.
    c.send(b"GET /admin HTTP/1.1\r\nHost: localhost\r\n\r\n");
    let next = c
        .try_read_response()
        .expect("a well-framed response after the HEAD refusal");
    assert_refused(&next, 401, "missing_credential");
}

// ---------------------------------------------------------------------------
// Tenants
// ---------------------------------------------------------------------------

#[test]
fn another_tenants_credential_is_refused_unless_the_api_is_shared() {
    let extra = "[[tenants]]\nname = \"acme\"\n\n[[tenants]]\nname = \"globex\"\n\n\
         [[apis]]\nname = \"catalog\"\ntenant = \"acme\"\nshared = true\nauth = [\"api_key\", \"jwt:corp\"]\n\
         [[apis.routes]]\npath = \"/catalog\"\nupstream = \"app\"\n\n\
         [[apis]]\nname = \"internal\"\nauth = [\"api_key\", \"jwt:corp\"]\n\
         [[apis.routes]]\npath = \"/internal\"\nupstream = \"app\"\n";
    let env = Env::start(
        "tenant = \"acme\"",
        &[("/orders", "")],
        &[
            ("acme-app", "tenant = \"acme\"", &[]),
            ("globex-app", "tenant = \"globex\"", &[]),
            ("plain", "", &[]),
        ],
        extra,
    );
    env.allowed("GET", "/orders", &[env.key("acme-app")]);
    env.denied(
        "GET",
        "/orders",
        &[env.key("globex-app")],
        "tenant_mismatch",
        None,
    );
    // No tenant: "default".
    env.denied(
        "GET",
        "/orders",
        &[env.key("plain")],
        "tenant_mismatch",
        None,
    );

    // The shared API of the same tenant admits every tenant.
    for who in ["acme-app", "globex-app", "plain"] {
        env.allowed("GET", "/catalog", &[env.key(who)]);
    }

    // An API without a tenant belongs to "default".
    env.allowed("GET", "/internal", &[env.key("plain")]);
    env.denied(
        "GET",
        "/internal",
        &[env.key("acme-app")],
        "tenant_mismatch",
        None,
    );

    // A JWT whose subject names no consumer is of tenant "default"; one naming a consumer
    // takes that consumer's tenant.
    let stranger = env.token("stranger", json!({}));
    env.allowed("GET", "/internal", &[("Authorization", &stranger)]);
    env.denied(
        "GET",
        "/orders",
        &[("Authorization", &stranger)],
        "tenant_mismatch",
        None,
    );
    env.allowed("GET", "/catalog", &[("Authorization", &stranger)]);
    let acme = env.token("acme-app", json!({}));
    let seen = env.allowed("GET", "/orders", &[("Authorization", &acme)]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["acme-app"]);
}

// ---------------------------------------------------------------------------
// Subscriptions
// ---------------------------------------------------------------------------

fn subscription(consumer: &str, api: &str, lines: &str) -> String {
    format!("[[subscriptions]]\nconsumer = \"{consumer}\"\napi = \"{api}\"\n{lines}\n\n")
}

#[test]
fn approval_admits_only_an_approved_unexpired_subscription() {
    let members: &[Member] = &[
        ("none", "", &[]),
        ("requested", "", &[]),
        ("rejected", "", &[]),
        ("revoked", "", &[]),
        ("expired", "", &[]),
        ("approved", "", &[]),
        ("until-2099", "", &[]),
    ];
    let mut extra = String::from(
        "[[plans]]\nname = \"basic\"\nrate = \"10/s\"\n\n\
         [[apis]]\nname = \"other\"\nauth = [\"api_key\"]\n\
         [[apis.routes]]\npath = \"/other\"\nupstream = \"app\"\n\n",
    );
    // An approved subscription to another API does not count.
    extra.push_str(&subscription("none", "other", "state = \"approved\""));
    extra.push_str(&subscription("requested", "demo", "state = \"requested\""));
    extra.push_str(&subscription("rejected", "demo", "state = \"rejected\""));
    extra.push_str(&subscription("revoked", "demo", "state = \"revoked\""));
    extra.push_str(&subscription(
        "expired",
        "demo",
        "state = \"approved\"\nexpires = \"2020-01-01T00:00:00Z\"",
    ));
    extra.push_str(&subscription(
        "approved",
        "demo",
        "state = \"approved\"\nplan = \"basic\"",
    ));
    extra.push_str(&subscription(
        "until-2099",
        "demo",
        "state = \"approved\"\nexpires = \"2099-01-01T00:00:00Z\"",
    ));
    let env = Env::start(
        "subscription = \"approval\"",
        &[("/s", "")],
        members,
        &extra,
    );

    for (who, reason) in [
        ("none", "not_subscribed"),
        ("requested", "subscription_pending"),
        ("rejected", "subscription_rejected"),
        ("revoked", "subscription_revoked"),
        ("expired", "subscription_expired"),
    ] {
        env.denied("GET", "/s", &[env.key(who)], reason, None);
    }
    for who in ["approved", "until-2099"] {
        let seen = env.allowed("GET", "/s", &[env.key(who)]);
        assert_eq!(seen.headers_all("x-consumer-id"), [who]);
    }
    // The other API needs no subscription.
    env.allowed("GET", "/other", &[env.key("requested")]);

    // A JWT naming a subscribed consumer is that consumer; an unknown subject has none.
    let approved = env.token("approved", json!({}));
    env.allowed("GET", "/s", &[("Authorization", &approved)]);
    let stranger = env.token("stranger", json!({}));
    env.denied(
        "GET",
        "/s",
        &[("Authorization", &stranger)],
        "not_subscribed",
        None,
    );
}

#[test]
fn auto_admits_the_unsubscribed_but_not_the_rejected_or_revoked() {
    let mut extra = String::from(
        "[[apis]]\nname = \"open\"\nauth = [\"api_key\"]\n\
         [[apis.routes]]\npath = \"/open\"\nupstream = \"app\"\n\n",
    );
    extra.push_str(&subscription("rejected", "demo", "state = \"rejected\""));
    extra.push_str(&subscription("revoked", "demo", "state = \"revoked\""));
    extra.push_str(&subscription("revoked", "open", "state = \"revoked\""));
    let env = Env::start(
        "subscription = \"auto\"",
        &[("/a", "")],
        &[
            ("fresh", "", &[]),
            ("rejected", "", &[]),
            ("revoked", "", &[]),
        ],
        &extra,
    );
    env.allowed("GET", "/a", &[env.key("fresh")]);
    let stranger = env.token("stranger", json!({}));
    env.allowed("GET", "/a", &[("Authorization", &stranger)]);
    env.denied(
        "GET",
        "/a",
        &[env.key("rejected")],
        "subscription_rejected",
        None,
    );
    env.denied(
        "GET",
        "/a",
        &[env.key("revoked")],
        "subscription_revoked",
        None,
    );
    // subscription = "none" (the default) does not look at subscriptions at all.
    env.allowed("GET", "/open", &[env.key("revoked")]);
}

// ---------------------------------------------------------------------------
// Groups and scopes
// ---------------------------------------------------------------------------

#[test]
fn groups_are_any_of() {
    let env = Env::start(
        "",
        &[("/p", "groups = [\"partners\", \"staff\"]"), ("/any", "")],
        &[
            ("partner", "groups = [\"partners\"]", &[]),
            ("staffer", "groups = [\"ops\", \"staff\"]", &[]),
            ("outsider", "groups = [\"ops\"]", &[]),
            ("loner", "", &[]),
        ],
        "",
    );
    env.allowed("GET", "/p", &[env.key("partner")]);
    env.allowed("GET", "/p", &[env.key("staffer")]);
    env.denied("GET", "/p", &[env.key("outsider")], "group_required", None);
    env.denied("GET", "/p", &[env.key("loner")], "group_required", None);
    // A JWT of an unknown subject has no groups.
    let stranger = env.token("stranger", json!({ "groups": "partners" }));
    env.denied(
        "GET",
        "/p",
        &[("Authorization", &stranger)],
        "group_required",
        None,
    );
    // A JWT naming a consumer carries its groups.
    let staffer = env.token("staffer", json!({}));
    env.allowed("GET", "/p", &[("Authorization", &staffer)]);
    env.allowed("GET", "/any", &[env.key("loner")]);
}

#[test]
fn scopes_are_required_per_method_with_a_catch_all() {
    let env = Env::start(
        "",
        &[
            (
                "/orders",
                "scopes = { GET = [\"orders:read\"], POST = [\"orders:write\"], \"*\" = [\"orders:admin\"] }",
            ),
            (
                "/reports",
                "scopes = { GET = [\"reports:read\", \"orders:read\"] }",
            ),
            ("/free", ""),
        ],
        &[
            ("reader", "", &["orders:read"]),
            ("writer", "", &["orders:read", "orders:write"]),
            ("admin", "", &["orders:admin"]),
            ("analyst", "", &["orders:read", "reports:read"]),
            ("none", "", &[]),
        ],
        "",
    );
    let insufficient = |method: &str, path: &str, who: &str, scope: &str| {
        let resp = env.denied(method, path, &[env.key(who)], "insufficient_scope", None);
        assert_eq!(
            challenge(&resp),
            [format!("Bearer error=\"insufficient_scope\", scope=\"{scope}\"").as_str()],
            "{method} {path} as {who}"
        );
    };
    env.allowed("GET", "/orders", &[env.key("reader")]);
    insufficient("POST", "/orders", "reader", "orders:write");
    env.allowed("POST", "/orders", &[env.key("writer")]);
    // Methods not listed fall to "*".
    insufficient("DELETE", "/orders", "reader", "orders:admin");
    insufficient("DELETE", "/orders", "writer", "orders:admin");
    insufficient("PUT", "/orders", "writer", "orders:admin");
    env.allowed("DELETE", "/orders", &[env.key("admin")]);
    // A listed method does not fall back to "*".
    insufficient("GET", "/orders", "admin", "orders:read");

    // All of the listed scopes, named in the challenge as configured.
    insufficient("GET", "/reports", "reader", "reports:read orders:read");
    env.allowed("GET", "/reports", &[env.key("analyst")]);
    // No "*" entry: other methods need no scope.
    env.allowed("DELETE", "/reports", &[env.key("none")]);
    // No scopes on the route.
    env.allowed("GET", "/free", &[env.key("none")]);
}

#[test]
fn jwt_scopes_come_from_scope_and_scp() {
    let env = Env::start(
        "",
        &[(
            "/orders",
            "scopes = { GET = [\"orders:read\", \"orders:list\"] }",
        )],
        &[],
        "",
    );
    let passes = |claims: serde_json::Value| {
        let token = env.token("u1", claims.clone());
        let before = env.up.requests();
        let resp = get_with(env.gw.port(), "/orders", &[("Authorization", &token)]);
        assert_eq!(resp.status, 200, "{claims}: {}", resp.body_str());
        assert!(env.up.wait_requests(before + 1, Duration::from_secs(5)));
    };
    let refused = |claims: serde_json::Value| {
        let token = env.token("u1", claims.clone());
        let resp = env.denied(
            "GET",
            "/orders",
            &[("Authorization", &token)],
            "insufficient_scope",
            None,
        );
        assert_eq!(
            challenge(&resp),
            ["Bearer error=\"insufficient_scope\", scope=\"orders:read orders:list\""],
            "{claims}"
        );
    };
    passes(json!({ "scope": "orders:read orders:list" }));
    passes(json!({ "scope": "profile  orders:list orders:read" }));
    passes(json!({ "scp": ["orders:read", "orders:list"] }));
    refused(json!({ "scope": "orders:read" }));
    refused(json!({ "scp": ["orders:list"] }));
    refused(json!({}));
    // A scope is compared whole, and the space separated list is not one scope.
    refused(json!({ "scope": "orders:reader orders:listing" }));
    refused(json!({ "scp": ["orders:read orders:list"] }));
}

// ---------------------------------------------------------------------------
// Rules
// ---------------------------------------------------------------------------

#[test]
fn client_ip_conditions_match_the_peer_address() {
    let env = Env::start(
        "",
        &[
            (
                "/lan",
                &rule("loopback", "allow", "when = [\"client_ip in 127.0.0.0/8\"]"),
            ),
            (
                "/vpn",
                &rule(
                    "vpn-only",
                    "allow",
                    "when = [\"client_ip in 10.0.0.0/8, 192.168.0.0/16\"]",
                ),
            ),
            (
                "/listed",
                &rule(
                    "host",
                    "allow",
                    "when = [\"client_ip in ['10.0.0.0/8', '127.0.0.1/32']\"]",
                ),
            ),
            (
                "/v6",
                &rule("v6-loopback", "allow", "when = [\"client_ip in ::1/128\"]"),
            ),
            (
                "/blocked",
                &rule(
                    "no-loopback",
                    "deny",
                    "when = [\"client_ip in 127.0.0.0/8\"]",
                ),
            ),
            (
                "/elsewhere",
                &rule("no-vpn", "deny", "when = [\"client_ip in 10.0.0.0/8\"]"),
            ),
        ],
        &[("app", "", &[])],
        "",
    );
    let key = [env.key("app")];
    env.allowed("GET", "/lan", &key);
    env.denied("GET", "/vpn", &key, "denied_by_rule", None);
    env.allowed("GET", "/listed", &key);
    env.denied("GET", "/v6", &key, "denied_by_rule", None);
    env.denied(
        "GET",
        "/blocked",
        &key,
        "denied_by_rule",
        Some("no-loopback"),
    );
    env.allowed("GET", "/elsewhere", &key);
    // The forwarded-for field from the client does not change the address rules see.
    env.denied(
        "GET",
        "/vpn",
        &[env.key("app"), ("X-Forwarded-For", "10.1.2.3")],
        "denied_by_rule",
        None,
    );
}

#[test]
fn a_claims_rule_compares_with_the_consumers_tenant() {
    let routes = [
        (
            "/own",
            rule(
                "own-tenant-only",
                "deny",
                "unless = [\"claims.tenant_id == consumer.tenant\"]",
            ),
        ),
        (
            "/roles",
            rule(
                "roles",
                "allow",
                "when = [\"claims.role in ['admin', 'ops']\"]",
            ),
        ),
        (
            "/level",
            rule("level-3", "allow", "when = [\"claims.level == '3'\"]"),
        ),
    ];
    let routes: Vec<(&str, &str)> = routes.iter().map(|(p, r)| (*p, r.as_str())).collect();
    let env = Env::start(
        "tenant = \"acme\"",
        &routes,
        &[("acme-app", "tenant = \"acme\"", &[])],
        "",
    );
    let token = |claims| env.token("acme-app", claims);

    let own = token(json!({ "tenant_id": "acme" }));
    let seen = env.allowed("GET", "/own", &[("Authorization", &own)]);
    assert_eq!(seen.headers_all("x-consumer-id"), ["acme-app"]);
    for claims in [json!({ "tenant_id": "globex" }), json!({})] {
        let other = token(claims);
        env.denied(
            "GET",
            "/own",
            &[("Authorization", &other)],
            "denied_by_rule",
            Some("own-tenant-only"),
        );
    }
    // An API key has no claims.
    env.denied(
        "GET",
        "/own",
        &[env.key("acme-app")],
        "denied_by_rule",
        Some("own-tenant-only"),
    );
    // The tenant check comes first: an unknown subject is of tenant "default".
    let stranger = env.token("stranger", json!({ "tenant_id": "default" }));
    env.denied(
        "GET",
        "/own",
        &[("Authorization", &stranger)],
        "tenant_mismatch",
        None,
    );

    env.allowed(
        "GET",
        "/roles",
        &[("Authorization", &token(json!({ "role": "ops" })))],
    );
    env.denied(
        "GET",
        "/roles",
        &[("Authorization", &token(json!({ "role": "user" })))],
        "denied_by_rule",
        None,
    );
    // A numeric claim compares as its text.
    env.allowed(
        "GET",
        "/level",
        &[("Authorization", &token(json!({ "level": 3 })))],
    );
    env.denied(
        "GET",
        "/level",
        &[("Authorization", &token(json!({ "level": 4 })))],
        "denied_by_rule",
        None,
    );
}

#[test]
fn deny_beats_allow() {
    let rules = format!(
        "{}\n{}",
        rule("loopback", "allow", "when = [\"client_ip in 127.0.0.0/8\"]"),
        rule(
            "no-interns",
            "deny",
            "when = [\"consumer.metadata.role == 'intern'\"]"
        ),
    );
    let env = Env::start(
        "",
        &[("/both", &rules)],
        &[
            ("intern", "metadata = { role = \"intern\" }", &[]),
            ("staff", "metadata = { role = \"staff\" }", &[]),
        ],
        "",
    );
    env.denied(
        "GET",
        "/both",
        &[env.key("intern")],
        "denied_by_rule",
        Some("no-interns"),
    );
    env.allowed("GET", "/both", &[env.key("staff")]);
}

#[test]
fn shadow_rules_log_and_never_block() {
    let shadow = rule(
        "would-block-interns",
        "deny",
        "mode = \"shadow\"\nwhen = [\"consumer.metadata.role == 'intern'\"]",
    );
    let shadow_allow = rule(
        "would-need-vpn",
        "allow",
        "mode = \"shadow\"\nwhen = [\"client_ip in 10.0.0.0/8\"]",
    );
    let with_enforced = format!(
        "{shadow}\n{}",
        rule(
            "enforced-no-interns",
            "deny",
            "when = [\"consumer.metadata.role == 'intern'\"]"
        )
    );
    let env = Env::start_with_log(
        "",
        &[
            ("/shadow", &shadow),
            ("/shadow-allow", &shadow_allow),
            ("/enforced", &with_enforced),
        ],
        &[
            ("intern", "metadata = { role = \"intern\" }", &[]),
            ("staff", "metadata = { role = \"staff\" }", &[]),
        ],
        "",
        "info",
    );
    const LINE: &str = "shadow rule would deny";

    // Not applying: nothing logged.
    env.allowed("GET", "/shadow", &[env.key("staff")]);
    // A shadow allow rule does not make an allow rule required.
    env.allowed("GET", "/shadow-allow", &[env.key("staff")]);
    std::thread::sleep(Duration::from_millis(200));
    assert!(!env.gw.output().contains(LINE), "{}", env.gw.output());

    // Applying: passes, and the log names the rule.
    env.allowed("GET", "/shadow", &[env.key("intern")]);
    let log = env.wait_log(LINE);
    let line = log
        .lines()
        .find(|l| l.contains(LINE))
        .expect("the shadow line");
    assert!(line.contains("would-block-interns"), "{line}");

    // An enforced deny rule next to the shadow rule still refuses.
    env.denied(
        "GET",
        "/enforced",
        &[env.key("intern")],
        "denied_by_rule",
        Some("enforced-no-interns"),
    );
}

#[test]
fn header_and_consumer_conditions() {
    let routes = [
        (
            "/env",
            rule(
                "known-env",
                "allow",
                "when = [\"header.X-Env in ['prod', 'staging']\"]",
            ),
        ),
        (
            "/gold",
            rule(
                "gold-only",
                "deny",
                "unless = [\"consumer.metadata.tier == 'gold'\"]",
            ),
        ),
        (
            "/match",
            rule(
                "own-tenant-header",
                "allow",
                "when = [\"header.X-Tenant == consumer.tenant\"]",
            ),
        ),
        (
            "/both",
            rule(
                "needs-both",
                "deny",
                "unless = [\"header.X-A == '1'\", \"header.X-B == '1'\"]",
            ),
        ),
        (
            "/badge",
            rule(
                "interns-need-badge",
                "deny",
                "when = [\"consumer.metadata.tier == 'silver'\", \"consumer.id in ['bob', 'eve']\"]\n\
                 unless = [\"header.X-Badge == 'ok'\"]",
            ),
        ),
    ];
    let routes: Vec<(&str, &str)> = routes.iter().map(|(p, r)| (*p, r.as_str())).collect();
    let env = Env::start(
        "shared = true",
        &routes,
        &[
            (
                "alice",
                "tenant = \"acme\"\nmetadata = { tier = \"gold\" }",
                &[],
            ),
            (
                "bob",
                "tenant = \"acme\"\nmetadata = { tier = \"silver\" }",
                &[],
            ),
            ("carol", "metadata = { tier = \"silver\" }", &[]),
            ("dave", "", &[]),
        ],
        "",
    );
    let alice = env.key("alice");
    let bob = env.key("bob");

    // Header conditions, the field name in any case.
    env.allowed("GET", "/env", &[alice, ("x-env", "prod")]);
    env.allowed("GET", "/env", &[alice, ("X-ENV", "staging")]);
    env.denied(
        "GET",
        "/env",
        &[alice, ("X-Env", "dev")],
        "denied_by_rule",
        None,
    );
    env.denied("GET", "/env", &[alice], "denied_by_rule", None);

    // Consumer metadata; a missing key never equals.
    env.allowed("GET", "/gold", &[alice]);
    for who in ["bob", "dave"] {
        env.denied(
            "GET",
            "/gold",
            &[env.key(who)],
            "denied_by_rule",
            Some("gold-only"),
        );
    }

    // Two operands of the request and the consumer.
    env.allowed("GET", "/match", &[alice, ("X-Tenant", "acme")]);
    env.denied(
        "GET",
        "/match",
        &[alice, ("X-Tenant", "globex")],
        "denied_by_rule",
        None,
    );
    env.allowed("GET", "/match", &[env.key("dave"), ("X-Tenant", "default")]);

    // The rule does not apply only when all `unless` conditions hold.
    env.allowed("GET", "/both", &[alice, ("X-A", "1"), ("X-B", "1")]);
    for headers in [&[alice, ("X-A", "1")][..], &[alice, ("X-B", "1")], &[alice]] {
        env.denied(
            "GET",
            "/both",
            headers,
            "denied_by_rule",
            Some("needs-both"),
        );
    }

    // All `when` conditions must hold for the rule to apply.
    env.denied(
        "GET",
        "/badge",
        &[bob],
        "denied_by_rule",
        Some("interns-need-badge"),
    );
    env.allowed("GET", "/badge", &[bob, ("X-Badge", "ok")]);
    env.allowed("GET", "/badge", &[env.key("carol")]);
    env.allowed("GET", "/badge", &[alice]);
}

#[test]
fn the_longest_rule_name_gives_a_well_formed_problem_and_a_longer_one_is_refused() {
    let name = format!("deny-{}", "x".repeat(59));
    assert_eq!(name.len(), 64);
    let env = Env::start(
        "",
        &[(
            "/r",
            &rule(&name, "deny", "when = [\"client_ip in 127.0.0.0/8\"]"),
        )],
        &[("app", "", &[])],
        "",
    );
    let resp = env.denied(
        "GET",
        "/r",
        &[env.key("app")],
        "denied_by_rule",
        Some(&name),
    );
    let body = json(&resp.body_str());
    assert_eq!(body["rule"], name.as_str());

    // One character more is refused by `check`, naming the rule's line.
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let longer = format!("{name}x");
    let cfg = access_config(
        &pepper,
        &key,
        "",
        &rule(&longer, "deny", "when = [\"client_ip in 127.0.0.0/8\"]"),
        "",
    );
    let out = assert_refused_at(&cfg, &longer);
    assert!(out.stderr.contains("at most 64"), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// check
// ---------------------------------------------------------------------------

/// A config with every access feature, valid; `api` and `route` add lines to api "demo" and
/// its route "/orders", `extra` further tables.
fn access_config(
    pepper: &TempFile,
    key: &IssuedKey,
    api: &str,
    route: &str,
    extra: &str,
) -> String {
    config(
        free_port(),
        free_port(),
        &format!("tenant = \"acme\"\nsubscription = \"approval\"\nauth = [\"api_key\"]\n{api}"),
        &[(
            "/orders",
            &format!(
                "scopes = {{ GET = [\"orders:read\"], \"*\" = [\"orders:admin\"] }}\n\
                 groups = [\"partners\"]\n{route}\n{}",
                rule(
                    "own",
                    "deny",
                    "mode = \"shadow\"\nunless = [\"consumer.tenant == 'acme'\"]"
                )
            ),
        )],
        &format!(
            "[auth]\nkey_pepper_file = \"{}\"\n\n\
             [[tenants]]\nname = \"acme\"\n\n\
             [[plans]]\nname = \"gold\"\nrate = \"100/s\"\nquota = \"1000000/month\"\n\n\
             [[consumers]]\nid = \"alice\"\ntenant = \"acme\"\ngroups = [\"partners\"]\nmetadata = {{ tier = \"gold\" }}\n\
             [[consumers.credentials]]\nkind = \"api_key\"\nid = \"{}\"\nhash = \"{}\"\nscopes = [\"orders:read\"]\n\n\
             [[subscriptions]]\nconsumer = \"alice\"\napi = \"demo\"\nstate = \"approved\"\nplan = \"gold\"\n\
             expires = \"2099-01-01T00:00:00Z\"\n\n{extra}",
            file_name(pepper),
            key.id,
            key.hash
        ),
    )
}

/// An `[[apis]]` table `name` taking API keys, with the lines `api` and one route `/name` with
/// the lines `route`.
fn keyed_api(name: &str, api: &str, route: &str) -> String {
    format!(
        "[[apis]]\nname = \"{name}\"\nauth = [\"api_key\"]\n{api}\n\
         [[apis.routes]]\npath = \"/{name}\"\nupstream = \"app\"\n{route}\n"
    )
}

#[test]
fn check_refuses_inconsistent_access_configs_at_their_line() {
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let base =
        |api: &str, route: &str, extra: &str| access_config(&pepper, &key, api, route, extra);

    let (_file, out) = check(&base("", "", ""));
    assert_eq!(out.code(), Some(0), "{}", out.combined());

    // A rule on route "/orders" with one condition; further tables; a route without auth.
    let cond = |c: &str| base("", &rule("bad", "deny", &format!("when = [\"{c}\"]")), "");
    let more = |extra: &str| base("", "", extra);
    let public = |api: &str, route: &str| {
        let table =
            format!("[[apis]]\nname = \"open\"\n{api}\n[[apis.routes]]\npath = \"/public\"");
        more(&format!("{table}\nupstream = \"app\"\n{route}\n"))
    };
    let approved = "state = \"approved\"";
    let billing = |lines: &str| {
        let sub = subscription("alice", "billing", &format!("{approved}\n{lines}"));
        more(&format!("{}\n{sub}", keyed_api("billing", "", "")))
    };
    let any_ip = rule("r", "deny", "when = [\"client_ip in 10.0.0.0/8\"]");
    let no_auth = "path = \"/public\"";
    // (config, the text on the line `check` must name, a word its message must hold)
    let cases: Vec<(String, &str, &str)> = vec![
        // Access requirements on a route without authentication.
        (
            public("", "scopes = { GET = [\"a\"] }"),
            no_auth,
            "authentication",
        ),
        (
            public("", "groups = [\"partners\"]"),
            no_auth,
            "authentication",
        ),
        (public("", &any_ip), no_auth, "authentication"),
        (
            public("subscription = \"auto\"", ""),
            no_auth,
            "authentication",
        ),
        // Conditions.
        (cond("path.a.b == 'x'"), "path.a.b", "plain name"),
        (cond("time in Mon-Fri 08:00-18:00"), "time in", "IANA zone"),
        (
            cond("time in Mon-Fri 08:00-18:00 Nowhere/Atlantis"),
            "Nowhere/Atlantis",
            "time zone",
        ),
        (cond("claims.a != 'x'"), "claims.a !=", "claims.a"),
        (cond("claims.a..b == 'x'"), "claims.a..b", "dotted path"),
        (cond("claims.role in [admin]"), "in [admin]", "quoted"),
        (
            cond("client_ip in nowhere"),
            "client_ip in nowhere",
            "nowhere",
        ),
        (
            base("", &rule("empty", "deny", ""), ""),
            "name = \"empty\"",
            "conditions",
        ),
        // Subscriptions naming nothing, or not well formed.
        (
            more(&subscription("ghost", "demo", approved)),
            "\"ghost\"",
            "ghost",
        ),
        (
            more(&subscription("alice", "nosuch", approved)),
            "\"nosuch\"",
            "nosuch",
        ),
        (billing("plan = \"platinum\""), "platinum", "platinum"),
        (billing("expires = \"next week\""), "next week", "RFC 3339"),
        // Plans.
        (
            more("[[plans]]\nname = \"fast\"\nrate = \"fast\""),
            "rate = \"fast\"",
            "rate",
        ),
        (
            more("[[plans]]\nname = \"q\"\nquota = \"10/fortnight\""),
            "10/fortnight",
            "quota",
        ),
        // Tenants, once declared: on an API, and on a consumer (named at its table).
        (
            more(&keyed_api("ini", "tenant = \"initech\"", "")),
            "\"initech\"",
            "initech",
        ),
        (
            more("[[consumers]]\nid = \"ini\"\ntenant = \"initech\""),
            "\"ini\"",
            "initech",
        ),
        // Scopes keyed by something other than an upper-case method.
        (
            more(&keyed_api("low", "", "scopes = { get = [\"a\"] }")),
            "{ get",
            "upper-case",
        ),
    ];
    for (cfg, needle, word) in cases {
        let out = assert_refused_at(&cfg, needle);
        assert!(
            out.stderr.contains(word),
            "{needle}: expected {word:?} in {}",
            out.stderr
        );
    }
}

// ---------------------------------------------------------------------------
// Path parameters
// ---------------------------------------------------------------------------

#[test]
fn path_parameters_route_and_feed_conditions() {
    let own_tenant = rule(
        "own-tenant-only",
        "deny",
        "unless = [\"claims.tenant_id == path.tenant\"]",
    );
    let env = Env::start(
        "",
        &[
            ("/tenants/{tenant}/orders", &own_tenant),
            (
                "/v1/{tenant}/items",
                &format!(
                    "strip_prefix = true\n{}",
                    rule(
                        "mine",
                        "deny",
                        "unless = [\"path.tenant == consumer.tenant\"]"
                    )
                ),
            ),
        ],
        &[("acme-app", "tenant = \"default\"", &[])],
        "",
    );
    let acme = env.token("someone", json!({ "tenant_id": "acme" }));
    env.allowed("GET", "/tenants/acme/orders", &[("Authorization", &acme)]);
    env.allowed("GET", "/tenants/acme/orders/7", &[("Authorization", &acme)]);
    env.denied(
        "GET",
        "/tenants/globex/orders",
        &[("Authorization", &acme)],
        "denied_by_rule",
        Some("own-tenant-only"),
    );
    // No claim: the condition cannot hold, the deny applies.
    let bare = env.token("someone", json!({}));
    env.denied(
        "GET",
        "/tenants/acme/orders",
        &[("Authorization", &bare)],
        "denied_by_rule",
        Some("own-tenant-only"),
    );
    // A literal segment that differs does not match the route at all.
    let resp = call_with(
        env.gw.port(),
        "GET",
        "/tenants/acme/invoices",
        &[("Authorization", &acme)],
    );
    assert_eq!(resp.status, 404, "{}", resp.body_str());

    // strip_prefix removes the matched part, parameters included.
    let before = env.up.requests();
    let resp = call_with(
        env.gw.port(),
        "GET",
        "/v1/default/items/9?x=1",
        &[env.key("acme-app")],
    );
    assert_eq!(resp.status, 200, "{}", resp.body_str());
    assert!(env.up.wait_requests(before + 1, Duration::from_secs(5)));
    assert_eq!(env.up.last_request().target, "/9?x=1");
    env.denied(
        "GET",
        "/v1/other/items",
        &[env.key("acme-app")],
        "denied_by_rule",
        Some("mine"),
    );
}

#[test]
fn check_warns_about_rules_that_can_never_match() {
    let pepper = pepper_file();
    let key = issue_key(&pepper, "alice");
    let cfg = access_config(
        &pepper,
        &key,
        "",
        &rule("ghost", "deny", "when = [\"path.region == 'eu'\"]"),
        "",
    );
    let (file, out) = check(&cfg);
    assert_eq!(
        out.code(),
        Some(0),
        "warnings do not fail the check: {}",
        out.combined()
    );
    let at = format!(
        "warning: {}:{}:",
        file.path_str(),
        line_of(&cfg, "path.region")
    );
    assert!(out.stderr.contains(&at), "expected {at} in {}", out.stderr);

    let cfg = config(
        free_port(),
        free_port(),
        "auth = [\"api_key\"]",
        &[(
            "/g",
            "groups = [\"nobody-has-this\"]\nscopes = { GET = [\"never:carried\"] }",
        )],
        &format!("[auth]\nkey_pepper_file = \"{}\"\n", file_name(&pepper)),
    );
    let (file, out) = check(&cfg);
    assert_eq!(out.code(), Some(0), "{}", out.combined());
    for needle in ["nobody-has-this", "never:carried"] {
        assert!(out.stderr.contains(needle), "{needle} in {}", out.stderr);
    }
    assert!(
        out.stderr
            .contains(&format!("warning: {}:", file.path_str())),
        "{}",
        out.stderr
    );
}

#[test]
fn time_windows_use_the_clock_and_the_zone() {
    let hour = (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs()
        / 3600
        % 24) as i64;
    let at = |h: i64| format!("{:02}:00", h.rem_euclid(24));
    // A window around the current hour, and one that excludes it (both in UTC, every day).
    let open = format!("time in * {}-{} UTC", at(hour - 1), at(hour + 2));
    let shut = format!("time in * {}-{} UTC", at(hour + 3), at(hour + 5));
    let env = Env::start(
        "",
        &[
            (
                "/open",
                &rule("open", "allow", &format!("when = [\"{open}\"]")),
            ),
            (
                "/shut",
                &rule("shut", "allow", &format!("when = [\"{shut}\"]")),
            ),
        ],
        &[("app", "", &[])],
        "",
    );
    env.allowed("GET", "/open", &[env.key("app")]);
    env.denied("GET", "/shut", &[env.key("app")], "denied_by_rule", None);
}

#[test]
fn nested_claims_are_read_by_dotted_path() {
    let env = Env::start(
        "",
        &[(
            "/org",
            &rule(
                "org-member",
                "allow",
                "when = [\"claims.org.id == 'acme'\"]",
            ),
        )],
        &[("app", "", &[])],
        "",
    );
    let member = env.token(
        "someone",
        json!({ "org": { "id": "acme", "name": "Acme" } }),
    );
    env.allowed("GET", "/org", &[("Authorization", &member)]);
    let outsider = env.token("someone", json!({ "org": { "id": "globex" } }));
    env.denied(
        "GET",
        "/org",
        &[("Authorization", &outsider)],
        "denied_by_rule",
        None,
    );
    let flat = env.token("someone", json!({ "org.id": "acme" }));
    env.allowed("GET", "/org", &[("Authorization", &flat)]);
}

#[test]
fn path_parameter_conditions_read_the_normalized_path() {
    let env = Env::start(
        "tenant = \"acme\"",
        &[(
            "/tenants/{tenant}/orders",
            &rule(
                "own-tenant-only",
                "deny",
                "unless = [\"path.tenant == consumer.tenant\"]",
            ),
        )],
        &[("acme-app", "tenant = \"acme\"", &[])],
        "[[tenants]]\nname = \"acme\"\n",
    );
    // `%61cme` is `acme` once decoded; `..` is resolved before the parameter is read.
    env.allowed_as(
        "GET",
        "/tenants/%61cme/orders",
        "/tenants/acme/orders",
        &[env.key("acme-app")],
    );
    env.denied(
        "GET",
        "/tenants/acme/../globex/orders",
        &[env.key("acme-app")],
        "denied_by_rule",
        Some("own-tenant-only"),
    );
}
