//! Authorization (DESIGN §2 phase 6): exactly one access decision per authenticated request,
//! made on its core from the compiled snapshot, in this order: tenant → subscription → groups →
//! scopes for the method → rules (deny first; shadow rules are evaluated and logged, never
//! block). Policies compile once per snapshot ([`RoutePolicy`], [`ApiPolicy`]) and are evaluated
//! without allocation.

pub mod cidr;
pub mod condition;
pub mod time_window;

use crate::auth::index::{CredentialIndex, SubscriptionState};
use crate::auth::Identity;
use condition::{Condition, Facts};
use std::cell::Cell;

/// Why a request was refused: the reason code of the 403 body (and, later, of the access log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    TenantMismatch,
    NotSubscribed,
    SubscriptionPending,
    SubscriptionRejected,
    SubscriptionRevoked,
    SubscriptionExpired,
    InsufficientScope,
    GroupRequired,
    DeniedByRule,
}

impl Reason {
    pub fn code(self) -> &'static str {
        match self {
            Reason::TenantMismatch => "tenant_mismatch",
            Reason::NotSubscribed => "not_subscribed",
            Reason::SubscriptionPending => "subscription_pending",
            Reason::SubscriptionRejected => "subscription_rejected",
            Reason::SubscriptionRevoked => "subscription_revoked",
            Reason::SubscriptionExpired => "subscription_expired",
            Reason::InsufficientScope => "insufficient_scope",
            Reason::GroupRequired => "group_required",
            Reason::DeniedByRule => "denied_by_rule",
        }
    }
}

/// How consumers get access to an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubscriptionMode {
    /// Any consumer of the tenant.
    None,
    /// Subscribed on first use (explicitly rejected or revoked subscriptions still refuse).
    Auto,
    /// Only an approved, unexpired subscription.
    Approval,
}

/// An API's access settings.
#[derive(Debug, Clone)]
pub struct ApiPolicy {
    pub name: Box<str>,
    pub tenant: Box<str>,
    pub shared: bool,
    pub subscription: SubscriptionMode,
}

/// What a rule does when it applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// One rule of a route.
#[derive(Debug, Clone)]
pub struct Rule {
    pub name: Box<str>,
    pub effect: Effect,
    /// Evaluated and logged, never blocks.
    pub shadow: bool,
    /// All must hold for the rule to apply.
    pub when: Box<[Condition]>,
    /// The rule does not apply when all of these hold.
    pub unless: Box<[Condition]>,
}

impl Rule {
    fn applies(&self, facts: &Facts<'_>) -> bool {
        self.when.iter().all(|c| c.holds(facts))
            && (self.unless.is_empty() || !self.unless.iter().all(|c| c.holds(facts)))
    }
}

/// Scopes required per method: `(method or "*", scopes)`.
pub type MethodScopes = Box<[(Box<str>, Box<[Box<str>]>)]>;

/// A route's access requirements.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    /// Index into the snapshot's APIs.
    pub api: usize,
    /// Scopes per method (all-of); `"*"` covers methods not listed.
    pub scopes: MethodScopes,
    /// Any-of.
    pub groups: Box<[Box<str>]>,
    pub rules: Box<[Rule]>,
}

impl RoutePolicy {
    /// The scopes `method` needs.
    pub fn scopes_for(&self, method: &str) -> &[Box<str>] {
        self.scopes
            .iter()
            .find(|(m, _)| &**m == method)
            .or_else(|| self.scopes.iter().find(|(m, _)| &**m == "*"))
            .map_or(&[], |(_, s)| s)
    }
}

/// The outcome of the decision.
#[derive(Debug, PartialEq, Eq)]
pub enum Decision<'p> {
    Allow {
        /// A shadow rule that would have denied.
        shadow_rule: Option<&'p str>,
    },
    Deny {
        reason: Reason,
        /// The deciding rule (for `denied_by_rule`).
        rule: Option<&'p str>,
        /// The scopes the method needs (for `insufficient_scope`).
        scopes: &'p [Box<str>],
    },
}

/// Authorization counters of one core.
#[derive(Default, Debug)]
pub struct AccessCounters {
    pub allowed: Cell<u64>,
    pub denied: Cell<u64>,
    pub shadow_denials: Cell<u64>,
}

/// What the decision reads besides the identity.
pub struct Request<'r> {
    pub method: &'r str,
    pub headers: &'r [httparse::Header<'r>],
    pub client_ip: std::net::IpAddr,
    /// The route's path parameters: (name, value).
    pub path_params: &'r [(&'r str, &'r str)],
    pub now: i64,
}

fn deny<'p>(reason: Reason) -> Decision<'p> {
    Decision::Deny {
        reason,
        rule: None,
        scopes: &[],
    }
}

/// Decides one request.
pub fn decide<'p>(
    api: &'p ApiPolicy,
    route: &'p RoutePolicy,
    identity: &Identity,
    index: &CredentialIndex,
    request: &Request<'_>,
    scratch: &mut String,
) -> Decision<'p> {
    let consumer = &identity.consumer;
    // Tenant: nothing crosses tenants unless the API is shared.
    if !api.shared && *consumer.tenant != *api.tenant {
        return deny(Reason::TenantMismatch);
    }
    // Subscription.
    if api.subscription != SubscriptionMode::None {
        let found = index.subscription(&consumer.id, &api.name, scratch);
        let refused = match found {
            None if api.subscription == SubscriptionMode::Auto => None,
            None => Some(Reason::NotSubscribed),
            Some(s) => match s.state {
                SubscriptionState::Approved if s.expires.is_some_and(|e| e <= request.now) => {
                    Some(Reason::SubscriptionExpired)
                }
                SubscriptionState::Approved => None,
                SubscriptionState::Requested => Some(Reason::SubscriptionPending),
                SubscriptionState::Rejected => Some(Reason::SubscriptionRejected),
                SubscriptionState::Revoked => Some(Reason::SubscriptionRevoked),
            },
        };
        if let Some(reason) = refused {
            return deny(reason);
        }
    }
    // Groups: any-of.
    if !route.groups.is_empty()
        && !route
            .groups
            .iter()
            .any(|g| consumer.groups.iter().any(|have| have == g))
    {
        return deny(Reason::GroupRequired);
    }
    // Scopes for the method: all-of.
    let needed = route.scopes_for(request.method);
    if !needed
        .iter()
        .all(|want| identity.scopes.iter().any(|have| have == want))
    {
        return Decision::Deny {
            reason: Reason::InsufficientScope,
            rule: None,
            scopes: needed,
        };
    }
    // Rules: deny beats allow; with allow rules, one must apply.
    if route.rules.is_empty() {
        return Decision::Allow { shadow_rule: None };
    }
    let facts = Facts {
        identity,
        headers: request.headers,
        client_ip: request.client_ip,
        path_params: request.path_params,
        now: request.now,
    };
    let mut shadow_rule = None;
    let mut allow_rules = false;
    let mut allowed = false;
    for rule in route.rules.iter() {
        match (rule.effect, rule.shadow) {
            (Effect::Deny, false) if rule.applies(&facts) => {
                return Decision::Deny {
                    reason: Reason::DeniedByRule,
                    rule: Some(&rule.name),
                    scopes: &[],
                }
            }
            (Effect::Deny, true) if shadow_rule.is_none() && rule.applies(&facts) => {
                shadow_rule = Some(&*rule.name);
            }
            (Effect::Allow, false) => {
                allow_rules = true;
                allowed = allowed || rule.applies(&facts);
            }
            (Effect::Allow, true) => {}
            _ => {}
        }
    }
    if allow_rules && !allowed {
        return Decision::Deny {
            reason: Reason::DeniedByRule,
            rule: None,
            scopes: &[],
        };
    }
    Decision::Allow { shadow_rule }
}

#[cfg(test)]
mod tests;
