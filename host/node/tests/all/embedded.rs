//! A microcontroller in the quorum: two `wraft serve` processes and the Cortex-M firmware
//! (targets/cortex-m) in `qemu-system-arm` (mps2-an386) form a three-voter cluster. Each
//! Linux node is wired to its own UART of the microcontroller (QEMU exposes both as TCP
//! sockets); the firmware keeps its state in a semihosted flash file.
//!
//! The cluster's voter key is provisioned into the firmware's flash image before its first
//! start (firmware without one refuses to start). Writes commit; the leader is killed and the
//! other Linux node, elected with the microcontroller's vote, commits with it as the only
//! other voter; forged frames on the idle UART (a call with a higher vote and no valid tag, a
//! hello under another key) change nothing and are counted as rejected; the firmware is
//! restarted and comes back with the same term and vote, a new session is opened, and it
//! keeps acknowledging; the killed node returns and both Linux nodes end with the same state.
//!
//! Needs the firmware build and qemu-system-arm: `make embedded-test` sets
//! `WRAFT_VOTER_FIRMWARE`.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use wraft_api::{ClusterStatus, Consistency, Payload};
use wraft_client::Client;
use wraft_core::{FsmLimits, FsmName};
use wraft_faults::process::{NodeProcess, NodeSpec};

use crate::cli::{WRAFT, free_tcp_run, free_udp_ports, text};
use crate::processes::{certs_for, identity};

/// The firmware under QEMU, its UARTs on two TCP ports, its flash a file in `dir`.
struct Mcu {
    firmware: PathBuf,
    dir: PathBuf,
    uarts: [u16; 2],
    child: Option<Child>,
}

impl Mcu {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("qemu.log"))
            .expect("qemu log");
        let serial = |port: u16| format!("tcp:127.0.0.1:{port},server=on,wait=off,nodelay=on");
        let child = Command::new("qemu-system-arm")
            .args(["-M", "mps2-an386", "-display", "none", "-monitor", "none"])
            .args(["-semihosting-config", "enable=on,target=native"])
            .arg("-kernel")
            .arg(&self.firmware)
            .args(["-serial", &serial(self.uarts[0])])
            .args(["-serial", &serial(self.uarts[1])])
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start qemu-system-arm (make embedded-setup installs it)");
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("qemu.log")).unwrap_or_default()
    }

    /// Waits for the firmware's `boot N` banner.
    fn wait_boot(&self, n: u32) -> String {
        let want = format!("wraft-voter: boot {n} ");
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Some(line) = self.log().lines().find(|l| l.starts_with(&want)) {
                return line.to_string();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no `{want}` banner from the firmware:\n{}", self.log());
    }

    /// Waits for QEMU to exit (the firmware stopped itself).
    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = self.child.as_mut().expect("started");
        loop {
            if let Some(status) = child.try_wait().expect("wait") {
                self.child = None;
                return status;
            }
            assert!(Instant::now() < deadline, "the firmware kept running");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `wraft voter status` on the UART of a Linux node that is down.
    fn status(&self, uart: usize, key: &Path) -> VoterStatus {
        let link = format!("tcp:127.0.0.1:{}", self.uarts[uart]);
        let out = Command::new(WRAFT)
            .args(["voter", "status", "--link", &link, "--key"])
            .arg(key)
            .env("WRAFT_LOG", "error")
            .output()
            .expect("run wraft voter status");
        let report = text(&out.stdout);
        assert!(
            out.status.success(),
            "wraft voter status: {report}{}",
            text(&out.stderr)
        );
        let field = |k: &str| {
            report
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}: ")))
                .unwrap_or_else(|| panic!("no {k} in {report}"))
                .to_string()
        };
        let status = VoterStatus {
            vote: field("vote"),
            last: field("last"),
            boots: field("boots").parse().expect("boots"),
            rejected: field("rejected").parse().expect("rejected"),
        };
        // The same facts as one JSON object.
        let out = Command::new(WRAFT)
            .args(["voter", "status", "--json", "--link", &link, "--key"])
            .arg(key)
            .env("WRAFT_LOG", "error")
            .output()
            .expect("run wraft voter status --json");
        assert!(out.status.success(), "{}", text(&out.stderr));
        let json: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
        assert_eq!(json["boots"], status.boots, "{json}");
        assert_eq!(json["rejected"], status.rejected, "{json}");
        assert_eq!(
            json["vote"]["committed"],
            status.vote.ends_with(" committed"),
            "{json}"
        );
        status
    }
}

impl Drop for Mcu {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Debug, PartialEq)]
struct VoterStatus {
    vote: String,
    last: String,
    boots: u32,
    rejected: u32,
}

/// Runs `wraft` with `args`; panics with its output if it fails.
fn wraft(args: &[&str]) {
    let out = Command::new(WRAFT).args(args).output().expect("run wraft");
    assert!(
        out.status.success(),
        "wraft {args:?}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// Sends forgeries to the voter on a UART no node holds: a call carrying an append with a
/// higher committed vote under a tag of zeros (it would depose the leader if taken), and a
/// hello sealed with another cluster key. The voter answers neither.
fn forge_on(uart: u16, vote: wraft_core::voter::Vote) {
    use std::io::{Read as _, Write as _};
    use wraft_core::link::{self, auth};
    use wraft_core::voter::{Envelope, LeaderId, Request, Vote};
    let higher = Vote {
        leader: LeaderId {
            term: vote.leader.term + 5,
            node: vote.leader.node,
        },
        committed: true,
    };
    let call = auth::ToVoter::Call(Envelope {
        seq: u32::MAX,
        body: Request::Append {
            vote: higher,
            prev: None,
            runs: Vec::new(),
            commit: None,
            lease_ms: 60_000,
        },
    });
    let mut body = postcard::to_allocvec(&call).expect("encode");
    body.extend_from_slice(&[0; 16]);
    let mut wire = Vec::new();
    link::frame(&body, &mut wire);
    let stranger = auth::ClusterKey::from_bytes([0x66; 32]);
    auth::Handshake::new(&stranger, [0x77; 16]).hello(&mut wire);
    let mut uart = std::net::TcpStream::connect(("127.0.0.1", uart)).expect("connect");
    uart.write_all(&wire).expect("forgeries");
    uart.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let mut buf = [0u8; 64];
    match uart.read(&mut buf) {
        Ok(0) => {}
        Ok(n) => panic!("the voter answered a forgery: {:?}", &buf[..n]),
        Err(e) => assert!(
            matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "{e}"
        ),
    }
}

fn firmware() -> PathBuf {
    let path = std::env::var_os("WRAFT_VOTER_FIRMWARE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("WRAFT_VOTER_FIRMWARE is not set: `make embedded-test` builds the firmware")
        });
    assert!(path.exists(), "{}: no such file", path.display());
    path
}

fn sequencer() -> FsmName {
    FsmName::new("sequencer").expect("name")
}

fn block(n: u64) -> String {
    let hash = |n: u64| format!("0x{n:064x}");
    format!(
        r#"{{"Commit":{{"number":{n},"hash":"{}","parent_hash":"{}","payload":"0x{:02x}"}}}}"#,
        hash(n),
        hash(n - 1),
        n % 256
    )
}

/// The latest block number a node holds (read locally, no leader needed).
async fn latest(client: &Client) -> u64 {
    let out = client
        .query_json(&sequencer(), r#""Latest""#, Consistency::Stale)
        .await
        .expect("query");
    let Payload::Json(json) = out else {
        panic!("not JSON: {out:?}")
    };
    let v: serde_json::Value = serde_json::from_str(&json).expect("json");
    v["number"].as_u64().unwrap_or(0)
}

/// Commits blocks `from..=to` one after another; prints the mean commit latency.
async fn commit_blocks(writer: &Client, from: u64, to: u64, quorum: &str) {
    let start = Instant::now();
    for n in from..=to {
        writer
            .apply_json(&sequencer(), &block(n))
            .await
            .unwrap_or_else(|e| panic!("block {n}: {e}"));
    }
    let each = start.elapsed() / (to - from + 1) as u32;
    eprintln!("blocks {from}..={to} with {quorum}: {each:?} per commit");
}

async fn status(node: &Client) -> ClusterStatus {
    node.status().await.expect("status")
}

/// Waits until `check` holds for the status of `node`.
async fn wait_for(
    node: &Client,
    what: &str,
    check: impl Fn(&ClusterStatus) -> bool,
) -> ClusterStatus {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(s) = node.status().await
            && check(&s)
        {
            return s;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[test]
#[ignore = "needs the Cortex-M firmware and qemu-system-arm: make embedded-test"]
fn two_linux_nodes_and_a_cortex_m_voter_keep_committing_without_either_linux_node() {
    let dir = tempfile::tempdir().expect("tmp");
    let certs = certs_for(dir.path(), &[1, 2]).expect("certs");
    let udp = free_udp_ports(2);
    let tcp = free_tcp_run(2);
    let listen = [udp, udp + 1].map(|p| std::net::SocketAddr::from(([127, 0, 0, 1], p)));
    // Without a key on its flash the firmware refuses to start.
    let blank_dir = dir.path().join("blank");
    std::fs::create_dir_all(&blank_dir).expect("blank dir");
    let mut blank = Mcu {
        firmware: firmware(),
        dir: blank_dir,
        uarts: [tcp, tcp + 1],
        child: None,
    };
    blank.start();
    assert!(!blank.wait_exit().success(), "{}", blank.log());
    assert!(
        blank.log().contains("no cluster key on flash"),
        "{}",
        blank.log()
    );

    // The cluster's key, provisioned into the flash image before the firmware first starts.
    let key = dir.path().join("voter.key");
    let mcu_dir = dir.path().join("mcu");
    std::fs::create_dir_all(&mcu_dir).expect("mcu dir");
    let image = mcu_dir.join("wraft-voter.flash");
    let path = |p: &Path| p.to_str().expect("a UTF-8 temp path").to_string();
    wraft(&["voter", "keygen", "--out", &path(&key)]);
    wraft(&[
        "voter",
        "provision",
        "--key",
        &path(&key),
        "--flash-image",
        &path(&image),
    ]);
    let mut mcu = Mcu {
        firmware: firmware(),
        dir: mcu_dir,
        uarts: [tcp, tcp + 1],
        child: None,
    };
    mcu.start();
    let banner = mcu.wait_boot(1);
    assert!(banner.contains("vote T0-N0 last None"), "{banner}");

    let members = format!("1={},2={},3=voter:mcu", listen[0], listen[1]);
    let mut nodes: Vec<NodeProcess> = (0..2)
        .map(|i| {
            let id = i as u64 + 1;
            let mut n = NodeProcess::new(
                Path::new(WRAFT),
                &certs,
                dir.path().join(format!("node-{id}.log")),
                NodeSpec {
                    id,
                    listen: listen[i],
                    data_dir: dir.path().join(format!("node-{id}")),
                    initial_members: (id == 1).then(|| members.clone()),
                    unsynced_journal: None,
                },
            );
            // No checkpoints: they would keep the log moving while the test waits for the
            // two Linux nodes to hold the same entries.
            n.tuning = ["--checkpoint-interval", "0"].map(String::from).to_vec();
            n.tuning.push("--voter-link".into());
            n.tuning.push(format!("3=tcp:127.0.0.1:{}", mcu.uarts[i]));
            n.tuning.push("--voter-key".into());
            n.tuning.push(key.display().to_string());
            n
        })
        .collect();
    for n in &mut nodes {
        n.start().expect("start");
    }
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let addrs: Vec<String> = listen.iter().map(ToString::to_string).collect();
    let client = |addrs: Vec<String>, who: &str| {
        Client::new(addrs, &identity(&certs, who))
            .expect("client")
            .with_patience(Duration::from_secs(60))
    };
    rt.block_on(async {
        let admin = client(addrs.clone(), "admin");
        let module = wraft_fsm_artifacts::LATEST_PAYLOAD;
        crate::common::deploy_and_create(&admin, sequencer(), module, FsmLimits::default()).await;
        let writer = client(addrs.clone(), "writer");
        commit_blocks(&writer, 1, 20, "two Linux nodes and the voter").await;
        let each: Vec<Client> = addrs
            .iter()
            .map(|a| client(vec![a.clone()], "reader"))
            .collect();

        // The three voters agree; wait until both Linux nodes hold the same log, so the
        // microcontroller has nothing the survivor lacks, then kill the leader.
        let s = wait_for(&each[0], "a leader", |s| s.leader.is_some()).await;
        let leader = s.leader.expect("leader") as usize;
        let voter_row = s
            .nodes
            .iter()
            .find(|n| n.id == 3)
            .expect("voter 3 in membership");
        assert_eq!(voter_row.membership, "voter");
        let lead_last = status(&each[leader - 1]).await.last_log;
        let survivor = 3 - leader;
        wait_for(&each[survivor - 1], "the follower to catch up", |s| {
            s.last_log == lead_last && s.applied == lead_last
        })
        .await;
        nodes[leader - 1].kill();
        eprintln!("killed leader {leader}; {survivor} must win with the microcontroller's vote");

        let elected = Instant::now();
        let s = wait_for(&each[survivor - 1], "the survivor to lead", |s| {
            s.leader == Some(survivor as u64)
        })
        .await;
        eprintln!(
            "node {survivor} leads in term {} after {:?}",
            s.term,
            elected.elapsed()
        );
        let writer = client(vec![addrs[survivor - 1].clone()], "writer");
        commit_blocks(&writer, 21, 40, "one Linux node and the voter").await;
        assert_eq!(latest(&each[survivor - 1]).await, 40);
        // Line noise on the idle UART (the dead leader's) leaves the voter serving.
        {
            use std::io::Write as _;
            let mut noise = std::net::TcpStream::connect(("127.0.0.1", mcu.uarts[leader - 1]))
                .expect("connect to the idle UART");
            let bytes: Vec<u8> = (0u32..4096)
                .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
                .collect();
            noise.write_all(&bytes).expect("noise");
        }
        // Forgeries on the same UART: refused, unanswered, and the vote stays the leader's.
        let leader_vote = wraft_core::voter::Vote {
            leader: wraft_core::voter::LeaderId {
                term: s.term,
                node: survivor as u64,
            },
            committed: true,
        };
        forge_on(mcu.uarts[leader - 1], leader_vote);
        commit_blocks(
            &writer,
            41,
            45,
            "one Linux node and the voter, after line noise",
        )
        .await;
        // Only the microcontroller can have acknowledged these: it holds their ids.
        let before = mcu.status(leader - 1, &key);
        assert_eq!(
            before.vote,
            format!("T{}-N{survivor} committed", s.term),
            "{before:?} vs {s:?}"
        );
        assert!(before.rejected >= 2, "forgeries counted: {before:?}");

        // Restart the firmware: same term and vote, from flash.
        mcu.kill();
        mcu.start();
        let banner = mcu.wait_boot(2);
        assert!(
            banner.contains(&format!("vote T{}-N{survivor} (committed)", s.term)),
            "{banner}"
        );
        let after = mcu.status(leader - 1, &key);
        assert_eq!((&after.vote, &after.last), (&before.vote, &before.last));
        assert_eq!(after.boots, 2);
        // And it still makes the majority.
        commit_blocks(&writer, 46, 50, "one Linux node and the restarted voter").await;
        assert_eq!(latest(&each[survivor - 1]).await, 50);
        let voter_now = mcu.status(leader - 1, &key);
        assert_ne!(
            voter_now.last, before.last,
            "the voter acknowledged the new blocks"
        );
    });

    // The killed node returns and catches up: both Linux nodes hold the same state.
    let killed = nodes
        .iter()
        .position(|n| n.pid().is_none())
        .expect("a killed node");
    nodes[killed].start().expect("restart");
    rt.block_on(async {
        let a = client(vec![addrs[0].clone()], "reader");
        let b = client(vec![addrs[1].clone()], "reader");
        let target = status(&b).await.applied.max(status(&a).await.applied);
        for c in [&a, &b] {
            wait_for(c, "catch-up", |s| s.applied >= target).await;
            assert_eq!(latest(c).await, 50);
        }
    });
    for n in &mut nodes {
        assert!(
            n.stop(),
            "node {} did not stop cleanly:\n{}",
            n.spec.id,
            n.log()
        );
        assert!(!n.log().contains("panicked"), "{}", n.log());
    }
    assert!(!mcu.log().contains("panic"), "{}", mcu.log());
}
