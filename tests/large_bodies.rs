//! Acceptance 4: 100 MB up and 100 MB down pass byte-exact while the proxy's resident memory
//! stays flat: bodies stream, they are never buffered.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use actix_web::body::SizedStream;
use common::mock::{Mock, hex};
use common::*;
use futures_util::{StreamExt, stream};
use sha2::{Digest, Sha256};

const SIZE: u64 = 100 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;
const MAX_GROWTH_KIB: u64 = 32 * 1024;

/// Samples the proxy's RSS every 5 ms until stopped; returns the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssWatch {
    fn start(pid: u32) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(0));
        let (s, p) = (Arc::clone(&stop), Arc::clone(&peak));
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                p.fetch_max(rss_kib(pid), Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        Self {
            stop,
            peak,
            thread: Some(thread),
        }
    }

    fn peak_kib(mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap();
        self.peak.load(Ordering::Relaxed)
    }
}

fn expected_sha256() -> String {
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < SIZE {
        let len = CHUNK.min((SIZE - offset) as usize);
        hasher.update(pattern_chunk(offset, len));
        offset += len as u64;
    }
    hex(&hasher.finalize())
}

/// Warms the proxy up (workers, pools, allocator) so the baseline is its steady state.
async fn warm_up(proxy: &Proxy) -> u64 {
    for _ in 0..4 {
        let mut res = authorized_get(proxy, "/v1/download?bytes=1048576")
            .send()
            .await
            .unwrap();
        res.body().limit(2 << 20).await.unwrap();
    }
    proxy.rss_kib()
}

#[actix_web::test]
async fn hundred_megabytes_each_way_with_flat_memory() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let expected = expected_sha256();
    let baseline = warm_up(&proxy).await;

    // Upload with a declared length: it must stream, and the length must survive.
    let watch = RssWatch::start(proxy.pid());
    let chunks = stream::unfold(0u64, |offset| async move {
        (offset < SIZE).then(|| {
            let len = CHUNK.min((SIZE - offset) as usize);
            (
                Ok::<_, std::io::Error>(pattern_chunk(offset, len)),
                offset + len as u64,
            )
        })
    });
    let mut res = client()
        .post(proxy.url("/v1/upload"))
        .insert_header(("authorization", bearer()))
        .insert_header(("content-type", "application/octet-stream"))
        .send_body(SizedStream::new(SIZE, chunks))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = res.json().await.unwrap();
    let upload_peak = watch.peak_kib();
    assert_eq!(json["bytes"], SIZE);
    assert_eq!(json["sha256"], expected.as_str(), "upload corrupted");
    assert_eq!(
        mock.state.last_request().header("content-length"),
        Some(SIZE.to_string().as_str())
    );

    // Download, hashed as it arrives.
    let watch = RssWatch::start(proxy.pid());
    let mut res = authorized_get(&proxy, &format!("/v1/download?bytes={SIZE}"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers().get("content-length").unwrap(),
        SIZE.to_string().as_str()
    );
    let mut hasher = Sha256::new();
    let mut received = 0u64;
    while let Some(chunk) = res.next().await {
        let chunk = chunk.unwrap();
        received += chunk.len() as u64;
        hasher.update(&chunk);
    }
    let download_peak = watch.peak_kib();
    assert_eq!(received, SIZE);
    assert_eq!(hex(&hasher.finalize()), expected, "download corrupted");

    let up = upload_peak.saturating_sub(baseline);
    let down = download_peak.saturating_sub(baseline);
    println!(
        "proxy RSS: baseline {baseline} KiB, upload peak +{up} KiB, download peak +{down} KiB"
    );
    assert!(up < MAX_GROWTH_KIB, "upload grew RSS by {up} KiB");
    assert!(down < MAX_GROWTH_KIB, "download grew RSS by {down} KiB");
}

#[actix_web::test]
async fn chunked_upload_streams_without_a_length() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let size: u64 = 8 * 1024 * 1024;
    let chunks = stream::unfold(0u64, move |offset| async move {
        (offset < size).then(|| {
            let len = CHUNK.min((size - offset) as usize);
            (
                Ok::<_, std::io::Error>(pattern_chunk(offset, len)),
                offset + len as u64,
            )
        })
    });
    let mut res = client()
        .post(proxy.url("/v1/upload"))
        .insert_header(("authorization", bearer()))
        .send_stream(chunks)
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = res.json().await.unwrap();
    assert_eq!(json["bytes"], size);
    let mut hasher = Sha256::new();
    let mut offset = 0;
    while offset < size {
        let len = CHUNK.min((size - offset) as usize);
        hasher.update(pattern_chunk(offset, len));
        offset += len as u64;
    }
    assert_eq!(json["sha256"], hex(&hasher.finalize()).as_str());
    assert_eq!(
        mock.state.last_request().header("transfer-encoding"),
        Some("chunked")
    );
}
