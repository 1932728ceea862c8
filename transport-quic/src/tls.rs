//! rustls configurations for QUIC with mutual TLS against the cluster CA.

use std::sync::Arc;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use rustls::RootCertStore;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

use crate::{ALPN_CLIENT, ALPN_RAFT, TransportError};

/// A node's (or client's) TLS identity: the cluster CA it trusts, its certificate and key.
#[derive(Debug)]
pub struct TlsIdentity {
    ca: CertificateDer<'static>,
    cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
}

impl Clone for TlsIdentity {
    fn clone(&self) -> Self {
        Self {
            ca: self.ca.clone(),
            cert: self.cert.clone(),
            key: self.key.clone_key(),
        }
    }
}

fn tls<E: std::fmt::Display>(what: &'static str) -> impl Fn(E) -> TransportError {
    move |e| TransportError::Tls(format!("{what}: {e}"))
}

impl TlsIdentity {
    /// From PEM text: the CA certificate, this party's certificate and its private key.
    pub fn from_pem(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Self, TransportError> {
        Ok(Self {
            ca: CertificateDer::from_pem_slice(ca_pem.as_bytes()).map_err(tls("CA certificate"))?,
            cert: CertificateDer::from_pem_slice(cert_pem.as_bytes())
                .map_err(tls("certificate"))?,
            key: PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(tls("private key"))?,
        })
    }

    fn roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        let mut roots = RootCertStore::empty();
        roots.add(self.ca.clone()).map_err(tls("CA certificate"))?;
        Ok(Arc::new(roots))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// The server side: requires a client certificate signed by the cluster CA; offers both
/// ALPNs.
pub fn server_config(id: &TlsIdentity) -> Result<quinn::ServerConfig, TransportError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(id.roots()?, provider())
        .build()
        .map_err(tls("client verifier"))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("protocol versions"))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(vec![id.cert.clone()], id.key.clone_key())
        .map_err(tls("server certificate"))?;
    cfg.alpn_protocols = vec![ALPN_RAFT.to_vec(), ALPN_CLIENT.to_vec()];
    let crypto = QuicServerConfig::try_from(cfg).map_err(tls("QUIC server config"))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let transport = Arc::get_mut(&mut server.transport)
        .ok_or_else(|| TransportError::Tls("transport config shared".into()))?;
    transport.max_concurrent_bidi_streams(1024u32.into());
    Ok(server)
}

/// The client side for `alpn`: trusts only the cluster CA and presents `id`'s certificate.
pub fn client_config(id: &TlsIdentity, alpn: &[u8]) -> Result<quinn::ClientConfig, TransportError> {
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls("protocol versions"))?
        .with_root_certificates(id.roots()?)
        .with_client_auth_cert(vec![id.cert.clone()], id.key.clone_key())
        .map_err(tls("client certificate"))?;
    cfg.alpn_protocols = vec![alpn.to_vec()];
    let crypto = QuicClientConfig::try_from(cfg).map_err(tls("QUIC client config"))?;
    Ok(quinn::ClientConfig::new(Arc::new(crypto)))
}
