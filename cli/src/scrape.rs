//! `hyperblow scrape`: seeders, leechers and completed downloads of a torrent, per tracker.

use std::net::{IpAddr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyperblow_driver::{AddTorrentRequest, SessionConfig};
use serde_json::json;

use crate::download::load_torrent;
use crate::error::CliError;
use crate::transfer::{self, RuntimeKind};

/// Arguments of `hyperblow scrape`.
#[derive(Debug, Args)]
pub struct ScrapeArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// How long to wait for the trackers.
    #[arg(long, value_name = "DUR", default_value = "15s", value_parser = transfer::parse_duration)]
    pub timeout: Duration,
    /// Which async runtime runs the session.
    #[arg(long, value_enum, default_value = "tokio")]
    pub runtime: RuntimeKind,
}

/// Runs `hyperblow scrape`. A torrent without trackers is bad input; trackers that fail are listed
/// with their error (the command still succeeds if at least one answered). A tracker that answered
/// without listing the torrent (not registered there) counts as an answer of zeros.
pub fn run(args: &ScrapeArgs) -> Result<(), CliError> {
    let meta = load_torrent(&args.torrent)?;
    if meta.trackers.iter().flatten().next().is_none() {
        return Err(CliError::input(
            &args.torrent,
            "the torrent names no tracker",
        ));
    }
    // A session whose torrent is added paused: no announces, no files touched (the output directory
    // is an empty temporary one), only the scrape.
    let scratch = tempfile::tempdir().map_err(|e| CliError::Internal(format!("temp dir: {e}")))?;
    let config = SessionConfig {
        // Both families: IPv6 trackers too.
        bind_addr: IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        resume_dir: Some(scratch.path().to_path_buf()),
        ..SessionConfig::default()
    };
    let session = args.runtime.start(config)?;
    let result = (|| {
        let added = session
            .add_torrent(AddTorrentRequest::new(meta.clone(), scratch.path()).paused(true))
            .wait()
            .map_err(|e| CliError::Internal(e.to_string()))?;
        session
            .scrape(added.id)
            .wait_timeout(args.timeout)
            .map_err(|e| CliError::NoPeers(format!("scrape: {e}")))
    })();
    let _ = session.shutdown().wait_timeout(Duration::from_secs(5));
    let answers = result?;
    if args.json {
        let list: Vec<_> = answers
            .iter()
            .map(|(url, r)| match r {
                Ok(s) => json!({"url": url, "seeders": s.seeders, "leechers": s.leechers,
                                "completed": s.completed}),
                Err(e) => json!({"url": url, "error": e}),
            })
            .collect();
        println!(
            "{}",
            crate::safe::json_pretty(&json!({
                "info_hash": meta.info.info_hash().to_hex(),
                "trackers": list,
            }))
        );
    } else {
        println!(
            "{:>8} {:>8} {:>9}  tracker",
            "seeders", "leechers", "completed"
        );
        for (url, r) in &answers {
            let url = crate::safe::escape(url);
            match r {
                Ok(s) if s.seeders == 0 && s.leechers == 0 && s.completed == 0 => println!(
                    "{:>8} {:>8} {:>9}  {url} (no peers: not registered there yet)",
                    0, 0, 0
                ),
                Ok(s) => println!(
                    "{:>8} {:>8} {:>9}  {url}",
                    s.seeders, s.leechers, s.completed
                ),
                Err(e) => println!(
                    "{:>8} {:>8} {:>9}  {url}: {}",
                    "-",
                    "-",
                    "-",
                    crate::safe::escape(e)
                ),
            }
        }
    }
    if answers.iter().all(|(_, r)| r.is_err()) {
        return Err(CliError::NoPeers("no tracker answered the scrape".into()));
    }
    Ok(())
}
