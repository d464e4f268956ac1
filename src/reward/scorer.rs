//! The scorer: one thread per reward model that owns its session and batches work across requests.
//!
//! Callers (HTTP handlers, generation workers) send jobs of already-preprocessed images. The thread takes every
//! job waiting, packs their images in arrival order into batches of at most `max_batch`, runs one ONNX Runtime
//! call per batch and hands each job its scores. A job larger than a batch is split; a job whose caller went
//! away is dropped before it runs.

use std::collections::VecDeque;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::reward::manifest::RewardKind;
use crate::reward::model::RewardModel;
use crate::reward::preprocess::Preprocessor;

/// What one scoring job got back.
#[derive(Debug, Clone)]
pub struct Scored {
    pub scores: Vec<f32>,
    /// From enqueueing to the first batch that carried this job's images.
    pub queue_time: Duration,
    /// Time in the batches that carried this job's images (shared with the other jobs in them).
    pub score_time: Duration,
    /// Images per ONNX call, for each call that carried this job's images.
    pub batch_sizes: Vec<usize>,
}

struct Job {
    prompts: Vec<String>,
    pixels: Vec<f32>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Scored>>,
}

/// A job in progress: how many of its images are scored so far.
struct Pending {
    job: Job,
    done: usize,
    scores: Vec<f32>,
    started: Option<Instant>,
    score_time: Duration,
    batch_sizes: Vec<usize>,
}

/// A handle to one reward model's scorer thread. Cheap to share behind an `Arc`.
pub struct Scorer {
    name: String,
    /// Whether scores are trained towards [0, 1] (a reward head) rather than unbounded (a CLIP similarity).
    bounded: bool,
    sender: Option<Sender<Job>>,
    thread: Option<JoinHandle<()>>,
    preprocessor: Preprocessor,
}

impl Scorer {
    /// Starts the thread. `max_batch` bounds the images in one ONNX call; `capacity` the jobs waiting.
    pub fn start(model: RewardModel, max_batch: usize, capacity: usize, metrics: Arc<Metrics>) -> Result<Self> {
        let name = model.name().to_string();
        let bounded = matches!(model.manifest.kind, RewardKind::RewardHead { .. });
        let preprocessor = model.preprocessor().clone();
        let max_batch = max_batch.max(1);
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        metrics.register_reward_model(&name, model.manifest.score_buckets());
        let thread = std::thread::Builder::new()
            .name(format!("t2i-reward-{name}"))
            .spawn(move || scorer_loop(model, receiver, max_batch, metrics))
            .map_err(|err| Error::Internal(format!("cannot start the scorer thread: {err}")))?;
        Ok(Scorer {
            name,
            bounded,
            sender: Some(sender),
            thread: Some(thread),
            preprocessor,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn preprocessor(&self) -> &Preprocessor {
        &self.preprocessor
    }

    /// True for a reward head trained towards labels in [0, 1]; false for an unbounded similarity.
    pub fn bounded(&self) -> bool {
        self.bounded
    }

    fn submit(&self, prompts: Vec<String>, pixels: Vec<f32>) -> Result<oneshot::Receiver<Result<Scored>>> {
        let per_image = self.preprocessor.values_per_image();
        if pixels.len() != prompts.len() * per_image {
            return Err(Error::Internal(format!(
                "a scoring job has {} values for {} images of {per_image}",
                pixels.len(),
                prompts.len()
            )));
        }
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the server is shutting down".into()))?;
        let (reply, receive) = oneshot::channel();
        let job = Job {
            prompts,
            pixels,
            enqueued: Instant::now(),
            reply,
        };
        match sender.try_send(job) {
            Ok(()) => Ok(receive),
            Err(TrySendError::Full(_)) => Err(Error::Overloaded {
                queued: sender.len(),
                limit: sender.capacity().unwrap_or(0),
                retry_after_secs: 1,
            }),
            Err(TrySendError::Disconnected(_)) => Err(Error::Unavailable("the reward scorer has stopped".into())),
        }
    }

    /// A scorer with no model and no thread, for tests that only need its name: scoring answers `Unavailable`.
    #[cfg(test)]
    pub(crate) fn detached(name: &str) -> Self {
        use crate::reward::manifest::{ImageSpec, ResizeFilter};
        Scorer {
            name: name.to_string(),
            bounded: true,
            sender: None,
            thread: None,
            preprocessor: Preprocessor::new(ImageSpec {
                shortest_edge: 8,
                filter: ResizeFilter::Bilinear,
                crop_height: 8,
                crop_width: 8,
                crop_offset: Default::default(),
                rescale: 1.0 / 255.0,
                mean: [0.5; 3],
                std: [0.5; 3],
            }),
        }
    }

    /// Scores image `i` of `pixels` (from `preprocessor()`) against `prompts[i]`, from async code.
    pub async fn score(&self, prompts: Vec<String>, pixels: Vec<f32>) -> Result<Scored> {
        let receive = self.submit(prompts, pixels)?;
        receive
            .await
            .map_err(|_| Error::Internal("the scorer dropped a job without answering".into()))?
    }

    /// The same, from a worker thread outside the async runtime.
    pub fn score_blocking(&self, prompts: Vec<String>, pixels: Vec<f32>) -> Result<Scored> {
        let receive = self.submit(prompts, pixels)?;
        receive
            .blocking_recv()
            .map_err(|_| Error::Internal("the scorer dropped a job without answering".into()))?
    }
}

impl Drop for Scorer {
    fn drop(&mut self) {
        self.sender.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Which images of which pending jobs go into the next batch: `(job index, first image, count)`, in order.
/// Jobs are served in arrival order and a job may be split across batches; nothing waits behind a big job
/// for more than the batches that job needs.
pub fn plan_batch(remaining: &[usize], done: &[usize], max_batch: usize) -> Vec<(usize, usize, usize)> {
    let mut space = max_batch.max(1);
    let mut plan = Vec::new();
    for (index, (&left, &first)) in remaining.iter().zip(done).enumerate() {
        if space == 0 {
            break;
        }
        if left == 0 {
            continue;
        }
        let take = left.min(space);
        plan.push((index, first, take));
        space -= take;
    }
    plan
}

fn scorer_loop(mut model: RewardModel, receiver: Receiver<Job>, max_batch: usize, metrics: Arc<Metrics>) {
    let per_image = model.preprocessor().values_per_image();
    let name = model.name().to_string();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    loop {
        if pending.is_empty() {
            match receiver.recv() {
                Ok(job) => pending.push_back(Pending::new(job)),
                Err(_) => return,
            }
        }
        while let Ok(job) = receiver.try_recv() {
            pending.push_back(Pending::new(job));
        }
        // A caller that went away no longer needs its scores.
        pending.retain(|entry| !entry.job.reply.is_closed());
        if pending.is_empty() {
            continue;
        }
        let remaining: Vec<usize> = pending
            .iter()
            .map(|entry| entry.job.prompts.len() - entry.done)
            .collect();
        let done: Vec<usize> = pending.iter().map(|entry| entry.done).collect();
        let plan = plan_batch(&remaining, &done, max_batch);
        let size: usize = plan.iter().map(|&(_, _, count)| count).sum();
        let mut pixels = Vec::with_capacity(size * per_image);
        let mut prompts: Vec<&str> = Vec::with_capacity(size);
        let started = Instant::now();
        for &(index, first, count) in &plan {
            let entry = &pending[index];
            pixels.extend_from_slice(&entry.job.pixels[first * per_image..(first + count) * per_image]);
            prompts.extend(entry.job.prompts[first..first + count].iter().map(String::as_str));
        }
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.score(&pixels, &prompts)))
            .unwrap_or_else(|_| Err(Error::Internal("the reward model panicked".into())));
        let elapsed = started.elapsed();
        metrics.observe_reward_batch(&name, size, elapsed);
        match result {
            Ok(scores) => {
                let mut offset = 0;
                for &(index, _, count) in &plan {
                    let entry = &mut pending[index];
                    entry.started.get_or_insert(started);
                    entry.scores.extend_from_slice(&scores[offset..offset + count]);
                    entry.done += count;
                    entry.score_time += elapsed;
                    entry.batch_sizes.push(size);
                    offset += count;
                }
                for score in &scores {
                    metrics.observe_reward(&name, *score);
                }
            }
            Err(err) => {
                tracing::error!(model = %name, error = %err, "reward scoring failed");
                let message = err.to_string();
                for &(index, _, _) in plan.iter().rev() {
                    if let Some(entry) = pending.remove(index) {
                        let _ = entry.job.reply.send(Err(Error::Inference {
                            component: "reward",
                            message: message.clone(),
                        }));
                    }
                }
                continue;
            }
        }
        // Answer every job that is now complete; keep the others in order.
        let mut still = VecDeque::with_capacity(pending.len());
        for entry in pending.drain(..) {
            if entry.done == entry.job.prompts.len() {
                let queue_time = entry.started.map_or(Duration::ZERO, |at| at - entry.job.enqueued);
                let _ = entry.job.reply.send(Ok(Scored {
                    scores: entry.scores,
                    queue_time,
                    score_time: entry.score_time,
                    batch_sizes: entry.batch_sizes,
                }));
            } else {
                still.push_back(entry);
            }
        }
        pending = still;
    }
}

impl Pending {
    fn new(job: Job) -> Self {
        let capacity = job.prompts.len();
        Pending {
            job,
            done: 0,
            scores: Vec::with_capacity(capacity),
            started: None,
            score_time: Duration::ZERO,
            batch_sizes: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_pack_jobs_in_order_and_split_big_ones() {
        // Three jobs of 3, 10 and 2 images, batch 8: job 0 whole, then 5 of job 1.
        assert_eq!(plan_batch(&[3, 10, 2], &[0, 0, 0], 8), vec![(0, 0, 3), (1, 0, 5)]);
        // Next round: job 1's other 5, then job 2.
        assert_eq!(plan_batch(&[0, 5, 2], &[3, 5, 0], 8), vec![(1, 5, 5), (2, 0, 2)]);
        assert_eq!(plan_batch(&[1], &[0], 0), vec![(0, 0, 1)]);
        assert!(plan_batch(&[], &[], 8).is_empty());
    }
}
