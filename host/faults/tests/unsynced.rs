//! The preload library and the undo, on a real child process: what the child synced
//! survives a simulated power loss, what it did not sync is gone.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;

use wraft_faults::unsynced::{self, Lost, Survival};

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

/// Runs `child_writes` in a child process under the preload library, in `dir/data` with
/// journals in `dir/journal`; returns both paths.
fn run_child(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let root = dir.join("data");
    std::fs::create_dir(&root).expect("data dir");
    let root = root.canonicalize().expect("canonical");
    let journal = dir.join("journal");
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
    (root, journal)
}

#[test]
fn unsynced_writes_are_lost_and_synced_ones_survive() {
    if let Some(root) = std::env::var_os(CHILD) {
        child_writes(Path::new(&root)).expect("child writes");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let (root, journal) = run_child(dir.path());
    let read = |f: &str| std::fs::read(root.join(f)).expect("read");
    // Before the loss, the page cache has everything.
    assert_eq!(read("a"), b"HEllo world");
    assert_eq!(read("b").len(), 10_000);
    assert_eq!(read("c"), b"a");

    let mut lost =
        unsynced::lose_unsynced_writes(&root, &journal, Survival::Nothing).expect("undo");
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
            bytes: 2 + 6 + 10_000 + 2,
            kept: 0,
        }
    );
    assert_eq!(std::fs::read_dir(&journal).expect("journal").count(), 0);
}

/// A torn power loss keeps some unsynced overwrites inside a file's synced length and
/// nothing else (no appends, no truncation), and a seed keeps the same ones every time.
#[test]
fn a_torn_power_loss_keeps_only_overwrites_and_the_same_ones_per_seed() {
    let mut outcomes_of_a = std::collections::BTreeSet::new();
    for seed in 0..16u64 {
        let mut results = Vec::new();
        for _ in 0..2 {
            let dir = tempfile::tempdir().expect("tempdir");
            let (root, journal) = run_child(dir.path());
            let lost = unsynced::lose_unsynced_writes(&root, &journal, Survival::Torn(seed))
                .expect("undo");
            let read = |f: &str| std::fs::read(root.join(f)).expect("read");
            let a = read("a");
            // "HE" over the synced "hello" may survive; the append " world" may not.
            assert!(a == b"hello" || a == b"HEllo", "seed {seed}: a = {a:?}");
            assert_eq!(read("b"), b"", "seed {seed}: b was never synced");
            assert_eq!(
                read("c"),
                b"abc",
                "seed {seed}: a truncation never survives"
            );
            assert_eq!(read("d"), b"durable");
            assert_eq!(lost.kept, usize::from(a == b"HEllo"), "seed {seed}");
            assert_eq!(lost.writes + lost.kept, 4);
            results.push(a);
        }
        assert_eq!(results[0], results[1], "seed {seed} tore differently twice");
        outcomes_of_a.insert(results.remove(0));
    }
    assert_eq!(
        outcomes_of_a.len(),
        2,
        "16 seeds never kept (or never dropped) the overwrite"
    );
}

const FULL_CHILD: &str = "WRAFT_DISK_FULL_TEST_DIR";

#[test]
fn a_full_disk_refuses_writes_that_grow_a_file_but_not_overwrites() {
    if let Some(root) = std::env::var_os(FULL_CHILD) {
        let root = Path::new(&root);
        let f = OpenOptions::new()
            .write(true)
            .open(root.join("f"))
            .expect("open");
        f.write_all_at(b"XY", 1)
            .expect("an overwrite needs no room");
        let grow = f.write_all_at(b"more", 3).expect_err("growing needs room");
        assert_eq!(grow.raw_os_error(), Some(libc::ENOSPC), "{grow}");
        let new = File::create(root.join("new")).and_then(|mut n| n.write_all(b"x"));
        assert!(new.is_err(), "a new file's first byte needs room");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    std::fs::create_dir(&root).expect("data dir");
    let root = root.canonicalize().expect("canonical");
    std::fs::write(root.join("f"), b"abcd").expect("f");
    let journal = dir.path().join("journal");
    std::fs::create_dir(&journal).expect("journal dir");
    let full = dir.path().join("full");
    std::fs::write(&full, b"").expect("flag");
    let out = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "a_full_disk_refuses_writes_that_grow_a_file_but_not_overwrites",
            "--exact",
        ])
        .env(FULL_CHILD, &root)
        .envs(unsynced::env(&root, &journal))
        .env("WRAFT_DISK_FULL", &full)
        .output()
        .expect("child");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(std::fs::read(root.join("f")).expect("f"), b"aXYd");
}
