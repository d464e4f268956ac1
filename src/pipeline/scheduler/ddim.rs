//! DDIM (Song et al., 2020), as diffusers' `DDIMScheduler`.

use super::config::{check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, unsupported};
use super::{check_step, PredictionType, Scheduler, SchedulerConfig, SchedulerError, SchedulerKind, TimestepSpacing};

pub(crate) struct Ddim {
    timesteps: Vec<f32>,
    train_timesteps: Vec<i64>,
    alphas_cumprod: Vec<f32>,
    /// ᾱ used once the previous timestep falls below 0.
    final_alpha_cumprod: f32,
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
        let alphas_cumprod = config.alphas_cumprod(SchedulerKind::Ddim);
        let final_alpha_cumprod = if config.set_alpha_to_one_for(SchedulerKind::Ddim) {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            timesteps: train_timesteps.iter().map(|&t| t as f32).collect(),
            train_timesteps,
            alphas_cumprod,
            final_alpha_cumprod,
            step_stride: (train_steps / steps) as i64,
            prediction_type: config.prediction_type,
            clip_sample_range: config.clip_sample_range_for_ddim(),
            eta,
        })
    }
}

impl Scheduler for Ddim {
    fn kind(&self) -> SchedulerKind {
        SchedulerKind::Ddim
    }

    fn timesteps(&self) -> &[f32] {
        &self.timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        1.0
    }

    fn scale_model_input(&self, _sample: &mut [f32], step_index: usize) {
        assert!(
            step_index < self.timesteps.len(),
            "step {step_index} is past the last step"
        );
    }

    fn needs_noise(&self) -> bool {
        self.eta > 0.0
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError> {
        let noise = check_step(
            step_index,
            self.timesteps.len(),
            sample,
            model_output,
            noise,
            self.needs_noise(),
        )?;
        let timestep = self.train_timesteps[step_index];
        let prev_timestep = timestep - self.step_stride;
        let alpha_prod_t = self.alphas_cumprod[timestep as usize];
        let alpha_prod_t_prev = if prev_timestep >= 0 {
            self.alphas_cumprod[prev_timestep as usize]
        } else {
            self.final_alpha_cumprod
        };
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        let (sqrt_alpha_t, sqrt_beta_t) = (alpha_prod_t.sqrt(), beta_prod_t.sqrt());

        // σ_t of eq. (16) in the DDIM paper, scaled by eta.
        let variance = (beta_prod_t_prev / beta_prod_t) * (1.0 - alpha_prod_t / alpha_prod_t_prev);
        let std_dev_t = self.eta * variance.sqrt();
        let direction_coeff = (1.0 - alpha_prod_t_prev - std_dev_t * std_dev_t).sqrt();
        let sqrt_alpha_prev = alpha_prod_t_prev.sqrt();

        for (index, (value, &model)) in sample.iter_mut().zip(model_output).enumerate() {
            let x_t = *value;
            let (mut pred_original, pred_epsilon) = match self.prediction_type {
                PredictionType::Epsilon => ((x_t - sqrt_beta_t * model) / sqrt_alpha_t, model),
                PredictionType::Sample => (model, (x_t - sqrt_alpha_t * model) / sqrt_beta_t),
                PredictionType::VPrediction => (
                    sqrt_alpha_t * x_t - sqrt_beta_t * model,
                    sqrt_alpha_t * model + sqrt_beta_t * x_t,
                ),
            };
            if let Some(range) = self.clip_sample_range {
                pred_original = pred_original.clamp(-range, range);
            }
            let mut prev = sqrt_alpha_prev * pred_original + direction_coeff * pred_epsilon;
            if let Some(noise) = noise {
                prev += std_dev_t * noise[index];
            }
            *value = prev;
        }
        Ok(())
    }
}
