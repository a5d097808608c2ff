//! The `dunetrace-gateway` binary: flags and environment, logging, serving, graceful shutdown.

use clap::Parser;
use dunetrace_gateway::config::{Config, LogFormat};
use dunetrace_gateway::db;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .init(),
        LogFormat::Text => builder.init(),
    }
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM");
            std::future::pending::<()>().await;
            unreachable!()
        }
    };
    tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = tokio::signal::ctrl_c() => "SIGINT",
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cfg = Config::parse();
    init_logging(cfg.log_format);

    let (app, state) = match dunetrace_gateway::app(&cfg) {
        Ok(x) => x,
        Err(e) => {
            tracing::error!(error = %e, "cannot start");
            return ExitCode::from(2);
        }
    };
    // Not fatal: the gateway answers 503 until the database is reachable.
    match db::health(&state.pool).await {
        Ok(db::Health::Ok(version)) => {
            tracing::info!(extension_version = %version, "database reachable")
        }
        Ok(db::Health::NoExtension) => tracing::warn!(
            "database reachable, but the dunetrace extension is not installed there; \
             requests will be answered 503 until it is"
        ),
        Err(e) => {
            tracing::warn!(error = %e, "database not reachable yet; answering 503 until it is")
        }
    }

    let listener = match tokio::net::TcpListener::bind(cfg.bind).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(error = %e, bind = %cfg.bind, "cannot listen");
            return ExitCode::from(2);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(
        addr = %addr,
        pool_size = cfg.pool_size,
        max_body_bytes = cfg.max_body_bytes,
        "listening"
    );

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut server_stop = stop_rx.clone();
    let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
        let _ = server_stop.wait_for(|s| *s).await;
    });
    let server = tokio::spawn(async move { serve.await });
    tokio::pin!(server);

    let code = tokio::select! {
        res = &mut server => {
            tracing::error!(result = ?res, "server stopped unexpectedly");
            ExitCode::FAILURE
        }
        sig = shutdown_signal() => {
            tracing::info!(signal = sig, "shutting down: no new connections, finishing in-flight requests");
            let _ = stop_tx.send(true);
            match tokio::time::timeout(cfg.shutdown_timeout(), &mut server).await {
                Ok(Ok(Ok(()))) => {
                    tracing::info!("all requests finished");
                    ExitCode::SUCCESS
                }
                Ok(res) => {
                    tracing::error!(result = ?res, "server ended with an error");
                    ExitCode::FAILURE
                }
                Err(_) => {
                    tracing::warn!(
                        timeout_secs = cfg.shutdown_timeout_secs,
                        "requests still running at the shutdown deadline; exiting anyway"
                    );
                    ExitCode::FAILURE
                }
            }
        }
    };
    state.pool.close();
    code
}
