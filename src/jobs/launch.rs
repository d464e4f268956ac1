//! How a job starts the trainer (#25): one plain process, or torchrun, on this node with N processes or on
//! several nodes that meet at a c10d rendezvous named after the job and its attempt.
//!
//! The worker holding the job's lease starts every node's agent as its own child: node 0 here (its rank 0
//! prints the progress lines the job follows), the others through `--trainer-node-launcher` (`ssh {node}` by
//! default). All of them die with the worker, and are killed when the job is cancelled or its lease is lost.
//! The service holds only the lease; what the agents do is torchrun's. Every node must see the job's folder at
//! the same path (a shared filesystem) and have the trainer's environment there.

use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The rendezvous port on the first node when `--trainer-rdzv-endpoint` is not given.
pub const DEFAULT_RDZV_PORT: u16 = 29400;

/// How the trainer is started (the `--trainer-*` flags).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainerLaunch {
    /// Processes per node; with it (or with `nodes`), the trainer runs under torchrun.
    pub nproc_per_node: Option<u32>,
    /// The nodes of a multi-node run, this one first.
    pub nodes: Vec<String>,
    /// `host:port` of the c10d rendezvous; default the first node at `DEFAULT_RDZV_PORT` (a free port on
    /// 127.0.0.1 for one node).
    pub rdzv_endpoint: Option<String>,
    /// The words that run a command on another node; `{node}` stands for its name.
    pub node_launcher: Vec<String>,
    /// torchrun; default the one beside the trainer's Python.
    pub torchrun: Option<PathBuf>,
}

impl TrainerLaunch {
    /// Whether the trainer runs under torchrun.
    pub fn distributed(&self) -> bool {
        self.nproc_per_node.is_some() || self.nodes.len() > 1
    }

    /// Checks the flags together.
    pub fn validate(&self, trainer_command: bool) -> Result<()> {
        if trainer_command && self.distributed() {
            return Err(Error::Config(
                "--trainer-command replaces the whole trainer command line; it cannot be combined with \
                 --trainer-nproc-per-node or --trainer-nodes"
                    .into(),
            ));
        }
        if self.nproc_per_node == Some(0) {
            return Err(Error::Config(
                "--trainer-nproc-per-node must be at least 1. Given: 0".into(),
            ));
        }
        if self.nodes.len() > 1 && !self.node_launcher.iter().any(|word| word.contains("{node}")) {
            return Err(Error::Config(format!(
                "--trainer-node-launcher must name the node as {{node}}. Given: `{}`",
                self.node_launcher.join(" ")
            )));
        }
        if self.nodes.iter().any(|node| node.trim().is_empty()) {
            return Err(Error::Config("--trainer-nodes holds an empty name".into()));
        }
        Ok(())
    }

    /// Every node's command line, node 0 first, for `module_args` (`-m t2i_trainer.jobs.finetune --spec
    /// FILE`). `rdzv_id` names the rendezvous (the job and its attempt), so a reclaimed attempt never meets a
    /// stale one; `free_port` picks the single-node rendezvous port.
    pub fn commands(
        &self,
        python: &Path,
        rdzv_id: &str,
        module_args: &[String],
        free_port: impl FnOnce() -> u16,
    ) -> Vec<Vec<String>> {
        if !self.distributed() {
            let mut command = vec![python.to_string_lossy().into_owned()];
            command.extend(module_args.iter().cloned());
            return vec![command];
        }
        let torchrun = self.torchrun.clone().unwrap_or_else(|| {
            python
                .parent()
                .map_or_else(|| PathBuf::from("torchrun"), |folder| folder.join("torchrun"))
        });
        let nodes = self.nodes.len().max(1);
        let endpoint = match (&self.rdzv_endpoint, self.nodes.first()) {
            (Some(endpoint), _) => endpoint.clone(),
            (None, Some(first)) if nodes > 1 => format!("{first}:{DEFAULT_RDZV_PORT}"),
            _ => format!("127.0.0.1:{}", free_port()),
        };
        let mut agent = vec![
            torchrun.to_string_lossy().into_owned(),
            format!("--nnodes={nodes}"),
            format!("--nproc-per-node={}", self.nproc_per_node.unwrap_or(1)),
            "--rdzv-backend=c10d".into(),
            format!("--rdzv-endpoint={endpoint}"),
            format!("--rdzv-id={rdzv_id}"),
            // A failed worker fails the attempt; the job's attempts are the retries.
            "--max-restarts=0".into(),
        ];
        agent.extend(module_args.iter().cloned());
        let mut commands = vec![agent.clone()];
        for node in self.nodes.iter().skip(1) {
            let mut command: Vec<String> = self
                .node_launcher
                .iter()
                .map(|word| word.replace("{node}", node))
                .collect();
            command.extend(agent.iter().cloned());
            commands.push(command);
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn module() -> Vec<String> {
        [
            "-m",
            "t2i_trainer.jobs.finetune",
            "--spec",
            "/jobs/ft_1/trainer-spec.json",
        ]
        .map(String::from)
        .to_vec()
    }

    #[test]
    fn one_plain_process_by_default() {
        let launch = TrainerLaunch::default();
        let commands = launch.commands(Path::new("/venv/bin/python"), "ft_1-a1", &module(), || 1);
        assert_eq!(
            commands,
            vec![vec![
                "/venv/bin/python",
                "-m",
                "t2i_trainer.jobs.finetune",
                "--spec",
                "/jobs/ft_1/trainer-spec.json"
            ]]
        );
    }

    #[test]
    fn one_node_with_several_processes_meets_on_a_free_local_port() {
        let launch = TrainerLaunch {
            nproc_per_node: Some(4),
            ..TrainerLaunch::default()
        };
        let commands = launch.commands(Path::new("/venv/bin/python"), "ft_1-a2", &module(), || 4242);
        assert_eq!(commands.len(), 1);
        let agent = commands[0].join(" ");
        assert!(agent.starts_with("/venv/bin/torchrun --nnodes=1 --nproc-per-node=4 --rdzv-backend=c10d"));
        assert!(agent.contains("--rdzv-endpoint=127.0.0.1:4242 --rdzv-id=ft_1-a2 --max-restarts=0 -m"));
    }

    #[test]
    fn other_nodes_start_through_the_launcher_with_the_same_rendezvous() {
        let launch = TrainerLaunch {
            nproc_per_node: Some(8),
            nodes: vec!["gpu-a".into(), "gpu-b".into(), "gpu-c".into()],
            node_launcher: vec!["ssh".into(), "{node}".into()],
            torchrun: Some("/opt/torchrun".into()),
            ..TrainerLaunch::default()
        };
        assert!(launch.validate(false).is_ok());
        assert!(
            launch.validate(true).is_err(),
            "--trainer-command and torchrun flags conflict"
        );
        let commands = launch.commands(Path::new("/venv/bin/python"), "ft_9-a1", &module(), || unreachable!());
        assert_eq!(commands.len(), 3);
        assert_eq!(commands[0][0], "/opt/torchrun");
        assert_eq!(&commands[1][..2], &["ssh".to_string(), "gpu-b".to_string()]);
        assert_eq!(&commands[2][..2], &["ssh".to_string(), "gpu-c".to_string()]);
        for command in &commands {
            let line = command.join(" ");
            assert!(line.contains("--nnodes=3 --nproc-per-node=8"), "{line}");
            assert!(line.contains("--rdzv-endpoint=gpu-a:29400 --rdzv-id=ft_9-a1"), "{line}");
        }
        let unnamed = TrainerLaunch {
            node_launcher: vec!["ssh".into()],
            ..launch
        };
        assert!(unnamed.validate(false).is_err(), "the launcher must name the node");
    }
}
