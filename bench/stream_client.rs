//! Load client for the streaming scenarios of scripts/bench.sh: raw HTTP/1.1 over TCP so that
//! what it measures is the server, not a client library's buffering.
//!
//!   stream-client sse  ADDR PATH TOKEN CONCURRENCY
//!       CONCURRENCY streams at once; prints time to first chunk and inter-event gaps
//!       (p50/p99, µs), the whole stream time, and how many reads held more than one event.
//!   stream-client hold ADDR PATH TOKEN COUNT SECONDS
//!       opens COUNT streams, prints `ready N errors E` once each has its first event, holds
//!       them SECONDS, then exits.
//!   stream-client ws-hold ADDR PATH TOKEN COUNT SECONDS
//!       the same with WebSocket sessions: ready once each upgrade got its 101.

use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

struct StreamStats {
    ttfc: Duration,
    gaps: Vec<Duration>,
    total: Duration,
    coalesced: usize,
}

async fn open(addr: &str, path: &str, token: &str) -> std::io::Result<(TcpStream, Instant)> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.set_nodelay(true)?;
    let start = Instant::now();
    conn.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n")
            .as_bytes(),
    )
    .await?;
    Ok((conn, start))
}

fn events_in(bytes: &[u8]) -> usize {
    bytes.windows(5).filter(|w| w == b"data:").count()
}

async fn one_stream(addr: String, path: String, token: String) -> std::io::Result<StreamStats> {
    let (mut conn, start) = open(&addr, &path, &token).await?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut head_done = false;
    let mut head = Vec::new();
    let mut last_event: Option<Instant> = None;
    let mut stats = StreamStats {
        ttfc: Duration::ZERO,
        gaps: Vec::new(),
        total: Duration::ZERO,
        coalesced: 0,
    };
    loop {
        let n = conn.read(&mut buf).await?;
        let now = Instant::now();
        if n == 0 {
            break;
        }
        let mut body = &buf[..n];
        if !head_done {
            head.extend_from_slice(body);
            let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            if !head.starts_with(b"HTTP/1.1 200") {
                return Err(std::io::Error::other(
                    String::from_utf8_lossy(&head[..end]).into_owned(),
                ));
            }
            head_done = true;
            let consumed = n - (head.len() - end - 4);
            body = &buf[consumed..n];
        }
        let events = events_in(body);
        if events == 0 {
            continue;
        }
        if events > 1 {
            stats.coalesced += 1;
        }
        match last_event {
            None => stats.ttfc = now - start,
            Some(prev) => stats.gaps.push(now - prev),
        }
        last_event = Some(now);
    }
    stats.total = start.elapsed();
    Ok(stats)
}

fn pct(v: &mut [Duration], p: f64) -> u128 {
    if v.is_empty() {
        return 0;
    }
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize].as_micros()
}

async fn sse(addr: String, path: String, token: String, concurrency: usize) {
    let tasks: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(one_stream(addr.clone(), path.clone(), token.clone())))
        .collect();
    let (mut ttfc, mut gaps, mut totals) = (Vec::new(), Vec::new(), Vec::new());
    let (mut coalesced, mut errors) = (0, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(s) => {
                ttfc.push(s.ttfc);
                gaps.extend(s.gaps);
                totals.push(s.total);
                coalesced += s.coalesced;
            }
            Err(e) => {
                errors += 1;
                if errors == 1 {
                    eprintln!("stream error: {e}");
                }
            }
        }
    }
    println!(
        "ttfc_p50_us={} ttfc_p99_us={} gap_p50_us={} gap_p99_us={} total_p50_ms={} coalesced_reads={} errors={}",
        pct(&mut ttfc, 0.5),
        pct(&mut ttfc, 0.99),
        pct(&mut gaps, 0.5),
        pct(&mut gaps, 0.99),
        pct(&mut totals, 0.5) / 1000,
        coalesced,
        errors
    );
}

/// Opens a WebSocket with a raw upgrade request and waits for the 101.
async fn ws_open(addr: &str, path: &str, token: &str) -> std::io::Result<TcpStream> {
    let mut conn = TcpStream::connect(addr).await?;
    conn.write_all(
        format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
        .as_bytes(),
    )
    .await?;
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = conn.read(&mut buf).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed during the upgrade"));
        }
        head.extend_from_slice(&buf[..n]);
    }
    if !head.starts_with(b"HTTP/1.1 101") {
        return Err(std::io::Error::other(
            String::from_utf8_lossy(&head).into_owned(),
        ));
    }
    Ok(conn)
}

async fn hold(addr: String, path: String, token: String, count: usize, seconds: u64, ws: bool) {
    let ramp = std::sync::Arc::new(Semaphore::new(256));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    for _ in 0..count {
        let (addr, path, token, tx, ramp) = (
            addr.clone(),
            path.clone(),
            token.clone(),
            tx.clone(),
            ramp.clone(),
        );
        tokio::spawn(async move {
            let permit = ramp.acquire_owned().await.unwrap();
            let result = async {
                if ws {
                    return ws_open(&addr, &path, &token).await;
                }
                let (mut conn, _) = open(&addr, &path, &token).await?;
                let mut buf = vec![0u8; 4096];
                let mut seen = Vec::new();
                loop {
                    let n = conn.read(&mut buf).await?;
                    if n == 0 {
                        return Err(std::io::Error::other("closed before the first event"));
                    }
                    seen.extend_from_slice(&buf[..n]);
                    if events_in(&seen) > 0 {
                        break;
                    }
                }
                Ok::<_, std::io::Error>(conn)
            }
            .await;
            drop(permit);
            match result {
                Ok(mut conn) => {
                    let _ = tx.send(true);
                    let mut buf = vec![0u8; 512];
                    while let Ok(n) = conn.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                }
                Err(e) => {
                    eprintln!("session failed: {e}");
                    let _ = tx.send(false);
                }
            }
        });
    }
    drop(tx);
    let (mut ok, mut errors) = (0, 0);
    while ok + errors < count {
        match rx.recv().await {
            Some(true) => ok += 1,
            Some(false) => errors += 1,
            None => break,
        }
    }
    println!("ready {ok} errors {errors}");
    tokio::time::sleep(Duration::from_secs(seconds)).await;
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    match args
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .as_slice()
    {
        ["sse", addr, path, token, c] => rt.block_on(sse(
            addr.to_string(),
            path.to_string(),
            token.to_string(),
            c.parse().unwrap(),
        )),
        [mode @ ("hold" | "ws-hold"), addr, path, token, n, s] => rt.block_on(hold(
            addr.to_string(),
            path.to_string(),
            token.to_string(),
            n.parse().unwrap(),
            s.parse().unwrap(),
            *mode == "ws-hold",
        )),
        _ => {
            eprintln!(
                "usage: stream-client sse ADDR PATH TOKEN CONCURRENCY | hold ADDR PATH TOKEN COUNT SECONDS"
            );
            std::process::exit(2);
        }
    }
}
