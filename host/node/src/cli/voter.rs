//! `wraft voter`: a passive voter's key (generate it, provision a flash image with it) and
//! its status, asked over its link.

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use wraft_core::link::auth::{ClusterKey, KEY_LEN};
use wraft_core::voter::{KEY_RECORD_LEN, Request, Response, key_record};
use wraft_host::voter::{LinkAddr, VoterLink};

/// Where the QEMU firmware (targets/cortex-m) keeps the key: the sector after its 64 KiB ring.
const FIRMWARE_KEY_AT: u64 = 64 * 1024;
/// A flash sector of the QEMU firmware (the key's sector is erased whole when provisioned).
const SECTOR: u64 = 4096;

/// Subcommands of `wraft voter`.
#[derive(Debug, clap::Subcommand)]
pub enum VoterCmd {
    /// Print a voter's vote, log position, boot count, flash writes and rejected frames. The
    /// link must be free: a node wired to it holds the stream (stop it, or use the voter's
    /// other UART).
    Status {
        /// tcp:HOST:PORT or /dev/ttyX.
        #[arg(long, env = "WRAFT_VOTER_LINK")]
        link: String,
        /// The cluster's voter key file.
        #[arg(long, env = "WRAFT_VOTER_KEY")]
        key: PathBuf,
        /// Seconds to wait for the answer.
        #[arg(long, env = "WRAFT_VOTER_TIMEOUT", default_value_t = 5)]
        timeout: u64,
        /// As JSON: the voter's status as one object (`vote`, `last`, `committed`,
        /// `tail_runs`, `boots`, `writes`, `rejected`).
        #[command(flatten)]
        output: super::Output,
    },
    /// Write a new cluster key for passive voters: 32 random bytes as 64 hex digits, in a new
    /// file only its owner can read.
    Keygen {
        /// The key file to create.
        #[arg(long)]
        out: PathBuf,
        /// Replace an existing key file (voters provisioned with the old key stop answering).
        #[arg(long)]
        force: bool,
    },
    /// Write the cluster key into a voter's flash image, before the firmware's first start
    /// (QEMU's `wraft-voter.flash`, or an image to program into a board). The image is
    /// created if missing, readable by its owner only: it holds the key.
    Provision {
        /// The cluster's voter key file.
        #[arg(long, env = "WRAFT_VOTER_KEY")]
        key: PathBuf,
        /// The flash image.
        #[arg(long, env = "WRAFT_VOTER_FLASH_IMAGE")]
        flash_image: PathBuf,
        /// Byte offset of the key's sector in the image (the QEMU firmware's: 65536).
        #[arg(long, env = "WRAFT_VOTER_KEY_OFFSET", default_value_t = FIRMWARE_KEY_AT)]
        offset: u64,
    },
}

/// Runs a `wraft voter` subcommand.
pub async fn run(cmd: VoterCmd) -> anyhow::Result<()> {
    match cmd {
        VoterCmd::Status {
            link,
            key,
            timeout,
            output,
        } => status(&link, &key, timeout, output.json()).await,
        VoterCmd::Keygen { out, force } => keygen(&out, force),
        VoterCmd::Provision {
            key,
            flash_image,
            offset,
        } => provision(&read_key(&key)?, &flash_image, offset),
    }
}

/// Reads a key file: 64 hex digits (surrounding whitespace ignored).
pub fn read_key(path: &Path) -> anyhow::Result<ClusterKey> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the voter key {}", path.display()))?;
    let bytes: [u8; KEY_LEN] = hex::decode(text.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .with_context(|| {
            format!(
                "{} is not a voter key ({} hex digits)",
                path.display(),
                2 * KEY_LEN
            )
        })?;
    Ok(ClusterKey::from_bytes(bytes))
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !force {
        bail!(
            "{} exists: voters hold the key it has (--force replaces it)",
            out.display()
        );
    }
    let mut key = [0u8; KEY_LEN];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom")?, &mut key)
        .context("reading /dev/urandom")?;
    super::cert::write_private(out, format!("{}\n", hex::encode(key)).as_bytes())?;
    println!("wrote a voter key to {}", out.display());
    Ok(())
}

/// Erases the key's sector of `image` (0xFF, as NOR flash does) and writes the key record at
/// its start; the image grows (erased) to hold the sector, and nothing else in it changes.
fn provision(key: &ClusterKey, image: &Path, offset: u64) -> anyhow::Result<()> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(image)
        .with_context(|| format!("opening {}", image.display()))?;
    let len = file.metadata()?.len();
    if len < offset {
        file.seek(SeekFrom::Start(len))?;
        std::io::copy(&mut std::io::repeat(0xFF).take(offset - len), &mut file)?;
    }
    let mut sector = vec![0xFFu8; SECTOR as usize];
    sector[..KEY_RECORD_LEN].copy_from_slice(&key_record(key));
    file.seek(SeekFrom::Start(offset))?;
    file.write_all(&sector)?;
    file.sync_all()?;
    println!(
        "wrote the voter key to {} at offset {offset:#x}",
        image.display()
    );
    Ok(())
}

async fn status(link: &str, key: &Path, timeout: u64, json: bool) -> anyhow::Result<()> {
    let addr: LinkAddr = link.parse().map_err(anyhow::Error::msg)?;
    let link = VoterLink::new(addr, read_key(key)?);
    let answer = link
        .call(Request::Status, Duration::from_secs(timeout))
        .await
        .context("asking the voter")?;
    let Response::Status(s) = answer else {
        bail!("the voter answered {answer:?}");
    };
    if json {
        println!(
            "{}",
            serde_json::to_value(&s).context("the voter's status as JSON")?
        );
        return Ok(());
    }
    let id = |l: Option<wraft_core::voter::LogId>| {
        l.map_or("none".to_string(), |l| {
            format!("T{}-N{}:{}", l.leader.term, l.leader.node, l.index)
        })
    };
    println!(
        "vote: T{}-N{}{}",
        s.vote.leader.term,
        s.vote.leader.node,
        if s.vote.committed { " committed" } else { "" }
    );
    println!("last: {}", id(s.last));
    println!("committed: {}", id(s.committed));
    println!("tail_runs: {}", s.tail_runs);
    println!("boots: {}", s.boots);
    println!("flash_writes: {}", s.writes);
    println!("rejected: {}", s.rejected);
    Ok(())
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;
    use wraft_core::voter::parse_key_record;

    #[test]
    fn a_generated_key_reads_back_and_provisions_an_image() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("voter.key");
        keygen(&path, false).expect("keygen");
        let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        assert!(keygen(&path, false).is_err(), "an existing key is kept");
        let key = read_key(&path).expect("key");
        keygen(&path, true).expect("forced");
        assert_ne!(read_key(&path).expect("new key"), key);

        // A new image: erased up to the key's sector, the record at its start.
        let image = dir.path().join("wraft-voter.flash");
        provision(&key, &image, FIRMWARE_KEY_AT).expect("provision");
        let bytes = std::fs::read(&image).expect("image");
        assert_eq!(bytes.len() as u64, FIRMWARE_KEY_AT + SECTOR);
        assert!(bytes[..FIRMWARE_KEY_AT as usize].iter().all(|&b| b == 0xFF));
        let at = FIRMWARE_KEY_AT as usize;
        let record: [u8; KEY_RECORD_LEN] =
            bytes[at..at + KEY_RECORD_LEN].try_into().expect("record");
        assert_eq!(parse_key_record(&record), Ok(key));
        let mode = std::fs::metadata(&image)
            .expect("meta")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);

        // An image in use: the voter's ring is kept, the key replaced.
        let mut used = bytes.clone();
        used[100] = 0x42;
        std::fs::write(&image, &used).expect("ring");
        let other = ClusterKey::from_bytes([1; KEY_LEN]);
        provision(&other, &image, FIRMWARE_KEY_AT).expect("again");
        let bytes = std::fs::read(&image).expect("image");
        assert_eq!(bytes[100], 0x42);
        let record: [u8; KEY_RECORD_LEN] =
            bytes[at..at + KEY_RECORD_LEN].try_into().expect("record");
        assert_eq!(parse_key_record(&record), Ok(other));
    }

    #[test]
    fn a_key_file_must_hold_64_hex_digits() {
        let dir = tempfile::tempdir().expect("tmp");
        let path = dir.path().join("k");
        for bad in ["", "abcd", &"zz".repeat(32), &"00".repeat(33)] {
            std::fs::write(&path, bad).expect("write");
            assert!(read_key(&path).is_err(), "{bad:?}");
        }
        std::fs::write(&path, format!("  {}\n", "0a".repeat(32))).expect("write");
        assert_eq!(
            read_key(&path).expect("key"),
            ClusterKey::from_bytes([10; KEY_LEN])
        );
    }
}
