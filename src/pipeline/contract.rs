//! What a Stable Diffusion export's ONNX sessions look like: the fixed input names, how the UNet takes its
//! timestep, the output names read from each session, and a loaded session with its contract.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::{RunOptions, Session, SessionInputValue, SessionOutputs};

use crate::error::{Error, Result};
use crate::pipeline::model::ModelFolder;
use crate::runtime::contract::{ElementType, SessionContract, TensorSpec};
use crate::runtime::Runtime;

/// One ONNX session with the contract read from it, and the pipeline's shared run options (through which
/// another thread can stop a run in progress: [`Pipeline::run_options`](super::Pipeline::run_options)).
pub(super) struct Component {
    pub(super) name: &'static str,
    session: Session,
    pub(super) contract: SessionContract,
    run_options: Arc<RunOptions>,
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
        Ok(Component {
            name,
            session,
            contract,
            run_options: run_options.clone(),
        })
    }

    pub(super) fn run<'s>(
        &'s mut self,
        inputs: Vec<(Cow<'_, str>, SessionInputValue<'_>)>,
        ort_time: &mut Duration,
    ) -> Result<SessionOutputs<'s>> {
        let started = Instant::now();
        let name = self.name;
        let outputs = self
            .session
            .run_with_options(inputs, &self.run_options)
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

    fn from_spec(spec: &TensorSpec) -> Result<Self> {
        match (spec.element, spec.rank()) {
            (ElementType::Float32, 0) => Ok(TimestepInput::FloatScalar),
            (ElementType::Float32, 1) => Ok(TimestepInput::FloatBatch),
            (ElementType::Int64, 1) => Ok(TimestepInput::Int64Batch),
            (ElementType::Int64, 0) => Ok(TimestepInput::Int64Scalar),
            _ => Err(Error::Runtime(format!(
                "the unet's timestep input is {}; supported: float32 scalar or [B], int64 scalar or [B]",
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
pub(super) const LATENT_SAMPLE: &str = "latent_sample";

/// How this export differs from the others: id and timestep types, and output names.
pub(super) struct Contract {
    pub(super) ids_int32: bool,
    pub(super) text_output: String,
    pub(super) timestep_input: TimestepInput,
    pub(super) unet_output: String,
    pub(super) vae_output: String,
}

impl Contract {
    pub(super) fn read(text_encoder: &SessionContract, unet: &SessionContract, vae: &SessionContract) -> Result<Self> {
        let input_ids = text_encoder.input(INPUT_IDS)?;
        let ids_int32 = match input_ids.element {
            ElementType::Int64 => false,
            ElementType::Int32 => true,
            _ => {
                return Err(Error::Runtime(format!(
                    "the text encoder's input is {}; expected int64 or int32 ids",
                    input_ids.describe()
                )))
            }
        };
        text_encoder.reject_unknown_inputs(&[INPUT_IDS])?;
        unet.reject_unknown_inputs(&[SAMPLE, TIMESTEP, ENCODER_HIDDEN_STATES])?;
        vae.reject_unknown_inputs(&[LATENT_SAMPLE])?;
        for spec in [
            unet.input(SAMPLE)?,
            unet.input(ENCODER_HIDDEN_STATES)?,
            vae.input(LATENT_SAMPLE)?,
        ] {
            if spec.element != ElementType::Float32 {
                return Err(Error::Runtime(format!(
                    "{} is not float32; float16 exports are not supported yet, export in float32",
                    spec.describe()
                )));
            }
        }
        let timestep = unet.input(TIMESTEP)?;
        Ok(Contract {
            ids_int32,
            text_output: text_encoder.output_or_first("last_hidden_state")?.name.clone(),
            timestep_input: TimestepInput::from_spec(timestep)?,
            unet_output: unet.output_or_first("out_sample")?.name.clone(),
            vae_output: vae.output_or_first("sample")?.name.clone(),
        })
    }
}
