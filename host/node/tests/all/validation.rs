//! Modules that break the ABI are refused at deploy with a clear error, before they can enter
//! the log.

use wraft_host::runtime::{FsmRuntime, ModuleError};

fn rt() -> FsmRuntime {
    FsmRuntime::new().expect("runtime")
}

/// A minimal ABI-conforming module in WAT, with `extra` spliced in.
pub fn module(extra: &str, version: i32) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            {extra}
            (memory (export "memory") 1)
            (func (export "wraft_abi_version") (result i32) i32.const {version})
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#
    ))
    .expect("valid wat")
}

#[test]
fn a_minimal_module_is_accepted() {
    assert!(rt().validate(&module("", 1)).is_ok());
}

#[test]
fn wasi_imports_are_refused() {
    let m = module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        1,
    );
    let e = rt().validate(&m).expect_err("wasi");
    assert!(
        matches!(e, ModuleError::ForeignImport { ref module, .. } if module == "wasi_snapshot_preview1"),
        "{e}"
    );
    assert!(e.to_string().contains("no WASI"), "{e}");
}

#[test]
fn unknown_or_mistyped_wraft_imports_are_refused() {
    let e = rt()
        .validate(&module(r#"(import "wraft" "exec" (func))"#, 1))
        .expect_err("unknown");
    assert!(
        matches!(e, ModuleError::BadImport { ref name, .. } if name == "exec"),
        "{e}"
    );
    let e = rt()
        .validate(&module(
            r#"(import "wraft" "kv_get" (func (param i64) (result i32)))"#,
            1,
        ))
        .expect_err("type");
    assert!(
        matches!(e, ModuleError::BadImport { ref name, .. } if name == "kv_get"),
        "{e}"
    );
}

#[test]
fn missing_or_mistyped_exports_are_refused() {
    let m = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "wraft_abi_version") (result i32) i32.const 1))"#).expect("wat");
    let e = rt().validate(&m).expect_err("missing");
    assert!(
        matches!(e, ModuleError::BadExport { ref name, .. } if name == "wraft_alloc"),
        "{e}"
    );
    let m = module(
        r#"(func (export "wraft_migrate") (param i64) (result i32) i32.const 0)"#,
        1,
    );
    let e = rt().validate(&m).expect_err("mistyped optional");
    assert!(
        matches!(e, ModuleError::BadExport { ref name, .. } if name == "wraft_migrate"),
        "{e}"
    );
    let m = wat::parse_str(
        r#"(module
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 0)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .expect("wat");
    let e = rt().validate(&m).expect_err("no memory");
    assert!(
        matches!(e, ModuleError::BadExport { ref name, .. } if name == "memory"),
        "{e}"
    );
}

#[test]
fn another_abi_version_is_refused() {
    let e = rt().validate(&module("", 2)).expect_err("version");
    assert_eq!(
        e,
        ModuleError::AbiVersion {
            found: 2,
            expected: 1
        }
    );
}

#[test]
fn garbage_and_oversized_modules_are_refused() {
    assert!(matches!(
        rt().validate(b"not wasm at all"),
        Err(ModuleError::Compile(_))
    ));
    let big = vec![0u8; wraft_host::runtime::MAX_MODULE_BYTES + 1];
    assert!(matches!(
        rt().validate(&big),
        Err(ModuleError::TooLarge { .. })
    ));
}

#[test]
fn threads_are_refused() {
    let m = wat::parse_str(
        r#"(module
            (memory (export "memory") 1 1 shared)
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 0)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .expect("wat");
    assert!(matches!(rt().validate(&m), Err(ModuleError::Compile(_))));
}

#[test]
fn a_start_function_that_never_returns_is_refused() {
    let m = module(r#"(func $spin (loop $l (br $l))) (start $spin)"#, 1);
    let e = rt().validate(&m).expect_err("spins");
    assert!(e.to_string().contains("fuel"), "{e}");
}

#[test]
fn a_raw_global_counter_cannot_carry_state_across_entries() {
    // Hand-written module: apply increments a mutable global and outputs it as one byte.
    let m = wat::parse_str(
        r#"(module
            (import "wraft" "set_output" (func $out (param i32 i32)))
            (memory (export "memory") 1)
            (global $n (mut i32) (i32.const 0))
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32)
                (global.set $n (i32.add (global.get $n) (i32.const 1)))
                (i32.store8 (i32.const 0) (global.get $n))
                (call $out (i32.const 0) (i32.const 1))
                i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .expect("wat");
    let f = crate::common::Fixture::new(&m, "g", wraft_core::FsmLimits::default());
    for _ in 0..3 {
        let cmd = wraft_core::Command::Apply(wraft_core::Apply {
            fsm: crate::common::name("g"),
            payload: vec![],
        });
        assert_eq!(
            f.node.propose(cmd).expect("no fault"),
            wraft_core::EntryResponse::Output(vec![1])
        );
    }
}

#[test]
fn an_initial_memory_over_the_fsm_cap_fails_at_apply() {
    let m = wat::parse_str(
        r#"(module
            (memory (export "memory") 100)
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#,
    )
    .expect("wat");
    let limits = wraft_core::FsmLimits {
        memory_pages: 10,
        ..Default::default()
    };
    let f = crate::common::Fixture::new(&m, "big", limits);
    let cmd = wraft_core::Command::Apply(wraft_core::Apply {
        fsm: crate::common::name("big"),
        payload: vec![],
    });
    assert_eq!(
        f.node.propose(cmd).expect("no fault"),
        wraft_core::EntryResponse::Failed(wraft_core::ApplyError::MemoryLimit { pages: 10 })
    );
}
