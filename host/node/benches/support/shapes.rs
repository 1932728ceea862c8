//! Modules at the edge of what `wraft_host::runtime::SHAPE` accepts, built to make Cranelift
//! work hardest: the compile benchmark times them, the validation tests deploy them (and
//! modules one step past a bound, which must be refused). Each is a valid FSM module.

use wraft_host::runtime::ShapeLimits;

/// The ABI's required exports around `funcs` (WAT function definitions) and `extra`, with a
/// memory of `pages`.
fn module_with(pages: u32, funcs: &str, extra: &str) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
            (memory (export "memory") {pages})
            {extra}
            (func (export "wraft_abi_version") (result i32) i32.const 1)
            (func (export "wraft_alloc") (param i32) (result i32) i32.const 1024)
            (func (export "wraft_apply") (param i32 i32) (result i32) i32.const 0)
            (func (export "wraft_query") (param i32 i32) (result i32) i32.const 0)
            {funcs})"#
    ))
    .expect("generated WAT parses")
}

fn module(funcs: &str, extra: &str) -> Vec<u8> {
    module_with(1, funcs, extra)
}

/// One function with `locals` locals, all live across a loop that updates each from the
/// next, `rounds` times over: an interference graph as dense as a body allows.
fn live_locals(locals: u32, rounds: u32) -> String {
    let mut f = String::from("(func");
    for _ in 0..locals {
        f.push_str(" (local i64)");
    }
    f.push_str(" (loop $l");
    for _ in 0..rounds {
        for i in 0..locals {
            let next = (i + 1) % locals;
            f.push_str(&format!(
                " (local.set {i} (i64.add (local.get {i}) (local.get {next})))"
            ));
        }
    }
    f.push_str(" (br_if $l (i64.eqz (local.get 0)))))");
    f
}

/// The shapes to compile: (name, module).
pub fn worst_cases(limits: &ShapeLimits) -> Vec<(&'static str, Vec<u8>)> {
    // Each `local.set (i64.add (local.get) (local.get))` is 8 bytes with locals under 128,
    // 10 bytes above: size bodies just under the per-function bound.
    let per_update = 10;
    let live: u32 = std::env::var("WRAFT_SHAPE_LIVE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(limits.locals.min(1000));
    let big_rounds = (limits.function_bytes as usize - 64) / (per_update * live as usize);
    let one_big = live_locals(live, big_rounds as u32);
    let heavy = |n: usize| one_big.repeat(n);
    let functions_of_code = (limits.code_bytes / u64::from(limits.function_bytes)) as usize;
    let small = "(func (result i32) (i32.add (i32.const 1) (i32.const 2)))";
    let nested = {
        let mut f = String::from("(func");
        let depth = limits.nesting - 1;
        let blocks = (limits.function_bytes as usize - 64) / (depth as usize * 4);
        for _ in 0..blocks {
            for _ in 0..depth {
                f.push_str(" (block");
            }
            f.push_str(" (br 0)");
            for _ in 0..depth {
                f.push(')');
            }
        }
        f.push(')');
        f
    };
    let table = {
        let targets = " 0".repeat(limits.br_table_targets as usize);
        format!("(func (param i32) (block (br_table{targets} (local.get 0))))").repeat(8)
    };
    // Every value on the operand stack at once, then summed.
    let deep_stack = {
        let n = (limits.function_bytes as usize - 64) / 4;
        format!(
            "(func (result i64) {} {} )",
            "(i64.const 7)".repeat(n / 2),
            "i64.add ".repeat(n / 2 - 1)
        )
    };
    // As many small basic blocks as a body holds, each defining values used after it.
    let blocks = {
        let n = (limits.function_bytes as usize - 64) / 16;
        let mut f = String::from("(func (param i32) (result i32) (local i32)");
        for i in 0..n {
            f.push_str(&format!(
                " (if (i32.and (local.get 0) (i32.const {})) (then (local.set 1 (i32.add (local.get 1) (i32.const {i})))))",
                i % 31 + 1
            ));
        }
        f.push_str(" (local.get 1))");
        f
    };
    vec![
        (
            "the deepest operand stack",
            module(&deep_stack.repeat(4), ""),
        ),
        ("the most basic blocks", module(&blocks.repeat(4), "")),
        (
            "airspace-store (for scale)",
            wraft_fsm_artifacts::AIRSPACE_STORE.to_vec(),
        ),
        (
            "latest-payload (for scale)",
            wraft_fsm_artifacts::LATEST_PAYLOAD.to_vec(),
        ),
        (
            "one function of live locals at the size bound",
            module(&one_big, ""),
        ),
        (
            "code bound of functions like it",
            module(&heavy(functions_of_code), ""),
        ),
        (
            "the most functions",
            module(&small.repeat(limits.functions as usize - 4), ""),
        ),
        ("blocks nested to the bound", module(&nested, "")),
        ("br_tables of the most targets", module(&table, "")),
        (
            "the most data",
            module_with(
                (limits.data_bytes >> 16) as u32,
                "",
                &format!(
                    "(data (i32.const 0) \"{}\")",
                    "\\00".repeat(limits.data_bytes as usize)
                ),
            ),
        ),
    ]
}
