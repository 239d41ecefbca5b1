//! `zen.ingest.v1.IngestService`, webhook side: webhook sources (CRUD and secret rotation),
//! the public delivery endpoint (`ReceiveWebhook`) and the legacy HMAC agent endpoint
//! (`IngestLegacyEvents`).
//!
//! A delivery goes: route (source id -> tenant) -> source and secrets from the store (every
//! request, so a change made on any replica applies at once) -> rate limit (shared cache) ->
//! verification (`zen_webhook`) -> replay memory (shared cache) -> JSON Schema -> mapping ->
//! one transaction storing the events and the audit record. The answer is sent only after the
//! commit, so nothing answered 2xx is lost. The gateway only relays the raw body and headers.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use hmac::{KeyInit, Mac};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Response, Status};
use tonic_types::{ErrorDetails, FieldViolation, StatusExt};
use uuid::Uuid;
use zen_cache::{Cache, Rate};
use zen_store::{
    AuditOutcome, EventOutcome, NewEvent, NewWebhookSecret, NewWebhookSource, Quotas, Scope, Store,
    StoreError, TenantStatus, WebhookSource, WebhookSourceFilter, WebhookSourceUpdate,
};
use zen_webhook::mapping::{FieldMapping, Target};
use zen_webhook::{
    schema, Delivery, GenericHmac, HmacAlgorithm, MapDefaults, Mapping, Scheme, SecretSealer,
    SignatureEncoding,
};

use super::support::{
    append_audit, audit_record, duration_field, invalid, json_to_struct, json_to_value,
    opt_timestamp, page_request, store_status, struct_to_json, timestamp, value_to_json, Call,
    Mutation, ERROR_DOMAIN,
};
use super::webhook_commit::{CommitError, CommitQueue, Delivery as CommitDelivery};
use super::webhook_deliveries::{sender_delivery_id, DeliveryLog};
use crate::grpc::validate::{id, optional_id, unchecked};
use crate::limits::{RateLimiter, Subject};
use crate::proto::zen::ingest::v1 as pb;
use crate::snapshot::{Invalidate, Invalidations, Snapshot};

/// Default and largest allowed clock difference for signed timestamps.
const DEFAULT_TOLERANCE: Duration = Duration::from_secs(300);
const MAX_TOLERANCE: Duration = Duration::from_secs(3600);
/// Default and largest delivery-id memory.
const DEFAULT_DEDUP_WINDOW: Duration = Duration::from_secs(24 * 3600);
const MAX_DEDUP_WINDOW: Duration = Duration::from_secs(7 * 24 * 3600);
/// Default and largest overlap of a rotated-out secret.
const DEFAULT_OLD_SECRET_TTL: Duration = Duration::from_secs(24 * 3600);
const MAX_OLD_SECRET_TTL: Duration = Duration::from_secs(7 * 24 * 3600);
/// The message of every verification failure: nothing about which part failed.
const VERIFICATION_FAILED: &str = "the delivery could not be verified";
/// Context string of the legacy agent key derivation.
const LEGACY_KEY_CONTEXT: &str = "zen-legacy-agent";

/// What the webhook side needs besides the store and the cache.
#[derive(Clone)]
pub struct WebhookSettings {
    /// Seals secrets at rest.
    pub sealer: Arc<SecretSealer>,
    /// The platform's public base URL (source URLs are built on it).
    pub public_url: String,
    /// The legacy agent endpoint's master key; `None` turns the endpoint off.
    pub legacy_agent_key: Option<String>,
    /// Fold window of stored events.
    pub fold_window: Duration,
}

/// The stored `spec` of a source: everything about it that is configuration.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct Spec {
    #[serde(skip_serializing_if = "Option::is_none")]
    generic_hmac: Option<GenericSpec>,
    #[serde(skip_serializing_if = "Option::is_none")]
    basic_username: Option<String>,
    timestamp_tolerance_seconds: u64,
    dedup_window_seconds: u64,
    rate_limit_per_second: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    json_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    mapping: Option<Mapping>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
struct GenericSpec {
    signature_header: String,
    /// `SHA256` or `SHA512`.
    algorithm: String,
    /// `HEX` or `BASE64`.
    encoding: String,
    signature_prefix: String,
    signed_content: String,
    timestamp_header: String,
    delivery_id_header: String,
}

/// A source's configuration compiled for verification, cached per (source, version).
struct Compiled {
    version: i64,
    scheme: Scheme,
    tolerance: Duration,
    dedup_window: Duration,
    rate_limit: u32,
    schema: Option<schema::Validator>,
    mapping: Option<Mapping>,
}

/// How long a replica delivers from its snapshot of a source without reading the store again
/// when it hears of no change (a change made through any replica clears every replica's
/// snapshot at once, see [`crate::snapshot`]; this bounds what a replica that missed the
/// announcement serves).
const DELIVERY_SNAPSHOT_TTL: Duration = Duration::from_secs(2);

/// What a delivery reads of the store before verification: the source, its secrets opened,
/// its tenant's status and quotas.
#[derive(Clone)]
struct DeliveryState {
    source: Arc<WebhookSource>,
    /// Each unexpired secret with the time it stops verifying (`None`: the current one).
    secrets: Arc<Vec<(Option<chrono::DateTime<Utc>>, String)>>,
    tenant_active: bool,
    quotas: Quotas,
}

/// This replica's delivery states, per source.
struct DeliverySnapshot(Snapshot<Uuid, DeliveryState>);

impl Invalidate for DeliverySnapshot {
    fn invalidate(&self) {
        self.0.clear();
    }
}

pub struct Webhooks {
    store: Arc<Store>,
    cache: Arc<dyn Cache>,
    settings: WebhookSettings,
    /// Source id -> tenant: a route never changes once created, so it is cached for good.
    routes: Mutex<HashMap<Uuid, Uuid>>,
    compiled: Mutex<HashMap<Uuid, Arc<Compiled>>>,
    /// Deliveries are stored through per-tenant group commits; a full queue is a 503.
    commits: CommitQueue,
    /// What became of each source's recent deliveries.
    deliveries: DeliveryLog,
    limiter: Arc<RateLimiter>,
    /// Recent delivery states (no store round trip per delivery).
    sources: Arc<DeliverySnapshot>,
}

fn scheme_name(scheme: pb::WebhookScheme) -> Option<&'static str> {
    Some(match scheme {
        pb::WebhookScheme::Unspecified => return None,
        pb::WebhookScheme::ZenHmac => "zen-hmac",
        pb::WebhookScheme::StandardWebhooks => "standard-webhooks",
        pb::WebhookScheme::Github => "github",
        pb::WebhookScheme::Stripe => "stripe",
        pb::WebhookScheme::Slack => "slack",
        pb::WebhookScheme::Shopify => "shopify",
        pb::WebhookScheme::GenericHmac => "generic-hmac",
        pb::WebhookScheme::Bearer => "bearer",
        pb::WebhookScheme::Basic => "basic",
    })
}

fn scheme_from_name(name: &str) -> pb::WebhookScheme {
    [
        pb::WebhookScheme::ZenHmac,
        pb::WebhookScheme::StandardWebhooks,
        pb::WebhookScheme::Github,
        pb::WebhookScheme::Stripe,
        pb::WebhookScheme::Slack,
        pb::WebhookScheme::Shopify,
        pb::WebhookScheme::GenericHmac,
        pb::WebhookScheme::Bearer,
        pb::WebhookScheme::Basic,
    ]
    .into_iter()
    .find(|s| scheme_name(*s) == Some(name))
    .unwrap_or(pb::WebhookScheme::Unspecified)
}

fn proto_duration(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        nanos: 0,
    }
}

fn std_duration(
    field: &str,
    value: Option<&prost_types::Duration>,
    default: Duration,
    max: Duration,
) -> Result<Duration, Status> {
    let d = duration_field(
        field,
        value,
        chrono::Duration::from_std(default).unwrap_or_default(),
        chrono::Duration::from_std(max).unwrap_or_default(),
    )?;
    Ok(d.to_std().unwrap_or(default))
}

/// The scheme of a verification message, with its settings checked (`prefix` names the field
/// path of the verification in the request).
fn scheme_of(v: &pb::WebhookVerification, prefix: &str) -> Result<(Scheme, Spec), Status> {
    use pb::webhook_verification::Config;
    let scheme = pb::WebhookScheme::try_from(v.scheme).unwrap_or(pb::WebhookScheme::Unspecified);
    let mut spec = Spec::default();
    let field = |f: &str| format!("{prefix}.{f}");
    let parsed = match scheme {
        // The contract's rules refuse an unset or unknown scheme.
        pb::WebhookScheme::Unspecified => return Err(unchecked(&field("scheme"))),
        pb::WebhookScheme::ZenHmac => Scheme::ZenHmac,
        pb::WebhookScheme::StandardWebhooks => Scheme::StandardWebhooks,
        pb::WebhookScheme::Github => Scheme::Github,
        pb::WebhookScheme::Stripe => Scheme::Stripe,
        pb::WebhookScheme::Slack => Scheme::Slack,
        pb::WebhookScheme::Shopify => Scheme::Shopify,
        pb::WebhookScheme::Bearer => Scheme::Bearer,
        pb::WebhookScheme::GenericHmac => {
            // Required with this scheme by the contract's verification.generic_hmac_config.
            let Some(Config::GenericHmac(g)) = &v.config else {
                return Err(unchecked(&field("generic_hmac")));
            };
            let generic = GenericSpec {
                signature_header: g.signature_header.clone(),
                algorithm: match pb::HmacAlgorithm::try_from(g.algorithm) {
                    Ok(pb::HmacAlgorithm::Sha512) => "SHA512".into(),
                    _ => "SHA256".into(),
                },
                encoding: match pb::SignatureEncoding::try_from(g.encoding) {
                    Ok(pb::SignatureEncoding::Base64) => "BASE64".into(),
                    _ => "HEX".into(),
                },
                signature_prefix: g.signature_prefix.clone(),
                signed_content: g.signed_content.clone(),
                timestamp_header: g.timestamp_header.clone(),
                delivery_id_header: g.delivery_id_header.clone(),
            };
            let compiled = compile_generic(&generic).map_err(|(f, m)| {
                invalid(&[(&format!("{prefix}.generic_hmac.{f}"), m.as_str())])
            })?;
            spec.generic_hmac = Some(generic);
            compiled
        }
        pb::WebhookScheme::Basic => {
            // Required with this scheme by the contract's verification.basic_config.
            let Some(Config::Basic(b)) = &v.config else {
                return Err(unchecked(&field("basic")));
            };
            spec.basic_username = Some(b.username.clone());
            Scheme::Basic {
                username: b.username.clone(),
            }
        }
    };
    Ok((parsed, spec))
}

fn compile_generic(g: &GenericSpec) -> Result<Scheme, (String, String)> {
    let algorithm = if g.algorithm == "SHA512" {
        HmacAlgorithm::Sha512
    } else {
        HmacAlgorithm::Sha256
    };
    let encoding = if g.encoding == "BASE64" {
        SignatureEncoding::Base64
    } else {
        SignatureEncoding::Hex
    };
    GenericHmac::new(
        &g.signature_header,
        algorithm,
        encoding,
        &g.signature_prefix,
        &g.signed_content,
        Some(g.timestamp_header.as_str()),
        Some(g.delivery_id_header.as_str()),
    )
    .map(Scheme::GenericHmac)
    .map_err(|e| (e.field.to_owned(), e.message))
}

/// The contract's mapping as the library's.
fn mapping_of(m: &pb::EventMapping, prefix: &str) -> Result<Mapping, Status> {
    let mut fields = Vec::with_capacity(m.fields.len());
    for (i, f) in m.fields.iter().enumerate() {
        let target = Target::from_number(i64::from(f.target)).ok_or_else(|| {
            invalid(&[(
                &format!("{prefix}.fields[{i}].target"),
                "is required: a MAPPED_FIELD_* value",
            )])
        })?;
        fields.push(FieldMapping {
            target,
            pointer: f.pointer.clone(),
            default_value: f
                .default_value
                .clone()
                .map(value_to_json)
                .unwrap_or(Value::Null),
            value_map: f.value_map.clone().into_iter().collect(),
        });
    }
    let mapping = Mapping {
        items_pointer: m.items_pointer.clone(),
        fields,
        fingerprint_pointers: m.fingerprint_pointers.clone(),
    };
    mapping.validate().map_err(|violations| {
        let owned: Vec<(String, String)> = violations
            .into_iter()
            .map(|v| (format!("{prefix}.{}", v.field), v.description))
            .collect();
        let refs: Vec<(&str, &str)> = owned
            .iter()
            .map(|(f, d)| (f.as_str(), d.as_str()))
            .collect();
        invalid(&refs)
    })?;
    Ok(mapping)
}

fn mapping_to_proto(m: &Mapping) -> pb::EventMapping {
    pb::EventMapping {
        items_pointer: m.items_pointer.clone(),
        fields: m
            .fields
            .iter()
            .map(|f| pb::FieldMapping {
                target: f.target.number(),
                pointer: f.pointer.clone(),
                default_value: Some(f.default_value.clone())
                    .filter(|v| !v.is_null())
                    .map(json_to_value),
                value_map: f.value_map.clone().into_iter().collect(),
            })
            .collect(),
        fingerprint_pointers: m.fingerprint_pointers.clone(),
    }
}

fn compile_schema(schema: &Value, field: &str) -> Result<schema::Validator, Status> {
    schema::compile(schema).map_err(|e| invalid(&[(field, e.as_str())]))
}

/// Everything but the secret, checked: what `create` stores and `update` may change.
struct SourceConfig {
    scheme: Scheme,
    spec: Spec,
}

fn config_of(s: &pb::WebhookSource, prefix: &str) -> Result<SourceConfig, Status> {
    let verification = s
        .verification
        .as_ref()
        .ok_or_else(|| invalid(&[(&format!("{prefix}.verification"), "is required")]))?;
    let (scheme, mut spec) = scheme_of(verification, &format!("{prefix}.verification"))?;
    spec.timestamp_tolerance_seconds = std_duration(
        &format!("{prefix}.timestamp_tolerance"),
        s.timestamp_tolerance.as_ref(),
        DEFAULT_TOLERANCE,
        MAX_TOLERANCE,
    )?
    .as_secs();
    spec.dedup_window_seconds = std_duration(
        &format!("{prefix}.dedup_window"),
        s.dedup_window.as_ref(),
        DEFAULT_DEDUP_WINDOW,
        MAX_DEDUP_WINDOW,
    )?
    .as_secs();
    spec.rate_limit_per_second = u32::try_from(s.rate_limit_per_second)
        .map_err(|_| unchecked(&format!("{prefix}.rate_limit_per_second")))?;
    if let Some(schema) = &s.json_schema {
        let value = struct_to_json(Some(schema.clone()));
        compile_schema(&value, &format!("{prefix}.json_schema"))?;
        spec.json_schema = Some(value);
    }
    if let Some(mapping) = &s.mapping {
        spec.mapping = Some(mapping_of(mapping, &format!("{prefix}.mapping"))?);
    }
    Ok(SourceConfig { scheme, spec })
}

/// The stored spec; `None` when it does not parse (deliveries then refuse rather than run
/// without the schema or mapping it held).
fn spec_of(source: &WebhookSource) -> Option<Spec> {
    serde_json::from_value(source.spec.clone()).ok()
}

fn secret_aad(tenant: Uuid, source: Uuid, secret: Uuid) -> String {
    format!("{tenant}/{source}/{secret}")
}

impl Webhooks {
    pub fn new(
        store: Arc<Store>,
        cache: Arc<dyn Cache>,
        settings: WebhookSettings,
        limiter: Arc<RateLimiter>,
        invalidations: &Invalidations,
    ) -> Self {
        let sources = Arc::new(DeliverySnapshot(Snapshot::new(DELIVERY_SNAPSHOT_TTL)));
        invalidations.register(sources.clone());
        Self {
            sources,
            limiter,
            commits: CommitQueue::new(store.clone(), cache.clone(), settings.fold_window),
            deliveries: DeliveryLog::new(cache.clone()),
            store,
            cache,
            settings,
            routes: Mutex::new(HashMap::new()),
            compiled: Mutex::new(HashMap::new()),
        }
    }

    fn to_proto(&self, source: WebhookSource) -> pb::WebhookSource {
        let spec = spec_of(&source).unwrap_or_default();
        let scheme = scheme_from_name(&source.scheme);
        let config = match (&spec.generic_hmac, &spec.basic_username) {
            (Some(g), _) => Some(pb::webhook_verification::Config::GenericHmac(
                pb::GenericHmacConfig {
                    signature_header: g.signature_header.clone(),
                    algorithm: if g.algorithm == "SHA512" {
                        pb::HmacAlgorithm::Sha512
                    } else {
                        pb::HmacAlgorithm::Sha256
                    } as i32,
                    encoding: if g.encoding == "BASE64" {
                        pb::SignatureEncoding::Base64
                    } else {
                        pb::SignatureEncoding::Hex
                    } as i32,
                    signature_prefix: g.signature_prefix.clone(),
                    signed_content: g.signed_content.clone(),
                    timestamp_header: g.timestamp_header.clone(),
                    delivery_id_header: g.delivery_id_header.clone(),
                },
            )),
            (None, Some(username)) => Some(pb::webhook_verification::Config::Basic(
                pb::BasicAuthConfig {
                    username: username.clone(),
                },
            )),
            _ => None,
        };
        pb::WebhookSource {
            url: format!("{}/webhooks/{}", self.settings.public_url, source.id),
            source_id: source.id.to_string(),
            tenant_id: source.tenant_id.to_string(),
            name: source.name,
            display_name: source.display_name,
            description: source.description,
            enabled: source.enabled,
            verification: Some(pb::WebhookVerification {
                scheme: scheme as i32,
                config,
            }),
            secret: String::new(),
            timestamp_tolerance: Some(proto_duration(Duration::from_secs(
                spec.timestamp_tolerance_seconds,
            ))),
            json_schema: spec.json_schema.clone().and_then(json_to_struct),
            mapping: spec.mapping.as_ref().map(mapping_to_proto),
            dedup_window: Some(proto_duration(Duration::from_secs(
                spec.dedup_window_seconds,
            ))),
            rate_limit_per_second: i32::try_from(spec.rate_limit_per_second).unwrap_or(i32::MAX),
            cluster_id: source.cluster_id.map(|c| c.to_string()).unwrap_or_default(),
            secrets: source
                .secrets
                .iter()
                .map(|s| pb::WebhookSecret {
                    secret_id: s.id.to_string(),
                    create_time: Some(timestamp(s.created_at)),
                    expire_time: opt_timestamp(s.expires_at),
                })
                .collect(),
            last_delivery_time: opt_timestamp(source.last_delivery_at),
            create_time: Some(timestamp(source.created_at)),
            update_time: Some(timestamp(source.updated_at)),
            version: source.version,
        }
    }

    /// A live source of the tenant, read in the caller's scope.
    async fn read_source(
        &self,
        call: &Call,
        tenant_id: Uuid,
        source_id: Uuid,
    ) -> Result<WebhookSource, Status> {
        let mut tx = call.read(&self.store, Some(tenant_id)).await?;
        tx.webhook_sources()
            .get(source_id)
            .await
            .map_err(|e| store_status(e, ""))
    }

    /// A secret sealed for its row (see `secret_aad`).
    fn seal(&self, tenant_id: Uuid, source_id: Uuid, secret_id: Uuid, secret: &str) -> String {
        self.settings.sealer.seal(
            secret.as_bytes(),
            secret_aad(tenant_id, source_id, secret_id).as_bytes(),
        )
    }

    /// A secret for `scheme`: the caller's (checked) or a generated one.
    fn secret_for(scheme: &Scheme, given: &str, field: &str) -> Result<String, Status> {
        if given.is_empty() {
            return Ok(zen_webhook::generate_secret(scheme));
        }
        zen_webhook::validate_secret(scheme, given).map_err(|e| invalid(&[(field, e.as_str())]))?;
        Ok(given.to_owned())
    }

    // ------------------------------------------------------------------ management

    pub async fn create(
        &self,
        request: Request<pb::CreateWebhookSourceRequest>,
    ) -> Result<Response<pb::CreateWebhookSourceResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let source = req
            .webhook_source
            .ok_or_else(|| invalid(&[("webhook_source", "is required")]))?;
        let config = config_of(&source, "webhook_source")?;
        let secret = Self::secret_for(&config.scheme, &source.secret, "webhook_source.secret")?;
        let cluster_id = optional_id("webhook_source.cluster_id", &source.cluster_id)?;
        // The id is the URL's only secret part: random (v4), not time-ordered.
        let (source_id, secret_id) = (Uuid::new_v4(), Uuid::now_v7());
        let sealed = self.seal(tenant_id, source_id, secret_id, &secret);
        let new = NewWebhookSource {
            id: source_id,
            name: source.name,
            display_name: source.display_name,
            description: source.description,
            enabled: source.enabled,
            scheme: config.scheme.name().to_owned(),
            spec: serde_json::to_value(&config.spec).unwrap_or_default(),
            cluster_id,
        };
        let scope = call.scope(Some(tenant_id));
        let created = call
            .mutate(
                &self.store,
                &scope,
                "webhook_source.create",
                "webhook_source",
                move |tx| {
                    Box::pin(async move {
                        let created = tx
                            .webhook_sources()
                            .create(
                                new,
                                NewWebhookSecret {
                                    id: secret_id,
                                    sealed,
                                },
                            )
                            .await
                            .map_err(|e| store_status(e, "webhook_source"))?;
                        let details = json!({ "name": created.name, "scheme": created.scheme });
                        let id = created.id;
                        Ok(Mutation::new(created, id, details))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::CreateWebhookSourceResponse {
            webhook_source: Some(self.to_proto(created)),
            secret,
        }))
    }

    pub async fn get(
        &self,
        request: Request<pb::GetWebhookSourceRequest>,
    ) -> Result<Response<pb::GetWebhookSourceResponse>, Status> {
        let call = Call::of(&request)?;
        let tenant_id = id("tenant_id", &request.get_ref().tenant_id)?;
        let source_id = id("source_id", &request.get_ref().source_id)?;
        let source = self.read_source(&call, tenant_id, source_id).await?;
        Ok(Response::new(pb::GetWebhookSourceResponse {
            webhook_source: Some(self.to_proto(source)),
        }))
    }

    pub async fn list(
        &self,
        request: Request<pb::ListWebhookSourcesRequest>,
    ) -> Result<Response<pb::ListWebhookSourcesResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let page = page_request(req.page_size, &req.page_token);
        let scheme = match pb::WebhookScheme::try_from(req.scheme) {
            Ok(s) => scheme_name(s).map(str::to_owned),
            Err(_) => return Err(unchecked("scheme")),
        };
        let filter = WebhookSourceFilter {
            scheme,
            name_prefix: Some(req.name_prefix).filter(|p| !p.is_empty()),
        };
        let page = call
            .list(&self.store, Some(tenant_id), move |tx| {
                let (filter, page) = (filter.clone(), page.clone());
                Box::pin(async move { tx.webhook_sources().list(&filter, &page).await })
            })
            .await?;
        Ok(Response::new(pb::ListWebhookSourcesResponse {
            webhook_sources: page.items.into_iter().map(|s| self.to_proto(s)).collect(),
            next_page_token: page.next_page_token.unwrap_or_default(),
        }))
    }

    pub async fn update(
        &self,
        request: Request<pb::UpdateWebhookSourceRequest>,
    ) -> Result<Response<pb::UpdateWebhookSourceResponse>, Status> {
        const UPDATABLE: [&str; 10] = [
            "display_name",
            "description",
            "enabled",
            "verification",
            "timestamp_tolerance",
            "json_schema",
            "mapping",
            "dedup_window",
            "rate_limit_per_second",
            "cluster_id",
        ];
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let source_id = id("source_id", &req.source_id)?;
        let patch = req
            .webhook_source
            .ok_or_else(|| invalid(&[("webhook_source", "is required")]))?;
        let version = version_or_current(patch.version);
        let paths: Vec<String> = match &req.update_mask {
            Some(mask) if !mask.paths.is_empty() => mask.paths.clone(),
            _ => [
                ("display_name", !patch.display_name.is_empty()),
                ("description", !patch.description.is_empty()),
                ("enabled", patch.enabled),
                ("verification", patch.verification.is_some()),
                ("timestamp_tolerance", patch.timestamp_tolerance.is_some()),
                ("json_schema", patch.json_schema.is_some()),
                ("mapping", patch.mapping.is_some()),
                ("dedup_window", patch.dedup_window.is_some()),
                ("rate_limit_per_second", patch.rate_limit_per_second != 0),
                ("cluster_id", !patch.cluster_id.is_empty()),
            ]
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(p, _)| p.to_owned())
            .collect(),
        };
        if let Some(bad) = paths.iter().find(|p| !UPDATABLE.contains(&p.as_str())) {
            return Err(invalid(&[(
                "update_mask",
                &format!(
                    "`{bad}` cannot be changed; updatable: {}",
                    UPDATABLE.join(", ")
                ),
            )]));
        }
        let has = |p: &str| paths.iter().any(|x| x == p);

        // Merge the patch over the stored configuration, then check the result as a whole.
        let current = self.read_source(&call, tenant_id, source_id).await?;
        let mut merged = self.to_proto(current);
        if has("verification") {
            // A secret belongs to its scheme (a `whpk_` public key read as an HMAC key would
            // let anyone who knows it sign): another scheme is another source.
            let scheme_of = |v: &Option<pb::WebhookVerification>| v.as_ref().map(|v| v.scheme);
            if scheme_of(&patch.verification) != scheme_of(&merged.verification) {
                return Err(invalid(&[(
                    "webhook_source.verification.scheme",
                    "cannot change: the source's secrets belong to its scheme; create a new \
                     source for another scheme",
                )]));
            }
            merged.verification = patch.verification.clone();
        }
        if has("timestamp_tolerance") {
            merged.timestamp_tolerance = patch.timestamp_tolerance;
        }
        if has("json_schema") {
            merged.json_schema = patch.json_schema.clone();
        }
        if has("mapping") {
            merged.mapping = patch.mapping.clone();
        }
        if has("dedup_window") {
            merged.dedup_window = patch.dedup_window;
        }
        if has("rate_limit_per_second") {
            merged.rate_limit_per_second = patch.rate_limit_per_second;
        }
        let config = config_of(&merged, "webhook_source")?;
        let update = WebhookSourceUpdate {
            display_name: has("display_name").then(|| patch.display_name.clone()),
            description: has("description").then(|| patch.description.clone()),
            enabled: has("enabled").then_some(patch.enabled),
            scheme: Some(config.scheme.name().to_owned()),
            spec: Some(serde_json::to_value(&config.spec).unwrap_or_default()),
            cluster_id: if has("cluster_id") {
                Some(optional_id("webhook_source.cluster_id", &patch.cluster_id)?)
            } else {
                None
            },
        };
        let scope = call.scope(Some(tenant_id));
        let updated = call
            .mutate(
                &self.store,
                &scope,
                "webhook_source.update",
                "webhook_source",
                move |tx| {
                    Box::pin(async move {
                        let updated = tx
                            .webhook_sources()
                            .update(source_id, version, update)
                            .await
                            .map_err(|e| store_status(e, "webhook_source"))?;
                        Ok(Mutation::new(
                            updated,
                            source_id,
                            json!({ "fields": paths }),
                        ))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::UpdateWebhookSourceResponse {
            webhook_source: Some(self.to_proto(updated)),
        }))
    }

    pub async fn delete(
        &self,
        request: Request<pb::DeleteWebhookSourceRequest>,
    ) -> Result<Response<pb::DeleteWebhookSourceResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let source_id = id("source_id", &req.source_id)?;
        let version = version_or_current(req.version);
        let scope = call.scope(Some(tenant_id));
        call.mutate(
            &self.store,
            &scope,
            "webhook_source.delete",
            "webhook_source",
            move |tx| {
                Box::pin(async move {
                    let deleted = tx
                        .webhook_sources()
                        .soft_delete(source_id, version)
                        .await
                        .map_err(|e| store_status(e, ""))?;
                    Ok(Mutation::new(
                        (),
                        source_id,
                        json!({ "name": deleted.name }),
                    ))
                })
            },
        )
        .await?;
        Ok(Response::new(pb::DeleteWebhookSourceResponse {}))
    }

    pub async fn rotate(
        &self,
        request: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::RotateWebhookSecretResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let source_id = id("source_id", &req.source_id)?;
        let version = version_or_current(req.version);
        // Unset: 24 hours; zero: at once (so not `duration_field`, for which zero is "unset").
        let ttl = match &req.old_secret_ttl {
            None => DEFAULT_OLD_SECRET_TTL,
            // Negative durations are refused by the contract's rules; longer than the
            // maximum is shortened to it.
            Some(d) => Duration::new(
                u64::try_from(d.seconds).unwrap_or(u64::MAX),
                u32::try_from(d.nanos).unwrap_or(0),
            )
            .min(MAX_OLD_SECRET_TTL),
        };
        let current = self.read_source(&call, tenant_id, source_id).await?;
        let scheme = self.compile(&current)?.scheme.clone();
        let secret = Self::secret_for(&scheme, &req.secret, "secret")?;
        let secret_id = Uuid::now_v7();
        let sealed = self.seal(tenant_id, source_id, secret_id, &secret);
        let old_expires_at = Utc::now() + chrono::Duration::from_std(ttl).unwrap_or_default();
        let scope = call.scope(Some(tenant_id));
        let rotated = call
            .mutate(
                &self.store,
                &scope,
                "webhook_source.rotate_secret",
                "webhook_source",
                move |tx| {
                    Box::pin(async move {
                        let rotated = tx
                            .webhook_sources()
                            .rotate_secret(
                                source_id,
                                version,
                                NewWebhookSecret {
                                    id: secret_id,
                                    sealed,
                                },
                                old_expires_at,
                            )
                            .await
                            .map_err(|e| store_status(e, ""))?;
                        let details = json!({
                            "secret_id": secret_id,
                            "old_secret_expire_time": old_expires_at,
                        });
                        Ok(Mutation::new(rotated, source_id, details))
                    })
                },
            )
            .await?;
        Ok(Response::new(pb::RotateWebhookSecretResponse {
            webhook_source: Some(self.to_proto(rotated)),
            secret,
            secret_id: secret_id.to_string(),
            old_secret_expire_time: Some(timestamp(old_expires_at)),
        }))
    }

    // ------------------------------------------------------------------ deliveries

    /// The source's configuration compiled, from the cache when its version is unchanged.
    fn compile(&self, source: &WebhookSource) -> Result<Arc<Compiled>, Status> {
        if let Some(hit) = self
            .compiled
            .lock()
            .expect("compiled cache")
            .get(&source.id)
            .filter(|c| c.version == source.version)
        {
            return Ok(hit.clone());
        }
        let broken = |what: &str| {
            tracing::error!(source = %source.id, what, "a stored webhook source does not compile");
            Status::internal("the webhook source's stored configuration is unusable")
        };
        let spec = spec_of(source).ok_or_else(|| broken("spec"))?;
        let scheme = match source.scheme.as_str() {
            "zen-hmac" => Scheme::ZenHmac,
            "standard-webhooks" => Scheme::StandardWebhooks,
            "github" => Scheme::Github,
            "stripe" => Scheme::Stripe,
            "slack" => Scheme::Slack,
            "shopify" => Scheme::Shopify,
            "bearer" => Scheme::Bearer,
            "basic" => Scheme::Basic {
                username: spec.basic_username.clone().ok_or_else(|| broken("basic"))?,
            },
            "generic-hmac" => spec
                .generic_hmac
                .as_ref()
                .and_then(|g| compile_generic(g).ok())
                .ok_or_else(|| broken("generic_hmac"))?,
            _ => return Err(broken("scheme")),
        };
        let schema = spec
            .json_schema
            .as_ref()
            .map(schema::compile)
            .transpose()
            .map_err(|_| broken("json_schema"))?;
        let compiled = Arc::new(Compiled {
            version: source.version,
            scheme,
            tolerance: Duration::from_secs(spec.timestamp_tolerance_seconds.max(1)),
            dedup_window: Duration::from_secs(spec.dedup_window_seconds.max(1)),
            rate_limit: spec.rate_limit_per_second,
            schema,
            mapping: spec.mapping,
        });
        let mut cache = self.compiled.lock().expect("compiled cache");
        if cache.len() > 10_000 {
            cache.clear();
        }
        cache.insert(source.id, compiled.clone());
        Ok(compiled)
    }

    /// The delivery state of `source_id`: from the snapshot when `use_snapshot` and it has a
    /// recent one (then `true`), else read from the store in one read transaction and kept.
    async fn delivery_state(
        &self,
        scope: &Scope,
        source_id: Uuid,
        now: chrono::DateTime<Utc>,
        use_snapshot: bool,
    ) -> Result<(DeliveryState, bool), Rejection> {
        if use_snapshot {
            if let Some(state) = self.sources.0.get(&source_id) {
                return Ok((state, true));
            }
        }
        let generation = self.sources.0.generation();
        let unavailable = |e| Rejection::new("unavailable", store_status(e, ""));
        let mut tx = self.store.begin_read(scope).await.map_err(unavailable)?;
        let source = match tx.webhook_sources().get(source_id).await {
            Ok(source) => source,
            Err(StoreError::NotFound { .. }) => {
                return Err(Rejection::new(
                    "not_found",
                    Status::not_found("no such webhook source"),
                ))
            }
            Err(e) => return Err(unavailable(e)),
        };
        let tenant = tx
            .tenants()
            .get(source.tenant_id)
            .await
            .map_err(unavailable)?;
        let sealed = tx
            .webhook_sources()
            .secrets(source_id, now)
            .await
            .map_err(unavailable)?;
        let secrets = sealed
            .iter()
            .filter_map(|s| {
                let aad = secret_aad(source.tenant_id, source_id, s.id);
                match self.settings.sealer.open_string(&s.sealed, aad.as_bytes()) {
                    Ok(secret) => Some((s.expires_at, secret)),
                    Err(error) => {
                        tracing::error!(%error, secret = %s.id, "a webhook secret does not open");
                        None
                    }
                }
            })
            .collect();
        let state = DeliveryState {
            source: Arc::new(source),
            secrets: Arc::new(secrets),
            tenant_active: tenant.status == TenantStatus::Active,
            quotas: tenant.quotas,
        };
        self.sources.0.put(generation, source_id, state.clone());
        Ok((state, false))
    }

    /// Which tenant owns `source_id`, if any.
    async fn route(&self, source_id: Uuid) -> Result<Option<Uuid>, Status> {
        if let Some(tenant) = self.routes.lock().expect("routes").get(&source_id) {
            return Ok(Some(*tenant));
        }
        let mut tx = self
            .store
            .begin_read(&Scope::anonymous())
            .await
            .map_err(|e| store_status(e, ""))?;
        let tenant = tx
            .webhook_sources()
            .route(source_id)
            .await
            .map_err(|e| store_status(e, ""))?;
        if let Some(tenant) = tenant {
            let mut routes = self.routes.lock().expect("routes");
            if routes.len() > 100_000 {
                routes.clear();
            }
            routes.insert(source_id, tenant);
        }
        Ok(tenant)
    }

    pub async fn receive(
        &self,
        request: Request<pb::ReceiveWebhookRequest>,
    ) -> Result<Response<pb::ReceiveWebhookResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.into_inner();
        let started = Instant::now();
        let unknown = || Status::not_found("no such webhook source");
        let Ok(source_id) = Uuid::parse_str(&req.source_id) else {
            count("unknown", "not_found");
            return Err(unknown());
        };
        let Some(tenant_id) = self.route(source_id).await? else {
            count("unknown", "not_found");
            return Err(unknown());
        };
        let label = source_id.to_string();
        let mut record = pb::WebhookDelivery {
            receive_time: Some(timestamp(Utc::now())),
            sender_delivery_id: sender_delivery_id(|name| {
                req.headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case(name))
                    .map(|(_, v)| v.as_str())
            }),
            body_bytes: req
                .body
                .as_ref()
                .map_or(0, |b| i64::try_from(b.data.len()).unwrap_or(i64::MAX)),
            ..Default::default()
        };
        let result = self
            .deliver(&call, tenant_id, source_id, req, started)
            .await;
        match &result {
            Ok((outcome, response)) => {
                count(&label, outcome);
                record.outcome = response.outcome;
                record.http_status = if *outcome == "accepted" { 202 } else { 200 };
                record.event_ids = response.event_ids.clone();
            }
            Err(rejection) => {
                count(&label, rejection.label);
                record.outcome = pb::DeliveryOutcome::Refused as i32;
                record.http_status =
                    i32::from(zen_gateway::http_status(rejection.status.code()).as_u16());
                record.reason = rejection.label.to_owned();
                record.message = rejection
                    .detail
                    .clone()
                    .unwrap_or_else(|| rejection.status.message().to_owned());
            }
        }
        // A source deleted between routing and now has no log to write to; a flood refused
        // before verification is counted (`zen_webhook_requests_total`), not logged request by
        // request, or it would push the sender's own deliveries out of the log.
        if !matches!(&result, Err(r) if r.label == "not_found" || r.label == "rate_limited_unverified")
        {
            self.deliveries.record(tenant_id, source_id, record);
        }
        let (outcome, response) = result.map_err(|r| r.status)?;
        let mut response = Response::new(response);
        let status = if outcome == "accepted" { "202" } else { "200" };
        response
            .metadata_mut()
            .insert(zen_gateway_status_key(), MetadataValue::from_static(status));
        Ok(response)
    }

    /// A source's recent deliveries (see `webhook_deliveries`).
    pub async fn list_deliveries(
        &self,
        request: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let call = Call::of(&request)?;
        let req = request.get_ref();
        let tenant_id = id("tenant_id", &req.tenant_id)?;
        let source_id = id("source_id", &req.source_id)?;
        let limit = usize::try_from(req.page_size).unwrap_or(0);
        // The source must be the tenant's and visible to the caller.
        self.read_source(&call, tenant_id, source_id).await?;
        let deliveries = self
            .deliveries
            .recent(tenant_id, source_id, limit)
            .await
            .map_err(cache_down)?;
        Ok(Response::new(pb::ListWebhookDeliveriesResponse {
            deliveries,
        }))
    }

    async fn deliver(
        &self,
        call: &Call,
        tenant_id: Uuid,
        source_id: Uuid,
        req: pb::ReceiveWebhookRequest,
        started: Instant,
    ) -> Result<(&'static str, pb::ReceiveWebhookResponse), Rejection> {
        let scope = Scope::tenant(tenant_id, None);
        let now = Utc::now();
        let headers: HashMap<String, String> = req
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let body = req.body.map(|b| b.data).unwrap_or_default();
        let address = call.context.client_address;
        // What the delivery needs of the store, from this replica's snapshot when it has a
        // recent one. Secrets from the snapshot that do not verify are read again once, so a
        // secret rotated a moment ago on another replica is never refused for a stale copy.
        let mut use_snapshot = true;
        let (state, compiled, verified) = loop {
            let (state, cached) = self
                .delivery_state(&scope, source_id, now, use_snapshot)
                .await?;
            if !state.tenant_active {
                return Err(Rejection::new(
                    "tenant_suspended",
                    precondition(
                        "TENANT_SUSPENDED",
                        "the tenant owning this webhook source is suspended",
                    ),
                ));
            }
            let compiled = self
                .compile(&state.source)
                .map_err(|s| Rejection::new("unavailable", s))?;

            // A client address whose requests keep failing verification is refused before
            // any other work (and before auditing anything): a flood of forgeries costs a
            // cache call each, and spends only its own per-address budget, never the sender's.
            if let Some(address) = address {
                let unverified = Subject::UnverifiedWebhooks(address);
                let rate = self.limiter.settings().unverified_webhooks;
                if let Err(limited) = self.limiter.peek(&unverified, rate).await {
                    return Err(Rejection::new("rate_limited_unverified", limited.status()));
                }
            }

            if !state.source.enabled {
                self.audit_refusal(call, &scope, source_id, "disabled")
                    .await;
                return Err(Rejection::new(
                    "disabled",
                    precondition("SOURCE_DISABLED", "this webhook source is disabled"),
                ));
            }

            // Verification, with the secrets that have not expired.
            let opened: Vec<&str> = state
                .secrets
                .iter()
                .filter(|(expires_at, _)| expires_at.is_none_or(|at| at > now))
                .map(|(_, secret)| secret.as_str())
                .collect();
            let verify_started = Instant::now();
            let verify_span = crate::telemetry::traced(|| {
                tracing::info_span!(
                    "webhook.verify",
                    zen.webhook.scheme = compiled.scheme.name(),
                    otel.status_code = tracing::field::Empty,
                )
            });
            let verified = verify_span.in_scope(|| {
                zen_webhook::verify(
                    &compiled.scheme,
                    &Delivery {
                        headers: &headers,
                        body: &body,
                    },
                    &opened,
                    now.timestamp(),
                    compiled.tolerance,
                )
            });
            metrics::histogram!("zen_webhook_verification_seconds", "scheme" => compiled.scheme.name())
                .record(verify_started.elapsed().as_secs_f64());
            if verified.is_err() {
                verify_span.record("otel.status_code", "ERROR");
            }
            match verified {
                Ok(verified) => break (state, compiled, verified),
                Err(_) if cached => {
                    self.sources.0.forget(&source_id);
                    use_snapshot = false;
                }
                Err(failure) => {
                    if let Some(address) = address {
                        let unverified = Subject::UnverifiedWebhooks(address);
                        let rate = self.limiter.settings().unverified_webhooks;
                        // Spent, not checked: this request is refused anyway.
                        let _ = self.limiter.check(&unverified, rate, 1).await;
                    }
                    tracing::info!(source = %source_id, reason = %failure, "webhook verification failed");
                    self.audit_refusal(call, &scope, source_id, failure.label())
                        .await;
                    return Err(Rejection::new(failure.label(), verification_failed())
                        .with_detail(failure.to_string()));
                }
            }
        };
        let (source, quotas) = (&state.source, &state.quotas);

        // A verified sender spends the source's own limit (per second, bursts of one second's
        // worth) and its tenant's `requests_per_second`.
        if compiled.rate_limit > 0 {
            let own = Subject::Source {
                tenant_id,
                source_id,
            };
            let rate = Rate::per_second(compiled.rate_limit, compiled.rate_limit);
            if let Err(limited) = self.limiter.check(&own, rate, 1).await {
                return Err(Rejection::new("rate_limited", limited.status()));
            }
        }
        if let Err(limited) = self.limiter.tenant_with(tenant_id, quotas).await {
            return Err(Rejection::new("rate_limited", limited.status()));
        }

        // Slack's endpoint check: answered once the request is proven to come from Slack.
        if matches!(compiled.scheme, Scheme::Slack) {
            if let Some(challenge) = zen_webhook::slack_url_verification(&body) {
                return Ok((
                    "challenge",
                    pb::ReceiveWebhookResponse {
                        outcome: pb::DeliveryOutcome::Challenge as i32,
                        event_ids: Vec::new(),
                        challenge,
                    },
                ));
            }
        }

        let media_type = headers
            .get("content-type")
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            })
            .unwrap_or_default();
        if !(media_type.is_empty()
            || media_type == "application/json"
            || media_type.ends_with("+json"))
        {
            return Err(Rejection::new(
                "unsupported_media_type",
                Status::with_error_details(
                    Code::InvalidArgument,
                    format!("deliveries must be JSON (application/json); got `{media_type}`"),
                    ErrorDetails::with_error_info(
                        "UNSUPPORTED_MEDIA_TYPE",
                        ERROR_DOMAIN,
                        HashMap::new(),
                    ),
                ),
            ));
        }
        let payload: Value = serde_json::from_slice(&body).map_err(|e| {
            Rejection::new(
                "invalid",
                invalid(&[("body", &format!("is not JSON: {e}"))]),
            )
        })?;
        // The id replay protection and deduplication key on must be covered by the signature,
        // or a replayed request with a fresh id header would pass as new: see `delivery_key`.
        let body_digest = hex::encode(Sha256::digest(&body));
        let delivery_id = delivery_key(
            &compiled.scheme,
            &verified,
            &payload,
            &body_digest,
            now.timestamp(),
            compiled.dedup_window,
        );
        if delivery_id.len() > 200 {
            return Err(Rejection::new(
                "invalid",
                invalid(&[("headers", "the delivery id is longer than 200 characters")]),
            ));
        }
        if let Err(rejection) = self
            .check_replay(
                &format!("wh:seen:{source_id}:{delivery_id}"),
                &body_digest,
                compiled.dedup_window.max(compiled.tolerance),
            )
            .await
        {
            if rejection.label == "replayed" {
                self.audit_refusal(call, &scope, source_id, "replayed")
                    .await;
            }
            return Err(rejection);
        }

        if let Some(validator) = &compiled.schema {
            if let Err(errors) = schema::validate(validator, &payload) {
                let violations: Vec<FieldViolation> = errors
                    .iter()
                    .map(|e| {
                        FieldViolation::new(
                            format!("body{}", e.instance_pointer),
                            e.message.clone(),
                        )
                    })
                    .collect();
                let mut details = ErrorDetails::with_bad_request(violations);
                details.set_error_info("SCHEMA_VALIDATION_FAILED", ERROR_DOMAIN, HashMap::new());
                return Err(Rejection::new(
                    "schema_invalid",
                    Status::with_error_details(
                        Code::InvalidArgument,
                        format!(
                            "the payload does not satisfy the source's JSON Schema ({} errors)",
                            errors.len()
                        ),
                        details,
                    ),
                ));
            }
        }

        let mapped = zen_webhook::map(
            compiled.mapping.as_ref(),
            &payload,
            &MapDefaults {
                type_name: source.name.clone(),
                delivery_id: Some(delivery_id.clone()),
                received: now,
            },
        )
        .map_err(|e| {
            let mut details = ErrorDetails::with_bad_request(vec![FieldViolation::new(
                format!("body{}", e.pointer),
                e.message.clone(),
            )]);
            details.set_error_info("MAPPING_FAILED", ERROR_DOMAIN, HashMap::new());
            Rejection::new(
                "mapping_failed",
                Status::with_error_details(Code::InvalidArgument, e.to_string(), details),
            )
        })?;
        let several = mapped.len() > 1;
        let events: Vec<NewEvent> = mapped
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let source_event_id = match (&e.source_event_id, several) {
                    (Some(id), _) if !id.is_empty() => id.clone(),
                    (_, true) => format!("{delivery_id}/{i}"),
                    _ => delivery_id.clone(),
                };
                let fingerprint = e
                    .fingerprint
                    .clone()
                    .unwrap_or_else(|| hex::encode(Sha256::digest(source_event_id.as_bytes())));
                NewEvent {
                    source: "webhook".into(),
                    source_name: Some(source_id.to_string()),
                    category: e.category.as_str().to_ascii_lowercase(),
                    severity: e.severity.number() as i16,
                    event_type: e.r#type,
                    title: e.title,
                    resource: json!({
                        "api_version": e.resource.api_version,
                        "kind": e.resource.kind,
                        "namespace": e.resource.namespace,
                        "name": e.resource.name,
                        "uid": e.resource.uid,
                    }),
                    details: Value::Object(e.details),
                    fingerprint,
                    detected_at: e.detect_time,
                    source_event_id,
                }
            })
            .collect();

        // The tenant's daily event quota, counted before the commit and given back if it fails.
        let count = events.len();
        if let Err(limited) = self
            .limiter
            .reserve_events(&self.store, tenant_id, quotas, count)
            .await
        {
            return Err(Rejection::new("event_quota", limited.status()));
        }
        // Answered only after the commit: nothing answered 2xx is lost.
        let outcomes = match self
            .store_events(call, tenant_id, source, &delivery_id, events)
            .await
        {
            Ok(outcomes) => outcomes,
            Err(s) => {
                self.limiter.release_events(tenant_id, count).await;
                let label = if s.code() == Code::Unavailable {
                    "backpressure"
                } else {
                    "invalid"
                };
                return Err(Rejection::new(label, s));
            }
        };
        metrics::histogram!("zen_webhook_delivery_seconds").record(started.elapsed().as_secs_f64());
        let duplicate = !outcomes.is_empty()
            && outcomes
                .iter()
                .all(|o| matches!(o, EventOutcome::Duplicate { .. }));
        let (label, outcome) = if duplicate {
            ("duplicate", pb::DeliveryOutcome::Duplicate)
        } else {
            ("accepted", pb::DeliveryOutcome::Accepted)
        };
        Ok((
            label,
            pb::ReceiveWebhookResponse {
                outcome: outcome as i32,
                event_ids: outcomes.iter().map(|o| o.event_id().to_string()).collect(),
                challenge: String::new(),
            },
        ))
    }

    /// Remembers a delivery id with the digest of its body for `window`, on every replica (the
    /// shared cache). The same id with the same body passes (a redelivery: the store's
    /// receipts make it a DUPLICATE); with another body it is a replay and refused.
    async fn check_replay(
        &self,
        key: &str,
        digest: &str,
        window: Duration,
    ) -> Result<(), Rejection> {
        match self
            .cache
            .set_if_absent(key, digest.as_bytes(), window)
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => match self.cache.get(key).await {
                Ok(Some(seen)) if seen == digest.as_bytes() => Ok(()),
                Ok(None) => Ok(()),
                Ok(Some(_)) => Err(Rejection::new(
                    "replayed",
                    Status::with_error_details(
                        Code::AlreadyExists,
                        "this delivery id was already received with another body",
                        ErrorDetails::with_error_info(
                            "DELIVERY_REPLAYED",
                            ERROR_DOMAIN,
                            HashMap::new(),
                        ),
                    ),
                )),
                Err(error) => Err(Rejection::new("unavailable", cache_down(error))),
            },
            Err(error) => Err(Rejection::new("unavailable", cache_down(error))),
        }
    }

    /// Stores the delivery through the tenant's group commit, with its audit record (the
    /// authentication decision and what it changed, in the tenant's chain).
    async fn store_events(
        &self,
        call: &Call,
        tenant_id: Uuid,
        source: &WebhookSource,
        delivery_id: &str,
        events: Vec<NewEvent>,
    ) -> Result<Vec<EventOutcome>, Status> {
        let mut audit = audit_record(
            &call.caller,
            Some(&call.context),
            "webhook.receive",
            "webhook_source",
            source.id,
            AuditOutcome::Success,
            json!({ "delivery_id": delivery_id, "events": events.len() }),
        );
        audit.actor_type = "webhook_source".into();
        audit.actor_id = Some(source.id.to_string());
        let delivery = CommitDelivery::new(source.id, source.cluster_id, events, audit);
        self.commits
            .store(tenant_id, delivery)
            .await
            .map_err(|e| match e {
                CommitError::Store(
                    e @ (StoreError::Invalid { .. }
                    | StoreError::NotFound { .. }
                    | StoreError::QuotaExceeded { .. }
                    | StoreError::Precondition { .. }
                    | StoreError::WritesRefused { .. }),
                ) => store_status(e, "event"),
                CommitError::Store(e) => {
                    tracing::warn!(error = %e, "storing a webhook delivery failed");
                    busy()
                }
                CommitError::Busy => busy(),
            })
    }

    /// A refused delivery lands in the tenant's audit chain (retried; a refusal must not
    /// become a 5xx because the audit log is busy, so one that cannot be written is counted
    /// in `zen_audit_records_lost_total`).
    async fn audit_refusal(&self, call: &Call, scope: &Scope, source_id: Uuid, reason: &str) {
        let mut record = audit_record(
            &call.caller,
            Some(&call.context),
            "webhook.receive",
            "webhook_source",
            source_id,
            AuditOutcome::Denied,
            json!({ "reason": reason }),
        );
        record.actor_type = "webhook_source".into();
        record.actor_id = Some(source_id.to_string());
        append_audit(&self.store, scope, record, "webhook_refusal").await;
    }

    // ------------------------------------------------------------------ legacy agents

    /// The legacy HMAC key of one cluster: hex HMAC-SHA256(master, "zen-legacy-agent/{t}/{c}").
    pub fn legacy_cluster_key(master: &str, tenant_id: Uuid, cluster_id: Uuid) -> String {
        let mut mac = hmac::Hmac::<Sha256>::new_from_slice(master.as_bytes())
            .expect("HMAC takes keys of any length");
        mac.update(format!("{LEGACY_KEY_CONTEXT}/{tenant_id}/{cluster_id}").as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    pub async fn ingest_legacy(
        &self,
        request: Request<pb::IngestLegacyEventsRequest>,
        agent_batch: impl AsyncFnOnce(Uuid, Uuid, pb::EventBatch) -> Result<pb::BatchAck, Status>,
    ) -> Result<Response<pb::IngestLegacyEventsResponse>, Status> {
        // Off, the endpoint does not exist on this server: NOT_FOUND (404), whatever was sent.
        let Some(master) = &self.settings.legacy_agent_key else {
            return Err(Status::with_error_details(
                Code::NotFound,
                "the legacy agent endpoint is off on this server (ZEN_LEGACY_AGENT_KEY)",
                ErrorDetails::with_error_info(
                    "LEGACY_ENDPOINT_DISABLED",
                    ERROR_DOMAIN,
                    HashMap::new(),
                ),
            ));
        };
        let req = request.into_inner();
        let headers: HashMap<String, String> = req
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .collect();
        let id_header = |name: &str| {
            headers
                .get(name)
                .and_then(|v| Uuid::parse_str(v.trim()).ok())
                .ok_or_else(|| {
                    invalid(&[(
                        &format!("headers.{name}"),
                        "is required: the agent's tenant and cluster ids (UUIDs)",
                    )])
                })
        };
        let tenant_id = id_header("x-zen-tenant-id")?;
        let cluster_id = id_header("x-zen-cluster-id")?;
        let body = req.body.map(|b| b.data).unwrap_or_default();
        let key = Self::legacy_cluster_key(master, tenant_id, cluster_id);
        let verified = zen_webhook::verify(
            &Scheme::ZenHmac,
            &Delivery {
                headers: &headers,
                body: &body,
            },
            &[key],
            Utc::now().timestamp(),
            DEFAULT_TOLERANCE,
        );
        let verified = match verified {
            Ok(v) => v,
            Err(failure) => {
                count("legacy", failure.label());
                return Err(verification_failed());
            }
        };
        let digest = hex::encode(Sha256::digest(&body));
        let nonce = verified.delivery_id.unwrap_or_default();
        self.check_replay(
            &format!("wh:legacy:{cluster_id}:{nonce}"),
            &digest,
            DEFAULT_TOLERANCE * 2,
        )
        .await
        .map_err(|r| {
            count("legacy", r.label);
            r.status
        })?;
        let events = legacy_events(&body)?;
        // A cluster that is unknown, deleted or not the tenant's is NOT_FOUND, not 202.
        let ack = agent_batch(
            tenant_id,
            cluster_id,
            pb::EventBatch {
                batch_id: nonce,
                events,
            },
        )
        .await?;
        if let Some(retry) = ack.retry_after {
            count("legacy", "unavailable");
            let retry = Duration::from_secs(u64::try_from(retry.seconds).unwrap_or(1).max(1));
            let mut details = ErrorDetails::with_retry_info(Some(retry));
            details.set_error_info("BACKPRESSURE", ERROR_DOMAIN, HashMap::new());
            return Err(Status::with_error_details(
                Code::Unavailable,
                "the events were not stored; resend later",
                details,
            ));
        }
        count("legacy", "accepted");
        let mut response = Response::new(pb::IngestLegacyEventsResponse { acks: ack.acks });
        response
            .metadata_mut()
            .insert(zen_gateway_status_key(), MetadataValue::from_static("202"));
        Ok(response)
    }
}

/// The id a delivery is remembered by (replay memory, the store's receipts, the event's
/// `source_event_id`), always covered by the signature:
/// - the scheme's signed id (`zen-hmac` nonce, Standard Webhooks `webhook-id`, Stripe's payload
///   `id`, a generic id header inside the signed template), or Slack's payload `event_id`
///   (Slack signs the body and keeps `event_id` across its retries);
/// - otherwise, with a signed timestamp: SHA-256 of timestamp and body (a replay inside the
///   tolerance has both unchanged);
/// - otherwise (GitHub and Shopify, whose id headers are unsigned; bearer; basic): SHA-256 of
///   the body and the dedup window it arrives in, so a replayed body within the window is a
///   duplicate while the same alert sent again later is a new occurrence (folded by
///   fingerprint if the mapping has one).
fn delivery_key(
    scheme: &Scheme,
    verified: &zen_webhook::Verified,
    payload: &Value,
    body_digest: &str,
    now_unix: i64,
    window: Duration,
) -> String {
    if scheme.signs_delivery_id() {
        if let Some(id) = verified.delivery_id.as_ref().filter(|id| !id.is_empty()) {
            return id.clone();
        }
    }
    if matches!(scheme, Scheme::Slack) {
        if let Some(id) = payload.get("event_id").and_then(Value::as_str) {
            if !id.is_empty() {
                return format!("slack:{id}");
            }
        }
    }
    let scope = match verified.timestamp {
        Some(t) => format!("t{t}"),
        None => {
            let window = i64::try_from(window.as_secs().max(1)).unwrap_or(i64::MAX);
            format!("w{}", now_unix.div_euclid(window))
        }
    };
    hex::encode(Sha256::digest(format!("{scope}.{body_digest}").as_bytes()))
}

/// Parses `{"events": [AgentEvent, ...]}` (proto3 JSON).
fn legacy_events(body: &[u8]) -> Result<Vec<pb::AgentEvent>, Status> {
    use prost_reflect::DynamicMessage;
    let descriptor = crate::proto::DESCRIPTOR_POOL
        .get_message_by_name("zen.ingest.v1.AgentEvent")
        .ok_or_else(|| Status::internal("AgentEvent is missing from the descriptor set"))?;
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| invalid(&[("body", &format!("is not JSON: {e}"))]))?;
    let Some(items) = value.get("events").and_then(Value::as_array) else {
        return Err(invalid(&[(
            "body.events",
            "is required: an array of events",
        )]));
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| {
            let message = DynamicMessage::deserialize(descriptor.clone(), item)
                .map_err(|e| invalid(&[(&format!("body.events[{i}]"), &e.to_string())]))?;
            message
                .transcode_to::<pb::AgentEvent>()
                .map_err(|e| invalid(&[(&format!("body.events[{i}]"), &e.to_string())]))
        })
        .collect()
}

/// A refused delivery: the status for the caller and the outcome label for metrics.
struct Rejection {
    label: &'static str,
    status: Status,
    /// What the tenant's delivery log says when it is more than the sender was told (the
    /// precise verification failure).
    detail: Option<String>,
}

impl Rejection {
    fn new(label: &'static str, status: Status) -> Self {
        Self {
            label,
            status,
            detail: None,
        }
    }

    fn with_detail(mut self, detail: String) -> Self {
        self.detail = Some(detail);
        self
    }
}

fn count(source: &str, outcome: &str) {
    metrics::counter!(
        "zen_webhook_requests_total",
        "source" => source.to_owned(),
        "outcome" => outcome.to_owned()
    )
    .increment(1);
}

/// The one answer to a delivery that does not verify, whatever failed (the reason is logged
/// and audited, never told to the sender).
fn verification_failed() -> Status {
    Status::with_error_details(
        Code::Unauthenticated,
        VERIFICATION_FAILED,
        ErrorDetails::with_error_info("VERIFICATION_FAILED", ERROR_DOMAIN, HashMap::new()),
    )
}

fn precondition(reason: &str, message: &str) -> Status {
    let mut details = ErrorDetails::with_error_info(reason, ERROR_DOMAIN, HashMap::new());
    details.add_precondition_failure_violation(reason, "", message);
    Status::with_error_details(Code::FailedPrecondition, message, details)
}

fn busy() -> Status {
    let mut details = ErrorDetails::with_retry_info(Some(Duration::from_secs(1)));
    details.set_error_info("BACKPRESSURE", ERROR_DOMAIN, HashMap::new());
    Status::with_error_details(
        Code::Unavailable,
        "the server is busy and stored nothing; retry the delivery",
        details,
    )
}

fn cache_down(error: impl std::fmt::Display) -> Status {
    crate::outage::CACHE.failed(&error);
    busy()
}

fn zen_gateway_status_key() -> tonic::metadata::MetadataKey<tonic::metadata::Ascii> {
    tonic::metadata::MetadataKey::from_static(zen_gateway::HTTP_STATUS_METADATA)
}

/// AIP-154: a stated version must be current; 0 means "whatever is current" (the contract's
/// rules refuse negative versions).
fn version_or_current(version: i64) -> Option<i64> {
    (version > 0).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scheme_names_round_trip() {
        for n in 1..=9 {
            let scheme = pb::WebhookScheme::try_from(n).unwrap();
            assert_eq!(scheme_from_name(scheme_name(scheme).unwrap()), scheme);
        }
        assert_eq!(scheme_from_name("nope"), pb::WebhookScheme::Unspecified);
    }

    #[test]
    fn legacy_keys_differ_per_cluster_and_tenant() {
        let (t, c) = (Uuid::now_v7(), Uuid::now_v7());
        let key = Webhooks::legacy_cluster_key("master-key", t, c);
        assert_eq!(key.len(), 64);
        assert_ne!(key, Webhooks::legacy_cluster_key("master-key", c, t));
        assert_ne!(key, Webhooks::legacy_cluster_key("other-key", t, c));
    }

    #[test]
    fn legacy_bodies_parse_as_agent_events() {
        let events = legacy_events(
            br#"{"events":[{"agentEventId":"a1","type":"x","severity":"SEVERITY_HIGH"}]}"#,
        )
        .unwrap();
        assert_eq!(events[0].agent_event_id, "a1");
        assert!(legacy_events(br#"{"events":[{"nope":1}]}"#).is_err());
        assert!(legacy_events(b"[]").is_err());
    }
}
