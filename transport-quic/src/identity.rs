//! Who is on the other end of a connection: the names in the peer's certificate (already
//! verified against the cluster CA by the TLS handshake).

use rustls::pki_types::{CertificateDer, ServerName};
use wraft_core::raft::NodeId;

use crate::pki::{Role, client_name, node_name};

fn end_entity(conn: &quinn::Connection) -> Option<CertificateDer<'static>> {
    let identity = conn.peer_identity()?;
    let chain = identity.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    chain.first().cloned()
}

fn has_name(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return false;
    };
    let Ok(server_name) = ServerName::try_from(name) else {
        return false;
    };
    ee.verify_is_valid_for_subject_name(&server_name).is_ok()
}

/// True if the peer's certificate is node `id`'s.
pub fn is_node(conn: &quinn::Connection, id: NodeId) -> bool {
    end_entity(conn).is_some_and(|c| has_name(&c, &node_name(id)))
}

/// The strongest client role the peer's certificate carries, if any.
pub fn client_role(conn: &quinn::Connection) -> Option<Role> {
    let cert = end_entity(conn)?;
    Role::ALL
        .into_iter()
        .rev()
        .find(|r| has_name(&cert, &client_name(*r)))
}

/// sha256 of the peer's certificate: what connection limits count by.
pub fn fingerprint(conn: &quinn::Connection) -> Option<[u8; 32]> {
    let cert = end_entity(conn)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    Some(out)
}
