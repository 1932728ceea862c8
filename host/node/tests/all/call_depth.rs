//! The call-depth limit lands at the same depth on every backend: a module recursing to a
//! depth its command chooses, swept around the cut-off, gives the same outcome on Native and
//! on Pulley at every depth, and the cut-off is where the depth counter puts it, whatever the
//! build (wasmtime's own stack limit, which differs by CPU and build, is never reached first,
//! even by functions with the largest frames the shape bounds allow).

use wraft_core::{Apply, ApplyError, Command, EntryResponse, FsmLimits, FsmName};
use wraft_host::runtime::{Backend, DEPTH_LIMIT, FRAME_UNITS, FsmRuntime};
use wraft_host::state::{AppliedPosition, Committed, StateStore};

/// A module whose `apply` recurses to the depth in its input's first four bytes (LE), through
/// a function with `locals` locals of `ty` (all used, so all take frame space). Returns the
/// module and the cost the counter charges per frame of the recursion.
fn recursive(locals: u32, ty: &str) -> (Vec<u8>, u32) {
    let (zero, add) = match ty {
        "v128" => ("(v128.const i64x2 0 0)", "i64x2.add"),
        _ => ("(i64.const 0)", "i64.add"),
    };
    let mut touch = String::new();
    for i in 0..locals {
        touch.push_str(&format!(
            "(local.set {l} ({add} (local.get {l}) {zero}))",
            l = i + 1
        ));
    }
    let decls = format!(" (local {ty})").repeat(locals as usize);
    let wat = format!(
        r#"(module
            (memory (export "memory") 1)
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            (func $down (param i32) {decls}
                {touch}
                (if (local.get 0) (then (call $down (i32.sub (local.get 0) (i32.const 1))))))
            (func (export "wraft_apply") (param i32 i32) (result i32)
                (call $down (i32.load (local.get 0)))
                i32.const 0))"#
    );
    // $down: its parameter, its locals, and at most two operands (the add, or the call's
    // argument) on its stack.
    let cost = FRAME_UNITS + 1 + locals + 2;
    (wat::parse_str(wat).expect("wat"), cost)
}

/// The outcome of recursing `depth` calls deep in a fresh store on `backend`.
fn outcome(module: &[u8], backend: Backend, depth: u32) -> EntryResponse {
    let dir = tempfile::tempdir().expect("tmp");
    let rt = std::sync::Arc::new(FsmRuntime::with_backend(backend).expect("runtime"));
    let store = StateStore::open(dir.path(), rt).expect("store");
    let id = wraft_host::state::module_id(module);
    let entries = [
        Command::DeployModule {
            module_id: id,
            bytes: module.to_vec(),
        },
        Command::CreateFsm {
            fsm: FsmName::new("d").expect("name"),
            module_id: id,
            limits: FsmLimits {
                fuel: 2_000_000_000,
                ..FsmLimits::default()
            },
        },
        Command::Apply(Apply {
            fsm: FsmName::new("d").expect("name"),
            payload: depth.to_le_bytes().to_vec(),
        }),
    ]
    .map(|c| wraft_core::LogEntry::new(1, c));
    let committed: Vec<Committed<'_>> = entries
        .iter()
        .enumerate()
        .map(|(i, e)| Committed {
            position: AppliedPosition {
                index: i as u64 + 1,
                term: 1,
            },
            entry: Some(e),
        })
        .collect();
    let mut responses = store.apply(&committed, None).expect("no node fault");
    assert_eq!(responses[0], EntryResponse::Done, "deploy");
    assert_eq!(responses[1], EntryResponse::Done, "create");
    responses.remove(2)
}

#[test]
fn the_call_depth_cut_off_is_the_same_on_every_backend() {
    for (locals, ty) in [(0, "i64"), (200, "i64"), (1000, "v128"), (2000, "i64")] {
        let (module, cost) = recursive(locals, ty);
        // The counter holds `wraft_apply`'s frame and `depth + 1` frames of $down: the
        // deepest chain it allows, found by the sweep below.
        let guess = DEPTH_LIMIT / cost;
        let mut cut_off = None;
        for depth in guess.saturating_sub(3)..=guess + 2 {
            let native = outcome(&module, Backend::Native, depth);
            let pulley = outcome(&module, Backend::Pulley, depth);
            assert_eq!(native, pulley, "{locals} {ty} locals, depth {depth}");
            match native {
                EntryResponse::Output(_) => {
                    assert!(cut_off.is_none(), "a deeper call succeeded after a refusal");
                }
                EntryResponse::Failed(ApplyError::CallDepth { limit }) => {
                    assert_eq!(limit, DEPTH_LIMIT);
                    cut_off.get_or_insert(depth);
                }
                other => panic!("{locals} {ty} locals, depth {depth}: {other:?}"),
            }
        }
        let cut_off = cut_off.expect("the sweep reaches the limit");
        eprintln!("{locals} {ty} locals: frames of {cost} units, refused from depth {cut_off}");
        // The cut-off is arithmetic, not a property of the machine: whatever `wraft_apply`
        // costs (a constant of the module), the counter refuses the first chain past it.
        let left = i64::from(DEPTH_LIMIT) - i64::from(cost) * i64::from(cut_off + 1);
        assert!(
            (-i64::from(cost)..64).contains(&left),
            "cut-off {cut_off} of frames of {cost} is not where the counter puts it ({left})"
        );
    }
}
