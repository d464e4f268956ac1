//! The device-resident denoising loop: latents, text embeddings and the schedulers' history stay where the
//! UNet runs, from the first step to the VAE's input; only the decoded image comes back.
//!
//! Each request's schedule is compiled to linear steps ([`LinearPlan`]), so that guidance and the scheduler's
//! step for every unit of a UNet call run as one small graph on the device. Three graphs, written here and
//! built once per number of units in a call, surround the model's sessions:
//! - **compose**: each unit's current sample (its state's slot 0), scaled for the UNet and repeated for
//!   guidance, concatenated into the call's `sample`; the units' conditioning concatenated likewise;
//! - **advance**: from the UNet's output, each unit's next state, `coefficients @ [state, uncond, cond, noise]`;
//! - **decode**: the units' final samples, unscaled for the VAE, as its `latent_sample`.
//!
//! What goes up per step are scalars (timesteps, each plan's coefficients, row indices) and, for stochastic
//! schedulers, the step's noise, drawn on the host from the same seeded streams as the host loop's. On the
//! CPU provider "the device" is host memory: the same code runs, which is how it is tested against the host
//! loop here.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use half::f16;
use ort::memory::{AllocationDevice, MemoryInfo};
use ort::session::{RunOptions, Session};
use ort::value::{DynValue, Tensor};

use crate::error::{Error, Result};
use crate::pipeline::contract::Component;
use crate::pipeline::scheduler::linear::{LinearPlan, STEP_INPUTS};
use crate::runtime::contract::ElementType;
use crate::runtime::graph::{Attribute, GraphBuilder};
use crate::runtime::{host_memory, ExecutionProvider, GraphSessions};

/// The most units one call's graphs are built for; calls with more units are refused (the batcher's calls
/// hold far fewer: a unit has at least one UNet row).
const MOST_UNITS: usize = 256;

/// One UNet conditioning input that each unit uploads once and the compose graph concatenates per call.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    pub(super) name: &'static str,
    pub(super) element: ElementType,
    pub(super) rank: usize,
}

/// The element types at the edges of the model's sessions.
#[derive(Debug, Clone)]
pub(super) struct Edges {
    /// The UNet's `sample` input.
    pub(super) sample: ElementType,
    /// The UNet's output.
    pub(super) prediction: ElementType,
    /// The VAE decoder's `latent_sample` input.
    pub(super) latent: ElementType,
    pub(super) conditions: Vec<Condition>,
}

/// The device graphs of one pipeline, built on first use for each number of units.
pub(super) struct Resident {
    graphs: GraphSessions,
    device: MemoryInfo<'static>,
    edges: Edges,
    compose: HashMap<usize, Session>,
    advance: HashMap<usize, Session>,
    decode: HashMap<usize, Session>,
}

/// One unit's state on the device: `[images, slots, per_image]` float32, slot 0 the current sample, and its
/// conditioning rows, in the UNet's types.
pub(super) struct UnitState {
    pub(super) plan: LinearPlan,
    pub(super) state: DynValue,
    pub(super) conditions: Vec<DynValue>,
    /// How many UNet rows the unit's images take: 2 with guidance, else 1.
    pub(super) copies: usize,
}

/// One unit's part of a resident step.
pub(super) struct UnitStep<'a> {
    pub(super) unit: &'a UnitState,
    pub(super) images: usize,
    pub(super) step: usize,
    /// The step's noise, `[images, per_image]`; zeros when the step reads none.
    pub(super) noise: Vec<f32>,
}

impl Resident {
    pub(super) fn new(graphs: GraphSessions, edges: Edges) -> Result<Self> {
        let device = graphs
            .provider()
            .memory_info()
            .map_err(|err| runtime_error("device memory", err))?;
        Ok(Resident {
            graphs,
            device,
            edges,
            compose: HashMap::new(),
            advance: HashMap::new(),
            decode: HashMap::new(),
        })
    }

    pub(super) fn edges(&self) -> &Edges {
        &self.edges
    }

    /// Uploads a unit's initial latents (`[images, per_image]`) as its state, and its conditioning.
    pub(super) fn start_unit(
        &self,
        plan: LinearPlan,
        latents: &[f32],
        images: usize,
        copies: usize,
        conditions: Vec<(Vec<usize>, Vec<f32>)>,
    ) -> Result<UnitState> {
        let per_image = latents.len() / images.max(1);
        let mut state = vec![0.0f32; images * plan.slots * per_image];
        for (image, latent) in latents.chunks_exact(per_image.max(1)).enumerate() {
            let at = image * plan.slots * per_image;
            state[at..at + per_image].copy_from_slice(latent);
        }
        let state = self.upload_f32(vec![images, plan.slots, per_image], state)?;
        let conditions = conditions
            .into_iter()
            .zip(&self.edges.conditions)
            .map(|((shape, values), condition)| self.upload(condition.element, shape, values))
            .collect::<Result<Vec<_>>>()?;
        Ok(UnitState {
            plan,
            state,
            conditions,
            copies,
        })
    }

    /// The UNet call's `sample` and conditioning inputs, composed on the device from the units' states.
    /// `latent` is `[channels, height, width]`.
    pub(super) fn compose(
        &mut self,
        units: &[UnitStep<'_>],
        latent: [usize; 3],
        options: &RunOptions,
        ort_time: &mut Duration,
    ) -> Result<Vec<DynValue>> {
        let count = check_units(units.len())?;
        if !self.compose.contains_key(&count) {
            let graph = compose_graph(count, &self.edges);
            let session = self.graphs.session("compose", &graph)?;
            self.compose.insert(count, session);
        }
        let shape = host_i64(vec![4], vec![-1, latent[0] as i64, latent[1] as i64, latent[2] as i64])?;
        let mut owned: Vec<(String, DynValue)> = vec![("sample_shape".into(), shape)];
        for (index, unit) in units.iter().enumerate() {
            let scale = unit_step(unit)?.input_scale;
            owned.push((format!("scale_{index}"), host_f32(vec![1], vec![scale])?));
            owned.push((
                format!("copies_{index}"),
                host_i64(vec![4], vec![unit.unit.copies as i64, 1, 1, 1])?,
            ));
        }
        let mut inputs: Vec<(String, &DynValue)> = owned.iter().map(|(name, value)| (name.clone(), value)).collect();
        for (index, unit) in units.iter().enumerate() {
            inputs.push((format!("state_{index}"), &unit.unit.state));
            for (condition, value) in self.edges.conditions.iter().zip(&unit.unit.conditions) {
                inputs.push((format!("{}_{index}", condition.name), value));
            }
        }
        let mut outputs = vec!["sample".to_string()];
        outputs.extend(self.edges.conditions.iter().map(|condition| condition.name.to_string()));
        let session = self
            .compose
            .get_mut(&count)
            .ok_or_else(|| Error::Internal("the compose graph was not built".into()))?;
        run_bound(session, "compose", options, &inputs, &outputs, &self.device, ort_time)
    }

    /// Each unit's next state, from the UNet's `prediction` (its rows in the units' order).
    pub(super) fn advance(
        &mut self,
        units: &[UnitStep<'_>],
        prediction: &DynValue,
        options: &RunOptions,
        ort_time: &mut Duration,
    ) -> Result<Vec<DynValue>> {
        let count = check_units(units.len())?;
        if !self.advance.contains_key(&count) {
            let graph = advance_graph(count, self.edges.prediction);
            let session = self.graphs.session("advance", &graph)?;
            self.advance.insert(count, session);
        }
        let mut owned: Vec<(String, DynValue)> = Vec::new();
        let mut row = 0i64;
        for (index, unit) in units.iter().enumerate() {
            let step = unit_step(unit)?;
            let slots = unit.unit.plan.slots;
            let images = unit.images as i64;
            let uncond: Vec<i64> = (row..row + images).collect();
            let cond: Vec<i64> = if unit.unit.copies == 2 {
                (row + images..row + 2 * images).collect()
            } else {
                uncond.clone()
            };
            row += images * unit.unit.copies as i64;
            let per_image = unit.noise.len() / unit.images.max(1);
            owned.push((
                format!("coefficients_{index}"),
                host_f32(vec![slots, slots + STEP_INPUTS], step.coefficients.clone())?,
            ));
            owned.push((
                format!("noise_{index}"),
                // Bound from the host: ONNX Runtime copies it up as the graph's input.
                host_f32(vec![unit.images, per_image], unit.noise.clone())?,
            ));
            owned.push((format!("uncond_rows_{index}"), host_i64(vec![unit.images], uncond)?));
            owned.push((format!("cond_rows_{index}"), host_i64(vec![unit.images], cond)?));
        }
        let mut inputs: Vec<(String, &DynValue)> = owned.iter().map(|(name, value)| (name.clone(), value)).collect();
        inputs.push(("prediction".into(), prediction));
        for (index, unit) in units.iter().enumerate() {
            inputs.push((format!("state_{index}"), &unit.unit.state));
        }
        let outputs: Vec<String> = (0..count).map(|index| format!("state_out_{index}")).collect();
        let session = self
            .advance
            .get_mut(&count)
            .ok_or_else(|| Error::Internal("the advance graph was not built".into()))?;
        run_bound(session, "advance", options, &inputs, &outputs, &self.device, ort_time)
    }

    /// The VAE's `latent_sample` for the units' final samples: `sample · scale + shift`, in the VAE's type.
    pub(super) fn decode_input(
        &mut self,
        states: &[&DynValue],
        latent: [usize; 3],
        scale: f32,
        shift: f32,
        options: &RunOptions,
        ort_time: &mut Duration,
    ) -> Result<DynValue> {
        let count = check_units(states.len())?;
        if !self.decode.contains_key(&count) {
            let graph = decode_graph(count, self.edges.latent);
            let session = self.graphs.session("decode", &graph)?;
            self.decode.insert(count, session);
        }
        let owned = [
            (
                "sample_shape".to_string(),
                host_i64(vec![4], vec![-1, latent[0] as i64, latent[1] as i64, latent[2] as i64])?,
            ),
            ("scale".to_string(), host_f32(vec![1], vec![scale])?),
            ("shift".to_string(), host_f32(vec![1], vec![shift])?),
        ];
        let mut inputs: Vec<(String, &DynValue)> = owned.iter().map(|(name, value)| (name.clone(), value)).collect();
        for (index, state) in states.iter().enumerate() {
            inputs.push((format!("state_{index}"), state));
        }
        let session = self
            .decode
            .get_mut(&count)
            .ok_or_else(|| Error::Internal("the decode graph was not built".into()))?;
        let mut outputs = run_bound(
            session,
            "decode",
            options,
            &inputs,
            &["latent_sample".to_string()],
            &self.device,
            ort_time,
        )?;
        outputs
            .pop()
            .ok_or_else(|| Error::Internal("the decode graph returned nothing".into()))
    }

    /// Runs one of the model's sessions on device-resident inputs; its outputs stay on the device, or come
    /// to the host with `to_host`.
    pub(super) fn run_model(
        &self,
        component: &mut Component,
        inputs: &[(String, &DynValue)],
        outputs: &[String],
        to_host: bool,
        ort_time: &mut Duration,
    ) -> Result<Vec<DynValue>> {
        let memory = if to_host {
            host_memory().map_err(|err| runtime_error("host memory", err))?
        } else {
            self.device.clone()
        };
        let options = component.run_options();
        let name = component.name;
        run_bound(
            component.session_mut(),
            name,
            &options,
            inputs,
            outputs,
            &memory,
            ort_time,
        )
    }

    fn upload_f32(&self, shape: Vec<usize>, values: Vec<f32>) -> Result<DynValue> {
        self.upload(ElementType::Float32, shape, values)
    }

    /// A host tensor of `values` as `element` (float32 or float16), moved to the device.
    pub(super) fn upload(&self, element: ElementType, shape: Vec<usize>, values: Vec<f32>) -> Result<DynValue> {
        let to_error = |err| runtime_error("an upload", err);
        match (element, self.graphs.provider()) {
            (ElementType::Float16, provider) => {
                let halves: Vec<f16> = values.iter().map(|&value| f16::from_f32(value)).collect();
                let tensor = Tensor::from_array((shape, halves)).map_err(to_error)?;
                to_device(tensor, provider).map_err(to_error)
            }
            (_, provider) => {
                let tensor = Tensor::from_array((shape, values)).map_err(to_error)?;
                to_device(tensor, provider).map_err(to_error)
            }
        }
    }
}

fn to_device<T: ort::value::PrimitiveTensorElementType + std::fmt::Debug>(
    tensor: Tensor<T>,
    provider: ExecutionProvider,
) -> ort::Result<DynValue> {
    match provider {
        ExecutionProvider::Cpu => Ok(tensor.into_dyn()),
        ExecutionProvider::Cuda(id) => Ok(tensor.to(AllocationDevice::CUDA, id)?.into_dyn()),
    }
}

fn unit_step<'a>(unit: &'a UnitStep<'_>) -> Result<&'a crate::pipeline::scheduler::linear::LinearStep> {
    let plan = &unit.unit.plan;
    let first = plan.steps.first().map_or(0, |step| step.index);
    plan.steps
        .get(unit.step.wrapping_sub(first))
        .filter(|step| step.index == unit.step)
        .ok_or_else(|| Error::Internal(format!("step {} is not in the unit's plan", unit.step)))
}

fn check_units(count: usize) -> Result<usize> {
    if count == 0 || count > MOST_UNITS {
        return Err(Error::Internal(format!(
            "a resident call takes 1 to {MOST_UNITS} units; given {count}"
        )));
    }
    Ok(count)
}

fn host_f32(shape: Vec<usize>, values: Vec<f32>) -> Result<DynValue> {
    Tensor::from_array((shape, values))
        .map(Tensor::into_dyn)
        .map_err(|err| runtime_error("a host tensor", err))
}

fn host_i64(shape: Vec<usize>, values: Vec<i64>) -> Result<DynValue> {
    Tensor::from_array((shape, values))
        .map(Tensor::into_dyn)
        .map_err(|err| runtime_error("a host tensor", err))
}

fn runtime_error(what: &str, err: ort::Error) -> Error {
    Error::Runtime(format!("device-resident loop, {what}: {err}"))
}

/// One run with its inputs bound as they lie and its outputs allocated in `memory`.
fn run_bound(
    session: &mut Session,
    component: &'static str,
    options: &RunOptions,
    inputs: &[(String, &DynValue)],
    outputs: &[String],
    memory: &MemoryInfo<'_>,
    ort_time: &mut Duration,
) -> Result<Vec<DynValue>> {
    let to_error = |err: ort::Error| Error::Inference {
        component,
        message: format!("{err} (in the device-resident loop; --resident-loop off keeps it on the host)"),
    };
    let started = Instant::now();
    let mut binding = session.create_binding().map_err(to_error)?;
    for (name, value) in inputs {
        binding.bind_input(name.as_str(), *value).map_err(to_error)?;
    }
    for name in outputs {
        binding.bind_output_to_device(name.as_str(), memory).map_err(to_error)?;
    }
    let mut results = session.run_binding_with_options(&binding, options).map_err(to_error)?;
    let values = outputs
        .iter()
        .map(|name| {
            results.remove(name.as_str()).ok_or_else(|| Error::Inference {
                component,
                message: format!("returned no `{name}`"),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    *ort_time += started.elapsed();
    Ok(values)
}

/// `sample = concat_i(tile(reshape(state_i[:, 0] · scale_i), copies_i))` in the UNet's type, and each
/// conditioning input concatenated over the units.
fn compose_graph(units: usize, edges: &Edges) -> Vec<u8> {
    let mut graph = GraphBuilder::new("t2i_compose");
    let shape = graph.input("sample_shape", ElementType::Int64, 1);
    let slot = graph.int_scalar(0);
    let mut parts = Vec::with_capacity(units);
    for index in 0..units {
        let state = graph.input(&format!("state_{index}"), ElementType::Float32, 3);
        let scale = graph.input(&format!("scale_{index}"), ElementType::Float32, 1);
        let copies = graph.input(&format!("copies_{index}"), ElementType::Int64, 1);
        let sample = graph.node("Gather", &[&state, &slot], &[Attribute::Int("axis", 1)]);
        let scaled = graph.node("Mul", &[&sample, &scale], &[]);
        let shaped = graph.node("Reshape", &[&scaled, &shape], &[]);
        parts.push(graph.node("Tile", &[&shaped, &copies], &[]));
    }
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    let sample = graph.node("Concat", &parts, &[Attribute::Int("axis", 0)]);
    let sample = graph.cast(&sample, ElementType::Float32, edges.sample);
    graph.output(&sample, "sample", edges.sample, 4);
    for condition in &edges.conditions {
        let names: Vec<String> = (0..units)
            .map(|index| {
                graph.input(
                    &format!("{}_{index}", condition.name),
                    condition.element,
                    condition.rank,
                )
            })
            .collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let joined = graph.node("Concat", &names, &[Attribute::Int("axis", 0)]);
        graph.output(&joined, condition.name, condition.element, condition.rank);
    }
    graph.finish()
}

/// `state_out_i = coefficients_i @ concat([state_i, prediction[uncond_rows_i], prediction[cond_rows_i],
/// noise_i], axis 1)`, the prediction read as float32 `[rows, 1, per_image]`.
fn advance_graph(units: usize, prediction: ElementType) -> Vec<u8> {
    let mut graph = GraphBuilder::new("t2i_advance");
    let input = graph.input("prediction", prediction, 4);
    let wide = graph.cast(&input, prediction, ElementType::Float32);
    let rows_shape = graph.ints(&[0, 1, -1]);
    let rows = graph.node("Reshape", &[&wide, &rows_shape], &[]);
    let axis_one = graph.ints(&[1]);
    for index in 0..units {
        let state = graph.input(&format!("state_{index}"), ElementType::Float32, 3);
        let coefficients = graph.input(&format!("coefficients_{index}"), ElementType::Float32, 2);
        let noise = graph.input(&format!("noise_{index}"), ElementType::Float32, 2);
        let uncond_rows = graph.input(&format!("uncond_rows_{index}"), ElementType::Int64, 1);
        let cond_rows = graph.input(&format!("cond_rows_{index}"), ElementType::Int64, 1);
        let uncond = graph.node("Gather", &[&rows, &uncond_rows], &[Attribute::Int("axis", 0)]);
        let cond = graph.node("Gather", &[&rows, &cond_rows], &[Attribute::Int("axis", 0)]);
        let noise = graph.node("Unsqueeze", &[&noise, &axis_one], &[]);
        let basis = graph.node(
            "Concat",
            &[&state, &uncond, &cond, &noise],
            &[Attribute::Int("axis", 1)],
        );
        let next = graph.node("MatMul", &[&coefficients, &basis], &[]);
        graph.output(&next, &format!("state_out_{index}"), ElementType::Float32, 3);
    }
    graph.finish()
}

/// `latent_sample = reshape(concat_i(state_i[:, 0]) · scale + shift)` in the VAE's type.
fn decode_graph(units: usize, latent: ElementType) -> Vec<u8> {
    let mut graph = GraphBuilder::new("t2i_decode");
    let shape = graph.input("sample_shape", ElementType::Int64, 1);
    let scale = graph.input("scale", ElementType::Float32, 1);
    let shift = graph.input("shift", ElementType::Float32, 1);
    let slot = graph.int_scalar(0);
    let samples: Vec<String> = (0..units)
        .map(|index| {
            let state = graph.input(&format!("state_{index}"), ElementType::Float32, 3);
            graph.node("Gather", &[&state, &slot], &[Attribute::Int("axis", 1)])
        })
        .collect();
    let samples: Vec<&str> = samples.iter().map(String::as_str).collect();
    let joined = graph.node("Concat", &samples, &[Attribute::Int("axis", 0)]);
    let scaled = graph.node("Mul", &[&joined, &scale], &[]);
    let shifted = graph.node("Add", &[&scaled, &shift], &[]);
    let shaped = graph.node("Reshape", &[&shifted, &shape], &[]);
    let cast = graph.cast(&shaped, ElementType::Float32, latent);
    graph.output(&cast, "latent_sample", latent, 4);
    graph.finish()
}
