//! The authorization part of the config file: `[[tenants]]`, `[[plans]]`, `[[subscriptions]]`,
//! and the access keys of APIs (`tenant`, `shared`, `subscription`) and routes (`scopes`,
//! `groups`, `[[apis.routes.rules]]`), with their validation.

use super::{parse_rfc3339, Problems};
use crate::access::condition::Condition;
use crate::auth::index::{Subscription, SubscriptionState, DEFAULT_TENANT};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use toml::Spanned;

/// `[[tenants]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantSection {
    pub name: Spanned<String>,
}

/// `[[plans]]`: rate and quota are read by the rate-limit phase.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSection {
    pub name: Spanned<String>,
    /// Shorthand for one rate limit keyed by consumer.
    pub rate: Option<Spanned<String>>,
    /// Shorthand for one quota keyed by consumer.
    pub quota: Option<Spanned<String>>,
    #[serde(default)]
    pub rate_limits: Vec<super::RateLimitSection>,
    #[serde(default)]
    pub quotas: Vec<super::QuotaSection>,
}

/// Subscription states as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionStateName {
    Requested,
    Approved,
    Rejected,
    Revoked,
}

/// `[[subscriptions]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionSection {
    pub consumer: Spanned<String>,
    pub api: Spanned<String>,
    pub state: SubscriptionStateName,
    pub plan: Option<Spanned<String>>,
    pub expires: Option<Spanned<String>>,
}

/// `subscription = "…"` on an API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SubscriptionModeName {
    #[default]
    None,
    Auto,
    Approval,
}

/// A rule's effect as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EffectName {
    Allow,
    Deny,
}

/// A rule's mode as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ModeName {
    #[default]
    Enforce,
    Shadow,
}

/// `[[apis.routes.rules]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleSection {
    pub name: Spanned<String>,
    pub effect: EffectName,
    #[serde(default)]
    pub mode: ModeName,
    #[serde(default)]
    pub when: Vec<Spanned<String>>,
    #[serde(default)]
    pub unless: Vec<Spanned<String>>,
}

/// `[[apis.routes]] scopes = { GET = [...], "*" = [...] }`.
pub type ScopesByMethod = BTreeMap<String, Vec<String>>;

impl super::Config {
    /// Checks tenants, plans, subscriptions and the access keys of APIs and routes; loads the
    /// subscriptions into the credential index.
    pub(super) fn validate_access(&mut self, p: &mut Problems<'_>) {
        let mut tenants = vec![DEFAULT_TENANT.to_string()];
        for tenant in &self.tenants {
            if tenant.name.get_ref() == DEFAULT_TENANT {
                continue;
            }
            super::check_name(p, &tenant.name, "tenants.name", &mut tenants);
        }
        let mut plans = Vec::new();
        for plan in &self.plans {
            super::check_name(p, &plan.name, "plans.name", &mut plans);
            if let Some(rate) = &plan.rate {
                if crate::limit::Rate::parse(rate.get_ref()).is_err() {
                    p.on(
                        rate,
                        format!("plans.rate `{}` must be n/s, n/min or n/h", rate.get_ref()),
                    );
                }
            }
            if let Some(quota) = &plan.quota {
                if crate::limit::QuotaAmount::parse(quota.get_ref()).is_err() {
                    p.on(
                        quota,
                        format!(
                            "plans.quota `{}` must be n/minute, n/hour, n/day or n/month",
                            quota.get_ref()
                        ),
                    );
                }
            }
        }
        // Without [[tenants]], any tenant name is taken as written; with them, names must match.
        let declared = !self.tenants.is_empty();
        for consumer in &self.consumers {
            if let Some(tenant) = &consumer.tenant {
                if declared && !tenants.contains(tenant) {
                    p.on(
                        &consumer.id,
                        format!(
                            "consumer `{}`: tenant `{tenant}` names no [[tenants]]",
                            consumer.id.get_ref()
                        ),
                    );
                }
            }
        }
        for api in &self.apis {
            if let Some(tenant) = &api.tenant {
                if declared && !tenants.contains(tenant.get_ref()) {
                    p.on(
                        tenant,
                        format!("apis.tenant `{}` names no [[tenants]]", tenant.get_ref()),
                    );
                }
            }
            for route in &api.routes {
                let params = crate::router::PathPattern::parse(route.path.get_ref(), true)
                    .ok()
                    .flatten()
                    .map(|p| p.names)
                    .unwrap_or_default();
                let protected = route
                    .auth
                    .as_ref()
                    .or(api.auth.as_ref())
                    .is_some_and(|a| !a.is_empty());
                let has_policy = route
                    .scopes
                    .as_ref()
                    .is_some_and(|s| !s.get_ref().is_empty())
                    || !route.groups.is_empty()
                    || !route.rules.is_empty()
                    || api.subscription != SubscriptionModeName::None;
                if has_policy && !protected {
                    p.on(
                        &route.path,
                        "scopes, groups, rules and subscriptions need authentication: set `auth` on the API or the route".into(),
                    );
                }
                if let Some(scopes) = &route.scopes {
                    for scope in scopes.get_ref().values().flatten() {
                        if scope.is_empty()
                            || !scope
                                .bytes()
                                .all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')
                        {
                            p.on(scopes, format!("apis.routes.scopes: `{scope}` must be visible ASCII without quotes or backslashes"));
                        }
                    }
                    for method in scopes.get_ref().keys() {
                        if method != "*"
                            && (method.is_empty()
                                || !method.bytes().all(|b| b.is_ascii_uppercase()))
                        {
                            p.on(scopes, format!("apis.routes.scopes: `{method}` must be an upper-case method or \"*\""));
                        }
                    }
                }
                let mut names = Vec::new();
                for rule in &route.rules {
                    super::check_name(p, &rule.name, "apis.routes.rules.name", &mut names);
                    let name = rule.name.get_ref();
                    if name.len() > 64
                        || !name.bytes().all(|b| {
                            b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':')
                        })
                    {
                        p.on(
                            &rule.name,
                            "apis.routes.rules.name: at most 64 letters, digits, '-', '_', '.', ':'"
                                .into(),
                        );
                    }
                    if rule.when.is_empty() && rule.unless.is_empty() {
                        p.on(
                            &rule.name,
                            "a rule needs `when` or `unless` conditions".into(),
                        );
                    }
                    for condition in rule.when.iter().chain(&rule.unless) {
                        match Condition::parse(condition.get_ref()) {
                            Err(message) => {
                                p.on(condition, format!("apis.routes.rules: {message}"))
                            }
                            Ok(parsed) => {
                                for name in parsed.path_params() {
                                    if !params.iter().any(|n| &**n == name) {
                                        p.warn_at(
                                            condition.span().start,
                                            format!("rule `{}` reads path.{name}, which the route path `{}` does not have: the condition never holds", rule.name.get_ref(), route.path.get_ref()),
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
                for group in &route.groups {
                    if !self.consumers.iter().any(|c| c.groups.contains(group)) {
                        p.warn_at(
                            route.path.span().start,
                            format!("group `{group}` is held by no [[consumers]]: only consumers added later can pass"),
                        );
                    }
                }
                let methods = route.auth.as_ref().or(api.auth.as_ref());
                let takes_jwt =
                    methods.is_some_and(|m| m.iter().any(|m| m.get_ref().starts_with("jwt:")));
                if let (false, Some(scopes)) = (takes_jwt, &route.scopes) {
                    for scope in scopes.get_ref().values().flatten() {
                        let carried = self
                            .consumers
                            .iter()
                            .flat_map(|c| &c.credentials)
                            .any(|c| c.get_ref().scopes.contains(scope));
                        if !carried {
                            p.warn_at(
                                scopes.span().start,
                                format!("scope `{scope}` is carried by no credential and the route accepts no JWT: requests needing it are always refused"),
                            );
                        }
                    }
                }
            }
        }
        let api_names: Vec<&String> = self.apis.iter().map(|a| a.name.get_ref()).collect();
        let mut index = (*self.resolved.credentials).clone();
        for s in &self.subscriptions {
            if index.consumer(s.consumer.get_ref()).is_none() {
                p.on(
                    &s.consumer,
                    format!(
                        "subscriptions.consumer `{}` names no [[consumers]]",
                        s.consumer.get_ref()
                    ),
                );
            }
            if !api_names.contains(&s.api.get_ref()) {
                p.on(
                    &s.api,
                    format!("subscriptions.api `{}` names no [[apis]]", s.api.get_ref()),
                );
            }
            if let Some(plan) = &s.plan {
                if !plans.contains(plan.get_ref()) {
                    p.on(
                        plan,
                        format!("subscriptions.plan `{}` names no [[plans]]", plan.get_ref()),
                    );
                }
            }
            let expires = match &s.expires {
                Some(text) => match parse_rfc3339(text.get_ref()) {
                    Some(t) => Some(t),
                    None => {
                        p.on(
                            text,
                            format!(
                                "subscriptions.expires `{}` must be an RFC 3339 time",
                                text.get_ref()
                            ),
                        );
                        None
                    }
                },
                None => None,
            };
            let subscription = Subscription {
                consumer: s.consumer.get_ref().as_str().into(),
                api: s.api.get_ref().as_str().into(),
                state: match s.state {
                    SubscriptionStateName::Requested => SubscriptionState::Requested,
                    SubscriptionStateName::Approved => SubscriptionState::Approved,
                    SubscriptionStateName::Rejected => SubscriptionState::Rejected,
                    SubscriptionStateName::Revoked => SubscriptionState::Revoked,
                },
                plan: s.plan.as_ref().map(|p| p.get_ref().as_str().into()),
                expires,
            };
            if index.put_subscription(Arc::new(subscription)).is_some() {
                p.on(
                    &s.consumer,
                    format!(
                        "subscription of `{}` to `{}` is defined twice",
                        s.consumer.get_ref(),
                        s.api.get_ref()
                    ),
                );
            }
        }
        self.resolved.credentials = Arc::new(index);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn amounts() {
        use crate::limit::{QuotaAmount, Rate};
        assert!(Rate::parse("100/s").is_ok());
        assert!(Rate::parse("100/day").is_err());
        assert!(Rate::parse("0/s").is_err());
        assert!(Rate::parse("fast").is_err());
        assert!(QuotaAmount::parse("100/day").is_ok());
        assert!(QuotaAmount::parse("100/s").is_err());
    }
}
