//! Prometheus metrics, named by the conventions: base units (`_seconds`), `_total` for counters.
//! One registry per server, so tests can start several servers in one process.

use std::time::Duration;

use prometheus::{
    exponential_buckets, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::pipeline::StageTimings;

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub queue_depth: IntGauge,
    pub stage_duration: HistogramVec,
    pub images_generated: IntCounter,
    pub requests_dropped: IntCounterVec,
    pub model_info: GaugeVec,
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
                "Duration of pipeline stages: queue, text_encode, unet_step, vae_decode, png_encode",
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
        let model_info = GaugeVec::new(
            Opts::new(
                "t2i_model_info",
                "The served model and the execution provider running it (value 1)",
            ),
            &["model", "execution_provider", "device"],
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
                model_info: model_info?,
                registry,
            };
            metrics.registry.register(Box::new(metrics.http_requests.clone()))?;
            metrics.registry.register(Box::new(metrics.http_duration.clone()))?;
            metrics.registry.register(Box::new(metrics.queue_depth.clone()))?;
            metrics.registry.register(Box::new(metrics.stage_duration.clone()))?;
            metrics.registry.register(Box::new(metrics.images_generated.clone()))?;
            metrics.registry.register(Box::new(metrics.requests_dropped.clone()))?;
            metrics.registry.register(Box::new(metrics.model_info.clone()))?;
            Ok(metrics)
        })();
        match metrics {
            Ok(metrics) => metrics,
            Err(err) => panic!("metric definitions are static and valid: {err}"),
        }
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
}
