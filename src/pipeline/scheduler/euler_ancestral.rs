//! Ancestral Euler sampling (k-diffusion's `sample_euler_ancestral`), as diffusers'
//! `EulerAncestralDiscreteScheduler`: each step goes below the target sigma deterministically, then
//! adds fresh noise back up to it.

use super::config::{training_sigmas, unsupported};
use super::euler::{discrete_timesteps, init_noise_sigma, scale_by_sigma, VScale};
use super::numerics::np_interp;
use super::{check_step, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind};

pub(crate) struct EulerAncestral {
    timesteps: Vec<f32>,
    /// One more than the timesteps, ending at zero.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction_type: PredictionType,
}

impl EulerAncestral {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        if config.prediction_type == PredictionType::Sample {
            return Err(unsupported(
                "Euler ancestral with `prediction_type` `sample` (diffusers does not implement it either)",
            ));
        }
        let spacing = config.timestep_spacing_for(SchedulerKind::EulerAncestral);
        let timesteps = discrete_timesteps(config, spacing, steps)?;
        let training_sigmas = training_sigmas(&config.alphas_cumprod(SchedulerKind::EulerAncestral));
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp(f64::from(t), &training_sigmas) as f32)
            .collect();
        sigmas.push(0.0);
        Ok(Self {
            timesteps,
            init_noise_sigma: init_noise_sigma(&sigmas, spacing),
            sigmas,
            prediction_type: config.prediction_type,
        })
    }
}

impl Scheduler for EulerAncestral {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::EulerAncestral
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], step_index: usize) {
        scale_by_sigma(sample, self.sigmas[..self.timesteps.len()][step_index]);
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError> {
        let noise = check_step(step_index, self.timesteps.len(), sample, model_output, noise, true)?
            .ok_or(SchedulerError::MissingNoise)?;
        let sigma_from = self.sigmas[step_index];
        let sigma_to = self.sigmas[step_index + 1];
        // Split the move to sigma_to into a deterministic part down to sigma_down and fresh noise of
        // scale sigma_up, with sigma_down² + sigma_up² = sigma_to².
        let (from_squared, to_squared) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to_squared * (from_squared - to_squared) / from_squared).sqrt();
        let sigma_down = (to_squared - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        let v_scale = VScale::new(sigma_from);
        for ((value, &model), &noise) in sample.iter_mut().zip(model_output).zip(noise) {
            let x_t = *value;
            let pred_original = match self.prediction_type {
                PredictionType::VPrediction => v_scale.pred_original(x_t, model),
                // `Sample` is refused in `new`.
                PredictionType::Epsilon | PredictionType::Sample => x_t - sigma_from * model,
            };
            let derivative = (x_t - pred_original) / sigma_from;
            *value = x_t + derivative * dt + noise * sigma_up;
        }
        Ok(())
    }
}
