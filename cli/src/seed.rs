//! `hyperblow seed`: verify existing data against a torrent, then serve it until Ctrl-C (or a ratio
//! or time goal).

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use serde_json::json;

use crate::download::load_torrent;
use crate::error::CliError;
use crate::progress::Mode;
use crate::signals::StopFlag;
use crate::transfer::{self, FileFilter, Goal, NetArgs, Plan, SeedGoal, Source};
use crate::units;

/// Arguments of `hyperblow seed`.
#[derive(Debug, Args)]
pub struct SeedArgs {
    /// The .torrent file.
    pub torrent: PathBuf,
    /// The data: the file or directory the torrent describes (as given to `hyperblow create`), or the
    /// directory that holds it.
    pub data: PathBuf,
    #[command(flatten)]
    pub net: NetArgs,
    /// Stop once uploaded bytes reach R times the torrent's size.
    #[arg(long, value_name = "R")]
    pub ratio: Option<f64>,
    /// Stop after seeding this long (e.g. 30m, 2h).
    #[arg(long, value_name = "DUR", value_parser = transfer::parse_duration)]
    pub seed_time: Option<Duration>,
    /// Print nothing but errors.
    #[arg(short, long, conflicts_with = "json")]
    pub quiet: bool,
    /// Print newline-delimited JSON events and progress on stdout.
    #[arg(long)]
    pub json: bool,
}

/// The directory to hand the session: the one that holds an entry named like the torrent.
pub fn data_root(data: &Path, name: &str) -> Result<PathBuf, CliError> {
    if !data.exists() {
        return Err(CliError::input(data, "no such file or directory"));
    }
    if data.is_dir() && data.join(name).exists() {
        return Ok(data.to_path_buf());
    }
    if data.file_name().and_then(|n| n.to_str()) == Some(name) {
        let parent = data.parent().unwrap_or(Path::new("."));
        return Ok(if parent.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            parent.to_path_buf()
        });
    }
    Err(CliError::input(
        data,
        format!("does not hold the torrent's data: expected it to be named `{name}` or to contain `{name}`"),
    ))
}

/// Runs `hyperblow seed`.
pub fn run(args: &SeedArgs, stop: &StopFlag) -> Result<(), CliError> {
    let meta = load_torrent(&args.torrent)?;
    let name = meta.info.name().to_owned();
    let root = data_root(&args.data, &name)?;
    let mode = Mode::choose(args.json, args.quiet);
    let plan = Plan {
        source: Source::Torrent(meta),
        output_dir: root,
        wanted: None,
        filter: FileFilter::default(),
        save_torrent: None,
        net: args.net.clone(),
        goal: Goal::Seed(SeedGoal {
            ratio: args.ratio,
            time: args.seed_time,
        }),
        timeout: None,
        must_be_complete: true,
        mode,
        label: None,
    };
    let outcome = transfer::run(plan, stop)?;
    let uploaded = outcome.stats.as_ref().map_or(0, |s| s.uploaded);
    match mode {
        Mode::Json => println!(
            "{}",
            crate::safe::json(&json!({"event": "done", "name": name, "uploaded": uploaded,
                   "seconds": outcome.elapsed.as_secs_f64()}))
        ),
        Mode::Bar | Mode::Plain => eprintln!(
            "{}: seeding done, {} uploaded in {}",
            crate::safe::escape(&name),
            units::bytes(uploaded),
            crate::progress::duration(outcome.elapsed)
        ),
        Mode::Quiet => {}
    }
    Ok(())
}
