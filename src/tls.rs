//! The HTTPS listener's rustls configuration, loaded from PEM files.

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::TlsPaths;

/// Builds the server config: TLS 1.2 and 1.3 with rustls' defaults, ALPN h2 then http/1.1.
/// Any problem is one line naming the file and what is wrong with it.
pub fn server_config(paths: &TlsPaths) -> Result<ServerConfig, String> {
    let cert_path = &paths.cert_path;
    let key_path = &paths.key_path;
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect())
        .map_err(|e| {
            format!(
                "invalid setting TLS_CERT_PATH: cannot read a PEM certificate chain from {}: {e}",
                cert_path.display()
            )
        })?;
    if certs.is_empty() {
        return Err(format!(
            "invalid setting TLS_CERT_PATH: {} holds no certificate",
            cert_path.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| {
        format!(
            "invalid setting TLS_KEY_PATH: cannot read a PEM private key from {}: {e}",
            key_path.display()
        )
    })?;
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| {
            format!(
                "invalid setting TLS_KEY_PATH: the key in {} does not fit the certificate in {}: {e}",
                key_path.display(),
                cert_path.display()
            )
        })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
