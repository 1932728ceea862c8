//! `wraft voter status`: ask a passive voter what it holds, over its link.

use std::time::Duration;

use anyhow::{Context, bail};
use wraft_core::voter::{Request, Response};
use wraft_host::voter::{LinkAddr, VoterLink};

/// Subcommands of `wraft voter`.
#[derive(Debug, clap::Subcommand)]
pub enum VoterCmd {
    /// Print a voter's vote, log position, boot count and flash writes. The link must be
    /// free: a node wired to it holds the stream (stop it, or use the voter's other UART).
    Status {
        /// tcp:HOST:PORT or /dev/ttyX.
        #[arg(long)]
        link: String,
        /// Seconds to wait for the answer.
        #[arg(long, default_value_t = 5)]
        timeout: u64,
    },
}

/// Runs a `wraft voter` subcommand.
pub async fn run(cmd: VoterCmd) -> anyhow::Result<()> {
    let VoterCmd::Status { link, timeout } = cmd;
    let addr: LinkAddr = link.parse().map_err(anyhow::Error::msg)?;
    let link = VoterLink::new(addr);
    let answer = link
        .call(Request::Status, Duration::from_secs(timeout))
        .await
        .context("asking the voter")?;
    let Response::Status(s) = answer else {
        bail!("the voter answered {answer:?}");
    };
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
    Ok(())
}
