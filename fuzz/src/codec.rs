//! The example FSMs' JSON codecs, as a node runs them for HTTP bodies and `Payload::Json`
//! (`StateStore::codec`: no keyspace, the FSM's query fuel plus fuel per input byte) and as
//! the same Rust types decode natively, to compare the two.

use std::sync::{Arc, OnceLock};

use serde::{Serialize, de::DeserializeOwned};
use wraft_core::abi::EntryContext;
use wraft_core::{ApplyError, Format, FsmLimits};
use wraft_guest::Fsm;
use wraft_host::runtime::{CallEnv, EntryPoint, FsmRuntime, KvTarget, LoadedModule};
use wraft_host::state::CODEC_FUEL_PER_BYTE;

/// The four codec entry points, in selector order.
pub const ENTRIES: [EntryPoint; 4] = [
    EntryPoint::CommandFromJson,
    EntryPoint::QueryFromJson,
    EntryPoint::OutputToJson,
    EntryPoint::QueryOutputToJson,
];

/// Largest output a codec call may produce (a node's `--max-output` is of this order).
pub const MAX_OUTPUT: u32 = 1 << 20;

/// One example FSM: its compiled module and its types compiled natively.
pub struct Example {
    /// Its crate's name.
    pub name: &'static str,
    module: Arc<LoadedModule>,
    native: fn(EntryPoint, &[u8]) -> Option<Vec<u8>>,
    outputs: fn(EntryPoint, &[u8]) -> Option<Vec<u8>>,
}

impl std::fmt::Debug for Example {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Example").field("name", &self.name).finish()
    }
}

/// The examples, compiled on first use (a few seconds), with the runtime that runs them.
pub fn examples() -> &'static (FsmRuntime, Vec<Example>) {
    static EXAMPLES: OnceLock<(FsmRuntime, Vec<Example>)> = OnceLock::new();
    EXAMPLES.get_or_init(|| {
        let runtime = FsmRuntime::new().expect("a wasm runtime");
        let load = |name, wasm: &'static [u8], (native, outputs)| {
            let id = wraft_host::state::module_id(wasm);
            let module = runtime
                .load(id, || Ok(wasm.to_vec()))
                .expect("no node fault")
                .expect("the example module is valid");
            Example {
                name,
                module,
                native,
                outputs,
            }
        };
        let examples = vec![
            load(
                "latest-payload",
                wraft_fsm_artifacts::LATEST_PAYLOAD,
                (
                    native::<latest_payload::LatestPayload>,
                    outputs::<latest_payload::LatestPayload>,
                ),
            ),
            load(
                "file-manifest",
                wraft_fsm_artifacts::FILE_MANIFEST,
                (
                    native::<file_manifest::FileManifest>,
                    outputs::<file_manifest::FileManifest>,
                ),
            ),
            load(
                "airspace-store",
                wraft_fsm_artifacts::AIRSPACE_STORE,
                (
                    native::<airspace_store::AirspaceStore>,
                    outputs::<airspace_store::AirspaceStore>,
                ),
            ),
        ];
        (runtime, examples)
    })
}

impl Example {
    /// Runs `entry` on `input` in wasm as a node's codec call does.
    pub fn call(&self, runtime: &FsmRuntime, entry: EntryPoint, input: &[u8]) -> CodecOutcome {
        let base = FsmLimits::default();
        let limits = FsmLimits {
            fuel: base
                .query_fuel
                .saturating_add(CODEC_FUEL_PER_BYTE.saturating_mul(input.len() as u64)),
            max_output_bytes: MAX_OUTPUT,
            ..base
        };
        let env = CallEnv {
            kv: KvTarget::None,
            ctx: EntryContext::default(),
            limits,
            fsm: self.name,
            metering: Format::V2,
        };
        let outcome = runtime
            .call(&self.module, entry, input, env)
            .expect("a codec call is never a node fault");
        CodecOutcome {
            wasm: outcome.result,
            native: (self.native)(entry, input),
        }
    }
}

impl Example {
    /// For an output codec (`OutputToJson`, `QueryOutputToJson`), the postcard bytes the
    /// FSM would produce for the output `json` describes; `None` for other entry points.
    pub fn output_from_json(&self, entry: EntryPoint, json: &[u8]) -> Option<Vec<u8>> {
        (self.outputs)(entry, json)
    }
}

/// What one codec call gave in wasm and natively.
#[derive(Debug)]
pub struct CodecOutcome {
    /// The module's answer.
    pub wasm: Result<Vec<u8>, ApplyError>,
    /// The same types' answer compiled natively (`None`: the input does not decode).
    pub native: Option<Vec<u8>>,
}

fn native<F: Fsm>(entry: EntryPoint, input: &[u8]) -> Option<Vec<u8>> {
    match entry {
        EntryPoint::CommandFromJson => from_json::<F::Command>(input),
        EntryPoint::QueryFromJson => from_json::<F::Query>(input),
        EntryPoint::OutputToJson => to_json::<F::Output>(input),
        EntryPoint::QueryOutputToJson => to_json::<F::QueryOutput>(input),
        other => unreachable!("{other:?} is not a codec"),
    }
}

fn outputs<F: Fsm>(entry: EntryPoint, json: &[u8]) -> Option<Vec<u8>> {
    match entry {
        EntryPoint::OutputToJson => from_json::<F::Output>(json),
        EntryPoint::QueryOutputToJson => from_json::<F::QueryOutput>(json),
        _ => None,
    }
}

fn from_json<T: Serialize + DeserializeOwned>(json: &[u8]) -> Option<Vec<u8>> {
    let value: T = serde_json::from_slice(json).ok()?;
    Some(postcard::to_allocvec(&value).expect("a decoded value encodes"))
}

fn to_json<T: Serialize + DeserializeOwned>(bytes: &[u8]) -> Option<Vec<u8>> {
    let value: T = postcard::from_bytes(bytes).ok()?;
    serde_json::to_vec(&value).ok()
}
