//! A UDP fault proxy in front of each node.
//!
//! Node `i` listens on its real address; the cluster's membership names its proxy address
//! instead, so every raft packet between nodes passes through the proxy of its receiver.
//! For each sender the proxy opens its own upstream socket to the node, so the node sees one
//! peer per sender, and answers go back out through the proxy address the sender dialed.
//! The sender is known by its source address (a node sends from its one QUIC endpoint), so
//! faults are per direction: `from -> to` can be blocked, lossy, delayed or duplicated.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::task::JoinSet;

use crate::Rng;

/// Node ids, 1-based as in the cluster.
pub type NodeId = u64;

/// The network's faults at one moment.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Faults {
    /// Directions (`from`, `to`) that deliver nothing.
    pub blocked: HashSet<(NodeId, NodeId)>,
    /// Probability a datagram is dropped.
    pub loss: f64,
    /// Probability a datagram is delivered twice.
    pub duplicate: f64,
    /// Extra delay per datagram, drawn uniformly up to this (reorders them).
    pub max_delay: Duration,
}

impl Faults {
    /// No faults.
    pub fn healthy() -> Self {
        Self::default()
    }

    /// `node` cut off from every other node, both ways.
    pub fn isolate(node: NodeId, nodes: &[NodeId]) -> Self {
        let mut f = Self::default();
        for &other in nodes.iter().filter(|&&o| o != node) {
            f.blocked.insert((node, other));
            f.blocked.insert((other, node));
        }
        f
    }

    /// Two sides that cannot reach each other.
    pub fn split(side: &[NodeId], nodes: &[NodeId]) -> Self {
        let mut f = Self::default();
        for &a in side {
            for &b in nodes.iter().filter(|b| !side.contains(b)) {
                f.blocked.insert((a, b));
                f.blocked.insert((b, a));
            }
        }
        f
    }

    /// A bridge: `bridge` reaches both halves, which cannot reach each other.
    pub fn bridge(bridge: NodeId, left: &[NodeId], right: &[NodeId]) -> Self {
        let mut f = Self::default();
        for &a in left.iter().filter(|&&a| a != bridge) {
            for &b in right.iter().filter(|&&b| b != bridge) {
                f.blocked.insert((a, b));
                f.blocked.insert((b, a));
            }
        }
        f
    }
}

/// The proxies of a cluster and the faults they apply.
#[derive(Debug)]
pub struct Network {
    faults: Arc<Mutex<Faults>>,
    /// Each node's proxy address (what the membership names).
    pub proxies: Vec<SocketAddr>,
    tasks: JoinSet<()>,
}

impl Network {
    /// Starts one proxy per node: `nodes[k]` is node `k + 1`'s real address.
    pub async fn start(nodes: &[SocketAddr], seed: u64) -> std::io::Result<Self> {
        let faults = Arc::new(Mutex::new(Faults::healthy()));
        let ids: Arc<HashMap<SocketAddr, NodeId>> = Arc::new(
            nodes
                .iter()
                .enumerate()
                .map(|(k, a)| (*a, k as NodeId + 1))
                .collect(),
        );
        let mut tasks = JoinSet::new();
        let mut proxies = Vec::new();
        for (k, real) in nodes.iter().enumerate() {
            let socket = Arc::new(UdpSocket::bind("127.0.0.1:0").await?);
            proxies.push(socket.local_addr()?);
            let proxy = Proxy {
                node: k as NodeId + 1,
                real: *real,
                socket,
                ids: ids.clone(),
                faults: faults.clone(),
                rng: Arc::new(Mutex::new(Rng::new(seed ^ (k as u64 + 1)))),
            };
            tasks.spawn(proxy.run());
        }
        Ok(Self {
            faults,
            proxies,
            tasks,
        })
    }

    /// `--initial-members` naming each node by its proxy: `1=ADDR,2=ADDR,...`.
    pub fn members(&self) -> String {
        self.proxies
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}={p}", i + 1))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Replaces the faults in force.
    pub fn set(&self, faults: Faults) {
        if let Ok(mut f) = self.faults.lock() {
            *f = faults;
        }
    }

    /// The faults in force.
    pub fn faults(&self) -> Faults {
        self.faults.lock().map(|f| f.clone()).unwrap_or_default()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.tasks.abort_all();
    }
}

#[derive(Clone)]
struct Proxy {
    node: NodeId,
    real: SocketAddr,
    socket: Arc<UdpSocket>,
    ids: Arc<HashMap<SocketAddr, NodeId>>,
    faults: Arc<Mutex<Faults>>,
    rng: Arc<Mutex<Rng>>,
}

/// What to do with one datagram.
enum Fate {
    Drop,
    Deliver { copies: usize, delay: Duration },
}

impl Proxy {
    fn fate(&self, from: Option<NodeId>, to: Option<NodeId>) -> Fate {
        let Ok(faults) = self.faults.lock() else {
            return Fate::Drop;
        };
        if let (Some(f), Some(t)) = (from, to)
            && faults.blocked.contains(&(f, t))
        {
            return Fate::Drop;
        }
        let Ok(mut rng) = self.rng.lock() else {
            return Fate::Drop;
        };
        if faults.loss > 0.0 && rng.chance(faults.loss) {
            return Fate::Drop;
        }
        let copies = if faults.duplicate > 0.0 && rng.chance(faults.duplicate) {
            2
        } else {
            1
        };
        let max = faults.max_delay.as_micros() as u64;
        let delay = Duration::from_micros(if max > 0 { rng.below(max) } else { 0 });
        Fate::Deliver { copies, delay }
    }

    /// Sends `data` to `to` through `socket` as `fate` says.
    fn forward(&self, socket: Arc<UdpSocket>, data: Vec<u8>, to: SocketAddr, fate: Fate) {
        let Fate::Deliver { copies, delay } = fate else {
            return;
        };
        if delay.is_zero() {
            for _ in 0..copies {
                let _ = socket.try_send_to(&data, to);
            }
            return;
        }
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            for _ in 0..copies {
                let _ = socket.send_to(&data, to).await;
            }
        });
    }

    async fn run(self) {
        let mut upstreams: HashMap<SocketAddr, Arc<UdpSocket>> = HashMap::new();
        let mut replies = JoinSet::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((len, from)) = self.socket.recv_from(&mut buf).await else {
                continue;
            };
            let upstream = match upstreams.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let Ok(u) = UdpSocket::bind("127.0.0.1:0").await else {
                        continue;
                    };
                    let u = Arc::new(u);
                    upstreams.insert(from, u.clone());
                    replies.spawn(self.clone().relay_replies(u.clone(), from));
                    u
                }
            };
            let fate = self.fate(self.ids.get(&from).copied(), Some(self.node));
            self.forward(upstream, buf[..len].to_vec(), self.real, fate);
        }
    }

    /// Carries the node's answers to `peer` back out through the proxy address.
    async fn relay_replies(self, upstream: Arc<UdpSocket>, peer: SocketAddr) {
        let mut buf = vec![0u8; 65536];
        let to = self.ids.get(&peer).copied();
        loop {
            let Ok((len, _)) = upstream.recv_from(&mut buf).await else {
                continue;
            };
            let fate = self.fate(Some(self.node), to);
            self.forward(self.socket.clone(), buf[..len].to_vec(), peer, fate);
        }
    }
}
