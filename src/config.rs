//! Settings: layered loading (embedded defaults, optional files, `.env`, environment) and the
//! validation that turns them into a [`Settings`] the server can trust.

use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use config::{Config, Environment, File, FileFormat};

use crate::access::AccessPolicy;
use crate::access::clients::{Client, ClientRegistry, RawClient};
use crate::access::ip::Cidr;
use crate::limits::{ClientLimits, FailMode, RedisStore};
use crate::proxy::encoding::CompressionPolicy;
use crate::realtime::SessionLimits;
use serde::Deserialize;
use url::Url;

/// The defaults ship inside the binary, so a bare executable with a `.env` runs as documented.
const DEFAULTS: &str = include_str!("../config/default.toml");

/// Prefix of the nested environment names: `PROXY__UPSTREAM__CONNECT_TIMEOUT_SECS`.
const ENV_PREFIX: &str = "PROXY";

/// Plain environment names promised in README, and the nested keys they set.
const PLAIN_NAMES: &[(&str, &str)] = &[
    ("SERVICE_TOKEN", "auth.service_token"),
    ("OPENAI_API_KEY", "upstream.api_key"),
    ("OPENAI_BASE_URL", "upstream.base_url"),
    ("BIND_ADDR", "server.bind_addr"),
    ("BIND_PORT", "server.port"),
    ("TLS_CERT_PATH", "tls.cert_path"),
    ("TLS_KEY_PATH", "tls.key_path"),
    ("TLS_CLIENT_CA_PATH", "tls.client_ca_path"),
    ("OPENAI_ADMIN_KEY", "upstream.admin_key"),
    ("CLIENTS_FILE", "access.clients_file"),
    ("REDIS_URL", "limits.redis_url"),
    ("METRICS_TOKEN", "metrics.token"),
    ("AUDIT_LOG", "audit.path"),
    ("UPSTREAM_CA_PATH", "upstream.ca_path"),
];

const MIN_TOKEN_LEN: usize = 16;

/// A secret whose `Debug` and `Display` never show the value, so it cannot leak through a log
/// line or an error message by accident.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }

    #[cfg(test)]
    pub fn for_tests(value: &str) -> Self {
        Self(value.to_owned())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret([redacted])")
    }
}

/// A setting that is missing or invalid; `Display` is the one line printed before exiting.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub message: String,
}

impl ConfigError {
    fn new(setting: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            setting: setting.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid setting {}: {}", self.setting, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// The validated settings the server runs with.
#[derive(Debug)]
pub struct Settings {
    pub access: AccessPolicy,
    /// Settings files whose change triggers a reload of the access policy.
    pub watched_files: Vec<PathBuf>,
    pub access_reload_poll: Option<Duration>,
    pub server: ServerSettings,
    pub upstream: UpstreamSettings,
    pub access_log_format: String,
    pub tls: Option<TlsPaths>,
    pub realtime: SessionLimits,
    pub metrics: MetricsSettings,
    /// Where audit lines go (`-` = stdout) and the writer's queue size; `None` = off.
    pub audit: Option<(String, usize)>,
    /// Redis URL, fail mode and per-call timeout, when limits are shared across replicas.
    pub limits_store: Option<(String, FailMode, Duration)>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub bind_addr: IpAddr,
    pub port: u16,
    pub workers: usize,
    pub max_connections_per_worker: usize,
    pub keep_alive: Duration,
    pub client_request_timeout: Duration,
    pub client_disconnect_timeout: Duration,
    pub shutdown_grace: Duration,
    pub compression: CompressionPolicy,
}

#[derive(Debug, Clone)]
pub struct UpstreamSettings {
    /// Without a trailing slash, e.g. `https://api.openai.com/v1`.
    pub base_url: Url,
    pub api_key: Secret,
    /// Sent instead of `api_key` on `/v1/organization/**`, for admin clients only.
    pub admin_key: Option<Secret>,
    /// Ask for usage on streamed chat completions whose client did not (and hide that chunk).
    pub inject_stream_usage: bool,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
    pub max_in_flight_per_worker: usize,
    pub pool_idle: Duration,
    pub pool_max_lifetime: Duration,
    pub organization: Option<String>,
    pub project: Option<String>,
    /// CAs trusted for the upstream's certificate besides the built-in Mozilla roots.
    pub extra_roots: Vec<rustls::pki_types::CertificateDer<'static>>,
}

#[derive(Debug, Clone)]
pub struct MetricsSettings {
    pub enabled: bool,
    /// A separate plain-HTTP listener for /metrics; `None`: the main listener serves it.
    pub bind: Option<std::net::SocketAddr>,
    pub token: Option<Secret>,
}

#[derive(Debug, Clone)]
pub struct TlsPaths {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    /// With it, clients must present a certificate signed by one of these CAs (mTLS).
    pub client_ca_path: Option<PathBuf>,
    /// How often the certificate files are checked for changes; `None`: SIGHUP only.
    pub reload_poll: Option<Duration>,
}

// Raw shapes as deserialized from the layers; every field is checked in `validate`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    auth: RawAuth,
    access: RawAccess,
    #[serde(default)]
    clients: Vec<RawClient>,
    server: RawServer,
    upstream: RawUpstream,
    log: RawLog,
    #[serde(default)]
    tls: RawTls,
    realtime: RawRealtime,
    limits: RawLimits,
    metrics: RawMetrics,
    audit: RawAudit,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAudit {
    path: Option<String>,
    queue_capacity: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    enabled: bool,
    bind: String,
    token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    requests_per_minute: u32,
    max_concurrent: u32,
    tokens_per_minute: u32,
    redis_url: Option<String>,
    redis_fail_mode: String,
    redis_timeout_ms: u64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealtime {
    idle_timeout_secs: u64,
    max_session_secs: u64,
    max_frame_bytes: u64,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAuth {
    service_token: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAccess {
    #[serde(default)]
    allowed_ips: ListSetting,
    #[serde(default)]
    trusted_proxies: ListSetting,
    max_inspect_body_bytes: u64,
    clients_file: Option<String>,
    reload_poll_secs: u64,
}

/// A list from a file, or a comma-separated string from the environment. (The config crate
/// splits environment lists only with `try_parsing`, which would mangle secrets.)
#[derive(Deserialize)]
#[serde(untagged)]
enum ListSetting {
    List(Vec<String>),
    Commas(String),
}

impl Default for ListSetting {
    fn default() -> Self {
        ListSetting::List(Vec::new())
    }
}

impl ListSetting {
    fn items(self) -> Vec<String> {
        match self {
            ListSetting::List(v) => v,
            ListSetting::Commas(s) => s.split(',').map(str::to_owned).collect(),
        }
    }
}

/// The shape of a `CLIENTS_FILE`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawClientsFile {
    #[serde(default)]
    clients: Vec<RawClient>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    bind_addr: String,
    port: Option<String>,
    workers: u64,
    max_connections_per_worker: u64,
    keep_alive_secs: u64,
    client_request_timeout_secs: u64,
    client_disconnect_timeout_secs: u64,
    shutdown_grace_secs: u64,
    compress_min_bytes: u64,
    compress_event_streams: bool,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawUpstream {
    base_url: String,
    api_key: Option<String>,
    admin_key: Option<String>,
    stream_usage: bool,
    connect_timeout_secs: u64,
    first_byte_timeout_secs: u64,
    max_in_flight_per_worker: u64,
    pool_idle_secs: u64,
    pool_max_lifetime_secs: u64,
    organization: String,
    project: String,
    ca_path: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    access_format: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert_path: Option<String>,
    key_path: Option<String>,
    client_ca_path: Option<String>,
    #[serde(default)]
    reload_poll_secs: u64,
}

/// The process environment merged over the `.env` file in `dir` (the process wins, as with
/// dotenvy's own loader). Read into a map rather than exported, so nothing mutates the
/// process environment.
pub fn environment_with_dotenv(dir: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let mut vars = HashMap::new();
    let path = dir.join(".env");
    if path.exists() {
        let iter = dotenvy::from_path_iter(&path).map_err(|e| {
            ConfigError::new(".env", format!("cannot read {}: {e}", path.display()))
        })?;
        for item in iter {
            let (key, value) =
                item.map_err(|e| ConfigError::new(".env", format!("cannot parse it: {e}")))?;
            vars.insert(key, value);
        }
    }
    vars.extend(std::env::vars());
    Ok(vars)
}

/// Loads and validates the layered settings. `dir` is where `config/` and `.env` are looked up.
pub fn load(env: &HashMap<String, String>, dir: &Path) -> Result<Settings, ConfigError> {
    let mut watched = vec![dir.join(".env"), dir.join("config").join("local.toml")];
    let mut builder = Config::builder().add_source(File::from_str(DEFAULTS, FileFormat::Toml));
    if let Some(app_env) = env.get("APP_ENV").filter(|v| !v.is_empty()) {
        if !app_env
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(ConfigError::new(
                "APP_ENV",
                "must be a plain name such as `production`",
            ));
        }
        let path = dir.join("config").join(format!("{app_env}.toml"));
        watched.push(path.clone());
        builder = builder.add_source(File::from(path).required(false));
    }
    builder = builder
        .add_source(File::from(dir.join("config").join("local.toml")).required(false))
        // No `try_parsing`: secrets stay strings exactly as written (`0123` is not `123`).
        .add_source(
            Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(env.clone().into_iter().collect())),
        );
    for (name, key) in PLAIN_NAMES {
        let value = env.get(*name).filter(|v| !v.is_empty()).cloned();
        builder = builder
            .set_override_option(*key, value)
            .map_err(|e| ConfigError::new(*name, e.to_string()))?;
    }
    let mut raw: Raw = builder
        .build()
        .and_then(|c| c.try_deserialize())
        .map_err(|e| ConfigError::new("(layered config)", e.to_string()))?;
    if let Some(file) = raw
        .access
        .clients_file
        .clone()
        .filter(|f| !f.trim().is_empty())
    {
        let path = dir.join(file.trim());
        let extra: RawClientsFile = Config::builder()
            .add_source(File::from(path.clone()).format(FileFormat::Toml))
            .build()
            .and_then(|c| c.try_deserialize())
            .map_err(|e| ConfigError::new("CLIENTS_FILE", format!("{}: {e}", path.display())))?;
        raw.clients.extend(extra.clients);
        watched.push(path);
    }
    let mut settings = validate(raw)?;
    settings.watched_files = watched;
    Ok(settings)
}

fn validate(raw: Raw) -> Result<Settings, ConfigError> {
    let service_token = raw
        .auth
        .service_token
        .filter(|t| !t.is_empty())
        .map(|t| validate_token(Some(t)))
        .transpose()?;
    let api_key = required_secret(raw.upstream.api_key, "OPENAI_API_KEY")?;
    let admin_key = raw
        .upstream
        .admin_key
        .filter(|k| !k.is_empty())
        .map(|k| required_secret(Some(k), "OPENAI_ADMIN_KEY"))
        .transpose()?;
    if service_token.as_ref() == Some(&api_key)
        || service_token.is_some() && service_token == admin_key
    {
        return Err(ConfigError::new(
            "SERVICE_TOKEN",
            "must differ from OPENAI_API_KEY and OPENAI_ADMIN_KEY (clients would hold an upstream key)",
        ));
    }
    let default_limits = ClientLimits {
        requests_per_minute: Some(raw.limits.requests_per_minute),
        max_concurrent: Some(raw.limits.max_concurrent),
        tokens_per_minute: Some(raw.limits.tokens_per_minute),
    };
    let access = validate_access(
        raw.access,
        raw.clients,
        service_token.as_ref(),
        admin_key.is_some(),
        default_limits,
    )?;
    let base_url = validate_base_url(&raw.upstream.base_url)?;
    let tls = validate_tls(raw.tls)?;
    let bind_addr = raw.server.bind_addr.trim().parse().map_err(|_| {
        ConfigError::new(
            "BIND_ADDR",
            format!("`{}` is not an IP address", raw.server.bind_addr),
        )
    })?;
    let port = match raw.server.port.as_deref().map(str::trim) {
        None | Some("") => {
            if tls.is_some() {
                8443
            } else {
                8080
            }
        }
        Some(p) => p.parse().map_err(|_| {
            ConfigError::new("BIND_PORT", format!("`{p}` is not a port number (0-65535)"))
        })?,
    };
    let workers = match raw.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n as usize,
    };
    let server = ServerSettings {
        bind_addr,
        port,
        workers,
        max_connections_per_worker: positive(
            raw.server.max_connections_per_worker,
            "server.max_connections_per_worker",
        )? as usize,
        keep_alive: Duration::from_secs(raw.server.keep_alive_secs),
        client_request_timeout: secs(
            raw.server.client_request_timeout_secs,
            "server.client_request_timeout_secs",
        )?,
        client_disconnect_timeout: secs(
            raw.server.client_disconnect_timeout_secs,
            "server.client_disconnect_timeout_secs",
        )?,
        shutdown_grace: Duration::from_secs(raw.server.shutdown_grace_secs),
        compression: CompressionPolicy {
            min_bytes: raw.server.compress_min_bytes,
            event_streams: raw.server.compress_event_streams,
        },
    };
    let upstream = UpstreamSettings {
        base_url,
        api_key,
        admin_key,
        inject_stream_usage: raw.upstream.stream_usage,
        connect_timeout: secs(
            raw.upstream.connect_timeout_secs,
            "upstream.connect_timeout_secs",
        )?,
        first_byte_timeout: secs(
            raw.upstream.first_byte_timeout_secs,
            "upstream.first_byte_timeout_secs",
        )?,
        max_in_flight_per_worker: raw.upstream.max_in_flight_per_worker as usize,
        pool_idle: secs(raw.upstream.pool_idle_secs, "upstream.pool_idle_secs")?,
        pool_max_lifetime: secs(
            raw.upstream.pool_max_lifetime_secs,
            "upstream.pool_max_lifetime_secs",
        )?,
        organization: header_value_setting(raw.upstream.organization, "upstream.organization")?,
        project: header_value_setting(raw.upstream.project, "upstream.project")?,
        extra_roots: load_extra_roots(&raw.upstream.ca_path)?,
    };
    Ok(Settings {
        access_reload_poll: (access.1 > 0).then(|| Duration::from_secs(access.1)),
        access: access.0,
        watched_files: Vec::new(),
        server,
        upstream,
        access_log_format: validate_log_format(raw.log.access_format)?,
        tls,
        limits_store: validate_limits_store(raw.limits)?,
        audit: match raw.audit.path.filter(|p| !p.trim().is_empty()) {
            None => None,
            Some(path) => Some((
                path.trim().to_owned(),
                positive(raw.audit.queue_capacity, "audit.queue_capacity")? as usize,
            )),
        },
        metrics: MetricsSettings {
            enabled: raw.metrics.enabled,
            bind: match raw.metrics.bind.trim() {
                "" => None,
                addr => Some(addr.parse().map_err(|_| {
                    ConfigError::new("metrics.bind", format!("`{addr}` is not an address:port"))
                })?),
            },
            token: raw
                .metrics
                .token
                .filter(|t| !t.is_empty())
                .map(|t| required_secret(Some(t), "METRICS_TOKEN"))
                .transpose()?,
        },
        realtime: SessionLimits {
            idle_timeout: secs(raw.realtime.idle_timeout_secs, "realtime.idle_timeout_secs")?,
            max_session: secs(raw.realtime.max_session_secs, "realtime.max_session_secs")?,
            max_frame_bytes: positive(raw.realtime.max_frame_bytes, "realtime.max_frame_bytes")?
                as usize,
        },
    })
}

fn validate_access(
    raw: RawAccess,
    clients: Vec<RawClient>,
    service_token: Option<&Secret>,
    admin_key_set: bool,
    default_limits: ClientLimits,
) -> Result<(AccessPolicy, u64), ConfigError> {
    let cidrs = |list: ListSetting, name: &str| {
        list.items()
            .iter()
            .filter(|c| !c.trim().is_empty())
            .map(|c| c.parse::<Cidr>().map_err(|e| ConfigError::new(name, e)))
            .collect::<Result<Vec<_>, _>>()
    };
    let mut built = Vec::new();
    if let Some(token) = service_token {
        built.push(Client::default_for_token(token.expose()));
    }
    for raw_client in clients {
        built.push(Client::from_raw(raw_client).map_err(|e| ConfigError::new("clients", e))?);
    }
    if built.is_empty() {
        return Err(ConfigError::new(
            "SERVICE_TOKEN",
            "is not set and no [[clients]] are configured; the proxy never runs without client authentication",
        ));
    }
    let clients = ClientRegistry::new(built).map_err(|e| ConfigError::new("clients", e))?;
    let policy = AccessPolicy {
        clients,
        allowed_ips: cidrs(raw.allowed_ips, "access.allowed_ips")?,
        trusted_proxies: cidrs(raw.trusted_proxies, "access.trusted_proxies")?,
        max_inspect_body_bytes: positive(
            raw.max_inspect_body_bytes,
            "access.max_inspect_body_bytes",
        )? as usize,
        admin_paths_restricted: admin_key_set,
        default_limits,
    };
    Ok((policy, raw.reload_poll_secs))
}

fn validate_limits_store(
    raw: RawLimits,
) -> Result<Option<(String, FailMode, Duration)>, ConfigError> {
    let Some(url) = raw.redis_url.filter(|u| !u.trim().is_empty()) else {
        return Ok(None);
    };
    let url = url.trim().to_owned();
    if let Err(e) = RedisStore::new(&url, Duration::from_millis(1)) {
        return Err(ConfigError::new(
            "REDIS_URL",
            e.trim_start_matches("invalid setting REDIS_URL: ")
                .to_owned(),
        ));
    }
    let mode = match raw.redis_fail_mode.as_str() {
        "fail_open" => FailMode::Open,
        "fail_closed" => FailMode::Closed,
        other => {
            return Err(ConfigError::new(
                "limits.redis_fail_mode",
                format!("`{other}` is neither fail_open nor fail_closed"),
            ));
        }
    };
    let timeout = Duration::from_millis(positive(raw.redis_timeout_ms, "limits.redis_timeout_ms")?);
    Ok(Some((url, mode, timeout)))
}

fn required_secret(value: Option<String>, name: &str) -> Result<Secret, ConfigError> {
    let value = value.unwrap_or_default();
    if value.trim().is_empty() {
        return Err(ConfigError::new(name, "is not set; it is required"));
    }
    // It travels in an HTTP header: visible ASCII only.
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            name,
            "contains whitespace or non-printable characters",
        ));
    }
    Ok(Secret(value))
}

fn validate_token(value: Option<String>) -> Result<Secret, ConfigError> {
    let token = required_secret(value, "SERVICE_TOKEN").map_err(|e| {
        ConfigError::new(
            e.setting,
            format!(
                "{}; the proxy never runs without client authentication",
                e.message
            ),
        )
    })?;
    if token.expose().len() < MIN_TOKEN_LEN {
        return Err(ConfigError::new(
            "SERVICE_TOKEN",
            format!("is shorter than {MIN_TOKEN_LEN} characters; use a long random value"),
        ));
    }
    Ok(token)
}

/// The certificates of a PEM bundle; an empty path means none. A file that cannot be read or
/// holds no certificate is an error: a CA the operator meant to trust must not be skipped.
fn load_extra_roots(
    path: &str,
) -> Result<Vec<rustls::pki_types::CertificateDer<'static>>, ConfigError> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let path = path.trim();
    if path.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |why: String| ConfigError::new("UPSTREAM_CA_PATH", format!("`{path}`: {why}"));
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

fn validate_base_url(raw: &str) -> Result<Url, ConfigError> {
    let bad = |why: &str| ConfigError::new("OPENAI_BASE_URL", format!("`{raw}` {why}"));
    let url = Url::parse(raw.trim()).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(bad("must use http or https"));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(bad("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad("must not carry credentials"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or fragment"));
    }
    let mut url = url;
    let path = url.path().trim_end_matches('/').to_owned();
    url.set_path(&path);
    Ok(url)
}

fn validate_tls(raw: RawTls) -> Result<Option<TlsPaths>, ConfigError> {
    let set = |v: Option<String>| v.filter(|p| !p.trim().is_empty());
    let (cert, key, client_ca) = (
        set(raw.cert_path),
        set(raw.key_path),
        set(raw.client_ca_path),
    );
    match (cert, key) {
        (None, None) => match client_ca {
            Some(_) => Err(ConfigError::new(
                "TLS_CLIENT_CA_PATH",
                "needs HTTPS: set TLS_CERT_PATH and TLS_KEY_PATH too",
            )),
            None => Ok(None),
        },
        (Some(cert), Some(key)) => Ok(Some(TlsPaths {
            cert_path: cert.into(),
            key_path: key.into(),
            client_ca_path: client_ca.map(PathBuf::from),
            reload_poll: (raw.reload_poll_secs > 0)
                .then(|| Duration::from_secs(raw.reload_poll_secs)),
        })),
        (Some(_), None) => Err(ConfigError::new(
            "TLS_KEY_PATH",
            "is not set but TLS_CERT_PATH is; set both for HTTPS, or neither",
        )),
        (None, Some(_)) => Err(ConfigError::new(
            "TLS_CERT_PATH",
            "is not set but TLS_KEY_PATH is; set both for HTTPS, or neither",
        )),
    }
}

fn validate_log_format(format: String) -> Result<String, ConfigError> {
    let lower = format.to_ascii_lowercase();
    if lower.contains("authorization}i") {
        return Err(ConfigError::new(
            "log.access_format",
            "must not log an Authorization header (it carries the client token)",
        ));
    }
    if format.contains("%r") {
        return Err(ConfigError::new(
            "log.access_format",
            "must not use %r: the query string may carry secrets; use \"%{method}xi %U\"",
        ));
    }
    Ok(format)
}

fn header_value_setting(value: String, name: &str) -> Result<Option<String>, ConfigError> {
    let value = value.trim().to_owned();
    if value.is_empty() {
        return Ok(None);
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ConfigError::new(
            name,
            "must be visible ASCII without spaces",
        ));
    }
    Ok(Some(value))
}

fn positive(value: u64, name: &str) -> Result<u64, ConfigError> {
    if value == 0 {
        return Err(ConfigError::new(name, "must be greater than 0"));
    }
    Ok(value)
}

fn secs(value: u64, name: &str) -> Result<Duration, ConfigError> {
    positive(value, name).map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn base() -> Vec<(&'static str, &'static str)> {
        vec![
            ("SERVICE_TOKEN", "client-token-0123456789"),
            ("OPENAI_API_KEY", "sk-upstream-key"),
        ]
    }

    fn load_with(extra: &[(&'static str, &'static str)]) -> Result<Settings, ConfigError> {
        let mut pairs = base();
        pairs.extend_from_slice(extra);
        load(&env(&pairs), Path::new("/nonexistent"))
    }

    #[test]
    fn defaults_apply() {
        let s = load_with(&[]).unwrap();
        assert_eq!(s.upstream.base_url.as_str(), "https://api.openai.com/v1");
        assert_eq!(s.server.port, 8080);
        assert_eq!(s.server.bind_addr.to_string(), "0.0.0.0");
        assert_eq!(s.upstream.first_byte_timeout, Duration::from_secs(600));
        assert!(s.tls.is_none());
    }

    #[test]
    fn plain_names_and_nested_names_both_work() {
        let s = load_with(&[
            ("OPENAI_BASE_URL", "http://127.0.0.1:9/v1/"),
            ("BIND_PORT", "9000"),
            ("BIND_ADDR", "127.0.0.1"),
            ("PROXY__UPSTREAM__CONNECT_TIMEOUT_SECS", "3"),
            ("PROXY__SERVER__WORKERS", "3"),
        ])
        .unwrap();
        assert_eq!(s.upstream.base_url.as_str(), "http://127.0.0.1:9/v1");
        assert_eq!(s.server.port, 9000);
        assert_eq!(s.server.workers, 3);
        assert_eq!(s.upstream.connect_timeout, Duration::from_secs(3));
    }

    #[test]
    fn secrets_keep_leading_zeros_and_are_redacted() {
        let s = load(
            &env(&[
                ("SERVICE_TOKEN", "0123456789012345678"),
                ("OPENAI_API_KEY", "0042"),
            ]),
            Path::new("/nonexistent"),
        )
        .unwrap();
        assert!(s.access.clients.lookup("0123456789012345678").is_some());
        assert_eq!(s.upstream.api_key.expose(), "0042");
        let debug = format!("{s:?}");
        assert!(!debug.contains("0123456789012345678"));
        assert!(!debug.contains("0042"));
    }

    #[test]
    fn missing_secrets_name_the_setting() {
        let e = load(&env(&[("OPENAI_API_KEY", "k")]), Path::new("/x")).unwrap_err();
        assert_eq!(e.setting, "SERVICE_TOKEN");
        let e = load(
            &env(&[("SERVICE_TOKEN", "client-token-0123456789")]),
            Path::new("/x"),
        )
        .unwrap_err();
        assert_eq!(e.setting, "OPENAI_API_KEY");
        let e = load_with(&[("SERVICE_TOKEN", "short")]).unwrap_err();
        assert_eq!(e.setting, "SERVICE_TOKEN");
    }

    #[test]
    fn invalid_values_name_the_setting() {
        for (pair, setting) in [
            (("OPENAI_BASE_URL", "not a url"), "OPENAI_BASE_URL"),
            (("OPENAI_BASE_URL", "ftp://x/v1"), "OPENAI_BASE_URL"),
            (("OPENAI_BASE_URL", "https://u:p@x/v1"), "OPENAI_BASE_URL"),
            (("BIND_PORT", "70000"), "BIND_PORT"),
            (("BIND_ADDR", "localhost:1"), "BIND_ADDR"),
            (("TLS_CERT_PATH", "/tmp/c.pem"), "TLS_KEY_PATH"),
            (("TLS_KEY_PATH", "/tmp/k.pem"), "TLS_CERT_PATH"),
            (("TLS_CLIENT_CA_PATH", "/tmp/ca.pem"), "TLS_CLIENT_CA_PATH"),
            (
                ("PROXY__LOG__ACCESS_FORMAT", "%{Authorization}i"),
                "log.access_format",
            ),
            (
                ("PROXY__LOG__ACCESS_FORMAT", "%a %r %s"),
                "log.access_format",
            ),
            (
                ("PROXY__UPSTREAM__FIRST_BYTE_TIMEOUT_SECS", "0"),
                "upstream.first_byte_timeout_secs",
            ),
        ] {
            let e = load_with(&[pair]).unwrap_err();
            assert_eq!(e.setting, setting, "{pair:?} -> {e}");
        }
    }

    #[test]
    fn unknown_nested_names_are_refused() {
        let e = load_with(&[("PROXY__UPSTREAM__CONECT_TIMEOUT_SECS", "3")]).unwrap_err();
        assert!(e.message.contains("conect_timeout_secs"), "{e}");
    }

    #[test]
    fn tls_moves_the_default_port() {
        let s = load_with(&[("TLS_CERT_PATH", "/c.pem"), ("TLS_KEY_PATH", "/k.pem")]).unwrap();
        assert_eq!(s.server.port, 8443);
        assert!(s.tls.is_some());
    }

    #[test]
    fn files_layer_in_order() {
        let dir = std::env::temp_dir().join(format!("oap-config-test-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("config")).unwrap();
        std::fs::write(
            dir.join("config/staging.toml"),
            "[upstream]\nconnect_timeout_secs = 7\nfirst_byte_timeout_secs = 8\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("config/local.toml"),
            "[server]\nport = 9001\n[upstream]\nfirst_byte_timeout_secs = 9\n",
        )
        .unwrap();
        let mut pairs = base();
        pairs.push(("APP_ENV", "staging"));
        let s = load(&env(&pairs), &dir).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(s.upstream.connect_timeout, Duration::from_secs(7));
        assert_eq!(s.upstream.first_byte_timeout, Duration::from_secs(9));
        assert_eq!(s.server.port, 9001);
    }
}
