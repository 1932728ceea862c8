use std::sync::Arc;
use wraft_host::state::Compile;

use tempfile::TempDir;
use wraft_core::{Apply, Command, EntryResponse, FsmLimits, FsmName, ModuleId};
use wraft_host::local::LocalNode;
use wraft_host::runtime::FsmRuntime;
use wraft_host::state::{StateOptions, StateStore};

pub fn name(s: &str) -> FsmName {
    FsmName::new(s).expect("valid name")
}

/// A node in a temp dir with `module` deployed and an FSM `fsm` created from it.
pub struct Fixture {
    pub dir: TempDir,
    pub node: LocalNode,
    pub module: ModuleId,
}

impl Fixture {
    pub fn new(module: &[u8], fsm: &str, limits: FsmLimits) -> Self {
        Self::with_options(module, fsm, limits, StateOptions::default())
    }

    /// As [`Fixture::new`], with the state env opened under `options`.
    pub fn with_options(
        module: &[u8],
        fsm: &str,
        limits: FsmLimits,
        options: StateOptions,
    ) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let node = LocalNode::open_with(dir.path(), options).expect("open");
        let module = node
            .deploy(module.to_vec())
            .expect("deploy")
            .expect("valid module");
        node.create(name(fsm), module, limits)
            .expect("create")
            .expect("created");
        Self { dir, node, module }
    }

    pub fn probe() -> Self {
        Self::new(
            wraft_fsm_artifacts::PROBE,
            "p",
            FsmLimits {
                fuel: 20_000_000,
                memory_pages: 64,
                max_output_bytes: 64 << 10,
                query_fuel: 20_000_000,
                ..FsmLimits::default()
            },
        )
    }

    pub fn apply(&self, fsm: &str, cmd: &probe::Command) -> EntryResponse {
        self.node
            .propose(probe_apply(fsm, cmd))
            .expect("no node fault")
    }

    pub fn query(
        &self,
        fsm: &str,
        q: &probe::Query,
    ) -> Result<probe::Output, wraft_core::ApplyError> {
        let bytes = postcard::to_allocvec(q).expect("encode");
        self.node
            .store()
            .query(&name(fsm), &bytes, Compile::IfNeeded)
            .expect("no node fault")
            .map(|out| postcard::from_bytes(&out).expect("decode output"))
    }

    pub fn hash(&self, fsm: &str) -> [u8; 32] {
        self.node
            .store()
            .fsm_hash(&name(fsm))
            .expect("hash")
            .expect("fsm exists")
    }

    pub fn applied_index(&self) -> u64 {
        self.node
            .store()
            .applied()
            .expect("applied")
            .expect("something applied")
            .index
    }
}

pub fn probe_apply(fsm: &str, cmd: &probe::Command) -> Command {
    Command::Apply(Apply {
        fsm: name(fsm),
        payload: postcard::to_allocvec(cmd).expect("encode"),
    })
}

pub fn output(r: &EntryResponse) -> probe::Output {
    match r {
        EntryResponse::Output(bytes) => postcard::from_bytes(bytes).expect("decode output"),
        other => panic!("expected an output, got {other:?}"),
    }
}

pub fn runtime() -> Arc<FsmRuntime> {
    Arc::new(FsmRuntime::new().expect("runtime"))
}

pub fn reopen(dir: &std::path::Path) -> StateStore {
    StateStore::open(dir, runtime()).expect("reopen")
}

/// The probe FSM "p"'s counter under key "n" in `store` (0 if never incremented).
pub fn probe_counter(store: &StateStore) -> u64 {
    let q = postcard::to_allocvec(&probe::Query::Get { key: b"n".to_vec() }).expect("encode");
    let out = store
        .query(&name("p"), &q, Compile::IfNeeded)
        .expect("no fault")
        .expect("query");
    match postcard::from_bytes(&out).expect("decode") {
        probe::Output::Bytes(b) => postcard::from_bytes::<u64>(&b).expect("u64"),
        probe::Output::None => 0,
        other => panic!("unexpected {other:?}"),
    }
}

/// Proposes `command` through `raft` (the leader) and returns the entry's response.
///
/// A leader refuses a write, appending nothing, while it is not sure it still leads: its
/// lease lapsed because a quorum's heartbeat answers came late (on a loaded 2-core machine
/// running several clusters, seen in `cluster::three_nodes_replicate_survive_leader_loss_and_agree`
/// right after an election). It regains the lease at the next answers, so this asks again
/// for up to 10 s, as a client does.
pub async fn raft_write(raft: &wraft_host::raft::Raft, command: Command) -> EntryResponse {
    let entry = wraft_core::LogEntry::new(wraft_host::clock::now_ms(), command);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match raft.client_write(entry.clone()).await {
            Ok(written) => return written.data,
            Err(openraft::error::RaftError::APIError(
                openraft::error::ClientWriteError::ForwardToLeader(f),
            )) if f.leader_id.is_none() && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("committed: {e:?}"),
        }
    }
}

/// Deploys the probe module and creates FSM "p" from it through `raft`.
pub async fn setup_probe(raft: &wraft_host::raft::Raft) {
    let bytes = wraft_fsm_artifacts::PROBE.to_vec();
    let module_id = wraft_host::state::module_id(&bytes);
    assert_eq!(
        raft_write(raft, Command::DeployModule { module_id, bytes }).await,
        EntryResponse::Done
    );
    let create = Command::CreateFsm {
        fsm: name("p"),
        module_id,
        limits: FsmLimits::default(),
    };
    assert_eq!(raft_write(raft, create).await, EntryResponse::Done);
}

/// Deploys `module` through `admin` and creates FSM `fsm` from it with `limits`, as an
/// operator's `wraft module deploy` and `wraft fsm create` do.
pub async fn deploy_and_create(
    admin: &wraft_client::Client,
    fsm: FsmName,
    module: &[u8],
    limits: FsmLimits,
) -> ModuleId {
    let id = admin.deploy(module.to_vec()).await.expect("deploy");
    admin.create_fsm(fsm, id, limits).await.expect("create");
    id
}

/// Held for the length of a test that moves hundreds of megabytes through a cluster of
/// processes (bounds.rs, metering.rs): one at a time, so two of them never starve the
/// machine's two cores together (a starved node misses heartbeats and an election changes
/// what the test sees).
pub fn heavy() -> std::sync::MutexGuard<'static, ()> {
    static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}
