//! The durable store of the credential lifecycle: consumers, credentials, subscriptions and JWT
//! revocations created through the admin API, and the hash-chained audit trail of every write.
//!
//! [`Store`] is the contract the control plane writes through; it speaks in the records below and
//! nothing of the engine behind it. [`sqlite::SqliteStore`] is the embedded implementation (WAL,
//! `synchronous=FULL`: a commit returns only once it is durable). A store is used by the control
//! side only, never by a data-plane core.

pub mod audit;
pub mod index;
pub mod sqlite;

use crate::auth::index::{CredentialKind, SubscriptionState};
use std::collections::BTreeMap;

/// Why the store failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("store {path}: {message}")]
    Open { path: String, message: String },
    #[error("store: {0}")]
    Engine(String),
    #[error("store holds an unreadable record: {0}")]
    Corrupt(String),
}

/// A consumer created through the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRecord {
    pub id: String,
    pub tenant: String,
    pub groups: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    /// Unix seconds.
    pub created_at: i64,
    /// Set by `DELETE /v1/consumers/{id}`; a deleted consumer is kept for the audit trail.
    pub deleted_at: Option<i64>,
}

/// A credential issued through the admin API. Only what verifies it is kept: an API key's
/// HMAC, a password's PBKDF2 hash, or nothing (JWT subject, certificate).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialRecord {
    pub id: String,
    pub consumer: String,
    pub kind: CredentialKind,
    /// What a request presents to find it: the key id, the Basic user name, the certificate
    /// fingerprint or name, or `<issuer>\n<subject>`.
    pub handle: String,
    /// API key: HMAC-SHA256 hex; Basic: `pbkdf2-sha256$…`; otherwise empty.
    pub secret: String,
    pub scopes: Vec<String>,
    /// Unix seconds after which the credential is refused (`expired`).
    pub expires_at: Option<i64>,
    /// Unix seconds of the revocation (`revoked`).
    pub revoked_at: Option<i64>,
    pub created_at: i64,
    /// The credential that replaced this one by rotation.
    pub replaced_by: Option<String>,
}

/// A consumer's subscription to an API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionRecord {
    pub id: String,
    pub consumer: String,
    pub api: String,
    pub plan: Option<String>,
    pub state: SubscriptionState,
    pub created_at: i64,
    pub updated_at: i64,
}

/// Which JWT claim a revocation matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RevokedClaim {
    Jti,
    Sub,
}

impl RevokedClaim {
    pub fn name(self) -> &'static str {
        match self {
            RevokedClaim::Jti => "jti",
            RevokedClaim::Sub => "sub",
        }
    }

    pub fn from_name(name: &str) -> Option<RevokedClaim> {
        match name {
            "jti" => Some(RevokedClaim::Jti),
            "sub" => Some(RevokedClaim::Sub),
            _ => None,
        }
    }
}

/// Tokens of an issuer denied by `jti` or `sub` until a time (their latest `exp`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwtRevocationRecord {
    pub id: String,
    pub issuer: String,
    pub claim: RevokedClaim,
    pub value: String,
    /// Unix seconds after which the entry is dropped (no token it matches is valid then).
    pub until: i64,
    pub created_at: i64,
}

/// One change inside a commit.
#[derive(Debug, Clone)]
pub enum Write {
    Consumer(ConsumerRecord),
    Credential(CredentialRecord),
    Subscription(SubscriptionRecord),
    JwtRevocation(JwtRevocationRecord),
}

/// Everything the data plane needs from the store, read at start and on reload.
#[derive(Debug, Default)]
pub struct StoreContents {
    /// Live consumers (deleted ones are left out).
    pub consumers: Vec<ConsumerRecord>,
    pub credentials: Vec<CredentialRecord>,
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Revocations still in force.
    pub jwt_revocations: Vec<JwtRevocationRecord>,
}

/// Filters for reading the audit trail.
#[derive(Debug, Default, Clone)]
pub struct AuditQuery {
    /// Microseconds since the Unix epoch: records at or after it.
    pub since_us: Option<i64>,
    pub actor: Option<String>,
    /// Records after this sequence number.
    pub after_seq: Option<u64>,
    pub limit: usize,
}

/// The durable store, as the control plane uses it.
pub trait Store: Send {
    /// Everything live, for building the credential index.
    fn load(&mut self, now: i64) -> Result<StoreContents, StoreError>;

    /// Applies `writes` and appends the audit record for them in one transaction; returns the
    /// sealed audit record once the transaction is durable.
    fn commit(
        &mut self,
        writes: &[Write],
        entry: audit::AuditEntry,
    ) -> Result<audit::AuditRecord, StoreError>;

    fn consumer(&self, id: &str) -> Result<Option<ConsumerRecord>, StoreError>;
    /// Live consumers in id order, after `after`, at most `limit`.
    fn consumers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConsumerRecord>, StoreError>;
    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError>;
    /// The credential found by `handle` for `kind`, if any (to refuse a duplicate handle).
    fn credential_by_handle(
        &self,
        kind: CredentialKind,
        handle: &str,
    ) -> Result<Option<CredentialRecord>, StoreError>;
    fn credentials_of(&self, consumer: &str) -> Result<Vec<CredentialRecord>, StoreError>;
    fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError>;
    fn subscription_for(
        &self,
        consumer: &str,
        api: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError>;
    /// Subscriptions in id order, optionally in one state, after `after`, at most `limit`.
    fn subscriptions(
        &self,
        state: Option<SubscriptionState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>, StoreError>;
    fn audit(&self, query: &AuditQuery) -> Result<Vec<audit::AuditRecord>, StoreError>;
    /// Where the store lives, for `/v1/status`.
    fn location(&self) -> String;
    /// Bytes on disk.
    fn size_bytes(&self) -> u64;
}

/// The names under which subscription states are stored and shown.
pub fn subscription_state_name(state: SubscriptionState) -> &'static str {
    match state {
        SubscriptionState::Requested => "requested",
        SubscriptionState::Approved => "approved",
        SubscriptionState::Rejected => "rejected",
        SubscriptionState::Revoked => "revoked",
    }
}

pub fn subscription_state_from_name(name: &str) -> Option<SubscriptionState> {
    match name {
        "requested" => Some(SubscriptionState::Requested),
        "approved" => Some(SubscriptionState::Approved),
        "rejected" => Some(SubscriptionState::Rejected),
        "revoked" => Some(SubscriptionState::Revoked),
        _ => None,
    }
}

pub fn credential_kind_from_name(name: &str) -> Option<CredentialKind> {
    match name {
        "api_key" => Some(CredentialKind::ApiKey),
        "jwt" => Some(CredentialKind::Jwt),
        "basic" => Some(CredentialKind::Basic),
        "mtls" => Some(CredentialKind::Mtls),
        _ => None,
    }
}
