//! What a Stable Diffusion export's ONNX sessions look like: the fixed input names, how the UNet takes its
//! timestep, the output names read from each session, and a loaded session with its contract.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use half::f16;
use ort::session::{RunOptions, Session, SessionInputValue, SessionOutputs};
use ort::value::{DynValue, Tensor, TensorElementType, TensorRef, ValueType};

use crate::error::{Error, Result};
use crate::pipeline::model::{Family, ModelFolder};
use crate::runtime::contract::{ElementType, SessionContract, TensorSpec};
use crate::runtime::Runtime;

/// One ONNX session with the contract read from it, and the pipeline's shared run options (through which
/// another thread can stop a run in progress: [`Pipeline::run_options`](super::Pipeline::run_options)).
pub(super) struct Component {
    pub(super) name: &'static str,
    session: Session,
    pub(super) contract: SessionContract,
    run_options: Arc<RunOptions>,
    /// Run options that log nothing below a fatal error, for probes expected to fail.
    quiet_options: RunOptions,
}

impl Component {
    pub(super) fn load(
        runtime: &mut Runtime,
        model: &ModelFolder,
        name: &'static str,
        relative: &str,
        run_options: &Arc<RunOptions>,
    ) -> Result<Self> {
        let session = runtime.session(name, &model.onnx_path(relative))?;
        let contract = SessionContract::read(name, &session)?;
        let quiet_error = |err: ort::Error| Error::Internal(format!("cannot create ONNX run options: {err}"));
        let mut quiet_options = RunOptions::new().map_err(quiet_error)?;
        quiet_options
            .set_log_level(ort::logging::LogLevel::Fatal)
            .map_err(quiet_error)?;
        Ok(Component {
            name,
            session,
            contract,
            run_options: run_options.clone(),
            quiet_options,
        })
    }

    /// The session itself, for runs with bound inputs and outputs (`pipeline::resident`).
    pub(super) fn session_mut(&mut self) -> &mut Session {
        &mut self.session
    }

    /// The pipeline's shared run options this component runs with.
    pub(super) fn run_options(&self) -> Arc<RunOptions> {
        self.run_options.clone()
    }

    pub(super) fn run<'s>(
        &'s mut self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        ort_time: &mut Duration,
    ) -> Result<SessionOutputs<'s>> {
        self.run_with(inputs, false, ort_time)
    }

    /// [`Component::run`] with ONNX Runtime's own logging off, for a probe whose failure is an answer.
    pub(super) fn run_quietly<'s>(
        &'s mut self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        ort_time: &mut Duration,
    ) -> Result<SessionOutputs<'s>> {
        self.run_with(inputs, true, ort_time)
    }

    fn run_with<'s>(
        &'s mut self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        quiet: bool,
        ort_time: &mut Duration,
    ) -> Result<SessionOutputs<'s>> {
        let started = Instant::now();
        let name = self.name;
        let options = if quiet { &self.quiet_options } else { &*self.run_options };
        let outputs = self
            .session
            .run_with_options(inputs, options)
            .map_err(|err| inference_error(name, err))?;
        *ort_time += started.elapsed();
        Ok(outputs)
    }
}

pub(super) fn inference_error(component: &'static str, err: ort::Error) -> Error {
    Error::Inference {
        component,
        message: err.to_string(),
    }
}

/// How the UNet wants its timestep: exporters disagree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TimestepInput {
    /// Optimum ≥1.24: one float for the whole batch.
    FloatScalar,
    /// `[B]` floats.
    FloatBatch,
    /// Legacy exports: `[B]` int64.
    Int64Batch,
    Int64Scalar,
}

impl TimestepInput {
    pub(super) fn is_scalar(self) -> bool {
        matches!(self, TimestepInput::FloatScalar | TimestepInput::Int64Scalar)
    }

    /// Float timesteps may be float32 or float16 (an fp16 export's); [`float_input`] converts them.
    fn from_spec(spec: &TensorSpec) -> Result<Self> {
        match (spec.element, spec.rank()) {
            (ElementType::Float32 | ElementType::Float16, 0) => Ok(TimestepInput::FloatScalar),
            (ElementType::Float32 | ElementType::Float16, 1) => Ok(TimestepInput::FloatBatch),
            (ElementType::Int64, 1) => Ok(TimestepInput::Int64Batch),
            (ElementType::Int64, 0) => Ok(TimestepInput::Int64Scalar),
            _ => Err(Error::Runtime(format!(
                "the unet's timestep input is {}; supported: float32 or float16 scalar or [B], int64 scalar or [B]",
                spec.describe()
            ))),
        }
    }
}

// Input names are fixed by the Stable Diffusion export; output names vary, so `Contract` reads those.
pub(super) const INPUT_IDS: &str = "input_ids";
pub(super) const SAMPLE: &str = "sample";
pub(super) const TIMESTEP: &str = "timestep";
pub(super) const ENCODER_HIDDEN_STATES: &str = "encoder_hidden_states";
pub(super) const TEXT_EMBEDS: &str = "text_embeds";
pub(super) const TIME_IDS: &str = "time_ids";
/// A guidance-distilled UNet's (LCM's) guidance-scale embedding, `[batch, time_cond_proj_dim]`.
pub(super) const TIMESTEP_COND: &str = "timestep_cond";
pub(super) const LATENT_SAMPLE: &str = "latent_sample";

/// How this export differs from the others: id and timestep types, float16 inputs, and output names.
pub(super) struct Contract {
    /// One per text encoder, in the order their hidden states are concatenated.
    pub(super) text: Vec<TextContract>,
    /// SDXL's extra UNet inputs: the pooled text embedding's width and the number of time ids per row.
    pub(super) added_conditions: Option<AddedConditions>,
    pub(super) timestep_input: TimestepInput,
    /// A guidance-distilled UNet (LCM) takes the guidance scale as an embedding of this width instead of
    /// running classifier-free guidance.
    pub(super) timestep_cond: Option<usize>,
    pub(super) unet_output: String,
    pub(super) vae_output: String,
    /// Which float inputs the export declares float16 (Optimum's `--dtype fp16`); the pipeline computes in
    /// float32 and converts at the boundary.
    pub(super) half: HalfInputs,
}

/// What one text encoder takes and which of its outputs the pipeline reads.
pub(super) struct TextContract {
    pub(super) ids_int32: bool,
    /// The hidden states the UNet attends to: `last_hidden_state` for Stable Diffusion 1.x/2.x, the
    /// penultimate layer (`hidden_states.{n-2}` of n) for SDXL.
    pub(super) hidden_output: String,
    /// The pooled embedding SDXL's UNet takes as `text_embeds`: the output of the first encoder whose first
    /// output is `[batch, width]`, as diffusers picks it (the projection of `text_encoder_2`).
    pub(super) pooled_output: Option<String>,
}

/// SDXL's `text_embeds` and `time_ids` inputs, by width.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct AddedConditions {
    pub(super) pooled_width: usize,
    pub(super) time_ids: usize,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct HalfInputs {
    pub(super) sample: bool,
    pub(super) timestep: bool,
    pub(super) hidden_states: bool,
    pub(super) text_embeds: bool,
    pub(super) time_ids: bool,
    pub(super) timestep_cond: bool,
    pub(super) latent_sample: bool,
}

impl Contract {
    pub(super) fn read(
        family: Family,
        text_encoders: &[&SessionContract],
        unet: &SessionContract,
        vae: &SessionContract,
    ) -> Result<Self> {
        let mut text = Vec::with_capacity(text_encoders.len());
        let mut pooled_found = false;
        for encoder in text_encoders {
            let mut contract = TextContract::read(family, encoder)?;
            if pooled_found {
                contract.pooled_output = None;
            }
            pooled_found |= contract.pooled_output.is_some();
            text.push(contract);
        }
        let half = |spec: &TensorSpec| match spec.element {
            ElementType::Float32 => Ok(false),
            ElementType::Float16 => Ok(true),
            _ => Err(Error::Runtime(format!(
                "{} is neither float32 nor float16",
                spec.describe()
            ))),
        };
        let width = |name: &str| -> Result<(usize, bool)> {
            let spec = unet.input(name)?;
            match spec.shape.as_slice() {
                [_, width] if *width > 0 => Ok((*width as usize, half(spec)?)),
                _ => Err(Error::Runtime(format!(
                    "the unet's {} should be [batch, width] with a fixed width",
                    spec.describe()
                ))),
            }
        };
        let (added_conditions, half_text_embeds, half_time_ids) = if family.is_xl() {
            unet.reject_unknown_inputs(&[
                SAMPLE,
                TIMESTEP,
                ENCODER_HIDDEN_STATES,
                TEXT_EMBEDS,
                TIME_IDS,
                TIMESTEP_COND,
            ])?;
            if !pooled_found {
                return Err(Error::Runtime(
                    "no text encoder returns a pooled embedding ([batch, width] as its first output, as \
                     text_encoder_2's `text_embeds`), which SDXL's UNet takes"
                        .into(),
                ));
            }
            let (pooled_width, half_text_embeds) = width(TEXT_EMBEDS)?;
            let (time_ids, half_time_ids) = width(TIME_IDS)?;
            let expected = if family.aesthetic_scores() { 5 } else { 6 };
            if time_ids != expected {
                let form = if family.aesthetic_scores() {
                    "with requires_aesthetics_score in model_index.json, SDXL's refiner takes 5 (original size, \
                     crop corner, aesthetic score)"
                } else {
                    "without requires_aesthetics_score in model_index.json, SDXL base and Turbo take 6 (original \
                     size, crop corner, target size)"
                };
                return Err(Error::Runtime(format!(
                    "the unet takes {time_ids} time ids per row; {form}"
                )));
            }
            let conditions = AddedConditions { pooled_width, time_ids };
            (Some(conditions), half_text_embeds, half_time_ids)
        } else {
            unet.reject_unknown_inputs(&[SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES, TIMESTEP_COND])?;
            (None, false, false)
        };
        let (timestep_cond, half_timestep_cond) = if unet.inputs.iter().any(|spec| spec.name == TIMESTEP_COND) {
            let (width, half) = width(TIMESTEP_COND)?;
            (Some(width), half)
        } else {
            (None, false)
        };
        vae.reject_unknown_inputs(&[LATENT_SAMPLE])?;
        let timestep = unet.input(TIMESTEP)?;
        let half = HalfInputs {
            sample: half(unet.input(SAMPLE)?)?,
            timestep: timestep.element == ElementType::Float16,
            hidden_states: half(unet.input(ENCODER_HIDDEN_STATES)?)?,
            text_embeds: half_text_embeds,
            time_ids: half_time_ids,
            timestep_cond: half_timestep_cond,
            latent_sample: half(vae.input(LATENT_SAMPLE)?)?,
        };
        Ok(Contract {
            text,
            added_conditions,
            timestep_input: TimestepInput::from_spec(timestep)?,
            timestep_cond,
            unet_output: unet.output_or_first("out_sample")?.name.clone(),
            vae_output: vae.output_or_first("sample")?.name.clone(),
            half,
        })
    }
}

impl TextContract {
    fn read(family: Family, encoder: &SessionContract) -> Result<Self> {
        let input_ids = encoder.input(INPUT_IDS)?;
        let ids_int32 = match input_ids.element {
            ElementType::Int64 => false,
            ElementType::Int32 => true,
            _ => {
                return Err(Error::Runtime(format!(
                    "the {}'s input is {}; expected int64 or int32 ids",
                    encoder.component,
                    input_ids.describe()
                )))
            }
        };
        encoder.reject_unknown_inputs(&[INPUT_IDS])?;
        if !family.is_xl() {
            return Ok(TextContract {
                ids_int32,
                hidden_output: encoder.output_or_first("last_hidden_state")?.name.clone(),
                pooled_output: None,
            });
        }
        let layers = encoder
            .outputs
            .iter()
            .filter_map(|spec| spec.name.strip_prefix("hidden_states.")?.parse::<usize>().ok())
            .max()
            .map_or(0, |last| last + 1);
        if layers < 2 {
            return Err(Error::Runtime(format!(
                "the {} exports no hidden_states.N outputs; SDXL reads the penultimate layer's (export the \
                 pipeline with optimum, which adds them)",
                encoder.component
            )));
        }
        let hidden_output = format!("hidden_states.{}", layers - 2);
        let pooled_output = encoder
            .outputs
            .first()
            .filter(|spec| spec.rank() == 2)
            .map(|spec| spec.name.clone());
        Ok(TextContract {
            ids_int32,
            hidden_output,
            pooled_output,
        })
    }
}

/// A float32 tensor for an input the export declares float32 (a view, no copy) or float16 (converted).
pub(super) fn float_input<'v, const N: usize>(
    half: bool,
    shape: [usize; N],
    values: &'v [f32],
) -> ort::Result<SessionInputValue<'v>> {
    if half {
        let halves: Vec<f16> = values.iter().map(|&value| f16::from_f32(value)).collect();
        Ok(Tensor::from_array((shape, halves))?.into())
    } else {
        Ok(TensorRef::from_array_view((shape, values))?.into())
    }
}

/// An output's shape and values as float32: a float32 output borrowed as it is, a float16 one widened.
pub(super) fn float_output<'v>(component: &'static str, value: &'v DynValue) -> Result<(Vec<i64>, Cow<'v, [f32]>)> {
    let to_error = |err| inference_error(component, err);
    match value.dtype() {
        ValueType::Tensor {
            ty: TensorElementType::Float16,
            ..
        } => {
            let (shape, values) = value.try_extract_tensor::<f16>().map_err(to_error)?;
            let widened = values.iter().map(|value| value.to_f32()).collect();
            Ok((shape.to_vec(), Cow::Owned(widened)))
        }
        _ => {
            let (shape, values) = value.try_extract_tensor::<f32>().map_err(to_error)?;
            Ok((shape.to_vec(), Cow::Borrowed(values)))
        }
    }
}
