//! Hindsight relabelling (#26): an image the job would not train on under its own prompt may show one of the
//! job's other prompts. The reward model scores it against the prompts that differ from its own in exactly one
//! word, both words among the job's `relabel.words`; the best of them, where it reaches the threshold and beats
//! the image's own prompt, becomes one more training sample: the same image under that prompt, with that score
//! as its reward. Binary feedback says only that "three red circles" failed; the reward model, trained with
//! the paper's prompt-classification loss to tell a prompt from its one-attribute perturbations, says which
//! sibling the image does show.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::jobs::context::JobContext;
use crate::jobs::sampling::{sample_pixels, Sample};
use crate::jobs::spec::Relabel;
use crate::reward::Scorer;

/// Image-prompt pairs per call to the scorer (relabelling and the pre-training filter).
pub(super) const PAIRS_PER_CALL: usize = 64;
/// The largest image, in pixels, a job's own sample may be: the samples are the server's own PNGs.
const MAX_SAMPLE_PIXELS: u64 = 64 * 1024 * 1024;

/// For each prompt, its siblings among `prompts`: the prompts that differ from it in exactly one
/// whitespace-separated word, where both that word and its replacement are in `words`. Sorted, without
/// duplicates.
pub(super) fn siblings<'p>(prompts: &[&'p str], words: &[String]) -> HashMap<&'p str, Vec<&'p str>> {
    let words: HashSet<&str> = words.iter().map(String::as_str).collect();
    // Key: the prompt with the interchangeable word at `position` blanked out; prompts that share a key are
    // siblings of one another.
    let mut groups: HashMap<(Vec<&str>, usize), BTreeSet<&'p str>> = HashMap::new();
    for &prompt in prompts {
        let split: Vec<&str> = prompt.split_whitespace().collect();
        for (position, word) in split.iter().enumerate() {
            if words.contains(word) {
                let mut key = split.clone();
                key[position] = "";
                groups.entry((key, position)).or_default().insert(prompt);
            }
        }
    }
    let mut found: HashMap<&'p str, BTreeSet<&'p str>> = HashMap::new();
    for group in groups.values().filter(|group| group.len() > 1) {
        for &prompt in group {
            let entry = found.entry(prompt).or_default();
            entry.extend(group.iter().copied().filter(|other| *other != prompt));
        }
    }
    found
        .into_iter()
        .map(|(prompt, set)| (prompt, set.into_iter().collect()))
        .collect()
}

/// Which sibling relabels an image: the best-scoring one, if its score reaches `threshold` and is above the
/// image's own prompt's score. Ties go to the first.
pub(super) fn choose(own: f32, siblings: &[f32], threshold: f64) -> Option<usize> {
    let (best, score) = siblings
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, score)| score.is_finite())
        .fold(None, |best: Option<(usize, f32)>, (index, score)| match best {
            Some((_, kept)) if kept >= score => best,
            _ => Some((index, score)),
        })?;
    (f64::from(score) >= threshold && (score > own || !own.is_finite())).then_some(best)
}

/// What relabelling did, for the job's label stage.
#[derive(Default)]
pub(super) struct Relabelled {
    /// Images that were candidates: below the threshold under their own prompt, with a sibling prompt.
    pub(super) candidates: usize,
    /// The new samples.
    pub(super) samples: Vec<Sample>,
}

impl JobContext<'_> {
    /// Relabels the samples in `folder` (their images are files there) that `relabel` applies to.
    pub(super) async fn relabel(
        &self,
        scorer: &Arc<Scorer>,
        relabel: &Relabel,
        prompts: &[String],
        samples: &[Sample],
        folder: &Path,
    ) -> Result<Relabelled> {
        if !scorer.bounded() {
            return Err(Error::validation(
                "relabel",
                format!(
                    "`relabel` compares scores with a threshold in [0, 1], and reward model `{}` has unbounded \
                     scores: choose a bounded `reward_model`, or leave `relabel` out",
                    scorer.name()
                ),
            ));
        }
        let mut all: Vec<&str> = prompts.iter().map(String::as_str).collect();
        all.extend(samples.iter().map(|sample| sample.prompt.as_str()));
        all.sort_unstable();
        all.dedup();
        let siblings = siblings(&all, &relabel.words);
        let mut done = Relabelled::default();
        let preprocessor = scorer.preprocessor();
        // Samples waiting for a call (index, siblings), and their pairs' prompts and pixels: the sample's own
        // prompt, then each sibling.
        let mut pending: Vec<(usize, &[&str])> = Vec::new();
        let mut pixels = Vec::new();
        let mut pending_prompts: Vec<String> = Vec::new();
        let mut pending_pixels: Vec<f32> = Vec::new();
        for (index, sample) in samples.iter().enumerate() {
            if sample.reward >= relabel.threshold {
                continue;
            }
            let Some(others) = siblings.get(sample.prompt.as_str()) else {
                continue;
            };
            self.check_cancelled()?;
            done.candidates += 1;
            pixels.clear();
            sample_pixels(folder, &sample.image, preprocessor, MAX_SAMPLE_PIXELS, &mut pixels)?;
            pending_prompts.push(sample.prompt.clone());
            pending_prompts.extend(others.iter().map(|other| other.to_string()));
            for _ in 0..=others.len() {
                pending_pixels.extend_from_slice(&pixels);
            }
            pending.push((index, others.as_slice()));
            if pending_prompts.len() >= PAIRS_PER_CALL {
                let scores = score_patiently(
                    scorer,
                    std::mem::take(&mut pending_prompts),
                    std::mem::take(&mut pending_pixels),
                )
                .await?;
                take_relabels(&mut done, samples, relabel, &std::mem::take(&mut pending), &scores);
            }
        }
        if !pending.is_empty() {
            let scores = score_patiently(scorer, pending_prompts, pending_pixels).await?;
            take_relabels(&mut done, samples, relabel, &pending, &scores);
        }
        Ok(done)
    }
}

/// Adds a sample for each of `pending` (sample index, siblings) whose scores, its own prompt's then its
/// siblings' in `scores`, choose a sibling.
fn take_relabels(
    done: &mut Relabelled,
    samples: &[Sample],
    relabel: &Relabel,
    pending: &[(usize, &[&str])],
    scores: &[f32],
) {
    let mut offset = 0;
    for &(index, names) in pending {
        let own = scores[offset];
        let others = &scores[offset + 1..offset + 1 + names.len()];
        offset += 1 + names.len();
        if let Some(best) = choose(own, others, relabel.threshold) {
            done.samples.push(Sample {
                image: samples[index].image.clone(),
                prompt: names[best].to_string(),
                reward: f64::from(others[best]),
                source: "relabelled",
            });
        }
    }
}

/// One scoring call, waiting and retrying while the scorer's queue is full (users' `/score` calls share it).
pub(super) async fn score_patiently(scorer: &Arc<Scorer>, prompts: Vec<String>, pixels: Vec<f32>) -> Result<Vec<f32>> {
    let expected = prompts.len();
    loop {
        match scorer.score(prompts.clone(), pixels.clone()).await {
            Err(Error::Overloaded { retry_after_secs, .. }) => {
                tokio::time::sleep(Duration::from_secs(retry_after_secs.clamp(1, 5))).await;
            }
            Ok(scored) if scored.scores.len() == expected => return Ok(scored.scores),
            Ok(scored) => {
                return Err(Error::Internal(format!(
                    "the reward model returned {} scores for {expected} pairs",
                    scored.scores.len()
                )))
            }
            Err(err) => return Err(err),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words() -> Vec<String> {
        ["one", "two", "three", "four"].map(String::from).to_vec()
    }

    #[test]
    fn siblings_differ_in_one_interchangeable_word() {
        let prompts = [
            "two red circles",
            "three red circles",
            "four red circles",
            "two blue circles",
            "two red squares",
            "three red circles on a black background",
        ];
        let found = siblings(&prompts, &words());
        assert_eq!(found["two red circles"], vec!["four red circles", "three red circles"]);
        assert_eq!(found["three red circles"], vec!["four red circles", "two red circles"]);
        // Colour and shape are not among the words, and a longer prompt differs in more than one word.
        assert!(!found.contains_key("two blue circles"));
        assert!(!found.contains_key("two red squares"));
        assert!(!found.contains_key("three red circles on a black background"));
    }

    #[test]
    fn a_word_outside_the_list_makes_no_sibling() {
        let prompts = ["two red circles", "many red circles", "two red circles"];
        assert!(siblings(&prompts, &words()).is_empty());
    }

    #[test]
    fn the_best_sibling_must_reach_the_threshold_and_beat_the_own_prompt() {
        assert_eq!(choose(0.1, &[0.3, 0.8, 0.6], 0.5), Some(1));
        assert_eq!(choose(0.1, &[0.3, 0.4], 0.5), None, "below the threshold");
        assert_eq!(choose(0.9, &[0.3, 0.8], 0.5), None, "the own prompt scores higher");
        assert_eq!(choose(0.8, &[0.8], 0.5), None, "a tie keeps the own prompt");
        assert_eq!(
            choose(0.1, &[0.7, 0.7], 0.5),
            Some(0),
            "ties between siblings go to the first"
        );
        assert_eq!(
            choose(0.1, &[f32::NAN, 0.6], 0.5),
            Some(1),
            "a NaN score is never chosen"
        );
        assert_eq!(choose(0.1, &[], 0.5), None);
    }
}
