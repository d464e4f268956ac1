//! Euler's method on the probability-flow ODE (Karras et al., 2022, Algorithm 2 without churn), as
//! diffusers' `EulerDiscreteScheduler`. The sigma table is shared with the ancestral variant.

use super::config::{
    check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, training_sigmas, unsupported,
};
use super::numerics::{np_interp, timesteps_for_sigmas};
use super::{
    PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs, TimestepSpacing,
};

pub(crate) struct Euler {
    table: SigmaTable,
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
        let sigmas: Vec<f32> = sigmas.into_iter().map(|sigma| sigma as f32).collect();
        if continuous {
            timesteps = sigmas.iter().map(|sigma| 0.25 * sigma.ln()).collect();
        }
        let final_sigma = if final_sigma_is_min { training_sigmas[0] } else { 0.0 };
        Ok(Self {
            table: SigmaTable::new(timesteps, sigmas, final_sigma, spacing),
            prediction_type: config.prediction_type,
        })
    }
}

impl SchedulerImpl for Euler {
    const KIND: SchedulerKind = SchedulerKind::Euler;

    fn schedule(&self) -> Schedule<'_> {
        self.table.schedule()
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        (1.0, self.table.sigmas_at(step_index).0)
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let (sigma, sigma_next) = self.table.sigmas_at(step.index);
        let dt = sigma_next - sigma;
        let derivative = Derivative::new(self.prediction_type, sigma);
        for (value, &model) in sample.iter_mut().zip(step.model_output) {
            let x_t = *value;
            *value = x_t + derivative.at(x_t, model) * dt;
        }
        Ok(())
    }
}

/// The table both Euler variants step along: the timesteps, the sigma at each, and the sigma the
/// last step lands on. The UNet input at a step is scaled by that step's sigma.
pub(crate) struct SigmaTable {
    timesteps: Vec<f32>,
    /// One more than the timesteps.
    sigmas: Vec<f32>,
    init_noise_sigma: f32,
}

impl SigmaTable {
    /// `sigmas` holds the sigma of each of `timesteps`; `final_sigma` is where the last step lands.
    pub(crate) fn new(timesteps: Vec<f32>, mut sigmas: Vec<f32>, final_sigma: f32, spacing: TimestepSpacing) -> Self {
        sigmas.push(final_sigma);
        let max_sigma = sigmas.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        // With `leading` spacing the first timestep is not the noisiest, so diffusers scales the
        // initial noise as a model input would be scaled.
        let init_noise_sigma = match spacing {
            TimestepSpacing::Linspace | TimestepSpacing::Trailing => max_sigma,
            TimestepSpacing::Leading => (max_sigma * max_sigma + 1.0).sqrt(),
        };
        Self {
            timesteps,
            sigmas,
            init_noise_sigma,
        }
    }

    pub(crate) fn schedule(&self) -> Schedule<'_> {
        Schedule {
            timesteps: &self.timesteps,
            init_noise_sigma: self.init_noise_sigma,
            input_sigmas: Some(&self.sigmas[..self.timesteps.len()]),
        }
    }

    /// The sigma at step `index` and the one the step moves to.
    pub(crate) fn sigmas_at(&self, index: usize) -> (f32, f32) {
        (self.sigmas[index], self.sigmas[index + 1])
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

/// k-diffusion's `to_d` at one sigma: the slope `(x_t - x₀) / sigma` of the probability-flow ODE,
/// with the clean sample x₀ read from the model output according to the prediction type.
pub(crate) struct Derivative {
    sigma: f32,
    prediction_type: PredictionType,
    /// v-prediction's `x₀ = x_t / (sigma² + 1) - v · sigma / sqrt(sigma² + 1)`.
    v_model_coeff: f32,
    v_variance: f32,
}

impl Derivative {
    pub(crate) fn new(prediction_type: PredictionType, sigma: f32) -> Self {
        let v_variance = sigma * sigma + 1.0;
        Self {
            sigma,
            prediction_type,
            v_model_coeff: -sigma / v_variance.sqrt(),
            v_variance,
        }
    }

    pub(crate) fn at(&self, x_t: f32, model: f32) -> f32 {
        let pred_original = match self.prediction_type {
            PredictionType::Epsilon => x_t - self.sigma * model,
            PredictionType::Sample => model,
            PredictionType::VPrediction => model * self.v_model_coeff + x_t / self.v_variance,
        };
        (x_t - pred_original) / self.sigma
    }
}
