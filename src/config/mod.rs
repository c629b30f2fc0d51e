//! The TOML config file: its shape (every section and key), strict loading (unknown keys are
//! errors) and validation, with every error naming the file line and the key.
//!
//! The file is read on the control side only; cores see the compiled [`crate::snapshot::Snapshot`].

mod access;
mod admin;
mod auth;
mod duration;
mod limit;

pub use limit::{
    parse_size, FiltersSection, IpSection, ProxyProtocolName, QuotaSection, RateLimitSection,
    SizeValue,
};

pub use access::{
    EffectName, ModeName, PlanSection, RuleSection, ScopesByMethod, SubscriptionModeName,
    SubscriptionSection, TenantSection,
};

pub use admin::{AdminSection, AdminSettings, AdminToken, AdminTokenSection, StoreSection};

pub use auth::{
    parse_method, parse_rfc3339, AuthMethodName, AuthSection, ConsumerSection, CredentialSection,
    IssuerSection, TokenCacheSection, PEPPER_ENV,
};

pub use duration::{parse_duration, ConfigDuration};

use crate::observe::access_writer::AccessLogTarget;
use crate::tls::client::UpstreamTls;
use crate::tls::server::ServerTls;
use serde::Deserialize;
use std::collections::HashSet;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use toml::Spanned;

/// Largest `limits.max_headers` accepted (the parser's header array lives on the stack).
pub const MAX_HEADERS_CEILING: usize = 256;

/// One problem found in a config file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read config: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// A syntax, type or value error at a known line.
    #[error("{path}:{line}: {message}")]
    Invalid {
        path: String,
        line: usize,
        message: String,
    },
}

/// `[gateway]`: process-wide settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GatewaySection {
    /// Worker threads; 0 means one per CPU of the process's affinity set.
    pub workers: usize,
    /// Pin each worker to one CPU.
    pub pin: bool,
    /// How long in-flight requests may take to finish after SIGTERM.
    pub drain_timeout: ConfigDuration,
    /// Where state that outlives the process is kept (quota counts); relative to the config
    /// file's directory.
    pub data_dir: String,
}

impl Default for GatewaySection {
    fn default() -> Self {
        GatewaySection {
            workers: 0,
            pin: true,
            drain_timeout: ConfigDuration(Duration::from_secs(10)),
            data_dir: "data".to_string(),
        }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Human,
    Json,
}

/// `[logging]`: process log settings.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingSection {
    /// A `tracing` env-filter directive such as `info` or `credentialflow=debug`.
    pub level: String,
    pub format: LogFormat,
    /// The access log: a file path (relative to the config file's directory), `-` for stdout,
    /// or `off`.
    pub access_log: String,
    /// The fraction of 2xx access records kept (0.0 … 1.0); every other status is kept.
    pub access_log_sample_2xx: f64,
    /// W3C trace context: `start` (continue a valid `traceparent`, start one otherwise) or
    /// `forward` (pass the client's fields through untouched).
    pub trace_context: crate::observe::trace::TraceMode,
    /// The audit trail's JSONL copy: a path (relative to the config file's directory) or `off`;
    /// default `<gateway.data_dir>/audit.jsonl` when the admin API is on.
    pub audit_log: Option<String>,
}

impl Default for LoggingSection {
    fn default() -> Self {
        LoggingSection {
            level: "info".to_string(),
            format: LogFormat::Human,
            access_log: "off".to_string(),
            access_log_sample_2xx: 1.0,
            audit_log: None,
            trace_context: Default::default(),
        }
    }
}

/// `[limits]`: request size limits and client-side timeouts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    /// Default request body limit for routes; 0 means unlimited.
    pub max_body_bytes: u64,
    pub head_timeout: ConfigDuration,
    pub idle_timeout: ConfigDuration,
    pub body_timeout: ConfigDuration,
    /// What `%2F` and `%5C` in a path do.
    pub escaped_slashes: EscapedSlashesName,
    /// Merge duplicate slashes in paths.
    pub merge_slashes: bool,
    /// Rate-limit buckets (and leases) one core tracks at most.
    pub rate_limit_keys: usize,
    /// Quota counts one core tracks at most.
    pub quota_keys: usize,
}

/// `escaped_slashes = "…"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EscapedSlashesName {
    #[default]
    Reject,
    Decode,
    Keep,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_head_bytes: 16 * 1024,
            max_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 10 * 1024 * 1024,
            head_timeout: ConfigDuration(Duration::from_secs(10)),
            idle_timeout: ConfigDuration(Duration::from_secs(60)),
            body_timeout: ConfigDuration(Duration::from_secs(30)),
            escaped_slashes: EscapedSlashesName::Reject,
            merge_slashes: false,
            rate_limit_keys: 100_000,
            quota_keys: 100_000,
        }
    }
}

/// `[[listeners]]`: one address the gateway accepts client connections on.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    pub name: Spanned<String>,
    pub address: Spanned<String>,
    /// TLS termination on this listener.
    pub tls: Option<Spanned<ListenerTlsSection>>,
    /// Overrides `limits.escaped_slashes` on this listener.
    pub escaped_slashes: Option<EscapedSlashesName>,
    /// Overrides `limits.merge_slashes` on this listener.
    pub merge_slashes: Option<bool>,
    /// A PROXY protocol header (v1 or v2) before the client's bytes: off, optional, required.
    #[serde(default)]
    pub proxy_protocol: ProxyProtocolName,
    /// Peers whose `X-Forwarded-For` is believed (CIDR ranges).
    #[serde(default)]
    pub trusted_proxies: Vec<Spanned<String>>,
    /// Open client connections on this listener at most, all cores together (0: no cap).
    #[serde(default)]
    pub max_connections: u32,
    /// Open connections from one client address at most (0: no cap).
    #[serde(default)]
    pub max_connections_per_ip: u32,
    pub ip: Option<IpSection>,
}

/// Lowest TLS version a listener accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum TlsVersion {
    #[serde(rename = "1.2")]
    Tls12,
    #[serde(rename = "1.3")]
    Tls13,
}

/// Whether a TLS listener asks clients for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificate is requested.
    None,
    /// A certificate is requested; without one the connection proceeds unauthenticated, an
    /// untrusted one is refused.
    Optional,
    /// A certificate trusted by `client_ca` is required to complete the handshake.
    Required,
}

/// One certificate chain and its private key (PEM files).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CertificateSection {
    pub cert: Spanned<String>,
    pub key: Spanned<String>,
}

/// `[listeners.tls]`: TLS termination settings of one listener.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerTlsSection {
    /// Chains chosen by SNI from their DNS names; the first is the default.
    pub certificates: Spanned<Vec<CertificateSection>>,
    #[serde(default = "default_min_version")]
    pub min_version: TlsVersion,
    #[serde(default = "default_client_auth")]
    pub client_auth: ClientAuth,
    /// CA bundle (PEM) that client certificates must chain to.
    pub client_ca: Option<Spanned<String>>,
    /// CRL files (PEM) checked against client certificates.
    #[serde(default)]
    pub client_crls: Vec<Spanned<String>>,
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: ConfigDuration,
    #[serde(default = "default_true")]
    pub session_tickets: bool,
    /// Ticket keys shared with other nodes (64 hex digits per line, first encrypts).
    pub ticket_key_file: Option<Spanned<String>>,
    /// How long one ticket key period lasts; a ticket is accepted for up to two periods.
    #[serde(default = "default_ticket_lifetime")]
    pub ticket_lifetime: ConfigDuration,
}

fn default_min_version() -> TlsVersion {
    TlsVersion::Tls12
}
fn default_client_auth() -> ClientAuth {
    ClientAuth::None
}
fn default_handshake_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}
fn default_true() -> bool {
    true
}
fn default_ticket_lifetime() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(12 * 3600))
}

/// `[upstreams.tls]`: connect to the targets over TLS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamTlsSection {
    /// CA bundle (PEM) the targets' certificates must chain to.
    pub ca: Spanned<String>,
    /// Name sent as SNI and verified in the target's certificate; default: each target's host.
    pub server_name: Option<Spanned<String>>,
    /// Client certificate chain and key presented to the targets.
    pub cert: Option<Spanned<String>>,
    pub key: Option<Spanned<String>>,
}

/// How an upstream spreads requests over its targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    RoundRobin,
    LeastOutstanding,
}

/// `[[upstreams]]`: a named group of backend targets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamSection {
    pub name: Spanned<String>,
    pub targets: Spanned<Vec<Spanned<String>>>,
    #[serde(default = "default_balance")]
    pub balance: Balance,
    /// Idle keep-alive connections kept per core per target; 0 disables pooling.
    #[serde(default = "default_keepalive")]
    pub keepalive: usize,
    #[serde(default = "default_keepalive_timeout")]
    pub keepalive_timeout: ConfigDuration,
    #[serde(default = "default_connect_timeout")]
    pub connect_timeout: ConfigDuration,
    #[serde(default = "default_response_timeout")]
    pub response_timeout: ConfigDuration,
    /// Consecutive failures before a target is ejected.
    #[serde(default = "default_max_fails")]
    pub max_fails: u32,
    /// How long an ejected target stays out before it is tried again.
    #[serde(default = "default_fail_timeout")]
    pub fail_timeout: ConfigDuration,
    pub tls: Option<Spanned<UpstreamTlsSection>>,
    /// Active health checks of the targets, from the control side.
    pub health_check: Option<Spanned<HealthCheckSection>>,
}

/// `[upstreams.health_check]`: ask every target for `path` every `interval`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckSection {
    /// Path of the `GET` request; a 2xx answer passes.
    #[serde(default = "default_health_path")]
    pub path: Spanned<String>,
    #[serde(default = "default_health_interval")]
    pub interval: Spanned<ConfigDuration>,
    /// Connect, request and response head must complete within this.
    #[serde(default = "default_health_timeout")]
    pub timeout: Spanned<ConfigDuration>,
    /// Failed checks in a row that take a target out.
    #[serde(default = "default_unhealthy_threshold")]
    pub unhealthy_threshold: Spanned<u32>,
    /// Passed checks in a row that bring it back.
    #[serde(default = "default_healthy_threshold")]
    pub healthy_threshold: Spanned<u32>,
}

pub(crate) fn default_health_path() -> Spanned<String> {
    Spanned::new(0..0, "/healthz".to_string())
}
pub(crate) fn default_health_interval() -> Spanned<ConfigDuration> {
    Spanned::new(0..0, ConfigDuration(Duration::from_secs(5)))
}
pub(crate) fn default_health_timeout() -> Spanned<ConfigDuration> {
    Spanned::new(0..0, ConfigDuration(Duration::from_secs(1)))
}
pub(crate) fn default_unhealthy_threshold() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}
pub(crate) fn default_healthy_threshold() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}

fn default_balance() -> Balance {
    Balance::RoundRobin
}
fn default_keepalive() -> usize {
    64
}
fn default_keepalive_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(60))
}
fn default_connect_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(2))
}
fn default_response_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(30))
}
fn default_max_fails() -> u32 {
    3
}
fn default_fail_timeout() -> ConfigDuration {
    ConfigDuration(Duration::from_secs(10))
}

/// `[[apis]]`: a named product made of routes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiSection {
    pub name: Spanned<String>,
    /// Accepted credentials, any-of (`api_key`, `basic`, `mtls`, `jwt:<issuer>`); absent means
    /// public. Routes may override.
    pub auth: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    pub token_cache: TokenCacheSection,
    /// Owning tenant ("default" when absent).
    pub tenant: Option<Spanned<String>>,
    /// Consumers of any tenant may call it.
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub subscription: SubscriptionModeName,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub quotas: Vec<QuotaSection>,
    pub ip: Option<IpSection>,
    pub filters: Option<FiltersSection>,
    #[serde(default)]
    pub routes: Vec<RouteSection>,
}

/// How a route's `path` is compared with the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PathMatch {
    /// The path itself or anything below it (segment-aware: `/api` matches `/api/x`, not `/apix`).
    Prefix,
    /// Only the path itself.
    Exact,
}

/// `[[apis.routes]]`: hosts + path + methods → upstream.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    pub path: Spanned<String>,
    #[serde(default = "default_path_match")]
    pub path_match: PathMatch,
    #[serde(default)]
    pub hosts: Vec<Spanned<String>>,
    #[serde(default)]
    pub methods: Vec<Spanned<String>>,
    /// Listener names the route is served on; empty means all.
    #[serde(default)]
    pub listeners: Vec<Spanned<String>>,
    pub upstream: Spanned<String>,
    #[serde(default)]
    pub strip_prefix: bool,
    /// Overrides `limits.max_body_bytes`; 0 means unlimited.
    pub max_body_bytes: Option<u64>,
    /// Send the verified client certificate's identity to the upstream as
    /// `X-Client-Cert-Fingerprint`, `X-Client-Cert-Subject-CN` and `X-Client-Cert-SAN`.
    #[serde(default)]
    pub client_cert_headers: bool,
    /// Overrides the API's `auth` (an empty list makes the route public).
    pub auth: Option<Vec<Spanned<String>>>,
    /// Send the credential (API key field or parameter, `Authorization`) on to the upstream.
    #[serde(default)]
    pub forward_credential: bool,
    /// Query parameter an API key may arrive in; removed before forwarding.
    pub api_key_query: Option<String>,
    /// Scopes the identity must hold, per method (all-of; `"*"` for the others).
    pub scopes: Option<Spanned<ScopesByMethod>>,
    /// Groups of which the consumer must be in one.
    #[serde(default)]
    pub groups: Vec<String>,
    #[serde(default)]
    pub rules: Vec<RuleSection>,
    #[serde(default)]
    pub rate_limits: Vec<RateLimitSection>,
    #[serde(default)]
    pub quotas: Vec<QuotaSection>,
    pub ip: Option<IpSection>,
    pub filters: Option<FiltersSection>,
}

fn default_path_match() -> PathMatch {
    PathMatch::Prefix
}

/// The whole config file, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub gateway: GatewaySection,
    #[serde(default)]
    pub logging: LoggingSection,
    #[serde(default)]
    pub limits: LimitsSection,
    #[serde(default)]
    pub listeners: Vec<ListenerSection>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamSection>,
    #[serde(default)]
    pub apis: Vec<ApiSection>,
    #[serde(default)]
    pub auth: AuthSection,
    #[serde(default)]
    pub issuers: Vec<IssuerSection>,
    #[serde(default)]
    pub consumers: Vec<ConsumerSection>,
    #[serde(default)]
    pub tenants: Vec<TenantSection>,
    #[serde(default)]
    pub plans: Vec<PlanSection>,
    #[serde(default)]
    pub subscriptions: Vec<SubscriptionSection>,
    /// The admin API; off when absent.
    pub admin: Option<AdminSection>,
    pub store: Option<StoreSection>,
    /// Resolved addresses, filled by validation (not part of the file).
    #[serde(skip)]
    pub resolved: Resolved,
    /// The file this config was read from (reloads read it again).
    #[serde(skip)]
    pub source_path: std::path::PathBuf,
    /// Valid but suspicious settings (`file:line: message`): printed by `check`, logged at start.
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// What validation computed on the control side: addresses (so that no core ever does a DNS
/// lookup) and loaded, checked TLS material.
#[derive(Debug, Clone, Default)]
pub struct Resolved {
    /// One address per listener, in file order.
    pub listeners: Vec<SocketAddr>,
    /// Per listener, its TLS settings when it has `[listeners.tls]`.
    pub listener_tls: Vec<Option<Arc<ServerTls>>>,
    /// Per upstream (file order), one address per target.
    pub upstream_targets: Vec<Vec<SocketAddr>>,
    /// Per upstream, its TLS client settings when it has `[upstreams.tls]`.
    pub upstream_tls: Vec<Option<Arc<UpstreamTls>>>,
    /// The API key pepper, from `auth.key_pepper_file` or the environment.
    pub pepper: Option<Arc<crate::auth::api_key::Pepper>>,
    /// Per issuer (file order): keys read from `jwks_file` (`None` for `jwks_url`).
    pub issuer_keys: Vec<Option<Arc<crate::auth::jwks::KeySet>>>,
    /// Per issuer: the TLS client config for an `https://` `jwks_url`.
    pub issuer_tls: Vec<Option<Arc<rustls::ClientConfig>>>,
    /// Consumers and credentials from `[[consumers]]`.
    pub credentials: Arc<crate::auth::index::CredentialIndex>,
    /// The admin API, when `[admin]` is set.
    pub admin: Option<AdminSettings>,
}

/// Collects errors against one source text, turning byte offsets into line numbers.
struct Problems<'a> {
    path: &'a str,
    source: &'a str,
    errors: Vec<ConfigError>,
    /// `file:line: message` for things that are valid but can never work as written.
    warnings: Vec<String>,
}

impl Problems<'_> {
    /// A warning at the line of `offset`.
    fn warn_at(&mut self, offset: usize, message: String) {
        let line = self.line_of(offset);
        self.warnings
            .push(format!("{}:{line}: {message}", self.path));
    }

    fn line_of(&self, offset: usize) -> usize {
        let end = offset.min(self.source.len());
        self.source.as_bytes()[..end]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    }

    fn at(&mut self, offset: usize, message: String) {
        let line = self.line_of(offset);
        self.errors.push(ConfigError::Invalid {
            path: self.path.to_string(),
            line,
            message,
        });
    }

    /// Relative paths in the file are taken from the file's own directory.
    fn base_dir(&self) -> std::path::PathBuf {
        Path::new(self.path)
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default()
    }

    fn on<T>(&mut self, spanned: &Spanned<T>, message: String) {
        self.at(spanned.span().start, message);
    }
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, Vec<ConfigError>> {
        let display = path.display().to_string();
        let source = std::fs::read_to_string(path).map_err(|source| {
            vec![ConfigError::Read {
                path: display.clone(),
                source,
            }]
        })?;
        Config::parse(&display, &source)
    }

    /// Parses and validates config text; `path` is only used in error messages.
    pub fn parse(path: &str, source: &str) -> Result<Config, Vec<ConfigError>> {
        let mut problems = Problems {
            path,
            source,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut config: Config = match toml::from_str(source) {
            Ok(config) => config,
            Err(err) => {
                let offset = err.span().map(|s| s.start).unwrap_or(0);
                let line = problems.line_of(offset);
                let text = source.lines().nth(line - 1).unwrap_or("").trim();
                let message = err.message().trim().replace('\n', " ");
                problems.at(offset, format!("{message} (in `{text}`)"));
                return Err(problems.errors);
            }
        };
        config.source_path = std::path::PathBuf::from(path);
        config.validate(&mut problems);
        if problems.errors.is_empty() {
            config.warnings = problems.warnings;
            Ok(config)
        } else {
            Err(problems.errors)
        }
    }

    fn validate(&mut self, p: &mut Problems<'_>) {
        self.validate_logging(p);
        self.validate_limits(p);
        let listener_names = self.validate_listeners(p);
        let upstream_names = self.validate_upstreams(p);
        self.validate_apis(p, &listener_names, &upstream_names);
        self.validate_auth(p);
        self.validate_access(p);
        self.validate_limit_sections(p);
        self.validate_admin(p);
    }

    /// Rate limits, quotas, IP lists and filters wherever they appear.
    fn validate_limit_sections(&self, p: &mut Problems<'_>) {
        if self.limits.rate_limit_keys == 0 || self.limits.quota_keys == 0 {
            let offset = p.source.find("[limits]").unwrap_or(0);
            p.at(
                offset,
                "limits.rate_limit_keys and limits.quota_keys must be at least 1".to_string(),
            );
        }
        for listener in &self.listeners {
            limit::check_cidrs(p, "listeners.trusted_proxies", &listener.trusted_proxies);
            if let Some(ip) = &listener.ip {
                limit::check_ip(p, "listeners.ip", ip);
            }
        }
        for api in &self.apis {
            let api_auth = api.auth.as_ref().is_some_and(|a| !a.is_empty());
            let every_route_public = api
                .routes
                .iter()
                .all(|r| !r.auth.as_ref().map_or(api_auth, |a| !a.is_empty()));
            let api_authenticated = (!api.routes.is_empty() && every_route_public).then_some(false);
            for limit in &api.rate_limits {
                limit::check_rate_limit(p, "apis.rate_limits", limit, api_authenticated);
            }
            for quota in &api.quotas {
                limit::check_quota(p, "apis.quotas", quota, api_authenticated);
            }
            if let Some(ip) = &api.ip {
                limit::check_ip(p, "apis.ip", ip);
            }
            if let Some(filters) = &api.filters {
                limit::check_filters(p, "apis.filters", filters);
            }
            for route in &api.routes {
                let authenticated = route.auth.as_ref().map_or(api_auth, |a| !a.is_empty());
                for limit in &route.rate_limits {
                    limit::check_rate_limit(
                        p,
                        "apis.routes.rate_limits",
                        limit,
                        Some(authenticated),
                    );
                }
                for quota in &route.quotas {
                    limit::check_quota(p, "apis.routes.quotas", quota, Some(authenticated));
                }
                if let Some(ip) = &route.ip {
                    limit::check_ip(p, "apis.routes.ip", ip);
                }
                if let Some(filters) = &route.filters {
                    limit::check_filters(p, "apis.routes.filters", filters);
                }
            }
        }
        for plan in &self.plans {
            for limit in &plan.rate_limits {
                limit::check_rate_limit(p, "plans.rate_limits", limit, None);
            }
            for quota in &plan.quotas {
                limit::check_quota(p, "plans.quotas", quota, None);
            }
        }
    }

    fn validate_logging(&self, p: &mut Problems<'_>) {
        let logging = &self.logging;
        let offset = p.source.find("[logging]").unwrap_or(0);
        if logging.access_log.trim().is_empty() {
            p.at(
                offset,
                "logging.access_log must be a path, \"-\" (stdout) or \"off\"".to_string(),
            );
        }
        let sample = logging.access_log_sample_2xx;
        if !(0.0..=1.0).contains(&sample) {
            p.at(
                offset,
                format!("logging.access_log_sample_2xx must be between 0.0 and 1.0 (is {sample})"),
            );
        }
    }

    /// Where access records go (`None`: `access_log = "off"`); a relative path is taken from
    /// the config file's directory.
    pub fn access_log_target(&self) -> Option<AccessLogTarget> {
        match self.logging.access_log.as_str() {
            "off" => None,
            "-" => Some(AccessLogTarget::Stdout),
            path => {
                let path = Path::new(path);
                if path.is_absolute() {
                    return Some(AccessLogTarget::File(path.to_path_buf()));
                }
                let base = self.source_path.parent().unwrap_or(Path::new(""));
                Some(AccessLogTarget::File(base.join(path)))
            }
        }
    }

    /// Where the audit trail's JSONL copy goes (`None`: off, or no admin API).
    pub fn audit_log_path(&self) -> Option<std::path::PathBuf> {
        self.admin.as_ref()?;
        match self.logging.audit_log.as_deref() {
            Some("off") => None,
            None => Some(self.data_dir().join("audit.jsonl")),
            Some(path) if Path::new(path).is_absolute() => Some(path.into()),
            Some(path) => Some(
                self.source_path
                    .parent()
                    .unwrap_or(Path::new(""))
                    .join(path),
            ),
        }
    }

    fn validate_limits(&self, p: &mut Problems<'_>) {
        let l = &self.limits;
        let checks = [
            (
                l.max_head_bytes < 256,
                "limits.max_head_bytes must be at least 256",
            ),
            (
                l.max_head_bytes > 1024 * 1024,
                "limits.max_head_bytes must be at most 1048576",
            ),
            (l.max_headers == 0, "limits.max_headers must be at least 1"),
            (
                l.max_headers > MAX_HEADERS_CEILING,
                "limits.max_headers must be at most 256",
            ),
            (
                l.max_uri_bytes == 0,
                "limits.max_uri_bytes must be at least 1",
            ),
        ];
        for (bad, message) in checks {
            if bad {
                let offset = p.source.find("[limits]").unwrap_or(0);
                p.at(offset, message.to_string());
            }
        }
    }

    fn validate_listeners(&mut self, p: &mut Problems<'_>) -> Vec<String> {
        if self.listeners.is_empty() {
            p.at(0, "at least one [[listeners]] is required".to_string());
        }
        let mut names = Vec::new();
        let mut seen_addrs = HashSet::new();
        for listener in &self.listeners {
            check_name(p, &listener.name, "listeners.name", &mut names);
            match listener.address.get_ref().parse::<SocketAddr>() {
                Ok(addr) => {
                    if !seen_addrs.insert(addr) {
                        p.on(
                            &listener.address,
                            format!("listeners.address `{addr}` is used twice"),
                        );
                    }
                    self.resolved.listeners.push(addr);
                }
                Err(_) => p.on(
                    &listener.address,
                    format!(
                        "listeners.address `{}` must be IP:PORT (e.g. \"0.0.0.0:8080\")",
                        listener.address.get_ref()
                    ),
                ),
            }
            let tls = listener.tls.as_ref().and_then(|tls| {
                match ServerTls::load(tls.get_ref(), &p.base_dir()) {
                    Ok(loaded) => Some(Arc::new(loaded)),
                    Err(err) => {
                        p.at(
                            err.at.unwrap_or(tls.span().start),
                            format!("listeners.tls: {}", err.error),
                        );
                        None
                    }
                }
            });
            self.resolved.listener_tls.push(tls);
        }
        names
    }

    fn validate_upstreams(&mut self, p: &mut Problems<'_>) -> Vec<String> {
        let mut names = Vec::new();
        for upstream in &self.upstreams {
            check_name(p, &upstream.name, "upstreams.name", &mut names);
            if upstream.targets.get_ref().is_empty() {
                p.on(
                    &upstream.targets,
                    "upstreams.targets needs at least one host:port".to_string(),
                );
            }
            let mut addrs = Vec::new();
            for target in upstream.targets.get_ref() {
                match resolve_target(target.get_ref()) {
                    Ok(addr) => addrs.push(addr),
                    Err(message) => p.on(target, format!("upstreams.targets: {message}")),
                }
            }
            let tls = upstream.tls.as_ref().and_then(|tls| {
                let targets: Vec<&str> = upstream
                    .targets
                    .get_ref()
                    .iter()
                    .map(|t| t.get_ref().as_str())
                    .collect();
                match UpstreamTls::load(tls.get_ref(), &targets, &p.base_dir()) {
                    Ok(loaded) => Some(Arc::new(loaded)),
                    Err(err) => {
                        p.at(
                            err.at.unwrap_or(tls.span().start),
                            format!("upstreams.tls: {}", err.error),
                        );
                        None
                    }
                }
            });
            self.resolved.upstream_tls.push(tls);
            if upstream.max_fails == 0 {
                p.on(
                    &upstream.name,
                    "upstreams.max_fails must be at least 1".to_string(),
                );
            }
            if let Some(check) = &upstream.health_check {
                validate_health_check(p, check.get_ref());
            }
            self.resolved.upstream_targets.push(addrs);
        }
        names
    }

    fn validate_apis(&self, p: &mut Problems<'_>, listeners: &[String], upstreams: &[String]) {
        let mut api_names = Vec::new();
        for api in &self.apis {
            check_name(p, &api.name, "apis.name", &mut api_names);
            for route in &api.routes {
                let path = route.path.get_ref();
                if !path.starts_with('/') {
                    p.on(
                        &route.path,
                        format!("apis.routes.path `{path}` must start with '/'"),
                    );
                } else if path.contains(['*', '?', '#', ' ']) {
                    p.on(
                        &route.path,
                        format!("apis.routes.path `{path}` must be a path (no '*', '?', '#', spaces; parameters as whole `{{name}}` segments)"),
                    );
                } else if let Err(message) = crate::router::PathPattern::parse(path, true) {
                    p.on(&route.path, format!("apis.routes.path `{path}`: {message}"));
                }
                if !upstreams.iter().any(|u| u == route.upstream.get_ref()) {
                    p.on(
                        &route.upstream,
                        format!(
                            "apis.routes.upstream `{}` names no [[upstreams]]",
                            route.upstream.get_ref()
                        ),
                    );
                }
                for listener in &route.listeners {
                    if !listeners.iter().any(|l| l == listener.get_ref()) {
                        p.on(
                            listener,
                            format!(
                                "apis.routes.listeners `{}` names no [[listeners]]",
                                listener.get_ref()
                            ),
                        );
                    }
                }
                for method in &route.methods {
                    let m = method.get_ref();
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                        p.on(
                            method,
                            format!("apis.routes.methods `{m}` must be an upper-case method name such as GET"),
                        );
                    }
                }
                for host in &route.hosts {
                    if let Err(message) = check_host_pattern(host.get_ref()) {
                        p.on(host, format!("apis.routes.hosts: {message}"));
                    }
                }
            }
        }
    }

    /// The data directory (`gateway.data_dir`, relative to the config file's directory).
    pub fn data_dir(&self) -> std::path::PathBuf {
        let dir = Path::new(&self.gateway.data_dir);
        if dir.is_absolute() {
            return dir.to_path_buf();
        }
        self.source_path
            .parent()
            .map(|p| p.join(dir))
            .unwrap_or_else(|| dir.to_path_buf())
    }

    /// Number of worker threads to start, given the CPUs the process may run on.
    pub fn worker_count(&self, available_cpus: usize) -> usize {
        if self.gateway.workers == 0 {
            available_cpus.max(1)
        } else {
            self.gateway.workers
        }
    }
}

/// Shortest `health_check.interval`: checks are a control-side task, not a load test.
const MIN_HEALTH_INTERVAL: Duration = Duration::from_millis(100);

fn validate_health_check(p: &mut Problems<'_>, check: &HealthCheckSection) {
    let path = check.path.get_ref();
    if !path.starts_with('/') || !path.bytes().all(|b| b.is_ascii_graphic()) {
        p.on(
            &check.path,
            format!("upstreams.health_check.path `{path}` must start with '/' and hold no spaces or control characters"),
        );
    }
    let interval = check.interval.get_ref().0;
    if interval < MIN_HEALTH_INTERVAL {
        p.on(
            &check.interval,
            "upstreams.health_check.interval must be at least 100ms".to_string(),
        );
    }
    let timeout = check.timeout.get_ref().0;
    if timeout.is_zero() || timeout > interval {
        p.on(
            &check.timeout,
            "upstreams.health_check.timeout must be above zero and at most the interval"
                .to_string(),
        );
    }
    for (value, key) in [
        (&check.unhealthy_threshold, "unhealthy_threshold"),
        (&check.healthy_threshold, "healthy_threshold"),
    ] {
        if *value.get_ref() == 0 {
            p.on(
                value,
                format!("upstreams.health_check.{key} must be at least 1"),
            );
        }
    }
}

fn check_name(p: &mut Problems<'_>, name: &Spanned<String>, key: &str, seen: &mut Vec<String>) {
    let text = name.get_ref();
    if text.is_empty() {
        p.on(name, format!("{key} must not be empty"));
    } else if seen.iter().any(|s| s == text) {
        p.on(name, format!("{key} `{text}` is used twice"));
    }
    seen.push(text.clone());
}

/// Resolves `host:port` to one socket address (first answer), on the control side.
fn resolve_target(target: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = target.parse::<SocketAddr>() {
        return Ok(addr);
    }
    if !target.contains(':') {
        return Err(format!("`{target}` must be host:port"));
    }
    match target.to_socket_addrs() {
        Ok(mut addrs) => addrs
            .next()
            .ok_or_else(|| format!("`{target}` resolved to no address")),
        Err(err) => Err(format!("`{target}` cannot be resolved: {err}")),
    }
}

fn check_host_pattern(host: &str) -> Result<(), String> {
    let name = host.strip_prefix("*.").unwrap_or(host);
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b':');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "`{host}` must be a host name (e.g. \"api.example.com\") or a wildcard (\"*.example.com\")"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
[[listeners]]
name = "public"
address = "127.0.0.1:8080"

[[upstreams]]
name = "app"
targets = ["127.0.0.1:9000"]

[[apis]]
name = "demo"
[[apis.routes]]
path = "/"
upstream = "app"
"#;

    fn errors(source: &str) -> Vec<String> {
        Config::parse("test.toml", source)
            .err()
            .unwrap_or_default()
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn the_access_log_is_off_by_default_and_relative_to_the_config() {
        let config = Config::parse("/etc/cflow/gw.toml", MINIMAL).unwrap();
        assert_eq!(config.access_log_target(), None);
        assert_eq!(config.logging.access_log_sample_2xx, 1.0);
        let with = |value: &str| {
            let text = format!("[logging]\naccess_log = \"{value}\"\n{MINIMAL}");
            Config::parse("/etc/cflow/gw.toml", &text)
                .unwrap()
                .access_log_target()
        };
        assert_eq!(with("-"), Some(AccessLogTarget::Stdout));
        assert_eq!(
            with("logs/access.jsonl"),
            Some(AccessLogTarget::File("/etc/cflow/logs/access.jsonl".into()))
        );
        assert_eq!(
            with("/var/log/a.jsonl"),
            Some(AccessLogTarget::File("/var/log/a.jsonl".into()))
        );
        let bad = errors(&format!(
            "[logging]\naccess_log_sample_2xx = 1.5\n{MINIMAL}"
        ));
        assert!(bad[0].contains("access_log_sample_2xx"), "{bad:?}");
    }

    #[test]
    fn minimal_config_loads_with_defaults() {
        let config = Config::parse("test.toml", MINIMAL).unwrap();
        assert_eq!(config.limits.max_head_bytes, 16384);
        assert_eq!(config.resolved.listeners[0].port(), 8080);
        assert_eq!(config.resolved.upstream_targets[0][0].port(), 9000);
        assert_eq!(config.upstreams[0].keepalive, 64);
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let source = MINIMAL.replace("name = \"app\"", "name = \"app\"\nbogus = 1");
        let errs = errors(&source);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("test.toml:8:"), "{errs:?}");
        assert!(errs[0].contains("bogus"), "{errs:?}");
    }

    #[test]
    fn bad_duration_names_line() {
        let source = format!("[limits]\nhead_timeout = \"ten\"\n{MINIMAL}");
        let errs = errors(&source);
        assert!(errs[0].starts_with("test.toml:2:"), "{errs:?}");
        assert!(errs[0].contains("head_timeout"), "{errs:?}");
    }

    #[test]
    fn unknown_upstream_reference_names_line() {
        let source = MINIMAL.replace("upstream = \"app\"", "upstream = \"nope\"");
        let errs = errors(&source);
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("test.toml:14:"), "{errs:?}");
        assert!(errs[0].contains("nope"), "{errs:?}");
    }

    #[test]
    fn several_errors_are_all_reported() {
        let source = MINIMAL
            .replace("127.0.0.1:8080", "localhost")
            .replace("path = \"/\"", "path = \"api\"");
        assert_eq!(errors(&source).len(), 2);
    }

    #[test]
    fn syntax_error_names_line() {
        let errs = errors("[gateway]\nworkers = = 2\n");
        assert!(errs[0].starts_with("test.toml:2:"), "{errs:?}");
    }

    #[test]
    fn tls_table_errors_name_their_line() {
        let with_tls = |tls: &str| {
            MINIMAL.replace(
                "address = \"127.0.0.1:8080\"\n",
                &format!("address = \"127.0.0.1:8080\"\n[listeners.tls]\n{tls}\n"),
            )
        };
        let errs = errors(&with_tls("certificates = []\nclient_auth = \"sometimes\""));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("test.toml:7:"), "{errs:?}");
        assert!(errs[0].contains("sometimes"), "{errs:?}");

        let errs = errors(&with_tls("certificates = []\nmin_version = \"1.1\""));
        assert!(errs[0].starts_with("test.toml:7:"), "{errs:?}");

        let errs = errors(&with_tls("certificates = []"));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(errs[0].starts_with("test.toml:6:"), "{errs:?}");
        assert!(errs[0].contains("at least one"), "{errs:?}");

        let errs = errors(&with_tls(
            "certificates = [{ cert = \"missing.pem\", key = \"missing.key\" }]",
        ));
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert!(
            errs[0].starts_with("test.toml:6: listeners.tls: cannot read"),
            "{errs:?}"
        );
        assert!(errs[0].contains("missing.pem"), "{errs:?}");
    }
}
