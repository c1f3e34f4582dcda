//! `hyperblow download`: fetch a torrent's files (all, or a selection), then stop or keep seeding.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use hyperblow_core::magnet::{FileSelection, MagnetLink};
use hyperblow_core::metainfo::Metainfo;
use serde_json::json;

use crate::error::CliError;
use crate::progress::{self, Mode};
use crate::signals::StopFlag;
use crate::transfer::{self, FileFilter, Goal, NetArgs, Plan, SeedGoal, Source};
use crate::units;

/// Arguments of `hyperblow download`.
#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// A .torrent file, or a magnet link (quote it in the shell): its metadata is fetched from the
    /// peers of its `x.pe`, its `tr` trackers and `--peer`, and its `so=` selects files unless
    /// --only/--exclude do.
    pub source: String,
    /// Directory to download into (the torrent's files go under it, as the torrent names them).
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub output: PathBuf,
    /// Download only these files, by index as `hyperblow info` lists them (e.g. `0,2-4`). For a
    /// magnet link the indices are checked once the file list is known.
    #[arg(long, value_name = "LIST", conflicts_with = "exclude")]
    pub only: Option<String>,
    /// Download every file except these (same syntax as --only).
    #[arg(long, value_name = "LIST")]
    pub exclude: Option<String>,
    /// Write the torrent's metadata to PATH as a .torrent file (for a magnet link, once fetched).
    #[arg(long, value_name = "PATH")]
    pub save_torrent: Option<PathBuf>,
    #[command(flatten)]
    pub net: NetArgs,
    /// Keep seeding after the download completes (until Ctrl-C, --ratio or --seed-time).
    #[arg(long)]
    pub seed: bool,
    /// With --seed: stop once uploaded bytes reach R times the downloaded size.
    #[arg(long, value_name = "R", requires = "seed")]
    pub ratio: Option<f64>,
    /// With --seed: stop after seeding this long (e.g. 30m, 2h).
    #[arg(long, value_name = "DUR", requires = "seed", value_parser = transfer::parse_duration)]
    pub seed_time: Option<Duration>,
    /// Give up (exit 5) after this long without any peer or any progress (e.g. 60s).
    #[arg(long, value_name = "DUR", value_parser = transfer::parse_duration)]
    pub timeout: Option<Duration>,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print newline-delimited JSON events and progress on stdout.
    #[arg(long)]
    pub json: bool,
}

/// Whether `s` is a magnet link rather than a path.
pub fn is_magnet(s: &str) -> bool {
    s.get(..7)
        .is_some_and(|p| p.eq_ignore_ascii_case("magnet:"))
}

/// Reads and parses a .torrent file.
pub fn load_torrent(path: &std::path::Path) -> Result<Metainfo, CliError> {
    let bytes = std::fs::read(path).map_err(|e| CliError::input(path, e))?;
    Metainfo::from_bytes(&bytes)
        .map_err(|e| CliError::input(path, format!("not a valid torrent: {e}")))
}

/// Turns `--only` / `--exclude` into one flag per file.
pub fn selection(
    meta: &Metainfo,
    only: Option<&str>,
    exclude: Option<&str>,
) -> Result<Option<Vec<bool>>, CliError> {
    let files = meta.info.layout().files().len();
    let parse = |flag: &str, list: &str| -> Result<FileSelection, CliError> {
        let sel = FileSelection::parse(list)
            .map_err(|e| CliError::Input(format!("--{flag} {list}: {e}")))?;
        let count = u32::try_from(files).unwrap_or(u32::MAX);
        if let Some(&(lo, _)) = sel.ranges().iter().find(|r| r.1 >= count) {
            let bad = lo.max(count);
            return Err(CliError::Input(format!(
                "--{flag} {list}: file {bad} does not exist (the torrent has {files} files, 0-{})",
                files.saturating_sub(1)
            )));
        }
        Ok(sel)
    };
    let index = |i: usize| u32::try_from(i).unwrap_or(u32::MAX);
    match (only, exclude) {
        (Some(list), _) => {
            let sel = parse("only", list)?;
            Ok(Some((0..files).map(|i| sel.contains(index(i))).collect()))
        }
        (None, Some(list)) => {
            let sel = parse("exclude", list)?;
            Ok(Some((0..files).map(|i| !sel.contains(index(i))).collect()))
        }
        (None, None) => Ok(None),
    }
}

/// Runs `hyperblow download`.
pub fn run(args: &DownloadArgs, stop: &StopFlag) -> Result<(), CliError> {
    let (source, wanted, filter) = if is_magnet(&args.source) {
        let link = MagnetLink::parse(&args.source)
            .map_err(|e| CliError::Input(format!("{}: {e}", args.source)))?;
        let filter = FileFilter {
            only: args.only.clone(),
            exclude: args.exclude.clone(),
        };
        (Source::Magnet(link), None, filter)
    } else {
        let path = PathBuf::from(&args.source);
        let meta = load_torrent(&path)?;
        let wanted = selection(&meta, args.only.as_deref(), args.exclude.as_deref())?;
        (Source::Torrent(meta), wanted, FileFilter::default())
    };
    std::fs::create_dir_all(&args.output).map_err(|e| CliError::disk(&args.output, e))?;
    // Before any network work: a read-only output (or state) directory is exit 4 at once.
    transfer::check_writable(&args.output)?;
    let goal = if args.seed {
        Goal::Seed(SeedGoal {
            ratio: args.ratio,
            time: args.seed_time,
        })
    } else {
        Goal::Complete
    };
    let mode = Mode::choose(args.json, args.quiet);
    let plan = Plan {
        source,
        output_dir: args.output.clone(),
        wanted,
        filter,
        save_torrent: args.save_torrent.clone(),
        net: args.net.clone(),
        goal,
        timeout: args.timeout,
        must_be_complete: false,
        mode,
        label: None,
    };
    let label = plan.source.label();
    let outcome = transfer::run(plan, stop)?;
    let st = outcome.stats.as_ref();
    let name = st.map_or(label, |s| s.name.clone());
    let wanted_bytes = st.map_or(0, |s| s.wanted_bytes);
    let downloaded = st.map_or(0, |s| s.downloaded);
    let uploaded = st.map_or(0, |s| s.uploaded);
    let secs = outcome
        .download_time
        .unwrap_or(outcome.elapsed)
        .as_secs_f64()
        .max(1e-3);
    match mode {
        Mode::Json => println!(
            "{}",
            crate::safe::json(&json!({
                "event": "done",
                "name": name,
                "wanted_bytes": wanted_bytes,
                "downloaded": downloaded,
                "uploaded": uploaded,
                "seconds": secs,
                "pieces_at_start": outcome.have_at_start,
                "total_pieces": outcome.total_pieces,
            }))
        ),
        Mode::Bar | Mode::Plain => eprintln!(
            "{}: complete, {} in {} ({}/s), {} downloaded this run, {} uploaded",
            crate::safe::escape(&name),
            units::bytes(wanted_bytes),
            progress::duration(std::time::Duration::from_secs_f64(secs)),
            units::bytes((downloaded as f64 / secs) as u64),
            units::bytes(downloaded),
            units::bytes(uploaded)
        ),
        Mode::Quiet => {}
    }
    Ok(())
}
