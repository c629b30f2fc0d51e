//! Tests of the access decision: its order, every reason code, scopes per method, groups,
//! conditions, deny beating allow, and shadow rules.

use super::*;
use crate::auth::index::{Consumer, Subscription};
use crate::auth::{Identity, Method};
use std::sync::Arc;

fn identity(tenant: &str, groups: &[&str], scopes: &[&str], claims: &[(&str, &str)]) -> Identity {
    Identity {
        method: Method::Jwt,
        consumer: Arc::new(Consumer {
            id: "acme-app".into(),
            tenant: tenant.into(),
            groups: groups.iter().map(|g| (*g).into()).collect(),
            metadata: Box::new([("tier".into(), "gold".into())]),
        }),
        credential_id: "jwt:corp".into(),
        scopes: scopes.iter().map(|s| (*s).into()).collect(),
        issuer: Some(0),
        claims: claims
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect(),
        upstream_fields: Box::new([]),
    }
}

fn api(mode: SubscriptionMode, shared: bool) -> ApiPolicy {
    ApiPolicy {
        name: "orders".into(),
        tenant: "acme".into(),
        shared,
        subscription: mode,
    }
}

fn route(rules: Vec<Rule>) -> RoutePolicy {
    RoutePolicy {
        api: 0,
        scopes: Box::new([
            ("GET".into(), Box::new(["orders:read".into()])),
            ("*".into(), Box::new(["orders:admin".into()])),
        ]),
        groups: Box::new(["partners".into(), "staff".into()]),
        rules: rules.into(),
    }
}

fn rule(name: &str, effect: Effect, shadow: bool, when: &[&str], unless: &[&str]) -> Rule {
    Rule {
        name: name.into(),
        effect,
        shadow,
        when: when
            .iter()
            .map(|c| condition::Condition::parse(c).unwrap())
            .collect(),
        unless: unless
            .iter()
            .map(|c| condition::Condition::parse(c).unwrap())
            .collect(),
    }
}

fn subscribed(state: SubscriptionState, expires: Option<i64>) -> CredentialIndex {
    let mut index = CredentialIndex::default();
    index.put_subscription(Arc::new(Subscription {
        consumer: "acme-app".into(),
        api: "orders".into(),
        state,
        plan: None,
        expires,
    }));
    index
}

fn run(
    api: &ApiPolicy,
    route: &RoutePolicy,
    id: &Identity,
    index: &CredentialIndex,
    method: &str,
    ip: &str,
) -> Result<Option<String>, (Reason, Option<String>)> {
    let request = Request {
        method,
        headers: &[],
        client_ip: ip.parse().unwrap(),
        path_params: &[("tenant", "acme")],
        now: 1_000,
    };
    match decide(api, route, id, index, &request, &mut String::new()) {
        Decision::Allow { shadow_rule } => Ok(shadow_rule.map(str::to_string)),
        Decision::Deny { reason, rule, .. } => Err((reason, rule.map(str::to_string))),
    }
}

#[test]
fn every_reason_in_order() {
    let ok = identity("acme", &["partners"], &["orders:read"], &[]);
    let none = CredentialIndex::default();
    let r = route(vec![]);
    let plain = api(SubscriptionMode::None, false);
    assert_eq!(run(&plain, &r, &ok, &none, "GET", "10.0.0.1"), Ok(None));
    let other = identity("globex", &["partners"], &["orders:read"], &[]);
    assert_eq!(
        run(&plain, &r, &other, &none, "GET", "10.0.0.1")
            .unwrap_err()
            .0,
        Reason::TenantMismatch
    );
    assert!(
        run(
            &api(SubscriptionMode::None, true),
            &r,
            &other,
            &none,
            "GET",
            "10.0.0.1"
        )
        .is_ok(),
        "shared API"
    );
    let approval = api(SubscriptionMode::Approval, false);
    for (index, reason) in [
        (CredentialIndex::default(), Some(Reason::NotSubscribed)),
        (
            subscribed(SubscriptionState::Requested, None),
            Some(Reason::SubscriptionPending),
        ),
        (
            subscribed(SubscriptionState::Rejected, None),
            Some(Reason::SubscriptionRejected),
        ),
        (
            subscribed(SubscriptionState::Revoked, None),
            Some(Reason::SubscriptionRevoked),
        ),
        (
            subscribed(SubscriptionState::Approved, Some(999)),
            Some(Reason::SubscriptionExpired),
        ),
        (subscribed(SubscriptionState::Approved, Some(2_000)), None),
        (subscribed(SubscriptionState::Approved, None), None),
    ] {
        let got = run(&approval, &r, &ok, &index, "GET", "10.0.0.1")
            .err()
            .map(|e| e.0);
        assert_eq!(got, reason);
    }
    let auto = api(SubscriptionMode::Auto, false);
    assert!(run(&auto, &r, &ok, &none, "GET", "10.0.0.1").is_ok());
    assert_eq!(
        run(
            &auto,
            &r,
            &ok,
            &subscribed(SubscriptionState::Revoked, None),
            "GET",
            "10.0.0.1"
        )
        .unwrap_err()
        .0,
        Reason::SubscriptionRevoked
    );
    let outsider = identity("acme", &["guests"], &["orders:read"], &[]);
    assert_eq!(
        run(&plain, &r, &outsider, &none, "GET", "10.0.0.1")
            .unwrap_err()
            .0,
        Reason::GroupRequired
    );
}

#[test]
fn scopes_are_per_method_with_a_fallback() {
    let none = CredentialIndex::default();
    let plain = api(SubscriptionMode::None, false);
    let r = route(vec![]);
    let reader = identity("acme", &["staff"], &["orders:read"], &[]);
    assert!(run(&plain, &r, &reader, &none, "GET", "10.0.0.1").is_ok());
    assert_eq!(
        run(&plain, &r, &reader, &none, "DELETE", "10.0.0.1")
            .unwrap_err()
            .0,
        Reason::InsufficientScope
    );
    let admin = identity("acme", &["staff"], &["orders:admin"], &[]);
    assert!(run(&plain, &r, &admin, &none, "DELETE", "10.0.0.1").is_ok());
    assert_eq!(
        run(&plain, &r, &admin, &none, "GET", "10.0.0.1")
            .unwrap_err()
            .0,
        Reason::InsufficientScope,
        "GET needs its own scopes"
    );
    assert_eq!(&*r.scopes_for("POST")[0], "orders:admin");
}

#[test]
fn rules_deny_beats_allow_and_shadow_never_blocks() {
    let none = CredentialIndex::default();
    let plain = api(SubscriptionMode::None, false);
    let me = identity(
        "acme",
        &["staff"],
        &["orders:read"],
        &[("tenant_id", "acme")],
    );
    let own_tenant = rule(
        "own-tenant-only",
        Effect::Deny,
        false,
        &[],
        &["claims.tenant_id == consumer.tenant"],
    );
    assert!(run(
        &plain,
        &route(vec![own_tenant.clone()]),
        &me,
        &none,
        "GET",
        "10.0.0.1"
    )
    .is_ok());
    let stranger = identity(
        "acme",
        &["staff"],
        &["orders:read"],
        &[("tenant_id", "globex")],
    );
    assert_eq!(
        run(
            &plain,
            &route(vec![own_tenant]),
            &stranger,
            &none,
            "GET",
            "10.0.0.1"
        ),
        Err((Reason::DeniedByRule, Some("own-tenant-only".into())))
    );
    let office = rule(
        "office",
        Effect::Allow,
        false,
        &["client_ip in 10.0.0.0/8"],
        &[],
    );
    let gold = rule(
        "not-gold",
        Effect::Deny,
        false,
        &["consumer.metadata.tier in ['gold']"],
        &[],
    );
    assert_eq!(
        run(
            &plain,
            &route(vec![office.clone(), gold]),
            &me,
            &none,
            "GET",
            "10.1.2.3"
        )
        .unwrap_err()
        .1
        .as_deref(),
        Some("not-gold"),
        "deny beats allow"
    );
    assert!(run(
        &plain,
        &route(vec![office.clone()]),
        &me,
        &none,
        "GET",
        "10.1.2.3"
    )
    .is_ok());
    assert_eq!(
        run(&plain, &route(vec![office]), &me, &none, "GET", "192.0.2.1")
            .unwrap_err()
            .0,
        Reason::DeniedByRule,
        "no allow rule applies"
    );
    let shadow = rule(
        "would-deny",
        Effect::Deny,
        true,
        &["client_ip in 192.0.2.0/24"],
        &[],
    );
    assert_eq!(
        run(&plain, &route(vec![shadow]), &me, &none, "GET", "192.0.2.1"),
        Ok(Some("would-deny".into()))
    );
}
