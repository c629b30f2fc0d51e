//! Credentialflow: an edge API gateway on an io_uring thread-per-core data plane.
//!
//! Module map (see `docs/ARCHITECTURE.md`): [`config`] reads the TOML file, [`snapshot`] compiles
//! it into the immutable view the cores serve from, [`router`] selects routes, [`http`] holds the
//! strict HTTP/1.1 wire rules, [`proxy`] is one core's request path, [`upstream`] the per-core
//! pools and health, [`runtime`] the worker threads, [`control`] the process lifecycle,
//! [`demo`] the built-in demo upstream, [`observe`] logging, [`auth`] and [`access`] the
//! authentication and authorization phases, [`filter`] the client address and request filters,
//! [`limit`] rate limits and quotas, [`admin`] the admin API and control plane, [`store`] the
//! durable store of the credential lifecycle.

pub mod access;
pub mod admin;
pub mod auth;
pub mod cli;
pub mod config;
pub mod control;
pub mod demo;
pub mod filter;
pub mod http;
pub mod limit;
pub mod observe;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod snapshot;
pub mod store;
pub mod tls;
pub mod upstream;
