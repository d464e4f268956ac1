//! Diffusion schedulers that reproduce diffusers' (0.42) arithmetic on flat `f32` latents.
//!
//! A request builds its own scheduler with [`build`], walks [`Scheduler::timesteps`] in order, and for
//! each step calls [`Scheduler::scale_model_input`] on the UNet input and [`Scheduler::step`] on the
//! latents. Every operation is elementwise, so one scheduler serves all images of a request.

mod config;
mod ddim;
mod dpm_solver;
mod euler;
mod euler_ancestral;
mod lcm;
pub mod linear;
mod numerics;
mod pndm;

use std::fmt;

pub use config::{BetaSchedule, PredictionType, SchedulerConfig, TimestepSpacing};

/// The schedulers a request can ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SchedulerKind {
    Ddim,
    Euler,
    EulerAncestral,
    DpmSolverMultistep,
    Pndm,
    Lcm,
}

impl SchedulerKind {
    pub const ALL: [SchedulerKind; 6] = [
        SchedulerKind::Ddim,
        SchedulerKind::Euler,
        SchedulerKind::EulerAncestral,
        SchedulerKind::DpmSolverMultistep,
        SchedulerKind::Pndm,
        SchedulerKind::Lcm,
    ];

    /// Parses a request's scheduler name (case-insensitive); the error lists the accepted names.
    pub fn from_name(name: &str) -> Result<Self, SchedulerError> {
        let kind = match name.trim().to_ascii_lowercase().as_str() {
            "ddim" => SchedulerKind::Ddim,
            "euler" => SchedulerKind::Euler,
            "euler_a" | "euler_ancestral" => SchedulerKind::EulerAncestral,
            "dpm++2m" | "dpmsolver++" | "dpm_solver_multistep" => SchedulerKind::DpmSolverMultistep,
            "pndm" | "plms" => SchedulerKind::Pndm,
            "lcm" => SchedulerKind::Lcm,
            _ => {
                return Err(SchedulerError::Unknown {
                    given: name.to_owned(),
                    expected: Self::accepted_names(),
                })
            }
        };
        Ok(kind)
    }

    /// Maps a diffusers class name (`_class_name` in `scheduler_config.json`) to a kind.
    pub fn from_class_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.class_name() == name)
    }

    /// The canonical request name.
    pub fn name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "ddim",
            SchedulerKind::Euler => "euler",
            SchedulerKind::EulerAncestral => "euler_a",
            SchedulerKind::DpmSolverMultistep => "dpm++2m",
            SchedulerKind::Pndm => "pndm",
            SchedulerKind::Lcm => "lcm",
        }
    }

    /// The diffusers class this kind reproduces.
    pub fn class_name(&self) -> &'static str {
        match self {
            SchedulerKind::Ddim => "DDIMScheduler",
            SchedulerKind::Euler => "EulerDiscreteScheduler",
            SchedulerKind::EulerAncestral => "EulerAncestralDiscreteScheduler",
            SchedulerKind::DpmSolverMultistep => "DPMSolverMultistepScheduler",
            SchedulerKind::Pndm => "PNDMScheduler",
            SchedulerKind::Lcm => "LCMScheduler",
        }
    }

    fn accepted_names() -> String {
        "ddim, euler, euler_a (alias euler_ancestral), dpm++2m (aliases dpmsolver++, dpm_solver_multistep), \
         pndm (alias plms), lcm"
            .to_owned()
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One denoising schedule, set for a fixed number of inference steps.
pub trait Scheduler: Send {
    fn kind(&self) -> SchedulerKind;

    /// The timesteps the denoising loop visits, in order. PNDM's PLMS list repeats one, as diffusers'
    /// does. Float because Euler's are fractional; cast for UNets that take int64.
    fn timesteps(&self) -> &[f32];

    /// The factor for the initial Gaussian latents.
    fn init_noise_sigma(&self) -> f32;

    /// Scales the UNet input for step `step_index`, in place: identity for DDIM, PNDM, DPM-Solver and LCM,
    /// division by `sqrt(sigma² + 1)` for the Euler variants.
    ///
    /// # Panics
    /// When `step_index` is not below `timesteps().len()`.
    fn scale_model_input(&self, sample: &mut [f32], step_index: usize);

    /// True when some [`Scheduler::step`] needs a noise slice: Euler ancestral, DDIM with `eta > 0`, the
    /// SDE variants of DPM-Solver, and LCM with more than one step.
    fn needs_noise(&self) -> bool;

    /// Starts the schedule at `step_index` instead of 0, as diffusers' `set_begin_index` does for img2img:
    /// multistep kinds then expect that step first, and PNDM counts its warm-up from it.
    fn begin_at(&mut self, step_index: usize) -> Result<(), SchedulerError>;

    /// Noises a clean `sample` in place to the noise level of step `step_index`, as diffusers'
    /// `add_noise` does before img2img's first step: `√ᾱ_t · x + √(1 − ᾱ_t) · ε` for the kinds that step
    /// along ᾱ (DDIM, PNDM, LCM, DPM-Solver from its sigma), `x + σ · ε` for the Euler variants.
    fn add_noise(&self, sample: &mut [f32], noise: &[f32], step_index: usize) -> Result<(), SchedulerError>;

    /// True when step `step_index` needs a noise slice; never true where [`Scheduler::needs_noise`] is
    /// false. Every step for the kinds above except LCM, which, as diffusers' `LCMScheduler` draws it,
    /// needs noise at every step but the last (whose clean estimate is the result).
    fn needs_noise_at(&self, step_index: usize) -> bool;

    /// Advances `sample` in place to the next (less noisy) timestep. `noise` is standard Gaussian
    /// noise of `sample`'s length, required when [`Scheduler::needs_noise_at`] the step and ignored
    /// otherwise.
    /// Multistep schedulers (DPM-Solver, PNDM) must be stepped through every index in order.
    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError>;
}

/// Per-request options that are not part of `scheduler_config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct SchedulerOptions {
    /// DDIM's noise weight: 0 is deterministic DDIM, 1 is DDPM-like. Ignored by other kinds.
    pub eta: f32,
}

/// Builds a `kind` scheduler from a diffusers config, with its timesteps set for
/// `num_inference_steps`. A config written for another class works, as with diffusers' `from_config`.
pub fn build(
    kind: SchedulerKind,
    config: &SchedulerConfig,
    num_inference_steps: usize,
    options: &SchedulerOptions,
) -> Result<Box<dyn Scheduler>, SchedulerError> {
    if num_inference_steps == 0 || num_inference_steps > config.num_train_timesteps {
        return Err(SchedulerError::InvalidSteps {
            given: num_inference_steps,
            max: config.num_train_timesteps,
        });
    }
    config.check_shared()?;
    let scheduler: Box<dyn Scheduler> = match kind {
        SchedulerKind::Ddim => Box::new(ddim::Ddim::new(config, num_inference_steps, options.eta)?),
        SchedulerKind::Euler => Box::new(euler::Euler::new(config, num_inference_steps)?),
        SchedulerKind::EulerAncestral => Box::new(euler_ancestral::EulerAncestral::new(config, num_inference_steps)?),
        SchedulerKind::DpmSolverMultistep => {
            Box::new(dpm_solver::DpmSolverMultistep::new(config, num_inference_steps)?)
        }
        SchedulerKind::Pndm => Box::new(pndm::Pndm::new(config, num_inference_steps)?),
        SchedulerKind::Lcm => Box::new(lcm::Lcm::new(config, num_inference_steps)?),
    };
    Ok(scheduler)
}

#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("unknown scheduler `{given}`; expected one of: {expected}")]
    Unknown { given: String, expected: String },
    #[error("unsupported scheduler configuration: {0}")]
    Unsupported(String),
    #[error("`num_inference_steps` must be between 1 and {max}. Given: {given}")]
    InvalidSteps { given: usize, max: usize },
    #[error("invalid scheduler config: {0}")]
    InvalidConfig(#[from] serde_json::Error),
    #[error("step {given} was called out of order; this scheduler expects step {expected} next")]
    OutOfOrder { given: usize, expected: usize },
    #[error("step {given} is past the last of {steps} steps")]
    StepOutOfRange { given: usize, steps: usize },
    #[error("`{name}` has {given} values but the sample has {expected}")]
    LengthMismatch {
        name: &'static str,
        given: usize,
        expected: usize,
    },
    #[error("this scheduler's step needs a noise slice of the sample's length")]
    MissingNoise,
}

/// What sets one kind apart. [`Scheduler`] is implemented once, below, for every kind: checking
/// `step`'s arguments, holding multistep kinds to the order of their steps and scaling the UNet
/// input work the same for all of them, so each kind supplies only its schedule and its update.
trait SchedulerImpl: Send {
    const KIND: SchedulerKind;

    fn schedule(&self) -> Schedule<'_>;

    /// As [`Scheduler::needs_noise`].
    fn needs_noise(&self) -> bool {
        false
    }

    /// As [`Scheduler::needs_noise_at`]; kinds that draw noise draw it at every step unless they say otherwise.
    fn needs_noise_at(&self, _step_index: usize) -> bool {
        self.needs_noise()
    }

    /// `(a, b)` such that the sample noised to step `step_index` is `a · x + b · ε`.
    fn noise_scales(&self, step_index: usize) -> (f32, f32);

    /// As [`Scheduler::begin_at`], for the kinds that keep state across steps.
    fn set_begin(&mut self, _step_index: usize) {}

    /// The step a multistep kind expects next. Those kinds build each update from the model outputs
    /// of the steps before, so they must see every step, in order; `None` for the others.
    fn expected_step(&self) -> Option<usize> {
        None
    }

    /// [`Scheduler::step`] once its arguments have passed the checks that [`StepArgs`] describes.
    /// Multistep kinds move their expected step on here.
    fn advance(&mut self, step: StepArgs<'_>, sample: &mut [f32]) -> Result<(), SchedulerError>;
}

/// What [`Scheduler`]'s shared methods read of a kind's schedule.
struct Schedule<'a> {
    timesteps: &'a [f32],
    init_noise_sigma: f32,
    /// The sigma of each timestep where the UNet input is divided by `sqrt(sigma² + 1)` (the Euler
    /// variants); `None` where the input is used as it is.
    input_sigmas: Option<&'a [f32]>,
}

impl<'a> Schedule<'a> {
    /// A schedule that uses the initial noise and the UNet input as they are: DDIM, PNDM and
    /// DPM-Solver, which work on the variance-preserving sample itself.
    fn unscaled(timesteps: &'a [f32]) -> Self {
        Self {
            timesteps,
            init_noise_sigma: 1.0,
            input_sigmas: None,
        }
    }
}

/// The arguments of one [`Scheduler::step`] call, checked: `index` is a step of the schedule (the
/// expected one for multistep kinds), `model_output` has the sample's length, and `noise` is there,
/// of the sample's length, exactly when the kind needs it at this step.
#[derive(Clone, Copy)]
struct StepArgs<'a> {
    index: usize,
    model_output: &'a [f32],
    noise: Option<&'a [f32]>,
}

impl<S: SchedulerImpl> Scheduler for S {
    fn kind(&self) -> SchedulerKind {
        S::KIND
    }

    fn timesteps(&self) -> &[f32] {
        self.schedule().timesteps
    }

    fn init_noise_sigma(&self) -> f32 {
        self.schedule().init_noise_sigma
    }

    fn scale_model_input(&self, sample: &mut [f32], step_index: usize) {
        let schedule = self.schedule();
        assert!(
            step_index < schedule.timesteps.len(),
            "step {step_index} is past the last step"
        );
        if let Some(sigmas) = schedule.input_sigmas {
            // The Euler variants' sample is x₀ + sigma·ε: this gives the UNet unit-variance input.
            let sigma = sigmas[step_index];
            let scale = (sigma * sigma + 1.0).sqrt();
            for value in sample {
                *value /= scale;
            }
        }
    }

    fn needs_noise(&self) -> bool {
        SchedulerImpl::needs_noise(self)
    }

    fn needs_noise_at(&self, step_index: usize) -> bool {
        SchedulerImpl::needs_noise_at(self, step_index)
    }

    fn begin_at(&mut self, step_index: usize) -> Result<(), SchedulerError> {
        let steps = self.schedule().timesteps.len();
        if step_index >= steps {
            return Err(SchedulerError::StepOutOfRange {
                given: step_index,
                steps,
            });
        }
        self.set_begin(step_index);
        Ok(())
    }

    fn add_noise(&self, sample: &mut [f32], noise: &[f32], step_index: usize) -> Result<(), SchedulerError> {
        let steps = self.schedule().timesteps.len();
        if step_index >= steps {
            return Err(SchedulerError::StepOutOfRange {
                given: step_index,
                steps,
            });
        }
        check_len("noise", noise, sample)?;
        let (a, b) = self.noise_scales(step_index);
        for (value, &epsilon) in sample.iter_mut().zip(noise) {
            *value = a * *value + b * epsilon;
        }
        Ok(())
    }

    fn step(
        &mut self,
        model_output: &[f32],
        step_index: usize,
        sample: &mut [f32],
        noise: Option<&[f32]>,
    ) -> Result<(), SchedulerError> {
        let steps = self.schedule().timesteps.len();
        if step_index >= steps {
            return Err(SchedulerError::StepOutOfRange {
                given: step_index,
                steps,
            });
        }
        check_len("model_output", model_output, sample)?;
        let noise = if SchedulerImpl::needs_noise_at(self, step_index) {
            let noise = noise.ok_or(SchedulerError::MissingNoise)?;
            check_len("noise", noise, sample)?;
            Some(noise)
        } else {
            None
        };
        if let Some(expected) = self.expected_step().filter(|&expected| expected != step_index) {
            return Err(SchedulerError::OutOfOrder {
                given: step_index,
                expected,
            });
        }
        let step = StepArgs {
            index: step_index,
            model_output,
            noise,
        };
        self.advance(step, sample)
    }
}

fn check_len(name: &'static str, values: &[f32], sample: &[f32]) -> Result<(), SchedulerError> {
    if values.len() == sample.len() {
        Ok(())
    } else {
        Err(SchedulerError::LengthMismatch {
            name,
            given: values.len(),
            expected: sample.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_aliases_resolve() {
        for kind in SchedulerKind::ALL {
            assert_eq!(SchedulerKind::from_name(kind.name()).unwrap(), kind);
            assert_eq!(SchedulerKind::from_class_name(kind.class_name()), Some(kind));
        }
        let aliases = [
            ("euler_ancestral", SchedulerKind::EulerAncestral),
            ("dpmsolver++", SchedulerKind::DpmSolverMultistep),
            ("dpm_solver_multistep", SchedulerKind::DpmSolverMultistep),
            ("PLMS", SchedulerKind::Pndm),
            ("LCM", SchedulerKind::Lcm),
        ];
        for (alias, kind) in aliases {
            assert_eq!(SchedulerKind::from_name(alias).unwrap(), kind);
        }
        assert_eq!(SchedulerKind::from_class_name("LMSDiscreteScheduler"), None);
    }

    #[test]
    fn unknown_name_lists_accepted_names() {
        let err = SchedulerKind::from_name("heun").unwrap_err();
        let message = err.to_string();
        assert!(message.starts_with("unknown scheduler `heun`"), "{message}");
        for kind in SchedulerKind::ALL {
            assert!(message.contains(kind.name()), "{message}");
        }
    }

    #[test]
    fn step_counts_are_validated() {
        let config = SchedulerConfig::default();
        for steps in [0, 1001] {
            for kind in SchedulerKind::ALL {
                let err = build(kind, &config, steps, &SchedulerOptions::default()).err().unwrap();
                assert!(matches!(err, SchedulerError::InvalidSteps { given, max: 1000 } if given == steps));
            }
        }
    }

    #[test]
    fn every_kind_denoises_a_constant_prediction_to_finite_values() {
        let config = SchedulerConfig::from_json_str(config::tests::SD15_CONFIG).unwrap();
        for kind in SchedulerKind::ALL {
            let mut scheduler = build(kind, &config, 10, &SchedulerOptions { eta: 0.5 }).unwrap();
            let mut sample = vec![scheduler.init_noise_sigma(); 8];
            let noise = vec![0.25; 8];
            for step_index in 0..scheduler.timesteps().len() {
                let mut model_input = sample.clone();
                scheduler.scale_model_input(&mut model_input, step_index);
                let noise = scheduler.needs_noise_at(step_index).then_some(noise.as_slice());
                scheduler.step(&model_input, step_index, &mut sample, noise).unwrap();
            }
            assert!(sample.iter().all(|value| value.is_finite()), "{kind}: {sample:?}");
        }
    }

    #[test]
    fn step_rejects_mismatched_slices_and_missing_noise() {
        let config = SchedulerConfig::default();
        let mut ancestral = build(SchedulerKind::EulerAncestral, &config, 4, &SchedulerOptions::default()).unwrap();
        let mut sample = vec![0.0; 4];
        let err = ancestral.step(&[0.0; 3], 0, &mut sample, Some(&[0.0; 4])).unwrap_err();
        assert!(matches!(
            err,
            SchedulerError::LengthMismatch {
                name: "model_output",
                given: 3,
                expected: 4
            }
        ));
        let err = ancestral.step(&[0.0; 4], 0, &mut sample, None).unwrap_err();
        assert!(matches!(err, SchedulerError::MissingNoise));
        let err = ancestral.step(&[0.0; 4], 4, &mut sample, Some(&[0.0; 4])).unwrap_err();
        assert!(matches!(err, SchedulerError::StepOutOfRange { given: 4, steps: 4 }));
    }

    #[test]
    fn multistep_schedulers_refuse_skipped_steps() {
        let config = SchedulerConfig::default();
        for kind in [SchedulerKind::DpmSolverMultistep, SchedulerKind::Pndm] {
            let mut scheduler = build(kind, &config, 10, &SchedulerOptions::default()).unwrap();
            let mut sample = vec![0.5; 4];
            let err = scheduler.step(&[0.1; 4], 1, &mut sample, None).unwrap_err();
            assert!(
                matches!(err, SchedulerError::OutOfOrder { given: 1, expected: 0 }),
                "{kind}: {err}"
            );
        }
    }

    #[test]
    fn unsupported_configs_are_refused_naming_the_field() {
        use SchedulerKind::{Ddim, DpmSolverMultistep as Dpm, Euler, EulerAncestral, Lcm, Pndm};
        let refused = [
            (Ddim, r#"{"thresholding": true}"#, "thresholding"),
            (Ddim, r#"{"timestep_spacing": "trailing"}"#, "timestep_spacing"),
            (Euler, r#"{"use_beta_sigmas": true}"#, "use_beta_sigmas"),
            (
                Euler,
                r#"{"use_karras_sigmas": true, "use_exponential_sigmas": true}"#,
                "use_karras_sigmas",
            ),
            (Euler, r#"{"interpolation_type": "log_linear"}"#, "interpolation_type"),
            (EulerAncestral, r#"{"prediction_type": "sample"}"#, "prediction_type"),
            (Pndm, r#"{"prediction_type": "sample"}"#, "prediction_type"),
            (Dpm, r#"{"algorithm_type": "dpmsolver"}"#, "final_sigmas_type"),
            (Dpm, r#"{"solver_order": 4}"#, "solver_order"),
            (Dpm, r#"{"use_lu_lambdas": true}"#, "use_lu_lambdas"),
            (Dpm, r#"{"algorithm_type": "unipc"}"#, "algorithm_type"),
            (Lcm, r#"{"original_inference_steps": 5}"#, "original_inference_steps"),
            (Lcm, r#"{"thresholding": true}"#, "thresholding"),
        ];
        for (kind, json, field) in refused {
            let config = SchedulerConfig::from_json_str(json).unwrap();
            // 61 trailing steps make numpy's arange yield a timestep of -1.
            let steps = if field == "timestep_spacing" { 61 } else { 10 };
            let err = build(kind, &config, steps, &SchedulerOptions::default()).err().unwrap();
            assert!(matches!(err, SchedulerError::Unsupported(_)), "{kind} {json}: {err}");
            let message = err.to_string();
            assert!(message.contains(field), "{kind} {json}: {message}");
        }
        let config = SchedulerConfig::default();
        let err = build(SchedulerKind::Pndm, &config, 3, &SchedulerOptions::default())
            .err()
            .unwrap();
        assert!(err.to_string().contains("skip_prk_steps"), "{err}");
        let err = build(SchedulerKind::Ddim, &config, 10, &SchedulerOptions { eta: -1.0 })
            .err()
            .unwrap();
        assert!(err.to_string().contains("eta"), "{err}");
    }
}
