//! The `wraft` binary as a user runs it: `wraft dev` then `wraft apply` / `query` /
//! `cluster status` from another process; bad configuration; certificates.

use std::io::{BufRead, BufReader};
use std::net::UdpSocket;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

pub(crate) const WRAFT: &str = env!("CARGO_BIN_EXE_wraft");

pub(crate) fn wraft(cwd: &Path, args: &[&str]) -> Output {
    Command::new(WRAFT)
        .current_dir(cwd)
        .args(args)
        .env("WRAFT_LOG", "error")
        .output()
        .expect("run wraft")
}

pub(crate) fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Fixed ports handed out by this test process, below Linux's ephemeral range (32768 and
/// up) so no socket bound to port 0 (a restarted in-process node keeps its ephemeral port)
/// can be taken by a fixed-port child, and never twice within one process.
static NEXT_PORT: std::sync::atomic::AtomicU16 = std::sync::atomic::AtomicU16::new(0);

/// `n` consecutive ports free for `bind` on 127.0.0.1, in 10000..32000.
fn free_run(n: u16, bind: impl Fn(u16) -> bool) -> u16 {
    use std::sync::atomic::Ordering;
    let _ = NEXT_PORT.compare_exchange(
        0,
        10_000 + (std::process::id() % 3_000) as u16 * 5,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..2_000 {
        let mut base = NEXT_PORT.fetch_add(n, Ordering::SeqCst);
        if base > 32_000 - n {
            base = 10_000 + base % 5;
            NEXT_PORT.store(base + n, Ordering::SeqCst);
        }
        if (0..n).all(|i| bind(base + i)) {
            return base;
        }
    }
    panic!("no {n} consecutive free ports on 127.0.0.1 in 10000..32000");
}

/// Three consecutive free UDP ports on 127.0.0.1 (a 3-node cluster).
pub(crate) fn free_ports() -> u16 {
    free_udp_ports(3)
}

/// `n` consecutive free UDP ports on 127.0.0.1.
pub(crate) fn free_udp_ports(n: u16) -> u16 {
    free_run(n, |p| UdpSocket::bind(("127.0.0.1", p)).is_ok())
}

/// Three consecutive free TCP ports on 127.0.0.1.
fn free_tcp_ports() -> u16 {
    free_tcp_run(3)
}

/// `n` consecutive free TCP ports on 127.0.0.1.
pub(crate) fn free_tcp_run(n: u16) -> u16 {
    free_run(n, |p| std::net::TcpListener::bind(("127.0.0.1", p)).is_ok())
}

#[test]
fn wraft_dev_serves_apply_and_query_to_a_second_process() {
    let dir = tempfile::tempdir().expect("tmp");
    let port = free_ports();
    let http_port = free_tcp_ports();
    let mut dev = Command::new(WRAFT)
        .current_dir(dir.path())
        .args([
            "dev",
            "--port",
            &port.to_string(),
            "--http-port",
            &http_port.to_string(),
        ])
        .env("WRAFT_LOG", "error")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start wraft dev");
    let stdout = dev.stdout.take().expect("stdout");
    let started = Instant::now();
    let mut banner = String::new();
    for line in BufReader::new(stdout).lines() {
        let line = line.expect("line");
        banner.push_str(&line);
        banner.push('\n');
        if line == "ready" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "wraft dev did not get ready:\n{banner}"
        );
    }
    assert!(banner.contains("created FSM \"sequencer\""), "{banner}");
    let nodes = format!("127.0.0.1:{},127.0.0.1:{}", port + 1, port + 2);
    let h = |b: &str| format!("0x{}", b.repeat(32));
    let commit = format!(
        r#"{{"Commit":{{"number":7,"hash":"{}","parent_hash":"{}","payload":"0x0102"}}}}"#,
        h("ab"),
        h("00")
    );
    // The defaults point at wraft-data/dev/certs in the working directory, as after `make dev`.
    let out = wraft(
        dir.path(),
        &["apply", "sequencer", &commit, "--nodes", &nodes],
    );
    assert!(out.status.success(), "apply failed: {}", text(&out.stderr));
    assert_eq!(text(&out.stdout).trim(), r#"{"number":7,"changed":true}"#);
    let out = wraft(
        dir.path(),
        &["query", "sequencer", r#""Latest""#, "--nodes", &nodes],
    );
    assert!(out.status.success(), "query failed: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains(r#""number":7"#),
        "{}",
        text(&out.stdout)
    );
    // A profile holds the connection settings: from another directory, with no flag, the
    // profile's reader certificate is the one used; a flag still wins over the profile.
    let elsewhere = tempfile::tempdir().expect("tmp");
    let certs = dir.path().join("wraft-data/dev/certs");
    let profiles = elsewhere.path().join("profiles.toml");
    std::fs::write(
        &profiles,
        format!(
            "[lab]\nnodes = [\"127.0.0.1:{}\"]\nca = {:?}\ncert = {:?}\nkey = {:?}\ntimeout = \"20s\"\n",
            port + 1,
            certs.join("ca.pem"),
            certs.join("reader.pem"),
            certs.join("reader.key"),
        ),
    )
    .expect("profiles");
    let with_profile = |args: &[&str]| {
        Command::new(WRAFT)
            .current_dir(elsewhere.path())
            .args(args)
            .env("WRAFT_PROFILES", &profiles)
            .env_remove("WRAFT_NODES")
            .env_remove("WRAFT_CLIENT_CA")
            .env_remove("WRAFT_CLIENT_CERT")
            .env_remove("WRAFT_CLIENT_KEY")
            .env_remove("WRAFT_TIMEOUT")
            .env("WRAFT_LOG", "error")
            .output()
            .expect("run wraft")
    };
    let out = with_profile(&["query", "--profile", "lab", "sequencer", r#""Latest""#]);
    assert!(
        out.status.success(),
        "query by profile: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stdout).contains(r#""number":7"#),
        "{}",
        text(&out.stdout)
    );
    let out = with_profile(&["apply", "--profile", "lab", "sequencer", &commit]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a reader's write: {}",
        text(&out.stderr)
    );
    let out = with_profile(&[
        "query",
        "--profile",
        "lab",
        "--nodes",
        "127.0.0.1:1",
        "--timeout",
        "1s",
        "sequencer",
        r#""Latest""#,
    ]);
    assert_eq!(
        out.status.code(),
        Some(5),
        "flags over the profile: {}",
        text(&out.stderr)
    );
    let out = with_profile(&["query", "--profile", "prod", "sequencer", r#""Latest""#]);
    assert!(
        !out.status.success() && text(&out.stderr).contains("no profile \"prod\""),
        "{}",
        text(&out.stderr)
    );
    // The HTTP port, with the tokens `wraft dev` wrote.
    let tokens =
        std::fs::read_to_string(dir.path().join("wraft-data/dev/http-tokens")).expect("dev tokens");
    let reader = tokens
        .lines()
        .find_map(|l| l.strip_prefix("reader:"))
        .expect("a reader token");
    let mut s = std::net::TcpStream::connect(("127.0.0.1", http_port)).expect("http port");
    std::io::Write::write_all(
        &mut s,
        format!("GET /v1/status HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {reader}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .expect("request");
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut s, &mut answer).expect("response");
    assert!(
        answer.starts_with("HTTP/1.1 200") && answer.contains("\"term\""),
        "{answer}"
    );
    let out = wraft(dir.path(), &["cluster", "status", "--nodes", &nodes]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout)
            .lines()
            .filter(|l| l.contains("voter"))
            .count(),
        3,
        "{}",
        text(&out.stdout)
    );
    let out = wraft(
        dir.path(),
        &["cluster", "status", "--json", "--nodes", &nodes],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).expect("status JSON");
    let members = status["nodes"].as_array().expect("nodes");
    assert_eq!(members.len(), 3, "{status}");
    assert!(status["leader"].as_u64().is_some(), "{status}");
    assert!(members.iter().all(|n| n.get("lag").is_some()), "{status}");
    // Many commands as one atomic Batch entry, across two FSMs.
    let batch = format!(
        r#"[{{"fsm":"manifest","command":{{"RegisterFile":{{"path":"p1","database":"db","measurement":"m","partition_time_ms":0,"size_bytes":5,"checksum":"c","tier":"Hot"}}}}}},
            {{"fsm":"manifest","command":{{"DeleteFile":{{"path":"nope"}}}}}},
            {{"fsm":"sequencer","command":{}}}]"#,
        commit
            .replace("\"number\":7", "\"number\":8")
            .replace("0x0102", "0x03")
    );
    std::fs::write(dir.path().join("batch.json"), batch).expect("write batch");
    let out = wraft(
        dir.path(),
        &["apply", "--batch", "batch.json", "--nodes", &nodes],
    );
    assert!(out.status.success(), "batch failed: {}", text(&out.stderr));
    let outputs = text(&out.stdout);
    assert!(
        outputs.contains(r#""registered":1"#) && outputs.contains(r#""number":8"#),
        "{outputs}"
    );
    // A batch with one failing command applies none of it.
    // (block 1 is older than the stored block 8: the FSM rejects it at apply).
    let stale = format!(
        r#"{{"Commit":{{"number":1,"hash":"{}","parent_hash":"{}","payload":"0x"}}}}"#,
        h("00"),
        h("00")
    );
    std::fs::write(
        dir.path().join("bad.json"),
        format!(r#"[{{"fsm":"manifest","command":{{"DeleteFile":{{"path":"p1"}}}}}},{{"fsm":"sequencer","command":{stale}}}]"#),
    )
    .expect("write");
    let out = wraft(
        dir.path(),
        &["apply", "--batch", "bad.json", "--nodes", &nodes],
    );
    assert_eq!(
        out.status.code(),
        Some(3),
        "a batch the FSM refuses exits 3 (refused): {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("batch command 1 failed"),
        "{}",
        text(&out.stderr)
    );
    let out = wraft(
        dir.path(),
        &[
            "query",
            "manifest",
            r#"{"File":{"path":"p1"}}"#,
            "--nodes",
            &nodes,
        ],
    );
    assert!(
        text(&out.stdout).contains("p1"),
        "the failed batch deleted p1: {}",
        text(&out.stdout)
    );
    // Module lifecycle from the command line: deploy (streamed), list, upgrade, drop.
    std::fs::write(
        dir.path().join("next.wasm"),
        wraft_fsm_artifacts::PROBE_NEXT,
    )
    .expect("write");
    std::fs::write(dir.path().join("probe.wasm"), wraft_fsm_artifacts::PROBE).expect("write");
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--nodes", nodes.as_str()]);
        let out = wraft(dir.path(), &all);
        assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
        text(&out.stdout).trim().to_string()
    };
    let v3 = run(&["module", "deploy", "probe.wasm"]);
    let v4 = run(&["module", "deploy", "next.wasm"]);
    run(&["fsm", "create", "pp", "--module", &v3]);
    assert!(run(&["fsm", "upgrade", "pp", "--module", &v4]).contains("upgraded pp"));
    let listed = run(&["module", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with(&v4) && l.ends_with("[pp]")),
        "{listed}"
    );
    let modules: serde_json::Value =
        serde_json::from_str(&run(&["module", "list", "-o", "json"])).expect("modules JSON");
    assert!(
        modules
            .as_array()
            .expect("an array")
            .iter()
            .any(|m| m["module_id"] == v4.as_str() && m["fsms"] == serde_json::json!(["pp"])),
        "{modules}"
    );
    let fsms: serde_json::Value =
        serde_json::from_str(&run(&["fsm", "list", "--output=json"])).expect("fsms JSON");
    assert!(
        fsms.as_array()
            .expect("an array")
            .iter()
            .any(|f| f["name"] == "pp" && f["module_id"] == v4.as_str()),
        "{fsms}"
    );
    run(&["module", "drop", &v3]);
    run(&["fsm", "drop", "pp"]);
    assert!(!run(&["fsm", "list"]).contains("pp"));
    // A reader certificate may query but not write.
    let reader = [
        "--client-cert",
        "wraft-data/dev/certs/reader.pem",
        "--client-key",
        "wraft-data/dev/certs/reader.key",
    ];
    let mut args = vec![
        "apply",
        "sequencer",
        commit.as_str(),
        "--nodes",
        nodes.as_str(),
    ];
    args.extend(reader);
    let out = wraft(dir.path(), &args);
    assert_eq!(
        out.status.code(),
        Some(3),
        "a write the role does not allow exits 3 (refused): {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("needs the Writer role"),
        "{}",
        text(&out.stderr)
    );
    // No node at the address: 5 (unavailable) once --timeout runs out; a usage error: 2.
    let nobody = format!("127.0.0.1:{}", free_udp_ports(1));
    let out = wraft(
        dir.path(),
        &[
            "query",
            "sequencer",
            r#""Latest""#,
            "--nodes",
            &nobody,
            "--timeout",
            "1s",
        ],
    );
    assert_eq!(out.status.code(), Some(5), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("no node reachable"),
        "{}",
        text(&out.stderr)
    );
    let out = wraft(dir.path(), &["apply", "sequencer"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    let out = wraft(
        dir.path(),
        &["query", "sequencer", "1", "--timeout", "soon"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    // --json on the other state-printing commands: a data directory (safe while the node
    // runs) and a hot backup.
    let out = wraft(
        dir.path(),
        &[
            "init",
            "info",
            "--json",
            "--state-dir",
            "wraft-data/dev/node-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).expect("info JSON");
    assert!(info["raft"]["last"]["index"].as_u64() > Some(0), "{info}");
    assert_eq!(
        info["raft"]["membership"]["voters"]
            .as_array()
            .map(Vec::len),
        Some(3),
        "{info}"
    );
    let fsm_names: Vec<&str> = info["state"]["fsms"]
        .as_array()
        .expect("fsms")
        .iter()
        .filter_map(|f| f["name"].as_str())
        .collect();
    assert!(fsm_names.contains(&"sequencer"), "{info}");
    let out = wraft(
        dir.path(),
        &["backup", "--json", "--out", "backup", "--nodes", &nodes],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let manifest: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("backup manifest JSON");
    assert!(manifest["applied_index"].as_u64() > Some(0), "{manifest}");
    assert_eq!(
        manifest["file_sha256"].as_str().map(str::len),
        Some(64),
        "{manifest}"
    );
    // SIGTERM stops it cleanly.
    let kill = Command::new("kill")
        .args(["-TERM", &dev.id().to_string()])
        .status()
        .expect("kill");
    assert!(kill.success());
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = dev.try_wait().expect("wait") {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "wraft dev did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "wraft dev exited with {status}");
    // A stopped node's directory verifies, in JSON too.
    let out = wraft(
        dir.path(),
        &[
            "init",
            "verify",
            "--json",
            "--state-dir",
            "wraft-data/dev/node-1",
        ],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let verified: serde_json::Value = serde_json::from_slice(&out.stdout).expect("verify JSON");
    assert_eq!(verified["ok"], true, "{verified}");
    assert!(
        verified["state"]["fsms"]
            .as_array()
            .expect("fsms")
            .iter()
            .all(|f| f["state_hash"].as_str().map(str::len) == Some(64)),
        "{verified}"
    );
}

#[test]
fn serve_explains_a_bad_configuration() {
    let dir = tempfile::tempdir().expect("tmp");
    std::fs::write(
        dir.path().join("bad.toml"),
        "id = 1\nlisten = \"127.0.0.1:7001\"\nlisten_port = 3\n",
    )
    .expect("write");
    let out = wraft(dir.path(), &["serve", "--config", "bad.toml"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("invalid config file") && err.contains("listen_port"),
        "{err}"
    );
    let out = wraft(dir.path(), &["serve", "--listen", "127.0.0.1:7001"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("missing --id"),
        "{}",
        text(&out.stderr)
    );
    let out = wraft(dir.path(), &["serve", "--snapshot-entries", "0"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--snapshot-entries must be at least 1"),
        "{}",
        text(&out.stderr)
    );
    // More guest calls than the wasm instance pool can hold beside the apply.
    let out = wraft(dir.path(), &["serve", "--guest-threads", "40"]);
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--guest-threads 40: give 1 to 24"),
        "{}",
        text(&out.stderr)
    );
    // An entry level this build does not read: refused before the node opens anything.
    let newest = wraft_core::ENTRY_LEVEL;
    for level in [0, newest + 1] {
        let out = wraft(dir.path(), &["serve", "--entry-level", &level.to_string()]);
        assert!(!out.status.success());
        let err = text(&out.stderr);
        assert!(
            err.contains(&format!(
                "--entry-level {level} is not a level this build reads: give 1 to {newest}"
            )),
            "{err}"
        );
    }
}

#[test]
fn cert_writes_a_ca_and_refuses_to_overwrite_it() {
    let dir = tempfile::tempdir().expect("tmp");
    let out = wraft(dir.path(), &["cert", "--out", "certs", "--nodes", "1,2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "ca.pem",
        "node-1.pem",
        "node-1.key",
        "node-2.pem",
        "admin.pem",
        "writer.key",
        "reader.pem",
    ] {
        assert!(dir.path().join("certs").join(f).exists(), "{f} missing");
    }
    let ca = std::fs::read(dir.path().join("certs/ca.pem")).expect("ca");
    let again = wraft(dir.path(), &["cert", "--out", "certs"]);
    assert!(!again.status.success());
    assert!(
        text(&again.stderr).contains("--force"),
        "{}",
        text(&again.stderr)
    );
    assert_eq!(
        std::fs::read(dir.path().join("certs/ca.pem")).expect("ca"),
        ca,
        "the CA was not replaced"
    );
}

/// Shell completions and man pages come from the same clap definitions as the commands: a
/// new flag shows up in both.
#[test]
fn completions_and_man_pages_come_from_the_command_definitions() {
    let dir = tempfile::tempdir().expect("tmp");
    for shell in ["bash", "zsh", "fish"] {
        let out = wraft(dir.path(), &["--log-format", "json", "completions", shell]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(
            script.contains("bench") && script.contains("stages"),
            "{shell}'s script lacks `wraft bench --stages`:\n{script}"
        );
    }
    let pages = dir.path().join("man");
    let out = wraft(
        dir.path(),
        &["man", "--dir", pages.to_str().expect("utf-8")],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let top = std::fs::read_to_string(pages.join("wraft.1")).expect("wraft.1");
    assert!(top.contains(".TH wraft"), "{top}");
    let bench = std::fs::read_to_string(pages.join("wraft-bench.1")).expect("wraft-bench.1");
    assert!(
        bench.contains("stages") && bench.contains("http"),
        "{bench}"
    );
    let out = wraft(dir.path(), &["--log-format", "yaml", "completions", "bash"]);
    assert!(!out.status.success(), "an unknown log format is refused");
}

/// A node of `wraft dev` whose raft stops on a fatal error (here its disk fills: the fault
/// library makes every write that grows a file fail) ends the run with the reason and a
/// failure status, as `wraft serve` does, instead of leaving a cluster that quietly serves
/// on fewer nodes.
#[test]
fn wraft_dev_stops_with_the_reason_when_a_node_hits_a_fatal_error() {
    let dir = tempfile::tempdir().expect("tmp");
    let data = dir.path().join("wraft-data/dev");
    std::fs::create_dir_all(&data).expect("data dir");
    let journal = dir.path().join("unsynced");
    std::fs::create_dir_all(&journal).expect("journal dir");
    let full = dir.path().join("disk-full");
    let root = data.canonicalize().expect("data dir");
    let port = free_ports();
    let http_port = free_tcp_ports();
    let mut dev = KilledOnDrop(
        Command::new(WRAFT)
            .current_dir(dir.path())
            .args([
                "dev",
                "--port",
                &port.to_string(),
                "--http-port",
                &http_port.to_string(),
            ])
            .envs(wraft_faults::unsynced::env(&root, &journal))
            .env("WRAFT_DISK_FULL", &full)
            .env("WRAFT_LOG", "error")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wraft dev"),
    );
    let stdout = dev.0.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let started = Instant::now();
    for line in lines.by_ref() {
        if line.expect("line") == "ready" {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "wraft dev did not get ready"
        );
    }
    // Drained, so the banner's pipe never fills.
    std::thread::spawn(move || lines.for_each(drop));
    std::fs::write(&full, b"").expect("fill the disk");
    let nodes = format!("127.0.0.1:{},127.0.0.1:{}", port, port + 1);
    // 32 KiB payloads: the raft log must grow (a write into pages it frees is no growth).
    let payload = "ab".repeat(32 << 10);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = dev.0.try_wait().expect("wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "wraft dev kept running 60 s after its disk filled"
        );
        let n = started.elapsed().as_micros();
        let commit = format!(
            r#"{{"Commit":{{"number":{n},"hash":"0x{}","parent_hash":"0x{}","payload":"0x{payload}"}}}}"#,
            "cd".repeat(32),
            "ab".repeat(32)
        );
        let _ = wraft(
            dir.path(),
            &[
                "apply",
                "sequencer",
                &commit,
                "--nodes",
                &nodes,
                "--timeout",
                "2s",
            ],
        );
    };
    let mut stderr = String::new();
    std::io::Read::read_to_string(&mut dev.0.stderr.take().expect("stderr"), &mut stderr)
        .expect("stderr");
    assert!(!status.success(), "{status}: {stderr}");
    assert!(stderr.contains("raft hit a fatal error"), "{stderr}");
}

/// A child process that a failing test does not leave running.
struct KilledOnDrop(std::process::Child);

impl Drop for KilledOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
