//! Random valid FSM modules run on Cranelift and on Pulley with the same fuel, input and
//! keyspace: the load verdict, every call's result, the fuel it used and the keyspace it left
//! must be the same.
//!
//! wasm-smith generates each module to a shape (`module_shape`): every `wraft` import with the
//! ABI's signature (so the generated code calls the host), the ABI's required exports, and four
//! functions `f0`..`f3` of fixed signatures whose bodies are random (integer, float and SIMD
//! code, loops, calls, traps, memory and table operations, within the features the engine
//! accepts and the bounds of `runtime::SHAPE`). wasm-encoder's reencoder then replaces the
//! bodies of the ABI exports with a harness: `wraft_abi_version` answers 1, `wraft_alloc` the
//! address 0, and `wraft_apply`/`wraft_query` read arguments for `f0`..`f3` from the input,
//! call them, and store what they return (an i32, an f32, an f64 and a v128: NaN bits
//! included) with `kv_put` (apply only) and `set_output`. Inputs mix arbitrary bits with zeros,
//! infinities and NaNs of every kind.
//!
//! `WRAFT_DIFF_CASES` sets the number of modules (default 64, a few seconds),
//! `WRAFT_DIFF_SEED` the seed (default 1; `random` draws one; every run prints its seed); a
//! failure writes the smallest failing module proptest shrank it to to a file.

use std::collections::BTreeMap;
use std::path::Path;

use heed::types::Bytes;
use heed::{Database, Env, EnvOpenOptions};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestError, TestRng, TestRunner};
use wasm_encoder::reencode::{Error as ReencodeError, Reencode, utils};
use wasm_encoder::{CodeSection, Function, Instruction, MemArg, ValType};
use wasm_smith::Module;
use wasmtime::wasmparser::{self, ExternalKind, Parser, Payload, TypeRef};
use wraft_core::abi::{self, EntryContext};
use wraft_core::{ApplyError, Format, FsmLimits, ModuleId};
use wraft_host::runtime::{
    Backend, CallEnv, EntryPoint, FsmRuntime, KvTarget, LoadedModule, ModuleError, SHAPE, Usage,
};

const PREFIX: [u8; 16] = [7; 16];

/// The generated functions the harness calls: (export, params, result), in this order, with
/// their arguments read from the input in this order.
const FUNCS: [(&str, &[ValType], ValType); 4] = [
    ("f0", &[ValType::I32, ValType::I64], ValType::I32),
    ("f1", &[ValType::F32, ValType::F32], ValType::F32),
    ("f2", &[ValType::F64, ValType::I32], ValType::F64),
    ("f3", &[ValType::V128, ValType::V128], ValType::V128),
];

fn wat_type(t: &ValType) -> &'static str {
    match t {
        ValType::I32 => "i32",
        ValType::I64 => "i64",
        ValType::F32 => "f32",
        ValType::F64 => "f64",
        ValType::V128 => "v128",
        ValType::Ref(_) => unreachable!("no references in the harness"),
    }
}

fn size(t: &ValType) -> u64 {
    match t {
        ValType::I32 | ValType::F32 => 4,
        ValType::I64 | ValType::F64 => 8,
        _ => 16,
    }
}

/// Bytes of input the harness reads: every argument of `FUNCS`, packed.
fn input_len() -> usize {
    FUNCS
        .iter()
        .flat_map(|(_, params, _)| params.iter().map(size))
        .sum::<u64>() as usize
}

/// The module every generated one is shaped after, written from the ABI's tables.
fn shape() -> Vec<u8> {
    let abi_type = |t: &abi::ValType| match t {
        abi::ValType::I32 => "i32",
        abi::ValType::I64 => "i64",
    };
    let sig = |params: &mut dyn Iterator<Item = &'static str>, results: &[&str]| {
        let params: Vec<_> = params.collect();
        let list = |kind: &str, types: &[&str]| match types {
            [] => String::new(),
            _ => format!("({kind} {})", types.join(" ")),
        };
        format!("{} {}", list("param", &params), list("result", results))
    };
    let mut wat = String::from("(module\n");
    for s in abi::IMPORTS {
        let results: Vec<_> = s.results.iter().map(abi_type).collect();
        wat += &format!(
            "(import {:?} {:?} (func {}))\n",
            abi::IMPORT_MODULE,
            s.name,
            sig(&mut s.params.iter().map(abi_type), &results)
        );
    }
    wat += &format!("(memory (export {:?}) 1)\n", abi::export::MEMORY);
    for s in abi::REQUIRED_EXPORTS {
        let results: Vec<_> = s.results.iter().map(abi_type).collect();
        wat += &format!(
            "(func (export {:?}) {} unreachable)\n",
            s.name,
            sig(&mut s.params.iter().map(abi_type), &results)
        );
    }
    for (name, params, result) in FUNCS {
        wat += &format!(
            "(func (export {name:?}) {} unreachable)\n",
            sig(&mut params.iter().map(wat_type), &[wat_type(&result)])
        );
    }
    wat += ")";
    wat::parse_str(wat).expect("the shape parses")
}

/// wasm-smith's settings: the features wraft's engine enables (engine.rs: no threads, relaxed
/// SIMD, GC, memory64; wasmtime is built without its `gc` feature, so no reference types but
/// `funcref` tables, and no exceptions; SIMD on) and sizes well inside `SHAPE`.
fn smith_config(shape: &[u8], disallow_traps: bool) -> wasm_smith::Config {
    wasm_smith::Config {
        module_shape: Some(shape.to_vec()),
        threads_enabled: false,
        shared_everything_threads_enabled: false,
        relaxed_simd_enabled: false,
        gc_enabled: false,
        reference_types_enabled: false,
        memory64_enabled: false,
        exceptions_enabled: false,
        custom_page_sizes_enabled: false,
        wide_arithmetic_enabled: false,
        simd_enabled: true,
        // The call-depth rewrite (runtime/depth.rs) refuses tail calls and function types
        // with more than one result (docs/abi.md, "Call depth").
        tail_call_enabled: false,
        multi_value_enabled: false,
        canonicalize_nans: false,
        disallow_traps,
        max_funcs: 12,
        max_instructions: 120,
        max_nesting_depth: 12.min(SHAPE.nesting as usize),
        max_memories: 1,
        max_memory32_bytes: 4 << 16,
        max_tables: 1,
        max_table_elements: 200,
        max_elements: 64,
        max_data_segments: 8,
        max_globals: 16,
        max_types: 24,
        ..wasm_smith::Config::default()
    }
}

/// The harness's bodies for the ABI exports, by function index.
struct Harness {
    next: u32,
    bodies: BTreeMap<u32, Function>,
}

impl Reencode for Harness {
    type Error = std::convert::Infallible;

    fn parse_function_body(
        &mut self,
        code: &mut CodeSection,
        func: wasmparser::FunctionBody<'_>,
    ) -> Result<(), ReencodeError<Self::Error>> {
        let index = self.next;
        self.next += 1;
        match self.bodies.remove(&index) {
            Some(body) => {
                code.function(&body);
                Ok(())
            }
            None => utils::parse_function_body(self, code, func),
        }
    }
}

fn mem(offset: u64) -> MemArg {
    MemArg {
        offset,
        align: 0,
        memory_index: 0,
    }
}

/// `wraft_apply(ptr, len)` (with `kv_put`) or `wraft_query(ptr, len)`: loads every argument
/// into locals first (the generated code may write anywhere), calls `f0`..`f3`, stores their
/// results at 1024 and hands them to the host.
fn entry_body(funcs: &[u32; 4], kv_put: u32, set_output: u32, write: bool) -> Function {
    use Instruction as I;
    let args: Vec<ValType> = FUNCS
        .iter()
        .flat_map(|(_, p, _)| p.iter().copied())
        .collect();
    let results: Vec<ValType> = FUNCS.iter().map(|(_, _, r)| *r).collect();
    // Locals after the two parameters: the arguments, then the results.
    let mut f = Function::new(
        args.iter()
            .chain(&results)
            .map(|t| (1, *t))
            .collect::<Vec<_>>(),
    );
    let load = |t: &ValType, at: u64| match t {
        ValType::I32 => I::I32Load(mem(at)),
        ValType::I64 => I::I64Load(mem(at)),
        ValType::F32 => I::F32Load(mem(at)),
        ValType::F64 => I::F64Load(mem(at)),
        _ => I::V128Load(mem(at)),
    };
    let store = |t: &ValType, at: u64| match t {
        ValType::I32 => I::I32Store(mem(at)),
        ValType::I64 => I::I64Store(mem(at)),
        ValType::F32 => I::F32Store(mem(at)),
        ValType::F64 => I::F64Store(mem(at)),
        _ => I::V128Store(mem(at)),
    };
    let mut at = 0;
    for (i, t) in args.iter().enumerate() {
        f.instruction(&I::LocalGet(0));
        f.instruction(&load(t, at));
        f.instruction(&I::LocalSet(2 + i as u32));
        at += size(t);
    }
    let mut arg = 2;
    let first_result = 2 + args.len() as u32;
    for (i, (_, params, _)) in FUNCS.iter().enumerate() {
        for _ in params.iter() {
            f.instruction(&I::LocalGet(arg));
            arg += 1;
        }
        f.instruction(&I::Call(funcs[i]));
        f.instruction(&I::LocalSet(first_result + i as u32));
    }
    let mut at = 1024;
    for (i, t) in results.iter().enumerate() {
        f.instruction(&I::I32Const(0));
        f.instruction(&I::LocalGet(first_result + i as u32));
        f.instruction(&store(t, at));
        at += size(t);
    }
    let len = (at - 1024) as i32;
    if write {
        // The key "r" after the results.
        f.instruction(&I::I32Const(0));
        f.instruction(&I::I32Const(i32::from(b'r')));
        f.instruction(&I::I32Store8(mem(at)));
        for v in [at as i32, 1, 1024, len] {
            f.instruction(&I::I32Const(v));
        }
        f.instruction(&I::Call(kv_put));
    }
    f.instruction(&I::I32Const(1024));
    f.instruction(&I::I32Const(len));
    f.instruction(&I::Call(set_output));
    f.instruction(&I::I32Const(abi::status::OK));
    f.instruction(&I::End);
    f
}

fn constant(value: i32) -> Function {
    let mut f = Function::new([]);
    f.instruction(&Instruction::I32Const(value));
    f.instruction(&Instruction::End);
    f
}

/// `module` with the harness in place of its ABI exports' bodies; `None` if an export the
/// harness needs is not a function the module defines.
fn with_harness(module: &[u8]) -> Option<Vec<u8>> {
    let (mut imported, mut imports, mut exports) = (0u32, BTreeMap::new(), BTreeMap::new());
    for payload in Parser::new(0).parse_all(module) {
        match payload.expect("wasm-smith output parses") {
            Payload::ImportSection(s) => {
                for import in s.into_imports() {
                    let import = import.expect("import");
                    if let TypeRef::Func(_) = import.ty {
                        imports.insert(import.name.to_string(), imported);
                        imported += 1;
                    }
                }
            }
            Payload::ExportSection(s) => {
                for export in s {
                    let export = export.expect("export");
                    if export.kind == ExternalKind::Func {
                        exports.insert(export.name.to_string(), export.index);
                    }
                }
            }
            _ => {}
        }
    }
    let defined = |name: &str| exports.get(name).copied().filter(|&i| i >= imported);
    let funcs = FUNCS.map(|(name, _, _)| defined(name));
    let funcs = [funcs[0]?, funcs[1]?, funcs[2]?, funcs[3]?];
    let (kv_put, set_output) = (*imports.get("kv_put")?, *imports.get("set_output")?);
    use abi::export as e;
    let mut bodies = BTreeMap::new();
    bodies.insert(defined(e::ABI_VERSION)?, constant(abi::ABI_VERSION as i32));
    bodies.insert(defined(e::ALLOC)?, constant(0));
    bodies.insert(
        defined(e::QUERY)?,
        entry_body(&funcs, kv_put, set_output, false),
    );
    bodies.insert(
        defined(e::APPLY)?,
        entry_body(&funcs, kv_put, set_output, true),
    );
    let mut harness = Harness {
        next: imported,
        bodies,
    };
    let mut out = wasm_encoder::Module::new();
    harness
        .parse_core_module(&mut out, Parser::new(0), module)
        .expect("reencodes");
    Some(out.finish())
}

/// Special values the inputs draw from besides arbitrary bits: zeros, infinities, NaNs
/// (canonical, negative, signalling, with payloads), extremes and subnormals.
const SPECIAL32: [u32; 12] = [
    0,
    0x8000_0000,
    0x3f80_0000,
    0x7f80_0000,
    0xff80_0000,
    0x7fc0_0000,
    0xffc0_0000,
    0x7f80_0001,
    0x7fa5_a5a5,
    0xffff_ffff,
    0x7f7f_ffff,
    0x0000_0001,
];
const SPECIAL64: [u64; 12] = [
    0,
    0x8000_0000_0000_0000,
    0x3ff0_0000_0000_0000,
    0x7ff0_0000_0000_0000,
    0xfff0_0000_0000_0000,
    0x7ff8_0000_0000_0000,
    0xfff8_0000_0000_0000,
    0x7ff0_0000_0000_0001,
    0x7ff5_a5a5_a5a5_a5a5,
    0xffff_ffff_ffff_ffff,
    0x7fef_ffff_ffff_ffff,
    0x0000_0000_0000_0001,
];

/// One input: each 4- or 8-byte slot of the harness's arguments arbitrary or special.
fn input(u: &mut arbitrary::Unstructured<'_>) -> arbitrary::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(input_len());
    for (_, params, _) in FUNCS {
        for t in params {
            let words = if matches!(t, ValType::V128) { 4 } else { 1 };
            for _ in 0..words {
                let wide = matches!(t, ValType::I64 | ValType::F64);
                match (u.ratio(1, 2)?, wide) {
                    (true, false) => out.extend(u.choose(&SPECIAL32)?.to_le_bytes()),
                    (true, true) => out.extend(u.choose(&SPECIAL64)?.to_le_bytes()),
                    (false, false) => out.extend(u.arbitrary::<u32>()?.to_le_bytes()),
                    (false, true) => out.extend(u.arbitrary::<u64>()?.to_le_bytes()),
                }
            }
        }
    }
    Ok(out)
}

/// What one call did.
#[derive(Debug, PartialEq)]
struct Outcome {
    result: Result<Vec<u8>, ApplyError>,
    fuel_used: u64,
    usage: Option<u64>,
    /// The FSM's keyspace after the call (apply: its writes, rolled back afterwards).
    keyspace: Vec<(Vec<u8>, Vec<u8>)>,
}

/// One backend with an LMDB env whose FSM keyspace holds a few pairs.
struct Rig {
    runtime: FsmRuntime,
    env: Env,
    db: Database<Bytes, Bytes>,
    seeded: u64,
}

const LIMITS: FsmLimits = FsmLimits {
    fuel: 200_000,
    memory_pages: 16,
    max_output_bytes: 4096,
    query_fuel: 200_000,
    storage_bytes: 1 << 20,
};

impl Rig {
    fn new(backend: Backend, dir: &Path) -> Self {
        let mut opts = EnvOpenOptions::new();
        opts.map_size(256 << 20).max_dbs(1);
        // SAFETY: a fresh directory, opened once.
        let env = unsafe { opts.open(dir) }.expect("env");
        let mut txn = env.write_txn().expect("txn");
        let db: Database<Bytes, Bytes> = env.create_database(&mut txn, Some("data")).expect("db");
        let mut seeded = 0;
        for (k, v) in [(&b"a"[..], &b"1"[..]), (b"b", &[2; 100]), (b"r", b"old")] {
            db.put(&mut txn, &[&PREFIX[..], k].concat(), v)
                .expect("put");
            seeded += (k.len() + v.len()) as u64;
        }
        txn.commit().expect("commit");
        let runtime = FsmRuntime::with_backend(backend).expect("runtime");
        Self {
            runtime,
            env,
            db,
            seeded,
        }
    }

    fn load(
        &self,
        id: ModuleId,
        bytes: &[u8],
    ) -> Result<std::sync::Arc<LoadedModule>, ModuleError> {
        self.runtime
            .load(id, || Ok(bytes.to_vec()))
            .expect("no node fault")
    }

    fn keyspace(&self, txn: &heed::RoTxn<'_>) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.db
            .prefix_iter(txn, &PREFIX)
            .expect("iter")
            .map(|kv| kv.map(|(k, v)| (k[PREFIX.len()..].to_vec(), v.to_vec())))
            .collect::<Result<_, _>>()
            .expect("read")
    }

    fn call(&self, module: &LoadedModule, entry: EntryPoint, input: &[u8]) -> Outcome {
        let ctx = EntryContext {
            index: 5,
            term: 1,
            timestamp_ms: 1_700_000_000_000,
            position: 0,
            is_query: entry == EntryPoint::Query,
        };
        let env = |kv| CallEnv {
            kv,
            ctx,
            limits: LIMITS,
            fsm: "differential",
            metering: Format::V2,
        };
        if entry == EntryPoint::Query {
            let txn = self.env.read_txn().expect("txn");
            let kv = KvTarget::Read {
                txn: &txn,
                db: self.db,
                prefix: PREFIX,
            };
            let out = self.runtime.call(module, entry, input, env(kv));
            let out = out.expect("no node fault");
            return Outcome {
                result: out.result,
                fuel_used: out.fuel_used,
                usage: out.usage,
                keyspace: self.keyspace(&txn),
            };
        }
        let mut txn = self.env.write_txn().expect("txn");
        let kv = KvTarget::Write {
            txn: &mut txn,
            db: self.db,
            prefix: PREFIX,
            usage: Usage {
                bytes: self.seeded,
                quota: Some(LIMITS.storage_bytes),
            },
        };
        let out = self.runtime.call(module, entry, input, env(kv));
        let out = out.expect("no node fault");
        let keyspace = self.keyspace(&txn);
        txn.abort();
        Outcome {
            result: out.result,
            fuel_used: out.fuel_used,
            usage: out.usage,
            keyspace,
        }
    }
}

/// Counts of what the cases did, printed at the end (so a config that stops producing
/// runnable modules is noticed).
#[derive(Debug, Default)]
struct Tally {
    modules: u32,
    /// Why modules were refused (both backends alike).
    refused: BTreeMap<String, u32>,
    /// How calls ended: `Ok`, or the error's kind (a trap's message).
    calls: BTreeMap<String, u32>,
}

impl Tally {
    fn call(&mut self, result: &Result<Vec<u8>, ApplyError>) {
        let kind = match result {
            Ok(_) => "Ok".to_string(),
            Err(ApplyError::Trap(t)) => t.clone(),
            Err(e) => format!("{e:?}")
                .split(['(', ' '])
                .next()
                .expect("split yields a first piece")
                .to_string(),
        };
        *self.calls.entry(kind).or_default() += 1;
    }
}

/// The module and inputs `data` makes: `None` if wasm-smith or the harness cannot use it.
fn generate(data: &[u8]) -> Option<(Vec<u8>, Vec<Vec<u8>>)> {
    let mut u = arbitrary::Unstructured::new(data);
    let disallow_traps = u.arbitrary::<bool>().ok()?;
    let generated = Module::new(smith_config(&shape(), disallow_traps), &mut u).ok()?;
    let module = with_harness(&generated.to_bytes())?;
    let inputs = (0..3)
        .map(|_| input(&mut u).unwrap_or_else(|_| vec![0; input_len()]))
        .collect();
    Some((module, inputs))
}

/// A trap of the native stack's bound (`max_wasm_stack`), which is reached at a depth that
/// depends on the backend's frame sizes. The module's own call-depth counter
/// (`ApplyError::CallDepth`, docs/abi.md) must always trap first.
const STACK_EXHAUSTED: &str = "wasm trap: call stack exhausted";

/// Runs one generated module on both rigs; `Err` on any difference.
fn compare(rigs: &[Rig; 2], data: &[u8], tally: &mut Tally) -> Result<(), TestCaseError> {
    let Some((bytes, inputs)) = generate(data) else {
        return Ok(());
    };
    let id = wraft_host::state::module_id(&bytes);
    let loaded = rigs.each_ref().map(|r| r.load(id, &bytes));
    tally.modules += 1;
    let result = (|| {
        let (native, pulley) = match &loaded {
            [Ok(n), Ok(p)] => (n, p),
            [Err(n), Err(p)] => {
                prop_assert_eq!(n, p, "refused differently");
                *tally.refused.entry(n.to_string()).or_default() += 1;
                return Ok(());
            }
            [n, p] => {
                return Err(TestCaseError::fail(format!(
                    "Cranelift loaded it: {}, Pulley: {}",
                    n.is_ok(),
                    p.is_ok()
                )));
            }
        };
        prop_assert_eq!(
            (native.fsm_version, native.capabilities),
            (pulley.fsm_version, pulley.capabilities)
        );
        for input in &inputs {
            for entry in [EntryPoint::Apply, EntryPoint::Query] {
                let n = rigs[0].call(native, entry, input);
                let p = rigs[1].call(pulley, entry, input);
                tally.call(&n.result);
                // The native stack's bound is reached at a depth that differs by backend:
                // the call-depth counter must stop every recursion well before it.
                let exhausted =
                    |o: &Outcome| o.result == Err(ApplyError::Trap(STACK_EXHAUSTED.into()));
                prop_assert!(
                    !exhausted(&n) && !exhausted(&p),
                    "{:?} with input {:02x?} reached the native stack's bound",
                    entry,
                    input
                );
                prop_assert_eq!(
                    &n,
                    &p,
                    "{:?} with input {:02x?}: Cranelift, then Pulley",
                    entry,
                    input
                );
            }
        }
        Ok(())
    })();
    for r in rigs {
        r.runtime.evict(&id).expect("evicted");
    }
    result
}

fn env_u64(var: &str) -> Option<u64> {
    std::env::var(var).ok().map(|v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{var}={v}: not a number"))
    })
}

#[test]
fn random_modules_run_alike_on_cranelift_and_pulley() {
    let cases = env_u64("WRAFT_DIFF_CASES").unwrap_or(64) as u32;
    // A fixed seed by default, so `make test` runs the same modules every time and a failure
    // replays exactly; `WRAFT_DIFF_SEED=random` explores.
    let seed = match std::env::var("WRAFT_DIFF_SEED").as_deref() {
        Ok("random") => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
        _ => env_u64("WRAFT_DIFF_SEED").unwrap_or(1),
    };
    let dirs = [
        tempfile::tempdir().expect("tmp"),
        tempfile::tempdir().expect("tmp"),
    ];
    let rigs = [
        Rig::new(Backend::Native, dirs[0].path()),
        Rig::new(Backend::Pulley, dirs[1].path()),
    ];
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let started = std::time::Instant::now();
    let tally = std::cell::RefCell::new(Tally::default());
    let outcome = runner.run(&proptest::collection::vec(any::<u8>(), 512..8192), |data| {
        compare(&rigs, &data, &mut tally.borrow_mut())
    });
    let tally = tally.into_inner();
    eprintln!(
        "seed {seed}: {cases} cases in {:?}: {tally:?}",
        started.elapsed()
    );
    if let Err(e) = outcome {
        if let TestError::Fail(_, data) = &e
            && let Some((module, _)) = generate(data)
        {
            let path = std::env::temp_dir().join(format!("wraft-differential-{seed}.wasm"));
            std::fs::write(&path, module).expect("write the module");
            eprintln!("the smallest failing module: {}", path.display());
        }
        panic!("Cranelift and Pulley differ (replay: WRAFT_DIFF_SEED={seed}): {e}");
    }
    let ok = tally.calls.get("Ok").copied().unwrap_or(0);
    assert!(
        tally.modules > 2 * tally.refused.values().sum::<u32>() && ok * 10 > cases,
        "most modules load and some calls succeed: {tally:?}"
    );
}
