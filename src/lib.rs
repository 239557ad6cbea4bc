//! openai-auth-proxy: an authenticating, fully streaming reverse proxy for the OpenAI API.
#![forbid(unsafe_code)]

pub mod access;
pub mod cli;
pub mod config;
pub mod error;
pub mod limits;
pub mod observe;
pub mod proxy;
pub mod realtime;
pub mod reload;
pub mod server;
pub mod tls;
