//! `hyperblow info`: what a .torrent file or a magnet link describes, as text or JSON.

use std::path::PathBuf;

use clap::Args;
use hyperblow_core::magnet::MagnetLink;
use hyperblow_core::metainfo::Metainfo;
use serde_json::{json, Value};

use crate::error::CliError;
use crate::units;

/// Arguments of `hyperblow info`.
#[derive(Debug, Args)]
pub struct InfoArgs {
    /// A .torrent file, or a magnet link (quote it in the shell).
    pub source: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Runs `hyperblow info`.
pub fn run(args: &InfoArgs) -> Result<(), CliError> {
    let report = if args
        .source
        .get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
    {
        let link = MagnetLink::parse(&args.source).map_err(|e| CliError::Input(e.to_string()))?;
        magnet_report(&link)
    } else {
        let path = PathBuf::from(&args.source);
        let bytes = std::fs::read(&path).map_err(|e| CliError::input(&path, e))?;
        let meta = Metainfo::from_bytes(&bytes)
            .map_err(|e| CliError::input(&path, format!("not a valid torrent: {e}")))?;
        torrent_report(&meta)
    };
    if args.json {
        println!("{}", crate::safe::json_pretty(&report));
    } else {
        print!("{}", crate::safe::lines(&render_text(&report)));
    }
    Ok(())
}

/// Everything `info` says about a torrent, as JSON (the text form is rendered from this).
pub fn torrent_report(meta: &Metainfo) -> Value {
    let info = &meta.info;
    let layout = info.layout();
    let files: Vec<Value> = layout
        .files()
        .iter()
        .enumerate()
        .map(|(i, f)| {
            json!({
                "index": i,
                "path": f.display_path(),
                "length": f.length,
                "padding": f.padding,
            })
        })
        .collect();
    json!({
        "kind": "torrent",
        "name": info.name(),
        "info_hash": info.info_hash().to_hex(),
        "magnet": MagnetLink {
            display_name: Some(info.name().to_owned()),
            trackers: meta.trackers.iter().flatten().cloned().collect(),
            web_seeds: meta.url_list.clone(),
            ..MagnetLink::new(info.info_hash())
        }
        .to_uri(),
        "total_length": layout.total_length(),
        "piece_length": layout.piece_length(),
        "piece_count": layout.piece_count(),
        "private": info.is_private(),
        "multi_file": info.is_multi_file(),
        "trackers": meta.trackers,
        "web_seeds": meta.url_list,
        "comment": meta.comment,
        "created_by": meta.created_by,
        "creation_date": meta.creation_date,
        "files": files,
    })
}

/// What can be said of a magnet link before its metadata is fetched.
pub fn magnet_report(link: &MagnetLink) -> Value {
    json!({
        "kind": "magnet",
        "name": link.display_name,
        "info_hash": link.info_hash.to_hex(),
        "trackers": link.trackers.iter().map(|t| vec![t]).collect::<Vec<_>>(),
        "peers": link.peers.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "web_seeds": link.web_seeds,
        "select_only": link.select_only.as_ref().map(ToString::to_string),
    })
}

fn render_text(r: &Value) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let s = |k: &str| r[k].as_str().map(str::to_owned);
    let line = |out: &mut String, label: &str, value: &str| {
        let _ = writeln!(out, "{:<14}{value}", format!("{label}:"));
    };
    line(
        &mut out,
        "Name",
        &s("name").unwrap_or_else(|| "(unknown)".into()),
    );
    line(&mut out, "Info-hash", &s("info_hash").unwrap_or_default());
    if r["kind"] == "torrent" {
        let total = r["total_length"].as_u64().unwrap_or(0);
        let piece = r["piece_length"].as_u64().unwrap_or(0);
        line(
            &mut out,
            "Size",
            &format!("{} ({total} bytes)", units::bytes(total)),
        );
        line(
            &mut out,
            "Pieces",
            &format!("{} x {}", r["piece_count"], units::bytes(piece)),
        );
        let private = if r["private"].as_bool() == Some(true) {
            "yes"
        } else {
            "no"
        };
        line(&mut out, "Private", private);
        if let Some(by) = s("created_by") {
            line(&mut out, "Created by", &by);
        }
        if let Some(date) = r["creation_date"].as_i64() {
            line(&mut out, "Created on", &format_unix_date(date));
        }
        if let Some(comment) = s("comment") {
            line(&mut out, "Comment", &comment);
        }
    } else {
        line(
            &mut out,
            "Metadata",
            "not fetched yet: sizes and files come from peers",
        );
        for peer in r["peers"].as_array().into_iter().flatten() {
            line(&mut out, "Peer", peer.as_str().unwrap_or_default());
        }
        if let Some(so) = s("select_only") {
            line(&mut out, "Select only", &format!("files {so}"));
        }
    }
    let tiers = r["trackers"].as_array().cloned().unwrap_or_default();
    if tiers.is_empty() {
        line(&mut out, "Trackers", "none");
    } else {
        let _ = writeln!(out, "Trackers:");
        for (i, tier) in tiers.iter().enumerate() {
            for url in tier.as_array().into_iter().flatten() {
                let _ = writeln!(
                    out,
                    "  tier {}  {}",
                    i + 1,
                    url.as_str().unwrap_or_default()
                );
            }
        }
    }
    for url in r["web_seeds"].as_array().into_iter().flatten() {
        line(&mut out, "Web seed", url.as_str().unwrap_or_default());
    }
    if let Some(files) = r["files"].as_array() {
        let _ = writeln!(out, "Files ({}):", files.len());
        for f in files {
            let len = f["length"].as_u64().unwrap_or(0);
            let padding = if f["padding"].as_bool() == Some(true) {
                "  (padding)"
            } else {
                ""
            };
            let _ = writeln!(
                out,
                "  {:>4}  {:>12}  {}{padding}",
                f["index"],
                units::bytes(len),
                f["path"].as_str().unwrap_or_default()
            );
        }
    }
    out
}

/// A Unix timestamp as `YYYY-MM-DD HH:MM:SS UTC` (proleptic Gregorian calendar).
pub fn format_unix_date(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil-from-days, after the well-known era-based algorithm (400-year eras of 146,097 days).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(format_unix_date(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix_date(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_unix_date(1_796_000_000), "2026-11-30 00:53:20 UTC");
        assert_eq!(format_unix_date(-1), "1969-12-31 23:59:59 UTC");
    }
}
