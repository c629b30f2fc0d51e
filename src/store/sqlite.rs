//! The embedded store: one SQLite file (bundled SQLite, WAL journal, `synchronous=FULL`), created
//! and migrated on open. Each commit is one transaction holding the object writes and the audit
//! record that seals them into the chain.

use super::audit::{self, AuditEntry, AuditRecord};
use super::{
    credential_kind_from_name, subscription_state_from_name, subscription_state_name, AuditQuery,
    ConsumerRecord, CredentialRecord, JwtRevocationRecord, RevokedClaim, Store, StoreContents,
    StoreError, SubscriptionRecord, Write,
};
use crate::auth::index::{CredentialKind, SubscriptionState};
use rusqlite::{params, Connection, OptionalExtension, Row};
use std::path::{Path, PathBuf};

/// Schema migrations, in order; `PRAGMA user_version` is the number applied.
const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE consumers (
    id TEXT PRIMARY KEY,
    tenant TEXT NOT NULL,
    groups_json TEXT NOT NULL,
    metadata_json TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    deleted_at INTEGER
);
CREATE TABLE credentials (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    kind TEXT NOT NULL,
    handle TEXT NOT NULL,
    secret TEXT NOT NULL,
    scopes_json TEXT NOT NULL,
    expires_at INTEGER,
    revoked_at INTEGER,
    created_at INTEGER NOT NULL,
    replaced_by TEXT
);
CREATE UNIQUE INDEX credentials_by_handle ON credentials (kind, handle);
CREATE INDEX credentials_by_consumer ON credentials (consumer);
CREATE TABLE subscriptions (
    id TEXT PRIMARY KEY,
    consumer TEXT NOT NULL,
    api TEXT NOT NULL,
    plan TEXT,
    state TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE UNIQUE INDEX subscriptions_by_pair ON subscriptions (consumer, api);
CREATE INDEX subscriptions_by_state ON subscriptions (state, id);
CREATE TABLE jwt_revocations (
    id TEXT PRIMARY KEY,
    issuer TEXT NOT NULL,
    claim TEXT NOT NULL,
    value TEXT NOT NULL,
    until INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY,
    ts_us INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    object TEXT NOT NULL,
    before_json TEXT,
    after_json TEXT,
    prev_hash TEXT NOT NULL,
    hash TEXT NOT NULL
);
CREATE INDEX audit_by_time ON audit (ts_us);
"#];

/// The SQLite store.
pub struct SqliteStore {
    connection: Connection,
    path: PathBuf,
}

fn engine(error: rusqlite::Error) -> StoreError {
    StoreError::Engine(error.to_string())
}

fn to_json<T: serde::Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".into())
}

fn from_json<T: serde::de::DeserializeOwned>(text: &str, what: &str) -> rusqlite::Result<T> {
    serde_json::from_str(text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(
            0,
            rusqlite::types::Type::Text,
            format!("{what}: {e}").into(),
        )
    })
}

fn bad(what: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(
        0,
        rusqlite::types::Type::Text,
        format!("unknown {what} `{value}`").into(),
    )
}

fn consumer_row(row: &Row<'_>) -> rusqlite::Result<ConsumerRecord> {
    Ok(ConsumerRecord {
        id: row.get(0)?,
        tenant: row.get(1)?,
        groups: from_json(&row.get::<_, String>(2)?, "groups")?,
        metadata: from_json(&row.get::<_, String>(3)?, "metadata")?,
        created_at: row.get(4)?,
        deleted_at: row.get(5)?,
    })
}

const CONSUMER_COLUMNS: &str = "id, tenant, groups_json, metadata_json, created_at, deleted_at";

fn credential_row(row: &Row<'_>) -> rusqlite::Result<CredentialRecord> {
    let kind: String = row.get(2)?;
    Ok(CredentialRecord {
        id: row.get(0)?,
        consumer: row.get(1)?,
        kind: credential_kind_from_name(&kind).ok_or_else(|| bad("credential kind", &kind))?,
        handle: row.get(3)?,
        secret: row.get(4)?,
        scopes: from_json(&row.get::<_, String>(5)?, "scopes")?,
        expires_at: row.get(6)?,
        revoked_at: row.get(7)?,
        created_at: row.get(8)?,
        replaced_by: row.get(9)?,
    })
}

const CREDENTIAL_COLUMNS: &str =
    "id, consumer, kind, handle, secret, scopes_json, expires_at, revoked_at, created_at, replaced_by";

fn subscription_row(row: &Row<'_>) -> rusqlite::Result<SubscriptionRecord> {
    let state: String = row.get(4)?;
    Ok(SubscriptionRecord {
        id: row.get(0)?,
        consumer: row.get(1)?,
        api: row.get(2)?,
        plan: row.get(3)?,
        state: subscription_state_from_name(&state)
            .ok_or_else(|| bad("subscription state", &state))?,
        created_at: row.get(5)?,
        updated_at: row.get(6)?,
    })
}

const SUBSCRIPTION_COLUMNS: &str = "id, consumer, api, plan, state, created_at, updated_at";

fn revocation_row(row: &Row<'_>) -> rusqlite::Result<JwtRevocationRecord> {
    let claim: String = row.get(2)?;
    Ok(JwtRevocationRecord {
        id: row.get(0)?,
        issuer: row.get(1)?,
        claim: RevokedClaim::from_name(&claim).ok_or_else(|| bad("revoked claim", &claim))?,
        value: row.get(3)?,
        until: row.get(4)?,
        created_at: row.get(5)?,
    })
}

fn audit_row(row: &Row<'_>) -> rusqlite::Result<AuditRecord> {
    let json = |text: Option<String>, what| -> rusqlite::Result<Option<serde_json::Value>> {
        text.map(|t| from_json(&t, what)).transpose()
    };
    Ok(AuditRecord {
        seq: row.get::<_, i64>(0)? as u64,
        entry: AuditEntry {
            ts_us: row.get(1)?,
            actor: row.get(2)?,
            action: row.get(3)?,
            object: row.get(4)?,
            before: json(row.get(5)?, "before")?,
            after: json(row.get(6)?, "after")?,
        },
        prev_hash: row.get(7)?,
        hash: row.get(8)?,
    })
}

impl SqliteStore {
    /// Opens (creating and migrating) the store at `path`.
    pub fn open(path: &Path) -> Result<SqliteStore, StoreError> {
        let failed = |message: String| StoreError::Open {
            path: path.display().to_string(),
            message,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| failed(e.to_string()))?;
        }
        let connection = Connection::open(path).map_err(|e| failed(e.to_string()))?;
        let mode: String = connection
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(|e| failed(e.to_string()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(failed(format!("cannot use the WAL journal (got `{mode}`)")));
        }
        connection
            .execute_batch(
                "PRAGMA synchronous=FULL; PRAGMA foreign_keys=OFF; PRAGMA busy_timeout=5000;",
            )
            .map_err(|e| failed(e.to_string()))?;
        let mut store = SqliteStore {
            connection,
            path: path.to_path_buf(),
        };
        store.migrate().map_err(|e| failed(e.to_string()))?;
        Ok(store)
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let version: i64 = self
            .connection
            .query_row("PRAGMA user_version", [], |row| row.get(0))
            .map_err(engine)?;
        if version as usize > MIGRATIONS.len() {
            return Err(StoreError::Engine(format!(
                "schema version {version} is newer than this build knows ({})",
                MIGRATIONS.len()
            )));
        }
        for (at, migration) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            let tx = self.connection.transaction().map_err(engine)?;
            tx.execute_batch(migration).map_err(engine)?;
            tx.execute_batch(&format!("PRAGMA user_version = {}", at + 1))
                .map_err(engine)?;
            tx.commit().map_err(engine)?;
        }
        Ok(())
    }

    /// Every audit record in order (for `audit verify`).
    pub fn all_audit(&self) -> Result<Vec<AuditRecord>, StoreError> {
        let mut statement = self
            .connection
            .prepare("SELECT seq, ts_us, actor, action, object, before_json, after_json, prev_hash, hash FROM audit ORDER BY seq")
            .map_err(engine)?;
        let rows = statement.query_map([], audit_row).map_err(engine)?;
        rows.collect::<Result<_, _>>().map_err(engine)
    }

    fn list<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Vec<T>, StoreError> {
        let mut statement = self.connection.prepare_cached(sql).map_err(engine)?;
        let rows = statement.query_map(params, map).map_err(engine)?;
        rows.collect::<Result<_, _>>().map_err(engine)
    }

    fn one<T>(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
        map: fn(&Row<'_>) -> rusqlite::Result<T>,
    ) -> Result<Option<T>, StoreError> {
        let mut statement = self.connection.prepare_cached(sql).map_err(engine)?;
        statement.query_row(params, map).optional().map_err(engine)
    }
}

/// `INSERT … ON CONFLICT(id) DO UPDATE`: replaces the row with the same id, while any other unique
/// index (a credential handle, a consumer-API pair) still refuses a second row.
fn upsert(table: &str, columns: &str) -> String {
    let names: Vec<&str> = columns.split(',').map(str::trim).collect();
    let values: Vec<String> = (1..=names.len()).map(|i| format!("?{i}")).collect();
    let updates: Vec<String> = names
        .iter()
        .filter(|n| **n != "id")
        .map(|n| format!("{n} = excluded.{n}"))
        .collect();
    format!(
        "INSERT INTO {table} ({columns}) VALUES ({}) ON CONFLICT(id) DO UPDATE SET {}",
        values.join(", "),
        updates.join(", ")
    )
}

fn write(tx: &rusqlite::Transaction<'_>, change: &Write) -> rusqlite::Result<()> {
    match change {
        Write::Consumer(c) => tx.execute(
            &upsert("consumers", CONSUMER_COLUMNS),
            params![
                c.id,
                c.tenant,
                to_json(&c.groups),
                to_json(&c.metadata),
                c.created_at,
                c.deleted_at
            ],
        ),
        Write::Credential(c) => tx.execute(
            &upsert("credentials", CREDENTIAL_COLUMNS),
            params![
                c.id,
                c.consumer,
                c.kind.name(),
                c.handle,
                c.secret,
                to_json(&c.scopes),
                c.expires_at,
                c.revoked_at,
                c.created_at,
                c.replaced_by
            ],
        ),
        Write::Subscription(s) => tx.execute(
            &upsert("subscriptions", SUBSCRIPTION_COLUMNS),
            params![
                s.id,
                s.consumer,
                s.api,
                s.plan,
                subscription_state_name(s.state),
                s.created_at,
                s.updated_at
            ],
        ),
        Write::JwtRevocation(r) => tx.execute(
            &upsert(
                "jwt_revocations",
                "id, issuer, claim, value, until, created_at",
            ),
            params![
                r.id,
                r.issuer,
                r.claim.name(),
                r.value,
                r.until,
                r.created_at
            ],
        ),
    }
    .map(|_| ())
}

impl Store for SqliteStore {
    fn load(&mut self, now: i64) -> Result<StoreContents, StoreError> {
        let corrupt = |e: StoreError| match e {
            StoreError::Engine(message) => StoreError::Corrupt(message),
            other => other,
        };
        Ok(StoreContents {
            consumers: self
                .list(
                    &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE deleted_at IS NULL"),
                    [],
                    consumer_row,
                )
                .map_err(corrupt)?,
            credentials: self
                .list(
                    &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials"),
                    [],
                    credential_row,
                )
                .map_err(corrupt)?,
            subscriptions: self
                .list(
                    &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions"),
                    [],
                    subscription_row,
                )
                .map_err(corrupt)?,
            jwt_revocations: self
                .list(
                    "SELECT id, issuer, claim, value, until, created_at FROM jwt_revocations WHERE until > ?1",
                    [now],
                    revocation_row,
                )
                .map_err(corrupt)?,
        })
    }

    fn commit(&mut self, writes: &[Write], entry: AuditEntry) -> Result<AuditRecord, StoreError> {
        let tx = self.connection.transaction().map_err(engine)?;
        let last: Option<(i64, String)> = tx
            .query_row(
                "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
                [],
                |row| Ok((row.get(0)?, row.get(1)?)),
            )
            .optional()
            .map_err(engine)?;
        let (seq, prev) = match &last {
            Some((seq, hash)) => (*seq as u64 + 1, hash.as_str()),
            None => (1, audit::GENESIS),
        };
        let record = audit::seal(seq, entry, prev);
        for change in writes {
            write(&tx, change).map_err(engine)?;
        }
        let e = &record.entry;
        tx.execute(
            "INSERT INTO audit (seq, ts_us, actor, action, object, before_json, after_json, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            params![
                record.seq as i64,
                e.ts_us,
                e.actor,
                e.action,
                e.object,
                e.before.as_ref().map(|v| v.to_string()),
                e.after.as_ref().map(|v| v.to_string()),
                record.prev_hash,
                record.hash
            ],
        )
        .map_err(engine)?;
        tx.commit().map_err(engine)?;
        Ok(record)
    }

    fn consumer(&self, id: &str) -> Result<Option<ConsumerRecord>, StoreError> {
        self.one(
            &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE id = ?1"),
            [id],
            consumer_row,
        )
    }

    fn consumers(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<ConsumerRecord>, StoreError> {
        self.list(
            &format!("SELECT {CONSUMER_COLUMNS} FROM consumers WHERE deleted_at IS NULL AND id > ?1 ORDER BY id LIMIT ?2"),
            params![after.unwrap_or(""), limit as i64],
            consumer_row,
        )
    }

    fn credential(&self, id: &str) -> Result<Option<CredentialRecord>, StoreError> {
        self.one(
            &format!("SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE id = ?1"),
            [id],
            credential_row,
        )
    }

    fn credential_by_handle(
        &self,
        kind: CredentialKind,
        handle: &str,
    ) -> Result<Option<CredentialRecord>, StoreError> {
        self.one(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE kind = ?1 AND handle = ?2"
            ),
            [kind.name(), handle],
            credential_row,
        )
    }

    fn credentials_of(&self, consumer: &str) -> Result<Vec<CredentialRecord>, StoreError> {
        self.list(
            &format!(
                "SELECT {CREDENTIAL_COLUMNS} FROM credentials WHERE consumer = ?1 ORDER BY created_at, id"
            ),
            [consumer],
            credential_row,
        )
    }

    fn subscription(&self, id: &str) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.one(
            &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id = ?1"),
            [id],
            subscription_row,
        )
    }

    fn subscription_for(
        &self,
        consumer: &str,
        api: &str,
    ) -> Result<Option<SubscriptionRecord>, StoreError> {
        self.one(
            &format!(
                "SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE consumer = ?1 AND api = ?2"
            ),
            [consumer, api],
            subscription_row,
        )
    }

    fn subscriptions(
        &self,
        state: Option<SubscriptionState>,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<SubscriptionRecord>, StoreError> {
        let after = after.unwrap_or("");
        match state {
            Some(state) => self.list(
                &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE state = ?1 AND id > ?2 ORDER BY id LIMIT ?3"),
                params![subscription_state_name(state), after, limit as i64],
                subscription_row,
            ),
            None => self.list(
                &format!("SELECT {SUBSCRIPTION_COLUMNS} FROM subscriptions WHERE id > ?1 ORDER BY id LIMIT ?2"),
                params![after, limit as i64],
                subscription_row,
            ),
        }
    }

    fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditRecord>, StoreError> {
        self.list(
            "SELECT seq, ts_us, actor, action, object, before_json, after_json, prev_hash, hash FROM audit \
             WHERE ts_us >= ?1 AND seq > ?2 AND (?3 IS NULL OR actor = ?3) ORDER BY seq LIMIT ?4",
            params![
                query.since_us.unwrap_or(i64::MIN),
                query.after_seq.unwrap_or(0) as i64,
                query.actor,
                query.limit as i64
            ],
            audit_row,
        )
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }

    fn size_bytes(&self) -> u64 {
        let size = |p: &Path| std::fs::metadata(p).map_or(0, |m| m.len());
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        size(&self.path) + size(Path::new(&wal))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn temp(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("cflow-store-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir.join("store.db")
    }

    fn entry(action: &str) -> AuditEntry {
        AuditEntry {
            ts_us: 1_800_000_000_000_000,
            actor: "ops".into(),
            action: action.into(),
            object: "consumer/app".into(),
            before: None,
            after: Some(json!({"id": "app"})),
        }
    }

    #[test]
    fn writes_survive_reopening_and_the_audit_chain_verifies() {
        let path = temp("reopen");
        {
            let mut store = SqliteStore::open(&path).unwrap();
            let consumer = ConsumerRecord {
                id: "app".into(),
                tenant: "acme".into(),
                groups: vec!["g".into()],
                metadata: [("tier".to_string(), "gold".to_string())].into(),
                created_at: 10,
                deleted_at: None,
            };
            store
                .commit(&[Write::Consumer(consumer)], entry("consumer.create"))
                .unwrap();
            let credential = CredentialRecord {
                id: "k1".into(),
                consumer: "app".into(),
                kind: CredentialKind::ApiKey,
                handle: "k1".into(),
                secret: "00".repeat(32),
                scopes: vec!["read".into()],
                expires_at: None,
                revoked_at: None,
                created_at: 11,
                replaced_by: None,
            };
            store
                .commit(&[Write::Credential(credential)], entry("credential.create"))
                .unwrap();
        }
        let mut store = SqliteStore::open(&path).unwrap();
        let contents = store.load(0).unwrap();
        assert_eq!(contents.consumers.len(), 1);
        assert_eq!(contents.consumers[0].metadata["tier"], "gold");
        assert_eq!(contents.credentials[0].scopes, vec!["read".to_string()]);
        assert!(store
            .credential_by_handle(CredentialKind::ApiKey, "k1")
            .unwrap()
            .is_some());
        let trail = store.all_audit().unwrap();
        assert_eq!(audit::verify(&trail), Ok(2));
        let query = AuditQuery {
            actor: Some("nobody".into()),
            limit: 10,
            ..AuditQuery::default()
        };
        assert!(store.audit(&query).unwrap().is_empty());
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }

    #[test]
    fn a_failed_commit_leaves_nothing_behind() {
        let path = temp("atomic");
        let mut store = SqliteStore::open(&path).unwrap();
        let sub = |id: &str| SubscriptionRecord {
            id: id.into(),
            consumer: "app".into(),
            api: "orders".into(),
            plan: None,
            state: SubscriptionState::Requested,
            created_at: 1,
            updated_at: 1,
        };
        store
            .commit(
                &[Write::Subscription(sub("s1"))],
                entry("subscription.create"),
            )
            .unwrap();
        // Same (consumer, api) under another id: the unique index refuses the whole commit.
        assert!(store
            .commit(
                &[Write::Subscription(sub("s2"))],
                entry("subscription.create")
            )
            .is_err());
        assert!(store.subscription("s2").unwrap().is_none());
        assert_eq!(audit::verify(&store.all_audit().unwrap()), Ok(1));
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
    }
}
