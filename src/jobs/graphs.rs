//! The graph optimiser as the loader runs it (`serving::graphs`): `t2i_trainer.build.optimize_graphs` in the
//! trainer's Python, over one model folder, at load (`--optimize-graphs on`). A fine-tune job's candidate is
//! loaded for its evaluation, so a new version is optimised there, before it is registered, and its
//! `optimized/` folder travels with it.
//!
//! Like the jobs' children (`jobs::child::RunningChild`), the optimiser dies with the server (a parent-death
//! signal), and it has a deadline: one that runs past it is killed and the load fails naming the limit, so a
//! hung optimiser never holds a load forever.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::jobs::child::{child_environment, die_with_parent, signal_group};
use crate::serving::graphs::{optimizer_error, Optimizer};

/// How long one model's optimisation may take. SD 1.5's UNet takes a few minutes on a CPU; shapes-sd's
/// graphs about 20 s.
pub const OPTIMIZER_DEADLINE: Duration = Duration::from_secs(3600);

/// Runs `<python> -m t2i_trainer.build.optimize_graphs --model <folder>` with `trainer_dir` on PYTHONPATH, and
/// waits for it, at most `deadline`. Its last lines of stderr make the error when it fails.
pub fn optimizer(python: PathBuf, trainer_dir: PathBuf, threads: usize, deadline: Duration) -> Optimizer {
    Arc::new(move |folder: &Path| {
        let program = format!("`{} -m t2i_trainer.build.optimize_graphs`", python.display());
        let mut command = Command::new(&python);
        command
            .args(["-m", "t2i_trainer.build.optimize_graphs", "--model"])
            .arg(folder)
            .args(["--threads", &threads.max(1).to_string()])
            .env_clear()
            .envs(child_environment(&trainer_dir))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so that a deadline stops whatever it started too (each holds its stderr).
            .process_group(0);
        // If the server dies (even by SIGKILL), the kernel kills the optimiser too.
        // SAFETY: `die_with_parent` only calls prctl, which is async-signal-safe.
        unsafe {
            command.pre_exec(die_with_parent);
        }
        let mut child = command
            .spawn()
            .map_err(|err| optimizer_error(folder, format!("cannot start `{}`: {err}", python.display())))?;
        // Read stderr on a thread of its own, so that a child writing more than a pipe holds never blocks.
        let stderr = child.stderr.take();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        let started = Instant::now();
        let status = loop {
            match child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if started.elapsed() >= deadline => {
                    signal_group(child.id(), libc::SIGKILL);
                    let _ = child.wait();
                    let _ = reader.join();
                    return Err(optimizer_error(
                        folder,
                        format!(
                            "{program} ran past its deadline of {} s and was stopped",
                            deadline.as_secs_f64()
                        ),
                    ));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(50)),
                Err(err) => return Err(optimizer_error(folder, format!("cannot wait for {program}: {err}"))),
            }
        };
        let stderr = reader.join().unwrap_or_default();
        if status.success() {
            return Ok(());
        }
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(optimizer_error(
            folder,
            format!("{program} {status}: {}", tail.join(" | ")),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in "python" that runs `script` (a shell script), with the optimiser's arguments after it.
    fn fake_python(dir: &Path, script: &str) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("python");
        std::fs::write(&path, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn an_optimiser_past_its_deadline_is_stopped_and_named() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("finished");
        let python = fake_python(dir.path(), &format!("sleep 30; touch {}", marker.display()));
        let run = optimizer(python, dir.path().into(), 1, Duration::from_millis(300));
        let started = Instant::now();
        let err = run(dir.path()).unwrap_err().to_string();
        assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
        assert!(err.contains("ran past its deadline of 0.3 s and was stopped"), "{err}");
        std::thread::sleep(Duration::from_millis(200));
        assert!(!marker.exists());
    }

    #[test]
    fn a_failing_optimiser_reports_its_last_lines_and_a_good_one_passes() {
        let dir = tempfile::tempdir().unwrap();
        let python = fake_python(
            dir.path(),
            "i=0; while [ $i -lt 9 ]; do echo line $i >&2; i=$((i+1)); done; exit 3",
        );
        let err = optimizer(python, dir.path().into(), 1, Duration::from_secs(30))(dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("exit status: 3: line 4 | line 5 | line 6 | line 7 | line 8"),
            "{err}"
        );
        assert!(!err.contains("line 3"), "{err}");
        let python = fake_python(dir.path(), "exit 0");
        optimizer(python, dir.path().into(), 1, Duration::from_secs(30))(dir.path()).unwrap();
    }

    #[test]
    fn a_large_stderr_does_not_block_the_optimiser() {
        let dir = tempfile::tempdir().unwrap();
        // 1 MB of stderr, far more than a pipe holds, then a failure.
        let python = fake_python(
            dir.path(),
            "head -c 1000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo last >&2; exit 1",
        );
        let err = optimizer(python, dir.path().into(), 1, Duration::from_secs(30))(dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.ends_with("last"), "{}", &err[err.len().saturating_sub(80)..]);
    }
}
