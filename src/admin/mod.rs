//! The admin API: the credential lifecycle (consumers, credentials, rotation, revocation, JWT
//! deny-lists, subscriptions and their approval), the audit trail, status and reload, served on
//! its own listener on the control side.
//!
//! - [`server`]: the listener and HTTP/1.1 exchange (the gateway's own strict head parser).
//! - [`api`]: token authentication, roles, routing and the handlers.
//! - [`plane`]: the control plane's state and change pipeline (store commit → audit copy →
//!   delta to every core → acks).
//! - [`views`]: the JSON shown for each object.
//! - [`tokens`]: admin token generation, hashing and constant-time checking.

pub mod api;
pub mod plane;
pub mod server;
pub mod tokens;
pub mod views;
