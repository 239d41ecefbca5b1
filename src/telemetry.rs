//! Logs, metrics and traces: JSON (or text) logs through `tracing`, a Prometheus recorder whose
//! text rendering `/metrics` serves, and OpenTelemetry traces exported over OTLP when an
//! endpoint is configured (off, and nothing installed, otherwise).
//!
//! Trace context crosses every hop as W3C `traceparent` / `tracestate`: from an HTTP client
//! into the edge span, from the gateway into the gRPC front (the inner hop continues the same
//! trace), from a delivery into the commit batch that stores it (a link), and from a
//! remediation to the agent that runs it (the command carries it). See docs/OBSERVABILITY.md.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context as _;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

use crate::config::LogFormat;

/// Where traces go: read from the environment (`ZEN_OTEL_EXPORTER_OTLP_ENDPOINT`, else the
/// standard `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` / `OTEL_EXPORTER_OTLP_ENDPOINT`, with
/// `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`). Service name, resource attributes, sampler and
/// batching follow the standard `OTEL_*` variables, which the SDK reads itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TraceExport {
    pub endpoint: String,
    pub protocol: TraceProtocol,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TraceProtocol {
    Grpc,
    HttpProtobuf,
}

impl TraceExport {
    /// `None` when no endpoint is set (tracing off); an error for a protocol Zen cannot speak.
    pub fn from_env() -> anyhow::Result<Option<Self>> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(get: impl Fn(&str) -> Option<String>) -> anyhow::Result<Option<Self>> {
        let first = |names: &[&str]| {
            names
                .iter()
                .filter_map(|name| get(name))
                .map(|value| value.trim().to_owned())
                .find(|value| !value.is_empty())
        };
        let Some(endpoint) = first(&[
            "ZEN_OTEL_EXPORTER_OTLP_ENDPOINT",
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]) else {
            return Ok(None);
        };
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            anyhow::bail!(
                "the OTLP endpoint `{endpoint}` must be an http:// or https:// URL \
                 (e.g. http://otel-collector:4317 for gRPC, http://otel-collector:4318 for HTTP)"
            );
        }
        let protocol = match first(&[
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ])
        .as_deref()
        {
            None | Some("grpc") => TraceProtocol::Grpc,
            Some("http/protobuf") => TraceProtocol::HttpProtobuf,
            Some(other) => anyhow::bail!(
                "OTEL_EXPORTER_OTLP_PROTOCOL `{other}` is not supported: use grpc or http/protobuf"
            ),
        };
        Ok(Some(Self { endpoint, protocol }))
    }

    /// The URL spans are posted to: for HTTP the signal path is appended to a base endpoint,
    /// as the OTLP exporter specification says for `OTEL_EXPORTER_OTLP_ENDPOINT`.
    fn url(&self) -> String {
        match self.protocol {
            TraceProtocol::Grpc => self.endpoint.clone(),
            TraceProtocol::HttpProtobuf if self.endpoint.ends_with("/v1/traces") => {
                self.endpoint.clone()
            }
            TraceProtocol::HttpProtobuf => {
                format!("{}/v1/traces", self.endpoint.trim_end_matches('/'))
            }
        }
    }
}

/// The tracer provider, kept so [`shutdown`] can flush what is still batched.
static PROVIDER: std::sync::OnceLock<SdkTracerProvider> = std::sync::OnceLock::new();

/// Installs the global log subscriber (and the trace exporter when `traces` is set);
/// `RUST_LOG` overrides the default `info` level of the logs. `format: None` writes no logs
/// (a benchmark's output is its figures). Only the first call in a process takes effect (tests
/// start several servers in one process).
pub fn init(format: Option<LogFormat>, traces: Option<&TraceExport>) -> anyhow::Result<()> {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let otel = match traces {
        Some(export) if PROVIDER.get().is_none() => {
            let provider = tracer_provider(export)?;
            let tracer = provider.tracer("zen");
            let _ = PROVIDER.set(provider);
            opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_threads(false)
                    .with_target(false)
                    // Zen's spans are INFO; RUST_LOG quiets the logs, not the traces.
                    .with_filter(tracing_subscriber::filter::LevelFilter::INFO),
            )
        }
        _ => None,
    };
    let json = matches!(format, Some(LogFormat::Json)).then(|| {
        fmt::layer()
            .json()
            .with_current_span(true)
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let text = matches!(format, Some(LogFormat::Text)).then(|| {
        fmt::layer()
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .with_writer(std::io::stderr)
            .with_filter(filter())
    });
    let _ = tracing_subscriber::registry()
        .with(otel)
        .with(json)
        .with(text)
        .try_init();
    if let Some(export) = traces {
        tracing::info!(endpoint = %export.url(), protocol = ?export.protocol, "exporting traces over OTLP");
    }
    Ok(())
}

/// Installs the log subscriber alone (tools and tests that export no traces).
pub fn init_logging(format: LogFormat) {
    let _ = init(Some(format), None);
}

/// Exports what is still batched; call once before the process exits.
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        if let Err(error) = provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("warning: flushing traces: {error}");
        }
    }
}

fn tracer_provider(export: &TraceExport) -> anyhow::Result<SdkTracerProvider> {
    // The batch processor exports from a thread of its own, and both OTLP transports need a
    // Tokio reactor there: the exporter brings its own one-thread runtime.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .thread_name("zen-otlp")
        .build()
        .context("starting the trace exporter's runtime")?;
    let exporter = {
        let _entered = runtime.enter();
        let builder = opentelemetry_otlp::SpanExporter::builder();
        match export.protocol {
            TraceProtocol::Grpc => builder
                .with_tonic()
                .with_endpoint(export.url())
                .with_timeout(Duration::from_secs(10))
                .build(),
            TraceProtocol::HttpProtobuf => builder
                .with_http()
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(export.url())
                .with_timeout(Duration::from_secs(10))
                .build(),
        }
        .context("building the OTLP trace exporter")?
    };
    let mut resource = Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name("zen");
    }
    resource = resource.with_attribute(opentelemetry::KeyValue::new(
        "service.version",
        env!("CARGO_PKG_VERSION"),
    ));
    Ok(SdkTracerProvider::builder()
        .with_resource(resource.build())
        .with_batch_exporter(WithRuntime {
            runtime,
            inner: exporter,
        })
        .build())
}

/// A span exporter driven on a runtime of its own (see [`tracer_provider`]).
#[derive(Debug)]
struct WithRuntime<E> {
    runtime: tokio::runtime::Runtime,
    inner: E,
}

impl<E: SpanExporter> SpanExporter for WithRuntime<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        // Called on the batch processor's own thread, never on a runtime's.
        self.runtime.block_on(self.inner.export(batch))
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Continues the trace whose W3C context `headers` carry (an HTTP request or gRPC metadata)
/// in `span`, and records the trace and span ids on it so its log lines carry them. Without
/// a context (or with tracing off) the span starts a trace of its own.
pub fn continue_trace(span: &tracing::Span, headers: &http::HeaderMap) {
    continue_from(span, &HeaderExtractor(headers));
}

/// Sets `span`'s parent to the valid context `carrier` holds, and records the ids.
fn continue_from(span: &tracing::Span, carrier: &dyn Extractor) {
    if PROVIDER.get().is_none() {
        return;
    }
    let parent =
        opentelemetry::global::get_text_map_propagator(|propagator| propagator.extract(carrier));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    record_ids(span);
}

/// Records the OpenTelemetry trace and span ids of `span` as its `trace_id` / `span_id`
/// fields (declared `Empty` where the span is made), for the log lines inside it.
pub fn record_ids(span: &tracing::Span) {
    if PROVIDER.get().is_none() {
        return;
    }
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string());
        span.record("span_id", span_context.span_id().to_string());
    }
}

/// Names `span` once its name is known (the HTTP edge learns the route after the span began;
/// `otel.name` recorded late does not rename a span already started).
pub fn rename(span: &tracing::Span, name: String) {
    if PROVIDER.get().is_some() {
        span.context().span().update_name(name);
    }
}

/// The W3C headers (`traceparent`, `tracestate`) for the current span, to send to the next hop.
pub fn current_context_headers() -> HashMap<String, String> {
    let mut carrier = HashMap::new();
    if PROVIDER.get().is_some() {
        let context = tracing::Span::current().context();
        opentelemetry::global::get_text_map_propagator(|propagator| {
            propagator.inject_context(&context, &mut MapInjector(&mut carrier))
        });
    }
    carrier
}

/// Makes `span` a continuation of the context in `carrier` (as [`current_context_headers`]
/// produced it, e.g. carried by a remediation command to the agent).
pub fn continue_from_map(span: &tracing::Span, carrier: &HashMap<String, String>) {
    if !carrier.is_empty() {
        continue_from(span, &MapExtractor(carrier));
    }
}

/// The span context of the current span, to link a later span (a commit batch) to it.
pub fn current_span_context() -> Option<opentelemetry::trace::SpanContext> {
    PROVIDER.get()?;
    let context = tracing::Span::current().context();
    let span_context = context.span().span_context().clone();
    span_context.is_valid().then_some(span_context)
}

/// Links `span` to each of `contexts` (the spans a batch serves).
pub fn link(
    span: &tracing::Span,
    contexts: impl IntoIterator<Item = opentelemetry::trace::SpanContext>,
) {
    for context in contexts {
        span.add_link(context);
    }
}

/// Whether traces are exported.
pub fn tracing_enabled() -> bool {
    PROVIDER.get().is_some()
}

/// `make()` when traces are exported, a disabled span otherwise: the spans that exist only for
/// traces (the edge, the gateway's call, verification, commits, remediation hand-overs) cost
/// nothing when tracing is off, logs on or not.
pub fn traced(make: impl FnOnce() -> tracing::Span) -> tracing::Span {
    if tracing_enabled() {
        make()
    } else {
        tracing::Span::none()
    }
}

struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct MapExtractor<'a>(&'a HashMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct MapInjector<'a>(&'a mut HashMap<String, String>);

impl Injector for MapInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

/// Installs the process-wide metrics recorder once and returns a handle that renders it.
pub fn metrics_handle() -> PrometheusHandle {
    static HANDLE: std::sync::OnceLock<PrometheusHandle> = std::sync::OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets(&[
                    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                    10.0,
                ])
                .expect("static buckets are valid")
                .build_recorder();
            let handle = recorder.handle();
            // A recorder may already be installed (tests embedding Zen); keep rendering ours.
            if metrics::set_global_recorder(recorder).is_ok() {
                describe_metrics();
            }
            handle
        })
        .clone()
}

enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric Zen exports, with its help text (docs/OBSERVABILITY.md has the same list with
/// labels and their bounds). Label sets are bounded: no label value comes from the network
/// except ids Zen issued (webhook sources, tenants, clusters).
const METRICS: &[(&str, Kind, &str)] = &[
    ("zen_build_info", Kind::Gauge, "Always 1; the version of the running binary in its label."),
    ("zen_http_requests_total", Kind::Counter, "HTTP requests on the public listener by method, route template and status."),
    ("zen_http_request_duration_seconds", Kind::Histogram, "Time to answer an HTTP request on the public listener, by method and route template."),
    ("zen_grpc_requests_total", Kind::Counter, "gRPC calls by method and status code."),
    ("zen_grpc_request_duration_seconds", Kind::Histogram, "Time to answer a gRPC call (to the first response for streams), by method and status code."),
    ("zen_webhook_requests_total", Kind::Counter, "Webhook deliveries by source and outcome."),
    ("zen_webhook_verification_seconds", Kind::Histogram, "Time to verify a webhook signature, by scheme."),
    ("zen_webhook_delivery_seconds", Kind::Histogram, "Time to handle a webhook delivery from routing to the stored answer."),
    ("zen_webhook_commit_seconds", Kind::Histogram, "Time of one group-commit transaction of webhook deliveries."),
    ("zen_webhook_commit_batch_deliveries", Kind::Histogram, "Deliveries stored by one group-commit transaction."),
    ("zen_webhook_commit_queue_depth", Kind::Gauge, "Webhook deliveries waiting for their tenant's committer."),
    ("zen_ingest_events_total", Kind::Counter, "Agent events by outcome."),
    ("zen_ingest_batch_seconds", Kind::Histogram, "Time to store one agent batch."),
    ("zen_agents_connected", Kind::Gauge, "Agent streams open on this replica."),
    ("zen_agent_heartbeats_total", Kind::Counter, "Heartbeats received from agents."),
    ("zen_cluster_events_total", Kind::Counter, "Agent events received, by tenant and cluster."),
    ("zen_remediations_total", Kind::Counter, "Remediation status changes, by the status entered."),
    ("zen_remediation_duration_seconds", Kind::Histogram, "Time from proposal to a terminal status, by that status."),
    ("zen_remediation_queue_depth", Kind::Gauge, "Remediation dispatches queued and not yet done."),
    ("zen_dlq_depth", Kind::Gauge, "Remediation dispatches dead-lettered."),
    ("zen_watchers", Kind::Gauge, "Event watches (gRPC and WebSocket) open on this replica."),
    ("zen_watch_tails", Kind::Gauge, "Store tails feeding event watches on this replica."),
    ("zen_watchers_refused_total", Kind::Counter, "Watches refused by the per-caller or per-tenant limit."),
    ("zen_gateway_websockets_open", Kind::Gauge, "WebSockets open on the gateway."),
    ("zen_gateway_websocket_closed_total", Kind::Counter, "WebSockets closed by the gateway, by reason."),
    ("zen_stream_consumers_too_slow_total", Kind::Counter, "Streams ended because their consumer did not keep up, by stream."),
    ("zen_dependency_up", Kind::Gauge, "1 while a dependency (database, cache) answers, 0 during an outage."),
    ("zen_dependency_outages_total", Kind::Counter, "Outages of a dependency seen by this replica."),
    ("zen_database_write_refusals_total", Kind::Counter, "Requests refused because the database answers but cannot write (disk full, read-only)."),
    ("zen_db_pool_connections", Kind::Gauge, "Database pool connections by state (idle, in_use, max, waiting)."),
    ("zen_db_pool_acquire_seconds", Kind::Histogram, "Time to get a pooled connection and begin a transaction."),
    ("zen_database_reads_total", Kind::Counter, "List reads by the pool that answered them (primary, or the read replica while it is fresh)."),
    ("zen_database_replica_fresh", Kind::Gauge, "1 while the read replica has replayed the primary's WAL position of the previous check (lists read it), else 0."),
    ("zen_database_replica_lag_bytes", Kind::Gauge, "Bytes of WAL the read replica's replay was behind the primary at the last check that reached both."),
    ("zen_cache_errors_total", Kind::Counter, "Cache (Redis) command failures by kind."),
    ("zen_audit_pending_records", Kind::Gauge, "Audit records queued for a shared append and not yet committed."),
    ("zen_audit_records_appended_total", Kind::Counter, "Audit records written to a chain."),
    ("zen_snapshot_invalidations_total", Kind::Counter, "Clears of this replica's role and webhook-delivery snapshots (a change made here or announced by another replica)."),
    ("zen_audit_batch_records", Kind::Histogram, "Audit records appended by one shared transaction."),
    ("zen_audit_records_lost_total", Kind::Counter, "Audit records that could not be written, by kind."),
    ("zen_retention_deleted_total", Kind::Counter, "Rows deleted by the retention janitor, by table."),
    ("zen_retention_last_run_timestamp_seconds", Kind::Gauge, "When this replica's last retention run finished (Unix seconds)."),
    ("zen_retention_last_run_duration_seconds", Kind::Gauge, "How long this replica's last retention run took."),
];

/// Describes every metric and creates the unlabelled (and fixed-label) ones at zero, so a
/// scrape shows them before the first event and rate() has a starting point.
fn describe_metrics() {
    for (name, kind, help) in METRICS {
        match kind {
            Kind::Counter => metrics::describe_counter!(*name, *help),
            Kind::Gauge => metrics::describe_gauge!(*name, *help),
            Kind::Histogram => metrics::describe_histogram!(*name, *help),
        }
    }
    metrics::gauge!("zen_build_info", "version" => env!("CARGO_PKG_VERSION")).set(1.0);
    for gauge in [
        "zen_agents_connected",
        "zen_watchers",
        "zen_watch_tails",
        "zen_gateway_websockets_open",
        "zen_webhook_commit_queue_depth",
        "zen_audit_pending_records",
        "zen_remediation_queue_depth",
        "zen_dlq_depth",
    ] {
        metrics::gauge!(gauge).increment(0.0);
    }
    for counter in [
        "zen_agent_heartbeats_total",
        "zen_audit_records_appended_total",
    ] {
        metrics::counter!(counter).increment(0);
    }
    for pool in ["primary", "replica"] {
        metrics::counter!("zen_database_reads_total", "pool" => pool).increment(0);
    }
    for dependency in ["database", "cache"] {
        metrics::counter!("zen_dependency_outages_total", "dependency" => dependency).increment(0);
    }
    for reason in ["full", "read_only", "io_error"] {
        metrics::counter!("zen_database_write_refusals_total", "reason" => reason).increment(0);
    }
    for limit in ["caller", "tenant"] {
        metrics::counter!("zen_watchers_refused_total", "limit" => limit).increment(0);
    }
    for kind in [
        "authentication",
        "authz_refusal",
        "authz_decision",
        "failed_mutation",
        "webhook_refusal",
    ] {
        metrics::counter!("zen_audit_records_lost_total", "kind" => kind).increment(0);
    }
    for kind in ["unavailable", "backend"] {
        metrics::counter!("zen_cache_errors_total", "kind" => kind).increment(0);
    }
    for reason in ["client_closed", "slow_consumer", "stream_ended", "refused"] {
        metrics::counter!("zen_gateway_websocket_closed_total", "reason" => reason).increment(0);
    }
    for stream in ["watcher", "agent"] {
        metrics::counter!("zen_stream_consumers_too_slow_total", "stream" => stream).increment(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(TraceExport::from_lookup(lookup(&[])).unwrap(), None);
        assert_eq!(
            TraceExport::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")])).unwrap(),
            None
        );
    }

    #[test]
    fn zen_variable_wins_and_protocol_is_read() {
        let export = TraceExport::from_lookup(lookup(&[
            ("ZEN_OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(export.protocol, TraceProtocol::HttpProtobuf);
        assert_eq!(export.url(), "http://a:4318/v1/traces");
        let grpc =
            TraceExport::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4317")]))
                .unwrap()
                .unwrap();
        assert_eq!(grpc.protocol, TraceProtocol::Grpc);
        assert_eq!(grpc.url(), "http://b:4317");
    }

    #[test]
    fn bad_settings_are_refused_with_a_reason() {
        let error = TraceExport::from_lookup(lookup(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://b:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json"),
        ]))
        .unwrap_err();
        assert!(error.to_string().contains("http/json"), "{error}");
        let error =
            TraceExport::from_lookup(lookup(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4317")]))
                .unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
    }
}
