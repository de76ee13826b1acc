//! The example service's operations endpoints: `/metrics` in the Prometheus text format (the
//! `metrics-exporter-prometheus` recorder, installed by the service; the library records
//! through the `metrics` facade and forces no exporter) and `/health`, the storage health
//! report as JSON (HTTP 200 when up or degraded, 503 when down, so a probe can use the code).

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use caas_storage::{HealthStatus, Storage};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Clone)]
struct Ops {
    storage: Storage,
    prometheus: PrometheusHandle,
}

/// Serves `/metrics` and `/health` on `addr` in the background; returns the bound address.
pub async fn serve(
    storage: Storage,
    prometheus: PrometheusHandle,
    addr: &str,
) -> std::io::Result<SocketAddr> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .with_state(Ops {
            storage,
            prometheus,
        });
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            eprintln!("the operations endpoint stopped: {e}");
        }
    });
    Ok(bound)
}

async fn metrics(State(ops): State<Ops>) -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        ops.prometheus.render(),
    )
}

async fn health(State(ops): State<Ops>) -> impl IntoResponse {
    let report = ops.storage.health().await;
    let code = match report.status {
        HealthStatus::Down => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::OK,
    };
    (code, Json(report))
}

/// A plain HTTP/1.1 GET (one request per connection): the status code and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok((code, body))
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}
