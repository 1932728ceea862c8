//! Module validation: everything checked before a module may enter the log, and again (the
//! same checks, so the same verdict) when a replica applies the deploy.

use wasmtime::{Engine, ExternType, FuncType, Module, ValType};
use wraft_core::abi::{self, FuncSig};

use super::RuntimeError;

/// Largest module accepted, in bytes.
pub const MAX_MODULE_BYTES: usize = 32 << 20;

/// Why a module was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModuleError {
    /// Over [`MAX_MODULE_BYTES`].
    #[error("module is {len} bytes; the limit is {limit}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The limit.
        limit: usize,
    },
    /// Not valid WebAssembly, or uses a feature the deterministic engine disables.
    #[error("not a valid core wasm module for wraft: {0}")]
    Compile(String),
    /// Imports something outside the `wraft` module (e.g. WASI).
    #[error("imports {module}::{name}; only imports from \"wraft\" are allowed (no WASI)")]
    ForeignImport {
        /// Import module.
        module: String,
        /// Import name.
        name: String,
    },
    /// Imports a `wraft` function that does not exist, or with the wrong type.
    #[error("imports wraft::{name} {problem}")]
    BadImport {
        /// Import name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Lacks a required export, or has one with the wrong type.
    #[error("export {name} {problem}")]
    BadExport {
        /// Export name.
        name: String,
        /// What is wrong.
        problem: String,
    },
    /// Over a bound on its shape (functions, code, locals, nesting, data, tables, ...),
    /// checked before compiling so that no module takes long or much memory to compile.
    #[error("module has {found} {what}; the limit is {limit} (docs/abi.md, \"Module shape\")")]
    Shape {
        /// What was counted.
        what: String,
        /// How many the module has.
        found: u64,
        /// The bound.
        limit: u64,
    },
    /// Built for another ABI version.
    #[error("module was built for ABI version {found}; this host implements version {expected}")]
    AbiVersion {
        /// What the module reports.
        found: i64,
        /// What the host implements.
        expected: u32,
    },
}

/// Which optional entry points a module exports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// `wraft_fsm_version`
    pub fsm_version: bool,
    /// `wraft_init`
    pub init: bool,
    /// `wraft_migrate`
    pub migrate: bool,
    /// All four JSON codecs.
    pub json: bool,
}

/// Whether `bytes` could be a module at all (size and wasm header), before any compile.
pub fn looks_like_wasm(bytes: &[u8]) -> bool {
    bytes.len() <= MAX_MODULE_BYTES && bytes.starts_with(b"\0asm\x01\0\0\0")
}

/// Compiles `bytes` and checks its imports and exports against the ABI. The ABI version
/// export is checked by the runtime when it first instantiates the module.
///
/// `Err` is a fault of this node, never the module's: a module that is valid WebAssembly
/// but that this node failed to compile (out of memory for the code, a code generator
/// limit that another backend may not have). Recording that as the module's refusal would
/// make this replica disagree with the others, which compiled it.
pub fn validate(
    engine: &Engine,
    bytes: &[u8],
) -> Result<Result<(Module, Capabilities), ModuleError>, RuntimeError> {
    let refused = |why| Ok(Err(why));
    if bytes.len() > MAX_MODULE_BYTES {
        return refused(ModuleError::TooLarge {
            len: bytes.len(),
            limit: MAX_MODULE_BYTES,
        });
    }
    if let Err(e) = super::shape::check(bytes, &super::shape::SHAPE) {
        return refused(e);
    }
    let rewritten = match super::depth::instrument(bytes) {
        Ok(r) => r,
        Err(e) => return refused(e),
    };
    let module = match Module::new(engine, &rewritten) {
        Ok(m) => m,
        // Validation alone is what every node decides alike (the engines' features are the
        // same everywhere); run only after a failure, so a compile pays for it never.
        Err(failed) => {
            return match Module::validate(engine, &rewritten) {
                Err(invalid) => refused(ModuleError::Compile(format!("{invalid:#}"))),
                Ok(()) => Err(RuntimeError::Fault(format!(
                    "this node could not compile a valid module: {failed:#}"
                ))),
            };
        }
    };
    Ok(check(&module).map(|caps| (module, caps)))
}

/// Checks a compiled module's imports and exports against the ABI (also run on modules
/// loaded from the compile cache).
pub fn check(module: &Module) -> Result<Capabilities, ModuleError> {
    for import in module.imports() {
        if import.module() != abi::IMPORT_MODULE {
            return Err(ModuleError::ForeignImport {
                module: import.module().into(),
                name: import.name().into(),
            });
        }
        let bad = |problem: &str| ModuleError::BadImport {
            name: import.name().into(),
            problem: problem.into(),
        };
        let Some(sig) = abi::IMPORTS.iter().find(|s| s.name == import.name()) else {
            return Err(bad("which the host does not provide"));
        };
        match import.ty() {
            ExternType::Func(f) if matches_sig(&f, sig) => {}
            ExternType::Func(f) => {
                return Err(bad(&format!("with type {f}; expected {}", show(sig))));
            }
            _ => return Err(bad("as a non-function")),
        }
    }

    let export_problem = |name: &str| -> Option<String> {
        match module.get_export(name) {
            None => Some("is missing".into()),
            Some(ExternType::Func(f)) => {
                let sig = abi::REQUIRED_EXPORTS
                    .iter()
                    .chain(abi::OPTIONAL_EXPORTS)
                    .find(|s| s.name == name)?;
                (!matches_sig(&f, sig)).then(|| format!("has type {f}; expected {}", show(sig)))
            }
            Some(_) => Some("is not a function".into()),
        }
    };
    match module.get_export(abi::export::MEMORY) {
        Some(ExternType::Memory(_)) => {}
        _ => {
            return Err(ModuleError::BadExport {
                name: abi::export::MEMORY.into(),
                problem: "is missing (a memory named \"memory\" is required)".into(),
            });
        }
    }
    for sig in abi::REQUIRED_EXPORTS {
        if let Some(problem) = export_problem(sig.name) {
            return Err(ModuleError::BadExport {
                name: sig.name.into(),
                problem,
            });
        }
    }
    let present = |name: &str| -> Result<bool, ModuleError> {
        if module.get_export(name).is_none() {
            return Ok(false);
        }
        match export_problem(name) {
            Some(problem) => Err(ModuleError::BadExport {
                name: name.into(),
                problem,
            }),
            None => Ok(true),
        }
    };
    use abi::export as e;
    let caps = Capabilities {
        fsm_version: present(e::FSM_VERSION)?,
        init: present(e::INIT)?,
        migrate: present(e::MIGRATE)?,
        json: present(e::COMMAND_FROM_JSON)?
            & present(e::OUTPUT_TO_JSON)?
            & present(e::QUERY_FROM_JSON)?
            & present(e::QUERY_OUTPUT_TO_JSON)?,
    };
    Ok(caps)
}

fn to_wasm(t: abi::ValType) -> ValType {
    match t {
        abi::ValType::I32 => ValType::I32,
        abi::ValType::I64 => ValType::I64,
    }
}

fn matches_sig(f: &FuncType, sig: &FuncSig) -> bool {
    let same = |a: &ValType, b: &abi::ValType| ValType::eq(a, &to_wasm(*b));
    f.params().len() == sig.params.len()
        && f.results().len() == sig.results.len()
        && f.params().zip(sig.params).all(|(a, b)| same(&a, b))
        && f.results().zip(sig.results).all(|(a, b)| same(&a, b))
}

fn show(sig: &FuncSig) -> String {
    format!("(func (param {:?}) (result {:?}))", sig.params, sig.results)
}
