//! Modules that break the ABI are refused at deploy with a clear error, before they can enter
//! the log.

use wraft_host::runtime::{FsmRuntime, ModuleError};

fn rt() -> FsmRuntime {
    FsmRuntime::new().expect("runtime")
}

/// A fresh runtime's verdict on `bytes` (a fault of the node fails the test).
fn validate(bytes: &[u8]) -> Result<wraft_host::runtime::Capabilities, ModuleError> {
    rt().validate(bytes).expect("no fault")
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
    assert!(validate(&module("", 1)).is_ok());
}

#[test]
fn wasi_imports_are_refused() {
    let m = module(
        r#"(import "wasi_snapshot_preview1" "fd_write" (func (param i32 i32 i32 i32) (result i32)))"#,
        1,
    );
    let e = validate(&m).expect_err("wasi");
    assert!(
        matches!(e, ModuleError::ForeignImport { ref module, .. } if module == "wasi_snapshot_preview1"),
        "{e}"
    );
    assert!(e.to_string().contains("no WASI"), "{e}");
}

#[test]
fn unknown_or_mistyped_wraft_imports_are_refused() {
    let e = validate(&module(r#"(import "wraft" "exec" (func))"#, 1)).expect_err("unknown");
    assert!(
        matches!(e, ModuleError::BadImport { ref name, .. } if name == "exec"),
        "{e}"
    );
    let e = validate(&module(
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
    let e = validate(&m).expect_err("missing");
    assert!(
        matches!(e, ModuleError::BadExport { ref name, .. } if name == "wraft_alloc"),
        "{e}"
    );
    let m = module(
        r#"(func (export "wraft_migrate") (param i64) (result i32) i32.const 0)"#,
        1,
    );
    let e = validate(&m).expect_err("mistyped optional");
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
    let e = validate(&m).expect_err("no memory");
    assert!(
        matches!(e, ModuleError::BadExport { ref name, .. } if name == "memory"),
        "{e}"
    );
}

#[test]
fn another_abi_version_is_refused() {
    let e = validate(&module("", 2)).expect_err("version");
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
        validate(b"not wasm at all"),
        Err(ModuleError::Compile(_))
    ));
    let big = vec![0u8; wraft_host::runtime::MAX_MODULE_BYTES + 1];
    assert!(matches!(validate(&big), Err(ModuleError::TooLarge { .. })));
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
    assert!(matches!(validate(&m), Err(ModuleError::Compile(_))));
}

#[test]
fn a_start_function_that_never_returns_is_refused() {
    let m = module(r#"(func $spin (loop $l (br $l))) (start $spin)"#, 1);
    let e = validate(&m).expect_err("spins");
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

/// A module over each bound of its shape is refused before it is compiled, with an error that
/// names the bound; the same module within the bound is accepted.
#[test]
fn modules_past_a_shape_bound_are_refused_with_the_bound_named() {
    use wraft_host::runtime::SHAPE;
    let func = |body: &str| format!("(func {body})");
    let locals = |n: u32| func(&" (local i32)".repeat(n as usize));
    let nested = |n: u32| {
        func(&format!(
            "{}{}",
            "(block ".repeat(n as usize),
            ")".repeat(n as usize)
        ))
    };
    let table = |n: u32| {
        func(&format!(
            "(param i32) (block (br_table{} (local.get 0)))",
            " 0".repeat(n as usize)
        ))
    };
    let globals = |n: u32| "(global i32 (i32.const 0))".repeat(n as usize);
    let functions = |n: u32| "(func)".repeat(n as usize - 4);
    let body_of = |bytes: u32| func(&"(drop (i32.const 0))".repeat(bytes as usize / 3));
    let cases: Vec<(&str, String, String)> = vec![
        ("locals", locals(SHAPE.locals), locals(SHAPE.locals + 1)),
        (
            "blocks open at once",
            nested(SHAPE.nesting),
            nested(SHAPE.nesting + 1),
        ),
        (
            "targets of one br_table",
            table(SHAPE.br_table_targets),
            table(SHAPE.br_table_targets + 1),
        ),
        (
            "globals",
            globals(SHAPE.globals),
            globals(SHAPE.globals + 1),
        ),
        (
            "functions",
            functions(SHAPE.functions),
            functions(SHAPE.functions + 1),
        ),
        (
            "bytes of one function",
            body_of(SHAPE.function_bytes - 1024),
            body_of(SHAPE.function_bytes + 1024),
        ),
    ];
    for (what, within, past) in cases {
        validate(&module(&within, 1))
            .unwrap_or_else(|e| panic!("{what}: within the bound, refused: {e}"));
        let e = validate(&module(&past, 1)).expect_err(what);
        assert!(
            matches!(e, ModuleError::Shape { .. }) && e.to_string().contains(what),
            "{what}: {e}"
        );
    }
    // One memory of the module's own, at most one table of a size every node can hold.
    let two = wat::parse_str(
        r#"(module (memory (export "memory") 1) (memory 1)
            (func (export "wraft_abi_version") (result i32) i32.const 1))"#,
    );
    if let Ok(two) = two {
        let e = validate(&two).expect_err("two memories");
        assert!(e.to_string().contains("memories"), "{e}");
    }
    let big_table = module("(table 10001 funcref)", 1);
    let e = validate(&big_table).expect_err("a table past the bound");
    assert!(e.to_string().contains("table elements"), "{e}");
    let data = |n: usize| {
        wat::parse_str(format!(
            r#"(module (memory (export "memory") 80) (data (i32.const 0) "{}")
                (func (export "wraft_abi_version") (result i32) i32.const 1)
                (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
                (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
                (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0))"#,
            "\\00".repeat(n)
        ))
        .expect("wat")
    };
    validate(&data(SHAPE.data_bytes as usize)).expect("data at the bound");
    let e = validate(&data(SHAPE.data_bytes as usize + 1)).expect_err("data past the bound");
    assert!(e.to_string().contains("bytes of data segments"), "{e}");
}
