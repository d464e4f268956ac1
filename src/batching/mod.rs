//! The bounded work queue between HTTP handlers and the worker threads that own the ONNX sessions.
//!
//! Handlers never touch ONNX Runtime: they validate, enqueue and await a reply. A full queue answers at once
//! (429 with `Retry-After`), never with an unbounded wait. Each worker thread owns one `Pipeline`, because
//! `Session::run` needs `&mut`. A request whose caller went away is dropped before it starts, and stops at the
//! next step boundary if it already runs. Continuous batching across requests builds on this in a later step.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::pipeline::{GenerateOutput, GenerateParams, Pipeline, Progress};
use crate::reward::best_of::{generate_selected, Selection};
use crate::reward::Scorer;

/// A finished generation, with the time it waited in the queue.
pub struct Completed {
    pub output: GenerateOutput,
    pub queue_time: Duration,
}

struct Job {
    params: GenerateParams,
    /// How to choose among candidates, and the reward model that scores them; without one, no scoring.
    selection: Selection,
    scorer: Option<Arc<Scorer>>,
    cancel: Arc<AtomicBool>,
    enqueued: Instant,
    reply: oneshot::Sender<Result<Completed>>,
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
    workers: Vec<JoinHandle<()>>,
    /// Mean seconds per job (EWMA), kept as f64 bits, for `Retry-After`.
    mean_job_seconds: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
}

impl Engine {
    /// Starts one worker thread per pipeline. `capacity` bounds the jobs waiting for a worker; `batch_images`
    /// bounds the candidates in one denoising batch when a request asks for several (best_of, min_reward).
    pub fn start(
        pipelines: Vec<Pipeline>,
        capacity: usize,
        batch_images: usize,
        metrics: Arc<Metrics>,
    ) -> Result<Self> {
        if pipelines.is_empty() {
            return Err(Error::Config("at least one worker is needed".into()));
        }
        let (sender, receiver) = crossbeam_channel::bounded::<Job>(capacity.max(1));
        let mean_job_seconds = Arc::new(AtomicU64::new(1.0f64.to_bits()));
        let workers = pipelines
            .into_iter()
            .enumerate()
            .map(|(index, pipeline)| {
                let receiver = receiver.clone();
                let metrics = metrics.clone();
                let mean = mean_job_seconds.clone();
                std::thread::Builder::new()
                    .name(format!("t2i-worker-{index}"))
                    .spawn(move || worker_loop(pipeline, receiver, batch_images, metrics, mean))
                    .map_err(|err| Error::Internal(format!("cannot start worker thread: {err}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Engine {
            sender: Some(sender),
            capacity: capacity.max(1),
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

    /// Enqueues a job and waits for it. Fails at once with `Overloaded` when the queue is full. With a scorer,
    /// every candidate is scored and `selection` picks the images; without one, the images come back unscored.
    pub async fn generate(
        &self,
        params: GenerateParams,
        selection: Selection,
        scorer: Option<Arc<Scorer>>,
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
            params,
            selection,
            scorer,
            cancel,
            enqueued: Instant::now(),
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
        let result = receive
            .await
            .map_err(|_| Error::Internal("the worker dropped the request without answering".into()))?;
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

struct JobProgress<'a> {
    cancel: &'a AtomicBool,
}

impl Progress for JobProgress<'_> {
    fn cancelled(&self) -> bool {
        self.cancel.load(Ordering::Relaxed)
    }
}

fn worker_loop(
    mut pipeline: Pipeline,
    receiver: Receiver<Job>,
    batch_images: usize,
    metrics: Arc<Metrics>,
    mean: Arc<AtomicU64>,
) {
    let provider = pipeline.provider().label();
    while let Ok(job) = receiver.recv() {
        metrics.queue_depth.set(receiver.len() as i64);
        let queue_time = job.enqueued.elapsed();
        if job.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
            metrics
                .requests_dropped
                .with_label_values(&["client_disconnected"])
                .inc();
            tracing::debug!("dropped a queued request: its client disconnected");
            continue;
        }
        let started = Instant::now();
        let mut progress = JobProgress { cancel: &job.cancel };
        // A panic inside one request must not take the worker (and every later request) down with it.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match &job.scorer {
            Some(scorer) => generate_selected(
                &mut pipeline,
                scorer,
                &job.params,
                job.selection,
                batch_images,
                &mut progress,
            ),
            None => pipeline.generate(&job.params, &mut progress),
        }))
        .unwrap_or_else(|panic| {
            let reason = panic
                .downcast_ref::<&str>()
                .map(|text| text.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "unknown panic".into());
            Err(Error::Internal(format!("generation panicked: {reason}")))
        });
        match &result {
            Ok(output) => {
                metrics.observe_stages(provider, queue_time, &output.timings);
                metrics.images_generated.inc_by(output.images.len() as u64);
                if let Some(report) = &output.selection {
                    metrics.observe_selection(report);
                }
                let seconds = started.elapsed().as_secs_f64();
                let previous = f64::from_bits(mean.load(Ordering::Relaxed));
                mean.store((0.8 * previous + 0.2 * seconds).to_bits(), Ordering::Relaxed);
            }
            Err(Error::Cancelled) => {
                metrics
                    .requests_dropped
                    .with_label_values(&["client_disconnected"])
                    .inc();
                tracing::debug!("stopped a running request: its client disconnected");
            }
            Err(err) => tracing::error!(error = %err, "generation failed"),
        }
        let _ = job.reply.send(result.map(|output| Completed { output, queue_time }));
    }
}
