//! Latent Consistency Models (Luo et al., 2023), as diffusers' `LCMScheduler`: the scheduler of LCM
//! distillations and LCM-LoRA. Each step maps the sample straight to a clean estimate with the consistency
//! model's boundary condition, then, unless it is the last step, noises that estimate forward to the next
//! timestep with fresh Gaussian noise. The last step's clean estimate is the result.
//!
//! The timesteps are a subset of the distillation schedule: every `k`-th training timestep ending at `k - 1`,
//! with `k = num_train_timesteps / original_inference_steps`, taken at evenly spaced indices. The config's
//! `timestep_spacing` and `steps_offset` play no part, as in diffusers. Custom timestep lists and img2img
//! `strength` are not supported.

use super::config::unsupported;
use super::ddim::predict_original_and_noise;
use super::numerics::np_linspace_without_endpoint;
use super::{PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs};

/// diffusers' `original_inference_steps` default: LCM was distilled on a 50-step DDIM schedule.
const DEFAULT_ORIGINAL_INFERENCE_STEPS: usize = 50;

/// `sigma_data²` of the boundary scalings; diffusers fixes `sigma_data` at 0.5.
const SIGMA_DATA_SQUARED: f32 = 0.25;

pub(crate) struct Lcm {
    timesteps: Vec<f32>,
    steps: Vec<StepCoefficients>,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
}

/// Everything one step multiplies by, in float32 as diffusers computes it from its 0-d tensors.
struct StepCoefficients {
    sqrt_alpha: f32,
    sqrt_beta: f32,
    c_skip: f32,
    c_out: f32,
    /// √ᾱ and √(1-ᾱ) of the next timestep, which the noise is added up to; unused at the last step.
    sqrt_alpha_next: f32,
    sqrt_beta_next: f32,
}

impl Lcm {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let train_timesteps = lcm_timesteps(config, steps)?;
        let timestep_scaling = config.timestep_scaling as f32;
        if !timestep_scaling.is_finite() {
            return Err(unsupported(format!(
                "LCM's `timestep_scaling` must be a finite number. Given: {}",
                config.timestep_scaling
            )));
        }
        let alphas_cumprod = config.alphas_cumprod(SchedulerKind::Lcm);
        let coefficients = train_timesteps
            .iter()
            .enumerate()
            .map(|(index, &timestep)| {
                // diffusers' last step looks up its own timestep as the "previous" one; it adds no noise there.
                let next = train_timesteps.get(index + 1).copied().unwrap_or(timestep);
                let (alpha, alpha_next) = (alphas_cumprod[timestep], alphas_cumprod[next]);
                let (c_skip, c_out) = boundary_scalings(timestep, timestep_scaling);
                StepCoefficients {
                    sqrt_alpha: alpha.sqrt(),
                    sqrt_beta: (1.0 - alpha).sqrt(),
                    c_skip,
                    c_out,
                    sqrt_alpha_next: alpha_next.sqrt(),
                    sqrt_beta_next: (1.0 - alpha_next).sqrt(),
                }
            })
            .collect();
        Ok(Self {
            timesteps: train_timesteps.iter().map(|&t| t as f32).collect(),
            steps: coefficients,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample_range_for(SchedulerKind::Lcm),
        })
    }
}

/// diffusers' `set_timesteps` without custom timesteps, at strength 1: descending training timesteps.
fn lcm_timesteps(config: &SchedulerConfig, steps: usize) -> Result<Vec<usize>, SchedulerError> {
    let train_steps = config.num_train_timesteps;
    let original_steps = config
        .original_inference_steps
        .unwrap_or(DEFAULT_ORIGINAL_INFERENCE_STEPS);
    if original_steps == 0 || original_steps > train_steps {
        return Err(unsupported(format!(
            "LCM's `original_inference_steps` must be between 1 and `num_train_timesteps` ({train_steps}). Given: \
             {original_steps}"
        )));
    }
    if steps > original_steps {
        return Err(unsupported(format!(
            "LCM takes at most `original_inference_steps` ({original_steps}) steps, as its timesteps are a subset \
             of that schedule. Given: {steps} steps"
        )));
    }
    let stride = train_steps / original_steps;
    // The distillation schedule, descending: original_steps·k - 1, …, 2k - 1, k - 1.
    let distilled = |index: usize| (original_steps - index) * stride - 1;
    Ok(np_linspace_without_endpoint(0.0, original_steps as f64, steps)
        .into_iter()
        .map(|index| distilled(index.floor() as usize))
        .collect())
}

/// The consistency model's boundary condition at `timestep`: `c_skip` weighs the sample, `c_out` the predicted
/// clean sample, so that the estimate is the sample itself at timestep 0.
fn boundary_scalings(timestep: usize, timestep_scaling: f32) -> (f32, f32) {
    let scaled = timestep as f32 * timestep_scaling;
    let denominator = scaled * scaled + SIGMA_DATA_SQUARED;
    (SIGMA_DATA_SQUARED / denominator, scaled / denominator.sqrt())
}

impl SchedulerImpl for Lcm {
    const KIND: SchedulerKind = SchedulerKind::Lcm;

    fn schedule(&self) -> Schedule<'_> {
        Schedule::unscaled(&self.timesteps)
    }

    fn needs_noise(&self) -> bool {
        self.timesteps.len() > 1
    }

    fn needs_noise_at(&self, step_index: usize) -> bool {
        step_index + 1 < self.timesteps.len()
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        let coefficients = &self.steps[step_index];
        (coefficients.sqrt_alpha, coefficients.sqrt_beta)
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let coefficients = &self.steps[step.index];
        for (index, (value, &model)) in sample.iter_mut().zip(step.model_output).enumerate() {
            let x_t = *value;
            let (mut pred_original, _) = predict_original_and_noise(
                self.prediction_type,
                coefficients.sqrt_alpha,
                coefficients.sqrt_beta,
                x_t,
                model,
            );
            if let Some(range) = self.clip_sample_range {
                pred_original = pred_original.clamp(-range, range);
            }
            let denoised = coefficients.c_out * pred_original + coefficients.c_skip * x_t;
            *value = match step.noise {
                Some(noise) => coefficients.sqrt_alpha_next * denoised + coefficients.sqrt_beta_next * noise[index],
                None => denoised,
            };
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::scheduler::{build, Scheduler, SchedulerOptions};

    fn lcm(json: &str, steps: usize) -> Result<Box<dyn Scheduler>, SchedulerError> {
        let config = SchedulerConfig::from_json_str(json).unwrap();
        build(SchedulerKind::Lcm, &config, steps, &SchedulerOptions::default())
    }

    #[test]
    fn timesteps_are_a_subset_of_the_distillation_schedule() {
        // diffusers 0.39 `LCMScheduler().set_timesteps(n)`, and with `original_inference_steps=20`.
        assert_eq!(lcm("{}", 4).unwrap().timesteps(), [999.0, 759.0, 499.0, 259.0]);
        assert_eq!(
            lcm("{}", 8).unwrap().timesteps(),
            [999.0, 879.0, 759.0, 639.0, 499.0, 379.0, 259.0, 139.0]
        );
        assert_eq!(lcm("{}", 1).unwrap().timesteps(), [999.0]);
        let twenty = r#"{"original_inference_steps": 20}"#;
        assert_eq!(lcm(twenty, 3).unwrap().timesteps(), [999.0, 699.0, 349.0]);
        // The spacing options of the other kinds change nothing.
        let spaced = r#"{"timestep_spacing": "trailing", "steps_offset": 1}"#;
        assert_eq!(lcm(spaced, 4).unwrap().timesteps(), [999.0, 759.0, 499.0, 259.0]);
    }

    #[test]
    fn noise_is_needed_at_every_step_but_the_last() {
        let scheduler = lcm("{}", 4).unwrap();
        assert!(scheduler.needs_noise());
        let needs: Vec<bool> = (0..4).map(|index| scheduler.needs_noise_at(index)).collect();
        assert_eq!(needs, [true, true, true, false]);
        let single = lcm("{}", 1).unwrap();
        assert!(!single.needs_noise() && !single.needs_noise_at(0));
    }

    #[test]
    fn the_last_step_returns_the_clean_estimate() {
        // `sample` prediction: the estimate is c_out·model + c_skip·sample, with no noise added.
        let mut scheduler = lcm(r#"{"prediction_type": "sample"}"#, 2).unwrap();
        let (c_skip, c_out) = boundary_scalings(499, 10.0);
        let mut sample = vec![2.0; 3];
        scheduler.step(&[0.5; 3], 1, &mut sample, None).unwrap();
        assert_eq!(sample, vec![c_out * 0.5 + c_skip * 2.0; 3]);
        // An earlier step without noise is refused.
        let err = scheduler.step(&[0.5; 3], 0, &mut sample, None).unwrap_err();
        assert!(matches!(err, SchedulerError::MissingNoise), "{err}");
    }

    #[test]
    fn boundary_scalings_vanish_at_timestep_zero() {
        assert_eq!(boundary_scalings(0, 10.0), (1.0, 0.0));
        let (c_skip, c_out) = boundary_scalings(999, 10.0);
        assert!(c_skip < 1e-8 && (c_out - 1.0).abs() < 1e-6);
    }

    #[test]
    fn schedules_it_cannot_build_are_refused_naming_the_field() {
        for (json, steps, expected) in [
            ("{}", 51, "`original_inference_steps` (50)"),
            (
                r#"{"original_inference_steps": 8}"#,
                10,
                "`original_inference_steps` (8)",
            ),
            (
                r#"{"original_inference_steps": 0}"#,
                1,
                "`original_inference_steps` must be between 1",
            ),
            (r#"{"original_inference_steps": 2000}"#, 4, "Given: 2000"),
            (r#"{"thresholding": true}"#, 4, "thresholding"),
        ] {
            let err = lcm(json, steps).err().unwrap();
            assert!(matches!(err, SchedulerError::Unsupported(_)), "{json}: {err}");
            assert!(err.to_string().contains(expected), "{json}: {err}");
        }
    }
}
