//! The credential index: consumers and their credentials, looked up by what a request presents
//! (API key id, Basic user name, client-certificate fingerprint or name, JWT issuer + subject).
//!
//! It is separate from the compiled routes and updated incrementally: every map is split into
//! shards that are shared (`Arc`) between index versions, so adding or revoking one credential
//! copies one shard (~1/256 of the map) instead of the whole index, and never touches routes or
//! TLS. Cores read a version shared read-only; the control side builds the next one.

use std::collections::hash_map::RandomState;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

/// Tenant of consumers that name none.
pub const DEFAULT_TENANT: &str = "default";

/// An application or user of one tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Consumer {
    pub id: Box<str>,
    pub tenant: Box<str>,
    pub groups: Box<[Box<str>]>,
    /// `metadata = { key = "value" }`, read by authorization conditions.
    pub metadata: Box<[(Box<str>, Box<str>)]>,
}

impl Consumer {
    /// A consumer as the config and the store describe one.
    pub fn new(
        id: &str,
        tenant: &str,
        groups: &[String],
        metadata: &std::collections::BTreeMap<String, String>,
    ) -> Consumer {
        Consumer {
            id: id.into(),
            tenant: tenant.into(),
            groups: groups.iter().map(|g| g.as_str().into()).collect(),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.as_str().into(), v.as_str().into()))
                .collect(),
        }
    }

    /// A consumer known by its id only: default tenant, no groups, no metadata.
    pub fn bare(id: &str) -> Consumer {
        Consumer {
            id: id.into(),
            tenant: DEFAULT_TENANT.into(),
            groups: Box::new([]),
            metadata: Box::new([]),
        }
    }

    /// A metadata value.
    pub fn metadata(&self, key: &str) -> Option<&str> {
        self.metadata
            .iter()
            .find(|(k, _)| &**k == key)
            .map(|(_, v)| &**v)
    }
}

/// What a credential proves possession of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Secret {
    /// HMAC-SHA256(pepper, key secret).
    ApiKey([u8; 32]),
    /// PBKDF2-HMAC-SHA256 password hash.
    Basic(super::basic::PasswordHash),
    /// Nothing to check here: a verified client certificate or a verified JWT maps to it.
    None,
}

/// The kind of a credential, as written in config (`kind = "…"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CredentialKind {
    ApiKey,
    Jwt,
    Basic,
    Mtls,
}

impl CredentialKind {
    pub fn name(self) -> &'static str {
        match self {
            CredentialKind::ApiKey => "api_key",
            CredentialKind::Jwt => "jwt",
            CredentialKind::Basic => "basic",
            CredentialKind::Mtls => "mtls",
        }
    }
}

/// One credential of a consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The credential's id (the key id for API keys), named in logs and sent upstream.
    pub id: Box<str>,
    pub kind: CredentialKind,
    pub consumer: Arc<Consumer>,
    pub secret: Secret,
    pub scopes: Box<[Box<str>]>,
    /// Seconds since the Unix epoch after which the credential is refused.
    pub expires: Option<i64>,
    pub revoked: bool,
}

/// Where a consumer's access to an API stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionState {
    Requested,
    Approved,
    Rejected,
    Revoked,
}

/// A consumer's subscription to an API, with its plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscription {
    pub consumer: Box<str>,
    pub api: Box<str>,
    pub state: SubscriptionState,
    pub plan: Option<Box<str>>,
    /// Seconds since the Unix epoch after which the subscription no longer admits.
    pub expires: Option<i64>,
}

/// Number of shards per map (a power of two).
const SHARDS: usize = 256;

/// A string-keyed map split into copy-on-write shards.
#[derive(Clone)]
pub struct ShardedMap<K, V> {
    hasher: RandomState,
    shards: Box<[Arc<HashMap<K, V, RandomState>>]>,
    len: usize,
}

impl<K: Hash + Eq + Clone, V: Clone> ShardedMap<K, V> {
    pub fn new() -> Self {
        let hasher = RandomState::new();
        let shards = (0..SHARDS)
            .map(|_| Arc::new(HashMap::with_hasher(hasher.clone())))
            .collect();
        ShardedMap {
            hasher,
            shards,
            len: 0,
        }
    }

    fn shard_of<Q: Hash + ?Sized>(&self, key: &Q) -> usize {
        (self.hasher.hash_one(key) >> 56) as usize & (SHARDS - 1)
    }

    pub fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.shards[self.shard_of(key)].get(key)
    }

    /// Inserts or replaces; copies the one shard if an older version still shares it.
    pub fn insert(&mut self, key: K, value: V) -> Option<V> {
        let shard = self.shard_of(&key);
        let old = Arc::make_mut(&mut self.shards[shard]).insert(key, value);
        if old.is_none() {
            self.len += 1;
        }
        old
    }

    pub fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let shard = self.shard_of(key);
        if !self.shards[shard].contains_key(key) {
            return None;
        }
        let old = Arc::make_mut(&mut self.shards[shard]).remove(key);
        if old.is_some() {
            self.len -= 1;
        }
        old
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn values(&self) -> impl Iterator<Item = &V> {
        self.shards.iter().flat_map(|s| s.values())
    }

    pub fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.shards.iter().flat_map(|s| s.iter())
    }
}

impl<K: Hash + Eq + Clone, V: Clone> Default for ShardedMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why a credential cannot be added.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IndexError {
    #[error("{kind} credential `{id}` is defined twice")]
    Duplicate { kind: &'static str, id: String },
    #[error("consumer `{0}` is defined twice")]
    DuplicateConsumer(String),
}

/// All consumers and credentials, indexed for the request path.
#[derive(Clone, Default)]
pub struct CredentialIndex {
    consumers: ShardedMap<Box<str>, Arc<Consumer>>,
    api_keys: ShardedMap<Box<str>, Arc<Credential>>,
    basic: ShardedMap<Box<str>, Arc<Credential>>,
    /// By SHA-256 fingerprint (lower-case hex) of the client certificate.
    mtls_fingerprints: ShardedMap<Box<str>, Arc<Credential>>,
    /// By `CN=<name>` or a subject alternative name (`DNS:…`, `URI:…`, `email:…`).
    mtls_names: ShardedMap<Box<str>, Arc<Credential>>,
    /// By `<issuer name>\n<subject>`.
    jwt_subjects: ShardedMap<Box<str>, Arc<Credential>>,
    /// By `<consumer id>\n<api name>`.
    subscriptions: ShardedMap<Box<str>, Arc<Subscription>>,
    /// Revoked JWTs by `<issuer name>\n<jti|sub>\n<value>`: until when (Unix seconds).
    jwt_revocations: ShardedMap<Box<str>, i64>,
}

impl std::fmt::Debug for CredentialIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (consumers, api_keys, others) = self.counts();
        f.debug_struct("CredentialIndex")
            .field("consumers", &consumers)
            .field("api_keys", &api_keys)
            .field("other_credentials", &others)
            .finish()
    }
}

/// The key under which a credential is found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Handle {
    ApiKey(String),
    Basic(String),
    MtlsFingerprint(String),
    MtlsName(String),
    Jwt { issuer: String, subject: String },
}

impl CredentialIndex {
    pub fn add_consumer(&mut self, consumer: Arc<Consumer>) -> Result<(), IndexError> {
        if self.consumers.get(&*consumer.id).is_some() {
            return Err(IndexError::DuplicateConsumer(consumer.id.to_string()));
        }
        self.consumers.insert(consumer.id.clone(), consumer);
        Ok(())
    }

    pub fn consumer(&self, id: &str) -> Option<&Arc<Consumer>> {
        self.consumers.get(id)
    }

    fn map_for(
        &mut self,
        handle: &Handle,
    ) -> (&mut ShardedMap<Box<str>, Arc<Credential>>, Box<str>) {
        match handle {
            Handle::ApiKey(id) => (&mut self.api_keys, id.as_str().into()),
            Handle::Basic(user) => (&mut self.basic, user.as_str().into()),
            Handle::MtlsFingerprint(f) => (&mut self.mtls_fingerprints, f.as_str().into()),
            Handle::MtlsName(n) => (&mut self.mtls_names, n.as_str().into()),
            Handle::Jwt { issuer, subject } => (
                &mut self.jwt_subjects,
                format!("{issuer}\n{subject}").into(),
            ),
        }
    }

    /// Adds a credential under `handle`; a handle already taken is an error.
    pub fn add(&mut self, handle: Handle, credential: Arc<Credential>) -> Result<(), IndexError> {
        let kind = credential.kind.name();
        let (map, key) = self.map_for(&handle);
        if map.get(&*key).is_some() {
            return Err(IndexError::Duplicate {
                kind,
                id: key.replace('\n', ":"),
            });
        }
        map.insert(key, credential);
        Ok(())
    }

    /// Replaces (or adds) the credential under `handle`: rotation, revocation, expiry changes.
    pub fn put(&mut self, handle: Handle, credential: Arc<Credential>) {
        let (map, key) = self.map_for(&handle);
        map.insert(key, credential);
    }

    /// The credential under `handle`.
    pub fn get(&self, handle: &Handle) -> Option<&Arc<Credential>> {
        match handle {
            Handle::ApiKey(id) => self.api_keys.get(id.as_str()),
            Handle::Basic(user) => self.basic.get(user.as_str()),
            Handle::MtlsFingerprint(f) => self.mtls_fingerprints.get(f.as_str()),
            Handle::MtlsName(n) => self.mtls_names.get(n.as_str()),
            Handle::Jwt { issuer, subject } => self
                .jwt_subjects
                .get(format!("{issuer}\n{subject}").as_str()),
        }
    }

    /// Adds or replaces a consumer (credentials made before keep the version they hold).
    pub fn put_consumer(&mut self, consumer: Arc<Consumer>) {
        self.consumers.insert(consumer.id.clone(), consumer);
    }

    /// Removes the credential under `handle`.
    pub fn remove(&mut self, handle: &Handle) -> Option<Arc<Credential>> {
        let (map, key) = self.map_for(handle);
        map.remove(&*key)
    }

    pub fn api_key(&self, id: &str) -> Option<&Arc<Credential>> {
        self.api_keys.get(id)
    }

    pub fn basic(&self, user: &str) -> Option<&Arc<Credential>> {
        self.basic.get(user)
    }

    pub fn mtls_fingerprint(&self, fingerprint: &str) -> Option<&Arc<Credential>> {
        self.mtls_fingerprints.get(fingerprint)
    }

    pub fn mtls_name(&self, name: &str) -> Option<&Arc<Credential>> {
        self.mtls_names.get(name)
    }

    /// The credential mapping `subject` of `issuer`; `buf` is scratch for the lookup key.
    pub fn jwt_subject(
        &self,
        issuer: &str,
        subject: &str,
        buf: &mut String,
    ) -> Option<&Arc<Credential>> {
        if self.jwt_subjects.is_empty() {
            return None;
        }
        buf.clear();
        buf.push_str(issuer);
        buf.push('\n');
        buf.push_str(subject);
        self.jwt_subjects.get(buf.as_str())
    }

    /// Removes a consumer (its credentials stay until replaced or removed).
    pub fn remove_consumer(&mut self, id: &str) -> Option<Arc<Consumer>> {
        self.consumers.remove(id)
    }

    /// Denies tokens of `issuer` whose `claim` (`jti` or `sub`) is `value`, until `until`.
    pub fn revoke_jwt(&mut self, issuer: &str, claim: &str, value: &str, until: i64) {
        let key: Box<str> = format!("{issuer}\n{claim}\n{value}").into();
        let until = self
            .jwt_revocations
            .get(&*key)
            .map_or(until, |&old| old.max(until));
        self.jwt_revocations.insert(key, until);
    }

    /// Whether a token of `issuer` with this `jti` / `sub` is revoked at `now`.
    pub fn jwt_revoked(
        &self,
        issuer: &str,
        jti: Option<&str>,
        sub: Option<&str>,
        now: i64,
        buf: &mut String,
    ) -> bool {
        if self.jwt_revocations.is_empty() {
            return false;
        }
        [("jti", jti), ("sub", sub)].iter().any(|(claim, value)| {
            let Some(value) = value else { return false };
            buf.clear();
            buf.push_str(issuer);
            buf.push('\n');
            buf.push_str(claim);
            buf.push('\n');
            buf.push_str(value);
            self.jwt_revocations
                .get(buf.as_str())
                .is_some_and(|&until| until > now)
        })
    }

    /// Adds or replaces the subscription of its consumer to its API.
    pub fn put_subscription(
        &mut self,
        subscription: Arc<Subscription>,
    ) -> Option<Arc<Subscription>> {
        let key: Box<str> = format!("{}\n{}", subscription.consumer, subscription.api).into();
        self.subscriptions.insert(key, subscription)
    }

    /// The subscription of `consumer` to `api`; `buf` is scratch for the lookup key.
    pub fn subscription(
        &self,
        consumer: &str,
        api: &str,
        buf: &mut String,
    ) -> Option<&Arc<Subscription>> {
        if self.subscriptions.is_empty() {
            return None;
        }
        buf.clear();
        buf.push_str(consumer);
        buf.push('\n');
        buf.push_str(api);
        self.subscriptions.get(buf.as_str())
    }

    /// Every consumer (unordered).
    pub fn consumers(&self) -> impl Iterator<Item = &Arc<Consumer>> {
        self.consumers.values()
    }

    /// Every credential with its handle (unordered).
    pub fn credentials(&self) -> impl Iterator<Item = (Handle, &Arc<Credential>)> {
        fn simple(
            map: &ShardedMap<Box<str>, Arc<Credential>>,
            make: fn(String) -> Handle,
        ) -> impl Iterator<Item = (Handle, &Arc<Credential>)> {
            map.iter().map(move |(k, v)| (make(k.to_string()), v))
        }
        simple(&self.api_keys, Handle::ApiKey)
            .chain(simple(&self.basic, Handle::Basic))
            .chain(simple(&self.mtls_fingerprints, Handle::MtlsFingerprint))
            .chain(simple(&self.mtls_names, Handle::MtlsName))
            .chain(self.jwt_subjects.iter().map(|(k, v)| {
                let (issuer, subject) = k.split_once('\n').unwrap_or((k, ""));
                (
                    Handle::Jwt {
                        issuer: issuer.to_string(),
                        subject: subject.to_string(),
                    },
                    v,
                )
            }))
    }

    /// Every subscription (unordered).
    pub fn subscriptions(&self) -> impl Iterator<Item = &Arc<Subscription>> {
        self.subscriptions.values()
    }

    /// Counts for logs: consumers, API keys, other credentials.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.consumers.len(),
            self.api_keys.len(),
            self.basic.len()
                + self.mtls_fingerprints.len()
                + self.mtls_names.len()
                + self.jwt_subjects.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn consumer(id: &str) -> Arc<Consumer> {
        Arc::new(Consumer {
            id: id.into(),
            tenant: DEFAULT_TENANT.into(),
            groups: Box::new([]),
            metadata: Box::new([]),
        })
    }

    fn key(id: &str, consumer: &Arc<Consumer>) -> Arc<Credential> {
        Arc::new(Credential {
            id: id.into(),
            kind: CredentialKind::ApiKey,
            consumer: consumer.clone(),
            secret: Secret::ApiKey([1; 32]),
            scopes: Box::new([]),
            expires: None,
            revoked: false,
        })
    }

    #[test]
    fn a_new_version_shares_untouched_shards_with_the_old() {
        let app = consumer("app");
        let mut v1 = CredentialIndex::default();
        for i in 0..2000 {
            v1.add(Handle::ApiKey(format!("k{i}")), key(&format!("k{i}"), &app))
                .unwrap();
        }
        let mut v2 = v1.clone();
        v2.put(Handle::ApiKey("k7".into()), {
            let mut revoked = (**v1.api_key("k7").unwrap()).clone();
            revoked.revoked = true;
            Arc::new(revoked)
        });
        assert!(!v1.api_key("k7").unwrap().revoked, "old version unchanged");
        assert!(v2.api_key("k7").unwrap().revoked);
        let shared = v1
            .api_keys
            .shards
            .iter()
            .zip(v2.api_keys.shards.iter())
            .filter(|(a, b)| Arc::ptr_eq(a, b))
            .count();
        assert_eq!(shared, SHARDS - 1, "only one shard was copied");
        assert!(v2.remove(&Handle::ApiKey("k8".into())).is_some());
        assert!(v2.api_key("k8").is_none() && v1.api_key("k8").is_some());
        assert_eq!(v2.counts().1, 1999);
    }

    #[test]
    fn revoked_tokens_are_found_by_jti_or_subject_until_their_time() {
        let mut index = CredentialIndex::default();
        let mut buf = String::new();
        assert!(!index.jwt_revoked("corp", Some("t1"), Some("u1"), 0, &mut buf));
        index.revoke_jwt("corp", "jti", "t1", 100);
        index.revoke_jwt("corp", "sub", "u9", 100);
        assert!(index.jwt_revoked("corp", Some("t1"), None, 50, &mut buf));
        assert!(index.jwt_revoked("corp", Some("t2"), Some("u9"), 50, &mut buf));
        assert!(!index.jwt_revoked("corp", Some("t2"), Some("u1"), 50, &mut buf));
        assert!(!index.jwt_revoked("other", Some("t1"), None, 50, &mut buf));
        assert!(
            !index.jwt_revoked("corp", Some("t1"), None, 100, &mut buf),
            "lapsed"
        );
    }

    #[test]
    fn duplicates_are_refused() {
        let app = consumer("app");
        let mut index = CredentialIndex::default();
        index.add_consumer(app.clone()).unwrap();
        assert!(index.add_consumer(app.clone()).is_err());
        index
            .add(Handle::ApiKey("a".into()), key("a", &app))
            .unwrap();
        assert!(index
            .add(Handle::ApiKey("a".into()), key("a", &app))
            .is_err());
        let mut buf = String::new();
        index
            .add(
                Handle::Jwt {
                    issuer: "corp".into(),
                    subject: "u1".into(),
                },
                key("j", &app),
            )
            .unwrap();
        assert!(index.jwt_subject("corp", "u1", &mut buf).is_some());
        assert!(index.jwt_subject("corp", "u2", &mut buf).is_none());
    }

    fn rss_kib() -> u64 {
        std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("VmRSS:"))
                    .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
            })
            .unwrap_or(0)
    }

    /// Memory and build time of an index of one million API keys (one consumer each), as
    /// documented in docs/ARCHITECTURE.md. Run with
    /// `cargo test --release --lib index_of_one_million_keys -- --ignored --nocapture`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn index_of_one_million_keys() {
        const N: usize = 1_000_000;
        let before = rss_kib();
        let started = std::time::Instant::now();
        let mut index = CredentialIndex::default();
        for i in 0..N {
            let id = format!("k{i:011}");
            let owner = consumer(&format!("consumer-{i}"));
            index.add_consumer(owner.clone()).unwrap();
            index
                .add(Handle::ApiKey(id.clone()), key(&id, &owner))
                .unwrap();
        }
        let built = started.elapsed();
        let after = rss_kib();
        let started = std::time::Instant::now();
        let mut next = index.clone();
        next.put(
            Handle::ApiKey("k00000000007".into()),
            key("k00000000007", &consumer("x")),
        );
        let update = started.elapsed();
        let probes: Vec<String> = (0..N).step_by(7).map(|i| format!("k{i:011}")).collect();
        let started = std::time::Instant::now();
        let mut found = 0;
        for probe in &probes {
            found += usize::from(index.api_key(probe).is_some());
        }
        let lookups = started.elapsed();
        println!(
            "{N} API keys: {:.0} bytes per key (with its consumer), built in {:.2} s; one update {:.2} ms; lookup {:.0} ns (working set far larger than the CPU caches)",
            (after.saturating_sub(before) * 1024) as f64 / N as f64,
            built.as_secs_f64(),
            update.as_secs_f64() * 1e3,
            lookups.as_nanos() as f64 / found as f64
        );
        assert_eq!(index.counts().1, N);
    }
}
