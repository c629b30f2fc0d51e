//! How store records become credential-index entries: at start and reload the whole store is laid
//! over the config's index ([`lay_over`]); after each admin write only the written records are
//! ([`apply`]). Config objects win: a store object whose id or handle the config also declares
//! is left out, with a warning.

use super::{
    ConsumerRecord, CredentialRecord, JwtRevocationRecord, StoreContents, SubscriptionRecord, Write,
};
use crate::auth::basic::PasswordHash;
use crate::auth::index::{
    Consumer, Credential, CredentialIndex, CredentialKind, Handle, Secret, Subscription,
};
use crate::auth::{api_key, mtls};
use std::sync::Arc;

/// The index handle of a stored credential.
pub fn handle(record: &CredentialRecord) -> Handle {
    match record.kind {
        CredentialKind::ApiKey => Handle::ApiKey(record.handle.clone()),
        CredentialKind::Basic => Handle::Basic(record.handle.clone()),
        CredentialKind::Mtls => match mtls::normalize_fingerprint(&record.handle) {
            Some(fingerprint) => Handle::MtlsFingerprint(fingerprint),
            None => Handle::MtlsName(record.handle.clone()),
        },
        CredentialKind::Jwt => {
            let (issuer, subject) = record
                .handle
                .split_once('\n')
                .unwrap_or((record.handle.as_str(), ""));
            Handle::Jwt {
                issuer: issuer.to_string(),
                subject: subject.to_string(),
            }
        }
    }
}

pub fn consumer(record: &ConsumerRecord) -> Arc<Consumer> {
    Arc::new(Consumer::new(
        &record.id,
        &record.tenant,
        &record.groups,
        &record.metadata,
    ))
}

/// The index entry of a stored credential, owned by `consumer`.
pub fn credential(
    record: &CredentialRecord,
    consumer: Arc<Consumer>,
) -> Result<Credential, String> {
    let secret = match record.kind {
        CredentialKind::ApiKey => Secret::ApiKey(
            api_key::parse_hash_hex(&record.secret)
                .ok_or_else(|| format!("credential {}: unreadable key hash", record.id))?,
        ),
        CredentialKind::Basic => Secret::Basic(
            PasswordHash::parse(&record.secret)
                .map_err(|e| format!("credential {}: {e}", record.id))?,
        ),
        CredentialKind::Jwt | CredentialKind::Mtls => Secret::None,
    };
    Ok(Credential {
        id: record.id.as_str().into(),
        kind: record.kind,
        consumer,
        secret,
        scopes: record.scopes.iter().map(|s| s.as_str().into()).collect(),
        expires: record.expires_at,
        revoked: record.revoked_at.is_some(),
    })
}

pub fn subscription(record: &SubscriptionRecord) -> Subscription {
    Subscription {
        consumer: record.consumer.as_str().into(),
        api: record.api.as_str().into(),
        state: record.state,
        plan: record.plan.as_deref().map(Into::into),
        expires: None,
    }
}

fn revoke_jwt(index: &mut CredentialIndex, record: &JwtRevocationRecord) {
    index.revoke_jwt(
        &record.issuer,
        record.claim.name(),
        &record.value,
        record.until,
    );
}

/// Lays the whole store over `index` (built from the config); returns a warning per store
/// object left out.
pub fn lay_over(index: &mut CredentialIndex, contents: &StoreContents) -> Vec<String> {
    let mut warnings = Vec::new();
    let mut left_out = std::collections::HashSet::new();
    for record in &contents.consumers {
        if let Err(error) = index.add_consumer(consumer(record)) {
            warnings.push(format!(
                "store consumer left out: {error} (also in the config)"
            ));
            left_out.insert(record.id.as_str());
        }
    }
    let mut lookup = String::new();
    for record in &contents.credentials {
        if left_out.contains(record.consumer.as_str()) {
            // Its consumer is shadowed by a config consumer of the same id: attaching the
            // credential to that one would let it authenticate as someone else.
            warnings.push(format!(
                "store credential {} left out: its consumer {} is shadowed by the config",
                record.id, record.consumer
            ));
            continue;
        }
        let owner = match index.consumer(&record.consumer) {
            Some(owner) => owner.clone(),
            // A deleted consumer's credentials are all revoked: they stay in the index (with a
            // bare consumer) so they keep being refused as `revoked`.
            None if record.revoked_at.is_some() => Arc::new(Consumer::bare(&record.consumer)),
            None => {
                warnings.push(format!(
                    "store credential {} left out: its consumer {} does not exist",
                    record.id, record.consumer
                ));
                continue;
            }
        };
        match credential(record, owner) {
            Ok(entry) => {
                if let Err(error) = index.add(handle(record), Arc::new(entry)) {
                    warnings.push(format!(
                        "store credential {} left out: {error} (also in the config)",
                        record.id
                    ));
                }
            }
            Err(error) => warnings.push(format!("store credential left out: {error}")),
        }
    }
    for record in &contents.subscriptions {
        if index
            .subscription(&record.consumer, &record.api, &mut lookup)
            .is_some()
        {
            warnings.push(format!(
                "store subscription {} left out: the config declares {} on {}",
                record.id, record.consumer, record.api
            ));
            continue;
        }
        index.put_subscription(Arc::new(subscription(record)));
    }
    for record in &contents.jwt_revocations {
        revoke_jwt(index, record);
    }
    warnings
}

/// Applies one committed write to `index`.
pub fn apply(index: &mut CredentialIndex, write: &Write) -> Result<(), String> {
    match write {
        Write::Consumer(record) if record.deleted_at.is_some() => {
            index.remove_consumer(&record.id);
        }
        Write::Consumer(record) => index.put_consumer(consumer(record)),
        Write::Credential(record) => {
            let handle = handle(record);
            if let Some(existing) = index.get(&handle) {
                if *existing.id != *record.id {
                    return Err(format!(
                        "credential {}: its handle is held by credential {} (from the config)",
                        record.id, existing.id
                    ));
                }
            }
            let owner = index
                .consumer(&record.consumer)
                .cloned()
                .or_else(|| index.get(&handle).map(|c| c.consumer.clone()))
                .ok_or_else(|| format!("consumer {} is not in the index", record.consumer))?;
            let entry = credential(record, owner)?;
            index.put(handle, Arc::new(entry));
        }
        Write::Subscription(record) => {
            index.put_subscription(Arc::new(subscription(record)));
        }
        Write::JwtRevocation(record) => revoke_jwt(index, record),
    }
    Ok(())
}
