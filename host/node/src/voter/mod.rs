//! Passive voters (microcontrollers running `wraft_core::voter`, docs/embedded.md) as members
//! of the cluster: their RPCs go over a byte stream (a UART, or TCP) instead of QUIC.
//!
//! * [`VoterLink`]: one byte stream to a voter: link frames, sequence numbers, reconnects.
//!
//! The node's openraft network, which reaches voters through these links and other nodes
//! over QUIC, is [`crate::network::PeerNetwork`].
//!
//! A passive voter's membership address starts with [`PASSIVE_PREFIX`] (`voter:mcu-1`), so
//! every node knows it never leads; which stream reaches it is each node's own setting
//! (`--voter-link 3=tcp:127.0.0.1:5001`), as each host has its own wire to it.

mod link;

pub use link::{LinkAddr, VoterLink, VoterLinkError};

use std::collections::BTreeMap;

use wraft_core::raft::NodeId;

/// Membership addresses of passive voters start with this.
pub const PASSIVE_PREFIX: &str = "voter:";

/// Whether a member with this address is a passive voter (it never campaigns or leads).
pub fn is_passive(addr: &str) -> bool {
    addr.starts_with(PASSIVE_PREFIX)
}

/// This node's links to passive voters, by node id.
pub type VoterLinks = BTreeMap<NodeId, LinkAddr>;

/// Parses `--voter-link` values: `ID=tcp:HOST:PORT` or `ID=/dev/ttyX`.
pub fn parse_link(s: &str) -> Result<(NodeId, LinkAddr), String> {
    let (id, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("voter link {s:?} is not ID=tcp:HOST:PORT or ID=/dev/PATH"))?;
    let id = id
        .trim()
        .parse()
        .map_err(|_| format!("voter link id {id:?} is not a number"))?;
    Ok((id, addr.trim().parse()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn voter_links_parse_or_say_why_not() {
        assert_eq!(
            parse_link("3=tcp:127.0.0.1:5001"),
            Ok((3, LinkAddr::Tcp("127.0.0.1:5001".into())))
        );
        assert_eq!(
            parse_link(" 4 = /dev/ttyS1 "),
            Ok((4, LinkAddr::Device("/dev/ttyS1".into())))
        );
        for bad in ["3", "x=tcp:1:2", "3=udp:1:2", "3=ttyS1"] {
            let e = parse_link(bad).expect_err(bad);
            assert!(e.contains("voter link"), "{bad}: {e}");
        }
        assert!(is_passive("voter:mcu") && !is_passive("127.0.0.1:7001"));
    }
}
