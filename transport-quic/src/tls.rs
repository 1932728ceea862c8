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
    transport.ack_frequency_config(Some(ack_frequency()));
    Ok(server)
}

/// A node's endpoint configuration. Its stateless-reset key and the key that signs its
/// connection ids are derived from the node's TLS private key, so a node restarted with the
/// same key (after a crash or a power loss) recognizes the connection ids of its previous
/// run and resets those connections: clients and peers learn at their next packet that the
/// connection is gone and dial again, instead of waiting out the idle timeout on a
/// connection nobody serves.
pub fn endpoint_config(id: &TlsIdentity) -> quinn::EndpointConfig {
    use ring::hmac;
    let derive = hmac::Key::new(hmac::HMAC_SHA256, id.key.secret_der());
    let reset = hmac::sign(&derive, b"wraft: QUIC stateless reset key, v1");
    let cid = hmac::sign(&derive, b"wraft: QUIC connection id key, v1");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&cid.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    let mut config =
        quinn::EndpointConfig::new(Arc::new(hmac::Key::new(hmac::HMAC_SHA256, reset.as_ref())));
    config.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    config
}

/// How long a connection may go without hearing from its peer before it is given up, and
/// how often an otherwise quiet connection pings: a peer that vanished without a word (and
/// cannot answer with a stateless reset, e.g. behind a partition) is noticed in seconds.
pub const IDLE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(2);

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
    let mut transport = quinn::TransportConfig::default();
    transport
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(IDLE_TIMEOUT).map_err(tls("idle timeout"))?,
        ));
    transport.ack_frequency_config(Some(ack_frequency()));
    let mut client = quinn::ClientConfig::new(Arc::new(crypto));
    client.transport_config(Arc::new(transport));
    Ok(client)
}

/// What each side asks its peer to acknowledge with (QUIC's acknowledgement frequency
/// extension, which both ends of every wraft connection speak): an ACK after 8 packets that
/// need one instead of 2, and at most 1 ms late. A loaded leader receives thousands of small
/// request packets a second; acknowledging every other one sent about as many ACK-only
/// packets back. Measured (docs/benchmarks.md, "ACK frequency"): 256 clients' p99 within
/// 16-18 ms in 4 of 4 runs against 19-33 ms before, with the same throughput and 1-client
/// latency. The 1 ms bound keeps loss detection and the congestion window's growth prompt.
fn ack_frequency() -> quinn::AckFrequencyConfig {
    let mut ack = quinn::AckFrequencyConfig::default();
    ack.ack_eliciting_threshold(8u32.into())
        .max_ack_delay(Some(std::time::Duration::from_millis(1)));
    ack
}
