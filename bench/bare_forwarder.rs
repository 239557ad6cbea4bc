//! The floor of the chosen design, for the benchmark: actix-web forwarding every request through
//! a per-worker awc client and streaming the response back, with nothing else (no auth, no
//! header rules, no middleware, no metering). The proxy's cost above this line is its features;
//! the cost of this line itself is actix-web plus awc.
//!
//!   BARE_PORT=19083 UPSTREAM=http://127.0.0.1:19090 cargo run --release --example bare-forwarder

use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};

struct Upstream {
    client: awc::Client,
    base: String,
}

async fn forward(req: HttpRequest, payload: web::Payload, up: web::Data<Upstream>) -> HttpResponse {
    let url = format!("{}{}", up.base, req.uri());
    let mut request = up.client.request(req.method().clone(), url).no_decompress();
    for (name, value) in req.headers() {
        if name != "connection" && name != "host" {
            request = request.append_header((name.clone(), value.clone()));
        }
    }
    match request.send_stream(payload).await {
        Ok(res) => {
            let mut out = HttpResponse::build(res.status());
            for (name, value) in res.headers() {
                if name != "connection" && name != "transfer-encoding" && name != "content-length" {
                    out.append_header((name.clone(), value.clone()));
                }
            }
            out.streaming(res)
        }
        Err(e) => HttpResponse::BadGateway().body(e.to_string()),
    }
}

fn main() -> std::io::Result<()> {
    let port: u16 = std::env::var("BARE_PORT").map_or(19083, |p| p.parse().expect("BARE_PORT"));
    let base = std::env::var("UPSTREAM").unwrap_or_else(|_| "http://127.0.0.1:19090".into());
    actix_web::rt::System::new().block_on(async move {
        HttpServer::new(move || {
            App::new()
                .app_data(web::Data::new(Upstream {
                    client: awc::Client::builder()
                        .connector(awc::Connector::new().limit(0))
                        // As the proxy's first-byte timeout: awc's default of 5 s failed
                        // streams still queued behind thousands of others in (d).
                        .timeout(std::time::Duration::from_secs(600))
                        .disable_redirects()
                        .finish(),
                    base: base.clone(),
                }))
                .default_service(web::to(forward))
        })
        .workers(1)
        .bind(("127.0.0.1", port))?
        .run()
        .await
    })
}
