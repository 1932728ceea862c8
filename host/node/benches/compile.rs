//! Compile time and peak memory of the largest modules `SHAPE` accepts, each compiled in a
//! child process of its own (so its peak resident memory is its own), on the native backend
//! and on Pulley (what armv7 boards run). `cargo bench -p wraft-host --bench compile`;
//! docs/benchmarks.md reports the figures. `WRAFT_COMPILE_BENCH_KEEP=DIR` keeps the modules
//! in DIR (named after their case), for deploying them elsewhere (docs/edge.md: armv7).

#[path = "support/shapes.rs"]
mod shapes;

use std::process::Command;
use std::time::Instant;

use wraft_host::runtime::{Backend, FsmRuntime, SHAPE};

const CHILD: &str = "WRAFT_COMPILE_BENCH_CASE";

fn main() {
    if let Ok(case) = std::env::var(CHILD) {
        let (file, rest) = case.split_once(':').expect("FILE:BACKEND:NAME");
        let (backend, name) = rest.split_once(':').expect("BACKEND:NAME");
        let bytes = std::fs::read(file).expect("module file");
        let backend = match backend {
            "native" => Backend::Native,
            _ => Backend::Pulley,
        };
        let rt = FsmRuntime::with_backend(backend).expect("runtime");
        let started = Instant::now();
        let verdict = rt
            .validate(&bytes)
            .expect("no fault")
            .map(|_| "accepted")
            .map_err(|e| e.to_string());
        let took = started.elapsed();
        // SAFETY: getrusage fills the struct it is given.
        let peak_kib = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            libc::getrusage(libc::RUSAGE_SELF, &mut usage);
            usage.ru_maxrss
        };
        println!(
            "{name:<55} {:>7} {:>9} bytes {:>8.2} s {:>6} MiB peak  {verdict:?}",
            format!("{backend:?}"),
            bytes.len(),
            took.as_secs_f64(),
            peak_kib >> 10
        );
        return;
    }
    let exe = std::env::current_exe().expect("bench binary");
    let tmp = tempfile::tempdir().expect("tmp");
    let keep = std::env::var_os("WRAFT_COMPILE_BENCH_KEEP").map(std::path::PathBuf::from);
    let dir = keep.as_deref().unwrap_or(tmp.path());
    std::fs::create_dir_all(dir).expect("module directory");
    let cases: Vec<_> = shapes::worst_cases(&SHAPE)
        .into_iter()
        .enumerate()
        .map(|(i, (name, bytes))| {
            let slug: String = name
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect();
            let file = dir.join(format!("{i:02}-{slug}.wasm"));
            std::fs::write(&file, bytes).expect("write");
            (name, file)
        })
        .collect();
    // Each child only reads and compiles: its peak memory is the compile's (plus the
    // runtime's few MiB).
    for backend in ["native", "pulley"] {
        for (name, file) in &cases {
            let status = Command::new(&exe)
                .env(CHILD, format!("{}:{backend}:{name}", file.display()))
                .status()
                .expect("child");
            assert!(status.success(), "{name} on {backend}");
        }
    }
}
