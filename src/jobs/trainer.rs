//! The `train` stage: `t2i_trainer.jobs.finetune` as a child process, given a `TrainerSpec` as a JSON file and
//! followed through its JSON-lines events. `TrainerSpec` is the trainer's whole input contract: the committed
//! JSON Schema `trainer/t2i_trainer/jobs/finetune.schema.json` is generated from it (`make schemas`, and a test
//! fails when it is stale), and a Python test holds the trainer's own spec parser to that schema.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::{PartialSchema, ToSchema};

use crate::error::{Error, Result};
use crate::jobs::child::{log_tail, signal_group, RunningChild};
use crate::jobs::context::JobContext;
use crate::jobs::metrics::{LoraFigures, LossPoint, TrainerFigures};
use crate::jobs::spec::{LrSchedule, Objective, PretrainTarget};

/// What `t2i_trainer.jobs.finetune --spec FILE` reads: fine-tuning of `base` on `samples` by `objective`
/// (reward-weighted by default), with the pre-training term on `pretrain`, written to `out`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TrainerSpec {
    /// The base model's diffusers folder (with `model_index.json`).
    pub base: String,
    /// The folder to write the candidate into; must not exist yet.
    pub out: String,
    /// The training set: JSON lines of `{image, prompt, reward, source}`, images beside the file.
    pub samples: String,
    /// The pre-training term's data.
    #[schema(inline)]
    pub pretrain: PretrainSpec,
    /// Weight of the pre-training term (β in the paper).
    #[schema(minimum = 0.0, maximum = 1000000.0)]
    pub beta: f64,
    /// The pre-training term's target: `data` (the added noise) or `base` (the frozen base UNet's
    /// prediction). The trainer's default: data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline, nullable = false)]
    pub pretrain_target: Option<PretrainTarget>,
    #[schema(minimum = 1e-12, maximum = 1.0)]
    pub learning_rate: f64,
    #[schema(inline)]
    pub lr_schedule: LrSchedule,
    /// Optimiser steps.
    #[schema(minimum = 1, maximum = 10000000)]
    pub steps: i64,
    /// Rows per step, the model's samples and pre-training data together.
    #[schema(minimum = 1, maximum = 65536)]
    pub batch_size: i64,
    /// Share of every batch from the pre-training data: `batch_size × pretrain_fraction` rows rounded, at
    /// least 1 above 0 and at most `batch_size − 1`, so each term keeps a row; the trainer refuses a
    /// pretrain_fraction above 0 with a batch of 1, which leaves no row for pre-training data.
    #[schema(minimum = 0.0, maximum = 0.999999)]
    pub pretrain_fraction: f64,
    pub train_text_encoder: bool,
    /// EMA of the trained weights; 0 turns it off.
    #[schema(minimum = 0.0, maximum = 0.999999)]
    pub ema_decay: f64,
    /// Share of captions dropped to the empty prompt.
    #[schema(minimum = 0.0, maximum = 1.0)]
    pub caption_dropout: f64,
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    pub seed: u64,
    /// torch CPU threads.
    #[schema(minimum = 1, maximum = 1024)]
    pub threads: u32,
    /// A `step` event every this many steps.
    #[schema(minimum = 1, maximum = 10000000)]
    pub log_every: i64,
    /// Which UNet weights train: `all`, or `cross_attention` only. The trainer's default: all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline, nullable = false)]
    pub unet_layers: Option<UnetLayers>,
    /// A torch device name (`cpu`, `cuda`). The trainer's default: CUDA when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// Export the candidate to ONNX as well as diffusers weights. The trainer's default: true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub export: Option<bool>,
    /// Write a checkpoint (the trained weights, optimiser, schedule, EMA and random state) to `checkpoint`
    /// every this many steps; 0 writes none. The trainer's default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 10000000, nullable = false)]
    pub checkpoint_every: Option<i64>,
    /// The file checkpoints are written to, each replacing the last.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<String>,
    /// A checkpoint of this run (same steps and seed) to go on from: training continues after its step.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<String>,
    /// Above 0, a LoRA adapter of this rank is trained on the attention projections instead of the weights,
    /// merged into them at the end and saved in `<out>/adapter/` too. The trainer's default: 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0, maximum = 1024, nullable = false)]
    pub lora_rank: Option<i64>,
    /// The LoRA update's scale is `lora_alpha / lora_rank`. The trainer's default (null): the rank.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 0.001, maximum = 100000.0)]
    pub lora_alpha: Option<f64>,
    /// What the samples train: `rwr`, `dpo` or `kto` (trainer/t2i_trainer/jobs/objectives.py). The trainer's
    /// default: rwr.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(inline, nullable = false)]
    pub objective: Option<Objective>,
    /// β of dpo or kto; rwr ignores it. Null: the objective's default (500 for dpo, 100 for kto).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(minimum = 1.0, maximum = 1000000.0)]
    pub objective_beta: Option<f64>,
}

/// Where a job's latest trainer checkpoint is kept in the object store, and the note of its step beside it.
fn checkpoint_keys(job_id: &str) -> (String, String) {
    (
        format!("{CHECKPOINTS_DIR}/{job_id}/checkpoint.pt"),
        format!("{CHECKPOINTS_DIR}/{job_id}/checkpoint.json"),
    )
}

/// The object store's folder for jobs' trainer checkpoints (#25).
pub const CHECKPOINTS_DIR: &str = "checkpoints";

/// Removes a job's checkpoint from the object store, once the job has ended.
pub async fn remove_checkpoint(storage: &crate::storage::Storage, job_id: &str) {
    let (weights, note) = checkpoint_keys(job_id);
    for key in [note, weights] {
        if let Err(err) = storage.blobs().delete(&key).await {
            tracing::warn!(job = %job_id, key = %key, error = %err, "cannot remove the job's checkpoint");
        }
    }
}

/// The pre-training term's data.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum PretrainSpec {
    /// Captioned renders of the shapes world.
    ShapesWorld {
        #[schema(minimum = 1, maximum = 10000000)]
        images: u32,
        /// Share of captions whose count is wrong, as in the pretraining. The trainer's default: 0.5.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        #[schema(minimum = 0.0, maximum = 1.0, nullable = false)]
        count_noise: Option<f64>,
    },
    /// Image files with same-named `.txt` captions, or a `metadata.jsonl`.
    Folder { path: String },
}

/// Which UNet weights the trainer updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum UnetLayers {
    All,
    CrossAttention,
}

/// One JSON line of the trainer's stdout, as far as the job acts on it; every line is also kept as an event.
#[derive(Debug, Clone, PartialEq)]
pub enum TrainerEvent {
    /// `{"event": "step", "step", "steps", "loss", ...}`: progress and the loss.
    Step { step: f64, steps: f64, loss: Option<f64> },
    /// `{"event": "error", "message"}`: why the trainer is about to exit non-zero.
    Error { message: Option<String> },
    /// Any other event (`start`, `data`, `warning`, `export`, `done`, ...), by name.
    Other(String),
}

impl TrainerEvent {
    pub fn read(value: &Value) -> Self {
        match value["event"].as_str() {
            Some("step") => TrainerEvent::Step {
                step: value["step"].as_f64().unwrap_or(0.0),
                steps: value["steps"].as_f64().unwrap_or(1.0),
                loss: value["loss"].as_f64(),
            },
            Some("error") => TrainerEvent::Error {
                message: value["message"].as_str().map(str::to_string),
            },
            other => TrainerEvent::Other(other.unwrap_or("trainer").to_string()),
        }
    }
}

/// The JSON Schema of `TrainerSpec`, as committed beside the trainer (pretty, with a trailing newline).
pub fn trainer_spec_schema() -> String {
    let schema = TrainerSpec::schema();
    let mut value = serde_json::to_value(&schema).unwrap_or(Value::Null);
    if let Value::Object(object) = &mut value {
        object.insert(
            "$schema".into(),
            Value::String("https://json-schema.org/draft/2020-12/schema".into()),
        );
        object.insert("title".into(), Value::String("TrainerSpec".into()));
        object.insert(
            "description".into(),
            Value::String(
                "The spec t2i_trainer.jobs.finetune reads (--spec FILE). Generated from the Rust type \
                 jobs::trainer::TrainerSpec by `make schemas`; do not edit."
                    .into(),
            ),
        );
    }
    serde_json::to_string_pretty(&value).unwrap_or_default() + "\n"
}

impl JobContext<'_> {
    /// Trains on the samples in `data`, and on the pre-training folder `pretrain` when the job filtered its
    /// pre-training data (else on its `pretrain_data`).
    pub(super) async fn train(&mut self, data: &Path, candidate: &Path, pretrain: Option<&Path>) -> Result<()> {
        if candidate.exists() {
            std::fs::remove_dir_all(candidate)
                .map_err(|err| Error::Internal(format!("cannot clear {}: {err}", candidate.display())))?;
        }
        let base_folder = {
            let version = self
                .services
                .pool
                .registry()
                .version(&self.spec.base_model, "base_model")
                .await?;
            self.services.pool.registry().fetch(&version).await?
        };
        let hyper = &self.spec.hyperparameters;
        let pretrain = match (pretrain, self.spec.pretrain_data.kind.as_str()) {
            (Some(kept), _) => PretrainSpec::Folder {
                path: kept.to_string_lossy().into_owned(),
            },
            (None, "folder") => PretrainSpec::Folder {
                path: self.spec.pretrain_data.path.clone().unwrap_or_default(),
            },
            _ => PretrainSpec::ShapesWorld {
                images: self.spec.pretrain_data.render_count(),
                count_noise: None,
            },
        };
        let every = self.services.config.checkpoint_every;
        let resume = self.fetch_checkpoint().await?;
        let trainer_spec = TrainerSpec {
            checkpoint_every: (every > 0).then_some(i64::from(every)),
            checkpoint: (every > 0).then(|| self.folder.join("checkpoint.pt").to_string_lossy().into_owned()),
            resume: resume.map(|path| path.to_string_lossy().into_owned()),
            base: base_folder.join("diffusers").to_string_lossy().into_owned(),
            out: candidate.to_string_lossy().into_owned(),
            samples: data.join("samples.jsonl").to_string_lossy().into_owned(),
            pretrain,
            beta: hyper.beta,
            pretrain_target: Some(hyper.pretrain_target),
            learning_rate: hyper.learning_rate,
            lr_schedule: hyper.lr_schedule,
            steps: hyper.steps,
            batch_size: hyper.batch_size,
            pretrain_fraction: hyper.pretrain_fraction,
            train_text_encoder: hyper.train_text_encoder,
            ema_decay: hyper.ema_decay,
            caption_dropout: hyper.caption_dropout,
            seed: self.spec.seed,
            threads: self.services.config.trainer_threads as u32,
            // About 100 progress lines, and at least one every 25 steps.
            log_every: (hyper.steps / 100).clamp(1, 25),
            unet_layers: None,
            device: None,
            export: None,
            lora_rank: (hyper.lora_rank > 0).then_some(hyper.lora_rank),
            lora_alpha: hyper.lora_alpha.filter(|_| hyper.lora_rank > 0),
            objective: Some(hyper.objective),
            objective_beta: hyper.objective_beta,
        };
        let trainer_spec = serde_json::to_value(&trainer_spec)
            .map_err(|err| Error::Internal(format!("cannot encode the trainer's spec: {err}")))?;
        let spec_path = self.folder.join("trainer-spec.json");
        crate::storage::write_atomically(&spec_path, trainer_spec.to_string().as_bytes())?;
        let spec_arg = spec_path.to_string_lossy().into_owned();
        let commands = match &self.services.config.trainer_command {
            Some(command) => {
                let mut command = command.clone();
                command.extend(["--spec".into(), spec_arg]);
                vec![command]
            }
            None => self.services.config.launch.commands(
                &self.services.config.python,
                &format!("{}-a{}", self.lease.job_id, self.lease.attempt),
                &[
                    "-m".into(),
                    "t2i_trainer.jobs.finetune".into(),
                    "--spec".into(),
                    spec_arg,
                ],
                free_local_port,
            ),
        };
        let command = commands[0].join(" ");
        let _ = self
            .services
            .storage
            .insert_job_event(
                &self.lease,
                "info",
                "trainer",
                &format!("started: {command}"),
                Some(&trainer_spec),
            )
            .await;
        let mut losses = Vec::new();
        let mut trainer_error = None;
        let finished = self.run_nodes(&commands, &mut losses, &mut trainer_error).await;
        self.metrics.trainer = Some(TrainerFigures {
            final_loss: losses.last().cloned(),
            losses,
            lora: LoraFigures::of(hyper),
        });
        finished?;
        if !candidate.join("model_index.json").is_file() {
            return Err(Error::Internal(format!(
                "the trainer exited cleanly but wrote no model to {}",
                candidate.display()
            )));
        }
        Ok(())
    }

    /// Starts every node's command (node 0's log is `trainer.log`, node N's `trainer-node-N.log`) and follows
    /// them to their end. Progress comes from whichever node holds rank 0, so every node's stdout is read.
    /// The first node to fail, a cancel or a lost lease stops them all.
    async fn run_nodes(
        &self,
        commands: &[Vec<String>],
        losses: &mut Vec<LossPoint>,
        trainer_error: &mut Option<String>,
    ) -> Result<()> {
        enum Output {
            Line(String),
            Exit(usize, std::io::Result<std::process::ExitStatus>),
        }
        let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel();
        let mut groups = Vec::new();
        let mut logs = Vec::new();
        for (index, command) in commands.iter().enumerate() {
            let log = match index {
                0 => self.folder.join("trainer.log"),
                _ => self.folder.join(format!("trainer-node-{index}.log")),
            };
            let mut child = match RunningChild::spawn(command, &log, &self.services.config.trainer_dir) {
                Ok(child) => child,
                Err(err) => {
                    groups.iter().for_each(|&pid| signal_group(pid, libc::SIGKILL));
                    return Err(err);
                }
            };
            groups.extend(child.id());
            logs.push((command.join(" "), log));
            let sender = sender.clone();
            tokio::spawn(async move {
                if let Some(mut lines) = child.take_lines() {
                    while let Ok(Some(line)) = lines.next_line().await {
                        let _ = sender.send(Output::Line(line));
                    }
                }
                let status = child.wait().await.map_err(std::io::Error::other);
                let _ = sender.send(Output::Exit(index, status));
            });
        }
        drop(sender);
        let stop_all = |groups: &[u32]| groups.iter().for_each(|&pid| signal_group(pid, libc::SIGTERM));
        let mut cancelled = self.cancelled.clone();
        let mut running = commands.len();
        let mut failure: Option<Error> = None;
        while running > 0 {
            tokio::select! {
                output = receiver.recv() => match output {
                    Some(Output::Line(line)) => self.trainer_line(&line, losses, trainer_error).await,
                    Some(Output::Exit(index, status)) => {
                        running -= 1;
                        let failed = match status {
                            Ok(status) if status.success() => None,
                            Ok(status) => Some(format!(
                                "`{}` failed ({status}): {}",
                                logs[index].0,
                                trainer_error.clone().unwrap_or_else(|| log_tail(&logs[index].1, 1500))
                            )),
                            Err(err) => Some(format!("cannot wait for `{}`: {err}", logs[index].0)),
                        };
                        if let (Some(message), None) = (failed, &failure) {
                            failure = Some(Error::Internal(message));
                            stop_all(&groups);
                        }
                    }
                    None => break,
                },
                changed = cancelled.changed(), if failure.is_none() => {
                    if changed.is_err() || *cancelled.borrow() {
                        failure = Some(Error::Cancelled);
                        stop_all(&groups);
                    }
                }
                _ = tokio::time::sleep(Duration::from_secs(10)), if failure.is_some() => {
                    // SIGTERM was not enough.
                    groups.iter().for_each(|&pid| signal_group(pid, libc::SIGKILL));
                }
            }
        }
        match failure {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// An earlier attempt's checkpoint of this job, downloaded into the job's folder, if the object store has
    /// one: the trainer goes on from it.
    async fn fetch_checkpoint(&self) -> Result<Option<std::path::PathBuf>> {
        if self.lease.attempt < 2 {
            return Ok(None);
        }
        let (weights, note) = checkpoint_keys(&self.lease.job_id);
        let blobs = self.services.storage.blobs();
        if !blobs.exists(&note).await? {
            return Ok(None);
        }
        let recorded: Value = serde_json::from_slice(&blobs.get(&note).await?).unwrap_or(Value::Null);
        let path = self.folder.join("resume.pt");
        crate::storage::write_atomically(&path, &blobs.get(&weights).await?)?;
        let _ = self
            .services
            .storage
            .insert_job_event(
                &self.lease,
                "info",
                "checkpoint",
                &format!(
                    "train: resuming from step {} (attempt {}'s checkpoint)",
                    recorded["step"], recorded["attempt"]
                ),
                Some(&recorded),
            )
            .await;
        Ok(Some(path))
    }

    /// Keeps the trainer's new checkpoint in the object store, where a later attempt (on any replica) finds it;
    /// skipped once the lease is gone.
    async fn store_checkpoint(&self, value: &Value) -> Result<()> {
        let storage = &self.services.storage;
        if !storage.renew_lease(&self.lease, self.services.config.lease).await? {
            return Err(self.lease.lost());
        }
        let path = value["path"].as_str().unwrap_or_default();
        let bytes = std::fs::read(path).map_err(|err| Error::Internal(format!("cannot read {path}: {err}")))?;
        let (weights, note) = checkpoint_keys(&self.lease.job_id);
        let blobs = storage.blobs();
        blobs.put(&weights, bytes).await?;
        let recorded = serde_json::json!({"step": value["step"], "attempt": self.lease.attempt});
        blobs.put(&note, recorded.to_string().into_bytes()).await?;
        storage
            .insert_job_event(
                &self.lease,
                "info",
                "checkpoint",
                &format!("checkpoint: step {} stored", value["step"]),
                Some(&recorded),
            )
            .await
            .map(|_| ())
    }

    /// One line of the trainer's stdout: a progress event, or anything else, kept as a log event.
    async fn trainer_line(&self, line: &str, losses: &mut Vec<LossPoint>, trainer_error: &mut Option<String>) {
        let storage = &self.services.storage;
        let Ok(value) = serde_json::from_str::<Value>(line) else {
            let _ = storage
                .insert_job_event(&self.lease, "info", "trainer_log", line, None)
                .await;
            return;
        };
        match TrainerEvent::read(&value) {
            TrainerEvent::Step { step, steps, loss } => {
                if let Some(loss) = loss {
                    self.services.metrics.fine_tune_trainer_loss.set(loss);
                    losses.push(LossPoint { step, loss });
                }
                let _ = self.stage_progress("train", step / steps.max(1.0)).await;
                let message = format!(
                    "step {step}/{steps}: loss {}",
                    loss.map_or("?".into(), |loss| format!("{loss:.5}"))
                );
                let _ = storage
                    .insert_job_event(&self.lease, "info", "progress", &message, Some(&value))
                    .await;
            }
            TrainerEvent::Error { message } => {
                let message = message.unwrap_or_else(|| "the trainer failed".into());
                *trainer_error = Some(message.clone());
                let _ = storage
                    .insert_job_event(&self.lease, "error", "trainer", &message, Some(&value))
                    .await;
            }
            TrainerEvent::Other(kind) if kind == "checkpoint" => {
                if let Err(err) = self.store_checkpoint(&value).await {
                    tracing::warn!(job = %self.lease.job_id, error = %err, "cannot store the trainer's checkpoint");
                }
            }
            TrainerEvent::Other(kind) => {
                let _ = storage
                    .insert_job_event(
                        &self.lease,
                        "info",
                        "trainer",
                        &format!("trainer: {kind}"),
                        Some(&value),
                    )
                    .await;
            }
        }
    }
}

/// A free TCP port on 127.0.0.1, for a single node's rendezvous.
fn free_local_port() -> u16 {
    std::net::TcpListener::bind(("127.0.0.1", 0))
        .and_then(|listener| listener.local_addr())
        .map_or(crate::jobs::launch::DEFAULT_RDZV_PORT, |address| address.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The committed schema beside the trainer is this type's; `UPDATE_SCHEMAS=1` (`make schemas`) rewrites it.
    #[test]
    fn the_committed_schema_is_current() {
        let path =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("trainer/t2i_trainer/jobs/finetune.schema.json");
        let generated = trainer_spec_schema();
        if std::env::var_os("UPDATE_SCHEMAS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is stale: run `make schemas` (the Rust TrainerSpec changed)",
            path.display()
        );
    }

    #[test]
    fn trainer_events_are_read_leniently() {
        let step = serde_json::json!({"event": "step", "step": 10, "steps": 100, "loss": 0.5});
        assert_eq!(
            TrainerEvent::read(&step),
            TrainerEvent::Step {
                step: 10.0,
                steps: 100.0,
                loss: Some(0.5)
            }
        );
        let error = serde_json::json!({"event": "error", "message": "bad spec: `steps`"});
        assert_eq!(
            TrainerEvent::read(&error),
            TrainerEvent::Error {
                message: Some("bad spec: `steps`".into())
            }
        );
        assert_eq!(
            TrainerEvent::read(&serde_json::json!({"event": "done"})),
            TrainerEvent::Other("done".into())
        );
    }

    #[test]
    fn the_spec_leaves_the_trainers_own_defaults_out() {
        let spec = TrainerSpec {
            base: "b".into(),
            out: "o".into(),
            samples: "s".into(),
            pretrain: PretrainSpec::ShapesWorld {
                images: 8,
                count_noise: None,
            },
            beta: 1.0,
            pretrain_target: None,
            learning_rate: 1e-4,
            lr_schedule: LrSchedule::Cosine,
            steps: 10,
            batch_size: 4,
            pretrain_fraction: 0.5,
            train_text_encoder: false,
            ema_decay: 0.0,
            caption_dropout: 0.1,
            seed: 3,
            threads: 2,
            log_every: 1,
            unet_layers: None,
            device: None,
            export: None,
            checkpoint_every: None,
            checkpoint: None,
            resume: None,
            lora_rank: None,
            lora_alpha: None,
            objective: None,
            objective_beta: None,
        };
        let value = serde_json::to_value(&spec).unwrap();
        assert_eq!(
            value["pretrain"],
            serde_json::json!({"kind": "shapes_world", "images": 8})
        );
        assert_eq!(value["lr_schedule"], "cosine");
        for absent in [
            "unet_layers",
            "device",
            "export",
            "checkpoint_every",
            "checkpoint",
            "resume",
            "lora_rank",
            "lora_alpha",
            "objective",
            "objective_beta",
            "pretrain_target",
        ] {
            assert!(value.get(absent).is_none(), "{absent}");
        }
        let schema: Value = serde_json::from_str(&trainer_spec_schema()).unwrap();
        let properties = schema["properties"].as_object().unwrap();
        for field in value.as_object().unwrap().keys() {
            assert!(properties.contains_key(field), "{field} is not in the schema");
        }
    }
}
