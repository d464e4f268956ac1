//! A generate request's whole plan, made in one step: the validated parameters, how candidates are chosen, the
//! reward model that scores them and how many candidates that may take.
//!
//! The HTTP routes (`/generate`, OpenAI's `/v1/images/generations`) and `t2i-align generate` all build their
//! plan with [`GeneratePlan::build`]; the batcher and the command line's best-of driver read it and never
//! re-derive any part of it. It lives here, not in `pipeline`, because choosing the scorer needs the
//! [`RewardSet`] and `pipeline` must not know about reward models; and not in `batching`, because the command
//! line plans a generation without an engine.

use std::fmt;
use std::sync::Arc;

use crate::error::Result;
use crate::pipeline::request::{check_work, validate};
use crate::pipeline::{GenerateInput, GenerateParams, ModelLimits, RequestLimits};
use crate::reward::best_of::{validate_selection, Selection, SelectionInput, SelectionLimits};
use crate::reward::{RewardSet, Scorer};

/// What the caller asked for, before validation.
#[derive(Debug, Clone, Default)]
pub struct PlanInput {
    pub generate: GenerateInput,
    pub selection: SelectionInput,
    /// The reward model to score with, by name; default: the first loaded.
    pub reward_model: Option<String>,
}

/// A validated generation: everything the batcher (or the command line) needs, decided once.
#[derive(Clone)]
pub struct GeneratePlan {
    /// The request's parameters; `num_images` is the number of outputs `n`.
    pub params: GenerateParams,
    pub selection: Selection,
    /// The reward model that scores every candidate; without one, the images come back unscored.
    pub scorer: Option<Arc<Scorer>>,
    /// The most candidates the request may generate: the selection's budget with a scorer, else `n`.
    pub candidates: usize,
}

impl fmt::Debug for GeneratePlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GeneratePlan")
            .field("params", &self.params)
            .field("selection", &self.selection)
            .field("scorer", &self.scorer.as_ref().map(|scorer| scorer.name()))
            .field("candidates", &self.candidates)
            .finish()
    }
}

impl GeneratePlan {
    /// A plan for parameters that are already valid (a fine-tune job's samples); the candidate budget follows
    /// from the selection and whether there is a scorer.
    pub fn new(params: GenerateParams, selection: Selection, scorer: Option<Arc<Scorer>>) -> Self {
        let candidates = match scorer {
            Some(_) => selection.budget(params.num_images),
            None => params.num_images,
        };
        GeneratePlan {
            params,
            selection,
            scorer,
            candidates,
        }
    }

    /// Validates a request into its plan: the parameters against the model's and the server's limits, the
    /// selection fields against each other and the selection limits, the reward model against the loaded ones
    /// (with any loaded, every image is scored), and the whole work against `--max-work`. Each error names the
    /// request field at fault.
    pub fn build(
        input: PlanInput,
        model: &ModelLimits,
        limits: &RequestLimits,
        selection_limits: &SelectionLimits,
        rewards: &RewardSet,
    ) -> Result<Self> {
        let params = validate(input.generate, model, limits)?;
        let selection = validate_selection(
            &input.selection,
            params.num_images,
            selection_limits,
            !rewards.is_empty(),
        )?;
        let scorer = if rewards.is_empty() && input.reward_model.is_none() {
            None
        } else {
            Some(rewards.get(input.reward_model.as_deref(), "reward_model")?.clone())
        };
        let plan = GeneratePlan::new(params, selection, scorer);
        check_work(&plan.params, plan.candidates, limits)?;
        Ok(plan)
    }

    /// The number of outputs.
    pub fn n(&self) -> usize {
        self.params.num_images
    }

    /// The scoring reward model's name, if one scores the candidates.
    pub fn reward_model(&self) -> Option<&str> {
        self.scorer.as_ref().map(|scorer| scorer.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use crate::pipeline::scheduler::SchedulerKind;

    fn model() -> ModelLimits {
        ModelLimits {
            size_multiple: 16,
            default_height: 64,
            default_width: 64,
            default_scheduler: SchedulerKind::Pndm,
            default_steps: 20,
            default_guidance_scale: 3.0,
            img2img: true,
            requires_init_image: false,
        }
    }

    fn rewards(names: &[&str]) -> RewardSet {
        RewardSet::new(names.iter().map(|name| Arc::new(Scorer::detached(name))).collect())
    }

    fn input(n: i64, best_of: Option<i64>, min_reward: Option<f64>, reward_model: Option<&str>) -> PlanInput {
        PlanInput {
            generate: GenerateInput {
                prompt: "a red circle".into(),
                n: Some(n),
                ..GenerateInput::default()
            },
            selection: SelectionInput {
                best_of,
                min_reward,
                max_candidates: None,
            },
            reward_model: reward_model.map(str::to_string),
        }
    }

    fn build(input: PlanInput, rewards: &RewardSet) -> Result<GeneratePlan> {
        GeneratePlan::build(
            input,
            &model(),
            &RequestLimits::default(),
            &SelectionLimits::default(),
            rewards,
        )
    }

    fn param_of(result: Result<GeneratePlan>) -> (String, String) {
        match result {
            Err(Error::Validation { message, param }) => (param.unwrap_or_default(), message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn without_a_reward_model_the_budget_is_n() {
        let plan = build(input(3, None, None, None), &rewards(&[])).unwrap();
        assert!(plan.scorer.is_none());
        assert_eq!(plan.selection, Selection::BestOf { k: 1 });
        assert_eq!(plan.candidates, 3);
        assert_eq!(plan.n(), 3);
        assert_eq!(plan.params.steps, 20, "the model's default steps");
    }

    #[test]
    fn with_a_reward_model_every_image_is_scored_and_the_budget_is_the_selections() {
        let loaded = rewards(&["first", "second"]);
        let plan = build(input(2, None, None, None), &loaded).unwrap();
        assert_eq!(plan.reward_model(), Some("first"), "the default is the first loaded");
        assert_eq!(plan.candidates, 2);
        let plan = build(input(2, Some(4), None, None), &loaded).unwrap();
        assert_eq!(plan.selection, Selection::BestOf { k: 4 });
        assert_eq!(plan.candidates, 8);
        let plan = build(input(2, None, Some(0.5), None), &loaded).unwrap();
        assert_eq!(plan.candidates, 8, "min_reward's default budget is 4 × n");
    }

    #[test]
    fn the_scorer_is_chosen_by_name() {
        let loaded = rewards(&["first", "second"]);
        let plan = build(input(1, Some(2), None, Some("second")), &loaded).unwrap();
        assert_eq!(plan.reward_model(), Some("second"));
        let (param, message) = param_of(build(input(1, None, None, Some("third")), &loaded));
        assert_eq!(param, "reward_model");
        assert!(message.contains("first, second"), "{message}");
        let (param, _) = param_of(build(input(1, None, None, Some("first")), &rewards(&[])));
        assert_eq!(param, "reward_model", "naming a model when none is loaded is an error");
    }

    #[test]
    fn errors_name_the_field() {
        let none = rewards(&[]);
        let loaded = rewards(&["first"]);
        assert_eq!(param_of(build(input(0, None, None, None), &none)).0, "n");
        assert_eq!(param_of(build(input(1, Some(4), None, None), &none)).0, "best_of");
        assert_eq!(param_of(build(input(1, None, Some(0.5), None), &none)).0, "min_reward");
        assert_eq!(param_of(build(input(1, Some(17), None, None), &loaded)).0, "best_of");
        // The parameters are checked before the selection.
        assert_eq!(param_of(build(input(0, Some(17), None, None), &loaded)).0, "n");
    }

    #[test]
    fn the_work_limit_counts_every_candidate() {
        let loaded = rewards(&["first"]);
        let limits = RequestLimits {
            max_work: 4 * 20 * 64 * 64,
            ..RequestLimits::default()
        };
        let plan = |best_of| {
            GeneratePlan::build(
                input(2, Some(best_of), None, None),
                &model(),
                &limits,
                &SelectionLimits::default(),
                &loaded,
            )
        };
        assert_eq!(plan(2).unwrap().candidates, 4);
        let (param, message) = param_of(plan(3));
        assert_eq!(param, "steps");
        assert!(message.contains("6 images"), "{message}");
    }

    #[test]
    fn a_plan_for_valid_params_takes_its_budget_from_the_scorer() {
        let params = build(input(2, None, None, None), &rewards(&[])).unwrap().params;
        let scorer = Arc::new(Scorer::detached("first"));
        let scored = GeneratePlan::new(params.clone(), Selection::BestOf { k: 3 }, Some(scorer));
        assert_eq!(scored.candidates, 6);
        let unscored = GeneratePlan::new(params, Selection::BestOf { k: 3 }, None);
        assert_eq!(unscored.candidates, 2);
    }
}
