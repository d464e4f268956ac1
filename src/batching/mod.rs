//! The bounded work queue between HTTP handlers and the worker threads that own the ONNX sessions, and the
//! continuous batcher those workers run.
//!
//! Handlers never touch ONNX Runtime: they validate, enqueue and await a reply. A full queue answers at once
//! (429 with `Retry-After`), never with an unbounded wait. Each worker thread owns one `Pipeline`, because
//! `Session::run` needs `&mut`, and denoises every request it has admitted in shared UNet calls
//! (`worker`), choosing each call's members with a pure planner (`planner`) and keeping each request's
//! candidates with pure bookkeeping (`request`, shared with the command line's best-of). An engine serves one model
//! version, so a batch never mixes versions. A request whose caller went away is dropped before it starts, and
//! leaves the batch at the next step boundary if it already runs.

pub mod planner;
pub mod request;
mod watchdog;
mod worker;

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::{GenerateOutput, Pipeline};
use crate::reward::GeneratePlan;

pub use planner::BackgroundRows;
pub use worker::BatchSettings;

/// Whose work a generation is (#29): a user's request, or a fine-tune job's sample, which steps only in the
/// room users' requests leave ([`BackgroundRows`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Priority {
    Online,
    Background,
}

/// A finished generation, with the time it waited in the queue.
pub struct Completed {
    pub output: GenerateOutput,
    pub queue_time: Duration,
}

struct Job {
    /// The parameters, how to choose among candidates, the reward model that scores them (without one, no
    /// scoring) and the candidate budget.
    plan: GeneratePlan,
    cancel: Arc<AtomicBool>,
    enqueued: Instant,
    priority: Priority,
    /// When the request's work must stop, queued or running.
    deadline: Option<Deadline>,
    reply: oneshot::Sender<Result<Completed>>,
}

/// A request's deadline: the instant, and the seconds it was given (for the 504's message).
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub at: Instant,
    pub seconds: f64,
}

impl Deadline {
    /// `seconds` from `start`.
    pub fn after(start: Instant, seconds: f64) -> Self {
        Deadline {
            at: start + Duration::from_secs_f64(seconds.max(0.0)),
            seconds,
        }
    }

    pub fn passed(&self) -> bool {
        Instant::now() >= self.at
    }

    pub fn error(&self) -> Error {
        Error::Timeout { seconds: self.seconds }
    }
}

/// Sets its flag when dropped, unless disarmed: a handler future dropped by a client disconnect cancels its job.
pub struct CancelOnDrop {
    flag: Arc<AtomicBool>,
    armed: bool,
}

impl CancelOnDrop {
    pub fn disarm(mut self) {
        self.armed = false;
    }
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if self.armed {
            self.flag.store(true, Ordering::Relaxed);
        }
    }
}

pub struct Engine {
    sender: Option<Sender<Job>>,
    capacity: usize,
    batch_rows: usize,
    workers: Vec<JoinHandle<()>>,
    /// Mean seconds per job (EWMA), kept as f64 bits, for `Retry-After`.
    mean_job_seconds: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts one worker thread per pipeline. `capacity` bounds the jobs waiting for a worker; `settings`
    /// bound the rows of one UNet call and the candidates of one unit (best_of, min_reward).
    pub fn start(
        pipelines: Vec<Pipeline>,
        capacity: usize,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        if pipelines.is_empty() {
            return Err(Error::Config("at least one worker is needed".into()));
        }
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let mean_job_seconds = Arc::new(AtomicU64::new(1.0f64.to_bits()));
        let loads: worker::Loads = (0..pipelines.len()).map(|_| AtomicUsize::new(0)).collect();
        let workers = pipelines
            .into_iter()
            .enumerate()
            .map(|(index, pipeline)| {
                let receiver = receiver.clone();
                let metrics = metrics.clone();
                let mean = mean_job_seconds.clone();
                let loads = loads.clone();
                std::thread::Builder::new()
                    .name(format!("t2i-worker-{index}"))
                    .spawn(move || worker::Worker::new(index, loads, pipeline, receiver, settings, metrics, mean).run())
                    .map_err(|err| Error::Internal(format!("cannot start worker thread: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Engine {
            sender: Some(sender),
            capacity: capacity.max(1),
            batch_rows: settings.max_rows.max(1),
            workers,
            mean_job_seconds,
            metrics,
        })
    }

    pub fn queued(&self) -> usize {
        self.sender.as_ref().map_or(0, Sender::len)
    }

    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Most UNet rows one worker's call carries.
    pub fn batch_rows(&self) -> usize {
        self.batch_rows
    }

    /// Enqueues a planned job and waits for it. Fails at once with `Overloaded` when the queue is full. With the
    /// plan's scorer, every candidate is scored and its selection picks the images; without one, the images
    /// come back unscored. Past its `deadline` the job answers 504 and its work stops at the next denoising step.
    pub async fn generate(&self, plan: GeneratePlan, deadline: Option<Deadline>) -> Result<Completed> {
        self.generate_as(plan, deadline, Priority::Online).await
    }

    /// [`Engine::generate`] at a priority: a fine-tune job's samples go as [`Priority::Background`].
    pub async fn generate_as(
        &self,
        plan: GeneratePlan,
        deadline: Option<Deadline>,
        priority: Priority,
    ) -> Result<Completed> {
        let sender = self
            .sender
            .as_ref()
            .ok_or_else(|| Error::Unavailable("the server is shutting down".into()))?;
        let cancel = Arc::new(AtomicBool::new(false));
        let guard = CancelOnDrop {
            flag: cancel.clone(),
            armed: true,
        };
        let (reply, receive) = oneshot::channel();
        let job = Job {
            plan,
            cancel,
            enqueued: Instant::now(),
            priority,
            deadline,
            reply,
        };
        match sender.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                self.metrics.requests_dropped.with_label_values(&["queue_full"]).inc();
                return Err(self.overloaded());
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable("the workers have stopped".into()));
            }
        }
        self.metrics.queue_depth.set(self.queued() as i64);
        let answer = match deadline {
            // Dropping `guard` on the way out raises the cancel flag, so the worker lets the job go too.
            Some(deadline) => tokio::time::timeout_at(deadline.at.into(), receive)
                .await
                .map_err(|_| deadline.error())?,
            None => receive.await,
        };
        let result = answer.map_err(|_| Error::Internal("the worker dropped the request without answering".into()))?;
        guard.disarm();
        result
    }

    fn overloaded(&self) -> Error {
        let queued = self.queued();
        let mean = f64::from_bits(self.mean_job_seconds.load(Ordering::Relaxed));
        let workers = self.workers.len().max(1) as f64;
        let retry_after_secs = ((queued as f64 + 1.0) * mean / workers).ceil().clamp(1.0, 3600.0) as u64;
        Error::Overloaded {
            queued,
            limit: self.capacity,
            retry_after_secs,
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        // Closing the channel lets each worker finish its job and exit.
        self.sender.take();
        for worker in self.workers.drain(..) {
            let _ = worker.join();
        }
    }
}
