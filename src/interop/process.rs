//! Real programs as children of the test: spawned with their output in log files, bounded in time,
//! and stopped by PID (SIGTERM, then SIGKILL after a grace period) when their guard is dropped.
//!
//! Three layers make sure nothing outlives its test:
//! - [`ChildGuard`]'s `Drop` stops the child it spawned, and only that PID.
//! - A watchdog thread stops the child when its hard time bound elapses, even if the test hangs.
//! - When `setpriv` (util-linux) is installed, the child is started through
//!   `setpriv --pdeathsig KILL`, which then `exec`s the program under the same PID: if the test
//!   binary itself dies (a crash, a SIGKILL from a CI timeout), the kernel kills the child too.
//!   The parent-death signal belongs to the *thread* that spawned the child, so spawn guards on the
//!   thread that keeps them (a test's own thread), never on a short-lived helper thread. It is also
//!   cleared when a program changes its credentials (opentracker setuid()s to `nobody`); the other
//!   two layers still hold for those.

use std::fmt::Write as _;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Re-exported so that callers of [`ChildGuard::signal`] need no rustix import.
pub use rustix::process::Signal;
use rustix::process::{kill_process, Pid};

/// How long a child gets between SIGTERM and SIGKILL.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

/// How often [`wait_for`] polls its condition.
pub const POLL_EVERY: Duration = Duration::from_millis(50);

/// How many lines of each log an error message quotes.
pub const LOG_TAIL_LINES: usize = 25;

/// Everything that can go wrong while the harness drives real programs.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// An I/O operation of the harness itself failed.
    #[error("{what}: {source}")]
    Io {
        /// What the harness was doing.
        what: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A bounded wait ran out of time.
    #[error("timed out after {waited:?} waiting for {what}\n{logs}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long the wait lasted.
        waited: Duration,
        /// The tails of the logs of the processes involved.
        logs: String,
    },
    /// A process that a wait depended on exited first.
    #[error("{name} exited ({status}) while waiting for {what}\n{logs}")]
    Exited {
        /// The process's name.
        name: String,
        /// Its exit status.
        status: String,
        /// What was awaited.
        what: String,
        /// The tails of the logs of the processes involved.
        logs: String,
    },
    /// A helper program (mktorrent, transmission-remote, ...) failed or said something unexpected.
    #[error("{what}: {detail}")]
    Tool {
        /// What the harness asked for.
        what: String,
        /// The program's exit status and output, or what was wrong with them.
        detail: String,
    },
}

impl HarnessError {
    /// Wraps an I/O error with what the harness was doing.
    pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
        let what = what.into();
        move |source| HarnessError::Io { what, source }
    }
}

/// Shorthand for the harness's results.
pub type Result<T, E = HarnessError> = std::result::Result<T, E>;

/// The part of a guard that the watchdog thread shares.
#[derive(Debug)]
struct Shared {
    name: String,
    pid: u32,
    child: Mutex<Child>,
    status: Mutex<Option<ExitStatus>>,
}

impl Shared {
    fn lock_child(&self) -> MutexGuard<'_, Child> {
        // A panic while holding the lock cannot leave a Child in a bad state: keep using it.
        self.child.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn lock_status(&self) -> MutexGuard<'_, Option<ExitStatus>> {
        self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The exit status if the child has exited (it is reaped here, once).
    fn try_status(&self) -> Option<ExitStatus> {
        let mut status = self.lock_status();
        if status.is_none() {
            if let Ok(Some(s)) = self.lock_child().try_wait() {
                *status = Some(s);
            }
        }
        *status
    }

    /// Sends `sig` to our PID while holding the reaping lock, so that the PID is still ours.
    fn signal(&self, sig: Signal) -> Result<()> {
        let what = format!("signal {} (pid {})", self.name, self.pid);
        let mut status = self.lock_status();
        if status.is_none() {
            if let Ok(Some(s)) = self.lock_child().try_wait() {
                *status = Some(s);
            }
        }
        if let Some(s) = *status {
            return Err(HarnessError::Tool {
                what,
                detail: format!("it has already exited ({s})"),
            });
        }
        let pid = i32::try_from(self.pid)
            .ok()
            .and_then(Pid::from_raw)
            .ok_or_else(|| HarnessError::Tool {
                what: what.clone(),
                detail: "not a valid pid".into(),
            })?;
        kill_process(pid, sig).map_err(|e| HarnessError::io(what)(e.into()))
    }

    /// SIGTERM to our PID, up to `grace` for it to exit, then SIGKILL; returns the exit status.
    ///
    /// The child is never reaped before its signals are sent, so the PID cannot have been reused
    /// by another process.
    fn stop(&self, grace: Duration) -> Option<ExitStatus> {
        if let Some(s) = self.try_status() {
            return Some(s);
        }
        let pid = i32::try_from(self.pid).ok().and_then(Pid::from_raw);
        if let Some(pid) = pid {
            // ESRCH cannot happen for an unreaped child; any error just means we go to SIGKILL.
            let _ = kill_process(pid, Signal::TERM);
        }
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Some(s) = self.try_status() {
                return Some(s);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut status = self.lock_status();
        if status.is_none() {
            let mut child = self.lock_child();
            let _ = child.kill(); // SIGKILL to exactly this PID
            *status = child.wait().ok();
        }
        *status
    }
}

/// A running child process that is stopped (by its PID only) when the guard is dropped.
#[derive(Debug)]
pub struct ChildGuard {
    shared: Arc<Shared>,
    stdout_path: PathBuf,
    stderr_path: PathBuf,
    started: Instant,
    bound: Duration,
    watchdog: Option<(mpsc::Sender<()>, JoinHandle<()>)>,
}

/// Whether `setpriv` is available to give children a parent-death signal.
fn setpriv() -> Option<PathBuf> {
    ["/usr/bin/setpriv", "/bin/setpriv"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

impl ChildGuard {
    /// Spawns `cmd` (its program, arguments, working directory and environment are kept; stdin is
    /// closed) with stdout and stderr going to `<log_dir>/<name>.stdout` / `.stderr`, and a hard time
    /// bound after which a watchdog stops it.
    pub fn spawn(name: &str, cmd: &Command, log_dir: &Path, bound: Duration) -> Result<ChildGuard> {
        let stdout_path = log_dir.join(format!("{name}.stdout"));
        let stderr_path = log_dir.join(format!("{name}.stderr"));
        let out = File::create(&stdout_path).map_err(HarnessError::io(format!(
            "create {}",
            stdout_path.display()
        )))?;
        let err = File::create(&stderr_path).map_err(HarnessError::io(format!(
            "create {}",
            stderr_path.display()
        )))?;

        let mut real = match setpriv() {
            Some(sp) => {
                let mut c = Command::new(sp);
                c.args(["--pdeathsig", "KILL", "--"]).arg(cmd.get_program());
                c
            }
            None => Command::new(cmd.get_program()),
        };
        real.args(cmd.get_args());
        if let Some(dir) = cmd.get_current_dir() {
            real.current_dir(dir);
        }
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => real.env(k, v),
                None => real.env_remove(k),
            };
        }
        real.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = real.spawn().map_err(HarnessError::io(format!(
            "spawn {name} ({})",
            cmd.get_program().to_string_lossy()
        )))?;
        let shared = Arc::new(Shared {
            name: name.to_string(),
            pid: child.id(),
            child: Mutex::new(child),
            status: Mutex::new(None),
        });

        let (tx, rx) = mpsc::channel::<()>();
        let watched = Arc::clone(&shared);
        let watchdog = std::thread::Builder::new()
            .name(format!("watchdog-{name}"))
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(bound) {
                    eprintln!(
                        "watchdog: {} (pid {}) exceeded its {bound:?} bound; stopping it",
                        watched.name, watched.pid
                    );
                    watched.stop(STOP_GRACE);
                }
            })
            .map_err(HarnessError::io(format!(
                "spawn the watchdog thread of {name}"
            )))?;

        Ok(ChildGuard {
            shared,
            stdout_path,
            stderr_path,
            started: Instant::now(),
            bound,
            watchdog: Some((tx, watchdog)),
        })
    }

    /// The name given at spawn time (also the log file stem).
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The child's PID.
    pub fn pid(&self) -> u32 {
        self.shared.pid
    }

    /// Time since the spawn.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// The hard time bound given at spawn time.
    pub fn bound(&self) -> Duration {
        self.bound
    }

    /// The exit status, if the child has exited.
    pub fn try_status(&self) -> Option<ExitStatus> {
        self.shared.try_status()
    }

    /// Whether the child is still running.
    pub fn is_running(&self) -> bool {
        self.try_status().is_none()
    }

    /// Whether this child itself (not another program) has a TCP socket listening on `port` of
    /// 127.0.0.1: one of its open files (`/proc/PID/fd`) is a socket that `/proc/net/tcp` lists as
    /// listening there. A readiness check that a program on a recycled port cannot pass.
    pub fn listens_on_tcp(&self, port: u16) -> bool {
        let ours = socket_inodes(self.pid());
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap_or_default();
        listening_inodes(&table, [127, 0, 0, 1], port)
            .iter()
            .any(|inode| ours.contains(inode))
    }

    /// Sends `signal` (e.g. `Signal::HUP`) to the child's PID; an error if it has exited.
    pub fn signal(&self, signal: Signal) -> Result<()> {
        self.shared.signal(signal)
    }

    /// Stops the child now (SIGTERM, SIGKILL after [`STOP_GRACE`]) and returns its exit status.
    pub fn stop(&self) -> Option<ExitStatus> {
        self.shared.stop(STOP_GRACE)
    }

    /// Stops the child at once with SIGKILL (a crash, as far as its peers can tell).
    pub fn kill_now(&self) -> Option<ExitStatus> {
        self.shared.stop(Duration::ZERO)
    }

    /// Waits up to `timeout` for the child to exit by itself.
    pub fn wait_exit(&self, timeout: Duration) -> Result<ExitStatus> {
        let what = format!("{} (pid {}) to exit", self.name(), self.pid());
        wait_for(&what, timeout, &[self], || Ok(self.try_status()))
    }

    /// Path of the file holding the child's stdout.
    pub fn stdout_path(&self) -> &Path {
        &self.stdout_path
    }

    /// Path of the file holding the child's stderr.
    pub fn stderr_path(&self) -> &Path {
        &self.stderr_path
    }

    /// Everything the child wrote to stdout so far (lossily decoded).
    pub fn stdout_text(&self) -> String {
        read_lossy(&self.stdout_path)
    }

    /// Everything the child wrote to stderr so far (lossily decoded).
    pub fn stderr_text(&self) -> String {
        read_lossy(&self.stderr_path)
    }

    /// The lines of the child's stdout so far that parse as JSON (`--json` output), in order.
    pub fn json_lines(&self) -> Vec<serde_json::Value> {
        self.stdout_text()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits up to `timeout` for the child to exit and returns its exit code (-1 when a signal
    /// ended it).
    pub fn exit_code(&self, timeout: Duration) -> Result<i32> {
        Ok(self.wait_exit(timeout)?.code().unwrap_or(-1))
    }

    /// The last `lines` lines of stdout and stderr, labelled, for error messages.
    pub fn log_tail(&self, lines: usize) -> String {
        let status = match self.try_status() {
            Some(s) => format!("exited: {s}"),
            None => "running".to_string(),
        };
        let mut out = format!(
            "--- {} (pid {}, {status}, {:.1?} old) ---\n",
            self.name(),
            self.pid(),
            self.elapsed()
        );
        for (label, text) in [
            ("stdout", self.stdout_text()),
            ("stderr", self.stderr_text()),
        ] {
            let all: Vec<&str> = text.lines().collect();
            let from = all.len().saturating_sub(lines);
            let _ = writeln!(
                out,
                "[{label}, last {} of {} lines]",
                all.len() - from,
                all.len()
            );
            for line in all.iter().skip(from) {
                let _ = writeln!(out, "  {line}");
            }
        }
        out
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.shared.stop(STOP_GRACE);
        if let Some((tx, handle)) = self.watchdog.take() {
            drop(tx); // wakes the watchdog, which then exits without touching the child
            let _ = handle.join();
        }
    }
}

/// The inodes of the sockets that process `pid` has open (`socket:[INODE]` links in its fd dir).
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|link| {
            let text = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?;
            text.parse().ok()
        })
        .collect()
}

/// The inodes of the sockets that `/proc/net/tcp` (given as `table`) lists as listening on
/// `ip:port`. Its addresses are hex in host byte order: 127.0.0.1:80 is `0100007F:0050` on x86.
fn listening_inodes(table: &str, ip: [u8; 4], port: u16) -> Vec<u64> {
    let local = format!("{:08X}:{port:04X}", u32::from_ne_bytes(ip));
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl, local_address, rem_address, st (0A = LISTEN), ..., inode (the 10th field).
            (f.get(1) == Some(&local.as_str()) && f.get(3) == Some(&"0A"))
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

fn read_lossy(path: &Path) -> String {
    let mut bytes = Vec::new();
    if let Ok(mut f) = File::open(path) {
        let _ = f.read_to_end(&mut bytes);
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The labelled log tails of several processes, for error messages.
pub fn logs_of(procs: &[&ChildGuard]) -> String {
    procs.iter().map(|p| p.log_tail(LOG_TAIL_LINES)).collect()
}

/// Polls `poll` every [`POLL_EVERY`] until it returns `Some`, for at most `timeout`.
///
/// Fails early when one of `watched` exits (nothing it was supposed to do can happen any more),
/// and on timeout; both errors carry the tails of the logs of every watched process.
pub fn wait_for<T>(
    what: &str,
    timeout: Duration,
    watched: &[&ChildGuard],
    mut poll: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let start = Instant::now();
    loop {
        if let Some(v) = poll()? {
            return Ok(v);
        }
        for p in watched {
            if let Some(status) = p.try_status() {
                // One more look: the condition may have become true just before the exit.
                if let Some(v) = poll()? {
                    return Ok(v);
                }
                return Err(HarnessError::Exited {
                    name: p.name().to_string(),
                    status: status.to_string(),
                    what: what.to_string(),
                    logs: logs_of(watched),
                });
            }
        }
        if start.elapsed() >= timeout {
            return Err(HarnessError::Timeout {
                what: what.to_string(),
                waited: start.elapsed(),
                logs: logs_of(watched),
            });
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// The captured result of [`run_bounded`].
#[derive(Debug, Clone)]
pub struct Finished {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: String,
    /// Everything written to stderr.
    pub stderr: String,
}

/// Runs a short helper program (mktorrent, transmission-remote, ...) to completion, killing it by
/// PID if it takes longer than `timeout`. Does not check the exit status.
pub fn run_bounded(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let program = cmd.get_program().to_string_lossy().into_owned();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(HarnessError::io(format!("spawn {program}")))?;
    // Drain both pipes on threads so that a chatty program cannot block on a full pipe.
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            String::from_utf8_lossy(&buf).into_owned()
        })
    };
    let out = drain(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = drain(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if start.elapsed() < timeout => std::thread::sleep(Duration::from_millis(10)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(HarnessError::Timeout {
                    what: format!("{program} to finish"),
                    waited: start.elapsed(),
                    logs: String::new(),
                });
            }
            Err(e) => return Err(HarnessError::io(format!("wait for {program}"))(e)),
        }
    };
    Ok(Finished {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Like [`run_bounded`], but a non-zero exit status is an error quoting the program's output.
pub fn run_checked(cmd: &mut Command, timeout: Duration) -> Result<Finished> {
    let what = format!(
        "{} {}",
        cmd.get_program().to_string_lossy(),
        cmd.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ")
    );
    let done = run_bounded(cmd, timeout)?;
    if done.status.success() {
        Ok(done)
    } else {
        Err(HarnessError::Tool {
            what,
            detail: format!(
                "{}\nstdout: {}\nstderr: {}",
                done.status, done.stdout, done.stderr
            ),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drop_stops_the_child_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard =
            ChildGuard::spawn("sleeper", &cmd, dir.path(), Duration::from_secs(60)).unwrap();
        let pid = guard.pid();
        assert!(guard.is_running());
        let proc_path = PathBuf::from(format!("/proc/{pid}"));
        assert!(proc_path.exists());
        let t = Instant::now();
        drop(guard);
        // sleep dies on SIGTERM at once: no need for the SIGKILL grace.
        assert!(t.elapsed() < STOP_GRACE, "took {:?}", t.elapsed());
        assert!(!proc_path.exists(), "pid {pid} still exists after drop");
    }

    #[test]
    fn sigkill_after_grace_when_sigterm_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "trap '' TERM; echo ready; while :; do sleep 0.05; done",
        ]);
        let guard =
            ChildGuard::spawn("stubborn", &cmd, dir.path(), Duration::from_secs(60)).unwrap();
        wait_for("ready", Duration::from_secs(5), &[&guard], || {
            Ok(guard.stdout_text().contains("ready").then_some(()))
        })
        .unwrap();
        let status = guard.shared.stop(Duration::from_millis(200)).unwrap();
        assert!(!status.success());
        assert!(!guard.is_running());
    }

    #[test]
    fn watchdog_enforces_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sleep");
        cmd.arg("30");
        let guard =
            ChildGuard::spawn("bounded", &cmd, dir.path(), Duration::from_millis(200)).unwrap();
        let status = guard.wait_exit(Duration::from_secs(5)).unwrap();
        assert!(!status.success());
    }

    #[test]
    fn wait_for_reports_exit_and_timeout_with_logs() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("sh");
        cmd.args(["-c", "echo some-diagnostic >&2; exit 7"]);
        let guard =
            ChildGuard::spawn("quitter", &cmd, dir.path(), Duration::from_secs(10)).unwrap();
        let err = wait_for("never", Duration::from_secs(5), &[&guard], || {
            Ok(None::<()>)
        })
        .unwrap_err()
        .to_string();
        assert!(err.contains("quitter exited"), "{err}");
        assert!(err.contains("some-diagnostic"), "{err}");

        let err = wait_for("nothing", Duration::from_millis(120), &[], || {
            Ok(None::<()>)
        })
        .unwrap_err();
        assert!(matches!(err, HarnessError::Timeout { .. }), "{err}");
    }

    #[test]
    fn listens_on_tcp_tells_our_listener_from_another_program() {
        let dir = tempfile::tempdir().unwrap();
        // A child that listens on a port we picked, and one that does not (sleep).
        let port = super::super::ports::free_port().unwrap();
        let mut cmd = Command::new(crate::interop::SYSTEM_PYTHON);
        cmd.args([
            "-c",
            &format!(
                "import socket,time\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\n\
                 s.listen()\nprint('ready',flush=True)\ntime.sleep(30)"
            ),
        ]);
        let listener =
            ChildGuard::spawn("listener", &cmd, dir.path(), Duration::from_secs(60)).unwrap();
        let mut other = Command::new("sleep");
        other.arg("30");
        let other =
            ChildGuard::spawn("other", &other, dir.path(), Duration::from_secs(60)).unwrap();
        wait_for(
            "the listener",
            Duration::from_secs(20),
            &[&listener],
            || Ok(listener.stdout_text().contains("ready").then_some(())),
        )
        .unwrap();
        assert!(listener.listens_on_tcp(port));
        assert!(!other.listens_on_tcp(port), "sleep does not listen there");
        assert!(!listener.listens_on_tcp(port.wrapping_add(1)));
    }

    #[test]
    fn reads_listening_sockets_of_proc_net_tcp() {
        let lo = format!("{:08X}", u32::from_ne_bytes([127, 0, 0, 1]));
        let table = format!(
            "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n\
             \x20  0: {lo}:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4242 1 0\n\
             \x20  1: {lo}:1F90 {lo}:D431 01 00000000:00000000 00:00000000 00000000     0        0 4343 1 0\n\
             \x20  2: 00000000:1F91 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 4444 1 0\n"
        );
        assert_eq!(listening_inodes(&table, [127, 0, 0, 1], 8080), vec![4242]);
        assert!(listening_inodes(&table, [127, 0, 0, 1], 8081).is_empty());
        assert_eq!(listening_inodes(&table, [0, 0, 0, 0], 8081), vec![4444]);
    }

    #[test]
    fn run_bounded_kills_a_slow_program() {
        let t = Instant::now();
        let err = run_bounded(Command::new("sleep").arg("30"), Duration::from_millis(150));
        assert!(matches!(err, Err(HarnessError::Timeout { .. })));
        assert!(t.elapsed() < Duration::from_secs(25));
        let ok = run_checked(Command::new("echo").arg("hi"), Duration::from_secs(5)).unwrap();
        assert_eq!(ok.stdout, "hi\n");
        assert!(run_checked(&mut Command::new("false"), Duration::from_secs(5)).is_err());
    }
}
