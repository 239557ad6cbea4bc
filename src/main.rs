//! Wiring only: the command, environment, logging, settings, then the server or a subcommand.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use openai_auth_proxy::cli::{self, Command};
use openai_auth_proxy::{config, server};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let command = match cli::parse(&args) {
        Ok(command) => command,
        Err(e) => return fail(&e),
    };
    match command {
        Command::Help => return cli::print_or_fail(Ok(cli::USAGE.to_owned())),
        Command::HashToken => return cli::print_or_fail(cli::hash_token()),
        Command::GenToken => {
            return cli::print_or_fail(
                cli::gen_token().map(|(token, hash)| format!("token: {token}\nsha256: {hash}")),
            );
        }
        Command::Serve | Command::CheckConfig => {}
    }

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
    if let Command::CheckConfig = command {
        return cli::print_or_fail(Ok(cli::summary(&settings)));
    }
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
