//! Euler's method on the probability-flow ODE (Karras et al., 2022, Algorithm 2 without churn), as
//! diffusers' `EulerDiscreteScheduler`. The sigma table is shared with the ancestral variant.

use super::config::{
    check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, training_sigmas, unsupported,
};
use super::numerics::{np_interp, timesteps_for_sigmas};
use super::{check_step, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind, TimestepSpacing};

pub(crate) struct Euler {
    timesteps: Vec<f32>,
    /// One more than the timesteps: the last is where the final step lands.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
    prediction_type: PredictionType,
}

impl Euler {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let continuous = match config.timestep_type.as_str() {
            "discrete" => false,
            "continuous" => config.prediction_type == PredictionType::VPrediction,
            other => {
                return Err(unsupported(format!(
                    "`timestep_type` `{other}`; expected `discrete` or `continuous`"
                )))
            }
        };
        let sigma_spacing = config.sigma_spacing()?;
        let final_sigma_is_min = config.final_sigma_is_min()?;
        if config.interpolation_type != "linear" {
            return Err(unsupported(format!(
                "Euler `interpolation_type` `{}`; only `linear` is implemented",
                config.interpolation_type
            )));
        }

        let spacing = config.timestep_spacing_for(SchedulerKind::Euler);
        let timesteps = discrete_timesteps(config, spacing, steps)?;
        let training_sigmas = training_sigmas(&config.alphas_cumprod(SchedulerKind::Euler));
        let interpolated: Vec<f64> = timesteps
            .iter()
            .map(|&t| np_interp(f64::from(t), &training_sigmas))
            .collect();
        let (mut timesteps, sigmas) = match sigma_spacing {
            None => (timesteps, interpolated),
            Some(sigma_spacing) => {
                // The formula spans the interpolated range unless the config pins its ends.
                let sigma_min = config.sigma_min.unwrap_or(interpolated[interpolated.len() - 1]);
                let sigma_max = config.sigma_max.unwrap_or(interpolated[0]);
                let sigmas = sigma_spacing.sigmas(sigma_min, sigma_max, steps);
                let timesteps = timesteps_for_sigmas(&sigmas, &training_sigmas);
                (timesteps.into_iter().map(|t| t as f32).collect(), sigmas)
            }
        };
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|sigma| sigma as f32).collect();
        sigmas.push(if final_sigma_is_min { training_sigmas[0] } else { 0.0 });

        if continuous {
            timesteps = sigmas[..steps].iter().map(|sigma| 0.25 * sigma.ln()).collect();
        }
        Ok(Self {
            timesteps,
            init_noise_sigma: init_noise_sigma(&sigmas, spacing),
            sigmas,
            prediction_type: config.prediction_type,
        })
    }
}

impl Scheduler for Euler {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Euler
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
        false
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError> {
        check_step(step_index, self.timesteps.len(), sample, model_output, noise, false)?;
        let sigma = self.sigmas[step_index];
        let dt = self.sigmas[step_index + 1] - sigma;
        let v_scale = VScale::new(sigma);
        for (value, &model) in sample.iter_mut().zip(model_output) {
            let x_t = *value;
            let pred_original = match self.prediction_type {
                PredictionType::Epsilon => x_t - sigma * model,
                PredictionType::Sample => model,
                PredictionType::VPrediction => v_scale.pred_original(x_t, model),
            };
            let derivative = (x_t - pred_original) / sigma;
            *value = x_t + derivative * dt;
        }
        Ok(())
    }
}

/// The inference timesteps of diffusers' Euler schedulers: float32, and `linspace` ones unrounded.
pub(crate) fn discrete_timesteps(
    config: &SchedulerConfig,
    spacing: TimestepSpacing,
    steps: usize,
) -> Result<Vec<f32>, SchedulerError> {
    let train_steps = config.num_train_timesteps;
    let integral = match spacing {
        TimestepSpacing::Linspace => {
            return Ok(linspace_timesteps((train_steps - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|t| t as f32)
                .collect())
        }
        TimestepSpacing::Leading => leading_timesteps(train_steps, steps, config.steps_offset),
        TimestepSpacing::Trailing => trailing_timesteps(train_steps, train_steps, steps),
    };
    check_timesteps_in_range(&integral, train_steps)?;
    Ok(integral.into_iter().map(|t| t as f32).collect())
}

/// With `leading` spacing the first timestep is not the noisiest, so diffusers scales the initial
/// noise as a model input would be scaled.
pub(crate) fn init_noise_sigma(sigmas: &[f32], spacing: TimestepSpacing) -> f32 {
    let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    match spacing {
        TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
        TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
    }
}

/// Divides by `sqrt(sigma² + 1)`, so the UNet sees unit-variance input.
pub(crate) fn scale_by_sigma(sample: &mut [f32], sigma: f32) {
    let scale = (sigma * sigma + 1.0).sqrt();
    for value in sample {
        *value /= scale;
    }
}

/// The v-prediction reading of the model output at one sigma.
pub(crate) struct VScale {
    model_coeff: f32,
    variance: f32,
}

impl VScale {
    pub(crate) fn new(sigma: f32) -> Self {
        let variance = sigma * sigma + 1.0;
        Self {
            model_coeff: -sigma / variance.sqrt(),
            variance,
        }
    }

    pub(crate) fn pred_original(&self, x_t: f32, model: f32) -> f32 {
        model * self.model_coeff + x_t / self.variance
    }
}
