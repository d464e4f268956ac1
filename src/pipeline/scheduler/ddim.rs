//! DDIM (Song et al., 2020), as diffusers' `DDIMScheduler`.

use super::config::{check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, unsupported};
use super::{
    PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs, TimestepSpacing,
};

pub(crate) struct Ddim {
    timesteps: Vec<f32>,
    train_timesteps: Vec<i64>,
    alphas: AlphaTable,
    /// diffusers steps back by `train_steps // steps` whatever the spacing.
    step_stride: i64,
    prediction_type: PredictionType,
    clip_sample_range: Option<f32>,
    eta: f32,
}

impl Ddim {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize, eta: f32) -> Result<Self, SchedulerError> {
        if !eta.is_finite() || eta < 0.0 {
            return Err(unsupported(format!(
                "DDIM `eta` must be a finite number >= 0. Given: {eta}"
            )));
        }
        let train_steps = config.num_train_timesteps;
        let train_timesteps: Vec<i64> = match config.timestep_spacing_for(SchedulerKind::Ddim) {
            TimestepSpacing::Leading => leading_timesteps(train_steps, steps, config.steps_offset),
            TimestepSpacing::Trailing => trailing_timesteps(train_steps, train_steps, steps),
            TimestepSpacing::Linspace => linspace_timesteps((train_steps - 1) as f64, steps)
                .into_iter()
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect(),
        };
        check_timesteps_in_range(&train_timesteps, train_steps)?;
        Ok(Self {
            timesteps: train_timesteps.iter().map(|&t| t as f32).collect(),
            train_timesteps,
            alphas: AlphaTable::new(config, SchedulerKind::Ddim),
            step_stride: (train_steps / steps) as i64,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample_range_for(SchedulerKind::Ddim),
            eta,
        })
    }
}

impl SchedulerImpl for Ddim {
    const KIND: SchedulerKind = SchedulerKind::Ddim;

    fn schedule(&self) -> Schedule<'_> {
        Schedule::unscaled(&self.timesteps)
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        self.alphas.noise_scales(self.train_timesteps[step_index])
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let timestep = self.train_timesteps[step.index];
        let alpha_prod_t = self.alphas.at(timestep).expect("timesteps are checked when built");
        let alpha_prod_t_prev = self.alphas.at_prev(timestep - self.step_stride);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let (sqrt_alpha_t, sqrt_beta_t) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());

        // σ_t of eq. (16) in the DDIM paper, scaled by eta.
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let sqrt_alpha_prev = alpha_prod_t_prev.sqrt();

        for (index, (value, &model)) in sample.iter_mut().zip(step.model_output).enumerate() {
            let x_t = *value;
            let (mut pred_original, pred_epsilon) =
                predict_original_and_noise(self.prediction_type, sqrt_alpha_t, sqrt_beta_t, x_t, model);
            if let Some(range) = self.clip_sample_range {
                pred_original = pred_original.clamp(-range, range);
            }
            let mut prev = sqrt_alpha_prev * pred_original + direction_coeff * pred_epsilon;
            if let Some(noise) = step.noise {
                prev += std_dev_t * noise[index];
            }
            *value = prev;
        }
        Ok(())
    }
}

/// The clean sample x₀ and the noise ε that `model` predicts for `x_t`, where `x_t = √ᾱ·x₀ + √(1-ᾱ)·ε`, given
/// `√ᾱ` and `√(1-ᾱ)`: the arithmetic of diffusers' DDIM and LCM, operation for operation.
#[inline]
pub(crate) fn predict_original_and_noise(
    prediction_type: PredictionType,
    sqrt_alpha: f32,
    sqrt_beta: f32,
    x_t: f32,
    model: f32,
) -> (f32, f32) {
    match prediction_type {
        PredictionType::Epsilon => ((x_t - sqrt_beta * model) / sqrt_alpha, model),
        PredictionType::Sample => (model, (x_t - sqrt_alpha * model) / sqrt_beta),
        PredictionType::VPrediction => (
            sqrt_alpha * x_t - sqrt_beta * model,
            sqrt_alpha * model + sqrt_beta * x_t,
        ),
    }
}

/// The ᾱ table that DDIM and PNDM step through, with what a step that lands before timestep 0
/// sees instead.
pub(crate) struct AlphaTable {
    alphas_cumprod: Vec<f32>,
    /// 1 with `set_alpha_to_one`, else ᾱ_0.
    final_alpha_cumprod: f32,
}

impl AlphaTable {
    pub(crate) fn new(config: &SchedulerConfig, kind: SchedulerKind) -> Self {
        let alphas_cumprod = config.alphas_cumprod(kind);
        let final_alpha_cumprod = if config.set_alpha_to_one_for(kind) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Self {
            alphas_cumprod,
            final_alpha_cumprod,
        }
    }

    /// ᾱ at a training timestep; `None` outside the table.
    pub(crate) fn at(&self, timestep: i64) -> Option<f32> {
        usize::try_from(timestep)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t).copied())
    }

    /// `(√ᾱ_t, √(1 − ᾱ_t))`, float32 as diffusers' `add_noise` computes them from its table.
    pub(crate) fn noise_scales(&self, timestep: i64) -> (f32, f32) {
        let alpha = self.at(timestep).unwrap_or(1.0);
        (alpha.sqrt(), (1.0 - alpha).sqrt())
    }

    /// ᾱ at the timestep a step lands on, `final_alpha_cumprod` once that falls below 0.
    pub(crate) fn at_prev(&self, prev_timestep: i64) -> f32 {
        match usize::try_from(prev_timestep) {
            Ok(prev) => self.alphas_cumprod[prev],
            Err(_) => self.final_alpha_cumprod,
        }
    }
}
