//! Wiring only: environment, logging, settings, then the server.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use openai_auth_proxy::{config, server};

fn main() -> ExitCode {
    let cwd = std::env::current_dir().unwrap_or_else(|_| ".".into());
    let env = match config::environment_with_dotenv(&cwd) {
        Ok(env) => env,
        Err(e) => return fail(&e.to_string()),
    };
    init_logging(env.get("RUST_LOG").map(String::as_str));
    // Both ring and aws-lc-rs in the graph would make rustls panic at the first handshake
    // without an explicit choice; the result only says whether one was already installed.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let settings = match config::load(&env, &cwd) {
        Ok(settings) => settings,
        Err(e) => return fail(&e.to_string()),
    };
    match server::run(settings, cwd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(&e),
    }
}

fn init_logging(filter: Option<&str>) {
    env_logger::Builder::new()
        .parse_filters(filter.filter(|f| !f.is_empty()).unwrap_or("info"))
        .format_timestamp_millis()
        .init();
}

/// One clear line on stderr and a non-zero exit: what a supervisor or a person needs to see.
fn fail(message: &str) -> ExitCode {
    eprintln!("openai-auth-proxy: {message}");
    ExitCode::from(2)
}
