//! The admin API's requests, responses and handlers: authentication by admin token and role,
//! routing under `/v1`, request validation, and each lifecycle action turned into store writes
//! that go through the control plane's change pipeline.

use super::plane::{ChangeError, ControlPlane, PlaneState, ReloadError};
use super::tokens::{self, Need, Role};
use super::views;
use crate::auth::basic::PasswordHash;
use crate::auth::index::{CredentialKind, Handle, SubscriptionState};
use crate::auth::{api_key, mtls, unix_now};
use crate::config::{parse_duration, parse_rfc3339, Config, SubscriptionModeName};
use crate::observe::exposition::Format;
use crate::store::{
    subscription_state_from_name, AuditQuery, ConsumerRecord, CredentialRecord,
    JwtRevocationRecord, RevokedClaim, StoreError, SubscriptionRecord, Write,
};
use ring::rand::SecureRandom as _;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;

/// The OpenAPI document of this API.
pub const OPENAPI: &str = include_str!("../../docs/admin-openapi.json");

/// Largest page a list returns.
const MAX_PAGE: usize = 1000;
const DEFAULT_PAGE: usize = 100;
/// How long a JWT revocation lasts when the request names no `until`.
const DEFAULT_JWT_REVOCATION_SECS: i64 = 24 * 3600;
/// Grace of a rotation when the request names none.
const DEFAULT_GRACE: &str = "1h";
const MIN_PASSWORD_CHARS: usize = 8;

/// One admin request, copied out of the read buffer.
#[derive(Debug, Default)]
pub struct AdminRequest {
    pub method: String,
    pub path: String,
    pub query: String,
    pub authorization: Option<Vec<u8>>,
    pub accept: Option<Vec<u8>>,
    pub keep_alive: bool,
    pub body: Vec<u8>,
    pub peer: Option<SocketAddr>,
}

impl AdminRequest {
    pub fn from_head(head: &crate::http::request::Request<'_>, peer: Option<SocketAddr>) -> Self {
        let (path, query) = head.target.split_once('?').unwrap_or((head.target, ""));
        AdminRequest {
            method: head.method.to_string(),
            path: path.to_string(),
            query: query.to_string(),
            authorization: head
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("authorization"))
                .map(|h| h.value.to_vec()),
            accept: head
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("accept"))
                .map(|h| h.value.to_vec()),
            keep_alive: head.client_keep_alive(),
            body: Vec::new(),
            peer,
        }
    }

    fn query(&self, name: &str) -> Option<String> {
        self.query.split('&').find_map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (k == name).then(|| percent_decode(v))
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match bytes[at] {
            b'%' if at + 2 < bytes.len() => match (hex(bytes[at + 1]), hex(bytes[at + 2])) {
                (Some(h), Some(l)) => {
                    out.push((h * 16 + l) as u8);
                    at += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        at += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One admin response.
#[derive(Debug)]
pub struct AdminResponse {
    pub status: u16,
    pub content_type: &'static str,
    pub body: Vec<u8>,
    pub extra: Vec<(&'static str, String)>,
}

fn status_text(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        409 => "Conflict",
        411 => "Length Required",
        413 => "Content Too Large",
        414 => "URI Too Long",
        417 => "Expectation Failed",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl AdminResponse {
    fn json(status: u16, body: &Value) -> AdminResponse {
        AdminResponse {
            status,
            content_type: "application/json",
            body: serde_json::to_vec(body).unwrap_or_default(),
            extra: Vec::new(),
        }
    }

    /// A problem+json answer with a reason code.
    pub fn problem(status: u16, reason: &str, detail: &str) -> AdminResponse {
        AdminError::Problem {
            status,
            reason: reason.to_string(),
            detail: detail.to_string(),
        }
        .response()
    }

    pub fn busy() -> AdminResponse {
        AdminResponse::problem(503, "busy", "too many admin connections")
    }

    /// The response on the wire.
    pub fn bytes(&self, keep_alive: bool) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nCache-Control: no-store\r\n",
            self.status,
            status_text(self.status),
            self.content_type,
            self.body.len()
        );
        for (name, value) in &self.extra {
            out.push_str(&format!("{name}: {value}\r\n"));
        }
        out.push_str(if keep_alive {
            "Connection: keep-alive\r\n\r\n"
        } else {
            "Connection: close\r\n\r\n"
        });
        let mut bytes = out.into_bytes();
        bytes.extend_from_slice(&self.body);
        bytes
    }
}

/// Why an admin request failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("missing or unknown admin token")]
    Unauthorized,
    #[error("the {role} role may not {action}")]
    Forbidden { role: &'static str, action: String },
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(&'static str),
    #[error("invalid request")]
    Invalid(Vec<String>),
    #[error("{0}")]
    Conflict(String),
    #[error("{0} is declared in the config file and read-only here")]
    ReadOnly(String),
    #[error("{0}")]
    InvalidTransition(String),
    #[error("{0}")]
    NotRotatable(String),
    #[error(transparent)]
    Change(#[from] ChangeError),
    #[error("invalid configuration")]
    InvalidConfig(Vec<String>),
    #[error("{detail}")]
    Problem {
        status: u16,
        reason: String,
        detail: String,
    },
}

impl From<StoreError> for AdminError {
    fn from(error: StoreError) -> Self {
        AdminError::Change(ChangeError::Store(error))
    }
}

fn invalid(message: impl Into<String>) -> AdminError {
    AdminError::Invalid(vec![message.into()])
}

impl AdminError {
    fn parts(&self) -> (u16, &str) {
        match self {
            AdminError::Unauthorized => (401, "unauthorized"),
            AdminError::Forbidden { .. } => (403, "forbidden"),
            AdminError::NotFound(_) => (404, "not_found"),
            AdminError::MethodNotAllowed(_) => (405, "method_not_allowed"),
            AdminError::Invalid(_) => (400, "invalid_request"),
            AdminError::Conflict(_) => (409, "conflict"),
            AdminError::ReadOnly(_) => (409, "read_only"),
            AdminError::InvalidTransition(_) => (409, "invalid_transition"),
            AdminError::NotRotatable(_) => (409, "not_rotatable"),
            AdminError::Change(ChangeError::Store(_)) => (500, "store_error"),
            AdminError::Change(ChangeError::PropagationTimeout { .. }) => {
                (503, "propagation_timeout")
            }
            AdminError::Change(ChangeError::ShuttingDown) => (503, "shutting_down"),
            AdminError::InvalidConfig(_) => (400, "invalid_config"),
            AdminError::Problem { status, reason, .. } => (*status, reason),
        }
    }

    fn response(&self) -> AdminResponse {
        let (status, reason) = self.parts();
        let slug = reason.replace('_', "-");
        let mut body = json!({
            "type": format!("urn:credentialflow:problem:{slug}"),
            "title": status_text(status),
            "status": status,
            "reason": reason,
            "detail": self.to_string(),
        });
        match self {
            AdminError::Invalid(errors) | AdminError::InvalidConfig(errors) => {
                body["errors"] = json!(errors);
            }
            AdminError::Change(ChangeError::PropagationTimeout { .. }) => {
                body["stored"] = json!(true);
            }
            AdminError::Change(ChangeError::Store(error)) => {
                // The detail stays generic; the cause goes to the log.
                tracing::error!(%error, "admin: store failure");
                body["detail"] = json!("the store failed; see the gateway log");
            }
            _ => {}
        }
        let mut response = AdminResponse::json(status, &body);
        response.content_type = "application/problem+json";
        match self {
            AdminError::Unauthorized => response.extra.push((
                "WWW-Authenticate",
                "Bearer realm=\"credentialflow-admin\"".into(),
            )),
            AdminError::MethodNotAllowed(allow) => {
                response.extra.push(("Allow", allow.to_string()))
            }
            _ => {}
        }
        response
    }
}

type Answer = Result<(u16, Value), AdminError>;

/// Who is asking.
struct Caller {
    name: String,
    role: Role,
}

impl Caller {
    fn need(&self, need: Need, action: &str) -> Result<(), AdminError> {
        if self.role.allows(need) {
            Ok(())
        } else {
            Err(AdminError::Forbidden {
                role: self.role.name(),
                action: action.to_string(),
            })
        }
    }
}

/// The admin API.
pub struct Api {
    plane: Arc<ControlPlane>,
}

fn valid_id(text: &str) -> bool {
    (1..=128).contains(&text.len())
        && text
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._:@-".contains(&b))
}

fn random_id(prefix: &str) -> String {
    let mut bytes = [0u8; 8];
    ring::rand::SystemRandom::new()
        .fill(&mut bytes)
        .expect("the system random source works");
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    format!("{prefix}{hex}")
}

fn body<'d, T: Deserialize<'d>>(request: &'d AdminRequest) -> Result<T, AdminError> {
    let bytes: &[u8] = if request.body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        &request.body
    };
    serde_json::from_slice(bytes).map_err(|e| invalid(format!("body: {e}")))
}

fn page_size(request: &AdminRequest) -> Result<usize, AdminError> {
    match request.query("limit") {
        None => Ok(DEFAULT_PAGE),
        Some(text) => match text.parse::<usize>() {
            Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
            _ => Err(invalid(format!("limit must be 1 to {MAX_PAGE}"))),
        },
    }
}

/// The RFC 3339 time of field `name`, when given; it must be after `now`.
fn future_time(name: &str, text: Option<&str>, now: i64) -> Result<Option<i64>, AdminError> {
    let Some(text) = text else { return Ok(None) };
    let at = parse_rfc3339(text)
        .ok_or_else(|| invalid(format!("{name} `{text}` must be an RFC 3339 time")))?;
    if at <= now {
        return Err(invalid(format!("{name} must be in the future")));
    }
    Ok(Some(at))
}

fn scopes(list: Vec<String>) -> Result<Vec<String>, AdminError> {
    for scope in &list {
        if scope.is_empty() || scope.len() > 128 || scope.contains(char::is_whitespace) {
            return Err(invalid(format!(
                "scope `{scope}` must be 1-128 characters without spaces"
            )));
        }
    }
    Ok(list)
}

fn with_propagation(mut view: Value, propagation: crate::auth::service::Propagation) -> Value {
    view["propagated_us"] = json!(propagation.elapsed.as_micros() as u64);
    view
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewConsumer {
    id: String,
    tenant: Option<String>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    metadata: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
enum NewCredential {
    ApiKey {
        #[serde(default)]
        scopes: Vec<String>,
        expires_at: Option<String>,
    },
    Jwt {
        issuer: String,
        subject: String,
        #[serde(default)]
        scopes: Vec<String>,
        expires_at: Option<String>,
    },
    Mtls {
        fingerprint: String,
        #[serde(default)]
        scopes: Vec<String>,
        expires_at: Option<String>,
    },
    Basic {
        username: String,
        password: String,
        #[serde(default)]
        scopes: Vec<String>,
        expires_at: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Empty {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewJwtRevocation {
    issuer: String,
    jti: Option<String>,
    sub: Option<String>,
    until: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewSubscription {
    consumer: String,
    api: String,
    plan: Option<String>,
}

/// The paths this API serves, with their methods (for 405 answers).
fn allowed_methods(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        ["v1", "consumers"] => "GET, POST",
        ["v1", "consumers", _] => "GET, DELETE",
        ["v1", "consumers", _, "credentials"] => "POST",
        ["v1", "credentials", _] => "GET",
        ["v1", "credentials", _, "rotate" | "revoke"] => "POST",
        ["v1", "jwt", "revocations"] => "POST",
        ["v1", "subscriptions"] => "GET, POST",
        ["v1", "subscriptions", _] => "GET",
        ["v1", "subscriptions", _, "approve" | "reject" | "revoke"] => "POST",
        ["v1", "audit"] | ["v1", "status"] | ["v1", "openapi.json"] => "GET",
        ["v1", "reload"] => "POST",
        ["metrics"] => "GET",
        _ => return None,
    })
}

impl Api {
    pub fn new(plane: Arc<ControlPlane>) -> Api {
        Api { plane }
    }

    pub fn max_body_bytes(&self) -> usize {
        self.plane
            .settings()
            .map_or(64 * 1024, |s| s.max_body_bytes)
    }

    /// Answers one request (never panics on input; every failure is a problem response).
    pub fn handle(&self, request: &AdminRequest) -> AdminResponse {
        // Everything logged while the request is handled (store, propagation, reload) carries
        // the request's method and path.
        let span = tracing::info_span!("admin", method = %request.method, path = %request.path);
        let _entered = span.enter();
        let started = std::time::Instant::now();
        let caller = self.authenticate(request);
        let actor = caller.as_ref().map_or("-", |c| c.name.as_str()).to_string();
        let result = match caller {
            Some(caller) => self.route(&caller, request),
            None => Err(AdminError::Unauthorized),
        };
        let response = match result {
            Ok((200, _)) if request.path == "/v1/openapi.json" => AdminResponse {
                status: 200,
                content_type: "application/json",
                body: OPENAPI.as_bytes().to_vec(),
                extra: Vec::new(),
            },
            Ok((200, _)) if request.path == "/metrics" => {
                let format = Format::from_accept(request.accept.as_deref());
                AdminResponse {
                    status: 200,
                    content_type: format.content_type(),
                    body: self.plane.scrape(format).into_bytes(),
                    extra: Vec::new(),
                }
            }
            Ok((status, body)) => AdminResponse::json(status, &body),
            Err(error) => error.response(),
        };
        tracing::info!(
            method = %request.method,
            path = %request.path,
            status = response.status,
            actor = %actor,
            peer = ?request.peer,
            duration_us = started.elapsed().as_micros() as u64,
            "admin request"
        );
        response
    }

    fn authenticate(&self, request: &AdminRequest) -> Option<Caller> {
        let value = request.authorization.as_deref()?;
        let token = value
            .strip_prefix(b"Bearer ")
            .or_else(|| value.strip_prefix(b"bearer "))?;
        let settings = self.plane.settings()?;
        let at = tokens::find(token, settings.tokens.iter().map(|t| &t.hash))?;
        let token = &settings.tokens[at];
        Some(Caller {
            name: token.name.clone(),
            role: token.role,
        })
    }

    fn route(&self, caller: &Caller, request: &AdminRequest) -> Answer {
        let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
        let method = request.method.as_str();
        match (method, segments.as_slice()) {
            ("POST", ["v1", "consumers"]) => {
                caller.need(Need::Write, "create consumers")?;
                self.create_consumer(caller, request)
            }
            ("GET", ["v1", "consumers"]) => self.list_consumers(request),
            ("GET", ["v1", "consumers", id]) => self.get_consumer(id),
            ("DELETE", ["v1", "consumers", id]) => {
                caller.need(Need::Write, "delete consumers")?;
                self.delete_consumer(caller, id)
            }
            ("POST", ["v1", "consumers", id, "credentials"]) => {
                caller.need(Need::Write, "issue credentials")?;
                self.create_credential(caller, id, request)
            }
            ("GET", ["v1", "credentials", id]) => self.get_credential(id),
            ("POST", ["v1", "credentials", id, "rotate"]) => {
                caller.need(Need::Write, "rotate credentials")?;
                self.rotate_credential(caller, id, request)
            }
            ("POST", ["v1", "credentials", id, "revoke"]) => {
                caller.need(Need::Write, "revoke credentials")?;
                body::<Empty>(request)?;
                self.revoke_credential(caller, id)
            }
            ("POST", ["v1", "jwt", "revocations"]) => {
                caller.need(Need::Write, "revoke tokens")?;
                self.revoke_jwt(caller, request)
            }
            ("POST", ["v1", "subscriptions"]) => {
                caller.need(Need::Write, "create subscriptions")?;
                self.create_subscription(caller, request)
            }
            ("GET", ["v1", "subscriptions"]) => self.list_subscriptions(request),
            ("GET", ["v1", "subscriptions", id]) => self.get_subscription(id),
            ("POST", ["v1", "subscriptions", id, action @ ("approve" | "reject" | "revoke")]) => {
                let need = if *action == "revoke" {
                    Need::Write
                } else {
                    Need::Approve
                };
                caller.need(need, &format!("{action} subscriptions"))?;
                body::<Empty>(request)?;
                self.transition_subscription(caller, id, action)
            }
            ("GET", ["v1", "audit"]) => self.audit(request),
            ("GET", ["v1", "status"]) => self.status(),
            ("POST", ["v1", "reload"]) => {
                caller.need(Need::Write, "reload the configuration")?;
                body::<Empty>(request)?;
                self.reload()
            }
            ("GET", ["v1", "openapi.json"]) => Ok((200, Value::Null)),
            ("GET", ["metrics"]) => Ok((200, Value::Null)),
            (_, segments) => match allowed_methods(segments) {
                Some(allow) => Err(AdminError::MethodNotAllowed(allow)),
                None => Err(AdminError::NotFound(format!("path {}", request.path))),
            },
        }
    }

    /// Commits `writes` through the change pipeline with their audit entry (`action`, `object`).
    fn commit(
        &self,
        state: &mut PlaneState,
        caller: &Caller,
        (action, object): (&str, String),
        before: Option<Value>,
        after: Value,
        writes: Vec<Write>,
    ) -> Result<crate::auth::service::Propagation, AdminError> {
        let entry = ControlPlane::entry(&caller.name, action, object, before, Some(after));
        Ok(self.plane.change(state, writes, entry)?)
    }

    fn store(state: &PlaneState) -> Result<&dyn crate::store::Store, AdminError> {
        state
            .store
            .as_deref()
            .ok_or_else(|| StoreError::Engine("no store is open".into()).into())
    }

    // ---- consumers ----

    fn create_consumer(&self, caller: &Caller, request: &AdminRequest) -> Answer {
        let new: NewConsumer = body(request)?;
        let mut errors = Vec::new();
        if !valid_id(&new.id) {
            errors.push("id must be 1-128 characters of letters, digits and ._:@-".to_string());
        }
        let tenant = new
            .tenant
            .unwrap_or_else(|| crate::auth::index::DEFAULT_TENANT.into());
        if !valid_id(&tenant) {
            errors.push("tenant must be 1-128 characters of letters, digits and ._:@-".into());
        }
        if new.groups.iter().any(|g| g.is_empty() || g.len() > 128) {
            errors.push("groups must be 1-128 characters each".into());
        }
        if new.metadata.keys().any(|k| k.is_empty() || k.len() > 128) {
            errors.push("metadata keys must be 1-128 characters".into());
        }
        if !errors.is_empty() {
            return Err(AdminError::Invalid(errors));
        }
        let mut state = self.plane.lock();
        if state
            .config
            .resolved
            .credentials
            .consumer(&new.id)
            .is_some()
        {
            return Err(AdminError::Conflict(format!(
                "consumer {} is declared in the config file",
                new.id
            )));
        }
        if Self::store(&state)?.consumer(&new.id)?.is_some() {
            return Err(AdminError::Conflict(format!(
                "consumer {} exists (deleted consumer ids are not reused)",
                new.id
            )));
        }
        let record = ConsumerRecord {
            id: new.id,
            tenant,
            groups: new.groups,
            metadata: new.metadata,
            created_at: unix_now(),
            deleted_at: None,
        };
        let view = views::consumer_record(&record);
        let propagation = self.commit(
            &mut state,
            caller,
            ("consumer.create", format!("consumer/{}", record.id)),
            None,
            view.clone(),
            vec![Write::Consumer(record)],
        )?;
        Ok((201, with_propagation(view, propagation)))
    }

    fn list_consumers(&self, request: &AdminRequest) -> Answer {
        let limit = page_size(request)?;
        let after = request.query("after").unwrap_or_default();
        let state = self.plane.lock();
        let mut page: Vec<(String, Value)> = state
            .config
            .resolved
            .credentials
            .consumers()
            .filter(|c| *c.id > *after.as_str())
            .map(|c| (c.id.to_string(), views::config_consumer(c)))
            .collect();
        page.extend(
            Self::store(&state)?
                .consumers(Some(&after), limit)?
                .iter()
                .map(|c| (c.id.clone(), views::consumer_record(c))),
        );
        let (items, next) = one_page(page, limit);
        Ok((200, json!({"consumers": items, "next": next})))
    }

    fn get_consumer(&self, id: &str) -> Answer {
        let state = self.plane.lock();
        let now = unix_now();
        let config = &state.config.resolved.credentials;
        if let Some(consumer) = config.consumer(id) {
            let mut view = views::config_consumer(consumer);
            let mut credentials: Vec<Value> = config
                .credentials()
                .filter(|(_, c)| *c.consumer.id == *id)
                .map(|(h, c)| views::config_credential(&h, c, now))
                .collect();
            credentials.extend(
                Self::store(&state)?
                    .credentials_of(id)?
                    .iter()
                    .map(|c| views::credential_record(c, now)),
            );
            view["credentials"] = json!(credentials);
            return Ok((200, view));
        }
        let store = Self::store(&state)?;
        match store.consumer(id)? {
            Some(record) if record.deleted_at.is_none() => {
                let mut view = views::consumer_record(&record);
                let credentials: Vec<Value> = store
                    .credentials_of(id)?
                    .iter()
                    .map(|c| views::credential_record(c, now))
                    .collect();
                view["credentials"] = json!(credentials);
                Ok((200, view))
            }
            _ => Err(AdminError::NotFound(format!("consumer {id}"))),
        }
    }

    fn delete_consumer(&self, caller: &Caller, id: &str) -> Answer {
        let mut state = self.plane.lock();
        if state.config.resolved.credentials.consumer(id).is_some() {
            return Err(AdminError::ReadOnly(format!("consumer {id}")));
        }
        let store = Self::store(&state)?;
        let record = match store.consumer(id)? {
            Some(record) if record.deleted_at.is_none() => record,
            _ => return Err(AdminError::NotFound(format!("consumer {id}"))),
        };
        let now = unix_now();
        let mut writes = Vec::new();
        for mut credential in store.credentials_of(id)? {
            if credential.revoked_at.is_none() {
                credential.revoked_at = Some(now);
                writes.push(Write::Credential(credential));
            }
        }
        let revoked = writes.len();
        let before = views::consumer_record(&record);
        let deleted = ConsumerRecord {
            deleted_at: Some(now),
            ..record
        };
        // Credentials first: the consumer's removal from the index must not strand them.
        writes.push(Write::Consumer(deleted));
        let propagation = self.commit(
            &mut state,
            caller,
            ("consumer.delete", format!("consumer/{id}")),
            Some(before),
            json!({"revoked_credentials": revoked}),
            writes,
        )?;
        Ok((
            200,
            with_propagation(
                json!({"id": id, "revoked_credentials": revoked}),
                propagation,
            ),
        ))
    }

    // ---- credentials ----

    fn create_credential(&self, caller: &Caller, consumer: &str, request: &AdminRequest) -> Answer {
        let new: NewCredential = body(request)?;
        let now = unix_now();
        // The password hash (deliberately slow) is made before the lock is taken, so it does
        // not hold up other admin requests.
        let password_hash = match &new {
            NewCredential::Basic { password, .. }
                if password.chars().count() >= MIN_PASSWORD_CHARS =>
            {
                Some(
                    PasswordHash::new(password.as_bytes(), crate::auth::basic::DEFAULT_ITERATIONS)
                        .encode(),
                )
            }
            _ => None,
        };
        let mut state = self.plane.lock();
        let known = state
            .config
            .resolved
            .credentials
            .consumer(consumer)
            .is_some()
            || Self::store(&state)?
                .consumer(consumer)?
                .is_some_and(|c| c.deleted_at.is_none());
        if !known {
            return Err(AdminError::NotFound(format!("consumer {consumer}")));
        }
        let mut key = None;
        let (kind, id, handle, secret, scopes_list, expires) = match new {
            NewCredential::ApiKey {
                scopes: s,
                expires_at: e,
            } => {
                let pepper = state.config.resolved.pepper.clone().ok_or_else(|| {
                    AdminError::Conflict(
                        "API keys need a pepper: set auth.key_pepper_file or CREDENTIALFLOW_KEY_PEPPER"
                            .into(),
                    )
                })?;
                let issued = api_key::issue();
                let hash = api_key::hash_hex(&pepper.hash(issued.secret.as_bytes()));
                key = Some(issued.key);
                (
                    CredentialKind::ApiKey,
                    issued.id.clone(),
                    issued.id,
                    hash,
                    s,
                    e,
                )
            }
            NewCredential::Jwt {
                issuer,
                subject,
                scopes: s,
                expires_at: e,
            } => {
                if !state
                    .config
                    .issuers
                    .iter()
                    .any(|i| *i.name.get_ref() == issuer)
                {
                    return Err(invalid(format!("issuer `{issuer}` names no [[issuers]]")));
                }
                if subject.is_empty() || subject.len() > 256 || subject.contains('\n') {
                    return Err(invalid("subject must be 1-256 characters on one line"));
                }
                (
                    CredentialKind::Jwt,
                    random_id("cred_"),
                    format!("{issuer}\n{subject}"),
                    String::new(),
                    s,
                    e,
                )
            }
            NewCredential::Mtls {
                fingerprint,
                scopes: s,
                expires_at: e,
            } => {
                let fingerprint = mtls::normalize_fingerprint(&fingerprint).ok_or_else(|| {
                    invalid("fingerprint must be 64 hex digits (SHA-256 of the certificate)")
                })?;
                (
                    CredentialKind::Mtls,
                    random_id("cred_"),
                    fingerprint,
                    String::new(),
                    s,
                    e,
                )
            }
            NewCredential::Basic {
                username,
                password,
                scopes: s,
                expires_at: e,
            } => {
                if username.is_empty()
                    || username.len() > 128
                    || username.contains(':')
                    || username.contains(char::is_control)
                {
                    return Err(invalid("username must be 1-128 characters without `:`"));
                }
                if password.chars().count() < MIN_PASSWORD_CHARS {
                    return Err(invalid(format!(
                        "password must be at least {MIN_PASSWORD_CHARS} characters"
                    )));
                }
                let hash = password_hash.clone().unwrap_or_default();
                (
                    CredentialKind::Basic,
                    random_id("cred_"),
                    username,
                    hash,
                    s,
                    e,
                )
            }
        };
        let record = CredentialRecord {
            id,
            consumer: consumer.to_string(),
            kind,
            handle,
            secret,
            scopes: scopes(scopes_list)?,
            expires_at: future_time("expires_at", expires.as_deref(), now)?,
            revoked_at: None,
            created_at: now,
            replaced_by: None,
        };
        let index_handle = crate::store::index::handle(&record);
        if state
            .config
            .resolved
            .credentials
            .get(&index_handle)
            .is_some()
            || Self::store(&state)?
                .credential_by_handle(kind, &record.handle)?
                .is_some()
        {
            return Err(AdminError::Conflict(format!(
                "a {} credential for {} exists",
                kind.name(),
                describe_handle(&index_handle)
            )));
        }
        let view = views::credential_record(&record, now);
        let propagation = self.commit(
            &mut state,
            caller,
            ("credential.create", format!("credential/{}", record.id)),
            None,
            view.clone(),
            vec![Write::Credential(record)],
        )?;
        let mut answer = with_propagation(view, propagation);
        if let Some(key) = key {
            answer["key"] = json!(key);
        }
        Ok((201, answer))
    }

    /// A store credential, or why there is none.
    fn store_credential(state: &PlaneState, id: &str) -> Result<CredentialRecord, AdminError> {
        if let Some(record) = Self::store(state)?.credential(id)? {
            let handle = crate::store::index::handle(&record);
            if state.config.resolved.credentials.get(&handle).is_some() {
                // The config now declares its handle: the config's credential is in force.
                return Err(AdminError::ReadOnly(format!(
                    "the credential for {} (its handle is declared in the config)",
                    describe_handle(&handle)
                )));
            }
            return Ok(record);
        }
        if Self::config_credential(state, id).is_some() {
            return Err(AdminError::ReadOnly(format!("credential {id}")));
        }
        Err(AdminError::NotFound(format!("credential {id}")))
    }

    fn config_credential(state: &PlaneState, id: &str) -> Option<Value> {
        let now = unix_now();
        state
            .config
            .resolved
            .credentials
            .credentials()
            .find(|(_, c)| *c.id == *id)
            .map(|(h, c)| views::config_credential(&h, c, now))
    }

    fn get_credential(&self, id: &str) -> Answer {
        let state = self.plane.lock();
        if let Some(record) = Self::store(&state)?.credential(id)? {
            return Ok((200, views::credential_record(&record, unix_now())));
        }
        Self::config_credential(&state, id)
            .map(|view| (200, view))
            .ok_or_else(|| AdminError::NotFound(format!("credential {id}")))
    }

    fn rotate_credential(&self, caller: &Caller, id: &str, request: &AdminRequest) -> Answer {
        let rotate: Rotate = body(request)?;
        let grace_text = rotate.grace.as_deref().unwrap_or(DEFAULT_GRACE);
        let grace = parse_duration(grace_text)
            .map_err(|e| invalid(format!("grace `{grace_text}`: {e}")))?;
        let now = unix_now();
        let mut state = self.plane.lock();
        let old = Self::store_credential(&state, id)?;
        if old.kind != CredentialKind::ApiKey {
            return Err(AdminError::NotRotatable(format!(
                "only API keys rotate; issue a new {} credential and revoke this one",
                old.kind.name()
            )));
        }
        if old.revoked_at.is_some() || old.replaced_by.is_some() {
            return Err(AdminError::Conflict(format!(
                "credential {id} is revoked or already rotated"
            )));
        }
        if old.expires_at.is_some_and(|e| e <= now) {
            return Err(AdminError::Conflict(format!("credential {id} has expired")));
        }
        let pepper = state
            .config
            .resolved
            .pepper
            .clone()
            .ok_or_else(|| AdminError::Conflict("API keys need a pepper".into()))?;
        let issued = api_key::issue();
        let new = CredentialRecord {
            id: issued.id.clone(),
            handle: issued.id.clone(),
            secret: api_key::hash_hex(&pepper.hash(issued.secret.as_bytes())),
            created_at: now,
            replaced_by: None,
            revoked_at: None,
            ..old.clone()
        };
        let deadline = now.saturating_add(grace.as_secs() as i64);
        let before = views::credential_record(&old, now);
        let retiring = CredentialRecord {
            expires_at: Some(old.expires_at.map_or(deadline, |e| e.min(deadline))),
            replaced_by: Some(new.id.clone()),
            ..old
        };
        let old_expires = retiring.expires_at.unwrap_or(deadline);
        let new_id = new.id.clone();
        let propagation = self.commit(
            &mut state,
            caller,
            ("credential.rotate", format!("credential/{id}")),
            Some(before),
            json!({
                "old": views::credential_record(&retiring, now),
                "new": views::credential_record(&new, now),
            }),
            vec![Write::Credential(new), Write::Credential(retiring)],
        )?;
        Ok((
            201,
            with_propagation(
                json!({
                    "id": new_id,
                    "key": issued.key,
                    "replaces": id,
                    "old_expires_at": views::time(old_expires),
                }),
                propagation,
            ),
        ))
    }

    fn revoke_credential(&self, caller: &Caller, id: &str) -> Answer {
        let now = unix_now();
        let mut state = self.plane.lock();
        let record = Self::store_credential(&state, id)?;
        if record.revoked_at.is_some() {
            // Already revoked (a retry after a 503, say): answer 200 only once every core is
            // known to serve a state that includes it.
            let propagation = self.plane.confirm_all(&state)?;
            let view = views::credential_record(&record, now);
            return Ok((200, with_propagation(view, propagation)));
        }
        let before = views::credential_record(&record, now);
        let revoked = CredentialRecord {
            revoked_at: Some(now),
            ..record
        };
        let view = views::credential_record(&revoked, now);
        let propagation = self.commit(
            &mut state,
            caller,
            ("credential.revoke", format!("credential/{id}")),
            Some(before),
            view.clone(),
            vec![Write::Credential(revoked)],
        )?;
        Ok((200, with_propagation(view, propagation)))
    }

    fn revoke_jwt(&self, caller: &Caller, request: &AdminRequest) -> Answer {
        let new: NewJwtRevocation = body(request)?;
        let now = unix_now();
        let (claim, value) = match (new.jti, new.sub) {
            (Some(jti), None) => (RevokedClaim::Jti, jti),
            (None, Some(sub)) => (RevokedClaim::Sub, sub),
            _ => return Err(invalid("name exactly one of jti and sub")),
        };
        if value.is_empty() || value.len() > 256 || value.contains('\n') {
            return Err(invalid(format!(
                "{} must be 1-256 characters on one line",
                claim.name()
            )));
        }
        let until = future_time("until", new.until.as_deref(), now)?
            .unwrap_or(now + DEFAULT_JWT_REVOCATION_SECS);
        let mut state = self.plane.lock();
        if !state
            .config
            .issuers
            .iter()
            .any(|i| *i.name.get_ref() == new.issuer)
        {
            return Err(invalid(format!(
                "issuer `{}` names no [[issuers]]",
                new.issuer
            )));
        }
        let record = JwtRevocationRecord {
            id: random_id("jwtrev_"),
            issuer: new.issuer,
            claim,
            value,
            until,
            created_at: now,
        };
        let view = json!({
            "id": record.id,
            "issuer": record.issuer,
            "claim": claim.name(),
            "value": record.value,
            "until": views::time(until),
        });
        let propagation = self.commit(
            &mut state,
            caller,
            ("jwt.revoke", format!("jwt_revocation/{}", record.id)),
            None,
            view.clone(),
            vec![Write::JwtRevocation(record)],
        )?;
        Ok((201, with_propagation(view, propagation)))
    }

    // ---- subscriptions ----

    fn create_subscription(&self, caller: &Caller, request: &AdminRequest) -> Answer {
        let new: NewSubscription = body(request)?;
        let mut state = self.plane.lock();
        let config = &state.config;
        let Some(api) = config.apis.iter().find(|a| *a.name.get_ref() == new.api) else {
            return Err(invalid(format!("api `{}` names no [[apis]]", new.api)));
        };
        let initial = match api.subscription {
            SubscriptionModeName::Approval => SubscriptionState::Requested,
            SubscriptionModeName::Auto | SubscriptionModeName::None => SubscriptionState::Approved,
        };
        if let Some(plan) = &new.plan {
            if !config.plans.iter().any(|p| p.name.get_ref() == plan) {
                return Err(invalid(format!("plan `{plan}` names no [[plans]]")));
            }
        }
        if config_declares_subscription(config, &new.consumer, &new.api) {
            return Err(AdminError::ReadOnly(format!(
                "the subscription of {} to {}",
                new.consumer, new.api
            )));
        }
        let store = Self::store(&state)?;
        let known = state
            .config
            .resolved
            .credentials
            .consumer(&new.consumer)
            .is_some()
            || store
                .consumer(&new.consumer)?
                .is_some_and(|c| c.deleted_at.is_none());
        if !known {
            return Err(invalid(format!(
                "consumer `{}` does not exist",
                new.consumer
            )));
        }
        if let Some(existing) = store.subscription_for(&new.consumer, &new.api)? {
            return Err(AdminError::Conflict(format!(
                "{} is already subscribed to {} ({})",
                new.consumer, new.api, existing.id
            )));
        }
        let now = unix_now();
        let record = SubscriptionRecord {
            id: random_id("sub_"),
            consumer: new.consumer,
            api: new.api,
            plan: new.plan,
            state: initial,
            created_at: now,
            updated_at: now,
        };
        let view = views::subscription_record(&record);
        let propagation = self.commit(
            &mut state,
            caller,
            ("subscription.create", format!("subscription/{}", record.id)),
            None,
            view.clone(),
            vec![Write::Subscription(record)],
        )?;
        Ok((201, with_propagation(view, propagation)))
    }

    fn list_subscriptions(&self, request: &AdminRequest) -> Answer {
        let limit = page_size(request)?;
        let after = request.query("after").unwrap_or_default();
        let wanted = match request.query("state") {
            None => None,
            Some(name) => Some(subscription_state_from_name(&name).ok_or_else(|| {
                invalid("state must be requested, approved, rejected or revoked")
            })?),
        };
        let state = self.plane.lock();
        let mut page: Vec<(String, Value)> = state
            .config
            .resolved
            .credentials
            .subscriptions()
            .filter(|s| wanted.is_none_or(|w| s.state == w))
            .map(|s| {
                (
                    views::config_subscription_id(s),
                    views::config_subscription(s),
                )
            })
            .filter(|(id, _)| *id > after)
            .collect();
        page.extend(
            Self::store(&state)?
                .subscriptions(wanted, Some(&after), limit)?
                .iter()
                .map(|s| (s.id.clone(), views::subscription_record(s))),
        );
        let (items, next) = one_page(page, limit);
        Ok((200, json!({"subscriptions": items, "next": next})))
    }

    fn get_subscription(&self, id: &str) -> Answer {
        let state = self.plane.lock();
        if let Some(record) = Self::store(&state)?.subscription(id)? {
            return Ok((200, views::subscription_record(&record)));
        }
        let found = state
            .config
            .resolved
            .credentials
            .subscriptions()
            .find(|s| views::config_subscription_id(s) == id)
            .map(|s| (200, views::config_subscription(s)));
        found.ok_or_else(|| AdminError::NotFound(format!("subscription {id}")))
    }

    fn transition_subscription(&self, caller: &Caller, id: &str, action: &str) -> Answer {
        let mut state = self.plane.lock();
        let Some(record) = Self::store(&state)?.subscription(id)? else {
            let in_config = state
                .config
                .resolved
                .credentials
                .subscriptions()
                .any(|s| views::config_subscription_id(s) == id);
            return Err(if in_config {
                AdminError::ReadOnly(format!("subscription {id}"))
            } else {
                AdminError::NotFound(format!("subscription {id}"))
            });
        };
        if config_declares_subscription(&state.config, &record.consumer, &record.api) {
            return Err(AdminError::ReadOnly(format!(
                "the subscription of {} to {} (declared in the config)",
                record.consumer, record.api
            )));
        }
        use SubscriptionState::*;
        let next = match (action, record.state) {
            ("approve", Requested | Rejected) => Approved,
            ("reject", Requested) => Rejected,
            ("revoke", Requested | Approved) => Revoked,
            _ => {
                return Err(AdminError::InvalidTransition(format!(
                    "a {} subscription cannot be {action}d",
                    crate::store::subscription_state_name(record.state)
                )))
            }
        };
        let before = views::subscription_record(&record);
        let changed = SubscriptionRecord {
            state: next,
            updated_at: unix_now(),
            ..record
        };
        let view = views::subscription_record(&changed);
        let propagation = self.commit(
            &mut state,
            caller,
            (
                &format!("subscription.{action}"),
                format!("subscription/{id}"),
            ),
            Some(before),
            view.clone(),
            vec![Write::Subscription(changed)],
        )?;
        Ok((200, with_propagation(view, propagation)))
    }

    // ---- audit, status, reload ----

    fn audit(&self, request: &AdminRequest) -> Answer {
        let limit = page_size(request)?;
        let since_us = match request.query("since") {
            None => None,
            Some(text) => Some(
                parse_rfc3339(&text)
                    .ok_or_else(|| invalid(format!("since `{text}` must be an RFC 3339 time")))?
                    .saturating_mul(1_000_000),
            ),
        };
        let after_seq = match request.query("after") {
            None => None,
            Some(text) => Some(
                text.parse::<u64>()
                    .map_err(|_| invalid("after must be a record sequence number"))?,
            ),
        };
        let query = AuditQuery {
            since_us,
            actor: request.query("actor"),
            after_seq,
            limit,
        };
        let state = self.plane.lock();
        let records = Self::store(&state)?.audit(&query)?;
        let next = (records.len() == limit).then(|| records[limit - 1].seq);
        let records: Vec<Value> = records.iter().map(|r| r.to_json()).collect();
        Ok((200, json!({"records": records, "next": next})))
    }

    fn status(&self) -> Answer {
        let status = self.plane.auth.propagation_status();
        let state = self.plane.lock();
        let store = Self::store(&state)?;
        let cores: Vec<Value> = status
            .confirmed
            .iter()
            .enumerate()
            .map(|(core, version)| json!({"core": core, "version": version}))
            .collect();
        let last = status.last.map(|p| {
            let at =
                std::time::UNIX_EPOCH + std::time::Duration::from_micros(p.at_us.max(0) as u64);
            let mut text = Vec::new();
            crate::observe::access::push_rfc3339(&mut text, at);
            json!({
                "at": String::from_utf8_lossy(&text),
                "propagated_us": p.elapsed.as_micros() as u64,
                "cores": p.cores,
                "applied": p.applied,
            })
        });
        Ok((
            200,
            json!({
                "version": status.epoch,
                "cores": cores,
                "last_propagation": last,
                "store": {"path": store.location(), "size_bytes": store.size_bytes()},
                "config": state.config.source_path.display().to_string(),
            }),
        ))
    }

    fn reload(&self) -> Answer {
        match self.plane.reload() {
            Ok(version) => Ok((200, json!({"reloaded": true, "version": version}))),
            Err(ReloadError::Invalid(errors)) => Err(AdminError::InvalidConfig(errors)),
            Err(ReloadError::Refused(message)) => Err(AdminError::InvalidConfig(vec![message])),
            Err(ReloadError::NotConfirmed { applied, cores }) => {
                Err(AdminError::Change(ChangeError::PropagationTimeout {
                    applied,
                    cores,
                }))
            }
        }
    }
}

/// The first `limit` of `items` (config and store objects, by id) and the id to continue after.
fn one_page(mut items: Vec<(String, Value)>, limit: usize) -> (Vec<Value>, Option<String>) {
    items.sort_by(|a, b| a.0.cmp(&b.0));
    items.truncate(limit);
    let next = (items.len() == limit).then(|| items[limit - 1].0.clone());
    (items.into_iter().map(|(_, v)| v).collect(), next)
}

fn describe_handle(handle: &Handle) -> String {
    match handle {
        Handle::ApiKey(id) => format!("key id {id}"),
        Handle::Basic(user) => format!("user {user}"),
        Handle::MtlsFingerprint(f) => format!("fingerprint {f}"),
        Handle::MtlsName(n) => format!("name {n}"),
        Handle::Jwt { issuer, subject } => format!("issuer {issuer} subject {subject}"),
    }
}

/// The config declares a subscription of `consumer` to `api` (a store object may not stand
/// in its place).
fn config_declares_subscription(config: &Config, consumer: &str, api: &str) -> bool {
    let mut lookup = String::new();
    config
        .resolved
        .credentials
        .subscription(consumer, api, &mut lookup)
        .is_some()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_decoded() {
        let request = AdminRequest {
            query: "since=2026-11-29T00%3A00%3A00%2B01%3A00&actor=ops&bad=%zz%".into(),
            ..AdminRequest::default()
        };
        assert_eq!(
            request.query("since").as_deref(),
            Some("2026-11-29T00:00:00+01:00")
        );
        assert_eq!(request.query("actor").as_deref(), Some("ops"));
        assert_eq!(request.query("bad").as_deref(), Some("%zz%"));
        assert_eq!(request.query("none"), None);
    }

    #[test]
    fn ids_are_plain() {
        assert!(valid_id("app-1.prod:eu@x_y"));
        assert!(!valid_id(""));
        assert!(!valid_id("a b"));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"a".repeat(129)));
    }

    #[test]
    fn known_paths_answer_405_for_other_methods() {
        assert_eq!(allowed_methods(&["v1", "consumers"]), Some("GET, POST"));
        assert_eq!(
            allowed_methods(&["v1", "credentials", "x", "revoke"]),
            Some("POST")
        );
        assert_eq!(allowed_methods(&["v1", "nope"]), None);
    }
}
