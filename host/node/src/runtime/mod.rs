//! The FSM runtime: deterministic wasmtime, one fresh instance per call.

mod artifact_cache;
mod depth;
mod engine;
mod error;
mod exports;
mod host;
mod keyspace;
mod prepared;
mod shape;
mod validate;

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use wasmtime::{Engine, InstancePre, Linker, Store, Trap};
use wraft_core::abi::{self, EntryContext, status};
use wraft_core::{ApplyError, Format, FsmLimits, ModuleId};

pub use artifact_cache::ArtifactCache;
pub use depth::{DEPTH_LIMIT, FRAME_UNITS};
pub use engine::{Backend, MAX_GUEST_THREADS, MAX_MEMORY_PAGES};
pub(crate) use error::HostAbort;
pub use error::RuntimeError;
pub(crate) use keyspace::prefix_successor;
pub use keyspace::{KeyPrefix, KvTarget, Usage};
pub use prepared::MAX_PREPARED;
pub use shape::{SHAPE, ShapeLimits};
pub use validate::{Capabilities, MAX_MODULE_BYTES, ModuleError, looks_like_wasm};

use exports::Exports;
use host::CallState;
use keyspace::Keyspace;
use prepared::Prepared;

/// Fuel for the calls the host makes on its own behalf (ABI version checks).
const HOST_CALL_FUEL: u64 = 1_000_000;

/// A guest entry point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryPoint {
    /// `wraft_apply`
    Apply,
    /// `wraft_query`
    Query,
    /// `wraft_init`
    Init,
    /// `wraft_migrate(from_version)`
    Migrate(u32),
    /// `wraft_command_from_json`
    CommandFromJson,
    /// `wraft_output_to_json`
    OutputToJson,
    /// `wraft_query_from_json`
    QueryFromJson,
    /// `wraft_query_output_to_json`
    QueryOutputToJson,
}

impl EntryPoint {
    fn export(self) -> &'static str {
        use abi::export as e;
        match self {
            Self::Apply => e::APPLY,
            Self::Query => e::QUERY,
            Self::Init => e::INIT,
            Self::Migrate(_) => e::MIGRATE,
            Self::CommandFromJson => e::COMMAND_FROM_JSON,
            Self::OutputToJson => e::OUTPUT_TO_JSON,
            Self::QueryFromJson => e::QUERY_FROM_JSON,
            Self::QueryOutputToJson => e::QUERY_OUTPUT_TO_JSON,
        }
    }

    /// Every entry point's export, each once (`Migrate`'s argument aside).
    const EXPORTS: [Self; 8] = [
        Self::Apply,
        Self::Query,
        Self::Init,
        Self::Migrate(0),
        Self::CommandFromJson,
        Self::OutputToJson,
        Self::QueryFromJson,
        Self::QueryOutputToJson,
    ];

    /// How many i32 parameters its export takes.
    fn params(self) -> usize {
        match self {
            Self::Init => 0,
            Self::Migrate(_) => 1,
            _ => 2,
        }
    }

    /// This entry point's place in [`EntryPoint::EXPORTS`].
    fn slot(self) -> usize {
        match self {
            Self::Apply => 0,
            Self::Query => 1,
            Self::Init => 2,
            Self::Migrate(_) => 3,
            Self::CommandFromJson => 4,
            Self::OutputToJson => 5,
            Self::QueryFromJson => 6,
            Self::QueryOutputToJson => 7,
        }
    }
}

/// A validated, compiled module ready to instantiate.
pub struct LoadedModule {
    /// Its id.
    pub id: ModuleId,
    /// The FSM schema version it reports (`wraft_fsm_version`, 0 if absent).
    pub fsm_version: u32,
    /// Its optional entry points.
    pub capabilities: Capabilities,
    pre: InstancePre<CallState>,
    exports: Exports,
}

impl std::fmt::Debug for LoadedModule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModule")
            .field("id", &self.id)
            .field("fsm_version", &self.fsm_version)
            .field("capabilities", &self.capabilities)
            .finish_non_exhaustive()
    }
}

/// What one call produced.
#[derive(Debug)]
pub struct CallOutcome {
    /// The guest's output, or the deterministic reason it failed.
    pub result: Result<Vec<u8>, ApplyError>,
    /// Fuel the call consumed.
    pub fuel_used: u64,
    /// The bytes the FSM's keyspace holds after the call's writes, if they changed it.
    pub usage: Option<u64>,
}

/// The environment of one call.
#[derive(Debug)]
pub struct CallEnv<'t, 'p> {
    /// Where its key-value imports go.
    pub kv: KvTarget<'t, 'p>,
    /// The entry context it sees.
    pub ctx: EntryContext,
    /// Its FSM's limits.
    pub limits: FsmLimits,
    /// The FSM's name, for log lines.
    pub fsm: &'t str,
    /// The rules the call is metered under: an entry's format (see [`Format`]); queries
    /// and codecs are always metered by today's.
    pub metering: Format,
}

/// Compiles, validates, caches and runs FSM modules.
pub struct FsmRuntime {
    engine: Engine,
    linker: Linker<CallState>,
    modules: Mutex<HashMap<ModuleId, Arc<LoadedModule>>>,
    /// One compile per module id at a time: a load that finds the id being compiled waits
    /// for that compile instead of starting another (a compile of a large module is a
    /// second of CPU).
    compiling: Mutex<HashMap<ModuleId, Arc<Mutex<()>>>>,
    /// Modules compiled ahead of their deploy entry and not deployed yet (bounded).
    prepared: Mutex<Prepared>,
    disk: Option<ArtifactCache>,
    compilations: AtomicU64,
    compiled_ahead: AtomicU64,
    not_in_memory: AtomicU64,
}

impl std::fmt::Debug for FsmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FsmRuntime").finish_non_exhaustive()
    }
}

impl FsmRuntime {
    /// A runtime with the deterministic engine and the `wraft` imports, running FSMs on
    /// this host's backend ([`Backend::for_this_host`]). No compile cache on disk (every
    /// start compiles its modules).
    pub fn new() -> Result<Self, RuntimeError> {
        Self::with_backend(Backend::for_this_host())
    }

    /// As [`FsmRuntime::new`], on a chosen backend.
    pub fn with_backend(backend: Backend) -> Result<Self, RuntimeError> {
        let engine = engine::deterministic_engine(backend)?;
        let mut linker = Linker::new(&engine);
        host::define_imports(&mut linker).map_err(|e| RuntimeError::Engine(e.to_string()))?;
        Ok(Self {
            engine,
            linker,
            modules: Mutex::new(HashMap::new()),
            compiling: Mutex::new(HashMap::new()),
            prepared: Mutex::new(Prepared::default()),
            disk: None,
            compilations: AtomicU64::new(0),
            compiled_ahead: AtomicU64::new(0),
            not_in_memory: AtomicU64::new(0),
        })
    }

    /// As [`FsmRuntime::new`], keeping compiled modules in `cache_dir` (a node's
    /// `<data>/cache`).
    pub fn with_cache(cache_dir: &Path) -> Result<Self, RuntimeError> {
        let mut rt = Self::new()?;
        rt.disk = Some(
            ArtifactCache::open(cache_dir, &rt.engine)
                .map_err(|e| RuntimeError::Engine(format!("{}: {e}", cache_dir.display())))?,
        );
        Ok(rt)
    }

    /// How many modules this runtime compiled from wasm (not loaded from the cache).
    pub fn compilations(&self) -> u64 {
        self.compilations.load(Ordering::Relaxed)
    }

    /// How many calls that may not compile ([`FsmRuntime::in_memory`]) found their module
    /// not in memory.
    pub fn not_in_memory(&self) -> u64 {
        self.not_in_memory.load(Ordering::Relaxed)
    }

    /// How many modules [`FsmRuntime::prepare`] found not loaded yet and loaded.
    pub fn compiled_ahead(&self) -> u64 {
        self.compiled_ahead.load(Ordering::Relaxed)
    }

    /// Validates `bytes` as an FSM module without keeping it (`Err`: a fault of this node).
    pub fn validate(
        &self,
        bytes: &[u8],
    ) -> Result<Result<Capabilities, ModuleError>, RuntimeError> {
        Ok(self.compile(None, bytes)?.map(|m| m.capabilities))
    }

    /// The loaded module `id`, compiling `bytes()` on first use.
    pub fn load(
        &self,
        id: ModuleId,
        bytes: impl FnOnce() -> Result<Vec<u8>, RuntimeError>,
    ) -> Result<Result<Arc<LoadedModule>, ModuleError>, RuntimeError> {
        if let Some(m) = self.cached(&id) {
            return Ok(Ok(m));
        }
        self.gated(id, || match self.cached(&id) {
            // Compiled while this load waited.
            Some(m) => Ok(Ok(m)),
            None => {
                let compiled = self.compile(Some(id), &bytes()?)?;
                Ok(compiled.map(|m| self.keep(id, Arc::new(m))))
            }
        })?
    }

    /// Compiles `bytes` as module `id` ahead of its deploy entry (a leader validating it
    /// before the proposal, a member its leader sent it to), so that the entry applies from
    /// the cache. Of the modules compiled this way and not deployed (see
    /// [`FsmRuntime::deployed`]), the oldest is evicted past [`MAX_PREPARED`].
    pub fn prepare(
        &self,
        id: ModuleId,
        bytes: &[u8],
    ) -> Result<Result<Arc<LoadedModule>, ModuleError>, RuntimeError> {
        let mut evicted = None;
        type Loaded = Result<Result<Arc<LoadedModule>, ModuleError>, RuntimeError>;
        let loaded = self.gated(id, || -> Loaded {
            // Loaded already (deployed, or prepared before): nothing to count.
            if let Some(m) = self.cached(&id) {
                return Ok(Ok(m));
            }
            let m = match self.compile(Some(id), bytes)? {
                Ok(m) => m,
                Err(e) => return Ok(Err(e)),
            };
            // Recorded before it is cached, under its gate: a deploy's apply finds it only
            // after this, so its `deployed` is never followed by this record.
            evicted = self.prepared().record(id);
            self.compiled_ahead.fetch_add(1, Ordering::Relaxed);
            Ok(Ok(self.keep(id, Arc::new(m))))
        })??;
        // Outside the gate of `id`: evicting takes the evicted module's own.
        if let Some(oldest) = evicted {
            tracing::info!(module = %oldest, "evicting a module compiled ahead of a deploy that never came");
            self.evict(&oldest)?;
        }
        Ok(loaded)
    }

    /// Runs `f` holding the compile gate of `id`: one compile (or eviction) per module id at
    /// a time; a second waits for the first.
    ///
    /// Refused on a rayon worker thread (the node's guest pool): wasmtime compiles in
    /// parallel on rayon, and a worker waiting for that work runs other queued jobs on its
    /// own stack; a guest call among them waiting for this gate would wait for its own
    /// thread. Guest calls there run with [`crate::state::Compile::Never`]; this turns a
    /// mistake into an error instead of a stuck node.
    fn gated<T>(&self, id: ModuleId, f: impl FnOnce() -> T) -> Result<T, RuntimeError> {
        if rayon_core::current_thread_index().is_some() {
            return Err(RuntimeError::Fault(format!(
                "module {id}: a compile gate was asked for on a rayon worker thread, where \
                 waiting for it could deadlock"
            )));
        }
        let gate = self
            .compiling
            .lock()
            .map_err(|_| RuntimeError::Engine("the compile table's lock is poisoned".into()))?
            .entry(id)
            .or_default()
            .clone();
        // A compile that panicked leaves nothing behind to protect: go on.
        let held = gate
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let out = f();
        drop(held);
        if let Ok(mut compiling) = self.compiling.lock() {
            compiling.remove(&id);
        }
        Ok(out)
    }

    /// Caches the compiled module `id` and returns it.
    fn keep(&self, id: ModuleId, m: Arc<LoadedModule>) -> Arc<LoadedModule> {
        if let Ok(mut cache) = self.modules.lock() {
            cache.insert(id, m.clone());
        }
        m
    }

    /// Module `id` was deployed: [`FsmRuntime::prepare`] no longer counts it.
    pub fn deployed(&self, id: &ModuleId) {
        self.prepared().forget(id);
    }

    fn prepared(&self) -> std::sync::MutexGuard<'_, Prepared> {
        // A list of ids, consistent after any panic: go on.
        self.prepared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Forgets a compiled module (after it is dropped from the cluster), in memory and on
    /// disk; a compile of it under way finishes first.
    pub fn evict(&self, id: &ModuleId) -> Result<(), RuntimeError> {
        self.gated(*id, || {
            if let Ok(mut cache) = self.modules.lock() {
                cache.remove(id);
            }
            self.prepared().forget(id);
            if let Some(disk) = &self.disk {
                disk.remove(id);
            }
        })
    }

    /// Deletes the compile cache's artifacts of every module but `deployed` (the modules a
    /// node's state holds when it opens): those dropped, or compiled ahead of a deploy that
    /// never came before a restart, and those of another engine build.
    pub fn keep_only_on_disk(&self, deployed: &std::collections::HashSet<ModuleId>) {
        if let Some(disk) = &self.disk {
            let deleted = disk.retain(deployed);
            if deleted > 0 {
                tracing::info!(
                    "deleted {deleted} compile cache files of modules not deployed or of another engine"
                );
            }
        }
    }

    /// The module `id` if it is compiled and in memory, for a call that may not compile
    /// (counted in [`FsmRuntime::not_in_memory`] when it is not).
    pub fn in_memory(&self, id: &ModuleId) -> Option<Arc<LoadedModule>> {
        let found = self.cached(id);
        if found.is_none() {
            self.not_in_memory.fetch_add(1, Ordering::Relaxed);
        }
        found
    }

    fn cached(&self, id: &ModuleId) -> Option<Arc<LoadedModule>> {
        self.modules.lock().ok()?.get(id).cloned()
    }

    /// Compiles and validates a module; with an `id`, through the disk cache. `Err` is a
    /// fault of this node (no instance slot free for the ABI checks, a valid module it could
    /// not compile), never the module's.
    fn compile(
        &self,
        id: Option<ModuleId>,
        bytes: &[u8],
    ) -> Result<Result<LoadedModule, ModuleError>, RuntimeError> {
        let disk = id.and_then(|id| Some((id, self.disk.as_ref()?)));
        let (mut loaded, compiled) = match self.instantiable(id, disk, bytes)? {
            Ok(found) => found,
            Err(e) => return Ok(Err(e)),
        };
        let version = match self.host_call(&loaded, abi::export::ABI_VERSION)? {
            Ok(version) => version,
            Err(e) => return Ok(Err(e)),
        };
        if version != i64::from(abi::ABI_VERSION) {
            return Ok(Err(ModuleError::AbiVersion {
                found: version,
                expected: abi::ABI_VERSION,
            }));
        }
        if loaded.capabilities.fsm_version {
            loaded.fsm_version = match self.host_call(&loaded, abi::export::FSM_VERSION)? {
                Ok(version) => version as u32,
                Err(e) => return Ok(Err(e)),
            };
        }
        if let (Some((id, d)), Some(m)) = (disk, compiled) {
            d.store(&id, &m);
        }
        Ok(Ok(loaded))
    }

    /// The module `bytes` (or its artifact in `disk`) compiled, checked against the ABI's
    /// imports and exports and ready to instantiate; with the module if it was compiled
    /// here, for the disk cache.
    fn instantiable(
        &self,
        id: Option<ModuleId>,
        disk: Option<(ModuleId, &ArtifactCache)>,
        bytes: &[u8],
    ) -> Result<Result<(LoadedModule, Option<wasmtime::Module>), ModuleError>, RuntimeError> {
        let cached = disk.and_then(|(id, d)| d.load(&self.engine, &id));
        let from_cache = cached.is_some();
        let found = match cached {
            Some(m) => validate::check(&m).map(|caps| (m, caps)),
            None => {
                self.compilations.fetch_add(1, Ordering::Relaxed);
                let started = std::time::Instant::now();
                let compiled = validate::validate(&self.engine, bytes)?;
                crate::metrics::seconds(crate::metrics::names::MODULE_COMPILE, started.elapsed());
                compiled
            }
        };
        Ok(found.and_then(|(module, capabilities)| {
            let pre = self
                .linker
                .instantiate_pre(&module)
                .map_err(|e| ModuleError::Compile(format!("{e:#}")))?;
            let loaded = LoadedModule {
                id: id.unwrap_or(ModuleId([0; 32])),
                fsm_version: 0,
                capabilities,
                exports: Exports::of(&module)?,
                pre,
            };
            Ok((loaded, (!from_cache).then_some(module)))
        }))
    }

    /// A store for a call the host makes on its own behalf: no keyspace, no output, the
    /// memory cap.
    fn host_store(&self) -> Store<CallState> {
        let state = CallState::new(
            Keyspace::new(KvTarget::None),
            EntryContext::default(),
            0,
            MAX_MEMORY_PAGES,
            String::new(),
            true,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store
    }

    /// Calls a `() -> i32` export with a small fuel budget and no keyspace. No instance slot
    /// free is a fault of this node (`Err`), not of the module: a deploy's apply then fails
    /// as a node fault on this replica instead of refusing the module on it alone.
    fn host_call(
        &self,
        module: &LoadedModule,
        name: &str,
    ) -> Result<Result<i64, ModuleError>, RuntimeError> {
        let bad = |e: wasmtime::Error| ModuleError::BadExport {
            name: name.into(),
            problem: format!("failed when called: {}", describe(&e)),
        };
        let mut store = self.host_store();
        if let Err(e) = store.set_fuel(HOST_CALL_FUEL) {
            return Ok(Err(bad(e)));
        }
        let instance = match instantiate(&module.pre, &mut store) {
            Ok(instance) => instance,
            Err(e) if e.is::<wasmtime::PoolConcurrencyLimitError>() => {
                return Err(RuntimeError::Fault(format!(
                    "no wasm instance slot free to check module exports: {e:#}"
                )));
            }
            Err(e) => return Ok(Err(bad(e))),
        };
        Ok(instance
            .get_typed_func::<(), i32>(&mut store, name)
            .and_then(|f| f.call(&mut store, ()))
            .map(i64::from)
            .map_err(bad))
    }

    /// Runs one entry point in a fresh instance.
    ///
    /// `Err` is a fault of this node; `Ok(outcome)` is deterministic, the same on every
    /// replica given the same module, input, keyspace contents and context.
    pub fn call(
        &self,
        module: &LoadedModule,
        entry: EntryPoint,
        input: &[u8],
        env: CallEnv<'_, '_>,
    ) -> Result<CallOutcome, RuntimeError> {
        let fuel = env.limits.fuel;
        let state = CallState::new(
            Keyspace::new(env.kv),
            env.ctx,
            env.limits.max_output_bytes,
            env.limits.memory_pages.min(MAX_MEMORY_PAGES),
            env.fsm.to_owned(),
            env.metering >= Format::V2,
        );
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| s);
        store.set_fuel(fuel).map_err(fault)?;
        let ran = run(&mut store, module, entry, input);
        let fuel_used = fuel.saturating_sub(store.get_fuel().map_err(fault)?);
        let data = store.data();
        if data.log_dropped > 0 {
            tracing::warn!(
                fsm = data.fsm,
                index = data.ctx.index,
                "{} bytes of this call's log messages were dropped (at most {} are written per call)",
                data.log_dropped,
                abi::MAX_LOG_BYTES_PER_CALL
            );
        }
        let status = match ran {
            Ok(status) => status,
            Err(e) if e.is::<Trap>() && depth_exceeded(&mut store) => {
                return Ok(CallOutcome {
                    result: Err(ApplyError::CallDepth {
                        limit: depth::DEPTH_LIMIT,
                    }),
                    fuel_used,
                    usage: None,
                });
            }
            Err(e) => {
                return classify(e, fuel).map(|err| CallOutcome {
                    result: Err(err),
                    fuel_used,
                    usage: None,
                });
            }
        };
        let usage = store.data().keyspace.usage_after();
        let output = std::mem::take(&mut store.data_mut().output);
        let text = |output: Vec<u8>| String::from_utf8_lossy(&output).into_owned();
        let result = match status {
            status::OK => Ok(output),
            status::REJECTED => Err(ApplyError::Rejected(text(output))),
            status::BAD_INPUT => Err(ApplyError::BadInput(text(output))),
            other => Err(ApplyError::AbiViolation(format!(
                "unknown status code {other}"
            ))),
        };
        let usage = usage.filter(|_| result.is_ok());
        Ok(CallOutcome {
            result,
            fuel_used,
            usage,
        })
    }
}

fn run(
    store: &mut Store<CallState>,
    module: &LoadedModule,
    entry: EntryPoint,
    input: &[u8],
) -> wasmtime::Result<i32> {
    let instance = instantiate(&module.pre, &mut *store)?;
    let exports = &module.exports;
    let memory = exports
        .memory(store, &instance)
        .ok_or_else(|| wasmtime::Error::msg("memory export vanished"))?;
    store.data_mut().memory = Some(memory);
    store.data_mut().depth = exports.depth(store, &instance);
    let Some(f) = exports.entry(entry) else {
        return Err(wasmtime::Error::new(HostAbort::Apply(
            ApplyError::MissingExport(entry.export().into()),
        )));
    };
    match entry {
        EntryPoint::Init => f.call(store, &instance, &[]),
        EntryPoint::Migrate(from) => f.call(store, &instance, &[from as i32]),
        _ => {
            let alloc = exports
                .alloc
                .ok_or_else(|| wasmtime::Error::msg("wraft_alloc export vanished"))?;
            let len = i32::try_from(input.len()).map_err(|_| {
                wasmtime::Error::new(HostAbort::Apply(ApplyError::TooLarge {
                    what: "input".into(),
                    len: input.len() as u64,
                    limit: i32::MAX as u64,
                }))
            })?;
            let ptr = alloc.call(store, &instance, &[len])?;
            memory
                .write(&mut *store, ptr as u32 as usize, input)
                .map_err(|_| {
                    wasmtime::Error::new(HostAbort::Apply(ApplyError::AbiViolation(
                        "wraft_alloc returned a pointer outside linear memory".into(),
                    )))
                })?;
            f.call(store, &instance, &[ptr, len])
        }
    }
}

/// Whether a trapped call's depth counter shows it trapped for nesting past the limit.
fn depth_exceeded(store: &mut Store<CallState>) -> bool {
    let Some(counter) = store.data().depth else {
        return false;
    };
    match counter.get(&mut *store) {
        wasmtime::Val::I32(n) => depth::exceeded(n),
        _ => false,
    }
}

/// Sorts a failed call into a deterministic error (`Ok`) or a node fault (`Err`).
fn classify(e: wasmtime::Error, fuel: u64) -> Result<ApplyError, RuntimeError> {
    if let Some(abort) = e.downcast_ref::<HostAbort>() {
        return match abort {
            HostAbort::Apply(err) => Ok(err.clone()),
            HostAbort::OutOfFuel => Ok(ApplyError::OutOfFuel { limit: fuel }),
            HostAbort::Storage(_) => match e.downcast::<HostAbort>() {
                Ok(HostAbort::Storage(s)) => Err(RuntimeError::Storage(s)),
                _ => Err(RuntimeError::Fault("storage error".into())),
            },
        };
    }
    if let Some(trap) = e.downcast_ref::<Trap>() {
        return Ok(match trap {
            Trap::OutOfFuel => ApplyError::OutOfFuel { limit: fuel },
            other => ApplyError::Trap(other.to_string()),
        });
    }
    Err(fault(e))
}

/// How long an instantiation waits for a pooled instance slot before the node gives up
/// (a fault of the node). Slots are held for the length of one call, and the guest pool's
/// lanes leave 16 of them to applies, deploys and migrations, so a wait is rare and short.
const SLOT_PATIENCE: std::time::Duration = std::time::Duration::from_secs(1);

/// Instantiates `pre` in `store`, waiting up to [`SLOT_PATIENCE`] for a free pooled slot.
fn instantiate(
    pre: &InstancePre<CallState>,
    store: &mut Store<CallState>,
) -> wasmtime::Result<wasmtime::Instance> {
    let started = std::time::Instant::now();
    loop {
        match pre.instantiate(&mut *store) {
            Err(e)
                if e.is::<wasmtime::PoolConcurrencyLimitError>()
                    && started.elapsed() < SLOT_PATIENCE =>
            {
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            done => return done,
        }
    }
}

fn fault(e: wasmtime::Error) -> RuntimeError {
    RuntimeError::Fault(format!("{e:#}"))
}

fn describe(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(t) => t.to_string(),
        None => format!("{e:#}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wasmtime::{ExternType, ValType};

    #[test]
    fn linker_defines_exactly_the_abi_imports() {
        let rt = FsmRuntime::new().expect("runtime");
        let state = CallState::new(
            Keyspace::new(KvTarget::None),
            EntryContext::default(),
            0,
            1,
            String::new(),
            true,
        );
        let mut store = Store::new(&rt.engine, state);
        let defined: Vec<_> = rt
            .linker
            .iter(&mut store)
            .map(|(m, n, _)| (m.to_owned(), n.to_owned()))
            .collect();
        assert_eq!(defined.len(), abi::IMPORTS.len());
        for sig in abi::IMPORTS {
            let ext = rt
                .linker
                .get(&mut store, abi::IMPORT_MODULE, sig.name)
                .expect(sig.name);
            let ExternType::Func(ty) = ext.ty(&store) else {
                panic!("{} not a func", sig.name)
            };
            let want = |t: &abi::ValType| match t {
                abi::ValType::I32 => ValType::I32,
                abi::ValType::I64 => ValType::I64,
            };
            let params: Vec<_> = ty.params().map(|p| p.to_string()).collect();
            let expect: Vec<_> = sig.params.iter().map(|p| want(p).to_string()).collect();
            assert_eq!(params, expect, "{}", sig.name);
            let results: Vec<_> = ty.results().map(|p| p.to_string()).collect();
            let expect: Vec<_> = sig.results.iter().map(|p| want(p).to_string()).collect();
            assert_eq!(results, expect, "{}", sig.name);
        }
    }

    #[test]
    fn each_entry_point_has_its_own_slot() {
        for (i, entry) in EntryPoint::EXPORTS.into_iter().enumerate() {
            assert_eq!(entry.slot(), i, "{entry:?}");
        }
    }

    /// A module whose exports answer status codes no guest may use, each its own, so an
    /// error names which export ran: apply 100 + the input's length, query 50, migrate 200 +
    /// its argument, command_from_json 60; no init and no other codec.
    const EXPORTS_BY_STATUS: &str = r#"(module
        (memory (export "memory") 1)
        (func (export "wraft_abi_version") (result i32) i32.const 1)
        (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
        (func (export "wraft_apply") (param i32 i32) (result i32)
            (i32.add (i32.const 100) (local.get 1)))
        (func (export "wraft_query") (param i32 i32) (result i32) i32.const 50)
        (func (export "wraft_migrate") (param i32) (result i32)
            (i32.add (i32.const 200) (local.get 0)))
        (func (export "wraft_command_from_json") (param i32 i32) (result i32)
            i32.const 60))"#;

    /// A module's ABI checks that find no wasm instance slot free are a fault of the node,
    /// not an invalid module: a deploy's apply on that replica fails as a node fault (and
    /// runs again), instead of refusing the module on that replica alone. Checked to fail
    /// with the fault's classification removed from `host_call`.
    #[cfg(target_pointer_width = "64")]
    #[test]
    fn a_compile_with_no_instance_slot_free_is_a_fault_not_an_invalid_module() {
        let bytes = wat::parse_str(EXPORTS_BY_STATUS).expect("wat");
        let rt = FsmRuntime::new().expect("runtime");
        let held = rt
            .load(ModuleId([1; 32]), || Ok(bytes))
            .expect("no fault")
            .expect("valid");
        let mut stores = Vec::new();
        for _ in 0..engine::POOL_INSTANCES {
            let mut store = rt.host_store();
            held.pre.instantiate(&mut store).expect("a free slot");
            stores.push(store);
        }
        let other =
            wat::parse_str(EXPORTS_BY_STATUS.replace("i32.const 50", "i32.const 51")).expect("wat");
        let e = rt
            .load(ModuleId([2; 32]), || Ok(other.clone()))
            .expect_err("a fault, not a verdict on the module");
        assert!(
            matches!(&e, RuntimeError::Fault(m) if m.contains("instance slot")),
            "{e}"
        );
        // A slot freed while it waits is taken.
        let release = std::thread::spawn(move || {
            std::thread::sleep(SLOT_PATIENCE / 20);
            drop(stores);
        });
        rt.load(ModuleId([2; 32]), || Ok(other))
            .expect("a slot freed within the patience is waited for")
            .expect("valid");
        release.join().expect("released");
    }

    /// Two loads of one module at once compile it once: the second waits for the first.
    #[test]
    fn a_module_loaded_twice_at_once_compiles_once() {
        let bytes = wat::parse_str(EXPORTS_BY_STATUS).expect("wat");
        let rt = FsmRuntime::new().expect("runtime");
        let start = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    start.wait();
                    rt.load(ModuleId([8; 32]), || Ok(bytes.clone()))
                        .expect("no fault")
                        .expect("valid");
                });
            }
        });
        assert_eq!(rt.compilations(), 1, "the second load compiled it again");
    }

    /// Each entry point runs its own export, found by the index cached at load, with its
    /// argument; an export the module lacks is `MissingExport`. The module answers with a
    /// status code no guest may use, so the error names which export ran.
    #[test]
    fn each_entry_point_runs_its_own_export() {
        let bytes = wat::parse_str(EXPORTS_BY_STATUS).expect("wat");
        let rt = FsmRuntime::new().expect("runtime");
        let module = rt
            .load(ModuleId([7; 32]), || Ok(bytes))
            .expect("no fault")
            .expect("valid");
        let run = |entry: EntryPoint| {
            let env = CallEnv {
                kv: KvTarget::None,
                ctx: EntryContext::default(),
                limits: FsmLimits::default(),
                fsm: "t",
                metering: Format::V2,
            };
            rt.call(&module, entry, b"input", env)
                .expect("no fault")
                .result
                .expect_err("no export answers OK")
        };
        let status = |n: i32| ApplyError::AbiViolation(format!("unknown status code {n}"));
        assert_eq!(
            run(EntryPoint::Apply),
            status(105),
            "apply gets the input's length"
        );
        assert_eq!(run(EntryPoint::Query), status(50));
        assert_eq!(
            run(EntryPoint::Migrate(3)),
            status(203),
            "migrate gets its argument"
        );
        assert_eq!(run(EntryPoint::CommandFromJson), status(60));
        for (entry, name) in [
            (EntryPoint::Init, abi::export::INIT),
            (EntryPoint::OutputToJson, abi::export::OUTPUT_TO_JSON),
            (EntryPoint::QueryFromJson, abi::export::QUERY_FROM_JSON),
            (
                EntryPoint::QueryOutputToJson,
                abi::export::QUERY_OUTPUT_TO_JSON,
            ),
        ] {
            assert_eq!(run(entry), ApplyError::MissingExport(name.into()));
        }
    }
}
