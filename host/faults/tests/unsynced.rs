//! The preload library and the undo, on a real child process: what the child synced
//! survives a simulated power loss, what it did not sync is gone.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use wraft_faults::unsynced::{self, Lost};

const CHILD: &str = "WRAFT_UNSYNCED_TEST_DIR";

/// The child's writes (run under the preload library by the test below).
fn child_writes(root: &Path) -> std::io::Result<()> {
    // a: synced "hello", then an unsynced overwrite and append.
    let mut a = File::create(root.join("a"))?;
    a.write_all(b"hello")?;
    a.sync_data()?;
    a.write_all_at(b"HE", 0)?;
    a.write_all_at(b" world", 5)?;
    // b: never synced.
    File::create(root.join("b"))?.write_all(&[7; 10_000])?;
    // c: synced, then an unsynced truncation.
    let c = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .read(true)
        .open(root.join("c"))?;
    c.write_all_at(b"abc", 0)?;
    c.sync_all()?;
    c.set_len(1)?;
    // d: written to a temporary name, synced, renamed.
    let mut tmp = File::create(root.join("d.tmp"))?;
    tmp.write_all(b"durable")?;
    tmp.sync_all()?;
    std::fs::rename(root.join("d.tmp"), root.join("d"))?;
    // e: unsynced writes to a file deleted before the loss.
    File::create(root.join("e"))?.write_all(b"gone")?;
    std::fs::remove_file(root.join("e"))?;
    Ok(())
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_survive() {
    if let Some(root) = std::env::var_os(CHILD) {
        child_writes(Path::new(&root)).expect("child writes");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    std::fs::create_dir(&root).expect("data dir");
    let root = root.canonicalize().expect("canonical");
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).expect("journal dir");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "unsynced_writes_are_lost_and_synced_ones_survive",
            "--exact",
            "--nocapture",
        ])
        .env(CHILD, &root)
        .envs(unsynced::env(&root, &journal))
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read(root.join(f)).expect("read");
    // Before the loss, the page cache has everything.
    assert_eq!(read("a"), b"HEllo world");
    assert_eq!(read("b").len(), 10_000);
    assert_eq!(read("c"), b"a");

    let mut lost = unsynced::lose_unsynced_writes(&root, &journal).expect("undo");
    lost.files.sort();
    assert_eq!(read("a"), b"hello");
    assert_eq!(read("b"), b"");
    assert_eq!(read("c"), b"abc");
    assert_eq!(read("d"), b"durable");
    assert_eq!(
        lost,
        Lost {
            files: ["a", "b", "c"].map(Into::into).to_vec(),
            writes: 4,
            bytes: 2 + 6 + 10_000 + 2
        }
    );
    assert_eq!(std::fs::read_dir(&journal).expect("journal").count(), 0);
}
