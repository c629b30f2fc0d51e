//! The audit trail's records and their hash chain: every record carries the hash of the one
//! before it, and its own hash covers its sequence number, time, actor, action, object, the
//! before/after views (secrets never appear in them) and that previous hash. Removing, editing
//! or reordering a record breaks the chain, which [`verify`] reports.

use serde_json::{json, Value};

/// The previous hash of the first record.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// What a write records before the store seals it into the chain.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Microseconds since the Unix epoch.
    pub ts_us: i64,
    /// The admin token's name.
    pub actor: String,
    /// `consumer.create`, `credential.revoke`, …
    pub action: String,
    /// `consumer/<id>`, `credential/<id>`, …
    pub object: String,
    pub before: Option<Value>,
    pub after: Option<Value>,
}

/// A sealed audit record.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    pub seq: u64,
    pub entry: AuditEntry,
    pub prev_hash: String,
    pub hash: String,
}

/// Why a chain does not verify.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ChainError {
    #[error("record {found} follows record {expected_after}: a record is missing or out of order")]
    Gap { expected_after: u64, found: u64 },
    #[error("record {0} does not follow the hash of the record before it")]
    Broken(u64),
    #[error("record {0} was altered: its hash does not match its content")]
    Altered(u64),
    #[error("line {line}: {message}")]
    Unreadable { line: usize, message: String },
}

fn rfc3339(ts_us: i64) -> String {
    let time = std::time::UNIX_EPOCH + std::time::Duration::from_micros(ts_us.max(0) as u64);
    let mut out = Vec::with_capacity(32);
    crate::observe::access::push_rfc3339(&mut out, time);
    String::from_utf8(out).unwrap_or_default()
}

/// The JSON object a record's hash covers (everything but the hash).
fn body(seq: u64, entry: &AuditEntry, prev_hash: &str) -> Value {
    json!({
        "seq": seq,
        "ts": rfc3339(entry.ts_us),
        "ts_us": entry.ts_us,
        "actor": entry.actor,
        "action": entry.action,
        "object": entry.object,
        "before": entry.before,
        "after": entry.after,
        "prev_hash": prev_hash,
    })
}

fn digest(body: &Value) -> String {
    let text = serde_json::to_string(body).unwrap_or_default();
    let digest = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
    digest.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

/// Seals `entry` as record `seq` after the record whose hash is `prev_hash`.
pub fn seal(seq: u64, entry: AuditEntry, prev_hash: &str) -> AuditRecord {
    let hash = digest(&body(seq, &entry, prev_hash));
    AuditRecord {
        seq,
        entry,
        prev_hash: prev_hash.to_string(),
        hash,
    }
}

impl AuditRecord {
    /// The record as the API and the JSONL file show it.
    pub fn to_json(&self) -> Value {
        let mut value = body(self.seq, &self.entry, &self.prev_hash);
        value["hash"] = Value::String(self.hash.clone());
        value
    }

    /// Reads a record back from its JSON form.
    pub fn from_json(value: &Value) -> Result<AuditRecord, String> {
        let text = |name: &str| -> Result<String, String> {
            value[name]
                .as_str()
                .map(str::to_string)
                .ok_or_else(|| format!("`{name}` is missing"))
        };
        let optional = |name: &str| match &value[name] {
            Value::Null => None,
            other => Some(other.clone()),
        };
        Ok(AuditRecord {
            seq: value["seq"].as_u64().ok_or("`seq` is missing")?,
            entry: AuditEntry {
                ts_us: value["ts_us"].as_i64().ok_or("`ts_us` is missing")?,
                actor: text("actor")?,
                action: text("action")?,
                object: text("object")?,
                before: optional("before"),
                after: optional("after"),
            },
            prev_hash: text("prev_hash")?,
            hash: text("hash")?,
        })
    }
}

/// Checks a chain from its first record: sequence numbers without gaps, each record linked to
/// the one before, each hash matching its content. Returns the number of records.
pub fn verify<'r>(records: impl IntoIterator<Item = &'r AuditRecord>) -> Result<u64, ChainError> {
    verify_segment(records, (0, GENESIS))
}

/// Like [`verify`] for a part of a chain that follows record `after.0` whose hash is `after.1`
/// (a rotated copy); returns the last sequence number.
pub fn verify_segment<'r>(
    records: impl IntoIterator<Item = &'r AuditRecord>,
    after: (u64, &str),
) -> Result<u64, ChainError> {
    let mut prev_seq = after.0;
    let mut prev_hash = after.1.to_string();
    for record in records {
        if record.seq != prev_seq + 1 {
            return Err(ChainError::Gap {
                expected_after: prev_seq,
                found: record.seq,
            });
        }
        if record.prev_hash != prev_hash {
            return Err(ChainError::Broken(record.seq));
        }
        if digest(&body(record.seq, &record.entry, &record.prev_hash)) != record.hash {
            return Err(ChainError::Altered(record.seq));
        }
        prev_seq = record.seq;
        prev_hash = record.hash.clone();
    }
    Ok(prev_seq)
}

/// Reads a JSONL audit file into records.
pub fn read_jsonl(text: &str) -> Result<Vec<AuditRecord>, ChainError> {
    text.lines()
        .enumerate()
        .filter(|(_, line)| !line.trim().is_empty())
        .map(|(at, line)| {
            let unreadable = |message: String| ChainError::Unreadable {
                line: at + 1,
                message,
            };
            let value: Value = serde_json::from_str(line).map_err(|e| unreadable(e.to_string()))?;
            AuditRecord::from_json(&value).map_err(unreadable)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: i64) -> AuditEntry {
        AuditEntry {
            ts_us: 1_800_000_000_000_000 + n,
            actor: "ops".into(),
            action: "consumer.create".into(),
            object: format!("consumer/c{n}"),
            before: None,
            after: Some(json!({"id": format!("c{n}"), "groups": ["a"]})),
        }
    }

    fn chain(n: u64) -> Vec<AuditRecord> {
        let mut prev = GENESIS.to_string();
        (1..=n)
            .map(|seq| {
                let record = seal(seq, entry(seq as i64), &prev);
                prev = record.hash.clone();
                record
            })
            .collect()
    }

    #[test]
    fn an_intact_chain_verifies_and_survives_its_json_form() {
        let records = chain(5);
        assert_eq!(verify(&records), Ok(5));
        let text: String = records
            .iter()
            .map(|r| r.to_json().to_string() + "\n")
            .collect();
        let back = read_jsonl(&text).unwrap();
        assert_eq!(back, records);
        assert_eq!(verify(&back), Ok(5));
    }

    #[test]
    fn removed_edited_and_reordered_records_are_found() {
        let mut removed = chain(5);
        removed.remove(2);
        assert_eq!(
            verify(&removed),
            Err(ChainError::Gap {
                expected_after: 2,
                found: 4
            })
        );
        let tail = &chain(5)[2..];
        assert_eq!(verify_segment(tail, (2, &chain(5)[1].hash)), Ok(5));
        assert!(verify_segment(tail, (2, GENESIS)).is_err());
        let mut edited = chain(5);
        edited[3].entry.actor = "mallory".into();
        assert_eq!(verify(&edited), Err(ChainError::Altered(4)));
        let mut renumbered = chain(5);
        renumbered.remove(2);
        for (i, r) in renumbered.iter_mut().enumerate() {
            r.seq = i as u64 + 1;
        }
        assert_eq!(verify(&renumbered), Err(ChainError::Broken(3)));
    }
}
