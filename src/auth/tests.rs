//! Tests of the authentication phase: RFC 7515 / RFC 8037 signature vectors, every algorithm
//! on tokens minted by `jsonwebtoken`, the refusals (alg confusion, `none`, time, audience,
//! issuer, key), API keys, Basic, and the cache.

use super::index::{Consumer, Credential, CredentialIndex, CredentialKind, Handle, Secret};
use super::jwks::KeySet;
use super::keygen::SigningKey;
use super::keys::{Algorithm, AlgorithmSet};
use super::*;
use serde_json::json;

const RFC_PAYLOAD: &str = "eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ";

fn verify_vector(jwk: &str, token: &str) -> bool {
    let set = KeySet::parse(
        format!("{{\"keys\":[{jwk}]}}").as_bytes(),
        AlgorithmSet::ANY,
        false,
    )
    .unwrap();
    let parts = jwt::split(token.as_bytes()).unwrap();
    let mut scratch = jwt::Scratch::default();
    let header = jwt::read_header(&mut scratch, parts.header).unwrap();
    let mut sig = [0u8; 1024];
    let n = jwt::decode_signature(parts.signature, &mut sig).unwrap();
    set.keys[0].verify(header.alg, parts.signing_input, &sig[..n])
}

fn tampered(token: &str) -> String {
    // Flip one character of the payload.
    let mut bytes = token.as_bytes().to_vec();
    let at = token.find('.').unwrap() + 5;
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

#[test]
fn rfc7515_a1_hs256() {
    let jwk = r#"{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}"#;
    let token = format!("eyJ0eXAiOiJKV1QiLA0KICJhbGciOiJIUzI1NiJ9.{RFC_PAYLOAD}.dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk");
    assert!(verify_vector(jwk, &token));
    assert!(!verify_vector(jwk, &tampered(&token)));
}

const RFC_RSA_JWK: &str = r#"{"kty":"RSA","e":"AQAB","n":"ofgWCuLjybRlzo0tZWJjNiuSfb4p4fAkd_wWJcyQoTbji9k0l8W26mPddxHmfHQp-Vaw-4qPCJrcS2mJPMEzP1Pt0Bm4d4QlL-yRT-SFd2lZS-pCgNMsD1W_YpRPEwOWvG6b32690r2jZ47soMZo9wGzjb_7OMg0LOL-bSf63kpaSHSXndS5z5rexMdbBYUsLA9e-KXBdQOS-UTo7WTBEMa2R2CapHg665xsmtdVMTBQY4uDZlxvb3qCo5ZwKh9kG4LT6_I5IhlJH7aGhyxXFvUK-DWNmoudF8NAco9_h9iaGNj8q2ethFkMLs91kzk2PAcDTW9gb54h4FRWyuXpoQ"}"#;
const RFC_RS256: &str = "eyJhbGciOiJSUzI1NiJ9.eyJpc3MiOiJqb2UiLA0KICJleHAiOjEzMDA4MTkzODAsDQogImh0dHA6Ly9leGFtcGxlLmNvbS9pc19yb290Ijp0cnVlfQ.cC4hiUPoj9Eetdgtv3hF80EGrhuB__dzERat0XF9g2VtQgr9PJbu3XOiZj5RZmh7AAuHIm4Bh-0Qc_lF5YKt_O8W2Fp5jujGbds9uJdbF9CUAr7t1dnZcAcQjbKBYNX4BAynRFdiuB--f_nZLgrnbyTyWzO75vRK5h6xBArLIARNPvkSjtQBMHlb1L07Qe7K0GarZRmB_eSN9383LcOLn6_dO--xi12jzDwusC-eOkHWEsqtFZESc6BfI7noOPqvhJ1phCnvWh6IeYI2w9QOYEUipUTI8np6LbgGY9Fs98rqVt5AXLIhWkWywlVmtVrBp0igcN_IoypGlUPQGe77Rw";

#[test]
fn rfc7515_a2_rs256() {
    assert!(verify_vector(RFC_RSA_JWK, RFC_RS256));
    assert!(!verify_vector(RFC_RSA_JWK, &tampered(RFC_RS256)));
}

#[test]
fn rfc7515_a3_es256() {
    let jwk = r#"{"kty":"EC","crv":"P-256","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}"#;
    let token = format!("eyJhbGciOiJFUzI1NiJ9.{RFC_PAYLOAD}.DtEhU3ljbEg8L38VWAfUAqOyKAM6-Xx-F4GawxaepmXFCgfTjDxw5djxLa8ISlSApmWQxfKTUJqPP3-Kg6NU1Q");
    assert!(verify_vector(jwk, &token));
    assert!(!verify_vector(jwk, &tampered(&token)));
}

#[test]
fn rfc7515_a4_es512_and_a5_none_are_refused() {
    let mut scratch = jwt::Scratch::default();
    let es512 = "eyJhbGciOiJFUzUxMiJ9.UGF5bG9hZA.AdwMgeerwtHoh-l192l60hp9wAHZFVJbLfD_UxMi70cwnZOYaRI1bKPWROc-mZZqwqT2SI-KGDKB34XO0aw_7XdtAG8GaSwFKdCAPZgoXD2YBJZCPEX3xKpRwcdOO8KpEHwJjyqOgzDO7iKvU8vcnwNrmxYbSW9ERBXukOXolLzeO_Jn";
    let parts = jwt::split(es512.as_bytes()).unwrap();
    assert!(
        jwt::read_header(&mut scratch, parts.header).is_err(),
        "P-521 is not supported"
    );
    let none = format!("eyJhbGciOiJub25lIn0.{RFC_PAYLOAD}.");
    assert!(jwt::split(none.as_bytes()).is_none(), "no signature part");
    let none_signed = format!("eyJhbGciOiJub25lIn0.{RFC_PAYLOAD}.AAAA");
    let parts = jwt::split(none_signed.as_bytes()).unwrap();
    assert!(
        jwt::read_header(&mut scratch, parts.header).is_err(),
        "alg none"
    );
}

#[test]
fn rfc8037_ed25519() {
    let jwk = r#"{"kty":"OKP","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}"#;
    let token = "eyJhbGciOiJFZERTQSJ9.RXhhbXBsZSBvZiBFZDI1NTE5IHNpZ25pbmc.hgyY0il_MGCjP0JzlnLWG1PPOt7-09PGcvMg3AIbQR6dWbhijcNR4ki4iylGjg5BhVsPt9g7sVvpAr_MuM0KAg";
    assert!(verify_vector(jwk, token));
    assert!(!verify_vector(jwk, &tampered(token)));
}

// --- The whole phase --------------------------------------------------------------------------

const RSA_PEM: &[u8] = include_bytes!("../../tests/fixtures/jwt/rsa2048.pem");

struct Setup {
    config: AuthConfig,
    route: RouteAuth,
    core: CoreAuth,
    cache: VerifiedCache,
}

fn issuer(name: &str) -> Issuer {
    Issuer {
        name: name.into(),
        issuer: format!("https://{name}.example").into(),
        audiences: Box::new(["orders-api".into()]),
        algorithms: AlgorithmSet::ANY,
        leeway: 30,
        consumer_claim: "sub".into(),
        required_claims: Box::new(["exp".into()]),
        claim_headers: Box::new([("email".into(), "X-User-Email".into())]),
        require_consumer: false,
        scopes_claim: None,
        remote: false,
        refetch_cooldown: Duration::from_secs(30),
    }
}

impl Setup {
    fn new(jwks: &str, index: CredentialIndex) -> Setup {
        let keys = KeySet::parse(jwks.as_bytes(), AlgorithmSet::ANY, false).unwrap();
        let mut route = RouteAuth {
            api_key: true,
            basic: true,
            mtls: false,
            jwt_issuers: Box::new([0]),
            api_key_query: Some("api_key".into()),
            forward_credential: false,
            cache: 0,
            challenge_missing: Box::new([]),
            challenge_invalid: Box::new([]),
        };
        route.challenges("test");
        Setup {
            config: AuthConfig {
                api_key_header: b"x-api-key".to_vec().into(),
                max_token_bytes: 8192,
                basic_cache_ttl: 60,
                issuers: vec![issuer("corp"), issuer("other")],
                pepper: Some(Arc::new(
                    api_key::Pepper::new(b"pepper-pepper-pepper").unwrap(),
                )),
                identity_fields: vec![],
                jwks_wait: Duration::from_secs(1),
            },
            route,
            core: CoreAuth::new(
                Arc::new(AuthState {
                    epoch: 1,
                    credentials: Arc::new(index),
                    keys: vec![Some(Arc::new(keys)), None].into(),
                }),
                None,
            ),
            cache: VerifiedCache::new(16),
        }
    }

    fn run(&mut self, name: &str, value: &str) -> Outcome {
        let headers = [httparse::Header {
            name,
            value: value.as_bytes(),
        }];
        let presented = Presented {
            headers: &headers,
            query: None,
            certificate: None,
        };
        authenticate(
            &self.core,
            &self.config,
            &self.route,
            &mut self.cache,
            &presented,
        )
    }

    fn bearer(&mut self, token: &str) -> Result<Rc<Identity>, Reason> {
        match self.run("Authorization", &format!("Bearer {token}")) {
            Outcome::Pass(identity, _) => Ok(identity),
            Outcome::Refuse(reason) => Err(reason),
            Outcome::Wait(_) => panic!("unexpected wait"),
        }
    }
}

fn claims(extra: serde_json::Value) -> serde_json::Value {
    let mut base = json!({
        "iss": "https://corp.example",
        "aud": "orders-api",
        "sub": "user-1",
        "exp": unix_now() + 600,
        "email": "u1@example.com",
    });
    for (k, v) in extra.as_object().unwrap() {
        if v.is_null() {
            base.as_object_mut().unwrap().remove(k);
        } else {
            base[k] = v.clone();
        }
    }
    base
}

fn key_for(alg: Algorithm) -> SigningKey {
    match alg {
        Algorithm::RS256
        | Algorithm::RS384
        | Algorithm::RS512
        | Algorithm::PS256
        | Algorithm::PS384
        | Algorithm::PS512 => SigningKey::from_pem(alg, RSA_PEM).unwrap(),
        _ => SigningKey::generate(alg).unwrap(),
    }
}

#[test]
fn every_algorithm_verifies_tokens_minted_by_jsonwebtoken() {
    for alg in Algorithm::ALL {
        let key = key_for(alg);
        let jwks = format!("{{\"keys\":[{}]}}", key.jwk(alg, "k1"));
        let mut setup = Setup::new(&jwks, CredentialIndex::default());
        let token = key.mint(alg, Some("k1"), &claims(json!({}))).unwrap();
        let identity = setup
            .bearer(&token)
            .unwrap_or_else(|r| panic!("{}: {r:?}", alg.name()));
        assert_eq!(&*identity.consumer.id, "user-1");
        assert_eq!(identity.claim("email"), Some("u1@example.com"));
        let fields = String::from_utf8(identity.upstream_fields.to_vec()).unwrap();
        assert!(fields.contains("X-Consumer-Id: user-1\r\n"), "{fields}");
        assert!(
            fields.contains("X-User-Email: u1@example.com\r\n"),
            "{fields}"
        );
        let mut fresh = Setup::new(&jwks, CredentialIndex::default());
        assert_eq!(
            fresh.bearer(&tampered(&token)).unwrap_err(),
            Reason::InvalidCredential,
            "{}",
            alg.name()
        );
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    // An RS256 public key published as the issuer's key; the attacker signs HS256 with the
    // key's public bytes as the HMAC secret.
    let rsa = key_for(Algorithm::RS256);
    let jwk = rsa.jwk(Algorithm::RS256, "k1");
    let mut setup = Setup::new(&format!("{{\"keys\":[{jwk}]}}"), CredentialIndex::default());
    let forged = SigningKey::Hmac(jwk.clone().into_bytes())
        .mint(Algorithm::HS256, Some("k1"), &claims(json!({})))
        .unwrap();
    assert_eq!(
        setup.bearer(&forged).unwrap_err(),
        Reason::InvalidCredential
    );
    // An RSA key without `alg` still cannot verify ES256, nor RS256 when it says PS256.
    let es = key_for(Algorithm::ES256)
        .mint(Algorithm::ES256, Some("k1"), &claims(json!({})))
        .unwrap();
    assert_eq!(setup.bearer(&es).unwrap_err(), Reason::InvalidCredential);
    let ps = rsa
        .mint(Algorithm::PS256, Some("k1"), &claims(json!({})))
        .unwrap();
    assert_eq!(
        setup.bearer(&ps).unwrap_err(),
        Reason::InvalidCredential,
        "key pinned to RS256"
    );
}

#[test]
fn refusals_name_their_reason() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let now = unix_now();
    let cases = [
        (json!({"exp": now - 31}), Reason::Expired),
        (json!({"nbf": now + 120}), Reason::NotYetValid),
        (json!({"iat": now + 120}), Reason::NotYetValid),
        (json!({"aud": ["billing", "x"]}), Reason::WrongAudience),
        (
            json!({"iss": "https://evil.example"}),
            Reason::UnknownIssuer,
        ),
        (
            json!({"iss": "https://other.example"}),
            Reason::UnknownIssuer,
        ),
        (json!({"exp": null}), Reason::InvalidCredential),
        (json!({"sub": null}), Reason::InvalidCredential),
    ];
    for (extra, reason) in cases {
        let mut setup = Setup::new(&jwks, CredentialIndex::default());
        let token = key
            .mint(Algorithm::ES256, Some("k1"), &claims(extra.clone()))
            .unwrap();
        assert_eq!(setup.bearer(&token).unwrap_err(), reason, "{extra}");
    }
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    let ok_within_leeway = key
        .mint(
            Algorithm::ES256,
            Some("k1"),
            &claims(json!({"exp": now - 5})),
        )
        .unwrap();
    assert!(setup.bearer(&ok_within_leeway).is_ok());
    let unknown_kid = key
        .mint(Algorithm::ES256, Some("k9"), &claims(json!({})))
        .unwrap();
    assert_eq!(setup.bearer(&unknown_kid).unwrap_err(), Reason::UnknownKey);
    let oversized = key
        .mint(
            Algorithm::ES256,
            Some("k1"),
            &claims(json!({"pad": "x".repeat(9000)})),
        )
        .unwrap();
    assert_eq!(
        setup.bearer(&oversized).unwrap_err(),
        Reason::InvalidCredential
    );
    assert_eq!(
        setup.bearer("not-a-token").unwrap_err(),
        Reason::InvalidCredential
    );
    assert!(matches!(
        setup.run("Authorization", "Bearer"),
        Outcome::Refuse(Reason::MissingCredential)
    ));
    assert!(matches!(
        setup.run("X-Other", "x"),
        Outcome::Refuse(Reason::MissingCredential)
    ));
}

#[test]
fn keys_not_loaded_yet_answer_unavailable() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    setup.route.jwt_issuers = Box::new([0, 1]);
    let token = key
        .mint(
            Algorithm::ES256,
            Some("k1"),
            &claims(json!({"iss": "https://other.example"})),
        )
        .unwrap();
    assert_eq!(setup.bearer(&token).unwrap_err(), Reason::KeysUnavailable);
    assert_eq!(Reason::KeysUnavailable.status(), 503);
}

#[test]
fn a_cache_hit_skips_verification_and_a_new_epoch_forces_it() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    let token = key
        .mint(Algorithm::ES256, Some("k1"), &claims(json!({})))
        .unwrap();
    let first = setup.bearer(&token).unwrap();
    let second = setup.bearer(&token).unwrap();
    assert!(Rc::ptr_eq(&first, &second), "served from the cache");
    assert_eq!(setup.cache.stats, cache::CacheStats { hits: 1, misses: 1 });
    // New keys (another key, same kid): the cache empties and the token no longer verifies.
    let other = key_for(Algorithm::ES256);
    let keys = KeySet::parse(
        format!("{{\"keys\":[{}]}}", other.jwk(Algorithm::ES256, "k1")).as_bytes(),
        AlgorithmSet::ANY,
        false,
    )
    .unwrap();
    setup.core.adopt(Arc::new(AuthState {
        epoch: 2,
        credentials: Arc::new(CredentialIndex::default()),
        keys: vec![Some(Arc::new(keys)), None].into(),
    }));
    assert_eq!(setup.bearer(&token).unwrap_err(), Reason::InvalidCredential);
}

fn consumer(id: &str) -> Arc<Consumer> {
    Arc::new(Consumer {
        id: id.into(),
        tenant: "acme".into(),
        groups: Box::new(["staff".into()]),
        metadata: Box::new([]),
    })
}

#[test]
fn api_keys_good_wrong_unknown_expired_revoked() {
    let pepper = api_key::Pepper::new(b"pepper-pepper-pepper").unwrap();
    let mut index = CredentialIndex::default();
    let app = consumer("acme-app");
    let mut keys = Vec::new();
    for (i, (expires, revoked)) in [(None, false), (Some(unix_now() - 1), false), (None, true)]
        .into_iter()
        .enumerate()
    {
        let issued = api_key::issue();
        index
            .add(
                Handle::ApiKey(issued.id.clone()),
                Arc::new(Credential {
                    id: issued.id.as_str().into(),
                    kind: CredentialKind::ApiKey,
                    consumer: app.clone(),
                    secret: Secret::ApiKey(pepper.hash(issued.secret.as_bytes())),
                    scopes: Box::new([format!("scope{i}").into()]),
                    expires,
                    revoked,
                }),
            )
            .unwrap();
        keys.push(issued);
    }
    let mut setup = Setup::new(
        r#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#,
        index,
    );
    match setup.run("X-API-Key", &keys[0].key) {
        Outcome::Pass(identity, Source::ApiKeyHeader) => {
            assert_eq!(&*identity.consumer.id, "acme-app");
            assert_eq!(&*identity.credential_id, keys[0].id);
            assert_eq!(identity.tenant(), "acme");
            assert_eq!(&*identity.scopes[0], "scope0");
        }
        _ => panic!("good key refused"),
    }
    assert!(matches!(
        setup.run("Authorization", &format!("ApiKey {}", keys[0].key)),
        Outcome::Pass(_, Source::Authorization)
    ));
    let wrong = format!("cf_{}_{}", keys[0].id, "x".repeat(32));
    assert!(matches!(
        setup.run("X-API-Key", &wrong),
        Outcome::Refuse(Reason::InvalidCredential)
    ));
    let unknown = format!("cf_nosuchid_{}", keys[0].secret);
    assert!(matches!(
        setup.run("X-API-Key", &unknown),
        Outcome::Refuse(Reason::InvalidCredential)
    ));
    assert!(matches!(
        setup.run("X-API-Key", &keys[1].key),
        Outcome::Refuse(Reason::Expired)
    ));
    assert!(matches!(
        setup.run("X-API-Key", &keys[2].key),
        Outcome::Refuse(Reason::Revoked)
    ));
    assert!(matches!(
        setup.run("X-API-Key", "garbage"),
        Outcome::Refuse(Reason::InvalidCredential)
    ));
}

#[test]
fn basic_good_and_bad_inline() {
    let mut index = CredentialIndex::default();
    let hash = basic::PasswordHash::new(b"open sesame", 10_000);
    index
        .add(
            Handle::Basic("alice".into()),
            Arc::new(Credential {
                id: "basic:alice".into(),
                kind: CredentialKind::Basic,
                consumer: consumer("alice-app"),
                secret: Secret::Basic(hash),
                scopes: Box::new([]),
                expires: None,
                revoked: false,
            }),
        )
        .unwrap();
    let mut setup = Setup::new(
        r#"{"keys":[{"kty":"oct","k":"AyM1SysPpbyDfgZld3umj1qzKObwVMkoqQ-EstJQLr_T-1qS0gZH75aKtMN3Yj0iPS4hcgUuTwjAzZr1Z9CAow"}]}"#,
        index,
    );
    use base64::Engine as _;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    assert!(matches!(
        setup.run(
            "Authorization",
            &format!("Basic {}", b64("alice:open sesame"))
        ),
        Outcome::Pass(..)
    ));
    assert!(matches!(
        setup.run("Authorization", &format!("Basic {}", b64("alice:wrong"))),
        Outcome::Refuse(Reason::InvalidCredential)
    ));
    assert!(matches!(
        setup.run(
            "Authorization",
            &format!("Basic {}", b64("bob:open sesame"))
        ),
        Outcome::Refuse(Reason::InvalidCredential)
    ));
    assert_eq!(setup.core.counters.basic_failures.get(), 2);
    // The success is cached: a second request is a hit.
    let hits = setup.cache.stats.hits;
    assert!(matches!(
        setup.run(
            "Authorization",
            &format!("Basic {}", b64("alice:open sesame"))
        ),
        Outcome::Pass(..)
    ));
    assert_eq!(setup.cache.stats.hits, hits + 1);
}

#[test]
fn query_parameters_are_found() {
    assert_eq!(query_param("a=1&api_key=cf_x&b=2", "api_key"), Some("cf_x"));
    assert_eq!(query_param("api_keyx=1", "api_key"), None);
}

/// A small deterministic generator for the mutation tests.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn mutate(rng: &mut XorShift, input: &[u8]) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCxyz019-_.=+/ {}\":,[]\\\x00\xff";
    let mut out = input.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(4) {
            0 if !out.is_empty() => {
                let at = rng.below(out.len());
                out[at] = ALPHABET[rng.below(ALPHABET.len())];
            }
            1 if !out.is_empty() => {
                let at = rng.below(out.len());
                out.truncate(at);
            }
            2 => {
                let at = rng.below(out.len() + 1);
                out.insert(at, ALPHABET[rng.below(ALPHABET.len())]);
            }
            _ => {
                let at = rng.below(out.len() + 1);
                let piece = URL_SAFE_NO_PAD_ENGINE.encode(
                    [
                        r#"{"alg":"ES256","kid":"k1"}"#,
                        r#"{"iss":1,"exp":"x","aud":[[]]}"#,
                        "[]",
                        "{",
                        r#"{"alg":"none"}"#,
                    ][rng.below(5)],
                );
                out.splice(at..at, piece.bytes());
            }
        }
    }
    out
}

use base64::engine::general_purpose::URL_SAFE_NO_PAD as URL_SAFE_NO_PAD_ENGINE;
use base64::Engine as _;

#[test]
fn mutated_credentials_never_panic_and_never_pass() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let token = key
        .mint(Algorithm::ES256, Some("k1"), &claims(json!({})))
        .unwrap();
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    for _ in 0..20_000 {
        let bad = mutate(&mut rng, token.as_bytes());
        let Ok(text) = std::str::from_utf8(&bad) else {
            continue;
        };
        if text == token {
            continue;
        }
        for (name, prefix) in [
            ("Authorization", "Bearer "),
            ("Authorization", "Basic "),
            ("X-API-Key", ""),
        ] {
            match setup.run(name, &format!("{prefix}{text}")) {
                Outcome::Pass(identity, _) => {
                    // Only base64url re-encodings of the same bytes may verify.
                    assert_eq!(&*identity.consumer.id, "user-1", "{text}");
                }
                Outcome::Refuse(_) | Outcome::Wait(_) => {}
            }
        }
    }
}

#[test]
fn mutated_key_sets_never_panic() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!(
        "{{\"keys\":[{}, {}]}}",
        key.jwk(Algorithm::ES256, "k1"),
        RFC_RSA_JWK
    );
    let mut rng = XorShift(0x2545_f491_4f6c_dd1d);
    for _ in 0..5_000 {
        let bad = mutate(&mut rng, jwks.as_bytes());
        let _ = KeySet::parse(&bad, AlgorithmSet::ANY, rng.below(2) == 0);
        let _ = api_key::parse(&bad);
        let _ = basic::decode(&bad, &mut Vec::new());
    }
}

#[test]
fn scopes_come_from_the_configured_claim() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let token = key
        .mint(
            Algorithm::ES256,
            Some("k1"),
            &claims(json!({"scope": "a b", "scp": ["c"], "permissions": ["p:read", "p:write"]})),
        )
        .unwrap();
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    let scopes = |id: &Identity| id.scopes.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(scopes(&setup.bearer(&token).unwrap()), ["a", "b", "c"]);
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    setup.config.issuers[0].scopes_claim = Some("permissions".into());
    assert_eq!(
        scopes(&setup.bearer(&token).unwrap()),
        ["p:read", "p:write"]
    );
}

#[test]
fn nested_claims_are_kept_by_dotted_path() {
    let key = key_for(Algorithm::ES256);
    let jwks = format!("{{\"keys\":[{}]}}", key.jwk(Algorithm::ES256, "k1"));
    let token = key
        .mint(
            Algorithm::ES256,
            Some("k1"),
            &claims(json!({"org": {"id": "acme", "meta": {"tier": 1}, "roles": ["a"]}})),
        )
        .unwrap();
    let mut setup = Setup::new(&jwks, CredentialIndex::default());
    let identity = setup.bearer(&token).unwrap();
    assert_eq!(identity.claim("org.id"), Some("acme"));
    assert_eq!(identity.claim("org.meta.tier"), Some("1"));
    assert_eq!(identity.claim("org.roles"), None, "arrays are not scalars");
    assert_eq!(identity.claim("org"), None);
}
