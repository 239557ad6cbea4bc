//! Certificates made at test time (rcgen), and TLS clients that trust them.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

/// A CA that signs server and client certificates, written as PEM files into `dir`.
pub struct Pki {
    pub dir: PathBuf,
    ca: CertifiedIssuer<'static, KeyPair>,
}

impl Pki {
    pub fn new(dir: &Path, name: &str) -> Pki {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        std::fs::write(dir.join(format!("{name}-ca.crt")), ca.pem()).unwrap();
        Pki {
            dir: dir.to_owned(),
            ca,
        }
    }

    pub fn ca_path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-ca.crt"))
    }

    pub fn ca_der(&self) -> CertificateDer<'static> {
        self.ca.der().clone()
    }

    /// Issues a certificate; returns the (chain, key) paths. The chain holds the leaf only.
    pub fn issue(&self, file_stem: &str, names: &[&str], client: bool) -> (PathBuf, PathBuf) {
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, file_stem.to_owned());
        params.extended_key_usages = vec![if client {
            ExtendedKeyUsagePurpose::ClientAuth
        } else {
            ExtendedKeyUsagePurpose::ServerAuth
        }];
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        let cert_path = self.dir.join(format!("{file_stem}.crt"));
        let key_path = self.dir.join(format!("{file_stem}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        (cert_path, key_path)
    }
}

/// The certificates of a PEM file.
fn chain(path: &Path) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_file_iter(path)
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls client config trusting `ca`, offering `alpn`, optionally with a client certificate.
pub fn client_config(
    ca: CertificateDer<'static>,
    alpn: &[&[u8]],
    client_cert: Option<(&Path, &Path)>,
) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots);
    let mut config = match client_cert {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => builder
            .with_client_auth_cert(chain(cert), PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// An awc client over TLS with `config`.
pub fn https_client(config: Arc<rustls::ClientConfig>) -> awc::Client {
    awc::Client::builder()
        .connector(awc::Connector::new().rustls_0_23(config))
        .timeout(Duration::from_secs(30))
        .finish()
}

/// A blocking HTTPS exchange: the server's leaf certificate and the raw response, or the
/// TLS/IO error that ended it.
pub fn https_exchange(
    addr: SocketAddr,
    config: Arc<rustls::ClientConfig>,
    request: &str,
) -> (
    Option<CertificateDer<'static>>,
    Result<String, std::io::Error>,
) {
    let mut tcp = TcpStream::connect(addr).unwrap();
    tcp.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut conn =
        rustls::ClientConnection::new(config, ServerName::try_from("localhost").unwrap()).unwrap();
    let mut tls = rustls::Stream::new(&mut conn, &mut tcp);
    let result = tls.write_all(request.as_bytes()).and_then(|_| {
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => Ok(String::from_utf8_lossy(&out).into_owned()),
            // A server that closes without close_notify after a whole response is fine here.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {
                Ok(String::from_utf8_lossy(&out).into_owned())
            }
            Err(e) => Err(e),
        }
    });
    let leaf = conn
        .peer_certificates()
        .and_then(|certs| certs.first().cloned())
        .map(|c| c.into_owned());
    (leaf, result)
}

/// A rustls server config serving `cert`/`key`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> rustls::ServerConfig {
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain(cert), PrivateKeyDer::from_pem_file(key).unwrap())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config
}
