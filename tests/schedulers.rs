//! Replays the denoising loops recorded from diffusers in `tests/golden/schedulers.json` through the
//! Rust schedulers. Each case runs its own trajectory (every step starts from the Rust result of the
//! step before), with the recorded model outputs and noise, so errors accumulate as in a request.
//!
//! Tolerance: 1e-5, absolute for latents of magnitude up to 1 and relative to the largest latent
//! going into or out of the step beyond that. float32 resolution is relative, and torch computes `sqrt`, `exp` and `ln`
//! with MKL's vector routines, which are off from the correctly rounded result by up to 0.75 ulp
//! (a fifth of `sqrt` results on x86), so the Rust arithmetic cannot reproduce every bit. The
//! recorded loops feed model outputs that do not shrink with the noise, so their latents grow to
//! about 35, where a one-step difference of a few ulps exceeds 1e-5.

use std::path::Path;

use serde::Deserialize;
use t2i_align::pipeline::scheduler::{build, SchedulerConfig, SchedulerKind, SchedulerOptions};

const TOLERANCE: f32 = 1e-5;

#[derive(Deserialize)]
struct Golden {
    cases: Vec<Case>,
}

#[derive(Deserialize)]
struct Case {
    name: String,
    class: String,
    config: serde_json::Value,
    num_inference_steps: usize,
    /// Extra keyword arguments diffusers' `step` got; only DDIM's `eta` has a counterpart.
    #[serde(default)]
    step_kwargs: serde_json::Map<String, serde_json::Value>,
    timesteps: Vec<f64>,
    init_noise_sigma: f64,
    sample: Vec<f32>,
    steps: Vec<Step>,
}

#[derive(Deserialize)]
struct Step {
    step_index: usize,
    timestep: f64,
    scaled_input: Vec<f32>,
    model_output: Vec<f32>,
    noise: Option<Vec<f32>>,
    prev_sample: Vec<f32>,
}

/// The largest error of one case: absolute, and scaled as the tolerance is.
#[derive(Default)]
struct Errors {
    absolute: f32,
    scaled: f32,
}

impl Errors {
    /// `input` is what the operation started from: a step that cancels large latents down to
    /// small ones keeps the rounding error of the large ones.
    fn record(&mut self, actual: &[f32], expected: &[f32], input: &[f32]) {
        assert_eq!(actual.len(), expected.len(), "length mismatch");
        let error = actual
            .iter()
            .zip(expected)
            .map(|(a, e)| (a - e).abs())
            .fold(0.0, f32::max);
        let magnitude = expected
            .iter()
            .chain(input)
            .fold(1.0f32, |max, value| max.max(value.abs()));
        self.absolute = self.absolute.max(error);
        self.scaled = self.scaled.max(error / magnitude);
    }
}

/// Timesteps and sigmas are compared relative to their size: an ulp of 999 is 6e-5.
fn assert_close_scalar(what: &str, context: &str, actual: f64, expected: f64) {
    let bound = 1e-6 * expected.abs().max(1.0);
    assert!(
        (actual - expected).abs() <= bound,
        "{context}: {what} is {actual}, diffusers has {expected}"
    );
}

fn replay(case: &Case) -> Errors {
    let name = &case.name;
    let kind = SchedulerKind::from_class_name(&case.class)
        .unwrap_or_else(|| panic!("{name}: no Rust scheduler for class {}", case.class));
    let config = SchedulerConfig::from_json_str(&case.config.to_string())
        .unwrap_or_else(|err| panic!("{name}: config does not parse: {err}"));
    let mut options = SchedulerOptions::default();
    for (argument, value) in &case.step_kwargs {
        match (argument.as_str(), value.as_f64()) {
            ("eta", Some(eta)) => options.eta = eta as f32,
            _ => panic!("{name}: step argument {argument}={value} has no Rust counterpart"),
        }
    }
    let mut scheduler = build(kind, &config, case.num_inference_steps, &options)
        .unwrap_or_else(|err| panic!("{name}: build failed: {err}"));

    assert_eq!(
        scheduler.timesteps().len(),
        case.timesteps.len(),
        "{name}: timestep count"
    );
    for (actual, expected) in scheduler.timesteps().iter().zip(&case.timesteps) {
        assert_close_scalar("a timestep", name, f64::from(*actual), *expected);
    }
    let init_noise_sigma = f64::from(scheduler.init_noise_sigma());
    assert_close_scalar("init_noise_sigma", name, init_noise_sigma, case.init_noise_sigma);
    assert_eq!(
        case.steps.len(),
        case.timesteps.len(),
        "{name}: the recording skips steps"
    );
    assert_eq!(
        scheduler.needs_noise(),
        case.steps.iter().any(|step| step.noise.is_some()),
        "{name}: needs_noise disagrees with the recording"
    );

    let mut sample = case.sample.clone();
    let mut errors = Errors::default();
    for step in &case.steps {
        let context = format!("{name} step {}", step.step_index);
        let timestep = f64::from(scheduler.timesteps()[step.step_index]);
        assert_close_scalar("the timestep", &context, timestep, step.timestep);

        let mut scaled = sample.clone();
        scheduler.scale_model_input(&mut scaled, step.step_index);
        errors.record(&scaled, &step.scaled_input, &sample);

        // diffusers' LCMScheduler draws no noise at its last step; the others draw at every step or none.
        let recorded_noise = step.noise.is_some();
        assert_eq!(
            scheduler.needs_noise_at(step.step_index),
            recorded_noise,
            "{context}: needs_noise_at disagrees with the recording"
        );
        let input = sample.clone();
        scheduler
            .step(&step.model_output, step.step_index, &mut sample, step.noise.as_deref())
            .unwrap_or_else(|err| panic!("{context}: {err}"));
        errors.record(&sample, &step.prev_sample, &input);
    }
    errors
}

#[test]
fn schedulers_match_diffusers_golden_loops() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/schedulers.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    // Python's json writes diffusers' default `lambda_min_clipped` as a bare -Infinity.
    let golden: Golden = serde_json::from_str(&text.replace("-Infinity", "null")).expect("golden file parses");

    for kind in SchedulerKind::ALL {
        let covered = golden.cases.iter().any(|case| case.class == kind.class_name());
        assert!(covered, "no golden case for {}", kind.class_name());
    }
    let mut failed = Vec::new();
    for case in &golden.cases {
        let errors = replay(case);
        println!(
            "{:<40} max abs error {:.2e}, scaled {:.2e}",
            case.name, errors.absolute, errors.scaled
        );
        if errors.scaled > TOLERANCE {
            failed.push(case.name.as_str());
        }
    }
    assert!(failed.is_empty(), "cases beyond the tolerance: {failed:?}");
}
