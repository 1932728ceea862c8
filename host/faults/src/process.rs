//! The node processes of a fault run: `wraft serve` children that can be killed (SIGKILL),
//! restarted on the same data directory, paused (SIGSTOP) and resumed (SIGCONT), or lose
//! power (SIGKILL, then every write it had not synced is undone: see [`crate::unsynced`]),
//! or run out of disk (files may not grow: see [`crate::unsynced`]).
//! Nodes snapshot every 200 entries and keep 50 behind a snapshot, so kills land during
//! snapshots and lagging followers catch up by installing one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::proxy::NodeId;
use crate::unsynced::Survival;

/// How to start node `id`.
#[derive(Debug, Clone)]
pub struct NodeSpec {
    /// Its id.
    pub id: NodeId,
    /// The address it listens on.
    pub listen: SocketAddr,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// `--initial-members`, for the node that initializes the cluster.
    pub initial_members: Option<String>,
    /// Where the node journals its unsynced writes, so that it can lose power (None: it
    /// runs without the preload library and can only be killed).
    pub unsynced_journal: Option<PathBuf>,
}

/// One node process (or none, while it is down).
#[derive(Debug)]
pub struct NodeProcess {
    /// How it is started.
    pub spec: NodeSpec,
    wraft: PathBuf,
    certs: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Exit statuses of earlier runs that ended by themselves (not killed by the harness).
    pub exits: Vec<String>,
    /// Checkpoint and snapshot flags: checkpoints every 2 s, a snapshot every 200 entries or
    /// 3 s, 50 entries kept behind it. A test may change them before `start`.
    pub tuning: Vec<String>,
    /// A program the binary runs under, with its arguments (an emulator such as
    /// `qemu-aarch64 -L /usr/aarch64-linux-gnu` for a binary of another architecture).
    pub runner: Vec<String>,
    /// The node's log filter (`WRAFT_LOG`): `WRAFT_NODE_LOG` if set, else `warn`. A test may
    /// change it before `start` to watch for a line.
    pub log_filter: String,
}

impl NodeProcess {
    /// A node that is not running yet; `log` collects its output across restarts.
    pub fn new(wraft: &Path, certs: &Path, log: PathBuf, spec: NodeSpec) -> Self {
        Self {
            spec,
            wraft: wraft.to_path_buf(),
            certs: certs.to_path_buf(),
            log,
            child: None,
            paused: false,
            exits: Vec::new(),
            tuning: [
                "--checkpoint-interval",
                "2",
                "--snapshot-entries",
                "200",
                "--snapshot-trailing-entries",
                "50",
                "--snapshot-interval",
                "3",
            ]
            .map(String::from)
            .to_vec(),
            runner: Vec::new(),
            log_filter: std::env::var("WRAFT_NODE_LOG").unwrap_or_else(|_| "warn".into()),
        }
    }

    /// Starts the process (if it is not running).
    pub fn start(&mut self) -> anyhow::Result<()> {
        self.reap();
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .with_context(|| format!("opening {}", self.log.display()))?;
        let id = self.spec.id;
        let mut cmd = command_under(&self.runner, &self.wraft);
        cmd.arg("serve")
            .args(["--id", &id.to_string()])
            .args(["--listen", &self.spec.listen.to_string()])
            .arg("--data-dir")
            .arg(&self.spec.data_dir)
            .arg("--ca")
            .arg(self.certs.join("ca.pem"))
            .arg("--cert")
            .arg(self.certs.join(format!("node-{id}.pem")))
            .arg("--key")
            .arg(self.certs.join(format!("node-{id}.key")))
            .args(&self.tuning)
            .env("WRAFT_LOG", &self.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(m) = &self.spec.initial_members {
            cmd.args(["--initial-members", m]);
        }
        if let Some(journal) = &self.spec.unsynced_journal {
            std::fs::create_dir_all(journal)?;
            std::fs::create_dir_all(&self.spec.data_dir)?;
            let root = self.spec.data_dir.canonicalize()?;
            cmd.envs(crate::unsynced::env(&root, journal));
            cmd.env("WRAFT_DISK_FULL", disk_full_flag(journal));
        }
        self.child = Some(cmd.spawn().context("starting wraft serve")?);
        self.paused = false;
        Ok(())
    }

    /// Records a process that ended by itself (a crash, a refusal to start).
    fn reap(&mut self) {
        if let Some(child) = &mut self.child
            && let Ok(Some(status)) = child.try_wait()
        {
            self.exits.push(status.to_string());
            self.child = None;
        }
    }

    /// Whether the process runs (paused counts as running).
    pub fn running(&mut self) -> bool {
        self.reap();
        self.child.is_some()
    }

    /// SIGKILL: no shutdown, no flush beyond what the node already made durable.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        self.paused = false;
    }

    /// A power loss: SIGKILL, then the writes the node had not synced are undone (all of
    /// them, or all but a torn subset: [`Survival`]). Needs `unsynced_journal`.
    pub fn lose_power(&mut self, survival: Survival) -> anyhow::Result<crate::unsynced::Lost> {
        self.kill();
        let journal = self
            .spec
            .unsynced_journal
            .as_ref()
            .context("a power loss needs the node's unsynced journal")?;
        crate::unsynced::reboot(&self.spec.data_dir)
            .with_context(|| format!("rebooting node {}", self.spec.id))?;
        if !journal.exists() {
            return Ok(crate::unsynced::Lost::default());
        }
        crate::unsynced::lose_unsynced_writes(&self.spec.data_dir, journal, survival)
            .with_context(|| format!("undoing node {}'s unsynced writes", self.spec.id))
    }

    /// The disk fills: from now on a write that would make one of the node's files larger
    /// fails with ENOSPC (overwrites still succeed). The node is expected to stop with a
    /// clear error; [`NodeProcess::free_disk`] ends the fault. Needs `unsynced_journal`.
    pub fn fill_disk(&mut self) -> anyhow::Result<()> {
        let journal = self
            .spec
            .unsynced_journal
            .as_ref()
            .context("a full disk needs the node's preload library (unsynced_journal)")?;
        std::fs::write(disk_full_flag(journal), b"")
            .with_context(|| format!("filling node {}'s disk", self.spec.id))
    }

    /// Room again; a node the full disk stopped is restarted (that exit is expected: it
    /// is not kept in `exits` if the node said why).
    pub fn free_disk(&mut self) -> anyhow::Result<()> {
        if let Some(journal) = &self.spec.unsynced_journal {
            let _ = std::fs::remove_file(disk_full_flag(journal));
        }
        const STOPPING: &str = "make room, then restart the node";
        if self.running() && self.log().contains(STOPPING) {
            // It is stopping because of the disk: let it finish.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while self.running() && std::time::Instant::now() < deadline {
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
        if self.running() {
            return Ok(());
        }
        if self.log().contains(STOPPING) {
            self.exits.pop();
        }
        self.start()
    }

    /// SIGSTOP.
    pub fn pause(&mut self) {
        self.signal(libc::SIGSTOP);
        self.paused = self.child.is_some();
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        self.signal(libc::SIGCONT);
        self.paused = false;
    }

    /// Whether it is paused.
    pub fn paused(&self) -> bool {
        self.paused
    }

    /// SIGTERM and wait for a clean exit (up to 20 s, then SIGKILL); true if it exited
    /// cleanly.
    pub fn stop(&mut self) -> bool {
        self.resume();
        let Some(mut child) = self.child.take() else {
            return true;
        };
        // SAFETY: kill(2) on our own child's pid.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        false
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(child) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(child.id() as libc::pid_t, sig) };
        }
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Everything the node printed, across restarts.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// A command running `program` under `runner` (an emulator and its arguments; none: directly).
pub fn command_under(runner: &[String], program: &Path) -> Command {
    match runner.split_first() {
        Some((emulator, args)) => {
            let mut cmd = Command::new(emulator);
            cmd.args(args).arg(program);
            cmd
        }
        None => Command::new(program),
    }
}

/// The file whose existence means "the disk is full" to the preload library.
fn disk_full_flag(journal: &Path) -> PathBuf {
    journal.with_extension("disk-full")
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}
