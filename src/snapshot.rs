//! The compiled, immutable view of a config that the cores serve from: listeners with their
//! routers, routes, upstreams with resolved target addresses, and limits. Built on the control
//! side, shared read-only (`Arc`) by every core, replaced whole on change.

use crate::access::condition::Condition;
use crate::access::{ApiPolicy, Effect, RoutePolicy, Rule, SubscriptionMode};
use crate::auth::{AuthConfig, Issuer, RouteAuth};
use crate::config::{
    parse_method, AuthMethodName, Balance, Config, EffectName, ModeName, RouteSection,
    SubscriptionModeName,
};
use crate::config::{FiltersSection, IpSection, ProxyProtocolName, QuotaSection, RateLimitSection};
use crate::filter::connections::ConnectionCaps;
use crate::filter::ip_set::{IpRules, IpSet};
use crate::filter::signatures::{Signature, SignatureSet};
use crate::filter::{ProxyProtocol, RequestFilters};
use crate::http::normalize::EscapedSlashes;
use crate::limit::{FailureThrottle, KeyPart, LimitRule, QuotaAmount, Rate, RuleKind};
use crate::router::{RouteKey, Router};
use crate::tls::client::UpstreamTls;
use crate::tls::server::ServerTls;
use crate::upstream::health::HealthCheck;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

/// Request limits and client-side timeouts.
#[derive(Debug, Clone)]
pub struct Limits {
    pub max_head_bytes: usize,
    pub max_headers: usize,
    pub max_uri_bytes: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
    pub body_timeout: Duration,
}

/// One listening address and the routes served on it.
#[derive(Debug)]
pub struct Listener {
    pub name: String,
    pub address: SocketAddr,
    pub router: Router,
    /// TLS termination, when the listener has `[listeners.tls]`.
    pub tls: Option<Arc<ServerTls>>,
    /// How request paths are normalized on this listener.
    pub escaped_slashes: EscapedSlashes,
    pub merge_slashes: bool,
    pub proxy_protocol: ProxyProtocol,
    /// Peers whose `X-Forwarded-For` is believed.
    pub trusted_proxies: IpSet,
    pub caps: ConnectionCaps,
    /// The listener's IP allow/deny lists (empty: all admitted).
    pub ip: IpRules,
}

/// A route after compilation.
#[derive(Debug, Clone)]
pub struct Route {
    pub api: String,
    pub key: RouteKey,
    /// Index into [`Snapshot::upstreams`].
    pub upstream: usize,
    /// Remove the matched prefix before forwarding.
    pub strip_prefix: bool,
    /// 0 means unlimited.
    pub max_body_bytes: u64,
    /// Forward the verified client certificate's identity as headers.
    pub client_cert_headers: bool,
    /// What the route requires; `None` is a public route.
    pub auth: Option<RouteAuth>,
    /// Who may call it (authenticated routes only).
    pub access: Option<RoutePolicy>,
    /// The path's parameters (`/tenants/{tenant}/orders`), when it has any.
    pub pattern: Option<crate::router::PathPattern>,
    /// Text naming the route (`api path methods`): the `route` key of rate limits.
    pub id: Box<str>,
    /// IP allow/deny lists of the API and of the route; each must admit.
    pub ip: Box<[Arc<IpRules>]>,
    /// Request filters of the API and of the route; each must pass.
    pub filters: Box<[Arc<RequestFilters>]>,
    /// Rate limits and quotas of the API and of the route.
    pub limits: Box<[LimitRule]>,
}

/// A group of targets and how to use them.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub name: String,
    pub targets: Vec<SocketAddr>,
    pub balance: Balance,
    pub keepalive: usize,
    pub keepalive_timeout: Duration,
    pub connect_timeout: Duration,
    pub response_timeout: Duration,
    pub max_fails: u32,
    pub fail_timeout: Duration,
    /// TLS to the targets, when the upstream has `[upstreams.tls]`.
    pub tls: Option<Arc<UpstreamTls>>,
    /// Active health checks, when the upstream has `[upstreams.health_check]`.
    pub health_check: Option<HealthCheck>,
}

/// Everything a core needs to serve requests.
#[derive(Debug)]
pub struct Snapshot {
    /// Unique per compiled snapshot in this process (per-core state keyed by a snapshot's
    /// indices notices a new one by it).
    pub serial: u64,
    pub limits: Limits,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub drain_timeout: Duration,
    /// What the request path does with `traceparent` / `tracestate`.
    pub trace_context: crate::observe::trace::TraceMode,
    pub auth: AuthConfig,
    /// Per API (file order): entries of its per-core verified-credential cache.
    pub token_cache_entries: Vec<usize>,
    /// Per API (file order): tenant, sharing and subscription mode.
    pub apis: Vec<ApiPolicy>,
    /// `[[plans]]`, for the rate-limit phase (subscriptions name them).
    pub plans: Vec<Plan>,
    /// The failed-authentication throttle (`None`: off).
    pub failed_auth: Option<FailureThrottle>,
}

/// A plan as written (`rate` as `n/s|min|h`, `quota` as `n/minute|hour|day|month`, checked).
#[derive(Debug, Clone)]
pub struct Plan {
    pub name: Box<str>,
    pub rate: Option<Box<str>>,
    pub quota: Option<Box<str>>,
    /// Limits a subscription on this plan adds (`rate` and `quota` included, keyed by consumer).
    pub limits: Box<[LimitRule]>,
}

impl Snapshot {
    /// Compiles a validated config.
    pub fn compile(config: &Config) -> Snapshot {
        let upstreams: Vec<Upstream> = config
            .upstreams
            .iter()
            .zip(&config.resolved.upstream_targets)
            .zip(&config.resolved.upstream_tls)
            .map(|((u, targets), tls)| Upstream {
                name: u.name.get_ref().clone(),
                targets: targets.clone(),
                balance: u.balance,
                keepalive: u.keepalive,
                keepalive_timeout: u.keepalive_timeout.0,
                connect_timeout: u.connect_timeout.0,
                response_timeout: u.response_timeout.0,
                max_fails: u.max_fails,
                fail_timeout: u.fail_timeout.0,
                tls: tls.clone(),
                health_check: u.health_check.as_ref().map(|c| {
                    let c = c.get_ref();
                    HealthCheck {
                        path: c.path.get_ref().clone(),
                        interval: c.interval.get_ref().0,
                        timeout: c.timeout.get_ref().0,
                        unhealthy_threshold: *c.unhealthy_threshold.get_ref(),
                        healthy_threshold: *c.healthy_threshold.get_ref(),
                    }
                }),
            })
            .collect();
        let auth = compile_auth(config);
        let mut routes = Vec::new();
        let mut route_listeners: Vec<Vec<String>> = Vec::new();
        for (api_index, api) in config.apis.iter().enumerate() {
            let api_name = api.name.get_ref();
            let api_ip = api.ip.as_ref().map(compile_ip);
            let api_filters = api.filters.as_ref().map(compile_filters);
            let api_limits =
                compile_limits(&format!("api {api_name}"), &api.rate_limits, &api.quotas);
            for r in &api.routes {
                let id = format!(
                    "{api_name} {}{}{}",
                    r.path.get_ref(),
                    if r.methods.is_empty() { "" } else { " " },
                    r.methods
                        .iter()
                        .map(|m| m.get_ref().as_str())
                        .collect::<Vec<_>>()
                        .join(",")
                );
                let mut limits = api_limits.clone();
                limits.extend(compile_limits(
                    &format!("route {id}"),
                    &r.rate_limits,
                    &r.quotas,
                ));
                let ip: Vec<Arc<IpRules>> = api_ip
                    .iter()
                    .cloned()
                    .chain(r.ip.as_ref().map(compile_ip))
                    .filter(|rules| !rules.is_empty())
                    .collect();
                let filters: Vec<Arc<RequestFilters>> = api_filters
                    .iter()
                    .cloned()
                    .chain(r.filters.as_ref().map(compile_filters))
                    .filter(|f| !f.is_empty())
                    .collect();
                let filter_max_body = [&api.filters, &r.filters]
                    .into_iter()
                    .flatten()
                    .filter_map(|f| f.max_body.as_ref().and_then(|m| m.get_ref().bytes()))
                    .min();
                let methods = r.auth.as_ref().or(api.auth.as_ref());
                let route_auth = methods.filter(|m| !m.is_empty()).map(|methods| {
                    let mut route_auth = RouteAuth {
                        api_key: false,
                        basic: false,
                        mtls: false,
                        jwt_issuers: Box::new([]),
                        api_key_query: r.api_key_query.as_deref().map(Into::into),
                        forward_credential: r.forward_credential,
                        cache: api_index,
                        challenge_missing: Box::new([]),
                        challenge_invalid: Box::new([]),
                    };
                    let mut issuers = Vec::new();
                    for method in methods {
                        match parse_method(method.get_ref()) {
                            Ok(AuthMethodName::ApiKey) => route_auth.api_key = true,
                            Ok(AuthMethodName::Basic) => route_auth.basic = true,
                            Ok(AuthMethodName::Mtls) => route_auth.mtls = true,
                            Ok(AuthMethodName::Jwt(name)) => {
                                issuers.extend(auth.issuers.iter().position(|i| *i.name == *name))
                            }
                            Err(_) => {}
                        }
                    }
                    route_auth.jwt_issuers = issuers.into();
                    route_auth.challenges(&config.auth.realm);
                    route_auth
                });
                let upstream = upstreams
                    .iter()
                    .position(|u| &u.name == r.upstream.get_ref())
                    .expect("validated: route upstream exists");
                routes.push(Route {
                    api: api.name.get_ref().clone(),
                    key: RouteKey {
                        hosts: r.hosts.iter().map(|h| h.get_ref().clone()).collect(),
                        path: r.path.get_ref().clone(),
                        path_match: r.path_match,
                        methods: r.methods.iter().map(|m| m.get_ref().clone()).collect(),
                    },
                    upstream,
                    strip_prefix: r.strip_prefix,
                    max_body_bytes: match (
                        r.max_body_bytes.unwrap_or(config.limits.max_body_bytes),
                        filter_max_body,
                    ) {
                        (0, Some(filter)) => filter,
                        (limit, Some(filter)) => limit.min(filter),
                        (limit, None) => limit,
                    },
                    client_cert_headers: r.client_cert_headers,
                    access: route_auth.as_ref().map(|_| compile_policy(api_index, r)),
                    pattern: crate::router::PathPattern::parse(
                        r.path.get_ref(),
                        r.path_match == crate::config::PathMatch::Prefix,
                    )
                    .ok()
                    .flatten(),
                    auth: route_auth,
                    id: id.into(),
                    ip: ip.into(),
                    filters: filters.into(),
                    limits: limits.into(),
                });
                route_listeners.push(r.listeners.iter().map(|l| l.get_ref().clone()).collect());
            }
        }
        let listeners = config
            .listeners
            .iter()
            .zip(&config.resolved.listeners)
            .zip(&config.resolved.listener_tls)
            .map(|((l, &address), tls)| {
                let name = l.name.get_ref().clone();
                let served = routes.iter().enumerate().filter(|(i, _)| {
                    route_listeners[*i].is_empty() || route_listeners[*i].contains(&name)
                });
                let router = Router::new(served.map(|(i, r)| (i, &r.key)));
                let slashes = l.escaped_slashes.unwrap_or(config.limits.escaped_slashes);
                Listener {
                    name,
                    address,
                    router,
                    tls: tls.clone(),
                    escaped_slashes: match slashes {
                        crate::config::EscapedSlashesName::Reject => EscapedSlashes::Reject,
                        crate::config::EscapedSlashesName::Decode => EscapedSlashes::Decode,
                        crate::config::EscapedSlashesName::Keep => EscapedSlashes::Keep,
                    },
                    merge_slashes: l.merge_slashes.unwrap_or(config.limits.merge_slashes),
                    proxy_protocol: match l.proxy_protocol {
                        ProxyProtocolName::Off => ProxyProtocol::Off,
                        ProxyProtocolName::Optional => ProxyProtocol::Optional,
                        ProxyProtocolName::Required => ProxyProtocol::Required,
                    },
                    trusted_proxies: IpSet::parse(
                        &l.trusted_proxies
                            .iter()
                            .map(|t| t.get_ref())
                            .collect::<Vec<_>>(),
                    )
                    .unwrap_or_default(),
                    caps: ConnectionCaps {
                        max_connections: l.max_connections,
                        max_connections_per_ip: l.max_connections_per_ip,
                    },
                    ip: l
                        .ip
                        .as_ref()
                        .map(|ip| (*compile_ip(ip)).clone())
                        .unwrap_or_default(),
                }
            })
            .collect();
        let l = &config.limits;
        Snapshot {
            limits: Limits {
                max_head_bytes: l.max_head_bytes,
                max_headers: l.max_headers,
                max_uri_bytes: l.max_uri_bytes,
                head_timeout: l.head_timeout.0,
                idle_timeout: l.idle_timeout.0,
                body_timeout: l.body_timeout.0,
            },
            listeners,
            routes,
            upstreams,
            drain_timeout: config.gateway.drain_timeout.0,
            serial: {
                static SERIAL: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
                SERIAL.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            },
            trace_context: config.logging.trace_context,
            auth,
            token_cache_entries: config.apis.iter().map(|a| a.token_cache.entries).collect(),
            plans: config
                .plans
                .iter()
                .map(|p| Plan {
                    name: p.name.get_ref().as_str().into(),
                    rate: p.rate.as_ref().map(|r| r.get_ref().as_str().into()),
                    quota: p.quota.as_ref().map(|q| q.get_ref().as_str().into()),
                    limits: compile_plan_limits(p),
                })
                .collect(),
            failed_auth: FailureThrottle::new(
                config.auth.failed_auth_limit,
                config.auth.failed_auth_window.0,
            ),
            apis: config
                .apis
                .iter()
                .map(|a| ApiPolicy {
                    name: a.name.get_ref().as_str().into(),
                    tenant: a
                        .tenant
                        .as_ref()
                        .map_or(crate::auth::index::DEFAULT_TENANT, |t| t.get_ref())
                        .into(),
                    shared: a.shared,
                    subscription: match a.subscription {
                        SubscriptionModeName::None => SubscriptionMode::None,
                        SubscriptionModeName::Auto => SubscriptionMode::Auto,
                        SubscriptionModeName::Approval => SubscriptionMode::Approval,
                    },
                })
                .collect(),
        }
    }
}

/// Compiles `rate_limits` and `quotas` (validated) with ids `"{scope} rate_limits[i]"`.
fn compile_limits(
    scope: &str,
    rates: &[RateLimitSection],
    quotas: &[QuotaSection],
) -> Vec<LimitRule> {
    let key = |parts: &toml::Spanned<Vec<toml::Spanned<String>>>| -> Vec<KeyPart> {
        parts
            .get_ref()
            .iter()
            .filter_map(|p| KeyPart::parse(p.get_ref()))
            .collect()
    };
    let mut rules = Vec::new();
    for (i, r) in rates.iter().enumerate() {
        let Ok(rate) = Rate::parse(r.rate.get_ref()) else {
            continue;
        };
        let capacity = r.burst.as_ref().map_or(rate.count, |b| *b.get_ref()).max(1);
        rules.push(LimitRule::new(
            format!("{scope} rate_limits[{i}]"),
            key(&r.key),
            RuleKind::Rate { rate, capacity },
            r.headers,
        ));
    }
    for (i, q) in quotas.iter().enumerate() {
        let Ok(amount) = QuotaAmount::parse(q.limit.get_ref()) else {
            continue;
        };
        rules.push(LimitRule::new(
            format!("{scope} quotas[{i}]"),
            key(&q.key),
            RuleKind::Quota(amount),
            q.headers,
        ));
    }
    rules
}

/// A plan's limits: its `rate_limits` and `quotas`, and `rate` / `quota` as limits keyed by
/// consumer.
fn compile_plan_limits(plan: &crate::config::PlanSection) -> Box<[LimitRule]> {
    let scope = format!("plan {}", plan.name.get_ref());
    let mut rules = compile_limits(&scope, &plan.rate_limits, &plan.quotas);
    if let Some(Ok(rate)) = plan.rate.as_ref().map(|r| Rate::parse(r.get_ref())) {
        rules.push(LimitRule::new(
            format!("{scope} rate"),
            vec![KeyPart::Consumer],
            RuleKind::Rate {
                rate,
                capacity: rate.count,
            },
            false,
        ));
    }
    if let Some(Ok(amount)) = plan.quota.as_ref().map(|q| QuotaAmount::parse(q.get_ref())) {
        rules.push(LimitRule::new(
            format!("{scope} quota"),
            vec![KeyPart::Consumer],
            RuleKind::Quota(amount),
            false,
        ));
    }
    rules.into()
}

fn compile_ip(ip: &IpSection) -> Arc<IpRules> {
    let list = |entries: &[toml::Spanned<String>]| {
        IpSet::parse(&entries.iter().map(|e| e.get_ref()).collect::<Vec<_>>()).unwrap_or_default()
    };
    Arc::new(IpRules {
        allow: list(&ip.allow),
        deny: list(&ip.deny),
    })
}

fn compile_filters(filters: &FiltersSection) -> Arc<RequestFilters> {
    let signatures: Vec<Signature> = filters
        .signatures
        .iter()
        .filter_map(|s| Signature::parse(s.get_ref()))
        .collect();
    Arc::new(RequestFilters {
        methods: filters
            .methods
            .iter()
            .map(|m| m.get_ref().as_str().into())
            .collect(),
        content_types: filters
            .content_types
            .iter()
            .map(|t| t.get_ref().to_ascii_lowercase().into())
            .collect(),
        signatures: (!signatures.is_empty()).then(|| Arc::new(SignatureSet::new(&signatures))),
    })
}

/// A route's scopes, groups and rules (validated: every condition parses).
fn compile_policy(api: usize, r: &RouteSection) -> RoutePolicy {
    let conditions = |list: &[toml::Spanned<String>]| -> Box<[Condition]> {
        list.iter()
            .filter_map(|c| Condition::parse(c.get_ref()).ok())
            .collect()
    };
    RoutePolicy {
        api,
        scopes: r
            .scopes
            .as_ref()
            .map(|s| {
                s.get_ref()
                    .iter()
                    .map(|(method, scopes)| {
                        (
                            method.as_str().into(),
                            scopes.iter().map(|s| s.as_str().into()).collect(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default(),
        groups: r.groups.iter().map(|g| g.as_str().into()).collect(),
        rules: r
            .rules
            .iter()
            .map(|rule| Rule {
                name: rule.name.get_ref().as_str().into(),
                effect: match rule.effect {
                    EffectName::Allow => Effect::Allow,
                    EffectName::Deny => Effect::Deny,
                },
                shadow: rule.mode == ModeName::Shadow,
                when: conditions(&rule.when),
                unless: conditions(&rule.unless),
            })
            .collect(),
    }
}

/// `[auth]` and `[[issuers]]` as the cores use them.
fn compile_auth(config: &Config) -> AuthConfig {
    let issuers: Vec<Issuer> = config
        .issuers
        .iter()
        .map(|i| Issuer {
            name: i.name.get_ref().as_str().into(),
            issuer: i.issuer.get_ref().as_str().into(),
            audiences: i.audiences.iter().map(|a| a.as_str().into()).collect(),
            algorithms: i.allowed_algorithms(),
            leeway: i.leeway.0.as_secs() as i64,
            consumer_claim: i.consumer_claim.as_str().into(),
            required_claims: i
                .required_claims
                .iter()
                .map(|c| c.as_str().into())
                .collect(),
            claim_headers: i
                .claim_headers
                .iter()
                .map(|(claim, header)| (claim.as_str().into(), header.get_ref().as_str().into()))
                .collect(),
            require_consumer: i.require_consumer,
            scopes_claim: i.scopes_claim.as_deref().map(Into::into),
            remote: i.jwks_url.is_some(),
            refetch_cooldown: i.jwks_refetch_cooldown.0,
        })
        .collect();
    let mut identity_fields: Vec<Box<[u8]>> = vec![
        b"x-consumer-id".to_vec().into(),
        b"x-credential-id".to_vec().into(),
    ];
    for issuer in &issuers {
        for (_, header) in issuer.claim_headers.iter() {
            let lower: Box<[u8]> = header.to_ascii_lowercase().into_bytes().into();
            if !identity_fields.contains(&lower) {
                identity_fields.push(lower);
            }
        }
    }
    let a = &config.auth;
    AuthConfig {
        api_key_header: a.api_key_header.to_ascii_lowercase().into_bytes().into(),
        max_token_bytes: a.max_token_bytes,
        basic_cache_ttl: a.basic_cache_ttl.0.as_secs() as i64,
        issuers,
        pepper: config.resolved.pepper.clone(),
        identity_fields,
        jwks_wait: a.jwks_wait.0,
    }
}
