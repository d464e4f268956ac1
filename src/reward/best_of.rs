//! Rejection sampling with a reward model (the paper's best-of-n baseline, §4.3).
//!
//! `best_of: K` generates K candidates for each of the `n` outputs, scores them all and returns the `n` best.
//! `min_reward` with `max_candidates` keeps generating until `n` candidates reach the threshold or the budget
//! is spent, and returns the `n` best either way, saying how many reached it. Candidate `j` always starts from
//! seed `seed + j`, and candidates are generated in batched UNet calls of `batch_images`, so a request with a
//! seed gives the same images and scores every time.
//!
//! This module holds the rules (validation, rounds, when a threshold is met, which candidates win); the server's
//! batcher and `t2i-align generate` both drive them through `batching::request`.

use std::time::Instant;

use crate::error::{Error, Result};
use crate::pipeline::output::{GenerateOutput, GeneratedImage, SampledImage, SelectionReport};
use crate::pipeline::StageTimings;

/// How the returned images are chosen among the candidates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Selection {
    /// `k` candidates per output; the best `n` of all `n · k` come back.
    BestOf { k: usize },
    /// Sample until `n` candidates score at least `min_reward`, or `max_candidates` have been tried.
    Threshold { min_reward: f32, max_candidates: usize },
}

impl Selection {
    /// The most candidates this selection may generate for `n` outputs.
    pub fn budget(&self, n: usize) -> usize {
        match *self {
            Selection::BestOf { k } => n * k,
            Selection::Threshold { max_candidates, .. } => max_candidates,
        }
    }
}

/// Limits on rejection sampling, from the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SelectionLimits {
    pub max_best_of: u32,
    /// Most candidates one request may generate, in either mode.
    pub max_candidates: u32,
}

impl Default for SelectionLimits {
    fn default() -> Self {
        SelectionLimits {
            max_best_of: 16,
            max_candidates: 128,
        }
    }
}

/// The request's rejection-sampling fields, before validation.
#[derive(Debug, Clone, Default)]
pub struct SelectionInput {
    pub best_of: Option<i64>,
    pub min_reward: Option<f64>,
    pub max_candidates: Option<i64>,
}

/// Checks the fields against each other and the limits. `n` is the validated number of outputs.
/// `has_reward_model` says whether any reward model is loaded to do the scoring.
pub fn validate_selection(
    input: &SelectionInput,
    n: usize,
    limits: &SelectionLimits,
    has_reward_model: bool,
) -> Result<Selection> {
    let max_candidates = i64::from(limits.max_candidates);
    if let Some(min_reward) = input.min_reward {
        if !min_reward.is_finite() {
            return Err(Error::validation(
                "min_reward",
                format!("`min_reward` must be a finite number. Given: {min_reward}"),
            ));
        }
        if input.best_of.is_some_and(|k| k != 1) {
            return Err(Error::validation(
                "best_of",
                "`best_of` and `min_reward` are two ways to choose images; send one of them",
            ));
        }
        if !has_reward_model {
            return Err(no_reward_model("min_reward"));
        }
        let default_budget = (4 * n as i64).min(max_candidates).max(n as i64);
        let budget = input.max_candidates.unwrap_or(default_budget);
        if budget < n as i64 || budget > max_candidates {
            return Err(Error::validation(
                "max_candidates",
                format!(
                    "`max_candidates` must be between n ({n}) and {max_candidates} (--max-candidates). Given: {budget}"
                ),
            ));
        }
        return Ok(Selection::Threshold {
            min_reward: min_reward as f32,
            max_candidates: budget as usize,
        });
    }
    if input.max_candidates.is_some() {
        return Err(Error::validation(
            "max_candidates",
            "`max_candidates` only applies with `min_reward`; `best_of` sets the number of candidates itself",
        ));
    }
    let k = input.best_of.unwrap_or(1);
    let max_best_of = i64::from(limits.max_best_of);
    if k < 1 || k > max_best_of {
        return Err(Error::validation(
            "best_of",
            format!("`best_of` must be between 1 and {max_best_of} (--max-best-of). Given: {k}"),
        ));
    }
    if k > 1 && !has_reward_model {
        return Err(no_reward_model("best_of"));
    }
    if k * n as i64 > max_candidates {
        return Err(Error::validation(
            "best_of",
            format!(
                "`best_of` × `n` must be at most {max_candidates} candidates (--max-candidates). Given: {k} × {n} = {}",
                k * n as i64
            ),
        ));
    }
    Ok(Selection::BestOf { k: k as usize })
}

fn no_reward_model(field: &str) -> Error {
    Error::validation(
        field,
        format!("`{field}` needs a reward model, and this server has none loaded (start it with --reward-model)"),
    )
}

/// The indices of the `n` highest scores, best first; ties go to the earlier candidate, NaN ranks last.
pub fn top_n(scores: &[f32], n: usize) -> Vec<usize> {
    let key = |index: usize| {
        let score = scores[index];
        if score.is_nan() {
            f32::NEG_INFINITY
        } else {
            score
        }
    };
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| key(b).total_cmp(&key(a)).then(a.cmp(&b)));
    order.truncate(n);
    order
}

/// How many candidates the next round generates: a full batch, never past the budget.
pub fn next_round(generated: usize, budget: usize, batch_images: usize) -> usize {
    budget.saturating_sub(generated).min(batch_images.max(1))
}

/// Whether a threshold selection has its `n` candidates at or above `min_reward` (best_of never stops early).
pub fn selection_done(selection: Selection, n: usize, scores: &[f32]) -> bool {
    match selection {
        Selection::Threshold { min_reward, .. } => scores.iter().filter(|&&score| score >= min_reward).count() >= n,
        Selection::BestOf { .. } => false,
    }
}

/// The chosen `n` of the scored `candidates` (in candidate order) as PNGs, best first, with the report.
/// With one candidate per output nothing is chosen: the images keep their seed order, scored.
pub fn selected_output(
    candidates: &[SampledImage],
    scores: Vec<f32>,
    selection: Selection,
    n: usize,
    reward_model: &str,
    mut timings: StageTimings,
    warnings: Vec<String>,
) -> Result<GenerateOutput> {
    let chosen = match selection {
        Selection::BestOf { k: 1 } => (0..candidates.len().min(n)).collect(),
        _ => top_n(&scores, n),
    };
    let started = Instant::now();
    let images = chosen
        .iter()
        .enumerate()
        .map(|(output, &candidate)| GeneratedImage::encode(&candidates[candidate], output, Some(scores[candidate])))
        .collect::<Result<Vec<_>>>()?;
    timings.png_encode += started.elapsed();
    let accepted = match selection {
        Selection::BestOf { .. } => images.len(),
        Selection::Threshold { min_reward, .. } => scores.iter().filter(|&&score| score >= min_reward).count(),
    };
    Ok(GenerateOutput {
        images,
        timings,
        warnings,
        selection: Some(SelectionReport {
            reward_model: reward_model.to_string(),
            candidates: candidates.len(),
            accepted,
            candidate_scores: scores,
            rejection: !matches!(selection, Selection::BestOf { k: 1 }),
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SelectionLimits {
        SelectionLimits::default()
    }

    fn input(best_of: Option<i64>, min_reward: Option<f64>, max_candidates: Option<i64>) -> SelectionInput {
        SelectionInput {
            best_of,
            min_reward,
            max_candidates,
        }
    }

    fn error_of(input: SelectionInput, n: usize) -> (String, String) {
        match validate_selection(&input, n, &limits(), true) {
            Err(Error::Validation { message, param }) => (param.unwrap_or_default(), message),
            other => panic!("expected a validation error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_to_one_candidate_per_output() {
        let selection = validate_selection(&SelectionInput::default(), 3, &limits(), false).unwrap();
        assert_eq!(selection, Selection::BestOf { k: 1 });
        assert_eq!(selection.budget(3), 3);
    }

    #[test]
    fn a_threshold_gets_a_default_budget() {
        let selection = validate_selection(&input(None, Some(0.5), None), 2, &limits(), true).unwrap();
        assert_eq!(
            selection,
            Selection::Threshold {
                min_reward: 0.5,
                max_candidates: 8
            }
        );
    }

    #[test]
    fn limits_are_named_and_quoted() {
        let (param, message) = error_of(input(Some(17), None, None), 1);
        assert_eq!(param, "best_of");
        assert_eq!(message, "`best_of` must be between 1 and 16 (--max-best-of). Given: 17");
        let (param, message) = error_of(input(Some(16), None, None), 9);
        assert_eq!(param, "best_of");
        assert!(message.contains("16 × 9 = 144"), "{message}");
        let (param, message) = error_of(input(None, Some(0.5), Some(500)), 1);
        assert_eq!(param, "max_candidates");
        assert!(message.contains("between n (1) and 128"), "{message}");
        let (param, _) = error_of(input(None, Some(0.5), Some(1)), 2);
        assert_eq!(param, "max_candidates");
        let (param, message) = error_of(input(None, Some(f64::NAN), None), 1);
        assert_eq!(param, "min_reward");
        assert!(message.contains("finite"), "{message}");
        let (param, _) = error_of(input(Some(4), Some(0.5), None), 1);
        assert_eq!(param, "best_of");
        let (param, _) = error_of(input(None, None, Some(8)), 1);
        assert_eq!(param, "max_candidates");
    }

    #[test]
    fn scoring_needs_a_reward_model() {
        let err = validate_selection(&input(Some(4), None, None), 1, &limits(), false).unwrap_err();
        assert_eq!(err.param(), Some("best_of"));
        assert!(err.to_string().contains("--reward-model"));
    }

    #[test]
    fn top_n_is_best_first_and_stable() {
        assert_eq!(top_n(&[0.1, 0.9, 0.5, 0.9], 3), vec![1, 3, 2]);
        assert_eq!(top_n(&[0.1], 3), vec![0]);
        assert_eq!(top_n(&[f32::NAN, 0.2], 1), vec![1]);
    }

    #[test]
    fn rounds_fill_batches_up_to_the_budget() {
        assert_eq!(next_round(0, 40, 16), 16);
        assert_eq!(next_round(32, 40, 16), 8);
        assert_eq!(next_round(40, 40, 16), 0);
        assert_eq!(next_round(0, 5, 0), 1);
    }
}
