//! Multistep DPM-Solver and DPM-Solver++ (Lu et al., 2022), as diffusers'
//! `DPMSolverMultistepScheduler`. Each step solves the diffusion ODE (or SDE) exactly in its linear
//! part and extrapolates the model's prediction from up to three previous steps.

use super::config::{
    check_timesteps_in_range, leading_timesteps, linspace_timesteps, trailing_timesteps, training_sigmas, unsupported,
};
use super::numerics::{np_interp, timesteps_for_sigmas, SigmaSpacing};
use super::{
    BetaSchedule, PredictionType, Schedule, SchedulerConfig, SchedulerError, SchedulerImpl, SchedulerKind, StepArgs,
    TimestepSpacing,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Algorithm {
    /// Predicts the clean sample (DPM-Solver++); Stable Diffusion's usual choice.
    DataPrediction,
    /// Predicts the noise (the original DPM-Solver).
    NoisePrediction,
    DataPredictionSde,
    NoisePredictionSde,
}

impl Algorithm {
    fn parse(name: &str) -> Result<Self, SchedulerError> {
        match name {
            // diffusers reads DEIS configs as DPM-Solver++.
            "dpmsolver++" | "deis" => Ok(Algorithm::DataPrediction),
            "dpmsolver" => Ok(Algorithm::NoisePrediction),
            "sde-dpmsolver++" => Ok(Algorithm::DataPredictionSde),
            "sde-dpmsolver" => Ok(Algorithm::NoisePredictionSde),
            other => Err(unsupported(format!(
                "DPM-Solver `algorithm_type` `{other}`; expected dpmsolver++, sde-dpmsolver++, dpmsolver or sde-dpmsolver"
            ))),
        }
    }

    fn predicts_data(self) -> bool {
        matches!(self, Algorithm::DataPrediction | Algorithm::DataPredictionSde)
    }

    fn is_sde(self) -> bool {
        matches!(self, Algorithm::DataPredictionSde | Algorithm::NoisePredictionSde)
    }
}

/// How the second-order term is approximated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SolverType {
    Midpoint,
    Heun,
}

impl SolverType {
    fn parse(name: &str) -> Result<Self, SchedulerError> {
        match name {
            // diffusers reads UniPC's and DEIS's solver types as midpoint.
            "midpoint" | "logrho" | "bh1" | "bh2" => Ok(SolverType::Midpoint),
            "heun" => Ok(SolverType::Heun),
            other => Err(unsupported(format!(
                "DPM-Solver `solver_type` `{other}`; expected midpoint or heun"
            ))),
        }
    }
}

pub(crate) struct DpmSolverMultistep {
    timesteps: Vec<f32>,
    /// One more than the timesteps: the last is where the final step lands.
    sigmas: Vec<f32>,
    algorithm: Algorithm,
    solver_type: SolverType,
    solver_order: usize,
    prediction_type: PredictionType,
    /// Drop to lower orders for the final steps of short schedules, for stability.
    lower_order_final: bool,
    euler_at_final: bool,
    final_sigma_is_zero: bool,
    /// Converted model outputs of the latest steps, oldest first, at most `solver_order`.
    history: Vec<Vec<f32>>,
    /// How many steps have run, capped at `solver_order`: the order the history allows.
    warm_steps: usize,
    next_step: usize,
}

impl DpmSolverMultistep {
    pub(crate) fn new(config: &SchedulerConfig, steps: usize) -> Result<Self, SchedulerError> {
        let algorithm = Algorithm::parse(&config.algorithm_type)?;
        let solver_type = SolverType::parse(&config.solver_type)?;
        check_dpm_config(config, algorithm)?;
        let final_sigma_is_min = config.final_sigma_is_min()?;
        if !final_sigma_is_min && !algorithm.predicts_data() {
            return Err(unsupported(format!(
                "`final_sigmas_type` `zero` with `algorithm_type` `{}`; use `sigma_min`",
                config.algorithm_type
            )));
        }
        let alphas_cumprod = config.alphas_cumprod(SchedulerKind::DpmSolverMultistep);
        let training_sigmas = training_sigmas(&alphas_cumprod);
        let mut timesteps = dpm_timesteps(config, &alphas_cumprod, steps)?;
        let mut sigmas: Vec<f32> = match config.sigma_spacing()? {
            None => timesteps
                .iter()
                .map(|&t| np_interp(t as f64, &training_sigmas) as f32)
                .collect(),
            Some(spacing) => {
                // Unlike Euler, the formula spans the whole training range.
                let sigma_min = config.sigma_min.unwrap_or(f64::from(training_sigmas[0]));
                let sigma_max = config
                    .sigma_max
                    .unwrap_or(f64::from(training_sigmas[training_sigmas.len() - 1]));
                let sigmas = spacing.sigmas(sigma_min, sigma_max, steps);
                // Karras timesteps are rounded to the nearest integer, except for the cosine schedule
                // (whose UNets take continuous time); all are then truncated to integers.
                let round = spacing == SigmaSpacing::Karras
                    && config.beta_schedule_for(SchedulerKind::DpmSolverMultistep) != BetaSchedule::SquaredcosCapV2;
                timesteps = timesteps_for_sigmas(&sigmas, &training_sigmas)
                    .into_iter()
                    .map(|t| (if round { t.round_ties_even() } else { t }) as i64)
                    .collect();
                sigmas.into_iter().map(|sigma| sigma as f32).collect()
            }
        };
        sigmas.push(if final_sigma_is_min { training_sigmas[0] } else { 0.0 });
        Ok(Self {
            timesteps: timesteps.iter().map(|&t| t as f32).collect(),
            sigmas,
            algorithm,
            solver_type,
            solver_order: config.solver_order,
            prediction_type: config.prediction_type,
            lower_order_final: config.lower_order_final,
            euler_at_final: config.euler_at_final,
            final_sigma_is_zero: !final_sigma_is_min,
            history: Vec::with_capacity(config.solver_order),
            warm_steps: 0,
            next_step: 0,
        })
    }

    /// The order diffusers uses at `step_index`: limited by the history, and lowered at the end.
    fn order_at(&self, step_index: usize) -> usize {
        let steps = self.timesteps.len();
        let short_schedule = self.lower_order_final && steps < 15;
        let lower_order_final =
            step_index == steps - 1 && (self.euler_at_final || short_schedule || self.final_sigma_is_zero);
        let lower_order_second = step_index + 2 == steps && short_schedule;
        if self.solver_order == 1 || self.warm_steps < 1 || lower_order_final {
            1
        } else if self.solver_order == 2 || self.warm_steps < 2 || lower_order_second {
            2
        } else {
            3
        }
    }

    /// The model output as the algorithm's prediction: the clean sample for DPM-Solver++, the noise
    /// for DPM-Solver.
    fn convert_model_output(&self, model_output: &[f32], sample: &[f32], sigma: f32) -> Vec<f32> {
        let (alpha_t, sigma_t) = alpha_sigma(sigma);
        let convert = |model: f32, x_t: f32| match (self.algorithm.predicts_data(), self.prediction_type) {
            (true, PredictionType::Epsilon) => (x_t - sigma_t * model) / alpha_t,
            (true, PredictionType::Sample) | (false, PredictionType::Epsilon) => model,
            (true, PredictionType::VPrediction) => alpha_t * x_t - sigma_t * model,
            (false, PredictionType::Sample) => (x_t - alpha_t * model) / sigma_t,
            (false, PredictionType::VPrediction) => alpha_t * model + sigma_t * x_t,
        };
        model_output
            .iter()
            .zip(sample)
            .map(|(&model, &x_t)| convert(model, x_t))
            .collect()
    }

    /// The coefficients of one update, `x = sample·x_t + d0·D0 + d1·D1 + d2·D2 + noise·z`, from the
    /// sigmas of the target and of the last `order` steps.
    fn coefficients(&self, step_index: usize, order: usize) -> Coefficients {
        let (alpha_t, sigma_t) = alpha_sigma(self.sigmas[step_index + 1]);
        let lambda = |sigma: f32| {
            let (alpha, sigma) = alpha_sigma(sigma);
            alpha.ln() - sigma.ln()
        };
        let (alpha_s0, sigma_s0) = alpha_sigma(self.sigmas[step_index]);
        let lambda_t = alpha_t.ln() - sigma_t.ln();
        let lambda_s0 = alpha_s0.ln() - sigma_s0.ln();
        let h = lambda_t - lambda_s0;
        let (r0, r1) = match order {
            1 => (f32::NAN, f32::NAN),
            _ => {
                let lambda_s1 = lambda(self.sigmas[step_index - 1]);
                let r0 = (lambda_s0 - lambda_s1) / h;
                let r1 = if order == 3 {
                    (lambda_s1 - lambda(self.sigmas[step_index - 2])) / h
                } else {
                    f32::NAN
                };
                (r0, r1)
            }
        };
        let differences = Differences {
            inv_r0: 1.0 / r0,
            inv_r1: 1.0 / r1,
            r0_share: r0 / (r0 + r1),
            inv_r01: 1.0 / (r0 + r1),
        };

        let (expm1_neg_h, expm1_h) = ((-h).exp() - 1.0, h.exp() - 1.0);
        // Third order shares the Heun form of the first-difference term.
        let heun = self.solver_type == SolverType::Heun || order == 3;
        // The `-` of diffusers' formulas is folded into the coefficients; negation is exact.
        let (sample, d0, d1, d2, noise) = match self.algorithm {
            Algorithm::DataPrediction => {
                let d1 = if heun {
                    alpha_t * (expm1_neg_h / h + 1.0)
                } else {
                    -(0.5 * (alpha_t * expm1_neg_h))
                };
                let d2 = -(alpha_t * ((expm1_neg_h + h) / (h * h) - 0.5));
                (sigma_t / sigma_s0, -(alpha_t * expm1_neg_h), d1, d2, 0.0)
            }
            Algorithm::NoisePrediction => {
                let d1 = if heun {
                    -(sigma_t * (expm1_h / h - 1.0))
                } else {
                    -(0.5 * (sigma_t * expm1_h))
                };
                let d2 = -(sigma_t * ((expm1_h - h) / (h * h) - 0.5));
                (alpha_t / alpha_s0, -(sigma_t * expm1_h), d1, d2, 0.0)
            }
            Algorithm::DataPredictionSde => {
                let one_minus_exp = 1.0 - (-2.0 * h).exp();
                let d1 = if heun {
                    alpha_t * (one_minus_exp / (-2.0 * h) + 1.0)
                } else {
                    0.5 * (alpha_t * one_minus_exp)
                };
                let two_h = 2.0 * h;
                let d2 = alpha_t * ((one_minus_exp - two_h) / (two_h * two_h) - 0.5);
                (
                    sigma_t / sigma_s0 * (-h).exp(),
                    alpha_t * one_minus_exp,
                    d1,
                    d2,
                    sigma_t * one_minus_exp.sqrt(),
                )
            }
            Algorithm::NoisePredictionSde => {
                let d1 = if heun {
                    -(2.0 * (sigma_t * (expm1_h / h - 1.0)))
                } else {
                    -(sigma_t * expm1_h)
                };
                let noise = sigma_t * ((2.0 * h).exp() - 1.0).sqrt();
                (alpha_t / alpha_s0, -(2.0 * (sigma_t * expm1_h)), d1, f32::NAN, noise)
            }
        };
        Coefficients {
            order,
            sample,
            d0,
            d1,
            d2,
            noise,
            differences,
        }
    }
}

impl SchedulerImpl for DpmSolverMultistep {
    const KIND: SchedulerKind = SchedulerKind::DpmSolverMultistep;

    fn schedule(&self) -> Schedule<'_> {
        Schedule::unscaled(&self.timesteps)
    }

    fn needs_noise(&self) -> bool {
        self.algorithm.is_sde()
    }

    fn expected_step(&self) -> Option<usize> {
        Some(self.next_step)
    }

    fn noise_scales(&self, step_index: usize) -> (f32, f32) {
        alpha_sigma(self.sigmas[step_index])
    }

    fn set_begin(&mut self, step_index: usize) {
        self.next_step = step_index;
    }

    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError> {
        let order = self.order_at(step.index);
        let converted = self.convert_model_output(step.model_output, sample, self.sigmas[step.index]);
        if self.history.len() == self.solver_order {
            self.history.remove(0);
        }
        self.history.push(converted);
        let coefficients = self.coefficients(step.index, order);

        let latest = self.history.len() - 1;
        let m0 = &self.history[latest];
        let m1 = (order >= 2).then(|| &self.history[latest - 1]);
        let m2 = (order == 3).then(|| &self.history[latest - 2]);
        for (index, value) in sample.iter_mut().enumerate() {
            let predictions = [m0[index], m1.map_or(0.0, |m| m[index]), m2.map_or(0.0, |m| m[index])];
            *value = coefficients.apply(*value, predictions, step.noise.map(|noise| noise[index]));
        }

        self.warm_steps = (self.warm_steps + 1).min(self.solver_order);
        self.next_step += 1;
        Ok(())
    }
}

/// One step's scalar coefficients; see [`DpmSolverMultistep::coefficients`].
struct Coefficients {
    order: usize,
    sample: f32,
    d0: f32,
    d1: f32,
    d2: f32,
    noise: f32,
    differences: Differences,
}

/// The divided differences of the predictions, in diffusers' notation with `r0 = h₀ / h` and
/// `r1 = h₁ / h`.
struct Differences {
    inv_r0: f32,
    inv_r1: f32,
    r0_share: f32,
    inv_r01: f32,
}

impl Coefficients {
    /// `predictions` are the current and the two previous converted outputs, for one element.
    fn apply(&self, x_t: f32, [m0, m1, m2]: [f32; 3], noise: Option<f32>) -> f32 {
        let Differences {
            inv_r0,
            inv_r1,
            r0_share,
            inv_r01,
        } = self.differences;
        let mut x = self.sample * x_t + self.d0 * m0;
        match self.order {
            1 => {}
            2 => x += self.d1 * (inv_r0 * (m0 - m1)),
            _ => {
                let (d1_0, d1_1) = (inv_r0 * (m0 - m1), inv_r1 * (m1 - m2));
                x += self.d1 * (d1_0 + r0_share * (d1_0 - d1_1));
                x += self.d2 * (inv_r01 * (d1_0 - d1_1));
            }
        }
        if let Some(noise) = noise {
            x += self.noise * noise;
        }
        x
    }
}

/// The signal and noise scales of the variance-preserving process at `sigma`.
fn alpha_sigma(sigma: f32) -> (f32, f32) {
    let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
    (alpha, sigma * alpha)
}

fn check_dpm_config(config: &SchedulerConfig, algorithm: Algorithm) -> Result<(), SchedulerError> {
    if !(1..=3).contains(&config.solver_order) {
        return Err(unsupported(format!(
            "DPM-Solver `solver_order` must be 1, 2 or 3. Given: {}",
            config.solver_order
        )));
    }
    if config.solver_order == 3 && algorithm == Algorithm::NoisePredictionSde {
        return Err(unsupported(
            "third-order `sde-dpmsolver` (diffusers does not implement it either)",
        ));
    }
    if matches!(config.variance_type.as_deref(), Some("learned" | "learned_range")) {
        return Err(unsupported("DPM-Solver with a learned `variance_type`"));
    }
    let refused = [
        ("use_lu_lambdas", config.use_lu_lambdas),
        ("use_flow_sigmas", config.use_flow_sigmas),
        ("use_dynamic_shifting", config.use_dynamic_shifting),
    ];
    match refused.iter().find(|(_, set)| *set) {
        Some((name, _)) => Err(unsupported(format!("DPM-Solver with `{name}`; set it to false"))),
        None => Ok(()),
    }
}

/// diffusers' DPM-Solver timesteps: `steps + 1` points of the spacing with the last (t = 0) dropped,
/// within the range that `lambda_min_clipped` leaves.
fn dpm_timesteps(config: &SchedulerConfig, alphas_cumprod: &[f32], steps: usize) -> Result<Vec<i64>, SchedulerError> {
    let train_steps = config.num_train_timesteps;
    let last_timestep = train_steps - clipped_timesteps(alphas_cumprod, config.lambda_min_clipped);
    let timesteps: Vec<i64> = match config.timestep_spacing_for(SchedulerKind::DpmSolverMultistep) {
        TimestepSpacing::Linspace => linspace_timesteps(last_timestep as f64 - 1.0, steps + 1)
            .into_iter()
            .skip(1)
            .rev()
            .map(|t| t.round_ties_even() as i64)
            .collect(),
        TimestepSpacing::Leading => {
            // steps + 1 points, dropping the last (t = steps_offset).
            let mut timesteps = leading_timesteps(last_timestep, steps + 1, config.steps_offset);
            timesteps.pop();
            timesteps
        }
        TimestepSpacing::Trailing => trailing_timesteps(last_timestep, train_steps, steps),
    };
    check_timesteps_in_range(&timesteps, train_steps)?;
    Ok(timesteps)
}

/// How many of the noisiest training timesteps have a log-SNR below `lambda_min_clipped`.
fn clipped_timesteps(alphas_cumprod: &[f32], lambda_min_clipped: Option<f64>) -> usize {
    let Some(lambda_min) = lambda_min_clipped else {
        return 0;
    };
    alphas_cumprod
        .iter()
        .rev()
        .map(|&alpha| alpha.sqrt().ln() - (1.0 - alpha).sqrt().ln())
        .take_while(|&lambda| f64::from(lambda) < lambda_min)
        .count()
}
