//! One request's candidates, from the first unit issued to the chosen images: the bookkeeping that the batcher's
//! worker and the command line's best-of loop share. It knows nothing of models, sessions or threads, so it is
//! tested without a model.
//!
//! - **Units.** Candidates are generated in units of at most `unit_images` (see [`unit_size`]); candidate `j`
//!   starts from seed `seed + j`, so a unit's images are fixed by its first candidate number.
//! - **Rounds.** A best_of request (and an unscored one) issues every unit at once: its seeds are fixed. A
//!   min_reward request issues one unit at a time, since whether another is needed depends on the scores.
//! - **Budget.** No more than the plan's `candidates` are ever issued.
//! - **Enough.** A request is done once the budget is spent or `n` candidates reach `min_reward`; the worker asks
//!   only when no unit is outstanding.
//! - **Order.** Units may come back in any order; the candidates and their scores are put back in candidate
//!   order before the selection chooses.

use crate::error::Result;
use crate::pipeline::{GenerateOutput, GenerateParams, Sampled, SampledImage, StageTimings};
use crate::reward::best_of::{next_round, selected_output, selection_done, Selection};
use crate::reward::GeneratePlan;

/// UNet rows per image: two with classifier-free guidance (the negative prompt's and the prompt's).
pub fn rows_per_image(params: &GenerateParams) -> usize {
    if params.guidance_scale > 1.0 {
        2
    } else {
        1
    }
}

/// Candidates in one unit: `batch_images` for a scored request, all `n` for an unscored one, never more than
/// one call's `max_rows` carry (unless a single image needs more).
pub fn unit_size(plan: &GeneratePlan, batch_images: usize, max_rows: usize) -> usize {
    let images = match plan.scorer {
        Some(_) => batch_images,
        None => plan.n(),
    };
    images.min(max_rows / rows_per_image(&plan.params)).max(1)
}

/// Candidates `first..first + count`, generated together.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unit {
    pub first: usize,
    pub count: usize,
}

impl Unit {
    /// The request's parameters for this unit: its images, from its first candidate's seed.
    pub fn params(&self, request: &GenerateParams) -> GenerateParams {
        GenerateParams {
            num_images: self.count,
            seed: request.seed.wrapping_add(self.first as u64),
            ..request.clone()
        }
    }
}

/// A request's candidates: those issued, those back, their scores, and how to finish.
#[derive(Debug)]
pub struct Candidates {
    n: usize,
    budget: usize,
    selection: Selection,
    /// The scoring reward model's name; `None` for an unscored request.
    reward_model: Option<String>,
    unit_images: usize,
    /// Candidates handed to units so far.
    issued: usize,
    /// Units issued and not yet back.
    outstanding: usize,
    /// The candidates back so far, numbered by candidate; in the order they came back.
    images: Vec<SampledImage>,
    scores: Vec<(usize, f32)>,
    timings: StageTimings,
    warnings: Vec<String>,
}

impl Candidates {
    /// Nothing issued yet; units of at most `unit_images` candidates.
    pub fn new(plan: &GeneratePlan, unit_images: usize) -> Self {
        Candidates {
            n: plan.n(),
            budget: plan.candidates,
            selection: plan.selection,
            reward_model: plan.reward_model().map(str::to_string),
            unit_images: unit_images.max(1),
            issued: 0,
            outstanding: 0,
            images: Vec::new(),
            scores: Vec::new(),
            timings: StageTimings::default(),
            warnings: Vec::new(),
        }
    }

    /// Whether units go one round at a time: a scored threshold, whose next round depends on the scores.
    pub fn one_round_at_a_time(&self) -> bool {
        matches!(self.selection, Selection::Threshold { .. }) && self.reward_model.is_some()
    }

    /// Candidates issued so far.
    pub fn issued(&self) -> usize {
        self.issued
    }

    /// Units issued and not yet back.
    pub fn outstanding(&self) -> usize {
        self.outstanding
    }

    /// The next units, counted as issued: every remaining unit, or one with [`Self::one_round_at_a_time`].
    /// Empty once the budget is spent.
    pub fn issue(&mut self) -> Vec<Unit> {
        let one_round = self.one_round_at_a_time();
        let mut units = Vec::new();
        while self.issued < self.budget {
            let count = next_round(self.issued, self.budget, self.unit_images);
            units.push(Unit {
                first: self.issued,
                count,
            });
            self.issued += count;
            self.outstanding += 1;
            if one_round {
                break;
            }
        }
        units
    }

    /// A unit came back: the images it sampled (numbered from 0 within the unit) and, for a scored request,
    /// their scores in the same order. Its timings are added and its warnings kept once each.
    pub fn record(&mut self, first: usize, sampled: Sampled, scores: &[f32]) {
        self.outstanding = self.outstanding.saturating_sub(1);
        self.timings.add(&sampled.timings);
        for warning in sampled.warnings {
            if !self.warnings.contains(&warning) {
                self.warnings.push(warning);
            }
        }
        for (index, &score) in scores.iter().enumerate() {
            self.scores.push((first + index, score));
        }
        for mut image in sampled.images {
            image.index += first;
            self.images.push(image);
        }
    }

    /// Whether no more units are needed: the budget is spent, or a threshold is met (a count, so the scores'
    /// order does not matter).
    pub fn enough(&self) -> bool {
        let scores: Vec<f32> = self.scores.iter().map(|&(_, score)| score).collect();
        self.issued >= self.budget || selection_done(self.selection, self.n, &scores)
    }

    /// The answer: with a reward model, the chosen `n` as PNGs with the selection report; without one, every
    /// image in seed order, unscored.
    pub fn finish(mut self) -> Result<GenerateOutput> {
        self.images.sort_by_key(|image| image.index);
        match &self.reward_model {
            Some(reward_model) => {
                self.scores.sort_by_key(|&(index, _)| index);
                let scores = self.scores.into_iter().map(|(_, score)| score).collect();
                selected_output(
                    &self.images,
                    scores,
                    self.selection,
                    self.n,
                    reward_model,
                    self.timings,
                    self.warnings,
                )
            }
            None => Sampled {
                images: self.images,
                timings: self.timings,
                warnings: self.warnings,
            }
            .encode_all(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;
    use crate::pipeline::scheduler::SchedulerKind;
    use crate::reward::Scorer;

    fn params(n: usize) -> GenerateParams {
        GenerateParams {
            prompt: "a red circle".into(),
            negative_prompt: String::new(),
            num_images: n,
            steps: 4,
            guidance_scale: 3.0,
            scheduler: SchedulerKind::Ddim,
            seed: 100,
            width: 8,
            height: 8,
            eta: 0.0,
            guidance_rescale: 0.0,
            aesthetic_score: Default::default(),
            init: None,
        }
    }

    fn scored(n: usize, selection: Selection) -> GeneratePlan {
        GeneratePlan::new(params(n), selection, Some(Arc::new(Scorer::detached("judge"))))
    }

    fn threshold(min_reward: f32, max_candidates: usize) -> Selection {
        Selection::Threshold {
            min_reward,
            max_candidates,
        }
    }

    /// What a unit's sampling gives back: its images numbered from 0, seeded as the pipeline seeds them.
    fn sampled(unit: Unit, request: &GenerateParams) -> Sampled {
        let params = unit.params(request);
        Sampled {
            images: (0..unit.count)
                .map(|index| SampledImage {
                    index,
                    seed: params.seed + index as u64,
                    width: 1,
                    height: 1,
                    rgb: image::RgbImage::new(1, 1),
                })
                .collect(),
            timings: StageTimings {
                denoise: Duration::from_millis(10),
                ..StageTimings::default()
            },
            warnings: vec!["the prompt was cut to 77 tokens".into()],
        }
    }

    /// Issues and records rounds until enough, scoring candidate `j` with `scores[j]`; returns the units.
    fn run(plan: &GeneratePlan, unit_images: usize, scores: &[f32]) -> (Candidates, Vec<Unit>) {
        let mut candidates = Candidates::new(plan, unit_images);
        let mut all = Vec::new();
        while !candidates.enough() {
            let units = candidates.issue();
            assert!(!units.is_empty(), "not enough, yet nothing to issue");
            for unit in units {
                let unit_scores = &scores[unit.first..unit.first + unit.count];
                candidates.record(unit.first, sampled(unit, &plan.params), unit_scores);
                all.push(unit);
            }
        }
        (candidates, all)
    }

    fn seeds(output: &GenerateOutput) -> Vec<u64> {
        output.images.iter().map(|image| image.seed).collect()
    }

    #[test]
    fn best_of_issues_every_round_at_once_up_to_the_budget() {
        let plan = scored(2, Selection::BestOf { k: 5 });
        let mut candidates = Candidates::new(&plan, 4);
        assert!(!candidates.one_round_at_a_time());
        let units = candidates.issue();
        assert_eq!(
            units,
            vec![
                Unit { first: 0, count: 4 },
                Unit { first: 4, count: 4 },
                Unit { first: 8, count: 2 },
            ]
        );
        assert_eq!(candidates.issued(), 10);
        assert_eq!(candidates.outstanding(), 3);
        assert!(candidates.enough(), "the budget is spent");
        assert!(candidates.issue().is_empty(), "nothing past the budget");
    }

    #[test]
    fn a_unit_starts_from_its_first_candidates_seed() {
        let unit = Unit { first: 4, count: 3 };
        let unit_params = unit.params(&params(2));
        assert_eq!(unit_params.seed, 104);
        assert_eq!(unit_params.num_images, 3);
        assert_eq!(unit_params.prompt, "a red circle");
    }

    #[test]
    fn best_of_returns_the_n_best_best_first() {
        let plan = scored(2, Selection::BestOf { k: 3 });
        let (candidates, units) = run(&plan, 4, &[0.1, 0.7, 0.3, 0.9, 0.2, 0.5]);
        assert_eq!(units.len(), 2);
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![103, 101]);
        let rewards: Vec<Option<f32>> = output.images.iter().map(|image| image.reward).collect();
        assert_eq!(rewards, vec![Some(0.9), Some(0.7)]);
        let indices: Vec<usize> = output.images.iter().map(|image| image.index).collect();
        assert_eq!(indices, vec![0, 1], "outputs are numbered best first");
        let report = output.selection.unwrap();
        assert_eq!(report.reward_model, "judge");
        assert_eq!(report.candidates, 6);
        assert_eq!(report.accepted, 2);
        assert!(report.rejection);
        assert_eq!(report.candidate_scores, vec![0.1, 0.7, 0.3, 0.9, 0.2, 0.5]);
    }

    #[test]
    fn best_of_one_keeps_seed_order() {
        let plan = scored(3, Selection::BestOf { k: 1 });
        let (candidates, _) = run(&plan, 16, &[0.2, 0.9, 0.5]);
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![100, 101, 102]);
        let rewards: Vec<Option<f32>> = output.images.iter().map(|image| image.reward).collect();
        assert_eq!(rewards, vec![Some(0.2), Some(0.9), Some(0.5)]);
        assert!(
            !output.selection.unwrap().rejection,
            "one candidate per output: nothing was chosen"
        );
    }

    #[test]
    fn a_threshold_goes_one_round_at_a_time_and_stops_once_n_reach_it() {
        let plan = scored(2, threshold(0.5, 12));
        let mut candidates = Candidates::new(&plan, 4);
        assert!(candidates.one_round_at_a_time());
        let units = candidates.issue();
        assert_eq!(units, vec![Unit { first: 0, count: 4 }]);
        candidates.record(0, sampled(units[0], &plan.params), &[0.1, 0.6, 0.2, 0.3]);
        assert!(!candidates.enough(), "one of two reached the threshold");
        let units = candidates.issue();
        assert_eq!(units, vec![Unit { first: 4, count: 4 }]);
        candidates.record(4, sampled(units[0], &plan.params), &[0.2, 0.8, 0.1, 0.4]);
        assert!(candidates.enough(), "two reached it; the budget of 12 is not spent");
        assert_eq!(candidates.issued(), 8);
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![105, 101]);
        let report = output.selection.unwrap();
        assert_eq!(report.candidates, 8);
        assert_eq!(report.accepted, 2);
    }

    #[test]
    fn a_threshold_never_reached_spends_the_budget_and_returns_the_best() {
        let plan = scored(1, threshold(0.99, 6));
        let (candidates, units) = run(&plan, 4, &[0.1, 0.2, 0.3, 0.4, 0.6, 0.5]);
        assert_eq!(units, vec![Unit { first: 0, count: 4 }, Unit { first: 4, count: 2 }]);
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![104]);
        assert_eq!(output.selection.unwrap().accepted, 0);
    }

    #[test]
    fn the_budget_is_never_exceeded() {
        for (selection, n, unit_images) in [
            (Selection::BestOf { k: 3 }, 3, 4),
            (Selection::BestOf { k: 16 }, 8, 16),
            (threshold(2.0, 7), 2, 3),
            (threshold(2.0, 5), 5, 1),
        ] {
            let plan = scored(n, selection);
            let scores = vec![0.0; plan.candidates];
            let (candidates, units) = run(&plan, unit_images, &scores);
            let issued: usize = units.iter().map(|unit| unit.count).sum();
            assert_eq!(issued, plan.candidates, "{selection:?}");
            assert!(units.iter().all(|unit| unit.count <= unit_images), "{selection:?}");
            assert_eq!(candidates.issued(), plan.candidates);
            assert_eq!(candidates.outstanding(), 0);
        }
    }

    #[test]
    fn units_back_out_of_order_are_put_in_candidate_order() {
        let plan = scored(1, Selection::BestOf { k: 6 });
        let mut candidates = Candidates::new(&plan, 2);
        let units = candidates.issue();
        assert_eq!(units.len(), 3);
        let scores = [0.1, 0.2, 0.9, 0.3, 0.4, 0.5];
        for unit in units.iter().rev() {
            let unit_scores = &scores[unit.first..unit.first + unit.count];
            candidates.record(unit.first, sampled(*unit, &plan.params), unit_scores);
        }
        assert_eq!(candidates.outstanding(), 0);
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![102]);
        assert_eq!(output.images[0].reward, Some(0.9));
        assert_eq!(output.selection.unwrap().candidate_scores, scores.to_vec());
    }

    #[test]
    fn an_unscored_request_comes_back_in_seed_order_without_a_report() {
        let plan = GeneratePlan::new(params(3), Selection::BestOf { k: 1 }, None);
        assert_eq!(unit_size(&plan, 16, 4), 2, "n, capped by the rows of one call");
        let mut candidates = Candidates::new(&plan, 2);
        assert!(!candidates.one_round_at_a_time());
        let units = candidates.issue();
        assert_eq!(units, vec![Unit { first: 0, count: 2 }, Unit { first: 2, count: 1 }]);
        for unit in units.iter().rev() {
            candidates.record(unit.first, sampled(*unit, &plan.params), &[]);
        }
        assert!(candidates.enough());
        let output = candidates.finish().unwrap();
        assert_eq!(seeds(&output), vec![100, 101, 102]);
        let indices: Vec<usize> = output.images.iter().map(|image| image.index).collect();
        assert_eq!(indices, vec![0, 1, 2]);
        assert!(output.images.iter().all(|image| image.reward.is_none()));
        assert!(output.selection.is_none());
    }

    #[test]
    fn timings_add_up_and_warnings_are_kept_once() {
        let plan = scored(1, Selection::BestOf { k: 4 });
        let (candidates, units) = run(&plan, 1, &[0.1, 0.2, 0.3, 0.4]);
        assert_eq!(units.len(), 4);
        let output = candidates.finish().unwrap();
        assert_eq!(output.timings.denoise, Duration::from_millis(40));
        assert_eq!(output.warnings, vec!["the prompt was cut to 77 tokens".to_string()]);
    }

    #[test]
    fn units_fit_one_call() {
        let plan = scored(2, Selection::BestOf { k: 8 });
        assert_eq!(rows_per_image(&plan.params), 2, "guidance doubles the rows");
        assert_eq!(unit_size(&plan, 16, 64), 16);
        assert_eq!(unit_size(&plan, 16, 8), 4);
        assert_eq!(
            unit_size(&plan, 16, 1),
            1,
            "a single image runs even when it needs more rows"
        );
        let unguided = GeneratePlan::new(
            GenerateParams {
                guidance_scale: 1.0,
                ..params(2)
            },
            Selection::BestOf { k: 8 },
            plan.scorer.clone(),
        );
        assert_eq!(rows_per_image(&unguided.params), 1);
        assert_eq!(unit_size(&unguided, 16, 8), 8);
    }
}
