//! The REST front end: Open Inference Protocol v2 over HTTP/1.1 (health, server and model
//! metadata, model readiness, infer with JSON or binary tensor data), plus `/metrics`,
//! `/healthz` and `/readyz`. Errors are `{"error": "..."}` with the status of their kind; a full
//! queue answers 429 with `Retry-After`.

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use http_body_util::BodyExt;
use serde_json::json;

use super::oip::json::{
    HEADER_CONTENT_LENGTH, decode_request, encode_response, error_body, wants_binary,
};
use super::oip::{ErrorKind, OipError};
use super::state::AppState;
use crate::telemetry::METRICS_CONTENT_TYPE;

/// The REST router over shared state.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready))
        .route("/v2/models/{name}", get(model_metadata))
        .route(
            "/v2/models/{name}/versions/{version}",
            get(model_metadata_v),
        )
        .route("/v2/models/{name}/ready", get(model_ready))
        .route(
            "/v2/models/{name}/versions/{version}/ready",
            get(model_ready_v),
        )
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_v))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .fallback(not_found)
        .with_state(state)
}

type St = State<Arc<AppState>>;

fn json_response(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// The HTTP form of a protocol error.
pub fn error_response(e: &OipError) -> Response {
    let status = StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut r = json_response(status, error_body(&e.message));
    if let Some(s) = e.retry_after_s {
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    r
}

async fn server_metadata() -> Response {
    let body = json!({
        "name": "eali",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data"],
    });
    json_response(StatusCode::OK, body.to_string().into_bytes())
}

async fn live() -> Response {
    json_response(StatusCode::OK, br#"{"live":true}"#.to_vec())
}

async fn ready(State(s): St) -> Response {
    let ready = s.is_ready();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json_response(status, json!({ "ready": ready }).to_string().into_bytes())
}

async fn model_metadata(State(s): St, Path(name): Path<String>) -> Response {
    metadata_of(&s, &name, None)
}

async fn model_metadata_v(State(s): St, Path((name, version)): Path<(String, String)>) -> Response {
    metadata_of(&s, &name, Some(&version))
}

fn metadata_of(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match s
        .model(name)
        .and_then(|m| m.info.check_version(version).map(|_| m))
    {
        Ok(m) => json_response(
            StatusCode::OK,
            m.info.metadata_json().to_string().into_bytes(),
        ),
        Err(e) => error_response(&e),
    }
}

async fn model_ready(State(s): St, Path(name): Path<String>) -> Response {
    ready_of(&s, &name, None)
}

async fn model_ready_v(State(s): St, Path((name, version)): Path<(String, String)>) -> Response {
    ready_of(&s, &name, Some(&version))
}

fn ready_of(s: &AppState, name: &str, version: Option<&str>) -> Response {
    match s.model_ready(name, version) {
        Ok(true) => json_response(
            StatusCode::OK,
            json!({"name": name, "ready": true})
                .to_string()
                .into_bytes(),
        ),
        Ok(false) => json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"name": name, "ready": false})
                .to_string()
                .into_bytes(),
        ),
        Err(e) => error_response(&e),
    }
}

async fn infer(State(s): St, Path(name): Path<String>, headers: HeaderMap, body: Body) -> Response {
    infer_common(s, name, None, headers, body).await
}

async fn infer_v(
    State(s): St,
    Path((name, version)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    infer_common(s, name, Some(version), headers, body).await
}

/// A body up to this many times the limit is read to its end before the 413 goes out, so that
/// the client, still sending, sees the answer rather than a reset connection; beyond it the
/// connection is cut short.
const DRAIN_FACTOR: usize = 4;

/// Reads the body up to the configured limit (413 beyond it).
async fn read_body(
    s: &AppState,
    headers: &HeaderMap,
    mut body: Body,
) -> Result<bytes::Bytes, OipError> {
    let limit = s.max_body_bytes;
    let too_large = || {
        OipError::new(
            ErrorKind::TooLarge,
            format!("request body exceeds the limit of {limit} bytes"),
        )
    };
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let drain_cap = limit.saturating_mul(DRAIN_FACTOR);
    if declared.is_some_and(|n| n > drain_cap as u64) {
        return Err(too_large());
    }
    // Sized from the declared length up front: growing by doubling copies the body again.
    let mut buf = bytes::BytesMut::with_capacity(declared.map_or(0, |n| (n as usize).min(limit)));
    let mut seen = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame
            .map_err(|e| OipError::bad_request(format!("cannot read the request body: {e}")))?;
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > drain_cap {
                return Err(too_large());
            }
            if seen <= limit {
                buf.extend_from_slice(&data);
            }
        }
    }
    if seen > limit {
        return Err(too_large());
    }
    Ok(buf.freeze())
}

/// Reads a refused request's body to its end and drops it (without copying it anywhere);
/// beyond `DRAIN_FACTOR` times the body limit it stops, and the connection is closed.
async fn drain_body(limit: usize, mut body: Body) {
    let cap = limit.saturating_mul(DRAIN_FACTOR);
    let mut seen = 0usize;
    while let Some(Ok(frame)) = body.frame().await {
        if let Ok(data) = frame.into_data() {
            seen = seen.saturating_add(data.len());
            if seen > cap {
                return;
            }
        }
    }
}

async fn infer_common(
    s: Arc<AppState>,
    name: String,
    version: Option<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let parsed = async {
        if let Some(enc) = headers.get(header::CONTENT_ENCODING)
            && enc.as_bytes() != b"identity"
        {
            return Err(OipError::bad_request(format!(
                "Content-Encoding {} is not supported",
                String::from_utf8_lossy(enc.as_bytes())
            )));
        }
        let header_len = match headers.get(HEADER_CONTENT_LENGTH) {
            None => None,
            Some(v) => Some(
                v.to_str()
                    .ok()
                    .and_then(|v| v.trim().parse::<usize>().ok())
                    .ok_or_else(|| {
                        OipError::bad_request("Inference-Header-Content-Length is not a number")
                    })?,
            ),
        };
        // Admission decides on the headers, before the body is read: under overload most
        // requests are refused, and one admitted counts as queued while its body uploads, so
        // the requests arriving meanwhile are not admitted into the same places.
        let pass = match s.refuse_early(&name, started) {
            Ok(pass) => pass,
            Err(e) => {
                // A client that waits for `100 Continue` is refused without sending its body:
                // reading it would ask for it, and hyper closes the connection after the
                // answer. Any other client's body is read to its end and dropped before the
                // refusal goes out, which keeps the keep-alive connection usable and is what
                // clients that send before they read (hyper's) answer fastest.
                let continues = headers
                    .get(header::EXPECT)
                    .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
                if !continues {
                    drain_body(s.max_body_bytes, body).await;
                }
                return Err(e);
            }
        };
        let bytes = read_body(&s, &headers, body).await?;
        Ok((decode_request(&bytes, header_len)?, pass))
    }
    .await;
    let req = match parsed {
        // Submission counts it from here on.
        Ok((r, pass)) => {
            drop(pass);
            r
        }
        Err(e) => {
            s.count_refused(&name, &e);
            return error_response(&e);
        }
    };
    // A request names at most the model's one output (anything else is refused on admission).
    let binary = wants_binary(&req, req.outputs.first().map_or("", |o| o.name.as_str()));
    match s.infer(&name, version.as_deref(), req, started).await {
        Ok(resp) => {
            let (body, json_len) = encode_response(&resp, &|_| binary);
            let mut r = (StatusCode::OK, body).into_response();
            let h = r.headers_mut();
            match json_len {
                Some(n) => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/octet-stream"),
                    );
                    h.insert(HEADER_CONTENT_LENGTH, HeaderValue::from(n));
                }
                None => {
                    h.insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("application/json"),
                    );
                }
            }
            r
        }
        Err(e) => error_response(&e),
    }
}

async fn metrics(State(s): St) -> Response {
    let mut r = (StatusCode::OK, s.metrics.render()).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(METRICS_CONTENT_TYPE),
    );
    r
}

async fn healthz() -> &'static str {
    "ok\n"
}

async fn readyz(State(s): St) -> (StatusCode, &'static str) {
    if s.is_draining() {
        (StatusCode::SERVICE_UNAVAILABLE, "draining\n")
    } else if s.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn not_found() -> Response {
    error_response(&OipError::not_found("no such endpoint"))
}
