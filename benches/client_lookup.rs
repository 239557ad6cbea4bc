//! Auth cost per request with 1 and with 10,000 configured clients: digest the presented
//! token and probe the registry, as the guard does. Prints ns per lookup, hits and misses,
//! interleaved over several rounds (the machine is noisy; compare medians).
//!
//!   cargo bench --bench client_lookup

use std::hint::black_box;
use std::time::Instant;

use openai_auth_proxy::access::clients::{Client, ClientRegistry, RawClient, token_digest};
use openai_auth_proxy::cli::hex;

fn registry(n: usize) -> (ClientRegistry, Vec<String>) {
    let tokens: Vec<String> = (0..n)
        .map(|i| format!("bench-token-{i:08}-abcdefghijkl"))
        .collect();
    let clients = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let raw = RawClient::new(&format!("client-{i}"), hex(&token_digest(t)));
            Client::from_raw(raw).unwrap()
        })
        .collect();
    (ClientRegistry::new(clients).unwrap(), tokens)
}

fn ns_per_lookup(reg: &ClientRegistry, tokens: &[String], iterations: usize) -> f64 {
    let start = Instant::now();
    for i in 0..iterations {
        black_box(reg.lookup(black_box(&tokens[i % tokens.len()])));
    }
    start.elapsed().as_nanos() as f64 / iterations as f64
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let (one, one_tokens) = registry(1);
    let (many, many_tokens) = registry(10_000);
    let misses: Vec<String> = (0..1000)
        .map(|i| format!("unknown-token-{i:08}-zzzzzzzz"))
        .collect();
    const N: usize = 200_000;
    let (mut a, mut b, mut c, mut d) = (vec![], vec![], vec![], vec![]);
    for _ in 0..7 {
        a.push(ns_per_lookup(&one, &one_tokens, N));
        b.push(ns_per_lookup(&many, &many_tokens, N));
        c.push(ns_per_lookup(&one, &misses, N));
        d.push(ns_per_lookup(&many, &misses, N));
    }
    println!("client lookup (SHA-256 of the token + hash-map probe), median of 7 rounds of {N}:");
    println!(
        "  1 client       hit  {:7.1} ns   miss {:7.1} ns",
        median(a.clone()),
        median(c.clone())
    );
    println!(
        "  10,000 clients hit  {:7.1} ns   miss {:7.1} ns",
        median(b.clone()),
        median(d.clone())
    );
    println!(
        "  ratio 10,000 / 1: hit {:.2}, miss {:.2}",
        median(b) / median(a),
        median(d) / median(c)
    );
}
