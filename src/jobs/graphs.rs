//! The graph optimiser as the loader runs it (`serving::graphs`): `t2i_trainer.build.optimize_graphs` in the
//! trainer's Python, over one model folder, at load (`--optimize-graphs on`). A fine-tune job's candidate is
//! loaded for its evaluation, so a new version is optimised there, before it is registered, and its
//! `optimized/` folder travels with it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::jobs::child::child_environment;
use crate::serving::graphs::{optimizer_error, Optimizer};

/// Runs `<python> -m t2i_trainer.build.optimize_graphs --model <folder>` with `trainer_dir` on PYTHONPATH, and
/// waits for it. Its last lines of output make the error when it fails.
pub fn optimizer(python: PathBuf, trainer_dir: PathBuf, threads: usize) -> Optimizer {
    Arc::new(move |folder: &Path| {
        let output = Command::new(&python)
            .args(["-m", "t2i_trainer.build.optimize_graphs", "--model"])
            .arg(folder)
            .args(["--threads", &threads.max(1).to_string()])
            .env_clear()
            .envs(child_environment(&trainer_dir))
            .stdin(Stdio::null())
            .output()
            .map_err(|err| optimizer_error(folder, format!("cannot start `{}`: {err}", python.display())))?;
        if output.status.success() {
            return Ok(());
        }
        let stderr = String::from_utf8_lossy(&output.stderr);
        let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        Err(optimizer_error(
            folder,
            format!(
                "`{} -m t2i_trainer.build.optimize_graphs` {}: {}",
                python.display(),
                output.status,
                tail.join(" | ")
            ),
        ))
    })
}
