//! Webhook sources: the stored form. The verification settings, schema and
//! mapping are one JSON document (`spec`) that the service encodes and
//! decodes; the store keeps it whole and only looks at `scheme` (to filter).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A live (or, through `get`, soft-deleted) webhook source with the
/// metadata of its secrets that still verify.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSource {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub enabled: bool,
    /// The verification scheme's name (the service's vocabulary).
    pub scheme: String,
    pub spec: Value,
    pub cluster_id: Option<Uuid>,
    pub last_delivery_at: Option<DateTime<Utc>>,
    pub version: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
    /// Unexpired secrets, newest first (filled by `get`, `list`, `create`,
    /// `update` and `rotate_secret`, as of the call).
    pub secrets: Vec<WebhookSecretMeta>,
}

/// A secret of a source, without its value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WebhookSecretMeta {
    pub id: Uuid,
    pub created_at: DateTime<Utc>,
    /// `None` for the current secret.
    pub expires_at: Option<DateTime<Utc>>,
}

/// A secret with its sealed value, for verification.
#[derive(Clone, PartialEq)]
pub struct SealedWebhookSecret {
    pub id: Uuid,
    /// As the caller sealed it; the store never sees the clear value.
    pub sealed: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for SealedWebhookSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SealedWebhookSecret")
            .field("id", &self.id)
            .field("created_at", &self.created_at)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A secret to store: the caller picks its id (it is part of the sealing's
/// associated data) and seals the value.
#[derive(Clone)]
pub struct NewWebhookSecret {
    pub id: Uuid,
    pub sealed: String,
}

/// What `WebhookSourceRepo::create` needs. `id` is chosen by the caller
/// (it is bound into the first secret's sealing).
#[derive(Debug, Clone, Default)]
pub struct NewWebhookSource {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    pub description: String,
    pub enabled: bool,
    pub scheme: String,
    pub spec: Value,
    pub cluster_id: Option<Uuid>,
}

/// A partial update: `None` leaves a field alone. `cluster_id:
/// Some(None)` detaches the source from its cluster.
#[derive(Debug, Clone, Default)]
pub struct WebhookSourceUpdate {
    pub display_name: Option<String>,
    pub description: Option<String>,
    pub enabled: Option<bool>,
    pub scheme: Option<String>,
    pub spec: Option<Value>,
    pub cluster_id: Option<Option<Uuid>>,
}

/// Filters of `WebhookSourceRepo::list`.
#[derive(Debug, Clone, Default)]
pub struct WebhookSourceFilter {
    pub scheme: Option<String>,
    pub name_prefix: Option<String>,
}
