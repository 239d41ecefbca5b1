//! Hash-chained audit records: canonical encoding, hashing, redaction and
//! the chain walk used by `verify_chain`.
//!
//! # Canonical encoding (version `zen.audit.v1`)
//!
//! `hash = lowercase hex(SHA-256(canonical_encoding(record)))`, where the
//! encoding is the compact JSON array (no whitespace)
//!
//! ```text
//! ["zen.audit.v1", id, tenant_id, seq, actor_type, actor_id, action,
//!  resource_type, resource_id, outcome, request_id, client_address,
//!  user_agent, created_at, details, prev_hash]
//! ```
//!
//! * UUIDs: lowercase hyphenated strings; `seq`: a JSON integer;
//! * optional text fields: the string or `null`; `outcome`: its stored text;
//! * `created_at`: UTC RFC 3339 with exactly six fractional digits and `Z`
//!   (`2026-01-02T03:04:05.123456Z`); the store truncates to microseconds
//!   before writing, which both backends keep exactly;
//! * `details`: canonical JSON ([`canonical_json`]): object keys sorted by
//!   their UTF-8 bytes, integral numbers within ±2^53 written as integers,
//!   other numbers in Rust's shortest round-trip form, strings escaped as
//!   `serde_json` does, U+0000 replaced by U+FFFD (PostgreSQL's `jsonb`
//!   refuses it). This is stable under `jsonb`'s re-ordering and number
//!   normalization, so a record read back from either backend re-hashes to
//!   the stored value;
//! * `prev_hash`: the previous record's `hash`, or 64 `0`s for `seq = 1`.
//!
//! Every stored column except `hash` is covered, so changing any of them,
//! re-ordering records or editing `seq` breaks the chain.

use serde_json::{Map, Number, Value};
use sha2::{Digest, Sha256};

use crate::db::format_ts;
use crate::model::{AuditRecord, ChainHead, ChainProblem, ChainProblemKind};

/// `prev_hash` of the first record of every chain.
pub const GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// Version tag, first element of the canonical encoding.
pub const ENCODING_VERSION: &str = "zen.audit.v1";

/// The replacement for redacted values.
pub const REDACTED: &str = "[REDACTED]";

/// Lowercase hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Replace the values of secret-looking keys, at any depth, with
/// `"[REDACTED]"`. Keys match case-insensitively, `-` counting as `_`:
/// `password`, `passwd`, `secret`, `token`, `authorization`, `private_key`,
/// `api_key`, `apikey`, `cookie`, `set_cookie`, `credentials`,
/// `client_secret`, `access_token`, `refresh_token`, `id_token`,
/// `password_hash`, and any key ending in `_secret`, `_token`,
/// `_password` or `_private_key`.
pub fn redact(details: Value) -> Value {
    match details {
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| {
                    if is_secret_key(&k) {
                        (k, Value::String(REDACTED.to_owned()))
                    } else {
                        (k, redact(v))
                    }
                })
                .collect(),
        ),
        Value::Array(items) => Value::Array(items.into_iter().map(redact).collect()),
        other => other,
    }
}

fn is_secret_key(key: &str) -> bool {
    const EXACT: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "token",
        "authorization",
        "private_key",
        "privatekey",
        "api_key",
        "apikey",
        "cookie",
        "set_cookie",
        "credentials",
        "client_secret",
        "access_token",
        "refresh_token",
        "id_token",
        "password_hash",
    ];
    const SUFFIXES: &[&str] = &["_secret", "_token", "_password", "_private_key"];
    let k = key.to_ascii_lowercase().replace('-', "_");
    EXACT.contains(&k.as_str()) || SUFFIXES.iter().any(|s| k.ends_with(s))
}

/// Normalize a JSON value so that it survives a round trip through
/// PostgreSQL `jsonb` or SQLite text unchanged (see the module docs).
pub fn canonical_json(v: Value) -> Value {
    const SAFE: f64 = 9_007_199_254_740_992.0; // 2^53
    match v {
        Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() && f.fract() == 0.0 && f.abs() <= SAFE => {
                // `f` is integral and within ±2^53, so the cast is exact.
                Value::Number(Number::from(f as i64))
            }
            _ => Value::Number(n),
        },
        Value::String(s) => Value::String(clean(s)),
        Value::Array(items) => Value::Array(items.into_iter().map(canonical_json).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (clean(k), canonical_json(v)))
                .collect::<Map<_, _>>(),
        ),
        other => other,
    }
}

fn clean(s: String) -> String {
    if s.contains('\0') {
        s.replace('\0', "\u{FFFD}")
    } else {
        s
    }
}

/// Write `v` as compact JSON with object keys sorted (whatever the map's
/// own order, e.g. with serde_json's `preserve_order`).
fn write_sorted(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push('{');
            for (i, (k, v)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                write_sorted(v, out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, v) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(v, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}

/// The canonical encoding of a record (every stored field except `hash`).
pub fn canonical_encoding(r: &AuditRecord) -> String {
    let s = |v: &str| Value::String(v.to_owned());
    let o = |v: &Option<String>| v.as_deref().map_or(Value::Null, s);
    let e = &r.entry;
    let fields = Value::Array(vec![
        s(ENCODING_VERSION),
        s(&r.id.hyphenated().to_string()),
        s(&r.tenant_id.hyphenated().to_string()),
        Value::Number(r.seq.into()),
        s(&e.actor_type),
        o(&e.actor_id),
        s(&e.action),
        s(&e.resource_type),
        o(&e.resource_id),
        s(e.outcome.as_str()),
        o(&e.request_id),
        o(&e.client_address),
        o(&e.user_agent),
        s(&format_ts(r.created_at)),
        canonical_json(e.details.clone()),
        s(&r.prev_hash),
    ]);
    let mut out = String::with_capacity(512);
    write_sorted(&fields, &mut out);
    out
}

/// `sha256(canonical_encoding(r))`, lowercase hex.
pub fn record_hash(r: &AuditRecord) -> String {
    sha256_hex(canonical_encoding(r).as_bytes())
}

/// Checks records of one chain fed in ascending `seq` order.
#[derive(Debug)]
pub struct ChainWalker {
    expected_seq: i64,
    prev_hash: String,
    pub checked: u64,
}

impl Default for ChainWalker {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainWalker {
    /// A walker from the start of a chain (seq 1, the genesis hash).
    pub fn new() -> Self {
        ChainWalker {
            expected_seq: 1,
            prev_hash: GENESIS_HASH.to_owned(),
            checked: 0,
        }
    }

    /// A walker that continues a chain after record `seq`, whose hash was `hash` (a
    /// checkpoint, or the start of an exported segment).
    pub fn resume(seq: i64, hash: &str) -> Self {
        ChainWalker {
            expected_seq: seq + 1,
            prev_hash: hash.to_owned(),
            checked: 0,
        }
    }

    /// The hash of the last record accepted (the start hash before any).
    pub fn last_hash(&self) -> &str {
        &self.prev_hash
    }

    /// The seq of the last record accepted (0 before any).
    pub fn last_seq(&self) -> i64 {
        self.expected_seq - 1
    }

    pub fn check(&mut self, r: &AuditRecord) -> Result<(), ChainProblem> {
        if r.seq != self.expected_seq {
            return Err(ChainProblem {
                seq: self.expected_seq,
                kind: ChainProblemKind::Missing,
                reason: format!(
                    "record seq {} is missing (next record found has seq {})",
                    self.expected_seq, r.seq
                ),
            });
        }
        if r.prev_hash != self.prev_hash {
            return Err(ChainProblem {
                seq: r.seq,
                kind: ChainProblemKind::PrevHashMismatch,
                reason: format!(
                    "prev_hash {} does not match the hash {} of seq {}",
                    r.prev_hash,
                    self.prev_hash,
                    r.seq - 1
                ),
            });
        }
        let computed = record_hash(r);
        if computed != r.hash {
            return Err(ChainProblem {
                seq: r.seq,
                kind: ChainProblemKind::HashMismatch,
                reason: format!(
                    "stored hash {} does not match the recomputed hash {computed}: the record was altered",
                    r.hash
                ),
            });
        }
        self.checked += 1;
        self.expected_seq += 1;
        self.prev_hash = r.hash.clone();
        Ok(())
    }

    /// After the last record: compare with the chain head.
    pub fn finish(&self, head: Option<&ChainHead>) -> Result<(), ChainProblem> {
        let last = self.last_seq();
        let (head_seq, head_hash) = match head {
            Some(h) => (h.last_seq, h.last_hash.as_str()),
            None => (0, GENESIS_HASH),
        };
        if head_seq > last {
            return Err(ChainProblem {
                seq: last + 1,
                kind: ChainProblemKind::Missing,
                reason: format!(
                    "chain head says {head_seq} records, but the last record found is seq {last}"
                ),
            });
        }
        if head_seq < last {
            return Err(ChainProblem {
                seq: head_seq + 1,
                kind: ChainProblemKind::HeadMismatch,
                reason: format!("records exist beyond the chain head's seq {head_seq}"),
            });
        }
        if head_hash != self.prev_hash {
            return Err(ChainProblem {
                seq: last,
                kind: ChainProblemKind::HeadMismatch,
                reason: format!(
                    "chain head hash {head_hash} does not match the last record's hash {}",
                    self.prev_hash
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AuditOutcome, NewAuditRecord};
    use chrono::{TimeZone, Utc};
    use serde_json::json;
    use uuid::Uuid;

    fn record() -> AuditRecord {
        AuditRecord {
            id: Uuid::parse_str("0190f0e0-0000-7000-8000-000000000001").unwrap(),
            tenant_id: Uuid::nil(),
            seq: 1,
            entry: NewAuditRecord {
                actor_type: "user".into(),
                actor_id: Some("u1".into()),
                action: "cluster.create".into(),
                resource_type: "cluster".into(),
                resource_id: None,
                outcome: AuditOutcome::Success,
                request_id: Some("r\"1".into()),
                client_address: None,
                user_agent: None,
                details: json!({"b": 1, "a": [1.0, 2.5, {"z": null, "y": "x"}]}),
            },
            created_at: Utc.with_ymd_and_hms(2026, 1, 2, 3, 4, 5).unwrap(),
            prev_hash: GENESIS_HASH.into(),
            hash: String::new(),
        }
    }

    #[test]
    fn canonical_encoding_is_fixed() {
        assert_eq!(
            canonical_encoding(&record()),
            concat!(
                r#"["zen.audit.v1","0190f0e0-0000-7000-8000-000000000001","#,
                r#""00000000-0000-0000-0000-000000000000",1,"user","u1","cluster.create","#,
                r#""cluster",null,"success","r\"1",null,null,"2026-01-02T03:04:05.000000Z","#,
                r#"{"a":[1,2.5,{"y":"x","z":null}],"b":1},"#,
                r#""0000000000000000000000000000000000000000000000000000000000000000"]"#
            )
        );
    }

    #[test]
    fn canonical_json_survives_jsonb_style_normalization() {
        // jsonb prints 1.5e2 as 150 and 1e-7 as 0.0000001.
        let stored = canonical_json(json!({"n": 150.0, "s": "a\u{0}b", "m": 1e-7}));
        let from_pg: Value =
            serde_json::from_str(r#"{"m": 0.0000001, "n": 150, "s": "a\ufffdb"}"#).unwrap();
        assert_eq!(canonical_json(from_pg), stored);
    }

    #[test]
    fn redacts_secret_keys_at_any_depth() {
        let v = redact(json!({
            "Password": "p", "nested": {"client-secret": "s", "bootstrap_token": "t", "ok": 1},
            "list": [{"authorization": "Bearer x"}], "token_count": 3
        }));
        assert_eq!(
            v,
            json!({
                "Password": REDACTED, "nested": {"client-secret": REDACTED, "bootstrap_token": REDACTED, "ok": 1},
                "list": [{"authorization": REDACTED}], "token_count": 3
            })
        );
    }

    #[test]
    fn walker_reports_gap_and_tamper() {
        let mut a = record();
        a.hash = record_hash(&a);
        let mut b = record();
        b.seq = 2;
        b.prev_hash = a.hash.clone();
        b.hash = record_hash(&b);

        let mut w = ChainWalker::new();
        w.check(&a).unwrap();
        w.check(&b).unwrap();
        let head = ChainHead {
            tenant_id: Uuid::nil(),
            last_seq: 2,
            last_hash: b.hash.clone(),
        };
        w.finish(Some(&head)).unwrap();

        let mut w = ChainWalker::new();
        assert_eq!(w.check(&b).unwrap_err().kind, ChainProblemKind::Missing);

        let mut w = ChainWalker::new();
        let mut t = a.clone();
        t.entry.action = "cluster.delete".into();
        let p = w.check(&t).unwrap_err();
        assert_eq!((p.seq, p.kind), (1, ChainProblemKind::HashMismatch));

        let mut w = ChainWalker::new();
        w.check(&a).unwrap();
        let p = w.finish(Some(&head)).unwrap_err();
        assert_eq!((p.seq, p.kind), (2, ChainProblemKind::Missing));
    }
}
