//! A schedule as linear maps, for a denoising loop whose tensors stay on the device.
//!
//! Every scheduler step here (without `clip_sample`, the one clamp) is linear and elementwise: the next
//! sample is a weighted sum of the sample, the guided model output, the step's noise and whatever the
//! scheduler kept from earlier steps, with weights that depend only on the step. Running the scheduler's own
//! `step` on *coefficient vectors* instead of latents (one lane per tensor the loop ever sees: each step's
//! sample, guided output and noise) therefore yields exactly those weights, with no second copy of any
//! scheduler's arithmetic. [`LinearPlan::compile`] does that once per request, finds from the whole schedule
//! which earlier tensors later steps still read, and lays them out in a fixed number of slots:
//! slot 0 always holds the current sample, the others the history. Each step is then one small matrix
//! (`slots × (slots + 3)`) applied to `[slots…, uncond output, cond output, noise]`; guidance is folded in.

use super::{Scheduler, SchedulerError};

/// The basis tensors a step reads beside the slots: the UNet's unconditional and conditional outputs for the
/// image, and the step's noise.
pub const STEP_INPUTS: usize = 3;

/// One step of a [`LinearPlan`].
#[derive(Debug, Clone, PartialEq)]
pub struct LinearStep {
    /// The scheduler's step index.
    pub index: usize,
    /// `scale_model_input`'s factor on the sample before the UNet call.
    pub input_scale: f32,
    /// Row-major `[slots, slots + STEP_INPUTS]`: new slot `i` = Σ_j `coefficients[i][j]` · basis `j`.
    pub coefficients: Vec<f32>,
    /// Whether this step reads its noise (otherwise the noise column is all zeros).
    pub needs_noise: bool,
}

/// A request's whole schedule as linear steps over `slots` latent-sized tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct LinearPlan {
    pub slots: usize,
    pub steps: Vec<LinearStep>,
}

/// Which tensor a lane of the coefficient vectors stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Lane {
    /// The sample before step `t` (the initial latents for the first).
    Sample(usize),
    /// The guided model output of step `t`.
    Output(usize),
    Noise(usize),
}

impl LinearPlan {
    /// Compiles `scheduler`'s steps from `first_step` on (it must be fresh, set to begin there, and is used
    /// up), for classifier-free guidance at `guidance_scale` (`None`: one UNet row, no guidance).
    pub fn compile(
        scheduler: &mut dyn Scheduler,
        first_step: usize,
        guidance_scale: Option<f32>,
    ) -> Result<Self, SchedulerError> {
        let total = scheduler.timesteps().len();
        let count = total.saturating_sub(first_step);
        // Lane layout: Sample(first_step) = 0, then per step k: Output = 1 + 3k, Noise = 2 + 3k, next Sample = 3 + 3k.
        let lanes = 1 + 3 * count;
        let lane = |lane: Lane| match lane {
            Lane::Sample(t) => 3 * (t - first_step),
            Lane::Output(t) => 1 + 3 * (t - first_step),
            Lane::Noise(t) => 2 + 3 * (t - first_step),
        };
        let unit = |index: usize| {
            let mut vector = vec![0.0f32; lanes];
            vector[index] = 1.0;
            vector
        };
        // The scheduler's outputs over lanes, and its input scale, step by step.
        let mut outputs: Vec<Vec<f32>> = Vec::with_capacity(count);
        let mut scales = Vec::with_capacity(count);
        let mut noise_at = Vec::with_capacity(count);
        for t in first_step..total {
            let mut scale = [1.0f32];
            scheduler.scale_model_input(&mut scale, t);
            scales.push(scale[0]);
            let mut sample = unit(lane(Lane::Sample(t)));
            let output = unit(lane(Lane::Output(t)));
            let needs_noise = scheduler.needs_noise_at(t);
            let noise = needs_noise.then(|| unit(lane(Lane::Noise(t))));
            scheduler.step(&output, t, &mut sample, noise.as_deref())?;
            outputs.push(sample);
            noise_at.push(needs_noise);
        }
        // The last step that reads each lane.
        let mut last_read = vec![None::<usize>; lanes];
        for (k, output) in outputs.iter().enumerate() {
            for (index, &weight) in output.iter().enumerate() {
                if weight != 0.0 {
                    last_read[index] = Some(k);
                }
            }
        }
        let (uncond_weight, cond_weight) = match guidance_scale {
            Some(scale) => (1.0 - scale, scale),
            None => (0.0, 1.0),
        };
        // Slot assignment: slot 0 is the current sample; a lane read after the step that made it keeps a slot
        // from that step until its last reader.
        let mut held: Vec<Option<usize>> = vec![None]; // slot -> lane, for slots 1..
        let mut most_slots = 1;
        let mut matrices: Vec<Vec<(usize, usize, f32)>> = Vec::with_capacity(count); // (row, column, weight)
        for (k, output) in outputs.iter().enumerate() {
            let t = first_step + k;
            let sample_lane = lane(Lane::Sample(t));
            // Where each lane stands in this step's basis, as (column, weight) terms.
            let basis = |index: usize, held: &[Option<usize>]| -> Vec<(usize, f32)> {
                if index == sample_lane {
                    return vec![(0, 1.0)];
                }
                if index == lane(Lane::Output(t)) {
                    return vec![(usize::MAX - 2, uncond_weight), (usize::MAX - 1, cond_weight)];
                }
                if index == lane(Lane::Noise(t)) {
                    return vec![(usize::MAX, 1.0)];
                }
                match held.iter().position(|slot| *slot == Some(index)) {
                    Some(slot) => vec![(slot, 1.0)],
                    None => Vec::new(),
                }
            };
            let mut rows: Vec<(usize, usize, f32)> = Vec::new();
            for (index, &weight) in output.iter().enumerate() {
                if weight == 0.0 {
                    continue;
                }
                let terms = basis(index, &held);
                if terms.is_empty() {
                    return Err(SchedulerError::Unsupported(format!(
                        "step {t} reads a tensor from an earlier step that the linear plan did not keep"
                    )));
                }
                rows.extend(terms.into_iter().map(|(column, term)| (0, column, weight * term)));
            }
            // Lanes that later steps read: those already held and still needed, and this step's new ones.
            let still_needed = |index: usize| last_read[index].is_some_and(|last| last > k);
            let mut next: Vec<Option<usize>> = held
                .iter()
                .map(|slot| slot.filter(|&index| still_needed(index)))
                .collect();
            for index in [sample_lane, lane(Lane::Output(t)), lane(Lane::Noise(t))] {
                if !still_needed(index) {
                    continue;
                }
                match next.iter().skip(1).position(Option::is_none) {
                    Some(free) => next[free + 1] = Some(index),
                    None => next.push(Some(index)),
                }
            }
            for (slot, index) in next.iter().enumerate().skip(1) {
                if let Some(index) = *index {
                    let terms = basis(index, &held);
                    rows.extend(terms.into_iter().map(|(column, term)| (slot, column, term)));
                }
            }
            matrices.push(rows);
            most_slots = most_slots.max(next.len());
            held = next;
            held[0] = None;
        }
        let slots = most_slots;
        let width = slots + STEP_INPUTS;
        let steps = matrices
            .into_iter()
            .enumerate()
            .map(|(k, rows)| {
                let mut coefficients = vec![0.0f32; slots * width];
                for (row, column, weight) in rows {
                    let column = match column {
                        c if c == usize::MAX - 2 => slots,
                        c if c == usize::MAX - 1 => slots + 1,
                        c if c == usize::MAX => slots + 2,
                        c => c,
                    };
                    coefficients[row * width + column] += weight;
                }
                LinearStep {
                    index: first_step + k,
                    input_scale: scales[k],
                    coefficients,
                    needs_noise: noise_at[k],
                }
            })
            .collect();
        Ok(LinearPlan { slots, steps })
    }

    /// Applies step `step` of the plan on the host: `state` is `[images, slots, per_image]`, the outputs and
    /// noise `[images, per_image]`. The device graphs compute the same; tests compare both with the schedulers.
    pub fn apply_on_host(
        &self,
        step: &LinearStep,
        per_image: usize,
        state: &mut [f32],
        uncond: &[f32],
        cond: &[f32],
        noise: &[f32],
    ) {
        let images = uncond.len() / per_image.max(1);
        let width = self.slots + STEP_INPUTS;
        let mut next = vec![0.0f32; state.len()];
        for image in 0..images {
            let base = image * self.slots * per_image;
            for row in 0..self.slots {
                let out = &mut next[base + row * per_image..base + (row + 1) * per_image];
                for column in 0..width {
                    let weight = step.coefficients[row * width + column];
                    if weight == 0.0 {
                        continue;
                    }
                    let source: &[f32] = match column {
                        c if c < self.slots => &state[base + c * per_image..base + (c + 1) * per_image],
                        c if c == self.slots => &uncond[image * per_image..(image + 1) * per_image],
                        c if c == self.slots + 1 => &cond[image * per_image..(image + 1) * per_image],
                        _ => &noise[image * per_image..(image + 1) * per_image],
                    };
                    for (value, &input) in out.iter_mut().zip(source) {
                        *value += weight * input;
                    }
                }
            }
        }
        state.copy_from_slice(&next);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pipeline::noise::NoiseSource;
    use crate::pipeline::scheduler::{build, SchedulerConfig, SchedulerKind, SchedulerOptions};

    const SD_CONFIG: &str = r#"{"_class_name":"PNDMScheduler","beta_end":0.012,"beta_schedule":"scaled_linear",
        "beta_start":0.00085,"num_train_timesteps":1000,"set_alpha_to_one":false,"skip_prk_steps":true,
        "steps_offset":1,"clip_sample":false}"#;

    fn normals(seed: u64, count: usize) -> Vec<f32> {
        let mut values = vec![0.0f32; count];
        NoiseSource::new(seed).fill_normal(&mut values);
        values
    }

    /// Runs `kind` for `steps` steps from `first` both ways, on two images of 16 values, and returns the
    /// largest difference between the scheduler's own result and the plan's, relative to the sample's size.
    fn compare(kind: SchedulerKind, steps: usize, first: usize, guidance: Option<f32>, eta: f32) -> f32 {
        let config = SchedulerConfig::from_json_str(SD_CONFIG).unwrap();
        let options = SchedulerOptions { eta };
        let fresh = || {
            let mut scheduler = build(kind, &config, steps, &options).unwrap();
            scheduler.begin_at(first).unwrap();
            scheduler
        };
        let plan = LinearPlan::compile(fresh().as_mut(), first, guidance).unwrap();
        let mut reference = fresh();
        assert_eq!(plan.steps.len(), reference.timesteps().len() - first);
        let (images, per_image) = (2, 16);
        let mut latents = normals(1, images * per_image);
        let mut state = vec![0.0f32; images * plan.slots * per_image];
        for image in 0..images {
            let to = image * plan.slots * per_image;
            state[to..to + per_image].copy_from_slice(&latents[image * per_image..(image + 1) * per_image]);
        }
        for (k, step) in plan.steps.iter().enumerate() {
            let t = first + k;
            assert_eq!(step.index, t);
            let uncond = normals(100 + k as u64, images * per_image);
            let cond = normals(200 + k as u64, images * per_image);
            let noise = normals(300 + k as u64, images * per_image);
            let guided: Vec<f32> = match guidance {
                Some(scale) => uncond.iter().zip(&cond).map(|(&u, &c)| u + scale * (c - u)).collect(),
                None => cond.clone(),
            };
            let needs = reference.needs_noise_at(t);
            assert_eq!(step.needs_noise, needs);
            reference
                .step(&guided, t, &mut latents, needs.then_some(noise.as_slice()))
                .unwrap();
            plan.apply_on_host(step, per_image, &mut state, &uncond, &cond, &noise);
        }
        let mut worst = 0.0f32;
        let size = latents.iter().fold(1.0f32, |max, value| max.max(value.abs()));
        for image in 0..images {
            let from = image * plan.slots * per_image;
            for index in 0..per_image {
                let ours = state[from + index];
                let theirs = latents[image * per_image + index];
                worst = worst.max((ours - theirs).abs() / size);
            }
        }
        worst
    }

    #[test]
    fn every_scheduler_is_its_linear_plan() {
        for kind in SchedulerKind::ALL {
            for (steps, first) in [(1, 0), (2, 0), (7, 0), (12, 5)] {
                for guidance in [None, Some(7.5)] {
                    let error = compare(kind, steps, first, guidance, 0.0);
                    assert!(
                        error <= 2e-5,
                        "{kind} {steps} steps from {first}, {guidance:?}: {error:e}"
                    );
                }
            }
        }
    }

    #[test]
    fn stochastic_ddim_reads_its_noise() {
        let error = compare(SchedulerKind::Ddim, 8, 0, Some(5.0), 1.0);
        assert!(error <= 2e-5, "{error:e}");
    }

    #[test]
    fn memoryless_schedulers_need_one_slot_and_multistep_ones_more() {
        let config = SchedulerConfig::from_json_str(SD_CONFIG).unwrap();
        let slots = |kind| {
            let mut scheduler = build(kind, &config, 10, &SchedulerOptions::default()).unwrap();
            LinearPlan::compile(scheduler.as_mut(), 0, Some(7.5)).unwrap().slots
        };
        assert_eq!(slots(SchedulerKind::Ddim), 1);
        assert_eq!(slots(SchedulerKind::Euler), 1);
        assert!(slots(SchedulerKind::DpmSolverMultistep) > 1);
        assert!(slots(SchedulerKind::Pndm) > 1);
    }
}
