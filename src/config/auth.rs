//! The authentication part of the config file: `[auth]`, `[[issuers]]`, `[[consumers]]` with
//! their credentials, and the route and API keys that require authentication; their
//! validation (every error names its line) and loading (pepper, JWKS files, the credential
//! index).

use super::{ConfigDuration, Problems};
use crate::auth::api_key::{self, Pepper};
use crate::auth::basic::PasswordHash;
use crate::auth::index::{Consumer, Credential, CredentialIndex, CredentialKind, Handle, Secret};
use crate::auth::jwks::{JwksUrl, KeySet};
use crate::auth::keys::{Algorithm, AlgorithmSet};
use crate::auth::{index::DEFAULT_TENANT, mtls};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// Environment variable holding the pepper when `auth.key_pepper_file` is not set.
pub const PEPPER_ENV: &str = "CREDENTIALFLOW_KEY_PEPPER";

/// `[auth]`: process-wide authentication settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// File holding the secret mixed into API key hashes (never the secret itself here).
    pub key_pepper_file: Option<Spanned<String>>,
    /// Request field carrying an API key.
    pub api_key_header: String,
    /// Longest bearer token accepted.
    pub max_token_bytes: usize,
    /// How long a core remembers a verified Basic pair.
    pub basic_cache_ttl: ConfigDuration,
    /// `realm` in `WWW-Authenticate` challenges.
    pub realm: String,
    /// How long a request with an unknown `kid` waits for the JWKS refetch it triggered.
    pub jwks_wait: ConfigDuration,
    /// Failed authentications one client address may have per `failed_auth_window` before
    /// its requests are refused (429) before any credential work; 0 turns the throttle off.
    pub failed_auth_limit: u64,
    pub failed_auth_window: ConfigDuration,
}

impl Default for AuthSection {
    fn default() -> Self {
        AuthSection {
            key_pepper_file: None,
            api_key_header: "X-API-Key".into(),
            max_token_bytes: 8192,
            basic_cache_ttl: ConfigDuration(Duration::from_secs(60)),
            realm: "credentialflow".into(),
            jwks_wait: ConfigDuration(Duration::from_secs(2)),
            failed_auth_limit: 100,
            failed_auth_window: ConfigDuration(Duration::from_secs(60)),
        }
    }
}

/// `[[issuers]]`: a JWT issuer.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerSection {
    pub name: Spanned<String>,
    /// The required `iss` claim.
    pub issuer: Spanned<String>,
    #[serde(default)]
    pub audiences: Vec<String>,
    pub jwks_file: Option<Spanned<String>>,
    pub jwks_url: Option<Spanned<String>>,
    /// CA bundle (PEM) an `https://` JWKS URL's certificate must chain to; default: the
    /// system bundle.
    pub jwks_ca: Option<Spanned<String>>,
    pub algorithms: Option<Vec<Spanned<String>>>,
    #[serde(default = "default_leeway")]
    pub leeway: ConfigDuration,
    #[serde(default = "default_consumer_claim")]
    pub consumer_claim: String,
    #[serde(default = "default_required_claims")]
    pub required_claims: Vec<String>,
    /// Claim → request field sent upstream.
    #[serde(default)]
    pub claim_headers: BTreeMap<String, Spanned<String>>,
    #[serde(default)]
    pub require_consumer: bool,
    /// The claim scopes are read from (a space-separated string or an array); default: `scope`
    /// and `scp`.
    pub scopes_claim: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    pub jwks_refresh: ConfigDuration,
    #[serde(default = "default_jwks_min_refresh")]
    pub jwks_min_refresh: ConfigDuration,
    #[serde(default = "default_jwks_max_refresh")]
    pub jwks_max_refresh: ConfigDuration,
    #[serde(default = "default_refetch_cooldown")]
    pub jwks_refetch_cooldown: ConfigDuration,
}

impl IssuerSection {
    /// The `algorithms` allow-list (names that are not algorithms are left out; validation
    /// reports them); all algorithms without one.
    pub fn allowed_algorithms(&self) -> AlgorithmSet {
        match &self.algorithms {
            None => AlgorithmSet::ANY,
            Some(list) => AlgorithmSet::of(
                &list
                    .iter()
                    .filter_map(|a| Algorithm::from_name(a.get_ref().as_bytes()))
                    .collect::<Vec<_>>(),
            ),
        }
    }
}

fn default_leeway() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_consumer_claim() -> String {
    "sub".into()
}
fn default_required_claims() -> Vec<String> {
    vec!["exp".into()]
}
fn default_jwks_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(300))
}
fn default_jwks_min_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_jwks_max_refresh() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(86_400))
}
fn default_refetch_cooldown() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}

/// Credential kinds as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KindName {
    ApiKey,
    Jwt,
    Basic,
    Mtls,
}

/// Credential states as written in config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StateName {
    #[default]
    Active,
    Revoked,
}

/// `[[consumers.credentials]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSection {
    pub kind: KindName,
    /// API keys: the id inside the key. Others: the credential id named in logs.
    pub id: Option<Spanned<String>>,
    /// API keys: HMAC-SHA256 hex; Basic: `pbkdf2-sha256$…`.
    pub hash: Option<Spanned<String>>,
    /// Basic: the user name.
    pub username: Option<Spanned<String>>,
    /// JWT: the issuer name and the consumer-claim value mapped to this consumer.
    pub issuer: Option<Spanned<String>>,
    pub subject: Option<String>,
    /// mTLS: SHA-256 fingerprint of the certificate, or its subject CN, or one SAN.
    pub fingerprint: Option<Spanned<String>>,
    pub subject_cn: Option<String>,
    pub san: Option<String>,
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 3339 time after which the credential is refused.
    pub expires: Option<Spanned<String>>,
    #[serde(default)]
    pub state: StateName,
}

/// `[[consumers]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsumerSection {
    pub id: Spanned<String>,
    pub tenant: Option<String>,
    #[serde(default)]
    pub groups: Vec<String>,
    /// Free-form facts about the consumer, for authorization conditions.
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    #[serde(default)]
    pub credentials: Vec<Spanned<CredentialSection>>,
}

/// `[apis.token_cache]`: the per-core verified-credential cache of one API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokenCacheSection {
    /// Entries per core; 0 disables the cache.
    pub entries: usize,
}

impl Default for TokenCacheSection {
    fn default() -> Self {
        TokenCacheSection { entries: 65_536 }
    }
}

/// One accepted method of a route, parsed from `auth = [...]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMethodName {
    ApiKey,
    Basic,
    Mtls,
    Jwt(String),
}

pub fn parse_method(text: &str) -> Result<AuthMethodName, String> {
    match text {
        "api_key" => Ok(AuthMethodName::ApiKey),
        "basic" => Ok(AuthMethodName::Basic),
        "mtls" => Ok(AuthMethodName::Mtls),
        _ => match text.strip_prefix("jwt:") {
            Some(name) if !name.is_empty() => Ok(AuthMethodName::Jwt(name.into())),
            _ => Err(format!(
                "auth method `{text}` must be api_key, basic, mtls or jwt:<issuer name>"
            )),
        },
    }
}

/// Reads an RFC 3339 time (`2027-01-01T00:00:00Z`, fractions and offsets allowed) as Unix
/// seconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let s = text.get(r)?;
        s.bytes()
            .all(|c| c.is_ascii_digit())
            .then(|| s.parse().ok())?
    };
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return None;
    }
    let mut rest = &text[19..];
    if let Some(frac) = rest.strip_prefix('.') {
        let digits = frac.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return None;
        }
        rest = &frac[digits..];
    }
    let offset = match rest {
        "Z" | "z" => 0,
        _ if rest.len() == 6
            && (rest.starts_with('+') || rest.starts_with('-'))
            && &rest[3..4] == ":" =>
        {
            let h: i64 = rest[1..3].parse().ok()?;
            let m: i64 = rest[4..6].parse().ok()?;
            let sign = if rest.starts_with('-') { -1 } else { 1 };
            sign * (h * 3600 + m * 60)
        }
        _ => return None,
    };
    let days = crate::limit::rate::days_from_civil(year, month, day);
    Some(days * 86_400 + hour * 3600 + minute * 60 + second - offset)
}

/// Whether a config line holds something shaped like a secret that must never be written in
/// the file: an issued API key or a JWT.
fn plaintext_secret(line: &str) -> Option<&'static str> {
    if api_key::contains_key(line) {
        return Some("an API key");
    }
    let mut from = 0;
    while let Some(at) = line[from..].find("eyJ") {
        let start = from + at;
        let token: &str = line[start..]
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_'))
            .next()
            .unwrap_or("");
        if token.matches('.').count() == 2 && token.len() > 40 {
            return Some("a JWT");
        }
        from = start + 3;
    }
    None
}

/// System CA bundles, first found wins (Debian/Ubuntu, Fedora/RHEL, Alpine/macOS style).
const SYSTEM_CA_BUNDLES: [&str; 3] = [
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/cert.pem",
];

/// The TLS client config for an `https://` JWKS URL: `ca` (relative to the config's
/// directory) or the system bundle.
fn jwks_tls(ca: Option<&str>, base: &std::path::Path) -> Result<Arc<rustls::ClientConfig>, String> {
    let path = match ca {
        Some(ca) => base.join(ca),
        None => SYSTEM_CA_BUNDLES
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.exists())
            .ok_or("no system CA bundle found: set issuers.jwks_ca")?,
    };
    let roots = crate::tls::pem::root_store(&path).map_err(|e| e.to_string())?;
    let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Reads the pepper from `file` (relative to the config's directory) or the environment.
pub fn load_pepper(file: Option<&str>, base: &std::path::Path) -> Result<Option<Pepper>, String> {
    let secret = match file {
        Some(file) => {
            let path = base.join(file);
            let bytes =
                std::fs::read(&path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let trimmed = bytes.trim_ascii_end().to_vec();
            Some(trimmed)
        }
        None => std::env::var(PEPPER_ENV).ok().map(String::into_bytes),
    };
    match secret {
        Some(secret) => Pepper::new(&secret).map(Some),
        None => Ok(None),
    }
}

impl super::Config {
    /// Checks `[auth]`, `[[issuers]]`, `[[consumers]]` and every `auth = [...]`; loads the
    /// pepper, the JWKS files and the credential index into `resolved`.
    pub(super) fn validate_auth(&mut self, p: &mut Problems<'_>) {
        for (number, line) in p.source.lines().enumerate() {
            // Comments included: a key pasted into a comment is just as leaked.
            if let Some(what) = plaintext_secret(line) {
                let message = format!(
                    "line holds what looks like {what}: secrets never go in the config (store API keys as `hash`, issued by `credentialflow key new`)"
                );
                p.errors.push(super::ConfigError::Invalid {
                    path: p.path.to_string(),
                    line: number + 1,
                    message,
                });
            }
        }
        let base = p.base_dir();
        let a = &self.auth;
        if a.api_key_header.is_empty()
            || !a
                .api_key_header
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            let offset = p.source.find("api_key_header").unwrap_or(0);
            p.at(offset, "auth.api_key_header must be a header name".into());
        }
        if a.max_token_bytes < 64 {
            let offset = p.source.find("max_token_bytes").unwrap_or(0);
            p.at(offset, "auth.max_token_bytes must be at least 64".into());
        }
        let pepper_file = a.key_pepper_file.as_ref().map(|f| f.get_ref().as_str());
        let pepper = match load_pepper(pepper_file, &base) {
            Ok(pepper) => pepper.map(Arc::new),
            Err(message) => {
                let offset = a.key_pepper_file.as_ref().map_or(0, |f| f.span().start);
                p.at(offset, format!("auth.key_pepper_file: {message}"));
                None
            }
        };

        // Issuers and their keys.
        let mut issuer_names: Vec<String> = Vec::new();
        let mut issuer_keys = Vec::new();
        let mut issuer_tls = Vec::new();
        for issuer in &self.issuers {
            super::check_name(p, &issuer.name, "issuers.name", &mut issuer_names);
            if issuer.issuer.get_ref().is_empty() {
                p.on(&issuer.issuer, "issuers.issuer must not be empty".into());
            }
            for name in issuer.algorithms.iter().flatten() {
                if Algorithm::from_name(name.get_ref().as_bytes()).is_none() {
                    p.on(
                        name,
                        format!(
                            "issuers.algorithms: `{}` is not supported (HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA; never `none`)",
                            name.get_ref()
                        ),
                    );
                }
            }
            let allowed = issuer.allowed_algorithms();
            let mut tls = None;
            let keys = match (&issuer.jwks_file, &issuer.jwks_url) {
                (Some(file), None) => {
                    let path = base.join(file.get_ref());
                    match std::fs::read(&path) {
                        Ok(bytes) => match KeySet::parse(&bytes, allowed, false) {
                            Ok(keys) => Some(Arc::new(keys)),
                            Err(err) => {
                                p.on(file, format!("issuers.jwks_file {}: {err}", path.display()));
                                None
                            }
                        },
                        Err(err) => {
                            p.on(
                                file,
                                format!("issuers.jwks_file: cannot read {}: {err}", path.display()),
                            );
                            None
                        }
                    }
                }
                (None, Some(url)) => {
                    match JwksUrl::parse(url.get_ref()) {
                        Ok(parsed) if parsed.tls => {
                            let ca = issuer.jwks_ca.as_ref();
                            match jwks_tls(ca.map(|c| c.get_ref().as_str()), &base) {
                                Ok(config) => tls = Some(config),
                                Err(message) => {
                                    p.on(ca.unwrap_or(url), format!("issuers.jwks_ca: {message}"))
                                }
                            }
                        }
                        Ok(_) => {}
                        Err(message) => p.on(url, format!("issuers.jwks_url: {message}")),
                    }
                    None
                }
                _ => {
                    p.on(
                        &issuer.name,
                        "an issuer needs exactly one of jwks_file and jwks_url".into(),
                    );
                    None
                }
            };
            for (claim, header) in &issuer.claim_headers {
                let h = header.get_ref();
                if claim.is_empty()
                    || h.is_empty()
                    || !h.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    p.on(
                        header,
                        format!("issuers.claim_headers: `{h}` must be a header name"),
                    );
                }
            }
            issuer_keys.push(keys);
            issuer_tls.push(tls);
        }

        // Consumers and credentials.
        let mut index = CredentialIndex::default();
        let mut needs_pepper = None;
        for consumer in &self.consumers {
            let id = consumer.id.get_ref();
            if id.is_empty() {
                p.on(&consumer.id, "consumers.id must not be empty".into());
                continue;
            }
            let record = Arc::new(Consumer::new(
                id,
                consumer.tenant.as_deref().unwrap_or(DEFAULT_TENANT),
                &consumer.groups,
                &consumer.metadata,
            ));
            if let Err(err) = index.add_consumer(record.clone()) {
                p.on(&consumer.id, err.to_string());
                continue;
            }
            for spanned in &consumer.credentials {
                let c = spanned.get_ref();
                match self.compile_credential(
                    c,
                    &record,
                    &issuer_names,
                    &mut needs_pepper,
                    spanned.span().start,
                ) {
                    Ok((handle, credential)) => {
                        if let Err(err) = index.add(handle, Arc::new(credential)) {
                            p.on(spanned, format!("consumers.credentials: {err}"));
                        }
                    }
                    Err((offset, message)) => {
                        p.at(offset, format!("consumers.credentials: {message}"))
                    }
                }
            }
        }

        // Methods named by APIs and routes.
        let mut uses_api_keys = false;
        for api in &self.apis {
            let lists = api
                .auth
                .iter()
                .chain(api.routes.iter().filter_map(|r| r.auth.as_ref()));
            for list in lists {
                for method in list {
                    match parse_method(method.get_ref()) {
                        Ok(AuthMethodName::Jwt(name)) if !issuer_names.contains(&name) => p.on(
                            method,
                            format!("auth method `jwt:{name}` names no [[issuers]]"),
                        ),
                        Ok(AuthMethodName::ApiKey) => {
                            uses_api_keys = true;
                            needs_pepper.get_or_insert(method.span().start);
                        }
                        Ok(_) => {}
                        Err(message) => p.on(method, message),
                    }
                }
            }
        }
        let _ = uses_api_keys;
        if let (Some(offset), None) = (needs_pepper, &pepper) {
            if a.key_pepper_file.is_none() {
                p.at(
                    offset,
                    format!("API keys need a pepper: set auth.key_pepper_file or the {PEPPER_ENV} environment variable"),
                );
            }
        }
        self.resolved.pepper = pepper;
        self.resolved.issuer_keys = issuer_keys;
        self.resolved.issuer_tls = issuer_tls;
        self.resolved.credentials = Arc::new(index);
    }

    fn compile_credential(
        &self,
        c: &CredentialSection,
        consumer: &Arc<Consumer>,
        issuers: &[String],
        needs_pepper: &mut Option<usize>,
        at: usize,
    ) -> Result<(Handle, Credential), (usize, String)> {
        let expires = match &c.expires {
            None => None,
            Some(text) => Some(parse_rfc3339(text.get_ref()).ok_or_else(|| {
                (
                    text.span().start,
                    format!(
                        "expires `{}` must be an RFC 3339 time such as 2027-01-01T00:00:00Z",
                        text.get_ref()
                    ),
                )
            })?),
        };
        let need =
            |value: &Option<Spanned<String>>, key: &str| -> Result<String, (usize, String)> {
                value.as_ref().map(|v| v.get_ref().clone()).ok_or_else(|| {
                    (
                        at,
                        format!("a {:?} credential needs `{key}`", c.kind).to_lowercase(),
                    )
                })
            };
        let (kind, handle, secret, default_id) = match c.kind {
            KindName::ApiKey => {
                let id = need(&c.id, "id")?;
                if id.is_empty() || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_alphanumeric())
                {
                    return Err((
                        at,
                        format!("api_key id `{id}` must be 1-64 letters and digits"),
                    ));
                }
                let hash_text = need(&c.hash, "hash")?;
                let hash = api_key::parse_hash_hex(&hash_text).ok_or_else(|| {
                    (
                        c.hash.as_ref().map_or(at, |h| h.span().start),
                        "api_key hash must be 64 hex digits (HMAC-SHA256, printed by `credentialflow key new`)".to_string(),
                    )
                })?;
                needs_pepper.get_or_insert(at);
                (
                    CredentialKind::ApiKey,
                    Handle::ApiKey(id.clone()),
                    Secret::ApiKey(hash),
                    id,
                )
            }
            KindName::Basic => {
                let user = need(&c.username, "username")?;
                let hash_text = need(&c.hash, "hash")?;
                let hash = PasswordHash::parse(&hash_text).map_err(|m| {
                    (
                        c.hash.as_ref().map_or(at, |h| h.span().start),
                        format!("basic hash: {m}"),
                    )
                })?;
                (
                    CredentialKind::Basic,
                    Handle::Basic(user.clone()),
                    Secret::Basic(hash),
                    format!("basic:{user}"),
                )
            }
            KindName::Jwt => {
                let issuer = need(&c.issuer, "issuer")?;
                if !issuers.contains(&issuer) {
                    return Err((
                        c.issuer.as_ref().map_or(at, |i| i.span().start),
                        format!("issuer `{issuer}` names no [[issuers]]"),
                    ));
                }
                let subject = c
                    .subject
                    .clone()
                    .ok_or_else(|| (at, "a jwt credential needs `subject`".to_string()))?;
                let id = format!("jwt:{issuer}:{subject}");
                (
                    CredentialKind::Jwt,
                    Handle::Jwt { issuer, subject },
                    Secret::None,
                    id,
                )
            }
            KindName::Mtls => {
                let handle = match (&c.fingerprint, &c.subject_cn, &c.san) {
                    (Some(f), None, None) => Handle::MtlsFingerprint(
                        mtls::normalize_fingerprint(f.get_ref()).ok_or_else(|| {
                            (f.span().start, "mtls fingerprint must be 64 hex digits (SHA-256 of the certificate)".to_string())
                        })?,
                    ),
                    (None, Some(cn), None) => Handle::MtlsName(format!("CN={cn}")),
                    (None, None, Some(san)) => Handle::MtlsName(san.clone()),
                    _ => {
                        return Err((
                            at,
                            "an mtls credential needs exactly one of fingerprint, subject_cn, san".into(),
                        ))
                    }
                };
                let id = match &handle {
                    Handle::MtlsFingerprint(f) => format!("mtls:{}", &f[..16]),
                    Handle::MtlsName(n) => format!("mtls:{n}"),
                    _ => unreachable!("mtls handles only"),
                };
                (CredentialKind::Mtls, handle, Secret::None, id)
            }
        };
        let id = match (&c.id, c.kind) {
            (Some(id), k) if k != KindName::ApiKey => id.get_ref().clone(),
            _ => default_id,
        };
        Ok((
            handle,
            Credential {
                id: id.into(),
                kind,
                consumer: consumer.clone(),
                secret,
                scopes: c.scopes.iter().map(|s| s.as_str().into()).collect(),
                expires,
                revoked: c.state == StateName::Revoked,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(parse_rfc3339("2027-01-01T00:00:00Z"), Some(1_798_761_600));
        assert_eq!(
            parse_rfc3339("2027-01-01T01:00:00.5+01:00"),
            Some(1_798_761_600)
        );
        assert_eq!(parse_rfc3339("2000-02-29T12:00:00Z"), Some(951_825_600));
        for bad in [
            "2027-01-01",
            "2027-13-01T00:00:00Z",
            "2027-01-01T00:00:00",
            "x027-01-01T00:00:00Z",
        ] {
            assert_eq!(parse_rfc3339(bad), None, "{bad}");
        }
    }

    #[test]
    fn methods_parse() {
        assert_eq!(
            parse_method("jwt:corp"),
            Ok(AuthMethodName::Jwt("corp".into()))
        );
        assert_eq!(parse_method("api_key"), Ok(AuthMethodName::ApiKey));
        assert!(parse_method("jwt:").is_err());
        assert!(parse_method("oauth").is_err());
    }

    #[test]
    fn secrets_in_lines_are_spotted() {
        let key = api_key::issue().key;
        assert!(plaintext_secret(&format!("hash = \"{key}\"")).is_some());
        assert!(plaintext_secret(
            "token = \"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.c2lnbmF0dXJlc2lnbmF0dXJl\""
        )
        .is_some());
        assert!(plaintext_secret("hash = \"0f3a\"").is_none());
    }
}
