//! Reloading without a restart, on SIGHUP and when watched files change: the access policy
//! (clients, allow-lists) and the TLS certificate. Requests and connections already under way
//! keep what they started with; new ones see the new state. Whatever fails to load leaves the
//! previous state in force, with one error line.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::signal::unix::{Signal, SignalKind, signal};

use crate::access::SharedPolicy;
use crate::config::{self, TlsPaths};
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

/// The access policy, rebuilt from the same layers as at startup.
pub struct PolicyReload {
    dir: PathBuf,
    policy: SharedPolicy,
    files: Vec<PathBuf>,
    seen: Fingerprint,
    poll: Option<Duration>,
}

impl PolicyReload {
    pub fn new(
        dir: PathBuf,
        policy: SharedPolicy,
        files: Vec<PathBuf>,
        poll: Option<Duration>,
    ) -> Self {
        let seen = fingerprint(&files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        Self {
            dir,
            policy,
            files,
            seen,
            poll,
        }
    }

    fn changed(&self) -> bool {
        fingerprint(&self.files.iter().map(PathBuf::as_path).collect::<Vec<_>>()) != self.seen
    }

    fn reload(&mut self, why: &str) {
        self.seen = fingerprint(&self.files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        let loaded = config::environment_with_dotenv(&self.dir)
            .and_then(|env| config::load(&env, &self.dir));
        let settings = match loaded {
            Ok(settings) => settings,
            Err(e) => {
                log::error!(
                    "configuration not reloaded ({why}), the previous access policy stays in force: {e}"
                );
                return;
            }
        };
        let (added, removed, changed) = settings.access.clients.diff(&self.policy.load().clients);
        self.files = settings.watched_files;
        self.seen = fingerprint(&self.files.iter().map(PathBuf::as_path).collect::<Vec<_>>());
        self.policy.store(std::sync::Arc::new(settings.access));
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_owned()
            } else {
                v.join(",")
            }
        };
        log::info!(
            "access policy reloaded ({why}): clients added={} removed={} changed={}",
            list(&added),
            list(&removed),
            list(&changed)
        );
    }
}

pub struct Reloader {
    hangup: Signal,
    cert: Option<CertReload>,
    policy: PolicyReload,
    audit: Option<Arc<crate::observe::audit::AuditLog>>,
}

impl Reloader {
    /// Installs the SIGHUP handler at once: SIGHUP's default action would end the process.
    pub fn install(
        tls: Option<(&TlsPaths, Arc<SwappableCert>)>,
        policy: PolicyReload,
        audit: Option<Arc<crate::observe::audit::AuditLog>>,
    ) -> Result<Self, String> {
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
        Ok(Self {
            hangup,
            cert,
            policy,
            audit,
        })
    }

    pub async fn run(mut self) {
        let cert_poll = self.cert.as_ref().and_then(|c| c.paths.reload_poll);
        let policy_poll = self.policy.poll;
        let mut cert_ticker = ticker(cert_poll).await;
        let mut policy_ticker = ticker(policy_poll).await;
        loop {
            tokio::select! {
                _ = self.hangup.recv() => {
                    if let Some(audit) = &self.audit {
                        audit.reopen();
                    }
                    self.policy.reload("SIGHUP");
                    if let Some(cert) = &mut self.cert {
                        cert.reload("SIGHUP");
                    }
                }
                _ = cert_ticker.tick(), if cert_poll.is_some() => {
                    if let Some(cert) = self.cert.as_mut().filter(|c| c.changed()) {
                        cert.reload("files changed");
                    }
                }
                _ = policy_ticker.tick(), if policy_poll.is_some() => {
                    if self.policy.changed() {
                        self.policy.reload("settings files changed");
                    }
                }
            }
        }
    }
}

async fn ticker(every: Option<Duration>) -> actix_web::rt::time::Interval {
    let mut ticker = actix_web::rt::time::interval(every.unwrap_or(Duration::from_secs(3600)));
    ticker.tick().await;
    ticker
}
