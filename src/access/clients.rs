//! Named clients: who they are (token digests), when they may call, and what they may reach.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::ip::{Cidr, any_contains};
use crate::limits::ClientLimits;

/// A client as written in the configuration (config files or `CLIENTS_FILE`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawClient {
    pub name: String,
    pub token_sha256: OneOrMany,
    pub not_before: Option<String>,
    pub expires_at: Option<String>,
    #[serde(default)]
    pub allowed_models: Vec<String>,
    #[serde(default)]
    pub allowed_paths: Vec<String>,
    #[serde(default)]
    pub allowed_ips: Vec<String>,
    #[serde(default)]
    pub disabled: bool,
    #[serde(default)]
    pub admin: bool,
    pub requests_per_minute: Option<u32>,
    pub max_concurrent: Option<u32>,
    pub tokens_per_minute: Option<u32>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl RawClient {
    /// An unscoped client holding one token digest (hex).
    pub fn new(name: &str, token_sha256_hex: String) -> Self {
        RawClient {
            name: name.to_owned(),
            token_sha256: OneOrMany::One(token_sha256_hex),
            not_before: None,
            expires_at: None,
            allowed_models: vec![],
            allowed_paths: vec![],
            allowed_ips: vec![],
            disabled: false,
            admin: false,
            requests_per_minute: None,
            max_concurrent: None,
            tokens_per_minute: None,
        }
    }
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// `gpt-4o` (exact) or `gpt-4o*` (prefix).
#[derive(Debug, Clone, PartialEq, Eq)]
enum ModelPattern {
    Exact(String),
    Prefix(String),
}

impl ModelPattern {
    fn matches(&self, model: &str) -> bool {
        match self {
            ModelPattern::Exact(m) => m == model,
            ModelPattern::Prefix(p) => model.starts_with(p.as_str()),
        }
    }
}

#[derive(Debug)]
pub struct Client {
    pub name: String,
    pub admin: bool,
    /// The client's own limits; the policy's defaults fill the gaps.
    pub limits: ClientLimits,
    digests: Vec<[u8; 32]>,
    not_before: Option<OffsetDateTime>,
    expires_at: Option<OffsetDateTime>,
    models: Vec<ModelPattern>,
    paths: Vec<String>,
    ips: Vec<Cidr>,
    disabled: bool,
    /// Everything above, as text: what a reload compares to say which clients changed.
    summary: String,
}

impl Client {
    pub fn usable_at(&self, now: OffsetDateTime) -> bool {
        !self.disabled
            && self.not_before.is_none_or(|t| now >= t)
            && self.expires_at.is_none_or(|t| now < t)
    }

    pub fn ip_allowed(&self, ip: IpAddr) -> bool {
        self.ips.is_empty() || any_contains(&self.ips, ip)
    }

    /// Prefixes match on segment boundaries: `/v1/chat` admits `/v1/chat/completions`, not
    /// `/v1/chatter`.
    pub fn path_allowed(&self, path: &str) -> bool {
        self.paths.is_empty()
            || self.paths.iter().any(|p| {
                path.strip_prefix(p.as_str()).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with('/') || p.ends_with('/')
                })
            })
    }

    pub fn has_model_scope(&self) -> bool {
        !self.models.is_empty()
    }

    pub fn model_allowed(&self, model: &str) -> bool {
        self.models.is_empty() || self.models.iter().any(|m| m.matches(model))
    }

    /// A redacted one-line description: scopes and counts, never a digest.
    pub fn describe(&self) -> String {
        self.summary.clone()
    }
}

pub fn token_digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

fn parse_time(value: &Option<String>, what: &str) -> Result<Option<OffsetDateTime>, String> {
    value
        .as_deref()
        .filter(|v| !v.trim().is_empty())
        .map(|v| {
            OffsetDateTime::parse(v.trim(), &Rfc3339)
                .map_err(|e| format!("{what} `{v}` is not an RFC 3339 time ({e})"))
        })
        .transpose()
}

fn parse_digest(hex: &str) -> Result<[u8; 32], String> {
    let hex = hex.trim();
    if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(
            "token_sha256 entries must be 64 hex characters (openai-auth-proxy hash-token)".into(),
        );
    }
    let mut out = [0u8; 32];
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).expect("checked hex");
    }
    Ok(out)
}

impl Client {
    /// Validates one raw client; errors name the client and the field.
    pub fn from_raw(raw: RawClient) -> Result<Client, String> {
        let name = raw.name.trim().to_owned();
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(format!(
                "client name `{}` must be non-empty visible ASCII",
                raw.name
            ));
        }
        let fail = |e: String| format!("client `{name}`: {e}");
        let digests = raw
            .token_sha256
            .into_vec()
            .iter()
            .map(|h| parse_digest(h))
            .collect::<Result<Vec<_>, _>>()
            .map_err(fail)?;
        if digests.is_empty() {
            return Err(fail("token_sha256 is empty".into()));
        }
        let not_before = parse_time(&raw.not_before, "not_before").map_err(fail)?;
        let expires_at = parse_time(&raw.expires_at, "expires_at").map_err(fail)?;
        let models = raw
            .allowed_models
            .iter()
            .map(|m| {
                let m = m.trim();
                match m.strip_suffix('*') {
                    _ if m.is_empty() || m == "*" => {
                        Err(fail(format!("allowed_models entry `{m}` is empty")))
                    }
                    Some(prefix) => Ok(ModelPattern::Prefix(prefix.to_owned())),
                    None => Ok(ModelPattern::Exact(m.to_owned())),
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let paths = raw
            .allowed_paths
            .iter()
            .map(|p| {
                let p = p.trim();
                if p.starts_with("/v1/") && p.len() > 4 {
                    Ok(p.to_owned())
                } else {
                    Err(fail(format!(
                        "allowed_paths entry `{p}` must start with /v1/"
                    )))
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        let ips = raw
            .allowed_ips
            .iter()
            .map(|c| {
                c.parse::<Cidr>()
                    .map_err(|e| fail(format!("allowed_ips: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let fmt_time = |t: &Option<OffsetDateTime>| {
            t.and_then(|t| t.format(&Rfc3339).ok())
                .unwrap_or_else(|| "-".into())
        };
        let list = |v: &[String]| {
            if v.is_empty() {
                "any".to_owned()
            } else {
                v.join(",")
            }
        };
        let limits = ClientLimits {
            requests_per_minute: raw.requests_per_minute,
            max_concurrent: raw.max_concurrent,
            tokens_per_minute: raw.tokens_per_minute,
        };
        let limit = |v: Option<u32>| v.map_or("default".to_owned(), |n| n.to_string());
        let summary = format!(
            "tokens={} not_before={} expires_at={} models={} paths={} ips={} admin={} disabled={} rpm={} max_concurrent={} tpm={}",
            digests.len(),
            fmt_time(&not_before),
            fmt_time(&expires_at),
            list(&raw.allowed_models),
            list(&paths),
            list(&ips.iter().map(|c| c.to_string()).collect::<Vec<_>>()),
            raw.admin,
            raw.disabled,
            limit(limits.requests_per_minute),
            limit(limits.max_concurrent),
            limit(limits.tokens_per_minute),
        );
        Ok(Client {
            name,
            admin: raw.admin,
            limits,
            digests,
            not_before,
            expires_at,
            models,
            paths,
            ips,
            disabled: raw.disabled,
            summary,
        })
    }

    /// The client `SERVICE_TOKEN` stands for: no scopes, named `default`.
    pub fn default_for_token(token: &str) -> Client {
        Client {
            name: "default".into(),
            admin: false,
            limits: ClientLimits::default(),
            digests: vec![token_digest(token)],
            not_before: None,
            expires_at: None,
            models: Vec::new(),
            paths: Vec::new(),
            ips: Vec::new(),
            disabled: false,
            summary: "tokens=1 (SERVICE_TOKEN) scopes=none".into(),
        }
    }

    /// Digests in the summary, so a rotation shows as a change; never printed.
    fn fingerprint(&self) -> (String, Vec<[u8; 32]>) {
        (self.summary.clone(), self.digests.clone())
    }
}

/// Clients by token digest: one hash-map probe per request, whatever the number of clients.
#[derive(Debug, Default)]
pub struct ClientRegistry {
    by_digest: HashMap<[u8; 32], Arc<Client>>,
    by_name: BTreeMap<String, Arc<Client>>,
}

impl ClientRegistry {
    pub fn new(clients: Vec<Client>) -> Result<Self, String> {
        let mut registry = ClientRegistry::default();
        for client in clients {
            let client = Arc::new(client);
            if registry
                .by_name
                .insert(client.name.clone(), Arc::clone(&client))
                .is_some()
            {
                return Err(format!("client `{}` is defined twice", client.name));
            }
            for digest in &client.digests {
                if let Some(other) = registry.by_digest.insert(*digest, Arc::clone(&client)) {
                    return Err(format!(
                        "clients `{}` and `{}` share a token",
                        other.name, client.name
                    ));
                }
            }
        }
        Ok(registry)
    }

    /// The client holding `token`. Only digests are compared (the map's probe, then a
    /// constant-time check of the entry found), so no token byte is ever compared directly.
    pub fn lookup(&self, token: &str) -> Option<&Arc<Client>> {
        let digest = token_digest(token);
        self.by_digest
            .get_key_value(&digest)
            .filter(|(stored, _)| bool::from(stored.ct_eq(&digest)))
            .map(|(_, client)| client)
    }

    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Client>> {
        self.by_name.values()
    }

    /// Names added, removed and changed from `old` to `self`, for the reload log line.
    pub fn diff(&self, old: &ClientRegistry) -> (Vec<String>, Vec<String>, Vec<String>) {
        let added = self
            .by_name
            .keys()
            .filter(|n| !old.by_name.contains_key(*n))
            .cloned()
            .collect();
        let removed = old
            .by_name
            .keys()
            .filter(|n| !self.by_name.contains_key(*n))
            .cloned()
            .collect();
        let changed = self
            .by_name
            .iter()
            .filter(|(n, c)| {
                old.by_name
                    .get(*n)
                    .is_some_and(|o| o.fingerprint() != c.fingerprint())
            })
            .map(|(n, _)| n.clone())
            .collect();
        (added, removed, changed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn raw(name: &str, token: &str) -> RawClient {
        RawClient::new(name, hex(token_digest(token)))
    }

    #[test]
    fn lookup_by_any_of_several_tokens() {
        let mut a = raw("a", "token-a-old");
        a.token_sha256 = OneOrMany::Many(vec![
            hex(token_digest("token-a-old")),
            hex(token_digest("token-a-new")),
        ]);
        let reg = ClientRegistry::new(vec![
            Client::from_raw(a).unwrap(),
            Client::from_raw(raw("b", "token-b")).unwrap(),
        ])
        .unwrap();
        assert_eq!(reg.lookup("token-a-old").unwrap().name, "a");
        assert_eq!(reg.lookup("token-a-new").unwrap().name, "a");
        assert_eq!(reg.lookup("token-b").unwrap().name, "b");
        assert!(reg.lookup("token-c").is_none());
    }

    #[test]
    fn validity_window_and_disabled() {
        let mut c = raw("c", "t");
        c.not_before = Some("2026-01-01T00:00:00Z".into());
        c.expires_at = Some("2026-06-01T00:00:00+02:00".into());
        let c = Client::from_raw(c).unwrap();
        let at = |s: &str| OffsetDateTime::parse(s, &Rfc3339).unwrap();
        assert!(!c.usable_at(at("2025-12-31T23:59:59Z")));
        assert!(c.usable_at(at("2026-03-01T00:00:00Z")));
        assert!(!c.usable_at(at("2026-05-31T22:00:00Z")));
        let mut d = raw("d", "t");
        d.disabled = true;
        assert!(
            !Client::from_raw(d)
                .unwrap()
                .usable_at(at("2026-03-01T00:00:00Z"))
        );
    }

    #[test]
    fn scopes() {
        let mut c = raw("c", "t");
        c.allowed_models = vec!["gpt-4o*".into(), "text-embedding-3-small".into()];
        c.allowed_paths = vec!["/v1/chat/completions".into(), "/v1/embeddings".into()];
        c.allowed_ips = vec!["10.0.0.0/8".into()];
        let c = Client::from_raw(c).unwrap();
        assert!(c.model_allowed("gpt-4o-mini"));
        assert!(c.model_allowed("text-embedding-3-small"));
        assert!(!c.model_allowed("text-embedding-3-large"));
        assert!(c.path_allowed("/v1/chat/completions"));
        assert!(c.path_allowed("/v1/chat/completions/abc/messages"));
        assert!(!c.path_allowed("/v1/chat/completionsX"));
        assert!(!c.path_allowed("/v1/files"));
        assert!(c.ip_allowed("10.2.3.4".parse().unwrap()));
        assert!(!c.ip_allowed("11.2.3.4".parse().unwrap()));
    }

    #[test]
    fn invalid_entries_name_client_and_field() {
        let mut c = raw("bad", "t");
        c.token_sha256 = OneOrMany::One("abc".into());
        assert!(Client::from_raw(c).unwrap_err().contains("`bad`"));
        let mut c = raw("bad", "t");
        c.expires_at = Some("tomorrow".into());
        assert!(Client::from_raw(c).unwrap_err().contains("expires_at"));
        let mut c = raw("bad", "t");
        c.allowed_paths = vec!["/files".into()];
        assert!(Client::from_raw(c).unwrap_err().contains("allowed_paths"));
        let dup = ClientRegistry::new(vec![
            Client::from_raw(raw("x", "same")).unwrap(),
            Client::from_raw(raw("y", "same")).unwrap(),
        ]);
        assert!(dup.unwrap_err().contains("share a token"));
    }

    #[test]
    fn diff_names_changes() {
        let old = ClientRegistry::new(vec![
            Client::from_raw(raw("keep", "k")).unwrap(),
            Client::from_raw(raw("gone", "g")).unwrap(),
            Client::from_raw(raw("rotated", "r1")).unwrap(),
        ])
        .unwrap();
        let new = ClientRegistry::new(vec![
            Client::from_raw(raw("keep", "k")).unwrap(),
            Client::from_raw(raw("rotated", "r2")).unwrap(),
            Client::from_raw(raw("fresh", "f")).unwrap(),
        ])
        .unwrap();
        let (added, removed, changed) = new.diff(&old);
        assert_eq!(added, ["fresh"]);
        assert_eq!(removed, ["gone"]);
        assert_eq!(changed, ["rotated"]);
    }
}
