//! `scheduler_config.json` as diffusers writes it, and the schedules every scheduler derives from it:
//! the float32 `alphas_cumprod` table and the spacing of the inference timesteps.

use serde::{Deserialize, Deserializer, Serialize};

use super::numerics::{cumprod_f32, np_arange, np_linspace, torch_linspace_f32, SigmaSpacing};
use super::{SchedulerError, SchedulerKind};

/// diffusers' scheduler config. Field names and defaults are diffusers'; fields this crate does not
/// use are ignored. One struct serves every kind, as diffusers' `from_config` lets a config written
/// for one class build another: the fields the file sets carry over, the rest take the target's
/// defaults.
///
/// Fields whose diffusers default differs between classes are `Option`s, resolved for a kind by
/// [`SchedulerConfig::timestep_spacing_for`] and friends. LCM is the class whose defaults stand out: its noise
/// schedule is Stable Diffusion's (`scaled_linear` from 0.00085 to 0.012) where the others default to `linear`
/// from 0.0001 to 0.02.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(default)]
pub struct SchedulerConfig {
    #[serde(rename = "_class_name", skip_serializing_if = "Option::is_none")]
    pub class_name: Option<String>,
    pub num_train_timesteps: usize,
    /// Python floats, kept in float64 because diffusers takes `beta_start ** 0.5` before float32. Resolved by
    /// [`SchedulerConfig::beta_range_for`].
    pub beta_start: Option<f64>,
    pub beta_end: Option<f64>,
    /// Resolved by [`SchedulerConfig::beta_schedule_for`].
    pub beta_schedule: Option<BetaSchedule>,
    pub trained_betas: Option<Vec<f64>>,
    pub prediction_type: PredictionType,
    /// DDIM and PNDM default to `leading`, the Euler variants and DPM-Solver to `linspace`.
    pub timestep_spacing: Option<TimestepSpacing>,
    pub steps_offset: usize,
    #[serde(deserialize_with = "null_as_false")]
    pub rescale_betas_zero_snr: bool,
    /// Dynamic thresholding suits pixel-space models only; refused.
    #[serde(deserialize_with = "null_as_false")]
    pub thresholding: bool,

    /// DDIM and LCM: clamp the predicted clean sample to `±clip_sample_range`. diffusers' default is `true` for
    /// DDIM, `false` for LCM.
    pub clip_sample: Option<bool>,
    pub clip_sample_range: f64,
    /// DDIM and LCM (default `true`) and PNDM (default `false`): use ᾱ = 1 past the last step instead of ᾱ₀.
    /// LCM never steps past its last timestep, so the value changes nothing there.
    pub set_alpha_to_one: Option<bool>,

    /// PNDM: skip the Runge-Kutta warm-up and run PLMS only (Stable Diffusion's configs do).
    #[serde(deserialize_with = "null_as_false")]
    pub skip_prk_steps: bool,

    /// Euler: `linear` or `log_linear` interpolation of the training sigmas.
    pub interpolation_type: String,
    /// Euler: `discrete`, or `continuous` (with `v_prediction`) for `0.25·ln σ` timesteps.
    pub timestep_type: String,
    /// Euler and DPM-Solver sigma spacings. `use_beta_sigmas` is refused.
    #[serde(deserialize_with = "null_as_false")]
    pub use_karras_sigmas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_exponential_sigmas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_beta_sigmas: bool,
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Euler and DPM-Solver: the sigma after the last step, `zero` or `sigma_min`.
    pub final_sigmas_type: String,

    /// DPM-Solver: order 1, 2 or 3.
    pub solver_order: usize,
    /// DPM-Solver: `dpmsolver++`, `sde-dpmsolver++`, `dpmsolver`, `sde-dpmsolver` (`deis` reads as
    /// `dpmsolver++`, as in diffusers).
    pub algorithm_type: String,
    /// DPM-Solver: `midpoint` or `heun` (`logrho`, `bh1`, `bh2` read as `midpoint`).
    pub solver_type: String,
    #[serde(deserialize_with = "null_as_false")]
    pub lower_order_final: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub euler_at_final: bool,
    /// DPM-Solver: drop timesteps whose log-SNR is below this. `None` is diffusers' `-inf`.
    pub lambda_min_clipped: Option<f64>,
    /// DPM-Solver: `learned`/`learned_range` split the model output into noise and variance; refused.
    pub variance_type: Option<String>,
    #[serde(deserialize_with = "null_as_false")]
    pub use_lu_lambdas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_flow_sigmas: bool,
    #[serde(deserialize_with = "null_as_false")]
    pub use_dynamic_shifting: bool,

    /// LCM: the length of the distillation schedule its timesteps are taken from (every
    /// `num_train_timesteps / original_inference_steps`-th training timestep). `None` is diffusers' 50.
    pub original_inference_steps: Option<usize>,
    /// LCM: the factor on the timestep in the consistency model's boundary scalings `c_skip` and `c_out`.
    pub timestep_scaling: f64,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        Self {
            class_name: None,
            num_train_timesteps: 1000,
            beta_start: None,
            beta_end: None,
            beta_schedule: None,
            trained_betas: None,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: None,
            steps_offset: 0,
            rescale_betas_zero_snr: false,
            thresholding: false,
            clip_sample: None,
            clip_sample_range: 1.0,
            set_alpha_to_one: None,
            skip_prk_steps: false,
            interpolation_type: "linear".to_owned(),
            timestep_type: "discrete".to_owned(),
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            sigma_min: None,
            sigma_max: None,
            final_sigmas_type: "zero".to_owned(),
            solver_order: 2,
            algorithm_type: "dpmsolver++".to_owned(),
            solver_type: "midpoint".to_owned(),
            lower_order_final: true,
            euler_at_final: false,
            lambda_min_clipped: None,
            variance_type: None,
            use_lu_lambdas: false,
            use_flow_sigmas: false,
            use_dynamic_shifting: false,
            original_inference_steps: None,
            timestep_scaling: 10.0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
pub enum BetaSchedule {
    #[serde(rename = "linear")]
    Linear,
    #[serde(rename = "scaled_linear")]
    ScaledLinear,
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    Epsilon,
    VPrediction,
    Sample,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Leading,
    Trailing,
    Linspace,
}

impl SchedulerConfig {
    /// Parses a `scheduler_config.json`. Python's `json` writes `-Infinity` (diffusers' default
    /// `lambda_min_clipped`), which is not JSON; such bare non-finite literals read as `null`.
    /// Fields listed in `_use_default_values` (present in an in-memory diffusers config) were the
    /// source class's defaults, so they are dropped as diffusers' `from_config` drops them.
    pub fn from_json_str(json: &str) -> Result<Self, SchedulerError> {
        let mut value: serde_json::Value = serde_json::from_str(&python_json_to_json(json))?;
        if let Some(fields) = value.as_object_mut() {
            if let Some(serde_json::Value::Array(defaulted)) = fields.remove("_use_default_values") {
                for name in defaulted.iter().filter_map(serde_json::Value::as_str) {
                    fields.remove(name);
                }
            }
        }
        Ok(serde_json::from_value(value)?)
    }

    /// The spacing `kind` uses: the file's, else `kind`'s default. (diffusers' `from_config`
    /// records which fields were defaults of the source class and gives them the target's defaults.)
    pub fn timestep_spacing_for(&self, kind: SchedulerKind) -> TimestepSpacing {
        self.timestep_spacing.unwrap_or(match kind {
            // LCM's default; it takes its timesteps from `original_inference_steps` whatever the spacing.
            SchedulerKind::Ddim | SchedulerKind::Pndm | SchedulerKind::Lcm => TimestepSpacing::Leading,
            SchedulerKind::Euler | SchedulerKind::EulerAncestral | SchedulerKind::DpmSolverMultistep => {
                TimestepSpacing::Linspace
            }
        })
    }

    /// DDIM and LCM default to `true`, PNDM to `false`.
    pub fn set_alpha_to_one_for(&self, kind: SchedulerKind) -> bool {
        self.set_alpha_to_one
            .unwrap_or(matches!(kind, SchedulerKind::Ddim | SchedulerKind::Lcm))
    }

    /// The range DDIM and LCM clamp the predicted clean sample to, `None` for no clamping. DDIM's default is on
    /// (Stable Diffusion's configs turn it off), LCM's off; the other kinds never clip.
    pub fn clip_sample_range_for(&self, kind: SchedulerKind) -> Option<f32> {
        self.clip_sample
            .unwrap_or(kind == SchedulerKind::Ddim)
            .then_some(self.clip_sample_range as f32)
    }

    /// `beta_schedule`: LCM's default is `scaled_linear`, every other kind's `linear`.
    pub fn beta_schedule_for(&self, kind: SchedulerKind) -> BetaSchedule {
        self.beta_schedule.unwrap_or(if kind == SchedulerKind::Lcm {
            BetaSchedule::ScaledLinear
        } else {
            BetaSchedule::Linear
        })
    }

    /// `(beta_start, beta_end)`: LCM's defaults are Stable Diffusion's 0.00085 and 0.012, every other kind's
    /// 0.0001 and 0.02.
    pub fn beta_range_for(&self, kind: SchedulerKind) -> (f64, f64) {
        let (start, end) = if kind == SchedulerKind::Lcm {
            (0.00085, 0.012)
        } else {
            (0.0001, 0.02)
        };
        (self.beta_start.unwrap_or(start), self.beta_end.unwrap_or(end))
    }

    /// Euler and DPM-Solver: how inference sigmas are spaced, `None` for interpolated.
    pub(crate) fn sigma_spacing(&self) -> Result<Option<SigmaSpacing>, SchedulerError> {
        if self.use_beta_sigmas {
            return Err(unsupported(
                "`use_beta_sigmas` (it needs scipy's beta quantiles); use Karras sigmas instead",
            ));
        }
        match (self.use_karras_sigmas, self.use_exponential_sigmas) {
            (false, false) => Ok(None),
            (true, false) => Ok(Some(SigmaSpacing::Karras)),
            (false, true) => Ok(Some(SigmaSpacing::Exponential)),
            (true, true) => Err(unsupported(
                "only one of `use_karras_sigmas` and `use_exponential_sigmas` can be set",
            )),
        }
    }

    /// Euler and DPM-Solver: whether the last step lands on the smallest training sigma
    /// (`sigma_min`) rather than on zero.
    pub(crate) fn final_sigma_is_min(&self) -> Result<bool, SchedulerError> {
        match self.final_sigmas_type.as_str() {
            "zero" => Ok(false),
            "sigma_min" => Ok(true),
            other => Err(unsupported(format!(
                "`final_sigmas_type` `{other}`; expected `zero` or `sigma_min`"
            ))),
        }
    }

    /// Refuses what no kind here implements.
    pub(crate) fn check_shared(&self) -> Result<(), SchedulerError> {
        if self.thresholding {
            return Err(unsupported(
                "`thresholding` (dynamic thresholding is for pixel-space models); set it to false",
            ));
        }
        if let Some(betas) = &self.trained_betas {
            if betas.len() != self.num_train_timesteps {
                return Err(unsupported(format!(
                    "`trained_betas` has {} values but `num_train_timesteps` is {}",
                    betas.len(),
                    self.num_train_timesteps
                )));
            }
        }
        if self.num_train_timesteps < 2 {
            return Err(unsupported("`num_train_timesteps` must be at least 2"));
        }
        Ok(())
    }

    /// diffusers' float32 `alphas_cumprod` table as `kind` builds it. The classes differ over
    /// `rescale_betas_zero_snr`: PNDM ignores it, DDIM and LCM keep ᾱ_T = 0, and the sigma-based kinds
    /// nudge ᾱ_T to 2⁻²⁴ so the last sigma stays finite.
    pub(crate) fn alphas_cumprod(&self, kind: SchedulerKind) -> Vec<f32> {
        let rescale = self.rescale_betas_zero_snr && kind != SchedulerKind::Pndm;
        let mut betas = self.betas(kind);
        if rescale {
            betas = rescale_zero_terminal_snr(&betas);
        }
        let alphas: Vec<f32> = betas.iter().map(|beta| 1.0 - beta).collect();
        let mut alphas_cumprod = cumprod_f32(&alphas);
        if rescale && !matches!(kind, SchedulerKind::Ddim | SchedulerKind::Lcm) {
            let last = alphas_cumprod.len() - 1;
            alphas_cumprod[last] = 2f32.powi(-24);
        }
        alphas_cumprod
    }

    fn betas(&self, kind: SchedulerKind) -> Vec<f32> {
        let steps = self.num_train_timesteps;
        if let Some(betas) = &self.trained_betas {
            return betas.iter().map(|&beta| beta as f32).collect();
        }
        let (beta_start, beta_end) = self.beta_range_for(kind);
        match self.beta_schedule_for(kind) {
            BetaSchedule::Linear => torch_linspace_f32(beta_start, beta_end, steps),
            BetaSchedule::ScaledLinear => torch_linspace_f32(beta_start.sqrt(), beta_end.sqrt(), steps)
                .into_iter()
                .map(|root| root * root)
                .collect(),
            BetaSchedule::SquaredcosCapV2 => squaredcos_cap_v2_betas(steps),
        }
    }
}

/// The cosine schedule of Nichol & Dhariwal (2021), computed in float64 like diffusers' loop.
fn squaredcos_cap_v2_betas(steps: usize) -> Vec<f32> {
    const MAX_BETA: f64 = 0.999;
    let alpha_bar = |t: f64| ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0).cos().powi(2);
    (0..steps)
        .map(|index| {
            let t1 = index as f64 / steps as f64;
            let t2 = (index + 1) as f64 / steps as f64;
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(MAX_BETA) as f32
        })
        .collect()
}

/// Lin et al. (2023), Algorithm 1: shift and scale √ᾱ so the last timestep has zero SNR, in float32.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let alphas: Vec<f32> = betas.iter().map(|beta| 1.0 - beta).collect();
    let mut roots: Vec<f32> = cumprod_f32(&alphas).iter().map(|value| value.sqrt()).collect();
    let (first, last) = (roots[0], roots[roots.len() - 1]);
    let scale = first / (first - last);
    for root in &mut roots {
        *root = (*root - last) * scale;
    }
    let alphas_bar: Vec<f32> = roots.iter().map(|root| root * root).collect();
    let mut alphas = Vec::with_capacity(alphas_bar.len());
    alphas.push(alphas_bar[0]);
    alphas.extend(alphas_bar.windows(2).map(|pair| pair[1] / pair[0]));
    alphas.iter().map(|alpha| 1.0 - alpha).collect()
}

/// `((1 - ᾱ) / ᾱ) ** 0.5` per training timestep, in float32: the noise-to-signal ratio that Euler
/// and DPM-Solver step in.
pub(crate) fn training_sigmas(alphas_cumprod: &[f32]) -> Vec<f32> {
    alphas_cumprod
        .iter()
        .map(|alpha| ((1.0 - alpha) / alpha).sqrt())
        .collect()
}

/// `leading` spacing: multiples of `train_steps // steps` plus `steps_offset`, descending.
pub(crate) fn leading_timesteps(train_steps: usize, steps: usize, steps_offset: usize) -> Vec<i64> {
    let ratio = train_steps / steps;
    (0..steps)
        .rev()
        .map(|index| (index * ratio + steps_offset) as i64)
        .collect()
}

/// `trailing` spacing: `round(arange(last, 0, -train_steps / steps)) - 1`, descending. numpy's
/// arange can yield one value more than `steps`; callers check the result.
pub(crate) fn trailing_timesteps(last: usize, train_steps: usize, steps: usize) -> Vec<i64> {
    let ratio = train_steps as f64 / steps as f64;
    np_arange(last as f64, 0.0, -ratio)
        .into_iter()
        .map(|t| t.round_ties_even() as i64 - 1)
        .collect()
}

/// `linspace` spacing, `np.linspace(0, last, steps)` in float64, ascending and unrounded.
pub(crate) fn linspace_timesteps(last: f64, steps: usize) -> Vec<f64> {
    np_linspace(0.0, last, steps)
}

/// Refuses a schedule that would read `alphas_cumprod` out of range (diffusers' `trailing` spacing
/// produces a `-1` for some step counts, which torch silently reads as the last entry).
pub(crate) fn check_timesteps_in_range(timesteps: &[i64], train_steps: usize) -> Result<(), SchedulerError> {
    match timesteps.iter().find(|&&t| t < 0 || t >= train_steps as i64) {
        Some(t) => Err(unsupported(format!(
            "this spacing yields timestep {t} for {} steps, outside 0..{train_steps}; choose another step count \
             or `timestep_spacing`",
            timesteps.len()
        ))),
        None => Ok(()),
    }
}

pub(crate) fn unsupported(message: impl Into<String>) -> SchedulerError {
    SchedulerError::Unsupported(message.into())
}

/// diffusers writes `null` for some boolean options (`use_karras_sigmas: bool | None = False`);
/// Python reads it as false.
fn null_as_false<'de, D: Deserializer<'de>>(deserializer: D) -> Result<bool, D::Error> {
    Ok(Option::<bool>::deserialize(deserializer)?.unwrap_or(false))
}

/// Replaces Python's bare `NaN`, `Infinity` and `-Infinity` outside strings with `null`.
fn python_json_to_json(json: &str) -> std::borrow::Cow<'_, str> {
    if !json.contains("Infinity") && !json.contains("NaN") {
        return std::borrow::Cow::Borrowed(json);
    }
    let mut out = String::with_capacity(json.len());
    let mut rest = json;
    let mut in_string = false;
    while let Some(c) = rest.chars().next() {
        if in_string {
            let len = if c == '\\' {
                1 + rest[1..].chars().next().map_or(0, char::len_utf8)
            } else {
                c.len_utf8()
            };
            in_string = c != '"';
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        if let Some(literal) = ["-Infinity", "Infinity", "NaN"]
            .into_iter()
            .find(|lit| rest.starts_with(lit))
        {
            out.push_str("null");
            rest = &rest[literal.len()..];
            continue;
        }
        in_string = c == '"';
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use SchedulerKind::{Ddim, Euler, Lcm, Pndm};
    use TimestepSpacing::{Leading, Linspace};

    pub(crate) const SD15_CONFIG: &str = r#"{"_class_name":"PNDMScheduler","_diffusers_version":"0.6.0",
        "beta_end":0.012,"beta_schedule":"scaled_linear","beta_start":0.00085,"num_train_timesteps":1000,
        "set_alpha_to_one":false,"skip_prk_steps":true,"steps_offset":1,"trained_betas":null,"clip_sample":false}"#;

    #[test]
    fn reads_stable_diffusion_15_config() {
        let config = SchedulerConfig::from_json_str(SD15_CONFIG).unwrap();
        assert_eq!(config.class_name.as_deref(), Some("PNDMScheduler"));
        assert_eq!(config.beta_schedule_for(Ddim), BetaSchedule::ScaledLinear);
        assert_eq!(config.beta_range_for(Ddim), (0.00085, 0.012));
        assert_eq!(config.steps_offset, 1);
        assert!(config.skip_prk_steps);
        assert_eq!(config.trained_betas, None);
        assert_eq!(config.clip_sample_range_for(Ddim), None);
        assert_eq!(config.prediction_type, PredictionType::Epsilon);
        assert!(!config.set_alpha_to_one_for(Ddim));
        // Fields the file leaves out take the defaults of the kind being built, as in diffusers.
        assert_eq!(config.timestep_spacing_for(Pndm), Leading);
        assert_eq!(config.timestep_spacing_for(Euler), Linspace);
        assert_eq!(
            (config.solver_order, config.algorithm_type.as_str()),
            (2, "dpmsolver++")
        );
    }

    #[test]
    fn empty_config_takes_each_kinds_defaults() {
        let config = SchedulerConfig::from_json_str("{}").unwrap();
        assert_eq!(config, SchedulerConfig::default());
        assert_eq!(config.timestep_spacing_for(Ddim), Leading);
        assert_eq!(config.timestep_spacing_for(Euler), Linspace);
        assert!(config.set_alpha_to_one_for(Ddim));
        assert!(!config.set_alpha_to_one_for(Pndm));
        assert_eq!(config.clip_sample_range_for(Ddim), Some(1.0));
        assert_eq!(config.beta_schedule_for(Ddim), BetaSchedule::Linear);
        assert_eq!(config.beta_range_for(Euler), (0.0001, 0.02));
        // LCM's own defaults: Stable Diffusion's schedule, no clipping, ᾱ = 1 past the end.
        assert_eq!(config.beta_schedule_for(Lcm), BetaSchedule::ScaledLinear);
        assert_eq!(config.beta_range_for(Lcm), (0.00085, 0.012));
        assert_eq!(config.clip_sample_range_for(Lcm), None);
        assert!(config.set_alpha_to_one_for(Lcm));
        assert_eq!((config.original_inference_steps, config.timestep_scaling), (None, 10.0));
        let sd15 = SchedulerConfig::from_json_str(SD15_CONFIG).unwrap();
        assert_eq!(config.alphas_cumprod(Lcm), sd15.alphas_cumprod(Lcm));
    }

    #[test]
    fn reads_python_infinity_and_null_booleans() {
        let json = r#"{"_class_name":"DPMSolverMultistepScheduler","lambda_min_clipped":-Infinity,
            "use_karras_sigmas":null,"algorithm_type":"sde-dpmsolver++","variance_type":"say \"NaN\""}"#;
        let config = SchedulerConfig::from_json_str(json).unwrap();
        assert_eq!(config.lambda_min_clipped, None);
        assert!(!config.use_karras_sigmas);
        assert_eq!(config.algorithm_type, "sde-dpmsolver++");
        assert_eq!(config.variance_type.as_deref(), Some("say \"NaN\""));
    }

    #[test]
    fn fields_marked_as_defaults_take_the_target_kinds_defaults() {
        let json = r#"{"_class_name":"PNDMScheduler","timestep_spacing":"leading","steps_offset":1,
            "_use_default_values":["timestep_spacing"]}"#;
        let config = SchedulerConfig::from_json_str(json).unwrap();
        assert_eq!(config.timestep_spacing, None);
        assert_eq!(config.timestep_spacing_for(Euler), Linspace);
        assert_eq!(config.steps_offset, 1);
    }

    #[test]
    fn serializes_back_to_diffusers_names() {
        let config = SchedulerConfig::from_json_str(SD15_CONFIG).unwrap();
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["_class_name"], "PNDMScheduler");
        assert_eq!(json["beta_schedule"], "scaled_linear");
        assert_eq!(SchedulerConfig::from_json_str(&json.to_string()).unwrap(), config);
    }

    #[test]
    fn rejects_unknown_enum_values_with_the_accepted_ones() {
        let err = SchedulerConfig::from_json_str(r#"{"beta_schedule":"sigmoid"}"#).unwrap_err();
        assert!(err.to_string().contains("scaled_linear"), "{err}");
    }

    #[test]
    fn spacings_match_diffusers() {
        assert_eq!(leading_timesteps(1000, 4, 1), [751, 501, 251, 1]);
        assert_eq!(trailing_timesteps(1000, 1000, 4), [999, 749, 499, 249]);
        // 62.5-wide steps hit .5 and round half to even, as numpy does.
        assert_eq!(trailing_timesteps(1000, 1000, 16)[1], 937);
        assert_eq!(linspace_timesteps(999.0, 3), [0.0, 499.5, 999.0]);
        assert!(check_timesteps_in_range(&trailing_timesteps(1000, 1000, 61), 1000).is_err());
    }
}
