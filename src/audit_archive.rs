//! Audit log retention (docs/RETENTION.md): records leave the database only inside a signed,
//! verified segment, and a checkpoint row keeps the rest of the chain verifiable.
//!
//! A segment is JSON lines:
//!
//! ```text
//! {"type":"zen.audit.segment","version":1,"tenant_id":…,"first_seq":…,"start_prev_hash":…,"cut_before":…,"exported_at":…}
//! {…one audit record, as the API's store model…}
//! …
//! {"type":"zen.audit.footer","last_seq":…,"head_hash":…,"records":…}
//! {"type":"zen.audit.signature","alg":"Ed25519","key_id":…,"sha256":…,"signature":…}
//! ```
//!
//! `sha256` is the digest of every byte before the signature line, and `signature` the
//! platform key's Ed25519 signature of [`SIGNED_PREFIX`] followed by that hex digest. Verifying
//! needs only the file and the public key: the digest, the signature, then the chain itself
//! (each record's hash, each `prev_hash`, seqs without gaps, from `start_prev_hash` to the
//! footer's `head_hash`).

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context};
use base64::Engine;
use chrono::{DateTime, Utc};
use ring::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use uuid::Uuid;
use zen_store::audit::ChainWalker;
use zen_store::{AuditCheckpoint, AuditRecord, Scope, Store, GENESIS_HASH};

/// What the signature signs, before the segment's hex digest (so a signature made for
/// anything else cannot pass for a segment's).
pub const SIGNED_PREFIX: &str = "zen.audit.segment.v1\n";
/// Records read from the store per query while exporting.
const READ_PAGE: i64 = 1000;
const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Header {
    r#type: String,
    version: u32,
    tenant_id: Uuid,
    first_seq: i64,
    start_prev_hash: String,
    cut_before: DateTime<Utc>,
    exported_at: DateTime<Utc>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Footer {
    r#type: String,
    last_seq: i64,
    head_hash: String,
    records: u64,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Signature {
    r#type: String,
    alg: String,
    key_id: String,
    sha256: String,
    signature: String,
}

/// The platform's audit signing key (Ed25519, PKCS#8 on disk).
pub struct SigningKey {
    pair: Ed25519KeyPair,
    key_id: String,
}

impl SigningKey {
    /// Loads the key at `path`; when it does not exist and `create` is true, generates one
    /// there (mode 0600). Production refuses to invent a key: one lost with a pod would make
    /// every segment it signed unverifiable.
    pub fn load(path: &Path, create: bool) -> anyhow::Result<SigningKey> {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && create => {
                let doc = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
                    .map_err(|_| anyhow::anyhow!("generating an Ed25519 key failed"))?;
                write_private(path, doc.as_ref())?;
                tracing::info!(path = %path.display(), "created the audit signing key");
                doc.as_ref().to_vec()
            }
            Err(e) => {
                return Err(e).with_context(|| {
                    format!(
                        "reading the audit signing key {} (create one with `zen keys audit-key \
                         --out FILE` and point ZEN_AUDIT_SIGNING_KEY at it)",
                        path.display()
                    )
                })
            }
        };
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(&bytes)
            .map_err(|e| anyhow::anyhow!("{} is not an Ed25519 PKCS#8 key: {e}", path.display()))?;
        let key_id = key_id(pair.public_key().as_ref());
        Ok(SigningKey { pair, key_id })
    }

    /// A new key, written to `path` (which must not exist).
    pub fn generate(path: &Path) -> anyhow::Result<SigningKey> {
        ensure!(!path.exists(), "{} exists already", path.display());
        SigningKey::load(path, true)
    }

    /// The public key, base64 (the form `zen audit verify --public-key` reads).
    pub fn public_key(&self) -> String {
        B64.encode(self.pair.public_key().as_ref())
    }

    pub fn key_id(&self) -> &str {
        &self.key_id
    }

    fn sign(&self, sha256_hex: &str) -> String {
        let message = format!("{SIGNED_PREFIX}{sha256_hex}");
        B64.encode(self.pair.sign(message.as_bytes()).as_ref())
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(bytes)?;
    file.sync_all()?;
    Ok(())
}

/// A public key's id: the first 16 hex digits of its SHA-256.
pub fn key_id(public_key: &[u8]) -> String {
    hex::encode(&Sha256::digest(public_key)[..8])
}

/// Reads a public key file: the base64 line `zen keys audit-public-key` prints.
pub fn read_public_key(path: &Path) -> anyhow::Result<Vec<u8>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the public key {}", path.display()))?;
    let key = B64
        .decode(text.trim())
        .with_context(|| format!("{} is not a base64 public key", path.display()))?;
    ensure!(
        key.len() == 32,
        "{} holds {} bytes; an Ed25519 public key has 32",
        path.display(),
        key.len()
    );
    Ok(key)
}

/// What a verified segment holds.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentSummary {
    pub tenant_id: Uuid,
    pub first_seq: i64,
    pub last_seq: i64,
    pub records: u64,
    pub start_prev_hash: String,
    pub head_hash: String,
    pub cut_before: DateTime<Utc>,
    pub sha256: String,
    pub key_id: String,
}

/// Verifies a segment offline: its digest, its signature by `public_key`, and the chain of
/// its records. The error names the first thing wrong.
pub fn verify_segment(bytes: &[u8], public_key: &[u8]) -> anyhow::Result<SegmentSummary> {
    let body_end = bytes
        .strip_suffix(b"\n")
        .unwrap_or(bytes)
        .iter()
        .rposition(|b| *b == b'\n')
        .map(|i| i + 1)
        .context("the segment has no signature line")?;
    let (body, signature_line) = bytes.split_at(body_end);
    let signature: Signature = serde_json::from_slice(signature_line)
        .context("the last line is not the segment's signature")?;
    ensure!(
        signature.r#type == "zen.audit.signature" && signature.alg == "Ed25519",
        "the last line is not an Ed25519 segment signature"
    );
    let digest = hex::encode(Sha256::digest(body));
    ensure!(
        digest == signature.sha256,
        "the segment's content does not match its digest (sha256 {digest}, signed {}): the \
         file was altered",
        signature.sha256
    );
    let expected_id = key_id(public_key);
    ensure!(
        signature.key_id == expected_id,
        "the segment was signed by key {}, not by the given public key ({expected_id})",
        signature.key_id
    );
    let raw_signature = B64
        .decode(&signature.signature)
        .context("the signature is not base64")?;
    UnparsedPublicKey::new(&ED25519, public_key)
        .verify(
            format!("{SIGNED_PREFIX}{digest}").as_bytes(),
            &raw_signature,
        )
        .map_err(|_| anyhow::anyhow!("the signature does not verify with the given public key"))?;

    let mut lines = body.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    let header: Header = serde_json::from_slice(lines.next().context("the segment is empty")?)
        .context("the first line is not a segment header")?;
    ensure!(
        header.r#type == "zen.audit.segment" && header.version == 1,
        "unsupported segment header {} version {}",
        header.r#type,
        header.version
    );
    let mut walker = ChainWalker::resume(header.first_seq - 1, &header.start_prev_hash);
    let mut footer = None;
    for (i, line) in lines.enumerate() {
        ensure!(footer.is_none(), "lines after the footer");
        if line.starts_with(br#"{"type":"zen.audit.footer""#) {
            footer = Some(
                serde_json::from_slice::<Footer>(line).context("the footer is not valid JSON")?,
            );
            continue;
        }
        let record: AuditRecord = serde_json::from_slice(line)
            .with_context(|| format!("record line {} is not an audit record", i + 2))?;
        ensure!(
            record.tenant_id == header.tenant_id,
            "record seq {} belongs to tenant {}, not {}",
            record.seq,
            record.tenant_id,
            header.tenant_id
        );
        if let Err(problem) = walker.check(&record) {
            bail!(
                "the chain breaks at seq {}: {}",
                problem.seq,
                problem.reason
            );
        }
    }
    let footer = footer.context("the segment has no footer")?;
    ensure!(
        footer.records == walker.checked
            && footer.last_seq == walker.last_seq()
            && footer.head_hash == walker.last_hash(),
        "the footer (seq {}, {} records, head {}) does not match the records (seq {}, {}, head \
         {})",
        footer.last_seq,
        footer.records,
        footer.head_hash,
        walker.last_seq(),
        walker.checked,
        walker.last_hash()
    );
    Ok(SegmentSummary {
        tenant_id: header.tenant_id,
        first_seq: header.first_seq,
        last_seq: footer.last_seq,
        records: footer.records,
        start_prev_hash: header.start_prev_hash,
        head_hash: footer.head_hash,
        cut_before: header.cut_before,
        sha256: digest,
        key_id: signature.key_id,
    })
}

/// One exported segment.
#[derive(Debug, Clone)]
pub struct Exported {
    pub path: PathBuf,
    pub summary: SegmentSummary,
    /// Records deleted from the database after the checkpoint (0 without pruning).
    pub pruned: u64,
}

/// Exports `tenant`'s records created before `before` that are still in the database (after
/// its newest checkpoint) to a signed segment in `dir`, verifies the written file, records the
/// checkpoint and, with `prune`, deletes the exported records in batches of `batch`. `None`
/// when there is nothing to export. The chain must verify up to the cut: a broken chain is
/// never exported (nor pruned).
pub async fn export(
    store: &Store,
    key: &SigningKey,
    tenant: Uuid,
    before: DateTime<Utc>,
    dir: &Path,
    prune: Option<i64>,
) -> anyhow::Result<Option<Exported>> {
    let scope = Scope::platform_admin(None).with_tenant(tenant);
    let start = {
        let mut tx = store.begin_read(&scope).await?;
        tx.audit().checkpoint(tenant).await?
    };
    let (start_seq, start_hash) = match &start {
        Some(c) => (c.through_seq, c.head_hash.clone()),
        None => (0, GENESIS_HASH.to_owned()),
    };
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let partial = dir.join(format!(".zen-audit-{tenant}-{}.partial", Uuid::now_v7()));
    let result = write_segment(
        store,
        key,
        &scope,
        tenant,
        before,
        (start_seq, &start_hash),
        &partial,
    )
    .await;
    let summary = match result {
        Ok(Some(summary)) => summary,
        Ok(None) => {
            let _ = std::fs::remove_file(&partial);
            return Ok(None);
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            return Err(e);
        }
    };
    let path = dir.join(format!(
        "zen-audit-{tenant}-{:012}-{:012}.jsonl",
        summary.first_seq, summary.last_seq
    ));
    std::fs::rename(&partial, &path)
        .with_context(|| format!("moving the segment to {}", path.display()))?;
    // Read back what is on disk before anything leaves the database.
    let written = std::fs::read(&path)?;
    let checked = verify_segment(&written, key.pair.public_key().as_ref())
        .with_context(|| format!("verifying the written segment {}", path.display()))?;
    ensure!(
        checked == summary,
        "the written segment differs from the one exported"
    );

    let mut tx = store.begin(&scope).await?;
    tx.audit()
        .add_checkpoint(&AuditCheckpoint {
            tenant_id: tenant,
            through_seq: summary.last_seq,
            head_hash: summary.head_hash.clone(),
            cut_before: before,
            segment_sha256: summary.sha256.clone(),
            key_id: summary.key_id.clone(),
            created_at: Utc::now(),
        })
        .await?;
    let mut record = zen_store::NewAuditRecord::new(
        "system",
        "audit.export",
        "audit_segment",
        zen_store::AuditOutcome::Success,
    );
    record.actor_id = Some("zen-retention".into());
    record.resource_id = Some(summary.sha256.clone());
    record.details = serde_json::json!({
        "first_seq": summary.first_seq,
        "through_seq": summary.last_seq,
        "records": summary.records,
        "head_hash": summary.head_hash,
        "key_id": summary.key_id,
        "file": path.file_name().map(|n| n.to_string_lossy().into_owned()),
    });
    tx.audit().append(record).await?;
    tx.commit().await?;

    let mut pruned = 0;
    if let Some(batch) = prune {
        pruned = prune_exported(store, tenant, batch).await?;
    }
    Ok(Some(Exported {
        path,
        summary,
        pruned,
    }))
}

/// Deletes `tenant`'s records at or below its newest checkpoint, `batch` at a time.
pub async fn prune_exported(store: &Store, tenant: Uuid, batch: i64) -> anyhow::Result<u64> {
    let scope = Scope::platform_admin(None).with_tenant(tenant);
    let mut pruned = 0;
    loop {
        let mut tx = store.begin(&scope).await?;
        let n = tx.audit().prune(tenant, batch).await?;
        tx.commit().await?;
        pruned += n;
        if n < batch as u64 {
            return Ok(pruned);
        }
    }
}

/// Streams the records to `path` and signs them; `None` when none are due.
async fn write_segment(
    store: &Store,
    key: &SigningKey,
    scope: &Scope,
    tenant: Uuid,
    before: DateTime<Utc>,
    (start_seq, start_hash): (i64, &str),
    path: &Path,
) -> anyhow::Result<Option<SegmentSummary>> {
    let file =
        std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = HashingWriter {
        inner: std::io::BufWriter::new(file),
        hasher: Sha256::new(),
    };
    let header = Header {
        r#type: "zen.audit.segment".into(),
        version: 1,
        tenant_id: tenant,
        first_seq: start_seq + 1,
        start_prev_hash: start_hash.to_owned(),
        cut_before: before,
        exported_at: Utc::now(),
    };
    write_line(&mut out, &header)?;
    let mut walker = ChainWalker::resume(start_seq, start_hash);
    'read: loop {
        let page = {
            let mut tx = store.begin_read(scope).await?;
            tx.audit()
                .records(tenant, walker.last_seq(), i64::MAX, READ_PAGE)
                .await?
        };
        let full = page.len() as i64 == READ_PAGE;
        for record in page {
            // The cut is a prefix of the chain: it ends before the first record at or after
            // `before`.
            if record.created_at >= before {
                break 'read;
            }
            if let Err(problem) = walker.check(&record) {
                bail!(
                    "the audit chain of tenant {tenant} is broken at seq {}: {} (run `zen audit \
                     verify`; nothing was exported)",
                    problem.seq,
                    problem.reason
                );
            }
            write_line(&mut out, &record)?;
        }
        if !full {
            break;
        }
    }
    if walker.checked == 0 {
        return Ok(None);
    }
    let footer = Footer {
        r#type: "zen.audit.footer".into(),
        last_seq: walker.last_seq(),
        head_hash: walker.last_hash().to_owned(),
        records: walker.checked,
    };
    write_line(&mut out, &footer)?;
    let digest = hex::encode(out.hasher.finalize_reset());
    let signature = Signature {
        r#type: "zen.audit.signature".into(),
        alg: "Ed25519".into(),
        key_id: key.key_id().to_owned(),
        signature: key.sign(&digest),
        sha256: digest.clone(),
    };
    write_line(&mut out, &signature)?;
    let file = out.inner.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(Some(SegmentSummary {
        tenant_id: tenant,
        first_seq: start_seq + 1,
        last_seq: footer.last_seq,
        records: footer.records,
        start_prev_hash: start_hash.to_owned(),
        head_hash: footer.head_hash,
        cut_before: before,
        sha256: digest,
        key_id: key.key_id().to_owned(),
    }))
}

struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
}

fn write_line<W: Write>(out: &mut HashingWriter<W>, value: &impl Serialize) -> anyhow::Result<()> {
    let mut line = serde_json::to_vec(value)?;
    line.push(b'\n');
    out.hasher.update(&line);
    out.inner.write_all(&line)?;
    Ok(())
}

/// Reads a segment file and verifies it (see [`verify_segment`]).
pub fn verify_file(path: &Path, public_key: &[u8]) -> anyhow::Result<SegmentSummary> {
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    verify_segment(&bytes, public_key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(seq: i64, prev: &str) -> AuditRecord {
        let mut r = AuditRecord {
            id: Uuid::now_v7(),
            tenant_id: Uuid::nil(),
            seq,
            entry: zen_store::NewAuditRecord::new(
                "user",
                "cluster.update",
                "cluster",
                zen_store::AuditOutcome::Success,
            ),
            created_at: Utc::now(),
            prev_hash: prev.to_owned(),
            hash: String::new(),
        };
        r.hash = zen_store::record_hash(&r);
        r
    }

    fn segment(key: &SigningKey, records: &[AuditRecord]) -> Vec<u8> {
        let mut out = HashingWriter {
            inner: Vec::new(),
            hasher: Sha256::new(),
        };
        let header = Header {
            r#type: "zen.audit.segment".into(),
            version: 1,
            tenant_id: Uuid::nil(),
            first_seq: records[0].seq,
            start_prev_hash: records[0].prev_hash.clone(),
            cut_before: Utc::now(),
            exported_at: Utc::now(),
        };
        write_line(&mut out, &header).unwrap();
        for r in records {
            write_line(&mut out, r).unwrap();
        }
        let last = records.last().unwrap();
        let footer = Footer {
            r#type: "zen.audit.footer".into(),
            last_seq: last.seq,
            head_hash: last.hash.clone(),
            records: records.len() as u64,
        };
        write_line(&mut out, &footer).unwrap();
        let digest = hex::encode(out.hasher.finalize_reset());
        let signature = Signature {
            r#type: "zen.audit.signature".into(),
            alg: "Ed25519".into(),
            key_id: key.key_id().to_owned(),
            signature: key.sign(&digest),
            sha256: digest,
        };
        write_line(&mut out, &signature).unwrap();
        out.inner
    }

    fn chain(n: i64) -> Vec<AuditRecord> {
        let mut prev = GENESIS_HASH.to_owned();
        (1..=n)
            .map(|seq| {
                let r = record(seq, &prev);
                prev = r.hash.clone();
                r
            })
            .collect()
    }

    #[test]
    fn a_segment_verifies_and_any_altered_byte_fails() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(&dir.path().join("k.pk8")).unwrap();
        let public = B64.decode(key.public_key()).unwrap();
        let bytes = segment(&key, &chain(5));
        let summary = verify_segment(&bytes, &public).unwrap();
        assert_eq!(
            (summary.first_seq, summary.last_seq, summary.records),
            (1, 5, 5)
        );
        // Every single byte matters: flip each one in turn.
        for i in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[i] ^= 0x01;
            assert!(
                verify_segment(&tampered, &public).is_err(),
                "flipping byte {i} ({:?}) went unnoticed",
                bytes[i] as char
            );
        }
        let other = SigningKey::generate(&dir.path().join("other.pk8")).unwrap();
        let err = verify_segment(&bytes, &B64.decode(other.public_key()).unwrap()).unwrap_err();
        assert!(err.to_string().contains("signed by key"), "{err}");
    }

    #[test]
    fn a_signed_segment_with_a_broken_chain_fails() {
        let dir = tempfile::tempdir().unwrap();
        let key = SigningKey::generate(&dir.path().join("k.pk8")).unwrap();
        let public = B64.decode(key.public_key()).unwrap();
        let mut records = chain(4);
        records.remove(2);
        let err = verify_segment(&segment(&key, &records), &public).unwrap_err();
        assert!(err.to_string().contains("seq 3"), "{err}");
    }
}
