//! End-to-end download throughput: one seeder process and one leecher process, both ours, over loopback.
//!
//! Run with `cargo bench --bench throughput` (see the README's "Benchmarks" section). For every payload
//! size and every runtime it starts a seeder process and a leecher process (this same binary, re-run
//! with `HB_BENCH_ROLE`), has the leecher download the single-file torrent from the seeder, and prints
//! the leecher's wall time, throughput, CPU seconds per GiB and peak resident memory.
//!
//! What is measured, and how:
//! - Wall time runs from the leecher's `add_torrent` call to its `TorrentCompleted` event (every piece
//!   hash-checked and written with `pwrite`). The `fsync` of the whole file that our session does at
//!   completion runs after that event and is reported separately ("shutdown"), together with the rest
//!   of the shutdown (resume file save).
//! - CPU is the leecher process's user + system time (`/proc/self/stat`) over the same window; "total"
//!   adds its start-up and shutdown. Peak memory is the leecher's `VmHWM` (peak RSS over its whole life,
//!   from `/proc/self/status`).
//! - The payload (deterministic pseudo-random bytes, no sparse regions) and its `.torrent` are made
//!   once and cached in `target/bench-data/`; the leecher writes into a fresh directory under
//!   `target/bench-tmp/` (the same disk), deleted afterwards. The seeder therefore reads from the page
//!   cache (the payload was just written or read), and the leecher's writes land in the page cache and
//!   are written back by the kernel in the background (and by the `fsync` at completion). This measures
//!   the client, not the disk.
//! - Both processes share the machine's cores, so the seeder's CPU competes with the leecher's: its CPU
//!   while serving (from listening to the leecher's exit, start-up excluded) is printed per GiB too.
//! - The downloaded file is compared with the payload byte for byte after each run.
//!
//! Environment knobs: `HB_BENCH_SIZES` (MiB, comma-separated, default `256,1024`), `HB_BENCH_RUNTIMES`
//! (default `tokio,async-std`), `HB_BENCH_PIECE_KIB` (default 1024), `HB_BENCH_TIMEOUT` (seconds per
//! download, default 300), `HB_BENCH_REPEAT` (runs per size and variant, default 1; the variants take
//! turns; with more, a `med` row gives each column's median, and each policy's CPU over `disable`'s
//! is printed per side), `HB_BENCH_ENCRYPTION` (the `--encryption` policies to run,
//! set the same on both ends, default `disable,prefer,require`: `disable` is the plain BitTorrent
//! handshake, `prefer` between two Hyperblows is an MSE handshake that selects a plaintext payload,
//! `require` an RC4 payload both ways). For experiments only (reported numbers use the defaults):
//! `HB_BENCH_PENDING_MIB` overrides the engine's `max_pending_piece_bytes` in both processes.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, BufWriter, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use hyperblow_core::metainfo::{Metainfo, TorrentBuilder};
use hyperblow_driver::engine::Event;
use hyperblow_driver::{AddTorrentRequest, RecvError, SessionConfig, SessionEvent, SessionHandle};

type Error = Box<dyn std::error::Error>;

const MIB: u64 = 1024 * 1024;
const GIB: f64 = (1024 * 1024 * 1024) as f64;

fn main() {
    let result = match std::env::var("HB_BENCH_ROLE").as_deref() {
        Ok("seed") => seed(),
        Ok("leech") => leech(),
        _ => orchestrate(),
    };
    if let Err(e) = result {
        eprintln!("throughput bench: {e}");
        std::process::exit(1);
    }
}

// ===== the orchestrator ==========================================================================

fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn env_u64(name: &str, default: u64) -> Result<u64, Error> {
    match std::env::var(name) {
        Ok(v) => Ok(v.trim().parse().map_err(|e| format!("{name}={v}: {e}"))?),
        Err(_) => Ok(default),
    }
}

/// `target/` (this binary lives in `target/<profile>/deps/`).
fn target_dir() -> Result<PathBuf, Error> {
    let exe = std::env::current_exe()?;
    exe.ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .ok_or_else(|| format!("cannot find target/ above {}", exe.display()).into())
}

/// One leecher run's numbers, as the leecher reports them.
#[derive(Debug, Default)]
struct LeechReport {
    wall: f64,
    cpu: f64,
    cpu_total: f64,
    shutdown: f64,
    hwm_kib: u64,
}

fn orchestrate() -> Result<(), Error> {
    let sizes: Vec<u64> = env_list("HB_BENCH_SIZES", "256,1024")
        .iter()
        .map(|s| {
            s.parse::<u64>()
                .map_err(|e| format!("HB_BENCH_SIZES: {s}: {e}"))
        })
        .collect::<Result<_, _>>()?;
    let runtimes = env_list("HB_BENCH_RUNTIMES", "tokio,async-std");
    let policies = env_list("HB_BENCH_ENCRYPTION", "disable,prefer,require");
    for p in &policies {
        p.parse::<hyperblow_core::mse::Policy>()?;
    }
    for rt in &runtimes {
        if rt != "tokio" && rt != "async-std" {
            return Err(format!("HB_BENCH_RUNTIMES: unknown runtime {rt:?}").into());
        }
    }
    let piece = env_u64("HB_BENCH_PIECE_KIB", 1024)? * 1024;
    let timeout = Duration::from_secs(env_u64("HB_BENCH_TIMEOUT", 300)?);
    let target = target_dir()?;
    let exe = std::env::current_exe()?;
    let load = fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "throughput: our seeder -> our leecher over 127.0.0.1, separate processes, {} KiB pieces; \
         load average before: {}",
        piece / 1024,
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<22} {:>6} {:>8} {:>9} {:>11} {:>11} {:>10} {:>10} {:>12}",
        "runtime/encryption",
        "MiB",
        "wall s",
        "MB/s",
        "CPU s/GiB",
        "(total)",
        "peak RSS",
        "shutdown",
        "seed s/GiB"
    );
    let repeat = env_u64("HB_BENCH_REPEAT", 1)?.max(1);
    for &size in &sizes {
        let data = payload(&target, size * MIB, piece as u32)?;
        let bytes = (size * MIB) as f64;
        let row = |label: &str, r: &LeechReport, seeder_cpu: f64| {
            println!(
                "{:<22} {:>6} {:>8.2} {:>9.0} {:>11.2} {:>11.2} {:>7.1} MiB {:>8.2} s {:>12.2}",
                label,
                size,
                r.wall,
                bytes / r.wall / 1e6,
                r.cpu / (bytes / GIB),
                r.cpu_total / (bytes / GIB),
                r.hwm_kib as f64 / 1024.0,
                r.shutdown,
                seeder_cpu / (bytes / GIB),
            );
        };
        let combos: Vec<(&String, &String)> = runtimes
            .iter()
            .flat_map(|rt| policies.iter().map(move |p| (rt, p)))
            .collect();
        // The variants take turns (all of them once, then again), so a change in the machine's load
        // hits them alike.
        let mut all: Vec<Vec<(LeechReport, f64)>> = combos.iter().map(|_| Vec::new()).collect();
        for _ in 0..repeat {
            for (k, (rt, enc)) in combos.iter().enumerate() {
                let (r, seeder_cpu) = run_once(&exe, &target, &data, rt, enc, timeout)?;
                row(&format!("{rt}/{enc}"), &r, seeder_cpu);
                if let Some(v) = all.get_mut(k) {
                    v.push((r, seeder_cpu));
                }
            }
        }
        // (runtime, policy) -> median (leecher CPU s, seeder CPU s), for the differences below.
        let mut medians: Vec<(&String, &String, f64, f64)> = Vec::new();
        for ((rt, enc), runs) in combos.iter().zip(all) {
            let label = format!("{rt}/{enc}");
            if runs.len() > 1 {
                // Each column's median on its own (the machine is shared: single runs vary a lot).
                let median = |f: &dyn Fn(&(LeechReport, f64)) -> f64| {
                    let mut v: Vec<f64> = runs.iter().map(f).collect();
                    v.sort_by(f64::total_cmp);
                    v.get(v.len() / 2).copied().unwrap_or(0.0)
                };
                let m = LeechReport {
                    wall: median(&|r| r.0.wall),
                    cpu: median(&|r| r.0.cpu),
                    cpu_total: median(&|r| r.0.cpu_total),
                    shutdown: median(&|r| r.0.shutdown),
                    hwm_kib: median(&|r| r.0.hwm_kib as f64) as u64,
                };
                let seeder = median(&|r| r.1);
                medians.push((rt, enc, m.cpu, seeder));
                row(&format!("{label} med"), &m, seeder);
            }
        }
        for (rt, enc, leech, seed) in &medians {
            let Some((_, _, l0, s0)) = medians
                .iter()
                .find(|(r, e, _, _)| r == rt && e.as_str() == "disable")
            else {
                continue;
            };
            if enc.as_str() != "disable" {
                let per_gib = |cpu: f64| cpu / (bytes / GIB);
                println!(
                    "{rt}/{enc} over {rt}/disable (medians): leecher {:+.2} CPU s/GiB, seeder {:+.2} CPU s/GiB",
                    per_gib(leech - l0),
                    per_gib(seed - s0),
                );
            }
        }
    }
    println!(
        "MB/s = 10^6 bytes per second of wall time; CPU s/GiB = leecher user+system CPU during the \
         download per GiB ((total): whole process life); seed s/GiB = seeder user+system CPU from \
         listening to the leecher's exit, per GiB; peak RSS = leecher VmHWM; shutdown = fsync of \
         the downloaded file + resume save; data served from and written to the page cache."
    );
    Ok(())
}

/// The cached payload of `len` bytes and its torrent: (data directory, file name, torrent path).
struct Payload {
    dir: PathBuf,
    file: PathBuf,
    torrent: PathBuf,
}

/// Makes (once) `target/bench-data/<len>-<piece>/` with the payload file and its `.torrent`. The
/// torrent is written last, so its presence means the payload is complete.
fn payload(target: &Path, len: u64, piece: u32) -> Result<Payload, Error> {
    let mib = len / MIB;
    let dir = target
        .join("bench-data")
        .join(format!("{mib}MiB-{}KiB", piece / 1024));
    let name = format!("payload-{mib}MiB.bin");
    let file = dir.join(&name);
    let torrent = dir.join("payload.torrent");
    let cached = fs::metadata(&file).is_ok_and(|m| m.len() == len)
        && fs::read(&torrent)
            .ok()
            .and_then(|b| Metainfo::from_bytes(&b).ok())
            .is_some_and(|m| m.info.layout().total_length() == len);
    if cached {
        return Ok(Payload { dir, file, torrent });
    }
    eprintln!("making the {mib} MiB payload in {} (once)", dir.display());
    fs::create_dir_all(&dir)?;
    let _ = fs::remove_file(&torrent);
    // A stale resume file of the seeder would describe other data.
    let _ = fs::remove_dir_all(dir.join(".hyperblow"));
    let mut hasher = TorrentBuilder::single_file(name, len)
        .piece_length(piece)
        .creation_date(0)
        .start()?;
    let mut out = BufWriter::new(File::create(&file)?);
    let mut rng = 0x2545_f491_4f6c_dd1d_u64 ^ len;
    let mut chunk = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(MIB) as usize;
        for word in chunk[..n].chunks_mut(8) {
            // xorshift64: incompressible, never zero, so no sparse regions and no dedup.
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            let bytes = rng.to_le_bytes();
            word.copy_from_slice(&bytes[..word.len()]);
        }
        hasher.update(&chunk[..n])?;
        out.write_all(&chunk[..n])?;
        left -= n as u64;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let built = hasher.finish()?;
    fs::write(&torrent, &built.bytes)?;
    Ok(Payload { dir, file, torrent })
}

/// Kills a child by its PID when dropped (a failed run never leaves processes behind).
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Reads a child's stdout lines on a thread, so waits can have a deadline.
fn lines(out: ChildStdout) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for the first line starting with `prefix` and returns the rest of it.
fn expect_line(
    rx: &mpsc::Receiver<String>,
    prefix: &str,
    timeout: Duration,
) -> Result<String, Error> {
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                return Err(format!("no {prefix:?} line within {timeout:?}").into())
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                return Err(format!("the child exited before printing {prefix:?}").into())
            }
        }
    }
}

fn field(line: &str, key: &str) -> Result<f64, Error> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key).and_then(|v| v.strip_prefix('=')))
        .ok_or_else(|| format!("no {key} in {line:?}"))?
        .parse::<f64>()
        .map_err(|e| format!("{key} in {line:?}: {e}").into())
}

/// One download: seeder and leecher processes; returns the leecher's report and the seeder's CPU.
fn run_once(
    exe: &Path,
    target: &Path,
    data: &Payload,
    rt: &str,
    enc: &str,
    timeout: Duration,
) -> Result<(LeechReport, f64), Error> {
    let spawn = |role: &str, args: &[&Path]| -> io::Result<Child> {
        Command::new(exe)
            .env("HB_BENCH_ROLE", role)
            .env("HB_BENCH_ENC", enc)
            .arg(rt)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
    };
    let mut seeder = Guard(spawn("seed", &[&data.torrent, &data.dir])?);
    let seeder_out = lines(seeder.0.stdout.take().ok_or("seeder stdout")?);
    // A first run checks the whole payload (no resume file yet): allow for that.
    let addr = expect_line(&seeder_out, "listening ", Duration::from_secs(120))?;

    let tmp = target.join("bench-tmp");
    fs::create_dir_all(&tmp)?;
    let out = tempfile::Builder::new().prefix("leech-").tempdir_in(&tmp)?;
    let mut leecher = Guard(spawn(
        "leech",
        &[&data.torrent, out.path(), Path::new(&addr)],
    )?);
    let leecher_out = lines(leecher.0.stdout.take().ok_or("leecher stdout")?);
    let line = expect_line(&leecher_out, "result ", timeout + Duration::from_secs(60))?;
    let report = LeechReport {
        wall: field(&line, "wall")?,
        cpu: field(&line, "cpu")?,
        cpu_total: field(&line, "cpu_total")?,
        shutdown: field(&line, "shutdown")?,
        hwm_kib: field(&line, "hwm_kib")? as u64,
    };
    let status = leecher.0.wait()?;
    if !status.success() {
        return Err(format!("leecher exited with {status}").into());
    }
    // Closing the seeder's stdin asks it to report the CPU it used while serving, and shut down.
    drop(seeder.0.stdin.take());
    let seeder_line = expect_line(&seeder_out, "cpu ", Duration::from_secs(30))?;
    let seeder_cpu = field(&format!("cpu={seeder_line}"), "cpu")?;
    let _ = seeder.0.wait();

    let got = out
        .path()
        .join(data.file.file_name().ok_or("payload name")?);
    if !same_content(&data.file, &got)? {
        return Err(format!("{} differs from {}", got.display(), data.file.display()).into());
    }
    Ok((report, seeder_cpu))
}

fn same_content(a: &Path, b: &Path) -> Result<bool, Error> {
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    if fa.metadata()?.len() != fb.metadata()?.len() {
        return Ok(false);
    }
    let (mut ba, mut bb) = (vec![0u8; MIB as usize], vec![0u8; MIB as usize]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

// ===== the peer processes ========================================================================

/// User + system CPU seconds of this process so far (`/proc/self/stat`, in USER_HZ = 100 ticks).
fn cpu_seconds() -> f64 {
    let stat = fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let tick = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (tick(11) + tick(12)) / 100.0
}

/// Peak resident set size of this process in KiB (`VmHWM`).
fn peak_rss_kib() -> u64 {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn start_session(rt: &str) -> Result<SessionHandle, Error> {
    let mut config = SessionConfig {
        bind_addr: "127.0.0.1".parse()?,
        ..SessionConfig::default()
    };
    if let Ok(v) = std::env::var("HB_BENCH_ENC") {
        config.engine.encryption = v.parse()?;
    }
    // For experiments only: the numbers reported should come from the defaults.
    if let Ok(v) = std::env::var("HB_BENCH_PENDING_MIB") {
        config.engine.max_pending_piece_bytes = v.parse::<u64>()? * MIB;
    }
    Ok(match rt {
        "tokio" => hyperblow_tokio::start(config)?,
        "async-std" => hyperblow_async_std::start(config)?,
        other => return Err(format!("unknown runtime {other:?}").into()),
    })
}

/// `HB_BENCH_ROLE=seed <runtime> <torrent> <data dir>`: seeds until stdin closes, then prints its CPU.
fn seed() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rt, torrent, dir] = &args[..] else {
        return Err(format!("seed: expected <runtime> <torrent> <dir>, got {args:?}").into());
    };
    let metainfo = Metainfo::from_bytes(&fs::read(torrent)?)?;
    let session = start_session(rt)?;
    let added = session
        .add_torrent(AddTorrentRequest::new(metainfo, dir))
        .wait()?;
    if added.have_pieces != added.total_pieces {
        return Err(format!(
            "seed: only {} of {} pieces on disk in {dir}",
            added.have_pieces, added.total_pieces
        )
        .into());
    }
    println!("listening {}", session.listen_addr());
    io::stdout().flush()?;
    // Serving starts here: the start-up (loading the torrent, reading or writing the resume file) is
    // not the cost of the transfer.
    let cpu0 = cpu_seconds();
    // Stdin closes when the orchestrator is done with us (or dies).
    let mut sink = Vec::new();
    let _ = io::stdin().read_to_end(&mut sink);
    println!("cpu {:.3}", cpu_seconds() - cpu0);
    io::stdout().flush()?;
    session.shutdown().wait_timeout(Duration::from_secs(30))?;
    Ok(())
}

/// `HB_BENCH_ROLE=leech <runtime> <torrent> <out dir> <seeder addr>`: downloads, prints one result line.
fn leech() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [rt, torrent, out, addr] = &args[..] else {
        return Err(
            format!("leech: expected <runtime> <torrent> <out> <addr>, got {args:?}").into(),
        );
    };
    let timeout = Duration::from_secs(env_u64("HB_BENCH_TIMEOUT", 300)?);
    let metainfo = Metainfo::from_bytes(&fs::read(torrent)?)?;
    let addr: SocketAddr = addr.parse()?;
    let session = start_session(rt)?;
    let mut events = session.events();
    let (cpu0, t0) = (cpu_seconds(), Instant::now());
    let added = session
        .add_torrent(AddTorrentRequest::new(metainfo, out).peers(vec![addr]))
        .wait()?;
    let deadline = t0 + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!("leech: not complete after {timeout:?}").into());
        }
        match events.recv_timeout(left.min(Duration::from_secs(1))) {
            Ok(SessionEvent::Engine(Event::TorrentCompleted(id))) if id == added.id => break,
            Ok(SessionEvent::Engine(Event::TorrentError { message, .. })) => {
                return Err(format!("leech: torrent error: {message}").into())
            }
            Ok(SessionEvent::StorageError { message, .. }) => {
                return Err(format!("leech: storage error: {message}").into())
            }
            Ok(_) | Err(RecvError::Empty) => {}
            Err(RecvError::Closed) => return Err("leech: the session ended".into()),
        }
    }
    let (cpu1, t1) = (cpu_seconds(), Instant::now());
    session.shutdown().wait_timeout(Duration::from_secs(60))?;
    let t2 = Instant::now();
    println!(
        "result wall={:.3} cpu={:.3} cpu_total={:.3} shutdown={:.3} hwm_kib={}",
        (t1 - t0).as_secs_f64(),
        cpu1 - cpu0,
        cpu_seconds(),
        (t2 - t1).as_secs_f64(),
        peak_rss_kib()
    );
    Ok(())
}
