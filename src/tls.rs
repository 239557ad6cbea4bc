//! The HTTPS listener: rustls server config from PEM files, a certificate that can be swapped
//! while running, and optional client-certificate authentication.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig};

use crate::config::TlsPaths;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads the chain and key and checks that they belong together. Errors are one line naming
/// the setting and the file.
pub fn load_certified_key(paths: &TlsPaths) -> Result<CertifiedKey, String> {
    let (cert_path, key_path) = (&paths.cert_path, &paths.key_path);
    let certs = read_certs(cert_path).map_err(|e| format!("invalid setting TLS_CERT_PATH: {e}"))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "invalid setting TLS_KEY_PATH: cannot read a PEM private key (PKCS#8, RSA or EC) from {}: {e}",
            key_path.display()
        )
    })?;
    CertifiedKey::from_der(certs, key, &provider()).map_err(|e| {
        format!(
            "invalid setting TLS_KEY_PATH: the key in {} does not fit the certificate in {}: {e}",
            key_path.display(),
            cert_path.display()
        )
    })
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect())
        .map_err(|e| format!("cannot read PEM certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The serving certificate, swapped whole on reload. Handshakes in progress keep the `Arc` they
/// took; new ones see the new certificate. A read lock per handshake is uncontended in
/// practice (writes happen on reload only).
#[derive(Debug)]
pub struct SwappableCert {
    current: RwLock<Arc<CertifiedKey>>,
}

impl SwappableCert {
    pub fn new(key: CertifiedKey) -> Self {
        Self {
            current: RwLock::new(Arc::new(key)),
        }
    }

    pub fn replace(&self, key: CertifiedKey) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(key);
    }
}

impl ResolvesServerCert for SwappableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(
            &self.current.read().unwrap_or_else(|e| e.into_inner()),
        ))
    }
}

/// TLS 1.2 and 1.3 with rustls' safe defaults, ALPN h2 then http/1.1. With a client CA, every
/// client must present a certificate it signed, or the handshake fails.
pub fn server_config(paths: &TlsPaths, cert: Arc<SwappableCert>) -> Result<ServerConfig, String> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?;
    let builder = match &paths.client_ca_path {
        None => builder.with_no_client_auth(),
        Some(ca_path) => {
            let mut roots = RootCertStore::empty();
            for ca in read_certs(ca_path)
                .map_err(|e| format!("invalid setting TLS_CLIENT_CA_PATH: {e}"))?
            {
                roots.add(ca).map_err(|e| {
                    format!(
                        "invalid setting TLS_CLIENT_CA_PATH: {} holds an unusable CA certificate: {e}",
                        ca_path.display()
                    )
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
                .build()
                .map_err(|e| format!("invalid setting TLS_CLIENT_CA_PATH: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder.with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
