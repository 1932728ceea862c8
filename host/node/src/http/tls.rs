//! TLS on the HTTP port: rustls (with ring, as the QUIC transport) over each accepted TCP
//! connection. The port presents one certificate chain and asks for no client certificate:
//! callers are authenticated by their bearer token, inside the encrypted connection.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why the HTTP port's TLS settings could not be made.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    /// The certificate file holds no PEM certificate, or a damaged one.
    #[error("the HTTP certificate: {0}")]
    Certificate(String),
    /// The key file holds no PEM private key, or a damaged one.
    #[error("the HTTP private key: {0}")]
    Key(String),
    /// rustls refused the pair (a key that does not match the certificate, say).
    #[error("the HTTP certificate and key: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A server configuration presenting `cert_pem` (a chain: the leaf first, then any
/// intermediates) with `key_pem`, offering HTTP/1.1.
pub fn server_config(
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<rustls::ServerConfig>, TlsSetupError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsSetupError::Certificate(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsSetupError::Certificate(
            "no PEM certificate in it".into(),
        ));
    }
    let key =
        PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| TlsSetupError::Key(e.to_string()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
