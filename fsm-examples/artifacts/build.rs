//! Compiles every guest FSM in fsm-examples to wasm32-unknown-unknown with the `guest`
//! profile, so `cargo test` needs no manual step. Cargo's own incremental build means a guest
//! is only rebuilt when it (or the SDK or core it depends on) changed.

use std::env;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

/// (crate name, path under fsm-examples). Every guest here must have a test named after it:
/// `foreach_guest!` expands to one item per guest, which the host's tests use.
const GUESTS: &[(&str, &str)] = &[
    ("latest-payload", "latest-payload"),
    ("file-manifest", "file-manifest"),
    ("airspace-store", "airspace-store"),
    ("probe", "probe"),
    // Built from probe's source (see its Cargo.toml).
    ("probe-next", "probe"),
    ("nan-bits", "nan-bits"),
];

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("manifest dir"));
    let root = manifest_dir
        .join("../..")
        .canonicalize()
        .expect("workspace root");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR"));
    let target_dir = root.join("target").join("wasm-guests");

    for watched in ["guest-sdk", "host/core"] {
        rerun_if_changed(&root.join(watched).join("src"));
        rerun_if_changed(&root.join(watched).join("Cargo.toml"));
    }
    for (_, dir) in GUESTS {
        rerun_if_changed(&root.join("fsm-examples").join(dir).join("src"));
        rerun_if_changed(&root.join("fsm-examples").join(dir).join("Cargo.toml"));
    }
    rerun_if_changed(&root.join("Cargo.lock"));
    rerun_if_changed(&root.join("Cargo.toml"));

    let cargo = env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(&root)
        .args([
            "build",
            "--quiet",
            "--target",
            "wasm32-unknown-unknown",
            "--profile",
            "guest",
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    for (name, _) in GUESTS {
        cmd.args(["-p", name]);
    }
    // The outer build's settings are for the host, not for the guests.
    for var in [
        "CARGO_ENCODED_RUSTFLAGS",
        "RUSTFLAGS",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_MAKEFLAGS",
        "CARGO_PRIMARY_PACKAGE",
    ] {
        cmd.env_remove(var);
    }
    let status = cmd
        .status()
        .expect("failed to run cargo for the wasm guests");
    if !status.success() {
        panic!(
            "building the wasm guests failed ({status}). If the error above says the \
             wasm32-unknown-unknown target is missing, run `make setup` (or \
             `rustup target add wasm32-unknown-unknown`)."
        );
    }

    let mut code = String::new();
    let mut names = String::new();
    for (name, _) in GUESTS {
        let file = name.replace('-', "_");
        let wasm = target_dir
            .join("wasm32-unknown-unknown/guest")
            .join(format!("{file}.wasm"));
        assert!(
            wasm.exists(),
            "guest {name} was not built at {}",
            wasm.display()
        );
        writeln!(
            code,
            "/// `{name}` compiled to wasm32-unknown-unknown.\npub const {}: &[u8] = include_bytes!({:?});",
            file.to_uppercase(),
            wasm.display().to_string()
        )
        .expect("write");
        write!(names, "$mac!({file}); ").expect("write");
    }
    writeln!(
        code,
        "/// Calls `$mac!(name)` once per guest, so a test suite can require one test per guest.\n\
         #[macro_export]\nmacro_rules! foreach_guest {{ ($mac:ident) => {{ {names} }}; }}"
    )
    .expect("write");
    std::fs::write(out_dir.join("guests.rs"), code).expect("write guests.rs");
}

fn rerun_if_changed(path: &Path) {
    println!("cargo:rerun-if-changed={}", path.display());
}
