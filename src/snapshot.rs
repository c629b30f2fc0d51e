//! The compiled, immutable view of a config that the cores serve from: listeners with their
//! routers, routes, upstreams with resolved target addresses, and limits. Built on the control
//! side, shared read-only (`Arc`) by every core, replaced whole on change.

use crate::config::{Balance, Config};
use crate::router::{RouteKey, Router};
use crate::tls::client::UpstreamTls;
use crate::tls::server::ServerTls;
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
}

/// Everything a core needs to serve requests.
#[derive(Debug)]
pub struct Snapshot {
    pub limits: Limits,
    pub listeners: Vec<Listener>,
    pub routes: Vec<Route>,
    pub upstreams: Vec<Upstream>,
    pub drain_timeout: Duration,
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
            })
            .collect();
        let mut routes = Vec::new();
        let mut route_listeners: Vec<Vec<String>> = Vec::new();
        for api in &config.apis {
            for r in &api.routes {
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
                    max_body_bytes: r.max_body_bytes.unwrap_or(config.limits.max_body_bytes),
                    client_cert_headers: r.client_cert_headers,
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
                Listener {
                    name,
                    address,
                    router,
                    tls: tls.clone(),
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
        }
    }
}
