//! A worker thread's continuous batcher: it owns one `Pipeline` and denoises every admitted request at once.
//!
//! Each request becomes one or more units (its images, or its candidates in rounds of at most
//! `batch_images`). Between two UNet calls the worker admits queued requests while their units fit under
//! the row limit, encodes the newcomers' prompts in one text-encoder call, asks the [`Planner`] which units
//! share the next call, runs it, decodes every unit that finished in one VAE call per size, scores their
//! images with one reward call per reward model, and answers each request whose images are all in. Which units
//! a request needs, and what it answers, is its [`Candidates`]' business (`request`). A request cancelled by its
//! client leaves at the next step boundary; the others go on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, TryRecvError};

use super::planner::{BackgroundRows, Planner, TimestepSharing};
use super::request::{rows_per_image, unit_size, Candidates};
use super::watchdog::{Member, Watchdog};
use super::{Completed, Deadline, Job, Priority};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::pipeline::denoise::{Denoising, LatentShape};
use crate::pipeline::{GenerateParams, Pipeline, Sampled};
use crate::reward::Scorer;

type BatchKey = (LatentShape, usize, usize, bool);

/// A decoded unit: its request, its first candidate number, its images and their scores (none if unscored).
type ScoredUnit = (u64, usize, Sampled, Vec<f32>);

/// Worker settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchSettings {
    /// Most UNet rows in one call (two per image with classifier-free guidance).
    pub max_rows: usize,
    /// Most candidates in one unit of a best_of or min_reward request.
    pub batch_images: usize,
    /// Rows of background work (a fine-tune job's samples) a call may carry.
    pub background: BackgroundRows,
}

/// A unit waiting for room in the batch.
struct PendingUnit {
    request: u64,
    params: GenerateParams,
    /// The unit's first candidate number; its images are candidates `first..first + num_images`.
    first: usize,
    rows: usize,
    /// A fine-tune job's unit ([`Priority::Background`]).
    background: bool,
}

struct ActiveUnit {
    request: u64,
    first: usize,
    denoising: Denoising,
}

/// An admitted request: its job, its candidates so far, and when it came.
struct Request {
    job: Job,
    queue_time: Duration,
    started: Instant,
    candidates: Candidates,
}

impl Request {
    /// Why the request no longer waits, if it does not: its deadline passed, or its client went away.
    fn ended(&self) -> Option<Error> {
        let job = &self.job;
        if let Some(deadline) = job.deadline.filter(Deadline::passed) {
            Some(deadline.error())
        } else if job.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
            Some(Error::Cancelled)
        } else {
            None
        }
    }
}

/// The distinct request ids among `ids`, sorted.
fn distinct(ids: impl IntoIterator<Item = u64>) -> Vec<u64> {
    let mut ids: Vec<u64> = ids.into_iter().collect();
    ids.sort_unstable();
    ids.dedup();
    ids
}

/// Each worker's load in online UNet rows (active and waiting units), so that a busy worker leaves queued
/// requests to a less loaded one.
pub(super) type Loads = Arc<[AtomicUsize]>;

pub(super) struct Worker {
    index: usize,
    loads: Loads,
    pipeline: Pipeline,
    receiver: Receiver<Job>,
    settings: BatchSettings,
    metrics: Arc<Metrics>,
    mean_job_seconds: Arc<AtomicU64>,
    provider: &'static str,
    planner: Planner<BatchKey>,
    requests: HashMap<u64, Request>,
    pending: VecDeque<PendingUnit>,
    active: HashMap<u64, ActiveUnit>,
    next_id: u64,
    /// This worker's share of `t2i_active_requests` as last published.
    published_active: i64,
    /// Stops a UNet or VAE run once none of its requests waits for it; `None` if its thread did not start.
    watchdog: Option<Watchdog>,
}

impl Worker {
    pub(super) fn new(
        index: usize,
        loads: Loads,
        pipeline: Pipeline,
        receiver: Receiver<Job>,
        settings: BatchSettings,
        metrics: Arc<Metrics>,
        mean_job_seconds: Arc<AtomicU64>,
    ) -> Self {
        let sharing = if pipeline.per_row_timesteps() {
            TimestepSharing::PerRow
        } else {
            TimestepSharing::Shared
        };
        Worker {
            index,
            loads,
            provider: pipeline.provider().label(),
            pipeline,
            receiver,
            metrics,
            mean_job_seconds,
            planner: Planner::with_background(settings.max_rows, sharing, settings.background),
            settings,
            requests: HashMap::new(),
            pending: VecDeque::new(),
            active: HashMap::new(),
            next_id: 0,
            published_active: 0,
            watchdog: Watchdog::start(format!("t2i-watchdog-{index}"))
                .map_err(|err| tracing::warn!(error = %err, "no watchdog: deadlines act at step boundaries only"))
                .ok(),
        }
    }

    /// Arms the watchdog for a call made on behalf of `requests` (distinct ids).
    fn watch(&self, requests: &[u64]) {
        let Some(watchdog) = &self.watchdog else {
            return;
        };
        let members = requests
            .iter()
            .filter_map(|id| self.requests.get(id))
            .map(|request| Member {
                cancel: request.job.cancel.clone(),
                deadline: request.job.deadline.map(|deadline| deadline.at),
            })
            .collect();
        watchdog.arm(self.pipeline.run_options(), members);
    }

    /// Ends the watch; true when the watchdog stopped the call (its terminate flag is cleared for the next one).
    fn unwatch(&self, stage: &str) -> bool {
        let terminated = self.watchdog.as_ref().is_some_and(Watchdog::disarm);
        if terminated {
            self.metrics.runs_terminated.with_label_values(&[stage]).inc();
            if let Err(err) = self.pipeline.clear_termination() {
                tracing::error!(error = %err, "the next run may fail at once");
            }
            tracing::debug!(stage, "stopped an ONNX Runtime run: none of its requests waits for it");
        }
        terminated
    }

    /// Why a request in a call the watchdog stopped no longer waits (the watchdog stops only such calls).
    fn ended_error(&self, id: u64) -> Error {
        self.requests
            .get(&id)
            .and_then(Request::ended)
            .unwrap_or(Error::Cancelled)
    }

    /// Runs until the queue closes and every admitted request is answered.
    pub(super) fn run(mut self) {
        loop {
            if !self.admit() {
                return;
            }
            // A panic inside one step must not take the worker (and every later request) down with it.
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.iterate()));
            if let Err(panic) = outcome {
                let reason = panic
                    .downcast_ref::<&str>()
                    .map(|text| text.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                tracing::error!(%reason, "a batched step panicked; failing the requests in the batch");
                let ids: Vec<u64> = self.requests.keys().copied().collect();
                for id in ids {
                    self.fail(id, Error::Internal(format!("generation panicked: {reason}")));
                }
            }
            self.publish_load();
        }
    }

    /// Online rows this worker has active or waiting. A fine-tune job's rows do not count: they never delay an
    /// online request here (it anchors every call), so they must not send one to a busier worker.
    fn load(&self) -> usize {
        let pending: usize = self
            .pending
            .iter()
            .filter(|unit| !unit.background)
            .map(|unit| unit.rows)
            .sum();
        self.planner.online_rows() + pending
    }

    fn publish_load(&mut self) {
        if let Some(load) = self.loads.get(self.index) {
            load.store(self.load(), Ordering::Relaxed);
        }
        // The gauge is shared by every worker of every engine: each adds the change in its own count, where
        // setting it would overwrite the others'.
        let active = self.requests.len() as i64;
        self.metrics.active_requests.add(active - self.published_active);
        self.published_active = active;
    }

    /// Whether no other worker carries less: a busy worker takes queued requests only then, so that an idle
    /// (or lighter) worker gets them instead.
    fn least_loaded(&self) -> bool {
        let mine = self.load();
        self.loads
            .iter()
            .enumerate()
            .all(|(index, load)| index == self.index || load.load(Ordering::Relaxed) >= mine)
    }

    fn fresh_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    /// Takes queued requests while their units fit, and starts the units that fit (one text-encoder call).
    /// Blocks when nothing is active or waiting. Returns false once the queue is closed and all work is done.
    ///
    /// Online units are admitted before background ones, and against the online rows alone: a job's units
    /// never keep a user's request out of the batch.
    fn admit(&mut self) -> bool {
        self.drop_cancelled();
        let mut starting: Vec<PendingUnit> = Vec::new();
        let mut starting_rows = 0;
        let mut starting_online_rows = 0;
        loop {
            let next = self
                .pending
                .iter()
                .position(|unit| !unit.background)
                .or(if self.pending.is_empty() { None } else { Some(0) });
            if let Some(index) = next {
                let unit = &self.pending[index];
                let fits = if self.planner.is_empty() && starting.is_empty() {
                    true
                } else if unit.background {
                    self.planner.active_rows() + starting_rows + unit.rows <= self.planner.max_rows()
                } else {
                    self.planner.online_rows() + starting_online_rows + unit.rows <= self.planner.max_rows()
                };
                if !fits {
                    break;
                }
                if let Some(unit) = self.pending.remove(index) {
                    starting_rows += unit.rows;
                    if !unit.background {
                        starting_online_rows += unit.rows;
                    }
                    starting.push(unit);
                }
                continue;
            }
            let idle = self.planner.is_empty() && starting.is_empty() && self.requests.is_empty();
            let job = if idle {
                self.publish_load();
                match self.receiver.recv() {
                    Ok(job) => job,
                    Err(_) => return false,
                }
            } else {
                // A batch full of online rows takes no new request: it waits in the queue, where the queue's limit
                // counts it. Background rows do not count: an online request may still join beside them.
                let online_rows = self.planner.online_rows() + starting_online_rows;
                if !self.least_loaded() || online_rows >= self.planner.max_rows() {
                    break;
                }
                match self.receiver.try_recv() {
                    Ok(job) => job,
                    Err(TryRecvError::Empty) | Err(TryRecvError::Disconnected) => break,
                }
            };
            self.metrics.queue_depth.set(self.receiver.len() as i64);
            self.accept(job);
        }
        if !starting.is_empty() {
            self.start_units(starting);
        }
        true
    }

    /// Makes a request of a queued job and queues its first units.
    fn accept(&mut self, job: Job) {
        let queue_time = job.enqueued.elapsed();
        if let Some(deadline) = job.deadline.filter(Deadline::passed) {
            self.metrics.requests_dropped.with_label_values(&["deadline"]).inc();
            let _ = job.reply.send(Err(deadline.error()));
            return;
        }
        if job.cancel.load(Ordering::Relaxed) || job.reply.is_closed() {
            self.metrics
                .requests_dropped
                .with_label_values(&["client_disconnected"])
                .inc();
            tracing::debug!("dropped a queued request: its client disconnected");
            return;
        }
        let id = self.fresh_id();
        let unit_images = unit_size(&job.plan, self.settings.batch_images, self.planner.max_rows());
        let candidates = Candidates::new(&job.plan, unit_images);
        self.requests.insert(
            id,
            Request {
                job,
                queue_time,
                started: Instant::now(),
                candidates,
            },
        );
        self.issue_units(id);
    }

    /// Queues the request's next units: all of a best_of's rounds at once (their seeds are fixed), one round at
    /// a time for min_reward (whether another is needed depends on the scores).
    fn issue_units(&mut self, id: u64) {
        let Some(request) = self.requests.get_mut(&id) else {
            return;
        };
        let params = &request.job.plan.params;
        let rows = rows_per_image(params);
        let background = request.job.priority == Priority::Background;
        let further = request.candidates.issued() > 0;
        let one_round = request.candidates.one_round_at_a_time();
        let units: Vec<PendingUnit> = request
            .candidates
            .issue()
            .into_iter()
            .map(|unit| PendingUnit {
                request: id,
                params: unit.params(params),
                first: unit.first,
                rows: unit.count * rows,
                background,
            })
            .collect();
        // An admitted request's further rounds go ahead of requests not yet started.
        if one_round && further {
            for unit in units.into_iter().rev() {
                self.pending.push_front(unit);
            }
        } else {
            self.pending.extend(units);
        }
    }

    fn start_units(&mut self, units: Vec<PendingUnit>) {
        let inputs = units
            .iter()
            .map(|unit| (unit.params.clone(), self.pipeline.initial_latents(&unit.params)))
            .collect();
        let started = self.pipeline.begin(inputs);
        for (unit, result) in units.into_iter().zip(started) {
            match result {
                Ok(denoising) => {
                    let id = self.fresh_id();
                    let timestep = denoising.next_timestep().unwrap_or(0.0);
                    let (rows, key) = (denoising.unet_rows(), denoising.batch_key());
                    self.planner.join_unit(id, rows, key, timestep, unit.background);
                    self.active.insert(
                        id,
                        ActiveUnit {
                            request: unit.request,
                            first: unit.first,
                            denoising,
                        },
                    );
                }
                Err(err) => self.fail(unit.request, err),
            }
        }
    }

    /// One UNet call for the planned units, then decoding, scoring and answers for those that finished.
    fn iterate(&mut self) {
        let planned = self.planner.plan();
        if planned.is_empty() {
            return;
        }
        let mut units: Vec<(u64, ActiveUnit)> = planned
            .iter()
            .filter_map(|id| self.active.remove(id).map(|unit| (*id, unit)))
            .collect();
        let requests_in_call = distinct(units.iter().map(|(_, unit)| unit.request));
        let rows: usize = units.iter().map(|(_, unit)| unit.denoising.unet_rows()).sum();
        self.watch(&requests_in_call);
        let result = {
            let mut refs: Vec<&mut Denoising> = units.iter_mut().map(|(_, unit)| &mut unit.denoising).collect();
            self.pipeline.step(&mut refs)
        };
        let terminated = self.unwatch("unet_step");
        self.metrics.unet_batch_rows.observe(rows as f64);
        self.metrics.unet_batch_requests.observe(requests_in_call.len() as f64);
        if let Err(err) = result {
            if !terminated {
                tracing::error!(error = %err, "a batched UNet step failed");
            }
            for (id, unit) in units {
                self.planner.leave(id);
                let err = if terminated {
                    self.ended_error(unit.request)
                } else {
                    err.clone()
                };
                self.fail(unit.request, err);
            }
            return;
        }
        let mut finished = Vec::new();
        for (id, unit) in units {
            match unit.denoising.next_timestep() {
                Some(timestep) => {
                    self.planner.set_timestep(id, timestep);
                    self.active.insert(id, unit);
                }
                None => {
                    self.planner.leave(id);
                    finished.push(unit);
                }
            }
        }
        if !finished.is_empty() {
            self.complete_units(finished);
        }
    }

    /// Decodes finished units together, scores their images, and answers the requests that are done.
    fn complete_units(&mut self, finished: Vec<ActiveUnit>) {
        let owners: Vec<(u64, usize)> = finished.iter().map(|unit| (unit.request, unit.first)).collect();
        self.watch(&distinct(owners.iter().map(|&(request, _)| request)));
        let decoded = self
            .pipeline
            .finish(finished.into_iter().map(|unit| unit.denoising).collect());
        let terminated = self.unwatch("vae_decode");
        let mut to_score: Vec<(u64, usize, Sampled)> = Vec::new();
        for ((request, first), result) in owners.into_iter().zip(decoded) {
            match result {
                Ok(sampled) => to_score.push((request, first, sampled)),
                Err(_) if terminated => {
                    let err = self.ended_error(request);
                    self.fail(request, err);
                }
                Err(err) => self.fail(request, err),
            }
        }
        let mut touched = Vec::new();
        for (id, first, sampled, scores) in self.score(to_score) {
            let Some(request) = self.requests.get_mut(&id) else {
                continue;
            };
            request.candidates.record(first, sampled, &scores);
            touched.push(id);
        }
        touched.dedup();
        for id in touched {
            self.advance(id);
        }
    }

    /// Scores the images of `units` with one reward call per reward model, and returns each unit with its
    /// scores (none for an unscored request's); a failed call fails the requests it scored, whose units are
    /// left out.
    fn score(&mut self, units: Vec<(u64, usize, Sampled)>) -> Vec<ScoredUnit> {
        let mut units: Vec<ScoredUnit> = units
            .into_iter()
            .map(|(request, first, sampled)| (request, first, sampled, Vec::new()))
            .collect();
        let mut by_scorer: Vec<(Arc<Scorer>, Vec<usize>)> = Vec::new();
        for (position, (request, _, _, _)) in units.iter().enumerate() {
            let Some(scorer) = self
                .requests
                .get(request)
                .and_then(|request| request.job.plan.scorer.clone())
            else {
                continue;
            };
            match by_scorer.iter_mut().find(|(known, _)| Arc::ptr_eq(known, &scorer)) {
                Some((_, positions)) => positions.push(position),
                None => by_scorer.push((scorer, vec![position])),
            }
        }
        let mut failed: Vec<(u64, Error)> = Vec::new();
        for (scorer, positions) in by_scorer {
            let started = Instant::now();
            let preprocessor = scorer.preprocessor();
            let mut prompts = Vec::new();
            let mut pixels = Vec::new();
            for &position in &positions {
                let (request, _, sampled, _) = &units[position];
                let prompt = self
                    .requests
                    .get(request)
                    .map(|request| request.job.plan.params.prompt.clone())
                    .unwrap_or_default();
                for image in &sampled.images {
                    preprocessor.pixel_values_into(&image.rgb, &mut pixels);
                    prompts.push(prompt.clone());
                }
            }
            let scored = scorer.score_blocking(prompts, pixels);
            let elapsed = started.elapsed();
            match scored {
                Ok(scored) => {
                    let mut offset = 0;
                    for &position in &positions {
                        let (request, _, sampled, unit_scores) = &mut units[position];
                        sampled.timings.score += elapsed;
                        let count = sampled.images.len();
                        match scored.scores.get(offset..offset + count) {
                            Some(these) => unit_scores.extend_from_slice(these),
                            None => failed.push((
                                *request,
                                Error::Internal(format!(
                                    "the reward model returned {} scores for {} images",
                                    scored.scores.len(),
                                    offset + count
                                )),
                            )),
                        }
                        offset += count;
                    }
                }
                Err(err) => {
                    for &position in &positions {
                        failed.push((units[position].0, err.clone()));
                    }
                }
            }
        }
        for (request, err) in failed {
            self.fail(request, err);
        }
        units.retain(|(request, _, _, _)| self.requests.contains_key(request));
        units
    }

    /// After units came back: issue another round, or answer the request.
    fn advance(&mut self, id: u64) {
        let Some(request) = self.requests.get(&id) else {
            return;
        };
        if request.candidates.outstanding() > 0 {
            return;
        }
        if !request.candidates.enough() {
            self.issue_units(id);
            return;
        }
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        let output = request.candidates.finish();
        if let Ok(output) = &output {
            self.metrics
                .observe_stages(self.provider, request.queue_time, &output.timings);
            self.metrics.images_generated.inc_by(output.images.len() as u64);
            if let Some(report) = &output.selection {
                self.metrics.observe_selection(report);
            }
            let seconds = request.started.elapsed().as_secs_f64();
            let previous = f64::from_bits(self.mean_job_seconds.load(Ordering::Relaxed));
            self.mean_job_seconds
                .store((0.8 * previous + 0.2 * seconds).to_bits(), Ordering::Relaxed);
        }
        if let Err(err) = &output {
            tracing::error!(error = %err, "generation failed");
        }
        let queue_time = request.queue_time;
        let _ = request
            .job
            .reply
            .send(output.map(|output| Completed { output, queue_time }));
    }

    /// Answers a request with an error and drops its units, active or waiting.
    fn fail(&mut self, id: u64, err: Error) {
        let Some(request) = self.requests.remove(&id) else {
            return;
        };
        let units: Vec<u64> = self
            .active
            .iter()
            .filter(|(_, unit)| unit.request == id)
            .map(|(unit_id, _)| *unit_id)
            .collect();
        for unit_id in units {
            self.active.remove(&unit_id);
            self.planner.leave(unit_id);
        }
        self.pending.retain(|unit| unit.request != id);
        match &err {
            Error::Timeout { .. } => {
                self.metrics.requests_dropped.with_label_values(&["deadline"]).inc();
                tracing::debug!("stopped a request at its deadline");
            }
            Error::Cancelled => {
                self.metrics
                    .requests_dropped
                    .with_label_values(&["client_disconnected"])
                    .inc();
                tracing::debug!("stopped a running request: its client disconnected");
            }
            other => tracing::error!(error = %other, "generation failed"),
        }
        let _ = request.job.reply.send(Err(err));
    }

    /// Requests past their deadline, or whose client went away, leave at this step boundary.
    fn drop_cancelled(&mut self) {
        let ended: Vec<(u64, Error)> = self
            .requests
            .iter()
            .filter_map(|(id, request)| Some((*id, request.ended()?)))
            .collect();
        for (id, err) in ended {
            self.fail(id, err);
        }
    }
}
