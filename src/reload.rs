//! Reloading without a restart: SIGHUP, and polling of watched files. Today that is the TLS
//! certificate; open connections keep what they have, new handshakes see the new state.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::config::TlsPaths;
use crate::tls::{SwappableCert, load_certified_key};

/// What a file looked like last time: enough to notice a rewrite or a swapped symlink (as
/// Kubernetes does for mounted secrets) without reading it.
type Fingerprint = Vec<Option<(SystemTime, u64)>>;

fn fingerprint(paths: &[&Path]) -> Fingerprint {
    paths
        .iter()
        .map(|p| {
            std::fs::metadata(p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len())))
        })
        .collect()
}

struct CertReload {
    paths: TlsPaths,
    cert: Arc<SwappableCert>,
    seen: Fingerprint,
}

impl CertReload {
    fn files(&self) -> [&Path; 2] {
        [&self.paths.cert_path, &self.paths.key_path]
    }

    fn reload(&mut self, why: &str) {
        self.seen = fingerprint(&self.files());
        match load_certified_key(&self.paths) {
            Ok(key) => {
                self.cert.replace(key);
                log::info!(
                    "TLS certificate reloaded ({why}) from {}",
                    self.paths.cert_path.display()
                );
            }
            Err(e) => log::error!(
                "TLS certificate not reloaded ({why}), the previous one stays in service: {e}"
            ),
        }
    }

    /// True once per change. A half-written pair fails to load and is retried when the second
    /// file lands, because that changes the fingerprint again.
    fn changed(&self) -> bool {
        fingerprint(&self.files()) != self.seen
    }
}

pub struct Reloader {
    hangup: Signal,
    cert: Option<CertReload>,
}

impl Reloader {
    /// Installs the SIGHUP handler at once: SIGHUP's default action would end the process.
    pub fn install(tls: Option<(&TlsPaths, Arc<SwappableCert>)>) -> Result<Self, String> {
        let hangup = signal(SignalKind::hangup())
            .map_err(|e| format!("cannot install the SIGHUP handler: {e}"))?;
        let cert = tls.map(|(paths, cert)| {
            let mut reload = CertReload {
                paths: paths.clone(),
                cert,
                seen: Vec::new(),
            };
            reload.seen = fingerprint(&reload.files());
            reload
        });
        Ok(Self { hangup, cert })
    }

    pub async fn run(mut self) {
        let poll = self.cert.as_ref().and_then(|c| c.paths.reload_poll);
        let mut ticker = actix_web::rt::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
        ticker.tick().await;
        loop {
            tokio::select! {
                _ = self.hangup.recv() => match &mut self.cert {
                    Some(cert) => cert.reload("SIGHUP"),
                    None => log::info!("SIGHUP received: nothing to reload"),
                },
                _ = ticker.tick(), if poll.is_some() => {
                    if let Some(cert) = self.cert.as_mut().filter(|c| c.changed()) {
                        cert.reload("files changed");
                    }
                }
            }
        }
    }
}
