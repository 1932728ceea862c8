//! Builds `libwraft_unsynced.so` (preload/unsynced.rs, no dependencies) with the same rustc
//! for the same target, into OUT_DIR; `wraft_faults::unsynced::PRELOAD` names it.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "preload/unsynced.rs";
    println!("cargo::rerun-if-changed={src}");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let rustc = std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into());
    let target = std::env::var("TARGET").expect("cargo sets TARGET");
    let status = Command::new(rustc)
        .args([
            "--edition=2024",
            "--crate-type=cdylib",
            "--crate-name=wraft_unsynced",
        ])
        .args(["-C", "opt-level=2", "--target", &target, "--out-dir"])
        .arg(&out)
        .arg(src)
        .status()
        .expect("running rustc for the preload library");
    assert!(status.success(), "building {src} failed");
}
