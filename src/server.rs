//! The HTTP server: workers, middleware order, routes, and signal-driven graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;

use actix_web::dev::ServerHandle;
use actix_web::middleware::{Compress, Condition, Logger};
use actix_web::{App, HttpResponse, HttpServer, web};
use actix_web_httpauth::middleware::HttpAuthentication;
use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::access::clients::token_digest;
use crate::access::guard;
use crate::access::{Caller, SharedPolicy};
use crate::config::Settings;
use crate::error::ApiError;
use crate::limits::{Limiter, RedisStore};
use crate::observe::audit::AuditLog;
use crate::observe::metrics::{Metrics, MetricsAccess, endpoint as metrics_endpoint};
use crate::observe::{Observers, record};
use crate::proxy::forward::{Forwarder, IDENTITY, UpstreamPlan, forward};
use crate::reload::{PolicyReload, Reloader};
use crate::tls::{SwappableCert, load_certified_key, server_config};
use actix_web::HttpMessage;
use actix_web::dev::Service;
use actix_web::http::header;
use arc_swap::ArcSwap;
use futures_util::TryFutureExt;

async fn healthz() -> HttpResponse {
    HttpResponse::Ok()
        .content_type("text/plain; charset=utf-8")
        .body("ok")
}

async fn not_found() -> Result<HttpResponse, ApiError> {
    Err(ApiError::NotFound)
}

/// Runs the server until it has shut down. Returns an error line for startup failures.
pub fn run(settings: Settings, dir: std::path::PathBuf) -> Result<(), String> {
    let plan = Arc::new(UpstreamPlan::new(
        &settings.upstream,
        settings.server.compression,
    )?);
    let policy: SharedPolicy = Arc::new(ArcSwap::from_pointee(settings.access));
    let policy_data = web::Data::new(Arc::clone(&policy));
    // One limiter for all workers, so a client's limits hold for the whole process.
    let store = match &settings.limits_store {
        None => None,
        Some((url, mode, timeout)) => Some((RedisStore::new(url, *timeout)?, *mode)),
    };
    let limiter = web::Data::new(Limiter::new(store));
    let metrics = web::Data::new(Metrics::default());
    let metrics_access = web::Data::new(MetricsAccess(
        settings
            .metrics
            .token
            .as_ref()
            .map(|t| token_digest(t.expose())),
    ));
    let metrics_on_main = settings.metrics.enabled && settings.metrics.bind.is_none();
    let audit = match &settings.audit {
        None => None,
        Some((target, capacity)) => Some(Arc::new(AuditLog::start(
            target,
            *capacity,
            metrics.clone().into_inner(),
        )?)),
    };
    let observers_mw = Arc::new(Observers::new(metrics.clone().into_inner(), audit.clone()));
    let (metrics_main, access_main) = (metrics.clone(), metrics_access.clone());
    let log_format = settings.access_log_format.clone();
    // With access lines filtered out (RUST_LOG=warn), the Logger would still render every
    // request's fields only to have them dropped: leave it out instead.
    let access_log = log::log_enabled!(target: "actix_web::middleware::logger", log::Level::Info);
    let realtime = settings.realtime;
    // Flips to true when a drain's grace period ends: open WebSockets then close with 1001.
    let (draining_tx, draining_rx) = tokio::sync::watch::channel(false);
    let tls = match &settings.tls {
        None => None,
        Some(paths) => {
            let cert = Arc::new(SwappableCert::new(load_certified_key(paths)?));
            Some((server_config(paths, Arc::clone(&cert))?, cert))
        }
    };
    let s = &settings.server;

    actix_web::rt::System::new().block_on(async move {
        // Installed before anything announces readiness, so an early signal is never lost
        // to the default action (which would kill the process mid-request).
        let signals = ShutdownSignals::install()?;
        let reloader = Reloader::install(
            settings
                .tls
                .as_ref()
                .zip(tls.as_ref().map(|(_, cert)| Arc::clone(cert))),
            PolicyReload::new(
                dir,
                Arc::clone(&policy),
                settings.watched_files.clone(),
                settings.access_reload_poll,
            ),
            audit.clone(),
        )?;
        let server = HttpServer::new(move || {
            let observers = Arc::clone(&observers_mw);
            App::new()
                .app_data(policy_data.clone())
                .app_data(limiter.clone())
                .app_data(metrics_main.clone())
                .app_data(access_main.clone())
                .app_data(web::Data::new(Forwarder::new(
                    Arc::clone(&plan),
                    realtime,
                    Some(draining_rx.clone()),
                )))
                // Registered last = outermost: the access line sees the encoded size and the
                // whole life of a stream.
                .wrap(Compress::default())
                // Drops the marker the forwarder uses to keep `Compress` off a body.
                .wrap_fn(|req, srv| {
                    srv.call(req).map_ok(|mut res| {
                        let headers = res.headers_mut();
                        if headers.get(header::CONTENT_ENCODING) == Some(&IDENTITY) {
                            headers.remove(header::CONTENT_ENCODING);
                        }
                        res
                    })
                })
                .wrap_fn(move |req, srv| record(req, srv, Arc::clone(&observers)))
                .wrap(Condition::new(
                    access_log,
                    Logger::new(&log_format)
                        .custom_request_replace("method", |req| req.method().to_string())
                        .custom_response_replace("client", |res| {
                            res.request()
                                .extensions()
                                .get::<Caller>()
                                .map_or_else(|| "-".to_owned(), |c| c.client.name.clone())
                        }),
                ))
                .service(
                    web::resource("/healthz")
                        .route(web::get().to(healthz))
                        .route(web::head().to(healthz)),
                )
                .configure(|cfg| {
                    if metrics_on_main {
                        cfg.route("/metrics", web::get().to(metrics_endpoint));
                    }
                })
                // Before the scope, so a bare /v1 is a 404 and never reaches the guard.
                .service(web::resource(["/v1", "/v1/"]).to(not_found))
                .service(
                    web::scope("/v1")
                        .wrap(HttpAuthentication::with_fn(guard::validate))
                        .default_service(web::to(forward)),
                )
                .default_service(web::to(not_found))
        })
        .on_connect(crate::proxy::nodelay::on_accept)
        .workers(s.workers)
        .max_connections(s.max_connections_per_worker)
        .keep_alive(s.keep_alive)
        .client_request_timeout(s.client_request_timeout)
        .client_disconnect_timeout(s.client_disconnect_timeout)
        // A client that hangs up while waiting must cancel the upstream call.
        .h1_allow_half_closed(false)
        .shutdown_timeout(s.shutdown_grace.as_secs())
        .disable_signals();

        let addr = SocketAddr::new(s.bind_addr, s.port);
        let server = match tls {
            None => server.bind(addr),
            Some((config, _)) => server.bind_rustls_0_23(addr, config),
        }
        .map_err(|e| format!("cannot listen on {addr} (BIND_ADDR/BIND_PORT): {e}"))?;
        for addr in server.addrs() {
            log::info!("listening on {}", url_of(addr, settings.tls.is_some()));
        }
        log::info!(
            "forwarding /v1/* to {} with {} workers",
            settings.upstream.base_url,
            s.workers
        );
        let metrics_server = match settings.metrics.bind.filter(|_| settings.metrics.enabled) {
            None => None,
            Some(addr) => {
                let (metrics, access) = (metrics.clone(), metrics_access.clone());
                let server = HttpServer::new(move || {
                    App::new()
                        .app_data(metrics.clone())
                        .app_data(access.clone())
                        .route("/metrics", web::get().to(metrics_endpoint))
                })
                .workers(1)
                .disable_signals()
                .bind(addr)
                .map_err(|e| format!("cannot listen on {addr} (metrics.bind): {e}"))?;
                log::info!("metrics on http://{addr}/metrics");
                Some(server.run())
            }
        };
        let server = server.run();
        let metrics_handle = metrics_server.map(|m| {
            let handle = m.handle();
            actix_web::rt::spawn(m);
            handle
        });
        actix_web::rt::spawn(reloader.run());
        actix_web::rt::spawn(signals.drive(server.handle(), s.shutdown_grace, draining_tx));
        server
            .await
            .map_err(|e| format!("server stopped with an error: {e}"))?;
        if let Some(handle) = metrics_handle {
            handle.stop(true).await;
        }
        if let Some(audit) = &audit {
            audit.finish();
        }
        log::info!("shut down cleanly");
        Ok(())
    })
}

fn url_of(addr: SocketAddr, tls: bool) -> String {
    format!("{}://{addr}", if tls { "https" } else { "http" })
}

struct ShutdownSignals {
    term: Signal,
    int: Signal,
}

impl ShutdownSignals {
    fn install() -> Result<Self, String> {
        let install =
            |kind| signal(kind).map_err(|e| format!("cannot install signal handlers: {e}"));
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
        })
    }

    /// SIGTERM or SIGINT: stop accepting and drain in-flight requests and streams for up to
    /// the grace period (actix-server's own handler would treat SIGINT as a hard stop). A
    /// second SIGINT exits at once, for an operator at a terminal who does not want to wait.
    async fn drive(
        mut self,
        handle: ServerHandle,
        grace: std::time::Duration,
        draining: tokio::sync::watch::Sender<bool>,
    ) {
        let grace_secs = grace.as_secs();
        let name = tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        };
        log::info!(
            "{name} received: no new connections; draining in-flight requests for up to {grace_secs} s (SIGINT again to exit now)"
        );
        // WebSockets never end by themselves: close them (1001) just before the grace period
        // runs out, so clients get a close frame rather than a cut connection.
        actix_web::rt::spawn(async move {
            actix_web::rt::time::sleep(grace.saturating_sub(std::time::Duration::from_secs(1)))
                .await;
            let _ = draining.send(true);
        });
        tokio::select! {
            _ = handle.stop(true) => {}
            _ = self.int.recv() => {
                log::warn!("second SIGINT: exiting without waiting for in-flight requests");
                std::process::exit(130);
            }
        }
    }
}
