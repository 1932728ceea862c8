//! A development PKI: a cluster CA and the node and client certificates it signs (rcgen).
//! `wraft cert` writes these as PEM files; tests generate them in memory.

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use wraft_core::raft::NodeId;

use crate::TransportError;

pub use wraft_api::Role;

/// The DNS name a node's certificate carries.
pub fn node_name(id: NodeId) -> String {
    format!("node-{id}.wraft")
}

/// The DNS name every node certificate also carries: clients that know only an address
/// connect to it with this name (any node of the cluster CA will do).
pub const CLUSTER_NAME: &str = "cluster.wraft";

/// The DNS name a client certificate with `role` carries.
pub fn client_name(role: Role) -> String {
    format!("{}.client.wraft", role.as_str())
}

/// A certificate and its private key, PEM-encoded.
#[derive(Debug, Clone)]
pub struct CertifiedKey {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A cluster certificate authority.
#[derive(Debug)]
pub struct DevCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM: every node and client trusts it.
    pub cert_pem: String,
}

fn tls(e: rcgen::Error) -> TransportError {
    TransportError::Tls(e.to_string())
}

impl DevCa {
    /// A new CA named `name`.
    pub fn generate(name: &str) -> Result<Self, TransportError> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(tls)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let cert = params.self_signed(&key).map_err(tls)?;
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert_pem: cert.pem(),
        })
    }

    fn sign(
        &self,
        dns_names: Vec<String>,
        common_name: &str,
    ) -> Result<CertifiedKey, TransportError> {
        let key = KeyPair::generate().map_err(tls)?;
        let mut params = CertificateParams::new(dns_names).map_err(tls)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        let cert = params.signed_by(&key, &self.issuer).map_err(tls)?;
        Ok(CertifiedKey {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// The certificate of node `id` (server and client authentication).
    pub fn node(&self, id: NodeId) -> Result<CertifiedKey, TransportError> {
        self.node_at(id, &[])
    }

    /// The certificate of node `id`, also valid for `hosts` (IP addresses or DNS names): what
    /// an HTTPS client checks when it reaches the node's HTTP port by address.
    pub fn node_at(&self, id: NodeId, hosts: &[String]) -> Result<CertifiedKey, TransportError> {
        let mut names = vec![node_name(id), CLUSTER_NAME.into()];
        names.extend(hosts.iter().cloned());
        self.sign(names, &format!("wraft node {id}"))
    }

    /// A client certificate with `role`, for `who`.
    pub fn client(&self, who: &str, role: Role) -> Result<CertifiedKey, TransportError> {
        self.sign(vec![client_name(role)], who)
    }
}
