//! Subcommands besides serving: token hashing and generation, and a configuration check.

use std::io::Read;
use std::process::ExitCode;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::access::clients::token_digest;
use crate::config::Settings;

pub enum Command {
    Serve,
    HashToken,
    GenToken,
    CheckConfig,
    Help,
}

pub const USAGE: &str = "usage: openai-auth-proxy [COMMAND]

Without a command, runs the proxy.

commands:
  hash-token    read a token on stdin, print its SHA-256 (for token_sha256 in [[clients]])
  gen-token     print a new random token (256 bits, URL-safe) and its SHA-256
  check-config  load and validate the layered settings, print a summary without secrets
  help          print this text";

pub fn parse(args: &[String]) -> Result<Command, String> {
    match args {
        [] => Ok(Command::Serve),
        [cmd] => match cmd.as_str() {
            "serve" => Ok(Command::Serve),
            "hash-token" => Ok(Command::HashToken),
            "gen-token" => Ok(Command::GenToken),
            "check-config" => Ok(Command::CheckConfig),
            "help" | "-h" | "--help" => Ok(Command::Help),
            other => Err(format!("unknown command `{other}`\n{USAGE}")),
        },
        _ => Err(format!("too many arguments\n{USAGE}")),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Reads the token from stdin (so it stays out of shell history and `ps`), without its
/// trailing newline.
pub fn hash_token() -> Result<String, String> {
    let mut input = String::new();
    std::io::stdin()
        .read_to_string(&mut input)
        .map_err(|e| format!("cannot read the token from stdin: {e}"))?;
    let token = input
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&input);
    if token.is_empty() {
        return Err(
            "no token on stdin (try: printf %s \"$TOKEN\" | openai-auth-proxy hash-token)".into(),
        );
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("the token contains whitespace or non-printable characters".into());
    }
    Ok(hex(&token_digest(token)))
}

pub fn gen_token() -> Result<(String, String), String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness from the OS: {e}"))?;
    let token = URL_SAFE_NO_PAD.encode(bytes);
    let digest = hex(&token_digest(&token));
    Ok((token, digest))
}

/// What `check-config` prints: every decision the settings make, no secret.
pub fn summary(settings: &Settings) -> String {
    let mut out = String::from("configuration OK\n");
    let s = &settings.server;
    let scheme = if settings.tls.is_some() {
        "https"
    } else {
        "http"
    };
    out += &format!(
        "listen: {scheme}://{}:{} ({} workers, shutdown grace {} s)\n",
        s.bind_addr,
        s.port,
        s.workers,
        s.shutdown_grace.as_secs()
    );
    let u = &settings.upstream;
    out += &format!(
        "upstream: {} (connect timeout {} s, first-byte timeout {} s, admin key {}, organization {}, project {}, extra CAs {})\n",
        u.base_url,
        u.connect_timeout.as_secs(),
        u.first_byte_timeout.as_secs(),
        if u.admin_key.is_some() {
            "set"
        } else {
            "unset"
        },
        u.organization.as_deref().unwrap_or("-"),
        u.project.as_deref().unwrap_or("-"),
        u.extra_roots.len(),
    );
    match &settings.tls {
        None => out += "tls: off\n",
        Some(t) => {
            out += &format!(
                "tls: cert {} key {} client CA {}\n",
                t.cert_path.display(),
                t.key_path.display(),
                t.client_ca_path
                    .as_ref()
                    .map_or("-".into(), |p| p.display().to_string())
            )
        }
    }
    let a = &settings.access;
    let list = |v: &[crate::access::ip::Cidr]| {
        if v.is_empty() {
            "-".to_owned()
        } else {
            v.iter()
                .map(|c| c.to_string())
                .collect::<Vec<_>>()
                .join(",")
        }
    };
    out += &format!(
        "access: allowed_ips={} trusted_proxies={} max_inspect_body_bytes={}\n",
        list(&a.allowed_ips),
        list(&a.trusted_proxies),
        a.max_inspect_body_bytes
    );
    out += &format!("clients ({}):\n", a.clients.len());
    for client in a.clients.iter() {
        out += &format!("  {}: {}\n", client.name, client.describe());
    }
    out
}

pub fn print_or_fail(result: Result<String, String>) -> ExitCode {
    match result {
        Ok(text) => {
            println!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("openai-auth-proxy: {e}");
            ExitCode::from(2)
        }
    }
}
