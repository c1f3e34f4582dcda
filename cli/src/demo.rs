//! `hyperblow demo`: the offline first run. Builds a small multi-file payload with awkward sizes,
//! makes its torrent, seeds it on one runtime (tokio) and downloads it with the other (async-std) over
//! 127.0.0.1, then checks the copy byte for byte and says what happened.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::Args;
use hyperblow_core::metainfo::Metainfo;
use hyperblow_driver::{AddTorrentRequest, SessionConfig};

use crate::create::{self, CreateArgs};
use crate::error::CliError;
use crate::progress::{self, Mode};
use crate::signals::StopFlag;
use crate::transfer::{self, FileFilter, Goal, NetArgs, Plan, RuntimeKind, Source};
use crate::units;

/// Arguments of `hyperblow demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Size of the demo payload in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = 16 * 1024 * 1024,
          value_parser = clap::value_parser!(u64).range(1..=1 << 40))]
    pub size: u64,
    /// Keep the payload, the .torrent and the download in DIR instead of a temporary directory.
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Print nothing but errors and the final summary.
    #[arg(short, long)]
    pub quiet: bool,
}

/// Deterministic filler bytes (xorshift), different per file.
fn filler(len: u64, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let len = usize::try_from(len).unwrap_or(0);
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&x.to_le_bytes()[..take]);
    }
    out
}

/// The payload's files (relative path, length) for a total of about `size` bytes: a 0-byte file,
/// a small text file, and three odd-sized files that straddle pieces.
pub fn payload_layout(size: u64) -> Vec<(&'static str, u64)> {
    let text = 1_111.min(size);
    let rest = size - text;
    let big = rest / 2 + 7;
    let middle = rest / 3;
    let tail = rest.saturating_sub(big.min(rest) + middle);
    vec![
        ("README.txt", text),
        ("empty.dat", 0),
        ("data/big.bin", big.min(rest)),
        ("data/middle.bin", middle),
        ("data/tail/odd.bin", tail),
    ]
}

fn write_payload(root: &Path, size: u64) -> Result<(), CliError> {
    for (i, (rel, len)) in payload_layout(size).into_iter().enumerate() {
        let path = root.join(rel);
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| CliError::disk(dir, e))?;
        }
        let bytes = if rel.ends_with(".txt") {
            let line = b"Hyperblow demo payload: seeded by tokio, downloaded by async-std.\n";
            line.iter()
                .cycle()
                .take(usize::try_from(len).unwrap_or(0))
                .copied()
                .collect()
        } else {
            filler(len, i as u64 + 1)
        };
        std::fs::write(&path, bytes).map_err(|e| CliError::disk(&path, e))?;
    }
    Ok(())
}

fn same_files(a: &Path, b: &Path, size: u64) -> Result<(), CliError> {
    for (rel, len) in payload_layout(size) {
        let (x, y) = (a.join(rel), b.join(rel));
        let got = std::fs::read(&y).map_err(|e| CliError::input(&y, e))?;
        let want = std::fs::read(&x).map_err(|e| CliError::input(&x, e))?;
        if got.len() as u64 != len || got != want {
            return Err(CliError::Internal(format!(
                "{} differs from {} after the download",
                y.display(),
                x.display()
            )));
        }
    }
    Ok(())
}

/// Runs `hyperblow demo`.
pub fn run(args: &DemoArgs, stop: &StopFlag) -> Result<(), CliError> {
    let temp;
    let base = match &args.keep {
        Some(dir) => {
            std::fs::create_dir_all(dir).map_err(|e| CliError::disk(dir, e))?;
            dir.clone()
        }
        None => {
            temp = tempfile::Builder::new()
                .prefix("hyperblow-demo-")
                .tempdir()
                .map_err(|e| CliError::Internal(format!("temporary directory: {e}")))?;
            temp.path().to_path_buf()
        }
    };
    let say = |text: &str| {
        if !args.quiet {
            progress::stderr_line(text);
        }
    };
    let seed_dir = base.join("seed");
    let leech_dir = base.join("download");
    let payload = seed_dir.join("hyperblow-demo");
    if payload.exists() {
        std::fs::remove_dir_all(&payload).map_err(|e| CliError::disk(&payload, e))?;
    }
    if leech_dir.exists() {
        std::fs::remove_dir_all(&leech_dir).map_err(|e| CliError::disk(&leech_dir, e))?;
    }
    write_payload(&payload, args.size)?;
    let files = payload_layout(args.size);
    say(&format!(
        "demo: made a {} payload of {} files in {}",
        units::bytes(args.size),
        files.len(),
        payload.display()
    ));
    let (built, _) = create::build(&CreateArgs {
        path: payload.clone(),
        output: base.join("hyperblow-demo.torrent"),
        trackers: Vec::new(),
        web_seeds: Vec::new(),
        piece_length: None,
        private: false,
        comment: Some("made by `hyperblow demo`".into()),
        no_date: true,
    })?;
    let torrent_path = base.join("hyperblow-demo.torrent");
    std::fs::write(&torrent_path, &built.bytes).map_err(|e| CliError::disk(&torrent_path, e))?;
    let meta = Metainfo::from_bytes(&built.bytes)
        .map_err(|e| CliError::Internal(format!("the demo torrent does not parse: {e}")))?;
    let layout = meta.info.layout();
    say(&format!(
        "demo: torrent {} ({} pieces of {}, info-hash {})",
        torrent_path.display(),
        layout.piece_count(),
        units::bytes(u64::from(layout.piece_length())),
        built.info_hash
    ));

    // The seeder: tokio, on loopback, with the payload checked on add.
    let loopback = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let seeder = RuntimeKind::Tokio.start(SessionConfig {
        bind_addr: loopback,
        ..SessionConfig::default()
    })?;
    let outcome = (|| {
        let added = seeder
            .add_torrent(AddTorrentRequest::new(meta.clone(), &seed_dir))
            .wait()
            .map_err(|e| CliError::Internal(format!("seeder: {e}")))?;
        if added.have_pieces != added.total_pieces {
            return Err(CliError::Internal(format!(
                "seeder verified only {} of {} pieces",
                added.have_pieces, added.total_pieces
            )));
        }
        let seed_addr = seeder.listen_addr();
        say(&format!(
            "demo: seeder (tokio) verified {} pieces and listens on {seed_addr}; downloading with async-std",
            added.total_pieces
        ));
        let plan = Plan {
            source: Source::Torrent(meta.clone()),
            output_dir: leech_dir.clone(),
            wanted: None,
            filter: FileFilter::default(),
            save_torrent: None,
            net: NetArgs {
                runtime: RuntimeKind::AsyncStd,
                port: Some(0),
                bind: loopback,
                peers: vec![seed_addr.to_string()],
                max_peers: None,
                max_download_rate: 0,
                max_upload_rate: 0,
                // The demo stays offline: no DHT, no public routers.
                no_dht: true,
                dht_bootstrap: Vec::new(),
                state_dir: None,
                encryption: hyperblow_core::mse::Policy::default(),
                transport: hyperblow_driver::engine::Transport::default(),
            },
            goal: Goal::Complete,
            timeout: Some(Duration::from_secs(30)),
            must_be_complete: false,
            mode: if args.quiet {
                Mode::Quiet
            } else {
                Mode::choose(false, false)
            },
            label: Some("demo".into()),
        };
        transfer::run(plan, stop)
    })();
    let _ = seeder.shutdown().wait_timeout(Duration::from_secs(10));
    let outcome = outcome?;
    let verify_start = Instant::now();
    same_files(&payload, &leech_dir.join("hyperblow-demo"), args.size)?;
    let took = outcome.download_time.unwrap_or(outcome.elapsed);
    let secs = took.as_secs_f64().max(1e-3);
    println!(
        "demo: downloaded {} ({} files, {} pieces) from tokio to async-std over 127.0.0.1 in {:.2} s \
         ({}/s); the copy matches byte for byte (checked in {} ms)",
        units::bytes(args.size),
        files.len(),
        outcome.total_pieces,
        secs,
        units::bytes((args.size as f64 / secs) as u64),
        verify_start.elapsed().as_millis()
    );
    if args.keep.is_some() {
        println!(
            "demo: kept the payload in {}, the torrent at {} and the copy in {}",
            crate::safe::escape(&payload.display().to_string()),
            crate::safe::escape(&torrent_path.display().to_string()),
            crate::safe::escape(&leech_dir.display().to_string())
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_adds_up_and_has_a_zero_byte_file() {
        for size in [0u64, 5, 1111, 1112, 16 << 20, 12_345_679] {
            let l = payload_layout(size);
            assert_eq!(l.iter().map(|f| f.1).sum::<u64>(), size, "size {size}");
            assert!(l.iter().any(|f| f.1 == 0));
        }
    }
}
