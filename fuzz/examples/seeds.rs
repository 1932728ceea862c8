//! Writes every target's seeds (`wraft_fuzz::seeds`) to `fuzz/seeds/<target>/<name>`,
//! replacing what was there. Run from the repository: `make fuzz-seeds`.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

fn main() -> std::io::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("seeds");
    let seeds = wraft_fuzz::seeds::all();
    let targets: BTreeSet<&str> = seeds.iter().map(|(t, _, _)| *t).collect();
    for target in targets {
        let dir = root.join(target);
        if dir.exists() {
            for entry in fs::read_dir(&dir)? {
                let path = entry?.path();
                // Regression inputs (crashes found and fixed) stay.
                if !path
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("crash-"))
                {
                    fs::remove_file(path)?;
                }
            }
        }
        fs::create_dir_all(&dir)?;
    }
    for (target, name, bytes) in &seeds {
        fs::write(root.join(target).join(name), bytes)?;
    }
    println!("{} seeds under {}", seeds.len(), root.display());
    Ok(())
}
