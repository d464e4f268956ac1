//! Child processes of a job (the trainer, the evaluator, the prompt generator, the reward trainer): each in its
//! own process group, stdout read line by line, stderr appended to a log file, and the whole group killed on
//! cancel. `Follower` is the one loop that follows every child to its end.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};
use tokio::sync::watch;

use crate::error::{Error, Result};

pub struct RunningChild {
    child: Child,
    /// Its stdout, line by line; `None` when its stdout goes to its log too (`spawn_logged`).
    lines: Option<Lines<BufReader<ChildStdout>>>,
    program: String,
}

/// Variables a trainer child inherits: the basics a Python process needs, and those that steer CUDA, NCCL,
/// torchrun, accelerate and the thread pools. Everything else in the server's environment stays behind.
const INHERITED: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LANG",
    "LC_ALL",
    "TMPDIR",
    "TZ",
    "LD_LIBRARY_PATH",
];
const INHERITED_PREFIXES: &[&str] = &[
    "CUDA_",
    "NCCL_",
    "OMP_",
    "MKL_",
    "TORCH",
    "ACCELERATE_",
    "HF_",
    "PYTHON",
];

fn inherited(name: &str) -> bool {
    INHERITED.contains(&name) || INHERITED_PREFIXES.iter().any(|prefix| name.starts_with(prefix))
}

/// The environment a trainer child starts with: `trainer_dir` (which holds the t2i_trainer package the children
/// run with `python -m`) first on PYTHONPATH, so a trainer Python without the package installed finds it.
pub fn child_environment(trainer_dir: &Path) -> Vec<(String, String)> {
    let mut environment: Vec<(String, String)> = std::env::vars()
        .filter(|(name, _)| inherited(name) && name != "PYTHONPATH")
        .collect();
    environment.push(("PYTHONUNBUFFERED".into(), "1".into()));
    let existing = std::env::var_os("PYTHONPATH");
    environment.push(("PYTHONPATH".into(), python_path(trainer_dir, existing.as_deref())));
    environment
}

/// `trainer_dir` as an absolute path, followed by the non-empty entries of `existing` (an inherited PYTHONPATH).
fn python_path(trainer_dir: &Path, existing: Option<&OsStr>) -> String {
    let first = std::path::absolute(trainer_dir).unwrap_or_else(|_| trainer_dir.to_path_buf());
    let rest = existing
        .map(|paths| std::env::split_paths(paths).collect::<Vec<_>>())
        .unwrap_or_default();
    let entries = std::iter::once(first.clone()).chain(rest.into_iter().filter(|path| !path.as_os_str().is_empty()));
    std::env::join_paths(entries)
        .unwrap_or_else(|_| first.into_os_string())
        .to_string_lossy()
        .into_owned()
}

/// Run in a child between fork and exec (`pre_exec`): the kernel sends it SIGKILL when the server dies, even by
/// SIGKILL, so no child outlives the server. Touches no memory of the parent.
pub fn die_with_parent() -> std::io::Result<()> {
    // SAFETY: prctl with PR_SET_PDEATHSIG reads no pointer and is async-signal-safe.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

impl RunningChild {
    /// Starts `command[0]` with the rest as arguments, stderr appended to `log`, `trainer_dir` on PYTHONPATH.
    pub fn spawn(command: &[String], log: &Path, trainer_dir: &Path) -> Result<Self> {
        Self::start(command, log, trainer_dir, false)
    }

    /// As `spawn`, with stdout appended to `log` as well: a child whose output nobody reads (another node's
    /// torchrun agent).
    pub fn spawn_logged(command: &[String], log: &Path, trainer_dir: &Path) -> Result<Self> {
        Self::start(command, log, trainer_dir, true)
    }

    fn start(command: &[String], log: &Path, trainer_dir: &Path, stdout_to_log: bool) -> Result<Self> {
        let (program, args) = command
            .split_first()
            .ok_or_else(|| Error::Config("an empty command line".into()))?;
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|err| Error::Internal(format!("cannot open {}: {err}", log.display())))?;
        let mut builder = Command::new(program);
        // A sanitised environment: the server's secrets (T2I_API_KEYS and the like) never reach the trainer.
        builder.env_clear().envs(child_environment(trainer_dir));
        let stdout = if stdout_to_log {
            Stdio::from(
                stderr
                    .try_clone()
                    .map_err(|err| Error::Internal(format!("cannot open {}: {err}", log.display())))?,
            )
        } else {
            Stdio::piped()
        };
        builder
            .args(args)
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::from(stderr))
            // Its own process group, so a cancel reaches every process it starts (torchrun's workers too).
            .process_group(0)
            .kill_on_drop(true);
        // If the server dies (even by SIGKILL), the kernel kills the child too: no orphan keeps training.
        // SAFETY: `die_with_parent` only calls prctl, which is async-signal-safe.
        unsafe {
            builder.pre_exec(die_with_parent);
        }
        let mut child = builder
            .spawn()
            .map_err(|err| Error::Config(format!("cannot start `{}`: {err}", command.join(" "))))?;
        let lines = child.stdout.take().map(|stdout| BufReader::new(stdout).lines());
        if lines.is_none() && !stdout_to_log {
            return Err(Error::Internal("the child has no stdout".into()));
        }
        Ok(RunningChild {
            child,
            lines,
            program: program.clone(),
        })
    }

    /// The next line of stdout; `None` at its end.
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        let Some(lines) = self.lines.as_mut() else {
            return Ok(None);
        };
        lines
            .next_line()
            .await
            .map_err(|err| Error::Internal(format!("cannot read the output of {}: {err}", self.program)))
    }

    /// Its stdout lines, for a reader of its own; `next_line` then answers `None`.
    pub fn take_lines(&mut self) -> Option<Lines<BufReader<ChildStdout>>> {
        self.lines.take()
    }

    /// Its process id, which is also its process group's.
    pub fn id(&self) -> Option<u32> {
        self.child.id()
    }

    pub async fn wait(&mut self) -> Result<ExitStatus> {
        self.child
            .wait()
            .await
            .map_err(|err| Error::Internal(format!("cannot wait for {}: {err}", self.program)))
    }

    /// SIGTERM to the whole group, then SIGKILL if it has not exited within `grace`.
    pub async fn kill_group(&mut self, grace: Duration) {
        let Some(pid) = self.child.id() else {
            return;
        };
        signal_group(pid, libc::SIGTERM);
        if tokio::time::timeout(grace, self.child.wait()).await.is_err() {
            signal_group(pid, libc::SIGKILL);
            let _ = self.child.wait().await;
        }
    }
}

/// Sends `signal` to the process group `pid` leads; a group that is gone is ignored.
pub fn signal_group(pid: u32, signal: i32) {
    // SAFETY: kill() only sends a signal; a group that is gone yields ESRCH, which we ignore.
    unsafe {
        libc::kill(-(pid as i32), signal);
    }
}

/// The last `bytes` of a log file, for an error message.
pub fn log_tail(log: &Path, bytes: usize) -> String {
    let text = std::fs::read(log).unwrap_or_default();
    let start = text.len().saturating_sub(bytes);
    String::from_utf8_lossy(&text[start..]).trim().to_string()
}

/// A child followed to its end: its stdout line by line, its process group killed as soon as the job is
/// cancelled, and its exit status checked. Every child of a job runs through one.
pub struct Follower {
    child: RunningChild,
    cancelled: watch::Receiver<bool>,
    command: String,
    log: std::path::PathBuf,
}

impl Follower {
    pub fn spawn(command: &[String], log: &Path, trainer_dir: &Path, cancelled: watch::Receiver<bool>) -> Result<Self> {
        Ok(Follower {
            child: RunningChild::spawn(command, log, trainer_dir)?,
            cancelled,
            command: command.join(" "),
            log: log.to_path_buf(),
        })
    }

    /// The next line of stdout, `None` at its end; `Error::Cancelled` once the job is cancelled (the child's
    /// process group is killed first, SIGTERM then SIGKILL after 10 s).
    pub async fn next_line(&mut self) -> Result<Option<String>> {
        loop {
            tokio::select! {
                line = self.child.next_line() => return line,
                changed = self.cancelled.changed() => {
                    if changed.is_err() || *self.cancelled.borrow() {
                        self.child.kill_group(Duration::from_secs(10)).await;
                        return Err(Error::Cancelled);
                    }
                }
            }
        }
    }

    /// Waits for the exit; a failure names the command and `detail`, or else the end of its log.
    pub async fn finish(mut self, detail: Option<String>) -> Result<()> {
        let status = self.child.wait().await?;
        if status.success() {
            return Ok(());
        }
        let detail = detail.unwrap_or_else(|| log_tail(&self.log, 1500));
        Err(Error::Internal(format!(
            "`{}` failed ({status}): {detail}",
            self.command
        )))
    }
}

/// Runs a short command to its end and returns its stdout; fails with its stderr when it exits non-zero.
pub async fn run_to_end(
    command: &[String],
    log: &Path,
    trainer_dir: &Path,
    cancelled: watch::Receiver<bool>,
) -> Result<String> {
    let mut child = Follower::spawn(command, log, trainer_dir, cancelled)?;
    let mut output = String::new();
    while let Some(line) = child.next_line().await? {
        output.push_str(&line);
        output.push('\n');
    }
    child.finish(None).await?;
    Ok(output)
}

#[cfg(test)]
mod environment_tests {
    use super::*;

    #[test]
    fn secrets_stay_behind_and_the_basics_pass() {
        assert!(inherited("PATH") && inherited("CUDA_VISIBLE_DEVICES") && inherited("NCCL_DEBUG"));
        assert!(inherited("HF_HUB_OFFLINE") && inherited("OMP_NUM_THREADS"));
        for secret in [
            "T2I_API_KEYS",
            "T2I_API_KEYS_FILE",
            "AWS_SECRET_ACCESS_KEY",
            "DATABASE_URL",
        ] {
            assert!(!inherited(secret), "{secret}");
        }
    }

    #[test]
    fn the_trainer_dir_comes_first_on_pythonpath_as_an_absolute_path() {
        let cwd = std::env::current_dir().unwrap();
        let alone = python_path(Path::new("trainer"), None);
        assert_eq!(alone, cwd.join("trainer").to_string_lossy());
        let joined = python_path(Path::new("/opt/trainer"), Some(OsStr::new("/a::/b")));
        assert_eq!(joined, "/opt/trainer:/a:/b");
        assert_eq!(
            python_path(Path::new("/opt/trainer"), Some(OsStr::new(""))),
            "/opt/trainer"
        );
    }
}
