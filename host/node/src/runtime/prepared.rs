//! Modules compiled ahead of their deploy entry, and the bound on those never deployed.
//!
//! A leader compiles a module to validate it before proposing its deploy, and sends it to
//! its members to compile at the same time (so the entry, once committed, applies from the
//! cache on every node instead of compiling on each in turn). A deploy whose proposal then
//! fails (no leader, the leader moved) leaves its module compiled but never deployed, in
//! memory and in the compile cache on disk. At most [`MAX_PREPARED`] such modules are kept:
//! preparing one more evicts the oldest, which costs only a compile if it is deployed after
//! all.

use std::collections::VecDeque;

use wraft_core::ModuleId;

/// Modules compiled ahead of a deploy and not yet deployed, kept at most.
pub const MAX_PREPARED: usize = 4;

/// The modules compiled ahead of their deploy entry, oldest first.
#[derive(Debug, Default)]
pub(super) struct Prepared {
    ids: VecDeque<ModuleId>,
}

impl Prepared {
    /// Records `id` as compiled ahead of its deploy; returns the module to evict if that
    /// leaves more than [`MAX_PREPARED`].
    pub(super) fn record(&mut self, id: ModuleId) -> Option<ModuleId> {
        if self.ids.contains(&id) {
            return None;
        }
        self.ids.push_back(id);
        if self.ids.len() > MAX_PREPARED {
            self.ids.pop_front()
        } else {
            None
        }
    }

    /// Forgets `id`: it was deployed (and stays compiled for as long as the cluster keeps
    /// it), or its compile failed.
    pub(super) fn forget(&mut self, id: &ModuleId) {
        self.ids.retain(|p| p != id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> ModuleId {
        ModuleId([n; 32])
    }

    /// The oldest module never deployed is evicted by the one past the bound; a deployed
    /// module leaves the list, and one recorded twice counts once.
    #[test]
    fn the_oldest_undeployed_module_makes_room() {
        let mut p = Prepared::default();
        for n in 0..MAX_PREPARED as u8 {
            assert_eq!(p.record(id(n)), None);
        }
        assert_eq!(p.record(id(1)), None, "recorded again: still one");
        p.forget(&id(0));
        assert_eq!(p.record(id(10)), None, "a deployed module made room");
        assert_eq!(p.record(id(11)), Some(id(1)), "the oldest undeployed goes");
        assert_eq!(p.record(id(12)), Some(id(2)));
    }

    /// A minimal FSM module, distinct for each `n`.
    fn module(n: u8) -> Vec<u8> {
        wat::parse_str(format!(
            r#"(module
                (memory (export "memory") 1)
                (global i32 (i32.const {n}))
                (func (export "wraft_abi_version") (result i32) i32.const 1)
                (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
                (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
                (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#
        ))
        .expect("wat")
    }

    /// In the runtime: a module prepared and then deployed stays compiled however many are
    /// prepared after it; one never deployed is evicted once [`MAX_PREPARED`] newer ones
    /// are, so loading it compiles it again; one that fails to compile is not counted.
    #[test]
    fn a_runtime_keeps_what_was_deployed_and_evicts_what_never_was() {
        let rt = super::super::FsmRuntime::new().expect("runtime");
        let load = |n: u8| {
            rt.load(id(n), || Ok(module(n)))
                .expect("no fault")
                .expect("valid");
        };
        rt.prepare(id(0), &module(0))
            .expect("no fault")
            .expect("valid");
        load(0);
        rt.deployed(&id(0));
        rt.prepare(id(1), &module(1))
            .expect("no fault")
            .expect("valid");
        rt.prepare(id(99), b"not wasm")
            .expect("no fault")
            .expect_err("invalid");
        let prepare = |n: u8| {
            rt.prepare(id(n), &module(n))
                .expect("no fault")
                .expect("valid");
        };
        for n in 2..=MAX_PREPARED as u8 {
            prepare(n);
        }
        let compiled = rt.compilations();
        load(1);
        assert_eq!(
            rt.compilations(),
            compiled,
            "the failed compile was counted"
        );
        prepare(MAX_PREPARED as u8 + 1);
        let compiled = rt.compilations();
        load(0);
        assert_eq!(
            rt.compilations(),
            compiled,
            "the deployed module was evicted"
        );
        load(2);
        assert_eq!(
            rt.compilations(),
            compiled,
            "a module within the bound was evicted"
        );
        load(1);
        assert_eq!(
            rt.compilations(),
            compiled + 1,
            "the oldest module never deployed was kept past the bound"
        );
    }
}
