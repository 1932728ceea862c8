//! The exports the host calls, found by name once when a module is loaded and called by
//! index in each fresh instance. Per call, five name lookups and two typed-function checks
//! (each a type-registry lookup) cost ~0.7 µs of a ~4 µs call (`cargo bench -p wraft-host
//! --bench apply`), so both are done here once per module instead.

use wasmtime::{
    Extern, ExternType, Func, Global, Instance, Memory, Module, ModuleExport, Store, ValRaw,
    ValType,
};
use wraft_core::abi;

use super::host::CallState;
use super::{EntryPoint, ModuleError, depth};

/// Most parameters an export the host calls takes (`(ptr, len)`).
const MAX_PARAMS: usize = 2;

/// A function export of type `(i32 × params) -> i32`, checked against its module's type
/// section when the module was loaded.
#[derive(Clone, Copy)]
pub(super) struct GuestFn {
    at: ModuleExport,
    params: usize,
}

/// A loaded module's exports the host uses.
pub(super) struct Exports {
    memory: Option<ModuleExport>,
    depth: Option<ModuleExport>,
    pub(super) alloc: Option<GuestFn>,
    entries: [Option<GuestFn>; EntryPoint::EXPORTS.len()],
}

impl Exports {
    /// Finds the exports of `module`. A function export the host would call with another
    /// type is refused (validation has refused it already; this keeps [`GuestFn::call`]'s
    /// safety argument in this file).
    pub(super) fn of(module: &Module) -> Result<Self, ModuleError> {
        let mut entries = [None; EntryPoint::EXPORTS.len()];
        for entry in EntryPoint::EXPORTS {
            entries[entry.slot()] = GuestFn::find(module, entry.export(), entry.params())?;
        }
        Ok(Self {
            memory: module.get_export_index(abi::export::MEMORY),
            depth: module.get_export_index(depth::DEPTH_EXPORT),
            alloc: GuestFn::find(module, abi::export::ALLOC, 1)?,
            entries,
        })
    }

    /// The export `entry` runs, if the module has it.
    pub(super) fn entry(&self, entry: EntryPoint) -> Option<GuestFn> {
        self.entries[entry.slot()]
    }

    /// The instance's linear memory.
    pub(super) fn memory(&self, store: &mut Store<CallState>, i: &Instance) -> Option<Memory> {
        find(store, i, self.memory.as_ref()).and_then(Extern::into_memory)
    }

    /// The instance's call-depth counter (see `depth`).
    pub(super) fn depth(&self, store: &mut Store<CallState>, i: &Instance) -> Option<Global> {
        find(store, i, self.depth.as_ref()).and_then(Extern::into_global)
    }
}

impl GuestFn {
    /// The export `name` of `module` if it has one, checked to be `(i32 × params) -> i32`.
    fn find(module: &Module, name: &str, params: usize) -> Result<Option<Self>, ModuleError> {
        assert!(
            params <= MAX_PARAMS,
            "the host calls no export with more than {MAX_PARAMS} parameters"
        );
        let Some(ty) = module.get_export(name) else {
            return Ok(None);
        };
        let fits = match &ty {
            ExternType::Func(f) => {
                f.params().len() == params
                    && f.params().all(|p| matches!(p, ValType::I32))
                    && f.results().len() == 1
                    && f.results().all(|r| matches!(r, ValType::I32))
            }
            _ => false,
        };
        if !fits {
            return Err(ModuleError::BadExport {
                name: name.into(),
                problem: format!("is not a function of {params} i32 parameters returning i32"),
            });
        }
        let at = module
            .get_export_index(name)
            .expect("an export the module's type section lists has an index");
        Ok(Some(Self { at, params }))
    }

    /// Calls this export in `instance` (an instance of the module it was found in) with
    /// `args`, one per parameter.
    pub(super) fn call(
        self,
        store: &mut Store<CallState>,
        instance: &Instance,
        args: &[i32],
    ) -> wasmtime::Result<i32> {
        let func: Func = find(store, instance, Some(&self.at))
            .and_then(Extern::into_func)
            .ok_or_else(|| wasmtime::Error::msg("a checked export is missing from its instance"))?;
        if args.len() != self.params {
            return Err(wasmtime::Error::msg(format!(
                "an export of {} parameters called with {}",
                self.params,
                args.len()
            )));
        }
        let mut slots = [ValRaw::i32(0); MAX_PARAMS];
        for (slot, arg) in slots.iter_mut().zip(args) {
            *slot = ValRaw::i32(*arg);
        }
        // SAFETY: `func` is the export `self.at` of this instance's module (`find` returns
        // `None` for another module's index), whose type `GuestFn::find` checked to be
        // `(i32 × self.params) -> i32` with `self.params <= MAX_PARAMS`; `slots` holds
        // `args.len() == self.params` i32 parameters and room for the one i32 result. No
        // reference types are passed, and the call is synchronous (no `call_async`).
        unsafe { func.call_unchecked(&mut *store, &mut slots[..] as *mut [ValRaw]) }?;
        Ok(slots[0].get_i32())
    }
}

/// The export `at` of `instance`, or `None` if absent or `at` is another module's.
fn find(
    store: &mut Store<CallState>,
    instance: &Instance,
    at: Option<&ModuleExport>,
) -> Option<Extern> {
    instance.get_module_export(&mut *store, at?)
}
