//! `wraft completions` and `wraft man`: shell completions and man pages generated from the
//! clap definitions, so they never drift from the commands.

use std::io::Write;
use std::path::Path;

/// Writes `shell`'s completion script for `cmd` (the whole `wraft` command) to stdout. A
/// reader that stops early (`| head`) ends it quietly.
pub fn completions(mut cmd: clap::Command, shell: clap_complete::Shell) -> anyhow::Result<()> {
    // Built in memory: clap_complete panics on a failed write.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "wraft", &mut script);
    match std::io::stdout().write_all(&script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        written => Ok(written?),
    }
}

/// Writes `wraft.1` and one page per subcommand (`wraft-bench.1`, `wraft-cluster-status.1`,
/// ...) into `dir`; prints what it wrote.
pub fn man_pages(cmd: clap::Command, dir: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(cmd, dir)?;
    let mut pages: Vec<_> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "1"))
        .collect();
    pages.sort();
    println!("{} man pages in {}", pages.len(), dir.display());
    Ok(())
}
