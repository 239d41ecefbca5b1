//! What every request on the public HTTP listener goes through: its server span (continuing
//! the caller's W3C trace context) and the edge metrics `zen_http_requests_total` and
//! `zen_http_request_duration_seconds`.
//!
//! Labels stay bounded: the route is the template the request matched (axum's route or the
//! gateway's `google.api.http` template), `unmatched` otherwise, never the raw path; methods
//! outside the standard set are `_OTHER` (OpenTelemetry's convention); the status is the
//! numeric code (at most the ~60 codes HTTP defines).

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use http::Method;
use tracing::field::Empty;
use tracing::Instrument;

use crate::telemetry;

/// The label for requests no route matched.
const UNMATCHED: &str = "unmatched";

/// axum middleware (`axum::middleware::from_fn(observe)`), applied to the whole public router.
pub async fn observe(request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let axum_route = request
        .extensions()
        .get::<MatchedPath>()
        .map(|path| path.as_str().to_owned());
    let span = telemetry::traced(|| {
        tracing::info_span!(
            "http",
            otel.kind = "server",
            otel.status_code = Empty,
            http.request.method = method,
            http.route = Empty,
            http.response.status_code = Empty,
            zen.request_id = Empty,
            trace_id = Empty,
            span_id = Empty,
        )
    });
    telemetry::continue_trace(&span, request.headers());
    let response = next.run(request).instrument(span.clone()).await;

    let route = axum_route
        .or_else(|| {
            response
                .extensions()
                .get::<zen_gateway::MatchedRoute>()
                .map(|m| m.0.to_string())
        })
        .unwrap_or_else(|| UNMATCHED.to_owned());
    let status = response.status();
    telemetry::rename(&span, format!("{method} {route}"));
    if route != UNMATCHED {
        span.record("http.route", route.as_str());
    }
    span.record("http.response.status_code", i64::from(status.as_u16()));
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    if let Some(id) = response
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
    {
        span.record("zen.request_id", id);
    }

    metrics::counter!(
        "zen_http_requests_total",
        "method" => method,
        "route" => route.clone(),
        "status" => status.as_str().to_owned(),
    )
    .increment(1);
    metrics::histogram!(
        "zen_http_request_duration_seconds",
        "method" => method,
        "route" => route,
    )
    .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::CONNECT => "CONNECT",
        Method::TRACE => "TRACE",
        _ => "_OTHER",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_methods_share_one_label() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(
            method_label(&Method::from_bytes(b"BREW").unwrap()),
            "_OTHER"
        );
    }
}
