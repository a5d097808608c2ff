//! dunetrace-gateway: a thin, stateless HTTP adapter that accepts the original Python SDK's
//! requests (`POST /v1/ingest`, `GET /v1/policies`, `POST /v1/deploy`) and hands every batch
//! to `dunetrace.ingest()` inside PostgreSQL. Validation, authentication and storage all stay
//! in the extension; the gateway answers 202 only after the batch has committed.

pub mod config;
pub mod db;
pub mod http;
pub mod metrics;

use std::sync::Arc;

/// Builds the application (router and shared state) from a configuration.
pub fn app(cfg: &config::Config) -> Result<(axum::Router, http::AppState), String> {
    let pool = db::make_pool(cfg)?;
    let state = http::AppState {
        pool,
        metrics: Arc::new(metrics::Metrics::default()),
        retry_after_secs: cfg.retry_after_secs,
        max_body_bytes: cfg.max_body_bytes,
    };
    Ok((http::router(state.clone()), state))
}
