//! The JSON the admin API shows for consumers, credentials and subscriptions, from the store's
//! records or from the config's objects (`source: "config"`). No view carries a secret or a hash.

use crate::auth::index::{Consumer, Credential, CredentialKind, Handle, Subscription};
use crate::store::{subscription_state_name, ConsumerRecord, CredentialRecord, SubscriptionRecord};
use serde_json::{json, Map, Value};

/// RFC 3339 UTC, seconds precision.
pub fn time(unix: i64) -> String {
    let (year, month, day) = crate::limit::rate::civil_from_days(unix.div_euclid(86_400));
    let rest = unix.rem_euclid(86_400);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3600,
        rest / 60 % 60,
        rest % 60
    )
}

fn optional_time(unix: Option<i64>) -> Value {
    unix.map_or(Value::Null, |t| Value::String(time(t)))
}

pub fn consumer_record(record: &ConsumerRecord) -> Value {
    json!({
        "id": record.id,
        "tenant": record.tenant,
        "groups": record.groups,
        "metadata": record.metadata,
        "source": "store",
        "created_at": time(record.created_at),
    })
}

pub fn config_consumer(consumer: &Consumer) -> Value {
    let metadata: Map<String, Value> = consumer
        .metadata
        .iter()
        .map(|(k, v)| (k.to_string(), Value::String(v.to_string())))
        .collect();
    json!({
        "id": &*consumer.id,
        "tenant": &*consumer.tenant,
        "groups": consumer.groups.iter().map(|g| &**g).collect::<Vec<_>>(),
        "metadata": metadata,
        "source": "config",
        "created_at": null,
    })
}

fn state(revoked: bool, expires: Option<i64>, now: i64) -> &'static str {
    if revoked {
        "revoked"
    } else if expires.is_some_and(|e| e <= now) {
        "expired"
    } else {
        "active"
    }
}

fn handle_fields(view: &mut Map<String, Value>, kind: CredentialKind, handle: &Handle) {
    let _ = kind;
    match handle {
        Handle::Basic(user) => {
            view.insert("username".into(), json!(user));
        }
        Handle::Jwt { issuer, subject } => {
            view.insert("issuer".into(), json!(issuer));
            view.insert("subject".into(), json!(subject));
        }
        Handle::MtlsFingerprint(f) => {
            view.insert("fingerprint".into(), json!(f));
        }
        Handle::MtlsName(name) => {
            view.insert("name".into(), json!(name));
        }
        Handle::ApiKey(_) => {}
    }
}

pub fn credential_record(record: &CredentialRecord, now: i64) -> Value {
    let mut view = json!({
        "id": record.id,
        "kind": record.kind.name(),
        "consumer": record.consumer,
        "scopes": record.scopes,
        "expires_at": optional_time(record.expires_at),
        "state": state(record.revoked_at.is_some(), record.expires_at, now),
        "source": "store",
        "created_at": time(record.created_at),
        "revoked_at": optional_time(record.revoked_at),
        "replaced_by": record.replaced_by,
    });
    if let Value::Object(map) = &mut view {
        handle_fields(map, record.kind, &crate::store::index::handle(record));
    }
    view
}

pub fn config_credential(handle: &Handle, credential: &Credential, now: i64) -> Value {
    let mut view = json!({
        "id": &*credential.id,
        "kind": credential.kind.name(),
        "consumer": &*credential.consumer.id,
        "scopes": credential.scopes.iter().map(|s| &**s).collect::<Vec<_>>(),
        "expires_at": optional_time(credential.expires),
        "state": state(credential.revoked, credential.expires, now),
        "source": "config",
        "created_at": null,
        "revoked_at": null,
        "replaced_by": null,
    });
    if let Value::Object(map) = &mut view {
        handle_fields(map, credential.kind, handle);
    }
    view
}

pub fn subscription_record(record: &SubscriptionRecord) -> Value {
    json!({
        "id": record.id,
        "consumer": record.consumer,
        "api": record.api,
        "plan": record.plan,
        "state": subscription_state_name(record.state),
        "source": "store",
        "created_at": time(record.created_at),
        "updated_at": time(record.updated_at),
    })
}

/// The id a config subscription is shown under.
pub fn config_subscription_id(subscription: &Subscription) -> String {
    format!("config:{}:{}", subscription.consumer, subscription.api)
}

pub fn config_subscription(subscription: &Subscription) -> Value {
    json!({
        "id": config_subscription_id(subscription),
        "consumer": &*subscription.consumer,
        "api": &*subscription.api,
        "plan": subscription.plan.as_deref(),
        "state": subscription_state_name(subscription.state),
        "source": "config",
        "created_at": null,
        "updated_at": null,
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_are_rfc3339_utc() {
        assert_eq!(super::time(0), "1970-01-01T00:00:00Z");
        assert_eq!(super::time(1_798_761_600), "2027-01-01T00:00:00Z");
        assert_eq!(
            crate::config::parse_rfc3339(&super::time(1_800_000_123)),
            Some(1_800_000_123)
        );
    }
}
