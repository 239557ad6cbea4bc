//! Acceptance 6: a slow first byte is waited for, an unreachable upstream is a 502 and one too
//! slow for the configured limit a 504, both OpenAI-shaped; the proxy keeps serving.

mod common;

use common::mock::Mock;
use common::*;

#[actix_web::test]
async fn slow_first_byte_beyond_awcs_default_succeeds() {
    let mock = Mock::start();
    let proxy = Proxy::start(&mock.base(), &[]);
    let mut res = client()
        .post(proxy.url("/v1/slow?ms=5500"))
        .insert_header(("authorization", bearer()))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let json: serde_json::Value = res.json().await.unwrap();
    assert_eq!(json["slow"], true);
}

#[actix_web::test]
async fn first_byte_timeout_is_a_504() {
    let mock = Mock::start();
    let proxy = Proxy::start(
        &mock.base(),
        &[("PROXY__UPSTREAM__FIRST_BYTE_TIMEOUT_SECS", "1")],
    );
    let mut res = client()
        .post(proxy.url("/v1/slow?ms=3000"))
        .insert_header(("authorization", bearer()))
        .send_body("{}")
        .await
        .unwrap();
    assert_eq!(res.status(), 504);
    assert_openai_error(&res.body().await.unwrap(), "upstream_timeout");
    let res = client().get(proxy.url("/healthz")).send().await.unwrap();
    assert_eq!(res.status(), 200);
}

#[actix_web::test]
async fn refused_connection_is_a_502() {
    let base = format!("http://127.0.0.1:{}/v1", closed_port());
    let proxy = Proxy::start(&base, &[]);
    for _ in 0..3 {
        let mut res = authorized_get(&proxy, "/v1/models").send().await.unwrap();
        assert_eq!(res.status(), 502);
        let body = res.body().await.unwrap();
        assert_openai_error(&body, "upstream_unreachable");
        let text = String::from_utf8_lossy(&body);
        assert!(!text.contains(KEY) && !text.contains(TOKEN), "{text}");
    }
}
