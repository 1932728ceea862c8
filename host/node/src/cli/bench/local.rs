//! The local cluster `wraft bench` measures by default: three `wraft serve` processes (this
//! same binary) on 127.0.0.1 with fresh certificates and data under one directory, removed
//! when the bench ends. Separate processes, so the numbers include what a deployment pays
//! (no shared allocator or runtime with the clients) and each node's memory can be read.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use wraft_client::Client;

/// Three running nodes; dropping it kills them and removes the data.
#[derive(Debug)]
pub struct LocalCluster {
    pub dir: PathBuf,
    pub addrs: Vec<SocketAddr>,
    /// Each node's HTTP port, when asked for, and the writer token it accepts.
    http: Option<(Vec<SocketAddr>, String)>,
    children: Vec<Child>,
}

impl LocalCluster {
    /// Starts three nodes under a new directory inside `base` (serving HTTP too, if `http`)
    /// and waits for a leader.
    pub async fn start(base: &Path, port: Option<u16>, http: bool) -> anyhow::Result<Self> {
        let dir = base.join(format!("wraft-bench-{}", std::process::id()));
        if dir.exists() {
            std::fs::remove_dir_all(&dir)
                .with_context(|| format!("removing a stale {}", dir.display()))?;
        }
        let certs = dir.join("certs");
        crate::cli::cert::generate(&certs, &[1, 2, 3], &[], false)?;
        let addrs = match port {
            Some(p) => (0..3)
                .map(|i| SocketAddr::from(([127, 0, 0, 1], p.saturating_add(i))))
                .collect(),
            None => free_udp_addrs(3)?,
        };
        let members = addrs
            .iter()
            .enumerate()
            .map(|(i, a)| format!("{}={a}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let exe = std::env::current_exe().context("locating the wraft binary")?;
        let http = if http {
            Some((free_tcp_addrs(3)?, writer_token()))
        } else {
            None
        };
        let mut cluster = Self {
            dir: dir.clone(),
            addrs: addrs.clone(),
            http: http.clone(),
            children: Vec::new(),
        };
        for (i, addr) in addrs.iter().enumerate() {
            let id = i + 1;
            let log = std::fs::File::create(dir.join(format!("node-{id}.log")))?;
            let mut cmd = Command::new(&exe);
            cmd.arg("serve")
                .args(["--id", &id.to_string()])
                .args(["--listen", &addr.to_string()])
                .arg("--data-dir")
                .arg(dir.join(format!("node-{id}")))
                .arg("--ca")
                .arg(certs.join("ca.pem"))
                .arg("--cert")
                .arg(certs.join(format!("node-{id}.pem")))
                .arg("--key")
                .arg(certs.join(format!("node-{id}.key")))
                .args(["--queue", "4096"])
                .stdin(Stdio::null())
                .stdout(log.try_clone()?)
                .stderr(log);
            if id == 1 {
                cmd.args(["--initial-members", &members]);
            }
            if let Some((http_addrs, token)) = &http {
                // Plain HTTP, as the etcd it is compared with is measured (docs/benchmarks.md).
                cmd.args([
                    "--http-listen",
                    &http_addrs[i].to_string(),
                    "--http-plaintext",
                ])
                .args(["--http-token", &format!("writer:{token}")]);
            }
            cluster
                .children
                .push(cmd.spawn().context("starting wraft serve")?);
        }
        cluster.wait_for_leader().await?;
        Ok(cluster)
    }

    /// A client of all three nodes, as the admin.
    pub fn client(&self) -> anyhow::Result<Client> {
        let nodes = self.addrs.iter().map(ToString::to_string).collect();
        Ok(Client::new(nodes, &self.identity()?)?)
    }

    /// The leader's HTTP port and a writer's token (a cluster started with `http`).
    pub async fn http_target(&self, client: &Client) -> anyhow::Result<super::HttpTarget> {
        let (addrs, token) = self
            .http
            .as_ref()
            .context("the local cluster was started without HTTP")?;
        let leader = client
            .status()
            .await?
            .leader
            .context("the cluster has no leader")?;
        let addr = *usize::try_from(leader)
            .ok()
            .and_then(|id| addrs.get(id.wrapping_sub(1)))
            .context("the leader is not one of the local nodes")?;
        Ok(super::HttpTarget {
            addr,
            token: token.clone(),
        })
    }

    /// The admin's TLS identity.
    pub fn identity(&self) -> anyhow::Result<wraft_transport_quic::TlsIdentity> {
        let certs = self.dir.join("certs");
        crate::cli::load_identity(
            &certs.join("ca.pem"),
            &certs.join("admin.pem"),
            &certs.join("admin.key"),
        )
    }

    async fn wait_for_leader(&mut self) -> anyhow::Result<()> {
        let client = self.client()?.with_patience(Duration::from_secs(2));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            for (i, child) in self.children.iter_mut().enumerate() {
                if let Some(status) = child.try_wait()? {
                    bail!(
                        "node {} exited ({status}); its log is {}",
                        i + 1,
                        self.dir.join(format!("node-{}.log", i + 1)).display()
                    );
                }
            }
            if let Ok(s) = client.status().await
                && s.leader.is_some()
                && s.nodes.len() == 3
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the local cluster elected no leader within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Each node's resident memory now and at its peak (`VmRSS`, `VmHWM`), in bytes.
    pub fn memory(&self) -> Vec<(u64, u64)> {
        self.children
            .iter()
            .map(|c| {
                let status =
                    std::fs::read_to_string(format!("/proc/{}/status", c.id())).unwrap_or_default();
                (kib(&status, "VmRSS:") * 1024, kib(&status, "VmHWM:") * 1024)
            })
            .collect()
    }
}

fn kib(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for child in &mut self.children {
            // SIGTERM first so the nodes close their environments; then make sure.
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        for child in &mut self.children {
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `n` TCP ports on 127.0.0.1 that were free a moment ago.
fn free_tcp_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let listeners = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free TCP ports")?;
    Ok(listeners
        .iter()
        .map(std::net::TcpListener::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?)
}

/// A token for the bench's writer, unguessable by other users of the machine for the
/// cluster's short life (std's per-process random hash keys, twice).
fn writer_token() -> String {
    use std::hash::BuildHasher;
    let draw = || std::collections::hash_map::RandomState::new().hash_one(std::process::id());
    format!("{:016x}{:016x}", draw(), draw())
}

/// `n` UDP ports on 127.0.0.1 that were free a moment ago.
fn free_udp_addrs(n: usize) -> anyhow::Result<Vec<SocketAddr>> {
    let sockets = (0..n)
        .map(|_| UdpSocket::bind("127.0.0.1:0"))
        .collect::<std::io::Result<Vec<_>>>()
        .context("finding free UDP ports")?;
    Ok(sockets
        .iter()
        .map(UdpSocket::local_addr)
        .collect::<std::io::Result<Vec<_>>>()?)
}
