//! TCP_NODELAY on every connection the proxy holds, towards clients and towards the upstream.
//!
//! Without it, Nagle's algorithm holds a small write back while an earlier one is still
//! unacknowledged: over a real network, stream events arriving faster than the round trip
//! would leave the proxy batched, one segment per round trip. actix-web leaves the option
//! unset on accepted sockets (its `tcp_nodelay` setting defaults to "don't touch"), and
//! actix-tls' connector does not set it on upstream sockets. (Loopback hides the effect: its
//! acknowledgements are immediate.)

use std::any::Any;

use actix_rt::net::TcpStream;
use actix_web::dev::Extensions;

/// For `HttpServer::on_connect`: the connection is a `TcpStream`, or rustls' stream over one.
pub fn on_accept(conn: &dyn Any, _: &mut Extensions) {
    if let Some(tcp) = accepted_tcp(conn) {
        // An error here only means the peer is already gone.
        let _ = tcp.set_nodelay(true);
    }
}

fn accepted_tcp(conn: &dyn Any) -> Option<&TcpStream> {
    if let Some(tcp) = conn.downcast_ref::<TcpStream>() {
        return Some(tcp);
    }
    conn.downcast_ref::<actix_tls::accept::rustls_0_23::TlsStream<TcpStream>>()
        .map(|tls| tls.get_ref().0)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use actix_service::{Service, ServiceFactory};
    use actix_tls::accept::rustls_0_23::Acceptor;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};

    use super::*;

    fn pair() -> (std::net::TcpStream, TcpStream) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        server.set_nonblocking(true).unwrap();
        (client, TcpStream::from_std(server).unwrap())
    }

    #[actix_rt::test]
    async fn plain_connections_get_nodelay() {
        let (_client, server) = pair();
        assert!(!server.nodelay().unwrap());
        on_accept(&server, &mut Extensions::new());
        assert!(server.nodelay().unwrap());
    }

    #[actix_rt::test]
    async fn tls_connections_get_nodelay_on_their_socket() {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let der = CertificateDer::from(cert.cert.der().to_vec());
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.signing_key.serialize_der()));
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![der.clone()], key)
            .unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(der).unwrap();
        let client_config = Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        );

        let (client, server) = pair();
        // The client side of the handshake, blocking, on its own thread.
        let handshake = std::thread::spawn(move || {
            let conn = rustls::ClientConnection::new(
                client_config,
                ServerName::try_from("localhost").unwrap(),
            )
            .unwrap();
            let mut tls = rustls::StreamOwned::new(conn, client);
            while tls.conn.is_handshaking() {
                tls.conn.complete_io(&mut tls.sock).unwrap();
            }
        });
        let acceptor = ServiceFactory::<TcpStream>::new_service(&Acceptor::new(server_config), ())
            .await
            .unwrap();
        let tls = acceptor.call(server).await.unwrap();
        handshake.join().unwrap();

        assert!(!tls.get_ref().0.nodelay().unwrap());
        on_accept(&tls, &mut Extensions::new());
        assert!(tls.get_ref().0.nodelay().unwrap());
    }
}
