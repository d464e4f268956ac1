//! Prometheus metrics, named by the conventions: base units (`_seconds`), `_total` for counters.
//! One registry per server, so tests can start several servers in one process.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::pipeline::{SelectionReport, StageTimings};

/// The most tenants that get a label of their own in per-tenant metrics.
pub const MAX_TENANT_LABELS: usize = 100;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub queue_depth: IntGauge,
    pub stage_duration: HistogramVec,
    pub images_generated: IntCounter,
    pub requests_dropped: IntCounterVec,
    /// ONNX Runtime runs stopped midway (`RunOptions::terminate`) because none of their requests still waited.
    pub runs_terminated: IntCounterVec,
    pub model_info: GaugeVec,
    /// One histogram per reward model, with buckets fitted to its score range.
    reward_scores: Mutex<HashMap<String, Histogram>>,
    pub reward_batch_size: HistogramVec,
    pub reward_batch_duration: HistogramVec,
    /// UNet rows per call of the continuous batcher (classifier-free guidance counts two per image).
    pub unet_batch_rows: prometheus::Histogram,
    /// Requests whose units share one UNet call.
    pub unet_batch_requests: prometheus::Histogram,
    /// Generation requests being denoised (admitted by a worker, not yet answered).
    pub active_requests: IntGauge,
    pub candidates_generated: IntCounterVec,
    pub candidates_accepted: IntCounterVec,
    pub feedback: IntCounterVec,
    /// Ratings taken back (`DELETE /feedback/{id}`), by label.
    pub feedback_deleted: IntCounterVec,
    /// Requests refused by a rate limit, by tenant (at most `MAX_TENANT_LABELS`, then `other`) and limit.
    rate_limited_total: IntCounterVec,
    /// The tenants that have a label of their own.
    tenant_labels: Mutex<std::collections::HashSet<String>>,
    /// Fine-tune jobs by status (from the database, refreshed when a job changes).
    pub fine_tune_jobs: IntGaugeVec,
    pub fine_tune_stage_duration: HistogramVec,
    /// The trainer's last reported loss of the running job.
    pub fine_tune_trainer_loss: prometheus::Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let latency_buckets = exponential_buckets(0.001, 2.0, 18).unwrap_or_default();
        let http_requests = IntCounterVec::new(
            Opts::new("t2i_http_requests_total", "HTTP requests by route, method and status"),
            &["route", "method", "status"],
        );
        let http_duration = HistogramVec::new(
            HistogramOpts::new(
                "t2i_http_request_duration_seconds",
                "HTTP request duration by route, method and status",
            )
            .buckets(latency_buckets.clone()),
            &["route", "method", "status"],
        );
        let queue_depth = IntGauge::new("t2i_queue_depth", "Generation requests waiting for a worker");
        let stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "t2i_stage_duration_seconds",
                "Duration of pipeline stages: queue, text_encode, unet_step, vae_decode, png_encode, score",
            )
            .buckets(latency_buckets),
            &["stage", "execution_provider"],
        );
        let images_generated = IntCounter::new("t2i_images_generated_total", "Images generated");
        let requests_dropped = IntCounterVec::new(
            Opts::new(
                "t2i_requests_dropped_total",
                "Generation requests dropped before finishing, by reason",
            ),
            &["reason"],
        );
        let runs_terminated = IntCounterVec::new(
            Opts::new(
                "t2i_runs_terminated_total",
                "ONNX Runtime runs stopped midway because every request in them was cancelled or past its deadline, by stage",
            ),
            &["stage"],
        );
        let model_info = GaugeVec::new(
            Opts::new(
                "t2i_model_info",
                "The served model and the execution provider running it (value 1)",
            ),
            &["model", "execution_provider", "device"],
        );
        let reward_batch_size = HistogramVec::new(
            HistogramOpts::new(
                "t2i_reward_batch_size",
                "Images per reward-model ONNX call, across the requests batched together",
            )
            .buckets(exponential_buckets(1.0, 2.0, 10).unwrap_or_default()),
            &["model"],
        );
        let reward_batch_duration = HistogramVec::new(
            HistogramOpts::new(
                "t2i_reward_batch_duration_seconds",
                "Duration of one reward-model ONNX call (one batch)",
            )
            .buckets(exponential_buckets(0.0005, 2.0, 16).unwrap_or_default()),
            &["model"],
        );
        let unet_batch_rows = prometheus::Histogram::with_opts(
            HistogramOpts::new(
                "t2i_unet_batch_rows",
                "UNet rows per call of the continuous batcher (two per image with classifier-free guidance)",
            )
            .buckets(exponential_buckets(1.0, 2.0, 9).unwrap_or_default()),
        );
        let unet_batch_requests = prometheus::Histogram::with_opts(
            HistogramOpts::new("t2i_unet_batch_requests", "Requests sharing one UNet call")
                .buckets(exponential_buckets(1.0, 2.0, 7).unwrap_or_default()),
        );
        let active_requests = IntGauge::new(
            "t2i_active_requests",
            "Generation requests admitted to a worker's batch and not yet answered",
        );
        let candidates_generated = IntCounterVec::new(
            Opts::new(
                "t2i_candidates_generated_total",
                "Candidate images generated and scored for /generate (best_of, min_reward)",
            ),
            &["reward_model"],
        );
        let candidates_accepted = IntCounterVec::new(
            Opts::new(
                "t2i_candidates_accepted_total",
                "Candidates returned by best_of, or at or above min_reward; divide by generated for the acceptance rate",
            ),
            &["reward_model"],
        );
        let feedback = IntCounterVec::new(
            Opts::new(
                "t2i_feedback_total",
                "Ratings received through POST /feedback, by label",
            ),
            &["label"],
        );
        let feedback_deleted = IntCounterVec::new(
            Opts::new(
                "t2i_feedback_deleted_total",
                "Ratings taken back through DELETE /feedback/{id} (the console's undo), by label",
            ),
            &["label"],
        );
        let rate_limited_total = IntCounterVec::new(
            Opts::new(
                "t2i_rate_limited_total",
                "Requests refused by a rate limit (429), by tenant (the first 100 seen; later ones are `other`) and \
                 limit (requests or work)",
            ),
            &["tenant", "limit"],
        );
        let fine_tune_jobs = IntGaugeVec::new(Opts::new("t2i_fine_tune_jobs", "Fine-tune jobs by status"), &["status"]);
        let fine_tune_stage_duration = HistogramVec::new(
            HistogramOpts::new(
                "t2i_fine_tune_stage_duration_seconds",
                "Duration of fine-tune job stages: prompts, sample, label, train, evaluate, register",
            )
            .buckets(exponential_buckets(0.5, 2.0, 16).unwrap_or_default()),
            &["stage"],
        );
        let fine_tune_trainer_loss = prometheus::Gauge::new(
            "t2i_fine_tune_trainer_loss",
            "The fine-tune trainer's last reported objective (reward-weighted plus beta times pre-training loss)",
        );
        let registry = Registry::new();
        // These registrations cannot collide: every name above is distinct and the registry is fresh.
        let metrics = (|| -> prometheus::Result<Metrics> {
            let metrics = Metrics {
                http_requests: http_requests?,
                http_duration: http_duration?,
                queue_depth: queue_depth?,
                stage_duration: stage_duration?,
                images_generated: images_generated?,
                requests_dropped: requests_dropped?,
                runs_terminated: runs_terminated?,
                model_info: model_info?,
                reward_scores: Mutex::new(HashMap::new()),
                reward_batch_size: reward_batch_size?,
                reward_batch_duration: reward_batch_duration?,
                unet_batch_rows: unet_batch_rows?,
                unet_batch_requests: unet_batch_requests?,
                active_requests: active_requests?,
                candidates_generated: candidates_generated?,
                candidates_accepted: candidates_accepted?,
                feedback: feedback?,
                feedback_deleted: feedback_deleted?,
                rate_limited_total: rate_limited_total?,
                tenant_labels: Mutex::new(std::collections::HashSet::new()),
                fine_tune_jobs: fine_tune_jobs?,
                fine_tune_stage_duration: fine_tune_stage_duration?,
                fine_tune_trainer_loss: fine_tune_trainer_loss?,
                registry,
            };
            metrics.registry.register(Box::new(metrics.http_requests.clone()))?;
            metrics.registry.register(Box::new(metrics.http_duration.clone()))?;
            metrics.registry.register(Box::new(metrics.queue_depth.clone()))?;
            metrics.registry.register(Box::new(metrics.stage_duration.clone()))?;
            metrics.registry.register(Box::new(metrics.images_generated.clone()))?;
            metrics.registry.register(Box::new(metrics.requests_dropped.clone()))?;
            metrics.registry.register(Box::new(metrics.runs_terminated.clone()))?;
            metrics.registry.register(Box::new(metrics.model_info.clone()))?;
            metrics.registry.register(Box::new(metrics.reward_batch_size.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.reward_batch_duration.clone()))?;
            metrics.registry.register(Box::new(metrics.unet_batch_rows.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.unet_batch_requests.clone()))?;
            metrics.registry.register(Box::new(metrics.active_requests.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.candidates_generated.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.candidates_accepted.clone()))?;
            metrics.registry.register(Box::new(metrics.feedback.clone()))?;
            metrics.registry.register(Box::new(metrics.feedback_deleted.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.rate_limited_total.clone()))?;
            metrics.registry.register(Box::new(metrics.fine_tune_jobs.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.fine_tune_stage_duration.clone()))?;
            metrics
                .registry
                .register(Box::new(metrics.fine_tune_trainer_loss.clone()))?;
            Ok(metrics)
        })();
        match metrics {
            Ok(metrics) => metrics,
            Err(err) => panic!("metric definitions are static and valid: {err}"),
        }
    }

    /// Counts a rate limit's refusal of `tenant`'s request; `limit` is `requests` or `work`. Tenants past the
    /// first `MAX_TENANT_LABELS` share the label `other`, so the series stay bounded.
    pub fn rate_limited(&self, tenant: &str, limit: &str) {
        let label = match self.tenant_labels.lock() {
            Ok(mut labels) if labels.contains(tenant) || labels.len() < MAX_TENANT_LABELS => {
                labels.insert(tenant.to_string());
                tenant.to_string()
            }
            _ => "other".to_string(),
        };
        self.rate_limited_total
            .with_label_values(&[label.as_str(), limit])
            .inc();
    }

    pub fn observe_http(&self, route: &str, method: &str, status: u16, elapsed: Duration) {
        let status = status.to_string();
        let labels = [route, method, status.as_str()];
        self.http_requests.with_label_values(&labels).inc();
        self.http_duration
            .with_label_values(&labels)
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_stages(&self, provider: &str, queue: Duration, timings: &StageTimings) {
        let observe = |stage: &str, duration: Duration| {
            self.stage_duration
                .with_label_values(&[stage, provider])
                .observe(duration.as_secs_f64());
        };
        observe("queue", queue);
        observe("text_encode", timings.text_encode);
        for step in &timings.unet_steps {
            observe("unet_step", *step);
        }
        observe("vae_decode", timings.decode);
        observe("png_encode", timings.png_encode);
        if !timings.score.is_zero() {
            observe("score", timings.score);
        }
    }

    /// Adds `t2i_reward_score{model="<name>"}`, with buckets that fit the model's score range (the reward
    /// model's `Manifest::score_buckets`).
    pub fn register_reward_model(&self, name: &str, buckets: Vec<f64>) {
        let Ok(mut histograms) = self.reward_scores.lock() else {
            return;
        };
        if histograms.contains_key(name) {
            return;
        }
        let histogram = Histogram::with_opts(
            HistogramOpts::new(
                "t2i_reward_score",
                "Reward-model scores of scored images, per reward model",
            )
            .const_label("model", name)
            .buckets(buckets),
        );
        match histogram {
            Ok(histogram) => match self.registry.register(Box::new(histogram.clone())) {
                Ok(()) => {
                    histograms.insert(name.to_string(), histogram);
                }
                Err(err) => tracing::warn!(model = name, error = %err, "cannot register the reward histogram"),
            },
            Err(err) => tracing::warn!(model = name, error = %err, "cannot build the reward histogram"),
        }
    }

    pub fn observe_reward(&self, model: &str, score: f32) {
        if let Ok(histograms) = self.reward_scores.lock() {
            if let Some(histogram) = histograms.get(model) {
                histogram.observe(f64::from(score));
            }
        }
    }

    pub fn observe_reward_batch(&self, model: &str, size: usize, elapsed: Duration) {
        self.reward_batch_size.with_label_values(&[model]).observe(size as f64);
        self.reward_batch_duration
            .with_label_values(&[model])
            .observe(elapsed.as_secs_f64());
    }

    /// Counts a rejection-sampling request's candidates. One candidate per image (a plain `/generate` scored
    /// for its reward, or a fine-tune job's sample) is no selection and is not counted, so that accepted over
    /// generated is best-of's acceptance rate.
    pub fn observe_selection(&self, report: &SelectionReport) {
        if !report.rejection {
            return;
        }
        let labels = [report.reward_model.as_str()];
        self.candidates_generated
            .with_label_values(&labels)
            .inc_by(report.candidates as u64);
        self.candidates_accepted
            .with_label_values(&labels)
            .inc_by(report.accepted as u64);
    }

    pub fn set_model_info(&self, model: &str, provider: &str, device: &str) {
        self.model_info.reset();
        self.model_info.with_label_values(&[model, provider, device]).set(1.0);
    }

    /// The text exposition format for `/metrics`.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            return format!("# error encoding metrics: {err}\n");
        }
        String::from_utf8_lossy(&buffer).into_owned()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tenant_labels_are_bounded() {
        let metrics = Metrics::new();
        for index in 0..MAX_TENANT_LABELS + 5 {
            metrics.rate_limited(&format!("tenant-{index}"), "requests");
        }
        metrics.rate_limited("tenant-0", "work");
        let text = metrics.render();
        let series = text
            .lines()
            .filter(|line| line.starts_with("t2i_rate_limited_total{"))
            .count();
        assert_eq!(
            series,
            MAX_TENANT_LABELS + 2,
            "the first 100 tenants, `other`, and tenant-0's work"
        );
        assert!(
            text.contains(r#"t2i_rate_limited_total{limit="requests",tenant="other"} 5"#),
            "{text}"
        );
    }

    #[test]
    fn renders_conventional_names() {
        let metrics = Metrics::new();
        metrics.observe_http("/generate", "POST", 200, Duration::from_millis(5));
        metrics.set_model_info("tiny-sd", "CPUExecutionProvider", "cpu");
        let text = metrics.render();
        assert!(text.contains("t2i_http_requests_total{method=\"POST\",route=\"/generate\",status=\"200\"} 1"));
        assert!(text.contains("t2i_http_request_duration_seconds_bucket"));
        assert!(text.contains(
            "t2i_model_info{device=\"cpu\",execution_provider=\"CPUExecutionProvider\",model=\"tiny-sd\"} 1"
        ));
    }

    #[test]
    fn reward_metrics_carry_the_model() {
        let metrics = Metrics::new();
        let buckets: Vec<f64> = (0..21).map(|tenth| f64::from(tenth - 5) / 10.0).collect();
        metrics.register_reward_model("shapes-reward", buckets.clone());
        metrics.register_reward_model("shapes-reward", buckets);
        metrics.observe_reward("shapes-reward", 0.73);
        metrics.observe_reward_batch("shapes-reward", 12, Duration::from_millis(3));
        metrics.observe_selection(&SelectionReport {
            reward_model: "shapes-reward".into(),
            candidates: 8,
            accepted: 2,
            candidate_scores: vec![],
            rejection: true,
        });
        let text = metrics.render();
        assert!(
            text.contains("t2i_reward_score_bucket{model=\"shapes-reward\",le=\"0.8\"} 1"),
            "{text}"
        );
        assert!(
            text.contains("t2i_reward_batch_size_sum{model=\"shapes-reward\"} 12"),
            "{text}"
        );
        assert!(text.contains("t2i_candidates_generated_total{reward_model=\"shapes-reward\"} 8"));
        assert!(text.contains("t2i_candidates_accepted_total{reward_model=\"shapes-reward\"} 2"));
        // A plain scored generation (one candidate per image) is not rejection sampling: not counted.
        metrics.observe_selection(&SelectionReport {
            reward_model: "shapes-reward".into(),
            candidates: 3,
            accepted: 3,
            candidate_scores: vec![],
            rejection: false,
        });
        let text = metrics.render();
        assert!(text.contains("t2i_candidates_generated_total{reward_model=\"shapes-reward\"} 8"));
    }
}
