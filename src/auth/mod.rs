//! Authentication (DESIGN §2 phase 5): which credential a request presents, whether it is
//! genuine, and the [`Identity`] that later phases read and the upstream receives.
//!
//! One file per method — [`api_key`], [`jwt`] with [`keys`] and [`jwks`], [`basic`], [`mtls`] —
//! plus the credential [`index`] (consumers and credentials, updated incrementally), the
//! per-core verified-credential [`cache`], and the control-side [`service`] that publishes new
//! keys and credentials to every core. The request path calls [`authenticate`] once per request
//! on a protected route; it runs on the core, without locks, from the core's current
//! [`AuthState`].

pub mod api_key;
pub mod basic;
pub mod cache;
pub mod index;
pub mod jwks;
pub mod jwt;
pub mod keygen;
pub mod keys;
pub mod mtls;
pub mod service;

use crate::http::headers::push_field_escaped;
use crate::tls::certificate::ClientIdentity;
use cache::{cache_key, Cached, VerifiedCache};
use crossbeam_channel::Sender;
use index::{Consumer, Credential, CredentialIndex};
use jwks::KeySet;
use keys::AlgorithmSet;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why a request was not authenticated: the reason code in the problem body (and, later, in
/// the access log and metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    MissingCredential,
    InvalidCredential,
    Expired,
    NotYetValid,
    WrongAudience,
    UnknownIssuer,
    UnknownKey,
    Revoked,
    /// The issuer's keys have not been loaded yet (503).
    KeysUnavailable,
    /// Too many password checks queued (503).
    Busy,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::MissingCredential => "missing_credential",
            Reason::InvalidCredential => "invalid_credential",
            Reason::Expired => "expired",
            Reason::NotYetValid => "not_yet_valid",
            Reason::WrongAudience => "wrong_audience",
            Reason::UnknownIssuer => "unknown_issuer",
            Reason::UnknownKey => "unknown_key",
            Reason::Revoked => "revoked",
            Reason::KeysUnavailable => "keys_unavailable",
            Reason::Busy => "busy",
        }
    }

    /// 401, or 503 when the gateway (not the credential) is the problem.
    pub fn status(self) -> u16 {
        match self {
            Reason::KeysUnavailable | Reason::Busy => 503,
            _ => 401,
        }
    }
}

/// How the request proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ApiKey,
    Jwt,
    Basic,
    Mtls,
}

impl Method {
    pub fn name(self) -> &'static str {
        match self {
            Method::ApiKey => "api_key",
            Method::Jwt => "jwt",
            Method::Basic => "basic",
            Method::Mtls => "mtls",
        }
    }
}

/// Who the request is, as the authorization, limit and log phases read it.
#[derive(Debug)]
pub struct Identity {
    pub method: Method,
    pub consumer: Arc<Consumer>,
    pub credential_id: Box<str>,
    pub scopes: Box<[Box<str>]>,
    /// Index of the JWT issuer (into [`AuthConfig::issuers`]).
    pub issuer: Option<usize>,
    /// Scalar claims of a JWT as text, nested objects flattened with dots (`org.id`).
    pub claims: Box<[(Box<str>, Box<str>)]>,
    /// The identity's request fields for the upstream (`X-Consumer-Id`, `X-Credential-Id`,
    /// mapped claims), formatted once when the identity is made.
    pub upstream_fields: Box<[u8]>,
}

impl Identity {
    pub fn tenant(&self) -> &str {
        &self.consumer.tenant
    }

    /// A claim's text, when the token had it as a scalar.
    pub fn claim(&self, name: &str) -> Option<&str> {
        self.claims
            .iter()
            .find(|(n, _)| &**n == name)
            .map(|(_, v)| &**v)
    }

    fn new(
        method: Method,
        consumer: Arc<Consumer>,
        credential_id: &str,
        scopes: Box<[Box<str>]>,
        issuer: Option<&Issuer>,
        issuer_index: Option<usize>,
        claims: Box<[(Box<str>, Box<str>)]>,
    ) -> Identity {
        let mut fields = Vec::with_capacity(64);
        push_field_escaped(&mut fields, b"X-Consumer-Id", consumer.id.as_bytes());
        push_field_escaped(&mut fields, b"X-Credential-Id", credential_id.as_bytes());
        if let Some(issuer) = issuer {
            for (claim, header) in issuer.claim_headers.iter() {
                if let Some((_, value)) = claims.iter().find(|(n, _)| n == claim) {
                    push_field_escaped(&mut fields, header.as_bytes(), value.as_bytes());
                }
            }
        }
        Identity {
            method,
            consumer,
            credential_id: credential_id.into(),
            scopes,
            issuer: issuer_index,
            claims,
            upstream_fields: fields.into(),
        }
    }
}

/// A JWT issuer as compiled from `[[issuers]]` (its keys live in [`AuthState`]).
#[derive(Debug, Clone)]
pub struct Issuer {
    pub name: Box<str>,
    /// The required `iss`.
    pub issuer: Box<str>,
    pub audiences: Box<[Box<str>]>,
    pub algorithms: AlgorithmSet,
    /// Seconds of clock skew allowed on `exp`, `nbf`, `iat`.
    pub leeway: i64,
    pub consumer_claim: Box<str>,
    pub required_claims: Box<[Box<str>]>,
    /// `(claim, header)`: claim values sent upstream as request fields.
    pub claim_headers: Box<[(Box<str>, Box<str>)]>,
    /// Refuse tokens whose consumer claim names no configured consumer.
    pub require_consumer: bool,
    /// The claim scopes are read from; `None`: `scope` (space-separated) and `scp` (array).
    pub scopes_claim: Option<Box<str>>,
    /// Keys come from a URL (refetched on an unknown `kid`).
    pub remote: bool,
    pub refetch_cooldown: Duration,
}

/// Process-wide authentication settings (`[auth]` and `[[issuers]]`), part of the snapshot.
#[derive(Debug)]
pub struct AuthConfig {
    /// The API key request field, lower case.
    pub api_key_header: Box<[u8]>,
    pub max_token_bytes: usize,
    pub basic_cache_ttl: i64,
    pub issuers: Vec<Issuer>,
    pub pepper: Option<Arc<api_key::Pepper>>,
    /// Request fields the gateway sets from the identity: removed from every client request,
    /// lower case.
    pub identity_fields: Vec<Box<[u8]>>,
    /// How long a request with an unknown `kid` waits for the refetch.
    pub jwks_wait: Duration,
}

/// What one route requires (`auth = [...]`); `None` on the route means public.
#[derive(Debug, Clone)]
pub struct RouteAuth {
    pub api_key: bool,
    pub basic: bool,
    pub mtls: bool,
    /// Issuer indices accepted for `jwt:<name>`.
    pub jwt_issuers: Box<[usize]>,
    /// Query parameter an API key may arrive in (removed before forwarding).
    pub api_key_query: Option<Box<str>>,
    pub forward_credential: bool,
    /// Index of the per-core cache (one per API).
    pub cache: usize,
    /// `WWW-Authenticate` lines for a request without a credential, and for a refused one.
    pub challenge_missing: Box<[u8]>,
    pub challenge_invalid: Box<[u8]>,
}

impl RouteAuth {
    fn accepts_issuer(&self, issuer: Option<usize>) -> bool {
        issuer.is_some_and(|i| self.jwt_issuers.contains(&i))
    }

    /// Builds the challenges from the accepted methods.
    pub fn challenges(&mut self, realm: &str) {
        let line = |out: &mut String, scheme: &str, extra: &str| {
            out.push_str("WWW-Authenticate: ");
            out.push_str(scheme);
            out.push_str(" realm=\"");
            out.push_str(realm);
            out.push('"');
            out.push_str(extra);
            out.push_str("\r\n");
        };
        let mut missing = String::new();
        let mut invalid = String::new();
        if !self.jwt_issuers.is_empty() {
            line(&mut missing, "Bearer", "");
            line(&mut invalid, "Bearer", ", error=\"invalid_token\"");
        }
        if self.api_key {
            line(&mut missing, "ApiKey", "");
            line(&mut invalid, "ApiKey", "");
        }
        if self.basic {
            line(&mut missing, "Basic", ", charset=\"UTF-8\"");
            line(&mut invalid, "Basic", ", charset=\"UTF-8\"");
        }
        if self.mtls {
            line(&mut missing, "Mutual", "");
            line(&mut invalid, "Mutual", "");
        }
        self.challenge_missing = missing.into_bytes().into();
        self.challenge_invalid = invalid.into_bytes().into();
    }
}

/// The changing half of authentication: credentials and issuer keys. Replaced whole (and
/// shared read-only by the cores) whenever either changes; `epoch` moves with every change.
#[derive(Default)]
pub struct AuthState {
    pub epoch: u64,
    pub credentials: Arc<CredentialIndex>,
    /// Per issuer (same order as [`AuthConfig::issuers`]): its keys, `None` until loaded.
    pub keys: Box<[Option<Arc<KeySet>>]>,
}

impl std::fmt::Debug for AuthState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthState")
            .field("epoch", &self.epoch)
            .finish_non_exhaustive()
    }
}

/// A request to refetch an issuer's JWKS (from a core, after an unknown `kid`).
#[derive(Debug, Clone)]
pub struct Refetch {
    pub issuer: Box<str>,
}

/// The cores' handles on the control side's authentication helpers.
#[derive(Clone)]
pub struct AuthLinks {
    pub refetch: Sender<Refetch>,
    pub checker: basic::Checker,
}

/// Authentication counters of one core.
#[derive(Default, Debug)]
pub struct AuthCounters {
    pub authenticated: Cell<u64>,
    pub refused: Cell<u64>,
    pub basic_failures: Cell<u64>,
    pub refetch_requests: Cell<u64>,
}

fn bump(c: &Cell<u64>) {
    c.set(c.get() + 1);
}

/// One core's authentication state.
pub struct CoreAuth {
    state: RefCell<Arc<AuthState>>,
    scratch: RefCell<jwt::Scratch>,
    links: Option<AuthLinks>,
    /// Per issuer index: when this core last asked for a refetch.
    refetched: RefCell<HashMap<usize, Instant>>,
    /// Password checks in flight, by cache key.
    pending: RefCell<HashMap<cache::CacheKey, Arc<basic::Check>>>,
    pub counters: AuthCounters,
}

/// What the request path must do after authentication.
pub enum Outcome {
    /// Go on with this identity.
    Pass(Rc<Identity>, Source),
    /// Refuse with this reason.
    Refuse(Reason),
    /// Wait (serving other connections) and then authenticate again.
    Wait(Wait),
}

/// Where the accepted credential came from (what to strip before forwarding).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    ApiKeyHeader,
    Authorization,
    Query,
    Certificate,
}

/// What a waiting request waits for.
pub enum Wait {
    /// The issuer's keys to change (a refetch was asked for) after `epoch`.
    Keys { epoch: u64 },
    /// A password check.
    Password(Arc<basic::Check>),
}

impl Wait {
    /// Whether the thing waited for has happened.
    pub fn ready(&self, auth: &CoreAuth) -> bool {
        match self {
            Wait::Keys { epoch } => auth.epoch() != *epoch,
            Wait::Password(check) => check.result().is_some(),
        }
    }
}

/// What the request presents, borrowed from the parsed head and the connection.
pub struct Presented<'r> {
    pub headers: &'r [httparse::Header<'r>],
    pub query: Option<&'r str>,
    pub certificate: Option<&'r ClientIdentity>,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Password checks a core remembers before it forgets the finished ones nobody collected.
const MAX_PENDING_CHECKS: usize = 512;

/// How long a refused Basic pair is answered from the cache.
const BASIC_FAILURE_TTL: i64 = 5;

impl CoreAuth {
    pub fn new(state: Arc<AuthState>, links: Option<AuthLinks>) -> CoreAuth {
        CoreAuth {
            state: RefCell::new(state),
            scratch: RefCell::new(jwt::Scratch::default()),
            links,
            refetched: RefCell::new(HashMap::new()),
            pending: RefCell::new(HashMap::new()),
            counters: AuthCounters::default(),
        }
    }

    /// Makes `state` current (new keys or credentials).
    /// Makes `state` current and returns the one it replaces, so the caller can acknowledge
    /// before dropping it (the last holder of an old index frees the shards it no longer shares).
    pub fn adopt(&self, state: Arc<AuthState>) -> Arc<AuthState> {
        std::mem::replace(&mut *self.state.borrow_mut(), state)
    }

    pub fn epoch(&self) -> u64 {
        self.state.borrow().epoch
    }

    /// The current credentials and keys (borrowed for the length of one request's phase).
    pub fn state(&self) -> std::cell::Ref<'_, AuthState> {
        std::cell::Ref::map(self.state.borrow(), |s| &**s)
    }
}

/// Authenticates one request on a protected route.
pub fn authenticate(
    auth: &CoreAuth,
    config: &AuthConfig,
    route: &RouteAuth,
    cache: &mut VerifiedCache,
    request: &Presented<'_>,
) -> Outcome {
    let state = auth.state.borrow();
    cache.sync_epoch(state.epoch);
    let now = unix_now();
    let ctx = Ctx {
        auth,
        config,
        route,
        state: &state,
        now,
    };
    let outcome = ctx.run(cache, request);
    match &outcome {
        Outcome::Pass(..) => bump(&auth.counters.authenticated),
        Outcome::Refuse(_) => bump(&auth.counters.refused),
        Outcome::Wait(_) => {}
    }
    outcome
}

struct Ctx<'a> {
    auth: &'a CoreAuth,
    config: &'a AuthConfig,
    route: &'a RouteAuth,
    state: &'a AuthState,
    now: i64,
}

/// Splits `Scheme value` (scheme compared without case).
fn scheme<'v>(value: &'v [u8], name: &[u8]) -> Option<&'v [u8]> {
    if value.len() > name.len()
        && value[..name.len()].eq_ignore_ascii_case(name)
        && value[name.len()] == b' '
    {
        let rest = &value[name.len() + 1..];
        let start = rest.iter().position(|&b| b != b' ')?;
        let end = rest.iter().rposition(|&b| b != b' ')? + 1;
        return Some(&rest[start..end]);
    }
    None
}

/// The value of query parameter `name` (not percent-decoded: keys need no escaping).
pub fn query_param<'q>(query: &'q str, name: &str) -> Option<&'q str> {
    query.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == name).then_some(v)
    })
}

impl Ctx<'_> {
    fn run(&self, cache: &mut VerifiedCache, request: &Presented<'_>) -> Outcome {
        let route = self.route;
        let mut api_key_header = None;
        let mut authorization = None;
        for h in request.headers {
            let name = h.name.as_bytes();
            if route.api_key && name.eq_ignore_ascii_case(&self.config.api_key_header) {
                api_key_header = Some(h.value);
            } else if name.eq_ignore_ascii_case(b"authorization") {
                authorization = Some(h.value);
            }
        }
        if let Some(key) = api_key_header {
            return self.api_key(cache, key, Source::ApiKeyHeader);
        }
        if let Some(value) = authorization {
            if !route.jwt_issuers.is_empty() {
                if let Some(token) = scheme(value, b"bearer") {
                    return self.bearer(cache, token);
                }
            }
            if route.basic {
                if let Some(pair) = scheme(value, b"basic") {
                    return self.basic(cache, pair);
                }
            }
            if route.api_key {
                if let Some(key) = scheme(value, b"apikey") {
                    return self.api_key(cache, key, Source::Authorization);
                }
            }
        }
        if let (true, Some(param), Some(query)) =
            (route.api_key, &route.api_key_query, request.query)
        {
            if let Some(key) = query_param(query, param) {
                return self.api_key(cache, key.as_bytes(), Source::Query);
            }
        }
        if route.mtls {
            if let Some(cert) = request.certificate {
                return self.certificate(cache, cert);
            }
        }
        Outcome::Refuse(Reason::MissingCredential)
    }

    fn identity_for(&self, credential: &Credential, method: Method) -> Identity {
        Identity::new(
            method,
            credential.consumer.clone(),
            &credential.id,
            credential.scopes.clone(),
            None,
            None,
            Box::new([]),
        )
    }

    /// The credential's own state: revoked or expired credentials are refused.
    fn usable(&self, credential: &Credential) -> Result<(), Reason> {
        if credential.revoked {
            return Err(Reason::Revoked);
        }
        if credential.expires.is_some_and(|e| e <= self.now) {
            return Err(Reason::Expired);
        }
        Ok(())
    }

    fn cached(&self, cache: &mut VerifiedCache, key: &cache::CacheKey) -> Option<Outcome> {
        match cache.get(key, self.now)? {
            Cached::Verified(identity) => {
                if identity.method == Method::Jwt && !self.route.accepts_issuer(identity.issuer) {
                    return Some(Outcome::Refuse(Reason::UnknownIssuer));
                }
                Some(Outcome::Pass(identity, Source::Authorization))
            }
            Cached::Refused(reason) => Some(Outcome::Refuse(reason)),
        }
    }

    fn api_key(&self, cache: &mut VerifiedCache, key: &[u8], source: Source) -> Outcome {
        let digest = cache_key(b"api_key", key);
        if let Some(outcome) = self.cached(cache, &digest) {
            return with_source(outcome, source);
        }
        let (Some(presented), Some(pepper)) = (api_key::parse(key), &self.config.pepper) else {
            return Outcome::Refuse(Reason::InvalidCredential);
        };
        let Some(credential) = self.state.credentials.api_key(presented.id) else {
            // The same HMAC as for a known id, so timing does not tell which ids exist.
            let _ = pepper.matches(presented.secret, &[0; 32]);
            return Outcome::Refuse(Reason::InvalidCredential);
        };
        let index::Secret::ApiKey(stored) = &credential.secret else {
            return Outcome::Refuse(Reason::InvalidCredential);
        };
        if !pepper.matches(presented.secret, stored) {
            return Outcome::Refuse(Reason::InvalidCredential);
        }
        if let Err(reason) = self.usable(credential) {
            return Outcome::Refuse(reason);
        }
        let identity = Rc::new(self.identity_for(credential, Method::ApiKey));
        cache.insert(
            digest,
            Cached::Verified(identity.clone()),
            credential.expires.unwrap_or(i64::MAX),
        );
        Outcome::Pass(identity, source)
    }

    fn certificate(&self, cache: &mut VerifiedCache, cert: &ClientIdentity) -> Outcome {
        let digest = cache_key(b"mtls", cert.fingerprint_sha256.as_bytes());
        if let Some(outcome) = self.cached(cache, &digest) {
            return with_source(outcome, Source::Certificate);
        }
        let Some(credential) = mtls::find(&self.state.credentials, cert) else {
            return Outcome::Refuse(Reason::InvalidCredential);
        };
        if let Err(reason) = self.usable(credential) {
            return Outcome::Refuse(reason);
        }
        let identity = Rc::new(self.identity_for(credential, Method::Mtls));
        cache.insert(
            digest,
            Cached::Verified(identity.clone()),
            credential.expires.unwrap_or(i64::MAX),
        );
        Outcome::Pass(identity, Source::Certificate)
    }

    fn basic(&self, cache: &mut VerifiedCache, value: &[u8]) -> Outcome {
        let digest = cache_key(b"basic", value);
        if let Some(outcome) = self.cached(cache, &digest) {
            return outcome;
        }
        let mut decoded = Vec::new();
        let Some(split) = basic::decode(value, &mut decoded) else {
            return Outcome::Refuse(Reason::InvalidCredential);
        };
        let user = std::str::from_utf8(&decoded[..split]).unwrap_or("");
        let password = &decoded[split + 1..];
        let refuse = |cache: &mut VerifiedCache, reason| {
            bump(&self.auth.counters.basic_failures);
            cache.insert(
                digest,
                Cached::Refused(reason),
                self.now + BASIC_FAILURE_TTL,
            );
            Outcome::Refuse(reason)
        };
        // An unknown user costs the same password check as a known one (against a hash no
        // password matches), so response times do not tell which user names exist.
        let credential = self.state.credentials.basic(user).map(|c| &**c);
        let hash = match credential.map(|c| &c.secret) {
            Some(index::Secret::Basic(hash)) => hash,
            Some(_) => return refuse(cache, Reason::InvalidCredential),
            None => basic::unknown_user_hash(),
        };
        let pending = self.auth.pending.borrow_mut().get(&digest).cloned();
        let check = match pending {
            Some(check) => check,
            None => {
                let Some(links) = &self.auth.links else {
                    // No checker thread (unit tests): check inline.
                    let good = hash.verify(password);
                    decoded.fill(0);
                    return self.basic_result(cache, digest, credential, good);
                };
                let submitted = links.checker.submit(hash, password);
                decoded.fill(0);
                return match submitted {
                    Some(check) => {
                        let mut pending = self.auth.pending.borrow_mut();
                        // Checks whose requests went away are never collected: drop the
                        // finished ones before the map grows.
                        if pending.len() >= MAX_PENDING_CHECKS {
                            pending.retain(|_, check| check.result().is_none());
                        }
                        pending.insert(digest, check.clone());
                        Outcome::Wait(Wait::Password(check))
                    }
                    None => Outcome::Refuse(Reason::Busy),
                };
            }
        };
        decoded.fill(0);
        match check.result() {
            None => Outcome::Wait(Wait::Password(check)),
            Some(good) => {
                self.auth.pending.borrow_mut().remove(&digest);
                self.basic_result(cache, digest, credential, good)
            }
        }
    }

    fn basic_result(
        &self,
        cache: &mut VerifiedCache,
        digest: cache::CacheKey,
        credential: Option<&Credential>,
        good: bool,
    ) -> Outcome {
        let credential = match credential {
            Some(credential) if good => credential,
            _ => {
                bump(&self.auth.counters.basic_failures);
                cache.insert(
                    digest,
                    Cached::Refused(Reason::InvalidCredential),
                    self.now + BASIC_FAILURE_TTL,
                );
                return Outcome::Refuse(Reason::InvalidCredential);
            }
        };
        if let Err(reason) = self.usable(credential) {
            return Outcome::Refuse(reason);
        }
        let identity = Rc::new(self.identity_for(credential, Method::Basic));
        let until =
            (self.now + self.config.basic_cache_ttl).min(credential.expires.unwrap_or(i64::MAX));
        cache.insert(digest, Cached::Verified(identity.clone()), until);
        Outcome::Pass(identity, Source::Authorization)
    }

    fn bearer(&self, cache: &mut VerifiedCache, token: &[u8]) -> Outcome {
        if token.len() > self.config.max_token_bytes {
            return Outcome::Refuse(Reason::InvalidCredential);
        }
        let digest = cache_key(b"jwt", token);
        if let Some(outcome) = self.cached(cache, &digest) {
            return outcome;
        }
        match self.verify_jwt(token) {
            Ok((identity, until)) => {
                let identity = Rc::new(identity);
                cache.insert(digest, Cached::Verified(identity.clone()), until);
                Outcome::Pass(identity, Source::Authorization)
            }
            Err((Reason::UnknownKey, Some(issuer))) => self.refetch(issuer),
            Err((reason, _)) => Outcome::Refuse(reason),
        }
    }

    /// Asks the control side to refetch an issuer's keys, at most once per cooldown per core;
    /// the request then waits for the answer.
    fn refetch(&self, issuer_index: usize) -> Outcome {
        let issuer = &self.config.issuers[issuer_index];
        let Some(links) = &self.auth.links else {
            return Outcome::Refuse(Reason::UnknownKey);
        };
        if !issuer.remote {
            return Outcome::Refuse(Reason::UnknownKey);
        }
        let now = Instant::now();
        let mut asked = self.auth.refetched.borrow_mut();
        if asked
            .get(&issuer_index)
            .is_some_and(|at| now.duration_since(*at) < issuer.refetch_cooldown)
        {
            return Outcome::Refuse(Reason::UnknownKey);
        }
        asked.insert(issuer_index, now);
        bump(&self.auth.counters.refetch_requests);
        let _ = links.refetch.try_send(Refetch {
            issuer: issuer.name.clone(),
        });
        Outcome::Wait(Wait::Keys {
            epoch: self.state.epoch,
        })
    }

    /// Verifies a JWT; on success the identity and until when it may be cached.
    fn verify_jwt(&self, token: &[u8]) -> Result<(Identity, i64), (Reason, Option<usize>)> {
        let invalid = (Reason::InvalidCredential, None);
        let parts = jwt::split(token).ok_or(invalid)?;
        let mut signature = [0u8; 1024];
        let signature_len =
            jwt::decode_signature(parts.signature, &mut signature).ok_or(invalid)?;
        let mut scratch = self.auth.scratch.borrow_mut();
        let header = jwt::read_header(&mut scratch, parts.header).map_err(|r| (r, None))?;
        let config = self.config;
        let state = self.state;
        let now = self.now;
        let route = self.route;
        jwt::with_claims(&mut scratch, parts.payload, |claims| {
            // Pass 1: the issuer, by `iss`, among the route's.
            let iss = claims
                .clone()
                .find(|(name, _)| *name == "iss")
                .and_then(|(_, v)| v.as_str());
            let Some(index) = iss.and_then(|iss| {
                route
                    .jwt_issuers
                    .iter()
                    .copied()
                    .find(|&i| &*config.issuers[i].issuer == iss)
            }) else {
                return Ok(Err((Reason::UnknownIssuer, None)));
            };
            let issuer = &config.issuers[index];
            let Some(keys) = &state.keys[index] else {
                return Ok(Err((Reason::KeysUnavailable, None)));
            };
            let Some(key) = keys.find(header.kid()) else {
                return Ok(Err((Reason::UnknownKey, Some(index))));
            };
            if !key.allows(header.alg)
                || !key.verify(header.alg, parts.signing_input, &signature[..signature_len])
            {
                return Ok(Err(invalid));
            }
            // Pass 2: the claims, now that they are authentic.
            let mut times = jwt::TimeClaims::default();
            let mut audience_ok = issuer.audiences.is_empty();
            let mut required = 0usize;
            let mut subject = String::new();
            let mut has_subject = false;
            let mut scopes: Vec<Box<str>> = Vec::new();
            let mut scalars: Vec<(Box<str>, Box<str>)> = Vec::new();
            let mut text = String::new();
            // Read apart from the capped scalar list, so no claim count hides them.
            let (mut jti, mut sub) = (String::new(), String::new());
            let (mut has_jti, mut has_sub) = (false, false);
            for (name, value) in claims {
                match name {
                    "jti" => has_jti = value.scalar_text(&mut jti),
                    "sub" => has_sub = value.scalar_text(&mut sub),
                    _ => {}
                }
                match name {
                    "exp" => times.exp = value.as_seconds(),
                    "nbf" => times.nbf = value.as_seconds(),
                    "iat" => times.iat = value.as_seconds(),
                    "aud" => {
                        audience_ok |= value
                            .strings()
                            .any(|a| issuer.audiences.iter().any(|want| &**want == a))
                    }
                    _ => {}
                }
                let scope_claim = match &issuer.scopes_claim {
                    Some(claim) => **claim == *name,
                    None => name == "scope" || name == "scp",
                };
                if scope_claim {
                    match value.as_str() {
                        Some(s) => {
                            scopes.extend(s.split(' ').filter(|s| !s.is_empty()).map(Into::into))
                        }
                        None => scopes.extend(value.strings().map(Into::into)),
                    }
                }
                if issuer.required_claims.iter().any(|r| &**r == name) && value.is_present() {
                    required += 1;
                }
                if *issuer.consumer_claim == *name {
                    has_subject = value.scalar_text(&mut subject);
                }
                jwt::collect_scalars(name, value, &mut text, &mut scalars);
            }
            if let Err(reason) = jwt::check_times(&times, issuer, now) {
                return Ok(Err((reason, None)));
            }
            if !audience_ok {
                return Ok(Err((Reason::WrongAudience, None)));
            }
            if required < issuer.required_claims.len() || !has_subject || subject.is_empty() {
                return Ok(Err(invalid));
            }
            let mut lookup = String::new();
            if state.credentials.jwt_revoked(
                &issuer.name,
                has_jti.then_some(jti.as_str()),
                has_sub.then_some(sub.as_str()),
                now,
                &mut lookup,
            ) {
                return Ok(Err((Reason::Revoked, None)));
            }
            let (consumer, credential_id) =
                match state
                    .credentials
                    .jwt_subject(&issuer.name, &subject, &mut lookup)
                {
                    Some(credential) => {
                        if let Err(reason) = self.usable(credential) {
                            return Ok(Err((reason, None)));
                        }
                        scopes.extend(credential.scopes.iter().cloned());
                        (credential.consumer.clone(), credential.id.to_string())
                    }
                    None => {
                        let credential_id = format!("jwt:{}", issuer.name);
                        match state.credentials.consumer(&subject) {
                            Some(consumer) => (consumer.clone(), credential_id),
                            None if issuer.require_consumer => return Ok(Err(invalid)),
                            None => (Arc::new(Consumer::bare(&subject)), credential_id),
                        }
                    }
                };
            let until = times
                .exp
                .map_or(now + 300, |exp| exp.saturating_add(issuer.leeway));
            let identity = Identity::new(
                Method::Jwt,
                consumer,
                &credential_id,
                scopes.into(),
                Some(issuer),
                Some(index),
                scalars.into(),
            );
            Ok(Ok((identity, until)))
        })
        .map_err(|r| (r, None))?
    }
}

fn with_source(outcome: Outcome, source: Source) -> Outcome {
    match outcome {
        Outcome::Pass(identity, _) => Outcome::Pass(identity, source),
        other => other,
    }
}

#[cfg(test)]
mod tests;
