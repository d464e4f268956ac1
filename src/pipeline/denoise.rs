//! The Stable Diffusion denoising loop over the ONNX sessions of an export: text encoder(s), UNet, VAE decoder.
//!
//! Classifier-free guidance runs in one UNet call at batch 2n (negatives first, as diffusers orders them).
//! SDXL conditions the UNet on two text encoders' penultimate hidden states side by side, on the second's
//! pooled embedding (`text_embeds`) and on `time_ids`; Stable Diffusion 1.x/2.x on one encoder's last hidden
//! state. A guidance-distilled UNet (LCM) takes the guidance scale as an embedding (`timestep_cond`) and runs
//! one row per image.
//! A `Pipeline` owns its sessions; because `Session::run` takes `&mut self`, one worker thread owns one pipeline.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, Instant};

use ort::session::{RunOptions, SessionInputValue};
use ort::value::{DynValue, TensorRef};

use crate::error::{Error, Result};
use crate::pipeline::contract::{
    float_input, float_output, inference_error, Component, Contract, TimestepInput, ENCODER_HIDDEN_STATES, INPUT_IDS,
    LATENT_SAMPLE, SAMPLE, TEXT_EMBEDS, TIMESTEP, TIMESTEP_COND, TIME_IDS,
};
use crate::pipeline::image::to_rgb8;
use crate::pipeline::model::{Family, ModelFolder, UNET_ONNX, VAE_DECODER_ONNX, VAE_ENCODER_ONNX};
use crate::pipeline::noise::NoiseSource;
use crate::pipeline::output::{GenerateOutput, Progress, Sampled, SampledImage, StageTimings};
use crate::pipeline::request::{AestheticScores, GenerateParams, ModelLimits};
use crate::pipeline::resident::{Condition, Edges, Resident, UnitState, UnitStep};
use crate::pipeline::scheduler::linear::LinearPlan;
use crate::pipeline::scheduler::{self, SchedulerOptions};
use crate::runtime::contract::{ElementType, TensorSpec};
use crate::runtime::{ExecutionProvider, ResidentLoop, Runtime};

pub struct Pipeline {
    model: Arc<ModelFolder>,
    provider: ExecutionProvider,
    run_options: Arc<RunOptions>,
    /// In the order of `model.text_encoders`.
    text_encoders: Vec<Component>,
    unet: Component,
    vae_decoder: Component,
    /// img2img's image encoder; `None` where the export has none (img2img requests are then refused).
    vae_encoder: Option<VaeEncoder>,
    contract: Contract,
    /// Widths and heights this export renders are multiples of this (see [`Pipeline::size_multiple`]).
    size_multiple: usize,
    /// The device-resident loop's graphs; `None` where the runtime keeps the loop on the host.
    resident: Option<Resident>,
    /// Whether `--resident-loop auto` chose the resident loop (rather than `on`), so that a warm-up that fails
    /// on it may fall back to the host loop.
    resident_by_auto: bool,
}

impl Pipeline {
    /// The run options every session of this pipeline runs with. `terminate()` on them, from any thread, stops
    /// the run in progress (ONNX Runtime checks between nodes) with an error; [`Pipeline::clear_termination`]
    /// must follow before the next run.
    pub fn run_options(&self) -> Arc<RunOptions> {
        self.run_options.clone()
    }

    /// Clears a termination, so that the next run goes ahead.
    pub fn clear_termination(&self) -> Result<()> {
        self.run_options
            .unterminate()
            .map_err(|err| Error::Internal(format!("cannot clear the run's terminate flag: {err}")))
    }

    /// Creates the sessions for `model` (its text encoders, UNet and VAE decoder) on the runtime's execution
    /// provider.
    pub fn load(runtime: &mut Runtime, model: Arc<ModelFolder>) -> Result<Self> {
        let run_options = Arc::new(
            RunOptions::new().map_err(|err| Error::Internal(format!("cannot create ONNX run options: {err}")))?,
        );
        let text_encoders = model
            .text_encoders
            .iter()
            .map(|encoder| Component::load(runtime, &model, encoder.name, encoder.onnx, &run_options))
            .collect::<Result<Vec<_>>>()?;
        let unet = Component::load(runtime, &model, "unet", UNET_ONNX, &run_options)?;
        let vae_decoder = Component::load(runtime, &model, "vae_decoder", VAE_DECODER_ONNX, &run_options)?;
        let vae_encoder = if model.has_vae_encoder {
            Some(VaeEncoder::load(runtime, &model, &run_options)?)
        } else {
            None
        };
        let text_contracts: Vec<_> = text_encoders.iter().map(|encoder| &encoder.contract).collect();
        let contract = Contract::read(model.family, &text_contracts, &unet.contract, &vae_decoder.contract)?;
        let size_multiple = model.size_multiple;
        let resident_by_auto = runtime.settings().resident_loop == ResidentLoop::Auto;
        let resident = if runtime.resident_loop() {
            let edges = resident_edges(&contract, &unet)?;
            Some(Resident::new(runtime.graph_sessions(), edges)?)
        } else {
            None
        };
        let mut pipeline = Pipeline {
            resident_by_auto,
            resident,
            provider: runtime.provider(),
            run_options,
            model,
            text_encoders,
            unet,
            vae_decoder,
            vae_encoder,
            contract,
            size_multiple,
        };
        let found = pipeline.model.any_latent_size.get().copied();
        let any_latent_size = match found {
            Some(any) => any,
            None => {
                let any = pipeline.renders_any_latent_size()?;
                // Another worker may have set it meanwhile, from the same files and the same answer.
                let _ = pipeline.model.any_latent_size.set(any);
                any
            }
        };
        if any_latent_size {
            pipeline.size_multiple = pipeline.model.vae_scale_factor;
        }
        Ok(pipeline)
    }

    /// Widths and heights this export renders are multiples of this many pixels. Every export renders
    /// multiples of the VAE factor times the UNet's downsampling. One traced with explicit upsample sizes
    /// (diffusers does so when the export's sample size is not a multiple of the downsampling) renders any
    /// latent size, so any multiple of the VAE factor, as diffusers itself does.
    pub fn size_multiple(&self) -> usize {
        self.size_multiple
    }

    /// Whether the UNet runs on a latent whose sides are not multiples of its downsampling. Exports traced with
    /// a fixed 2× upsampling cannot (their skip connections no longer line up), those traced with explicit
    /// sizes can; nothing in the session's metadata tells them apart, so one quiet UNet call at batch 1 on
    /// the smallest such latent does. Only a failure of that call's shapes says no: a session that cannot run
    /// at all fails the same way at the guaranteed multiple, in warm-up or the first request.
    fn renders_any_latent_size(&mut self) -> Result<bool> {
        let cells = self.model.size_multiple / self.model.vae_scale_factor.max(1);
        if cells <= 1 {
            return Ok(false);
        }
        let ids = self.tokenize(&[""], &mut Vec::new())?;
        let mut ort_run = Duration::ZERO;
        let embeddings = self
            .encode_units(&[&ids], &mut ort_run)?
            .pop()
            .ok_or_else(|| Error::Internal("the text encoder returned no rows".into()))?;
        let side = cells + 1;
        let sample = vec![0.0f32; self.model.latent_channels * side * side];
        let size = side * self.model.vae_scale_factor;
        let time_ids = self.time_ids(size, size, AestheticScores::default().score);
        let timestep_cond = vec![0.0f32; self.contract.timestep_cond.unwrap_or(0)];
        let inputs = UnetInputs {
            sample: &sample,
            sample_shape: [1, self.model.latent_channels, side, side],
            timesteps: &[1.0],
            hidden_states: &embeddings.values,
            hidden_shape: [1, embeddings.seq_len, embeddings.hidden],
            text_embeds: &embeddings.pooled,
            time_ids: &time_ids,
            timestep_cond: &timestep_cond,
        };
        let probe = self.run_unet(inputs, RunLogging::Quiet, &mut ort_run);
        Ok(probe.is_ok())
    }

    pub fn model(&self) -> &Arc<ModelFolder> {
        &self.model
    }

    /// Whether units this pipeline begins run the device-resident loop (where their request allows it).
    pub fn resident_loop(&self) -> bool {
        self.resident.is_some()
    }

    /// Whether the resident loop runs because `--resident-loop auto` chose it: a caller may then fall back to
    /// the host loop ([`Pipeline::leave_resident_loop`]) when it fails, where `on` must fail.
    pub fn resident_loop_by_auto(&self) -> bool {
        self.resident.is_some() && self.resident_by_auto
    }

    /// Runs every unit begun from now on on the host loop. Units already begun keep their device state and
    /// must be finished first.
    pub fn leave_resident_loop(&mut self) {
        self.resident = None;
    }

    pub fn provider(&self) -> ExecutionProvider {
        self.provider
    }

    pub fn limits(&self) -> ModelLimits {
        ModelLimits {
            size_multiple: self.size_multiple,
            default_height: round_to_multiple(self.model.default_height, self.size_multiple),
            default_width: round_to_multiple(self.model.default_width, self.size_multiple),
            default_scheduler: self.model.default_scheduler,
            default_steps: self.model.defaults.default_steps,
            default_guidance_scale: self.model.defaults.default_guidance_scale,
            img2img: self.vae_encoder.is_some(),
            requires_init_image: self.model.family.refines_images(),
        }
    }

    /// Says, in one line each, how this export's contract was read (for the start-up log).
    pub fn describe_contract(&self) -> Vec<String> {
        self.text_encoders
            .iter()
            .chain([&self.unet, &self.vae_decoder])
            .chain(self.vae_encoder.as_ref().map(|encoder| &encoder.component))
            .map(|component| {
                let specs =
                    |specs: &[TensorSpec]| specs.iter().map(TensorSpec::describe).collect::<Vec<_>>().join(", ");
                format!(
                    "{}: inputs {} -> outputs {}",
                    component.name,
                    specs(&component.contract.inputs),
                    specs(&component.contract.outputs)
                )
            })
            .collect()
    }

    /// Generates `params.num_images` images as PNGs. Starts from seeded noise (see `pipeline::noise`).
    pub fn generate(&mut self, params: &GenerateParams, progress: &mut dyn Progress) -> Result<GenerateOutput> {
        self.sample(params, progress)?.encode_all()
    }

    /// Generates `params.num_images` images as RGB bytes, for callers that choose among them before encoding.
    pub fn sample(&mut self, params: &GenerateParams, progress: &mut dyn Progress) -> Result<Sampled> {
        let latents = self.initial_latents(params);
        self.sample_from_latents(params, latents, progress)
    }

    /// The seeded initial latents of a request, before scaling by the scheduler's initial sigma. For img2img,
    /// each image's two draws instead: the noise that samples the encoded image's latent distribution, then the
    /// noise that `add_noise` mixes in, one latent's worth each.
    pub fn initial_latents(&self, params: &GenerateParams) -> Vec<f32> {
        let (height, width) = params.latent_size(self.model.vae_scale_factor);
        let draws = if params.init.is_some() { 2 } else { 1 };
        let per_image = self.model.latent_channels * height * width * draws;
        let mut latents = vec![0.0f32; per_image * params.num_images];
        for (index, chunk) in latents.chunks_exact_mut(per_image).enumerate() {
            NoiseSource::new(params.seed.wrapping_add(index as u64)).fill_normal(chunk);
        }
        latents
    }

    /// Generates from the given unscaled initial latents (`[n, C, h, w]`, row-major), as diffusers does when a
    /// caller passes `latents=`. Stochastic schedulers still draw their noise from the seeded streams.
    pub fn generate_from_latents(
        &mut self,
        params: &GenerateParams,
        latents: Vec<f32>,
        progress: &mut dyn Progress,
    ) -> Result<GenerateOutput> {
        self.sample_from_latents(params, latents, progress)?.encode_all()
    }

    /// `generate_from_latents` without the PNG encoding: one request alone through the same step-wise code
    /// the batcher drives (`begin`, `step`, `finish`).
    pub fn sample_from_latents(
        &mut self,
        params: &GenerateParams,
        latents: Vec<f32>,
        progress: &mut dyn Progress,
    ) -> Result<Sampled> {
        let mut unit = self
            .begin(vec![(params.clone(), latents)])
            .pop()
            .ok_or_else(|| Error::Internal("begin returned no unit".into()))??;
        while !unit.finished() {
            if progress.cancelled() {
                return Err(Error::Cancelled);
            }
            self.step(&mut [&mut unit])?;
            progress.on_step(unit.steps_done(), unit.steps_total());
        }
        self.finish(vec![unit])
            .pop()
            .ok_or_else(|| Error::Internal("finish returned no images".into()))?
    }

    /// Starts denoising each `(params, initial latents)`: one text-encoder call for all their prompts, then
    /// each unit's scheduler and scaled latents. Results come back in order; a unit that cannot start (its
    /// latents have the wrong length, its scheduler refuses the step count) fails alone.
    pub fn begin(&mut self, units: Vec<(GenerateParams, Vec<f32>)>) -> Vec<Result<Denoising>> {
        let started = Instant::now();
        let prepared: Vec<Result<Prepared>> = units
            .into_iter()
            .map(|(params, latents)| self.prepare(params, latents))
            .collect();
        let ids: Vec<&UnitIds> = prepared
            .iter()
            .filter_map(|unit| unit.as_ref().ok())
            .map(|unit| &unit.ids)
            .collect();
        let mut ort_run = Duration::ZERO;
        let encoded = if ids.is_empty() {
            Ok(Vec::new())
        } else {
            self.encode_units(&ids, &mut ort_run)
        };
        let text_encode = started.elapsed();
        let mut embeddings = match encoded {
            Ok(embeddings) => embeddings.into_iter(),
            Err(err) => {
                // The shared call failed: every unit that reached it fails with the same error.
                return prepared
                    .into_iter()
                    .map(|unit| unit.and_then(|_| Err(err.clone())))
                    .collect();
            }
        };
        prepared
            .into_iter()
            .map(|unit| {
                let unit = unit?;
                let embeddings = embeddings
                    .next()
                    .ok_or_else(|| Error::Internal("the text encoder returned too few rows".into()))?;
                let timings = StageTimings {
                    text_encode,
                    ort_run,
                    ..StageTimings::default()
                };
                let mut unit = unit.into_denoising(embeddings, timings);
                if unit.init_noise.is_some() {
                    let started = Instant::now();
                    let mut ort_run = Duration::ZERO;
                    self.noise_init_image(&mut unit, &mut ort_run)?;
                    unit.timings.text_encode += started.elapsed();
                    unit.timings.ort_run += ort_run;
                }
                self.make_resident(&mut unit)?;
                Ok(unit)
            })
            .collect()
    }

    /// img2img's start, as diffusers' `prepare_latents`: the VAE encodes the starting image once, each image
    /// samples the latent distribution with its first draw (`mean + exp(logvar / 2) · ε₁`, logvar clamped to
    /// [-30, 20]), scales it by the VAE's scaling factor and is noised to its first step with its second draw.
    fn noise_init_image(&mut self, unit: &mut Denoising, ort_time: &mut Duration) -> Result<()> {
        let (init, draws) = match (unit.params.init.clone(), unit.init_noise.take()) {
            (Some(init), Some(draws)) => (init, draws),
            _ => return Err(Error::Internal("an img2img unit lost its starting image".into())),
        };
        let encoder = self.vae_encoder.as_mut().ok_or_else(|| {
            Error::validation(
                "init_image",
                "this model's export has no vae_encoder/model.onnx, which img2img needs to encode the image",
            )
        })?;
        let (height, width) = (unit.params.height, unit.params.width);
        let shape = unit.shape;
        let per_image = shape.values();
        let to_error = |err| inference_error("vae_encoder", err);
        let inputs = vec![(
            Cow::from(SAMPLE),
            float_input(encoder.half_input, [1, 3, height, width], &init.pixels).map_err(to_error)?,
        )];
        let outputs = encoder.component.run(inputs, ort_time)?;
        let (out_shape, parameters) = float_output("vae_encoder", &outputs[encoder.output.as_str()])?;
        let expected = [1, 2 * shape.channels as i64, shape.height as i64, shape.width as i64];
        if out_shape != expected {
            return Err(Error::Inference {
                component: "vae_encoder",
                message: format!("returned {out_shape:?}; expected the mean and log-variance, {expected:?}"),
            });
        }
        let (mean, logvar) = parameters.split_at(per_image);
        let std: Vec<f32> = logvar
            .iter()
            .map(|&value| (0.5 * value.clamp(-30.0, 20.0)).exp())
            .collect();
        let (scale, shift) = (self.model.scaling_factor, self.model.shift_factor);
        let mut latents = Vec::with_capacity(per_image * unit.params.num_images);
        for image in draws.chunks_exact(2 * per_image) {
            let (posterior, noise) = image.split_at(per_image);
            let mut latent: Vec<f32> = (0..per_image)
                .map(|index| (mean[index] + std[index] * posterior[index] - shift) * scale)
                .collect();
            unit.scheduler
                .add_noise(&mut latent, noise, unit.first_step)
                .map_err(|err| Error::Internal(format!("img2img noising: {err}")))?;
            latents.extend(latent);
        }
        unit.latents = latents;
        Ok(())
    }

    /// Tokenizes one unit's prompts and builds its scheduler.
    fn prepare(&self, params: GenerateParams, mut latents: Vec<f32>) -> Result<Prepared> {
        let (latent_h, latent_w) = params.latent_size(self.model.vae_scale_factor);
        let channels = self.model.latent_channels;
        let draws = if params.init.is_some() { 2 } else { 1 };
        let per_image = channels * latent_h * latent_w * draws;
        if latents.len() != per_image * params.num_images {
            return Err(Error::Internal(format!(
                "initial latents have {} values; expected {}",
                latents.len(),
                per_image * params.num_images
            )));
        }
        // A guidance-distilled UNet (LCM) takes the scale as an input instead: one row per image.
        let guided = params.guidance_scale > 1.0 && self.contract.timestep_cond.is_none();
        let mut warnings = Vec::new();
        if self.contract.timestep_cond.is_some() && !params.negative_prompt.is_empty() {
            warnings.push(
                "negative_prompt has no effect: this model (a Latent Consistency Model) takes the guidance scale \
                 as an input and runs no classifier-free guidance"
                    .to_string(),
            );
        }
        if params.aesthetic_score.is_some() && !self.model.family.aesthetic_scores() {
            warnings.push(
                "aesthetic_score and negative_aesthetic_score have no effect: they condition SDXL's refiner \
                 (requires_aesthetics_score in model_index.json), and this model takes no aesthetic score"
                    .to_string(),
            );
        }
        let mut prompts = Vec::with_capacity(2);
        if guided {
            prompts.push(params.negative_prompt.as_str());
        }
        prompts.push(params.prompt.as_str());
        let mut ids = self.tokenize(&prompts, &mut warnings)?;
        // SDXL, as diffusers runs it when no negative prompt is given: zeros, not the empty prompt's embedding.
        let force_zeros = matches!(
            self.model.family,
            Family::StableDiffusionXl {
                force_zeros_for_empty_prompt: true,
                ..
            }
        );
        if guided && force_zeros && params.negative_prompt.is_empty() {
            ids.zero_rows[0] = true;
        }
        let time_ids = self.unit_time_ids(&params, guided);
        let timestep_cond = match self.contract.timestep_cond {
            Some(width) => guidance_embedding(params.guidance_scale, width).repeat(params.num_images),
            None => Vec::new(),
        };
        let mut scheduler = scheduler::build(
            params.scheduler,
            &self.model.scheduler_config,
            params.steps,
            &SchedulerOptions { eta: params.eta },
        )
        .map_err(|err| Error::validation("scheduler", err.to_string()))?;
        // img2img runs the schedule from a later step, from the encoded image noised to it (in `begin`).
        let first_step = match &params.init {
            Some(init) => init
                .first_step(params.steps)
                .min(scheduler.timesteps().len().saturating_sub(1)),
            None => 0,
        };
        scheduler
            .begin_at(first_step)
            .map_err(|err| Error::validation("strength", err.to_string()))?;
        let init_noise = if params.init.is_some() {
            Some(std::mem::take(&mut latents))
        } else {
            let sigma = scheduler.init_noise_sigma();
            latents.iter_mut().for_each(|value| *value *= sigma);
            None
        };
        // Step noise continues each image's stream past the values its initial latents took.
        let noise_sources: Vec<NoiseSource> = if scheduler.needs_noise() {
            (0..params.num_images)
                .map(|index| {
                    let mut source = NoiseSource::new(params.seed.wrapping_add(index as u64));
                    source.skip_normals(per_image);
                    source
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Prepared {
            ids,
            denoising: Denoising {
                shape: LatentShape {
                    channels,
                    height: latent_h,
                    width: latent_w,
                },
                guided,
                latents,
                hidden_states: Vec::new(),
                seq_len: 0,
                hidden: 0,
                text_embeds: Vec::new(),
                time_ids,
                timestep_cond,
                init_noise,
                first_step,
                timesteps: scheduler.timesteps().to_vec(),
                scheduler,
                noise_sources,
                step_index: first_step,
                resident: None,
                timings: StageTimings::default(),
                warnings,
                params,
            },
        })
    }

    /// One UNet call for every unit in `units`, each advanced by one step. The units must share a latent
    /// shape and, when this export takes one timestep for the whole batch, their next timestep; the batcher's
    /// planner only groups units that do. A failed call fails the step of every unit in it.
    pub fn step(&mut self, units: &mut [&mut Denoising]) -> Result<()> {
        let Some(first) = units.first() else {
            return Ok(());
        };
        let shape = first.shape;
        let (seq_len, hidden) = (first.seq_len, first.hidden);
        let shared_timestep = first.next_timestep();
        let mut rows = 0;
        for unit in units.iter() {
            if unit.finished() {
                return Err(Error::Internal("a finished unit was stepped".into()));
            }
            if unit.shape != shape || unit.seq_len != seq_len || unit.hidden != hidden {
                return Err(Error::Internal("units of different shapes were batched".into()));
            }
            if self.contract.timestep_input.is_scalar() && unit.next_timestep() != shared_timestep {
                return Err(Error::Internal(
                    "units at different timesteps were batched for a UNet that takes one timestep".into(),
                ));
            }
            rows += unit.unet_rows();
        }
        let resident = first.resident.is_some();
        if units.iter().any(|unit| unit.resident.is_some() != resident) {
            return Err(Error::Internal(
                "device-resident and host units were batched together".into(),
            ));
        }
        if resident {
            return self.step_resident(units, rows);
        }
        let started = Instant::now();
        let per_row = shape.values();
        let mut sample = Vec::with_capacity(rows * per_row);
        let mut timesteps = Vec::with_capacity(rows);
        let mut hidden_states = Vec::with_capacity(rows * seq_len * hidden);
        let mut text_embeds = Vec::new();
        let mut time_ids = Vec::new();
        let mut timestep_cond = Vec::new();
        for unit in units.iter() {
            let from = sample.len();
            for _ in 0..unit.copies() {
                sample.extend_from_slice(&unit.latents);
            }
            unit.scheduler.scale_model_input(&mut sample[from..], unit.step_index);
            timesteps.extend(std::iter::repeat_n(
                unit.next_timestep().unwrap_or(0.0),
                unit.unet_rows(),
            ));
            hidden_states.extend_from_slice(&unit.hidden_states);
            text_embeds.extend_from_slice(&unit.text_embeds);
            time_ids.extend_from_slice(&unit.time_ids);
            timestep_cond.extend_from_slice(&unit.timestep_cond);
        }
        let mut ort_run = Duration::ZERO;
        let inputs = UnetInputs {
            sample: &sample,
            sample_shape: [rows, shape.channels, shape.height, shape.width],
            timesteps: &timesteps,
            hidden_states: &hidden_states,
            hidden_shape: [rows, seq_len, hidden],
            text_embeds: &text_embeds,
            time_ids: &time_ids,
            timestep_cond: &timestep_cond,
        };
        let prediction = self.run_unet(inputs, RunLogging::Normal, &mut ort_run)?;
        let mut offset = 0;
        for unit in units.iter_mut() {
            let size = unit.unet_rows() * per_row;
            unit.apply(&prediction[offset..offset + size])?;
            offset += size;
            let elapsed = started.elapsed();
            unit.timings.ort_run += ort_run;
            unit.timings.denoise += elapsed;
            unit.timings.unet_steps.push(elapsed);
        }
        Ok(())
    }

    /// Gives `unit` its device state when the resident loop is on and the request's arithmetic is linear
    /// (no `clip_sample` clamp in its scheduler, no `guidance_rescale`); other units stay on the host.
    fn make_resident(&mut self, unit: &mut Denoising) -> Result<()> {
        let Some(resident) = self.resident.as_ref() else {
            return Ok(());
        };
        let params = &unit.params;
        let config = &self.model.scheduler_config;
        if params.guidance_rescale > 0.0 || config.clip_sample_range_for(params.scheduler).is_some() {
            return Ok(());
        }
        let options = SchedulerOptions { eta: params.eta };
        let mut scheduler = scheduler::build(params.scheduler, config, params.steps, &options)
            .map_err(|err| Error::validation("scheduler", err.to_string()))?;
        scheduler
            .begin_at(unit.first_step)
            .map_err(|err| Error::validation("strength", err.to_string()))?;
        let guidance = unit.guided.then_some(params.guidance_scale);
        let plan = LinearPlan::compile(scheduler.as_mut(), unit.first_step, guidance)
            .map_err(|err| Error::Internal(format!("the scheduler's linear plan: {err}")))?;
        let rows = unit.unet_rows();
        let mut conditions = Vec::with_capacity(resident.edges().conditions.len());
        for condition in &resident.edges().conditions {
            let (shape, values) = match condition.name {
                ENCODER_HIDDEN_STATES => (
                    vec![rows, unit.seq_len, unit.hidden],
                    std::mem::take(&mut unit.hidden_states),
                ),
                TEXT_EMBEDS => (vec![rows], std::mem::take(&mut unit.text_embeds)),
                TIME_IDS => (vec![rows], std::mem::take(&mut unit.time_ids)),
                TIMESTEP_COND => (vec![rows], std::mem::take(&mut unit.timestep_cond)),
                other => return Err(Error::Internal(format!("no values for the unet's `{other}`"))),
            };
            let shape = if shape.len() == 1 {
                if rows == 0 || values.len() % rows != 0 {
                    return Err(Error::Internal(format!(
                        "{} has {} values for {rows} rows",
                        condition.name,
                        values.len()
                    )));
                }
                vec![rows, values.len() / rows]
            } else {
                shape
            };
            conditions.push((shape, values));
        }
        let state = resident.start_unit(plan, &unit.latents, params.num_images, unit.copies(), conditions)?;
        unit.latents = Vec::new();
        unit.resident = Some(state);
        Ok(())
    }

    /// [`Pipeline::step`] for units whose tensors live on the device: compose the call's inputs there, run
    /// the UNet with its output kept there, and advance every unit with its linear step.
    fn step_resident(&mut self, units: &mut [&mut Denoising], rows: usize) -> Result<()> {
        let started = Instant::now();
        let Some(shape) = units.first().map(|unit| unit.shape) else {
            return Ok(());
        };
        let per_image = shape.values();
        let mut noises = Vec::with_capacity(units.len());
        for unit in units.iter_mut() {
            let mut noise = vec![0.0f32; unit.params.num_images * per_image];
            if unit.scheduler.needs_noise_at(unit.step_index) {
                for (chunk, source) in noise.chunks_exact_mut(per_image).zip(unit.noise_sources.iter_mut()) {
                    source.fill_normal(chunk);
                }
            }
            noises.push(noise);
        }
        let timesteps: Vec<f32> = units
            .iter()
            .flat_map(|unit| std::iter::repeat_n(unit.next_timestep().unwrap_or(0.0), unit.unet_rows()))
            .collect();
        let resident = self
            .resident
            .as_mut()
            .ok_or_else(|| Error::Internal("a resident unit reached a pipeline without the resident loop".into()))?;
        let timestep = resident_timestep(
            resident,
            self.contract.timestep_input,
            self.contract.half.timestep,
            &timesteps,
        )?;
        let steps = units
            .iter()
            .zip(noises)
            .map(|(unit, noise)| {
                Ok(UnitStep {
                    unit: unit
                        .resident
                        .as_ref()
                        .ok_or_else(|| Error::Internal("a host unit in a resident call".into()))?,
                    images: unit.params.num_images,
                    step: unit.step_index,
                    noise,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let latent = [shape.channels, shape.height, shape.width];
        let mut ort_run = Duration::ZERO;
        let composed = resident.compose(&steps, latent, &self.run_options, &mut ort_run)?;
        let mut inputs: Vec<(String, &DynValue)> = vec![(SAMPLE.into(), &composed[0]), (TIMESTEP.into(), &timestep)];
        for (condition, value) in resident.edges().conditions.iter().zip(&composed[1..]) {
            inputs.push((condition.name.into(), value));
        }
        let outputs = [self.contract.unet_output.clone()];
        let prediction = resident
            .run_model(&mut self.unet, &inputs, &outputs, false, &mut ort_run)?
            .pop()
            .ok_or_else(|| Error::Internal("the unet returned nothing".into()))?;
        let expected = [
            rows as i64,
            shape.channels as i64,
            shape.height as i64,
            shape.width as i64,
        ];
        match prediction.dtype() {
            ort::value::ValueType::Tensor { shape: returned, .. } if returned[..] == expected[..] => {}
            other => {
                return Err(Error::Inference {
                    component: "unet",
                    message: format!("returned {other:?}; expected a tensor of shape {expected:?}"),
                })
            }
        }
        let next = resident.advance(&steps, &prediction, &self.run_options, &mut ort_run)?;
        drop(steps);
        if next.len() != units.len() {
            return Err(Error::Internal("the advance graph returned too few states".into()));
        }
        let elapsed = started.elapsed();
        for (unit, state) in units.iter_mut().zip(next) {
            if let Some(resident) = unit.resident.as_mut() {
                resident.state = state;
            }
            unit.step_index += 1;
            unit.timings.ort_run += ort_run;
            unit.timings.denoise += elapsed;
            unit.timings.unet_steps.push(elapsed);
        }
        Ok(())
    }

    /// The VAE's pixels for resident units' final samples (`[n, 3, H, W]`, the one copy back to the host).
    fn decode_resident(
        &mut self,
        states: &[&DynValue],
        shape: LatentShape,
        ort_time: &mut Duration,
    ) -> Result<Vec<f32>> {
        let resident = self
            .resident
            .as_mut()
            .ok_or_else(|| Error::Internal("a resident unit reached a pipeline without the resident loop".into()))?;
        let latent = [shape.channels, shape.height, shape.width];
        let scale = 1.0 / self.model.scaling_factor;
        let input = resident.decode_input(
            states,
            latent,
            scale,
            self.model.shift_factor,
            &self.run_options,
            ort_time,
        )?;
        let outputs = [self.contract.vae_output.clone()];
        let inputs = [(LATENT_SAMPLE.to_string(), &input)];
        let decoded = resident
            .run_model(&mut self.vae_decoder, &inputs, &outputs, true, ort_time)?
            .pop()
            .ok_or_else(|| Error::Internal("the vae_decoder returned nothing".into()))?;
        let (_, values) = float_output("vae_decoder", &decoded)?;
        Ok(values.into_owned())
    }

    /// Decodes finished units: one VAE call for all units of the same size. Results come back in order.
    pub fn finish(&mut self, units: Vec<Denoising>) -> Vec<Result<Sampled>> {
        let mut results: Vec<Option<Result<Sampled>>> = (0..units.len()).map(|_| None).collect();
        let mut pending: Vec<(usize, Denoising)> = units.into_iter().enumerate().collect();
        while let Some((_, first)) = pending.first() {
            let shape = first.shape;
            let resident = first.resident.is_some();
            let (group, rest): (Vec<_>, Vec<_>) = pending
                .into_iter()
                .partition(|(_, unit)| unit.shape == shape && unit.resident.is_some() == resident);
            pending = rest;
            let started = Instant::now();
            let scale = 1.0 / self.model.scaling_factor;
            let shift = self.model.shift_factor;
            let images: usize = group.iter().map(|(_, unit)| unit.params.num_images).sum();
            let mut ort_run = Duration::ZERO;
            let decoded = if resident {
                let states: Vec<&DynValue> = group
                    .iter()
                    .filter_map(|(_, unit)| unit.resident.as_ref().map(|state| &state.state))
                    .collect();
                self.decode_resident(&states, shape, &mut ort_run)
            } else {
                let mut latents = Vec::with_capacity(images * shape.values());
                for (_, unit) in &group {
                    latents.extend(unit.latents.iter().map(|value| value * scale + shift));
                }
                self.run_vae(
                    &latents,
                    [images, shape.channels, shape.height, shape.width],
                    &mut ort_run,
                )
            };
            let decode = started.elapsed();
            match decoded {
                Err(err) => {
                    for (index, _) in group {
                        results[index] = Some(Err(err.clone()));
                    }
                }
                Ok(pixels) => {
                    let mut offset = 0;
                    for (index, unit) in group {
                        let params = &unit.params;
                        let size = 3 * params.height * params.width * params.num_images;
                        let slice = pixels.get(offset..offset + size);
                        offset += size;
                        results[index] = Some(match slice {
                            None => Err(Error::Inference {
                                component: "vae_decoder",
                                message: format!(
                                    "returned {} values; expected {images}x3x{}x{}",
                                    pixels.len(),
                                    params.height,
                                    params.width
                                ),
                            }),
                            Some(chw) => unit.into_sampled(chw, decode, ort_run),
                        });
                    }
                }
            }
        }
        results
            .into_iter()
            .map(|result| result.unwrap_or_else(|| Err(Error::Internal("a unit was not decoded".into()))))
            .collect()
    }

    /// Whether this export's UNet takes one timestep per batch row, so units at different steps share calls.
    pub fn per_row_timesteps(&self) -> bool {
        !self.contract.timestep_input.is_scalar()
    }

    /// Tokenizes `prompts` (a unit's rows) with every tokenizer of the model; a prompt cut to the tokenizer's
    /// length gets a warning (the first tokenizer's: a model's tokenizers share their length).
    fn tokenize(&self, prompts: &[&str], warnings: &mut Vec<String>) -> Result<UnitIds> {
        let mut per_encoder = Vec::with_capacity(self.model.text_encoders.len());
        for (index, encoder) in self.model.text_encoders.iter().enumerate() {
            let seq_len = encoder.tokenizer.max_length();
            let mut ids: Vec<i64> = Vec::with_capacity(seq_len * prompts.len());
            for (row, text) in prompts.iter().enumerate() {
                let tokens = encoder.tokenizer.encode(text)?;
                if index == 0 && tokens.truncated() {
                    let field = if row + 1 < prompts.len() {
                        "negative_prompt"
                    } else {
                        "prompt"
                    };
                    warnings.push(format!(
                        "`{field}` was cut to {seq_len} tokens (it had {}); the rest was ignored",
                        tokens.untruncated_len
                    ));
                }
                ids.extend(tokens.ids.iter().map(|&id| id as i64));
            }
            per_encoder.push(ids);
        }
        Ok(UnitIds {
            per_encoder,
            zero_rows: vec![false; prompts.len()],
        })
    }

    /// SDXL's `time_ids` for one UNet row: original size, crop corner (0, 0), then the target size or, for the
    /// refiner, the aesthetic score, as diffusers builds them when a request names only the size. Empty for
    /// families without them.
    fn time_ids(&self, height: usize, width: usize, aesthetic_score: f32) -> Vec<f32> {
        if self.contract.added_conditions.is_none() {
            return Vec::new();
        }
        let (height, width) = (height as f32, width as f32);
        if self.model.family.aesthetic_scores() {
            vec![height, width, 0.0, 0.0, aesthetic_score]
        } else {
            vec![height, width, 0.0, 0.0, height, width]
        }
    }

    /// A unit's time ids, laid out as its UNet rows: with guidance the negative rows (which, for the refiner,
    /// carry the negative aesthetic score) then the prompt's, one per image each.
    fn unit_time_ids(&self, params: &GenerateParams, guided: bool) -> Vec<f32> {
        let scores = params.aesthetic_score.unwrap_or_default();
        let positive = self.time_ids(params.height, params.width, scores.score);
        let mut rows = Vec::with_capacity(positive.len() * params.num_images * 2);
        if guided {
            let negative = self.time_ids(params.height, params.width, scores.negative);
            rows.extend(negative.repeat(params.num_images));
        }
        rows.extend(positive.repeat(params.num_images));
        rows
    }

    /// One call per text encoder for the token ids of several units (each one or two rows); returns each
    /// unit's rows of hidden states (the encoders' side by side) and, for SDXL, of pooled embeddings.
    fn encode_units(&mut self, units: &[&UnitIds], ort_time: &mut Duration) -> Result<Vec<Embeddings>> {
        let rows: usize = units.iter().map(|unit| unit.zero_rows.len()).sum();
        let mut hidden_parts: Vec<(Vec<f32>, usize)> = Vec::with_capacity(self.text_encoders.len());
        let mut pooled: Vec<f32> = Vec::new();
        let mut seq_len = 0;
        for index in 0..self.text_encoders.len() {
            let ids: Vec<i64> = units
                .iter()
                .flat_map(|unit| unit.per_encoder[index].iter().copied())
                .collect();
            let encoded = self.encode_ids(index, &ids, rows, ort_time)?;
            if index > 0 && encoded.seq_len != seq_len {
                return Err(Error::Inference {
                    component: self.text_encoders[index].name,
                    message: format!(
                        "returned {} positions; the first text encoder returned {seq_len}",
                        encoded.seq_len
                    ),
                });
            }
            seq_len = encoded.seq_len;
            if let Some(values) = encoded.pooled {
                pooled = values;
            }
            hidden_parts.push((encoded.hidden_states, encoded.hidden));
        }
        let hidden: usize = hidden_parts.iter().map(|(_, width)| width).sum();
        let pooled_width = pooled.len().checked_div(rows).unwrap_or(0);
        if let Some(conditions) = self.contract.added_conditions {
            if pooled_width != conditions.pooled_width {
                return Err(Error::Inference {
                    component: "text_encoder_2",
                    message: format!(
                        "the pooled embedding is {pooled_width} wide; the unet's text_embeds takes {}",
                        conditions.pooled_width
                    ),
                });
            }
        }
        // [rows, seq, h1] and [rows, seq, h2] side by side as [rows, seq, h1 + h2]; one encoder as it is.
        let mut values = if hidden_parts.len() == 1 {
            hidden_parts.pop().map(|(values, _)| values).unwrap_or_default()
        } else {
            let mut values = Vec::with_capacity(rows * seq_len * hidden);
            for position in 0..rows * seq_len {
                for (part, width) in &hidden_parts {
                    values.extend_from_slice(&part[position * width..(position + 1) * width]);
                }
            }
            values
        };
        let per_row = seq_len * hidden;
        let mut row = 0;
        let mut embeddings = Vec::with_capacity(units.len());
        for unit in units {
            let unit_rows = unit.zero_rows.len();
            for (offset, &zero) in unit.zero_rows.iter().enumerate() {
                if zero {
                    let at = row + offset;
                    values[at * per_row..(at + 1) * per_row].fill(0.0);
                    pooled[at * pooled_width..(at + 1) * pooled_width].fill(0.0);
                }
            }
            embeddings.push(Embeddings {
                values: values[row * per_row..(row + unit_rows) * per_row].to_vec(),
                rows: unit_rows,
                seq_len,
                hidden,
                pooled: pooled[row * pooled_width..(row + unit_rows) * pooled_width].to_vec(),
            });
            row += unit_rows;
        }
        Ok(embeddings)
    }

    /// One call of text encoder `index` on `rows` rows of ids.
    fn encode_ids(&mut self, index: usize, ids: &[i64], rows: usize, ort_time: &mut Duration) -> Result<Encoded> {
        let contract = &self.contract.text[index];
        let component = &mut self.text_encoders[index];
        let name = component.name;
        let seq_len = ids.len() / rows.max(1);
        let shape = [rows, seq_len];
        let ids32: Vec<i32>;
        let input = if contract.ids_int32 {
            ids32 = ids.iter().map(|&id| id as i32).collect();
            TensorRef::from_array_view((shape, ids32.as_slice())).map(SessionInputValue::from)
        } else {
            TensorRef::from_array_view((shape, ids)).map(SessionInputValue::from)
        }
        .map_err(|err| inference_error(name, err))?;
        let inputs = vec![(Cow::from(INPUT_IDS), input)];
        let outputs = component.run(inputs, ort_time)?;
        let (out_shape, values) = float_output(name, &outputs[contract.hidden_output.as_str()])?;
        if out_shape.len() != 3 || out_shape[0] as usize != rows {
            return Err(Error::Inference {
                component: name,
                message: format!("unexpected {} shape {out_shape:?}", contract.hidden_output),
            });
        }
        let pooled = match &contract.pooled_output {
            Some(output) => {
                let (shape, values) = float_output(name, &outputs[output.as_str()])?;
                if shape.len() != 2 || shape[0] as usize != rows {
                    return Err(Error::Inference {
                        component: name,
                        message: format!("unexpected {output} shape {shape:?}"),
                    });
                }
                Some(values.into_owned())
            }
            None => None,
        };
        Ok(Encoded {
            hidden_states: values.into_owned(),
            seq_len: out_shape[1] as usize,
            hidden: out_shape[2] as usize,
            pooled,
        })
    }

    fn run_unet(&mut self, inputs: UnetInputs<'_>, logging: RunLogging, ort_time: &mut Duration) -> Result<Vec<f32>> {
        let UnetInputs {
            sample,
            sample_shape,
            timesteps,
            hidden_states,
            hidden_shape,
            text_embeds,
            time_ids,
            timestep_cond,
        } = inputs;
        let batch = sample_shape[0];
        let to_error = |err| inference_error("unet", err);
        if timesteps.len() != batch {
            return Err(Error::Internal(format!(
                "{} timesteps for a UNet batch of {batch}",
                timesteps.len()
            )));
        }
        // torch's `.long()` truncates; legacy int64 exports expect the same.
        let int_batch: Vec<i64> = timesteps.iter().map(|&timestep| timestep as i64).collect();
        let half = self.contract.half;
        let timestep_value: SessionInputValue<'_> = match self.contract.timestep_input {
            TimestepInput::FloatScalar => float_input(half.timestep, [], &timesteps[..1]),
            TimestepInput::FloatBatch => float_input(half.timestep, [batch], timesteps),
            TimestepInput::Int64Batch => TensorRef::from_array_view(([batch], int_batch.as_slice())).map(Into::into),
            TimestepInput::Int64Scalar => TensorRef::from_array_view(((), &int_batch[..1])).map(Into::into),
        }
        .map_err(to_error)?;
        let mut inputs = vec![
            (
                Cow::from(SAMPLE),
                float_input(half.sample, sample_shape, sample).map_err(to_error)?,
            ),
            (Cow::from(TIMESTEP), timestep_value),
            (
                Cow::from(ENCODER_HIDDEN_STATES),
                float_input(half.hidden_states, hidden_shape, hidden_states).map_err(to_error)?,
            ),
        ];
        if let Some(conditions) = self.contract.added_conditions {
            if text_embeds.len() != batch * conditions.pooled_width || time_ids.len() != batch * conditions.time_ids {
                return Err(Error::Internal(format!(
                    "{} text_embeds and {} time_ids values for a UNet batch of {batch}",
                    text_embeds.len(),
                    time_ids.len()
                )));
            }
            inputs.push((
                Cow::from(TEXT_EMBEDS),
                float_input(half.text_embeds, [batch, conditions.pooled_width], text_embeds).map_err(to_error)?,
            ));
            inputs.push((
                Cow::from(TIME_IDS),
                float_input(half.time_ids, [batch, conditions.time_ids], time_ids).map_err(to_error)?,
            ));
        }
        if let Some(width) = self.contract.timestep_cond {
            if timestep_cond.len() != batch * width {
                return Err(Error::Internal(format!(
                    "{} timestep_cond values for a UNet batch of {batch}",
                    timestep_cond.len()
                )));
            }
            inputs.push((
                Cow::from(TIMESTEP_COND),
                float_input(half.timestep_cond, [batch, width], timestep_cond).map_err(to_error)?,
            ));
        }
        let outputs = match logging {
            RunLogging::Normal => self.unet.run(inputs, ort_time)?,
            RunLogging::Quiet => self.unet.run_quietly(inputs, ort_time)?,
        };
        let (_, values) = float_output("unet", &outputs[self.contract.unet_output.as_str()])?;
        if values.len() != sample.len() {
            return Err(Error::Inference {
                component: "unet",
                message: format!("returned {} values for a sample of {}", values.len(), sample.len()),
            });
        }
        Ok(values.into_owned())
    }

    fn run_vae(&mut self, latents: &[f32], shape: [usize; 4], ort_time: &mut Duration) -> Result<Vec<f32>> {
        let to_error = |err| inference_error("vae_decoder", err);
        let inputs = vec![(
            Cow::from(LATENT_SAMPLE),
            float_input(self.contract.half.latent_sample, shape, latents).map_err(to_error)?,
        )];
        let outputs = self.vae_decoder.run(inputs, ort_time)?;
        let (_, values) = float_output("vae_decoder", &outputs[self.contract.vae_output.as_str()])?;
        Ok(values.into_owned())
    }
}

/// The element types at the edges of the model's sessions, for the resident loop's graphs.
fn resident_edges(contract: &Contract, unet: &Component) -> Result<Edges> {
    let element = |half: bool| {
        if half {
            ElementType::Float16
        } else {
            ElementType::Float32
        }
    };
    let prediction = unet
        .contract
        .outputs
        .iter()
        .find(|spec| spec.name == contract.unet_output)
        .map(|spec| spec.element)
        .ok_or_else(|| Error::Runtime(format!("the unet has no output `{}`", contract.unet_output)))?;
    if !matches!(prediction, ElementType::Float32 | ElementType::Float16) {
        return Err(Error::Runtime(format!(
            "the unet's output `{}` is {prediction:?}; expected float32 or float16",
            contract.unet_output
        )));
    }
    let half = &contract.half;
    let mut conditions = vec![Condition {
        name: ENCODER_HIDDEN_STATES,
        element: element(half.hidden_states),
        rank: 3,
    }];
    if contract.added_conditions.is_some() {
        conditions.push(Condition {
            name: TEXT_EMBEDS,
            element: element(half.text_embeds),
            rank: 2,
        });
        conditions.push(Condition {
            name: TIME_IDS,
            element: element(half.time_ids),
            rank: 2,
        });
    }
    if contract.timestep_cond.is_some() {
        conditions.push(Condition {
            name: TIMESTEP_COND,
            element: element(half.timestep_cond),
            rank: 2,
        });
    }
    Ok(Edges {
        sample: element(half.sample),
        prediction,
        latent: element(half.latent_sample),
        conditions,
    })
}

/// The UNet's timestep input for a resident call, as the export takes it (see [`Pipeline::run_unet`]).
fn resident_timestep(resident: &Resident, input: TimestepInput, half: bool, timesteps: &[f32]) -> Result<DynValue> {
    let element = if half {
        ElementType::Float16
    } else {
        ElementType::Float32
    };
    let first = timesteps.first().copied().unwrap_or(0.0);
    let integer = |shape: Vec<usize>, values: Vec<i64>| {
        ort::value::Tensor::from_array((shape, values))
            .map(ort::value::Tensor::into_dyn)
            .map_err(|err| inference_error("unet", err))
    };
    match input {
        TimestepInput::FloatScalar => resident.upload(element, Vec::new(), vec![first]),
        TimestepInput::FloatBatch => resident.upload(element, vec![timesteps.len()], timesteps.to_vec()),
        // torch's `.long()` truncates; legacy int64 exports expect the same.
        TimestepInput::Int64Batch => integer(
            vec![timesteps.len()],
            timesteps.iter().map(|&timestep| timestep as i64).collect(),
        ),
        TimestepInput::Int64Scalar => integer(Vec::new(), vec![first as i64]),
    }
}

/// img2img's VAE encoder: its session, whether it takes float16, and the output holding the latent
/// distribution's mean and log-variance (Optimum's `latent_parameters`).
struct VaeEncoder {
    component: Component,
    half_input: bool,
    output: String,
}

impl VaeEncoder {
    fn load(runtime: &mut Runtime, model: &ModelFolder, run_options: &Arc<RunOptions>) -> Result<Self> {
        let component = Component::load(runtime, model, "vae_encoder", VAE_ENCODER_ONNX, run_options)?;
        component.contract.reject_unknown_inputs(&[SAMPLE])?;
        let half_input = component.contract.input(SAMPLE)?.element == ElementType::Float16;
        let output = component.contract.output_or_first("latent_parameters")?.name.clone();
        Ok(VaeEncoder {
            component,
            half_input,
            output,
        })
    }
}

/// diffusers' `get_guidance_scale_embedding` for one guidance scale, as the LCM pipeline calls it:
/// `w = (scale − 1) · 1000`, then `[sin(w·f), cos(w·f)]` over `width / 2` frequencies
/// `f_i = 10000^(−i / (width/2 − 1))`, zero-padded to an odd width, in float32 as torch computes it.
fn guidance_embedding(guidance_scale: f32, width: usize) -> Vec<f32> {
    let half = width / 2;
    let w = (guidance_scale - 1.0) * 1000.0;
    let exponent = 10000f32.ln() / (half as f32 - 1.0).max(1.0);
    let frequencies: Vec<f32> = (0..half).map(|index| (index as f32 * -exponent).exp()).collect();
    let mut embedding = Vec::with_capacity(width);
    embedding.extend(frequencies.iter().map(|frequency| (w * frequency).sin()));
    embedding.extend(frequencies.iter().map(|frequency| (w * frequency).cos()));
    embedding.resize(width, 0.0);
    embedding
}

/// One UNet call's float32 inputs, row-major, with their shapes.
struct UnetInputs<'a> {
    sample: &'a [f32],
    sample_shape: [usize; 4],
    timesteps: &'a [f32],
    hidden_states: &'a [f32],
    hidden_shape: [usize; 3],
    /// SDXL's `[batch, width]` pooled embeddings and `[batch, 6]` (refiner: 5) time ids; empty for other
    /// families.
    text_embeds: &'a [f32],
    time_ids: &'a [f32],
    /// LCM's `[batch, time_cond_proj_dim]` guidance embeddings; empty for other UNets.
    timestep_cond: &'a [f32],
}

/// Whether ONNX Runtime logs a failed run: a probe expected to fail runs quietly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RunLogging {
    Normal,
    Quiet,
}

/// `size` if it is a multiple of `multiple`, else the nearest multiple (at least `multiple`), so that a
/// model whose own default this export cannot render still has a default it can.
fn round_to_multiple(size: usize, multiple: usize) -> usize {
    let multiple = multiple.max(1);
    let rounded = (size + multiple / 2) / multiple * multiple;
    rounded.max(multiple)
}

/// One unit's text conditioning: hidden states `[rows, seq_len, hidden]` and (SDXL) pooled `[rows, width]`.
struct Embeddings {
    values: Vec<f32>,
    /// 1 (prompt) or 2 (negative, prompt).
    rows: usize,
    seq_len: usize,
    hidden: usize,
    /// Empty for families without pooled embeddings.
    pooled: Vec<f32>,
}

/// One text encoder's output for a batch of rows.
struct Encoded {
    hidden_states: Vec<f32>,
    seq_len: usize,
    hidden: usize,
    pooled: Option<Vec<f32>>,
}

/// One unit's token ids for each text encoder (`rows × seq_len` each), and which of its rows are zeros
/// rather than their prompt's embedding (SDXL's `force_zeros_for_empty_prompt`).
struct UnitIds {
    per_encoder: Vec<Vec<i64>>,
    zero_rows: Vec<bool>,
}

/// The latent tensor of one image: units batch together only when theirs match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LatentShape {
    pub channels: usize,
    pub height: usize,
    pub width: usize,
}

impl LatentShape {
    fn values(&self) -> usize {
        self.channels * self.height * self.width
    }
}

/// A unit tokenized and given its scheduler, waiting for the shared text-encoder call.
struct Prepared {
    ids: UnitIds,
    denoising: Denoising,
}

impl Prepared {
    fn into_denoising(self, embeddings: Embeddings, timings: StageTimings) -> Denoising {
        debug_assert_eq!(embeddings.rows, self.ids.zero_rows.len());
        let mut unit = self.denoising;
        unit.hidden_states = repeat_embeddings(&embeddings.values, embeddings.rows, unit.params.num_images);
        if !embeddings.pooled.is_empty() {
            unit.text_embeds = repeat_embeddings(&embeddings.pooled, embeddings.rows, unit.params.num_images);
        }
        unit.seq_len = embeddings.seq_len;
        unit.hidden = embeddings.hidden;
        unit.timings = timings;
        unit
    }
}

/// One request's images (or one round of its candidates) in the middle of denoising: its latents, scheduler,
/// noise streams and text embeddings, owned, so that the batcher can step any set of units in one UNet call.
/// Made by [`Pipeline::begin`], advanced by [`Pipeline::step`], decoded by [`Pipeline::finish`].
pub struct Denoising {
    params: GenerateParams,
    shape: LatentShape,
    guided: bool,
    latents: Vec<f32>,
    /// Laid out for this unit's UNet rows: `[negative × n, prompt × n]` with guidance, else `[prompt × n]`.
    hidden_states: Vec<f32>,
    seq_len: usize,
    hidden: usize,
    /// SDXL's pooled embeddings, laid out as `hidden_states`; empty for other families.
    text_embeds: Vec<f32>,
    /// SDXL's time ids, laid out as `hidden_states`; empty for other families.
    time_ids: Vec<f32>,
    /// LCM's guidance embedding, one row per image; empty for other UNets.
    timestep_cond: Vec<f32>,
    /// img2img's draws (see [`Pipeline::initial_latents`]) until `begin` turns them into latents.
    init_noise: Option<Vec<f32>>,
    /// The step the schedule starts at: 0, or later for img2img.
    first_step: usize,
    scheduler: Box<dyn scheduler::Scheduler>,
    timesteps: Vec<f32>,
    noise_sources: Vec<NoiseSource>,
    step_index: usize,
    /// The unit's tensors on the device, where the resident loop runs it; its host latents and embeddings
    /// are then empty.
    resident: Option<UnitState>,
    pub timings: StageTimings,
    pub warnings: Vec<String>,
}

impl Denoising {
    pub fn params(&self) -> &GenerateParams {
        &self.params
    }

    /// Units may share a UNet call only when these match (the tensors' shapes, and where they live).
    pub fn batch_key(&self) -> (LatentShape, usize, usize, bool) {
        (self.shape, self.seq_len, self.hidden, self.resident.is_some())
    }

    /// Whether this unit's tensors live on the device (`pipeline::resident`).
    pub fn is_resident(&self) -> bool {
        self.resident.is_some()
    }

    /// UNet rows per step: two per image with classifier-free guidance, else one.
    pub fn unet_rows(&self) -> usize {
        self.copies() * self.params.num_images
    }

    fn copies(&self) -> usize {
        if self.guided {
            2
        } else {
            1
        }
    }

    /// The timestep of the next step; `None` once every step is done.
    pub fn next_timestep(&self) -> Option<f32> {
        self.timesteps.get(self.step_index).copied()
    }

    pub fn steps_done(&self) -> usize {
        self.step_index - self.first_step
    }

    pub fn steps_total(&self) -> usize {
        self.timesteps.len() - self.first_step
    }

    pub fn finished(&self) -> bool {
        self.step_index >= self.timesteps.len()
    }

    /// Guidance, then the scheduler's step, from this unit's slice of a UNet output.
    fn apply(&mut self, prediction: &[f32]) -> Result<()> {
        let per_image = self.shape.values();
        let guided_prediction = if self.guided {
            apply_guidance(
                prediction,
                self.params.guidance_scale,
                self.params.guidance_rescale,
                per_image,
            )
        } else {
            prediction.to_vec()
        };
        let step_index = self.step_index;
        // Noise is drawn only at the steps that use it: LCM's last step uses none, as in diffusers.
        let needs_noise = self.scheduler.needs_noise_at(step_index);
        let mut noise = Vec::new();
        if needs_noise {
            noise.resize(self.latents.len(), 0.0);
            for (chunk, source) in noise.chunks_exact_mut(per_image).zip(self.noise_sources.iter_mut()) {
                source.fill_normal(chunk);
            }
        }
        let step_noise = needs_noise.then_some(noise.as_slice());
        self.scheduler
            .step(&guided_prediction, step_index, &mut self.latents, step_noise)
            .map_err(|err| Error::Internal(format!("scheduler step {step_index}: {err}")))?;
        self.step_index += 1;
        Ok(())
    }

    /// The decoded pixels (`[n, 3, H, W]` in [-1, 1]) as RGB images.
    fn into_sampled(self, chw_all: &[f32], decode: Duration, ort_run: Duration) -> Result<Sampled> {
        let Denoising {
            params,
            mut timings,
            warnings,
            ..
        } = self;
        timings.decode += decode;
        timings.ort_run += ort_run;
        let per_pixel_image = 3 * params.height * params.width;
        let images = chw_all
            .chunks_exact(per_pixel_image)
            .enumerate()
            .map(|(index, chw)| {
                let bytes = to_rgb8(chw, params.height, params.width);
                let rgb = image::RgbImage::from_raw(params.width as u32, params.height as u32, bytes)
                    .ok_or_else(|| Error::Internal("a decoded image has the wrong number of bytes".into()))?;
                Ok(SampledImage {
                    index,
                    seed: params.seed.wrapping_add(index as u64),
                    width: params.width,
                    height: params.height,
                    rgb,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Sampled {
            images,
            timings,
            warnings,
        })
    }
}

/// Lays out encoder hidden states for the UNet batch: each row repeated once per image, rows in order.
fn repeat_embeddings(values: &[f32], rows: usize, num_images: usize) -> Vec<f32> {
    let per_row = values.len() / rows;
    let mut out = Vec::with_capacity(values.len() * num_images);
    for row in values.chunks_exact(per_row) {
        for _ in 0..num_images {
            out.extend_from_slice(row);
        }
    }
    out
}

/// `uncond + g · (cond − uncond)`, with the batch laid out as [uncond × n, cond × n] and `per_image` values an
/// image; then, with `guidance_rescale` above 0, [`rescale_guidance`] on each image.
fn apply_guidance(prediction: &[f32], guidance_scale: f32, guidance_rescale: f64, per_image: usize) -> Vec<f32> {
    let (uncond, cond) = prediction.split_at(prediction.len() / 2);
    let mut guided: Vec<f32> = uncond
        .iter()
        .zip(cond)
        .map(|(&u, &c)| u + guidance_scale * (c - u))
        .collect();
    if guidance_rescale > 0.0 {
        for (image, text) in guided.chunks_exact_mut(per_image).zip(cond.chunks_exact(per_image)) {
            rescale_guidance(image, text, guidance_rescale);
        }
    }
    guided
}

/// diffusers' `rescale_noise_cfg` (Lin et al., 2023, §3.4) on one image: scales the guided prediction to the
/// standard deviation of the text-conditioned one, which high guidance scales inflate (over-exposed images),
/// and keeps `guidance_rescale` of that and `1 − guidance_rescale` of the guided prediction. As in diffusers the
/// weights are Python floats rounded to f32 and the product is float32. A guided prediction with no spread
/// (constant) is left as it is, where diffusers would divide by zero.
fn rescale_guidance(guided: &mut [f32], text: &[f32], guidance_rescale: f64) {
    let ratio = std_dev(text) / std_dev(guided);
    if !ratio.is_finite() {
        return;
    }
    let (rescaled_weight, kept_weight) = (guidance_rescale as f32, (1.0 - guidance_rescale) as f32);
    for value in guided {
        *value = rescaled_weight * (*value * ratio) + kept_weight * *value;
    }
}

/// torch's `std` (Bessel-corrected, over `n − 1`), accumulated in f64 as torch does on the CPU, as f32.
fn std_dev(values: &[f32]) -> f32 {
    let count = values.len() as f64;
    let mean = values.iter().map(|&value| f64::from(value)).sum::<f64>() / count;
    let squares: f64 = values.iter().map(|&value| (f64::from(value) - mean).powi(2)).sum();
    (squares / (count - 1.0)).sqrt() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guidance_combines_halves() {
        let prediction = [1.0, 2.0, 3.0, 6.0];
        assert_eq!(apply_guidance(&prediction, 2.0, 0.0, 1), vec![5.0, 10.0]);
    }

    /// The `guidance_rescale` reference in `tests/golden/schedulers.json`: diffusers' guidance and
    /// `rescale_noise_cfg` on two images of different scales, written by `make_goldens.py`.
    #[derive(serde::Deserialize)]
    struct RescaleGolden {
        shape: Vec<usize>,
        guidance_scale: f32,
        noise_pred_uncond: Vec<f32>,
        noise_pred_text: Vec<f32>,
        noise_pred_guided: Vec<f32>,
        cases: Vec<RescaleCase>,
    }

    #[derive(serde::Deserialize)]
    struct RescaleCase {
        guidance_rescale: f64,
        noise_pred: Vec<f32>,
    }

    #[test]
    fn guidance_rescale_matches_diffusers() {
        #[derive(serde::Deserialize)]
        struct Golden {
            guidance_rescale: RescaleGolden,
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/schedulers.json");
        let text = std::fs::read_to_string(&path).unwrap();
        let golden: Golden = serde_json::from_str(&text).unwrap();
        let golden = golden.guidance_rescale;
        let per_image: usize = golden.shape[1..].iter().product();
        let prediction = [golden.noise_pred_uncond.as_slice(), &golden.noise_pred_text].concat();
        // diffusers' guidance in float32, bit for bit.
        assert_eq!(
            apply_guidance(&prediction, golden.guidance_scale, 0.0, per_image),
            golden.noise_pred_guided
        );
        assert_eq!(golden.cases.len(), 3);
        for case in &golden.cases {
            let actual = apply_guidance(&prediction, golden.guidance_scale, case.guidance_rescale, per_image);
            let largest = case.noise_pred.iter().fold(1.0f32, |max, value| max.max(value.abs()));
            let error = actual
                .iter()
                .zip(&case.noise_pred)
                .fold(0.0f32, |max, (a, e)| max.max((a - e).abs()));
            // float32 rounding of the standard deviations only; a wrong formula is off by far more.
            assert!(
                error <= 1e-6 * largest,
                "guidance_rescale {}: max error {error:e} of {largest}",
                case.guidance_rescale
            );
        }
    }

    #[test]
    fn rescale_leaves_a_flat_prediction_alone() {
        let prediction = [1.0, 3.0, 2.0, 2.0];
        assert_eq!(apply_guidance(&prediction, 1.0, 1.0, 2), vec![2.0, 2.0]);
    }

    #[test]
    fn embeddings_repeat_per_image_in_row_order() {
        let values = [1.0, 1.0, 2.0, 2.0];
        assert_eq!(
            repeat_embeddings(&values, 2, 2),
            vec![1.0, 1.0, 1.0, 1.0, 2.0, 2.0, 2.0, 2.0]
        );
    }

    /// LCM's guidance embedding against diffusers' `get_guidance_scale_embedding` in `tests/golden/lcm.json`.
    #[test]
    fn guidance_embedding_matches_diffusers() {
        #[derive(serde::Deserialize)]
        struct Run {
            guidance_scale: f32,
            timestep_cond: Vec<f32>,
        }
        #[derive(serde::Deserialize)]
        struct Golden {
            time_cond_proj_dim: usize,
            runs: Vec<Run>,
        }
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden/lcm.json");
        let golden: Golden = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(golden.runs.len(), 2);
        for run in &golden.runs {
            let ours = guidance_embedding(run.guidance_scale, golden.time_cond_proj_dim);
            assert_eq!(ours.len(), run.timestep_cond.len());
            // sin and cos of arguments up to 7500 in float32: the libraries' rounding differs by a few ulps of
            // the argument; a wrong frequency or order is off by far more.
            let error = ours
                .iter()
                .zip(&run.timestep_cond)
                .fold(0.0f32, |max, (a, e)| max.max((a - e).abs()));
            assert!(error <= 2e-3, "guidance {}: max error {error:e}", run.guidance_scale);
        }
        // An odd width is zero-padded, as diffusers pads it.
        let odd = guidance_embedding(3.0, 5);
        assert_eq!(odd.len(), 5);
        assert_eq!(odd[4], 0.0);
    }
}
