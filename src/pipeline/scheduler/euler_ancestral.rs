//! Ancestral Euler sampling (k-diffusion's `sample_euler_ancestral`), as diffusers'
//! `EulerAncestralDiscreteScheduler`: each step goes below the target sigma deterministically, then
//! adds fresh noise back up to it.

use super::config::{training_sigmas, unsupported};
use super::euler::{discrete_timesteps, Derivative, SigmaTable};
use super::numerics::np_interp;
use super::{PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs};

pub(crate) struct EulerAncestral {
    /// Ends at zero.
    table: SigmaTable,
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
        let sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| np_interp(f64::from(t), &training_sigmas) as f32)
            .collect();
        Ok(Self {
            table: SigmaTable::new(timesteps, sigmas, 0.0, spacing),
            prediction_type: config.prediction_type,
        })
    }
}

impl SchedulerImpl for EulerAncestral {
    const KIND: SchedulerKind = SchedulerKind::EulerAncestral;

    fn schedule(&self) -> Schedule<'_> {
        self.table.schedule()
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        (1.0, self.table.sigmas_at(step_index).0)
    }

    fn needs_noise(&self) -> bool {
        true
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let noise = step.noise.ok_or(SchedulerError::MissingNoise)?;
        let (sigma_from, sigma_to) = self.table.sigmas_at(step.index);
        // Split the move to sigma_to into a deterministic part down to sigma_down and fresh noise of
        // scale sigma_up, with sigma_down² + sigma_up² = sigma_to².
        let (from_squared, to_squared) = (sigma_from * sigma_from, sigma_to * sigma_to);
        let sigma_up = (to_squared * (from_squared - to_squared) / from_squared).sqrt();
        let sigma_down = (to_squared - sigma_up * sigma_up).sqrt();
        let dt = sigma_down - sigma_from;
        let derivative = Derivative::new(self.prediction_type, sigma_from);
        for ((value, &model), &noise) in sample.iter_mut().zip(step.model_output).zip(noise) {
            let x_t = *value;
            *value = x_t + derivative.at(x_t, model) * dt + noise * sigma_up;
        }
        Ok(())
    }
}
