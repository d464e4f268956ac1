//! Pseudo numerical methods for diffusion models (Liu et al., 2022), as diffusers' `PNDMScheduler`:
//! a Runge-Kutta warm-up (skipped by Stable Diffusion's configs) followed by linear multistep
//! (PLMS) steps that reuse the last four model outputs.

use super::config::{check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, unsupported};
use super::ddim::AlphaTable;
use super::{
    PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs, TimestepSpacing,
};

/// The Runge-Kutta warm-up: three 4-stage steps.
const PRK_STEPS: usize = 12;

pub(crate) struct Pndm {
    timesteps: Vec<f32>,
    train_timesteps: Vec<i64>,
    /// 0 with `skip_prk_steps`, else `PRK_STEPS`.
    prk_steps: usize,
    alphas: AlphaTable,
    /// diffusers steps back by `train_steps // steps` whatever the spacing.
    step_stride: i64,
    v_prediction: bool,
    /// Raw model outputs of the latest multistep points, oldest first, at most four.
    ets: Vec<Vec<f32>>,
    /// The sample a Runge-Kutta step (or PLMS's first, two-evaluation step) starts from.
    cur_sample: Option<Vec<f32>>,
    /// The Runge-Kutta weighted sum of the model outputs so far.
    rk_sum: Option<Vec<f32>>,
    next_step: usize,
    /// The step the schedule starts at (img2img): diffusers counts PNDM's steps from there.
    begin: usize,
}

impl Pndm {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let v_prediction = match config.prediction_type {
            PredictionType::Epsilon => false,
            PredictionType::VPrediction => true,
            PredictionType::Sample => {
                return Err(unsupported(
                    "PNDM with `prediction_type` `sample`; use epsilon or v_prediction",
                ))
            }
        };
        let train_steps = config.num_train_timesteps;
        let ascending: Vec<i64> = match config.timestep_spacing_for(SchedulerKind::Pndm) {
            TimestepSpacing::Linspace => linspace_timesteps((train_steps - 1) as f64, steps)
                .into_iter()
                .map(|t| t.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => leading_timesteps(train_steps, steps, config.steps_offset)
                .into_iter()
                .rev()
                .collect(),
            TimestepSpacing::Trailing => trailing_timesteps(train_steps, train_steps, steps)
                .into_iter()
                .rev()
                .collect(),
        };
        check_timesteps_in_range(&ascending, train_steps)?;
        let step_stride = (train_steps / steps) as i64;
        let (train_timesteps, prk_steps) = if config.skip_prk_steps {
            (plms_timesteps(&ascending), 0)
        } else {
            (prk_then_plms_timesteps(&ascending, step_stride / 2)?, PRK_STEPS)
        };
        Ok(Self {
            timesteps: train_timesteps.iter().map(|&t| t as f32).collect(),
            train_timesteps,
            prk_steps,
            alphas: AlphaTable::new(config, SchedulerKind::Pndm),
            step_stride,
            v_prediction,
            ets: Vec::with_capacity(4),
            cur_sample: None,
            rk_sum: None,
            next_step: 0,
            begin: 0,
        })
    }

    /// One Runge-Kutta stage. Stages start from the sample saved at stage 0; their model outputs
    /// are weighted 1/6, 1/3, 1/3, 1/6, and the last stage uses the weighted sum.
    fn step_prk(&mut self, step: StepArgs<'_>, timestep: i64, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let (counter, model_output) = (step.index - self.begin, step.model_output);
        let half_stride = if counter % 2 == 1 { 0 } else { self.step_stride / 2 };
        let prev_timestep = timestep - half_stride;
        let transfer = self.transfer(self.train_timesteps[counter / 4 * 4], prev_timestep)?;
        let stage_output: Vec<f32> = match counter % 4 {
            0 => {
                self.rk_sum = Some(model_output.iter().map(|&model| 1.0 / 6.0 * model).collect());
                self.ets.push(model_output.to_vec());
                self.cur_sample = Some(sample.to_vec());
                model_output.to_vec()
            }
            1 | 2 => {
                let rk_sum = self.rk_sum.as_mut().expect("stage 0 starts the sum");
                for (sum, &model) in rk_sum.iter_mut().zip(model_output) {
                    *sum += 1.0 / 3.0 * model;
                }
                model_output.to_vec()
            }
            _ => {
                let rk_sum = self.rk_sum.take().expect("stage 0 starts the sum");
                rk_sum
                    .iter()
                    .zip(model_output)
                    .map(|(&sum, &model)| sum + 1.0 / 6.0 * model)
                    .collect()
            }
        };
        let start = self.cur_sample.as_deref().expect("stage 0 saves the sample");
        for ((value, &start), &model) in sample.iter_mut().zip(start).zip(&stage_output) {
            *value = transfer.apply(start, model);
        }
        Ok(())
    }

    /// One linear multistep step (Adams-Bashforth of up to fourth order on the model outputs).
    /// Without a Runge-Kutta warm-up, the first step is taken twice: once with the first output
    /// alone, then again from the same sample with the average of the first two.
    fn step_plms(&mut self, step: StepArgs<'_>, timestep: i64, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let (counter, model_output) = (step.index - self.begin, step.model_output);
        let redo_first = counter == 1 && self.ets.len() == 1;
        let (timestep, prev_timestep) = if redo_first {
            (timestep + self.step_stride, timestep)
        } else {
            (timestep, timestep - self.step_stride)
        };
        if !redo_first {
            if self.ets.len() == 4 {
                self.ets.remove(0);
            }
            self.ets.push(model_output.to_vec());
        }
        let transfer = self.transfer(timestep, prev_timestep)?;
        let start = if redo_first { self.cur_sample.take() } else { None };
        if counter == 0 && self.ets.len() == 1 {
            self.cur_sample = Some(sample.to_vec());
        }
        let ets = &self.ets;
        for (index, value) in sample.iter_mut().enumerate() {
            let e = |back: usize| ets[ets.len() - back][index];
            let combined = match ets.len() {
                _ if redo_first => (model_output[index] + e(1)) / 2.0,
                1 => e(1),
                2 => (3.0 * e(1) - e(2)) / 2.0,
                3 => (23.0 * e(1) - 16.0 * e(2) + 5.0 * e(3)) / 12.0,
                _ => 1.0 / 24.0 * (55.0 * e(1) - 59.0 * e(2) + 37.0 * e(3) - 9.0 * e(4)),
            };
            let x_t = start.as_ref().map_or(*value, |start| start[index]);
            *value = transfer.apply(x_t, combined);
        }
        Ok(())
    }

    /// The update from `timestep` to `prev_timestep` (eq. 9 of the PNDM paper).
    fn transfer(&self, timestep: i64, prev_timestep: i64) -> Result<Transfer, SchedulerError> {
        let alpha_prod_t = self
            .alphas
            .at(timestep)
            .ok_or_else(|| unsupported(format!("PNDM reached timestep {timestep}, outside the training range")))?;
        let alpha_prod_t_prev = self.alphas.at_prev(prev_timestep);
        let beta_prod_t = 1.0 - alpha_prod_t;
        let beta_prod_t_prev = 1.0 - alpha_prod_t_prev;
        Ok(Transfer {
            v_scales: self.v_prediction.then(|| (alpha_prod_t.sqrt(), beta_prod_t.sqrt())),
            sample_coeff: (alpha_prod_t_prev / alpha_prod_t).sqrt(),
            alpha_gap: alpha_prod_t_prev - alpha_prod_t,
            model_output_denom: alpha_prod_t * beta_prod_t_prev.sqrt()
                + (alpha_prod_t * beta_prod_t * alpha_prod_t_prev).sqrt(),
        })
    }
}

impl SchedulerImpl for Pndm {
    const KIND: SchedulerKind = SchedulerKind::Pndm;

    fn schedule(&self) -> Schedule<'_> {
        Schedule::unscaled(&self.timesteps)
    }

    fn expected_step(&self) -> Option<usize> {
        Some(self.next_step)
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        self.alphas.noise_scales(self.train_timesteps[step_index])
    }

    fn set_begin(&mut self, step_index: usize) {
        self.begin = step_index;
        self.next_step = step_index;
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let timestep = self.train_timesteps[step.index];
        if step.index - self.begin < self.prk_steps {
            self.step_prk(step, timestep, sample)?;
        } else {
            self.step_plms(step, timestep, sample)?;
        }
        self.next_step += 1;
        Ok(())
    }
}

struct Transfer {
    /// `(√ᾱ_t, √(1 - ᾱ_t))` to turn a v-prediction into a noise prediction.
    v_scales: Option<(f32, f32)>,
    sample_coeff: f32,
    alpha_gap: f32,
    model_output_denom: f32,
}

impl Transfer {
    fn apply(&self, x_t: f32, model: f32) -> f32 {
        let epsilon = match self.v_scales {
            Some((sqrt_alpha, sqrt_beta)) => sqrt_alpha * model + sqrt_beta * x_t,
            None => model,
        };
        self.sample_coeff * x_t - self.alpha_gap * epsilon / self.model_output_denom
    }
}

/// PLMS only: descending, with the second timestep repeated for the two-evaluation first step.
fn plms_timesteps(ascending: &[i64]) -> Vec<i64> {
    let count = ascending.len();
    let mut timesteps = ascending[..count - 1].to_vec();
    if count >= 2 {
        timesteps.push(ascending[count - 2]);
    }
    timesteps.push(ascending[count - 1]);
    timesteps.reverse();
    timesteps
}

/// The Runge-Kutta warm-up over the four noisiest timesteps (each with a half-step midpoint), then
/// PLMS over the rest.
fn prk_then_plms_timesteps(ascending: &[i64], half_stride: i64) -> Result<Vec<i64>, SchedulerError> {
    let count = ascending.len();
    if count < 4 {
        return Err(unsupported(format!(
            "PNDM's Runge-Kutta warm-up needs at least 4 steps. Given: {count}; set `skip_prk_steps` or use more steps"
        )));
    }
    let [a0, a1, a2, a3] = [
        ascending[count - 4],
        ascending[count - 3],
        ascending[count - 2],
        ascending[count - 1],
    ];
    let mut timesteps = vec![
        a3,
        a2 + half_stride,
        a2 + half_stride,
        a2,
        a2,
        a1 + half_stride,
        a1 + half_stride,
    ];
    timesteps.extend([a1, a1, a0 + half_stride, a0 + half_stride, a0]);
    timesteps.extend(ascending[..count - 3].iter().rev());
    Ok(timesteps)
}
