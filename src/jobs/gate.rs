//! The promotion gate (#26): whether a candidate may replace its base, decided on evidence.
//!
//! Base and candidate sample the same evaluation prompts with the same seeds (`evaluate`), so their images pair
//! up prompt by prompt. For each metric the gate takes the candidate's pooled figure minus the base's, and a
//! paired bootstrap interval: the prompts are resampled with replacement, the same draw for base and candidate
//! and for every metric, and the interval is the central `confidence` share of the resampled gains. A
//! prompt, not an image, is the unit resampled, because a prompt's images share what makes them easy or hard.
//!
//! The rule: the candidate passes when the lower end of the mean reward's interval is above
//! `min_reward_gain`, and for every guarded metric the lower end of its interval is at or above
//! `-max_drop[metric]`. A metric the rater could not measure (prompts outside the shapes world) is shown as
//! unmeasured and guards nothing; the mean reward is always measured, and a candidate without it fails.

use std::collections::BTreeMap;

use rand_chacha::ChaCha8Rng;
use rand_core::{RngCore, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

/// The metrics the gate measures, in the order its table shows them: the reward model's mean score, the
/// rater's share of images with every attribute right (`good`), its quality proxy, each attribute it judges,
/// and the images' diversity (mean pairwise RMS distance between a prompt's images, 0 to 1).
pub const METRICS: [&str; 8] = [
    "reward",
    "good",
    "quality",
    "count",
    "colour",
    "background",
    "shape",
    "diversity",
];

/// One metric on one prompt: the sum over the prompt's images and how many images it was measured on (for
/// diversity, the prompt's figure and 1).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Tally {
    pub total: f64,
    pub count: f64,
}

/// One version's figures on one evaluation prompt.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PromptFigures {
    pub prompt: String,
    pub metrics: BTreeMap<String, Tally>,
}

/// The rule a job's candidate is held to (the job's `gate`, else the server's `--gate-*` flags).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateRule {
    /// The lower end of the mean reward gain's interval must be above this.
    pub min_reward_gain: f64,
    /// Per guarded metric, the largest drop (as a fraction: 0.03 is 3 points; diversity in its own units)
    /// that the lower end of its interval may show.
    pub max_drop: BTreeMap<String, f64>,
    /// The intervals' coverage, e.g. 0.95.
    pub confidence: f64,
    /// Bootstrap resamples.
    pub resamples: u32,
}

impl Default for GateRule {
    fn default() -> Self {
        GateRule {
            min_reward_gain: 0.0,
            max_drop: default_max_drop(),
            confidence: 0.95,
            resamples: 2000,
        }
    }
}

/// The guarded metrics and their tolerances by default: 3 points of the quality proxy, colour, background and
/// shape, and 0.02 of diversity (about 8% of the pretrained shapes model's 0.235). Count is what the shapes
/// world's fine-tunes aim to raise, and `good` follows the attributes, so neither is guarded by default.
pub fn default_max_drop() -> BTreeMap<String, f64> {
    [
        ("quality", 0.03),
        ("colour", 0.03),
        ("background", 0.03),
        ("shape", 0.03),
        ("diversity", 0.02),
    ]
    .into_iter()
    .map(|(metric, drop)| (metric.to_string(), drop))
    .collect()
}

/// One row of the gate's table: base, candidate, the gain and its interval, and what the rule made of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct MetricGain {
    pub metric: String,
    /// The pooled figures; null when the metric was not measured.
    pub base: Option<f64>,
    pub candidate: Option<f64>,
    /// Candidate minus base, and the interval's ends.
    pub gain: Option<f64>,
    pub low: Option<f64>,
    pub high: Option<f64>,
    /// Prompts the metric was measured on.
    pub prompts: usize,
    /// `gain` (the reward's test), `guard` (a guarded metric) or `shown`.
    pub role: String,
    /// The bound the rule holds the interval's lower end to: `min_reward_gain` for the reward, `-max_drop`
    /// for a guard.
    pub bound: Option<f64>,
    /// Whether the row passes its test; null for rows shown only or not measured.
    pub passed: Option<bool>,
}

/// The gate's decision on a candidate: the table and the reasons.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct GateDecision {
    pub passed: bool,
    pub rule: GateRule,
    /// Evaluation prompts the base and the candidate share.
    pub prompts: usize,
    pub table: Vec<MetricGain>,
    /// Why it failed, one sentence each; empty when it passed.
    pub reasons: Vec<String>,
    /// Whether the base's evaluation came from the cache (same base, prompts, seeds, reward model and rater).
    #[serde(default)]
    pub base_cached: bool,
}

impl GateDecision {
    /// A row of the table by metric.
    pub fn row(&self, metric: &str) -> Option<&MetricGain> {
        self.table.iter().find(|row| row.metric == metric)
    }
}

/// The per-prompt figures of one version's evaluation: the reward of each image (`rewards`, as (prompt,
/// reward) in sample order) and the rater's rows (`t2i_trainer.jobs.evaluate`'s `rows`), joined by prompt in the
/// order prompts first appear.
pub fn prompt_figures(rewards: &[(String, f64)], rater_rows: &[Value]) -> Vec<PromptFigures> {
    let mut figures: Vec<PromptFigures> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    let mut slot = |figures: &mut Vec<PromptFigures>, prompt: &str| -> usize {
        *index.entry(prompt.to_string()).or_insert_with(|| {
            figures.push(PromptFigures {
                prompt: prompt.to_string(),
                metrics: BTreeMap::new(),
            });
            figures.len() - 1
        })
    };
    for (prompt, reward) in rewards {
        let at = slot(&mut figures, prompt);
        let tally = figures[at].metrics.entry("reward".into()).or_default();
        tally.total += reward;
        tally.count += 1.0;
    }
    let pair = |value: Option<&Value>| -> Option<Tally> {
        let items = value?.as_array()?;
        let (total, count) = (items.first()?.as_f64()?, items.get(1)?.as_f64()?);
        (count > 0.0).then_some(Tally { total, count })
    };
    for row in rater_rows {
        let Some(prompt) = row.get("prompt").and_then(Value::as_str) else {
            continue;
        };
        let at = slot(&mut figures, prompt);
        let metrics = &mut figures[at].metrics;
        for name in ["good", "quality"] {
            if let Some(tally) = pair(row.get(name)) {
                metrics.insert(name.into(), tally);
            }
        }
        if let Some(Value::Object(attributes)) = row.get("attributes") {
            for (name, value) in attributes {
                if let Some(tally) = pair(Some(value)) {
                    metrics.insert(name.clone(), tally);
                }
            }
        }
        if let Some(diversity) = row.get("diversity").and_then(Value::as_f64) {
            metrics.insert(
                "diversity".into(),
                Tally {
                    total: diversity,
                    count: 1.0,
                },
            );
        }
    }
    figures
}

/// Base and candidate side by side, prompt by prompt, for one metric: (base, candidate) tallies of the prompts
/// where both measured it.
type Paired = Vec<(Tally, Tally)>;

fn pooled(tallies: &[(Tally, Tally)], draw: impl Iterator<Item = usize>) -> Option<f64> {
    let (mut base, mut candidate, mut count_base, mut count_candidate) = (0.0, 0.0, 0.0, 0.0);
    for at in draw {
        let (b, c) = tallies[at];
        base += b.total;
        count_base += b.count;
        candidate += c.total;
        count_candidate += c.count;
    }
    (count_base > 0.0 && count_candidate > 0.0).then(|| candidate / count_candidate - base / count_base)
}

/// The `q` quantile (0..1) of sorted values, interpolated linearly between neighbours (numpy's default).
fn quantile(sorted: &[f64], q: f64) -> f64 {
    let position = q * (sorted.len() - 1) as f64;
    let below = position.floor() as usize;
    let above = position.ceil() as usize;
    sorted[below] + (sorted[above] - sorted[below]) * (position - below as f64)
}

/// One metric measured on both versions: pooled figures, the gain and its interval, and on how many prompts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measured {
    pub base: f64,
    pub candidate: f64,
    pub gain: f64,
    pub low: f64,
    pub high: f64,
    pub prompts: usize,
}

/// The gain and its paired bootstrap interval for every metric measured on both sides; prompts are matched by
/// text, and a prompt only one side has is left out. `seed` makes the draw repeatable.
pub fn paired_gains(
    base: &[PromptFigures],
    candidate: &[PromptFigures],
    confidence: f64,
    resamples: u32,
    seed: u64,
) -> (usize, BTreeMap<String, Measured>) {
    let by_prompt: BTreeMap<&str, &PromptFigures> = candidate
        .iter()
        .map(|figures| (figures.prompt.as_str(), figures))
        .collect();
    let shared: Vec<(&PromptFigures, &PromptFigures)> = base
        .iter()
        .filter_map(|b| by_prompt.get(b.prompt.as_str()).map(|c| (b, *c)))
        .collect();
    // Per metric, each shared prompt's pair of tallies (a prompt that lacks the metric on either side counts
    // as measuring nothing, so it still takes its place in every draw).
    let mut paired: BTreeMap<String, Paired> = BTreeMap::new();
    for metric in METRICS {
        let rows: Paired = shared
            .iter()
            .map(|(b, c)| match (b.metrics.get(metric), c.metrics.get(metric)) {
                (Some(b), Some(c)) => (*b, *c),
                _ => (Tally::default(), Tally::default()),
            })
            .collect();
        if rows.iter().any(|(b, c)| b.count > 0.0 && c.count > 0.0) {
            paired.insert(metric.to_string(), rows);
        }
    }
    let n = shared.len();
    let mut samples: BTreeMap<&str, Vec<f64>> = paired.keys().map(|m| (m.as_str(), Vec::new())).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draw = vec![0usize; n];
    for _ in 0..resamples {
        for slot in draw.iter_mut() {
            *slot = (rng.next_u64() % n as u64) as usize;
        }
        for (metric, rows) in &paired {
            if let Some(gain) = pooled(rows, draw.iter().copied()) {
                if let Some(values) = samples.get_mut(metric.as_str()) {
                    values.push(gain);
                }
            }
        }
    }
    let tail = (1.0 - confidence) / 2.0;
    let mut out = BTreeMap::new();
    for (metric, rows) in &paired {
        let Some(gain) = pooled(rows, 0..n) else { continue };
        let measured = rows.iter().filter(|(b, c)| b.count > 0.0 && c.count > 0.0).count();
        let base = rows.iter().map(|(b, _)| b.total).sum::<f64>() / rows.iter().map(|(b, _)| b.count).sum::<f64>();
        let mut values = samples.remove(metric.as_str()).unwrap_or_default();
        values.retain(|value| value.is_finite());
        values.sort_by(f64::total_cmp);
        let (low, high) = if values.is_empty() {
            (gain, gain)
        } else {
            (quantile(&values, tail), quantile(&values, 1.0 - tail))
        };
        out.insert(
            metric.clone(),
            Measured {
                base,
                candidate: base + gain,
                gain,
                low,
                high,
                prompts: measured,
            },
        );
    }
    (n, out)
}

fn points(value: f64, metric: &str) -> String {
    if metric == "reward" || metric == "diversity" {
        format!("{value:+.4}")
    } else {
        format!("{:+.1} points", value * 100.0)
    }
}

/// The decision on `candidate` against `base` under `rule`.
pub fn decide(base: &[PromptFigures], candidate: &[PromptFigures], rule: &GateRule, seed: u64) -> GateDecision {
    let (prompts, gains) = paired_gains(base, candidate, rule.confidence, rule.resamples, seed);
    let percent = (rule.confidence * 100.0).round();
    let mut table = Vec::new();
    let mut reasons = Vec::new();
    for metric in METRICS {
        let measured = gains.get(metric);
        let (role, bound) = if metric == "reward" {
            ("gain", Some(rule.min_reward_gain))
        } else if let Some(drop) = rule.max_drop.get(metric) {
            ("guard", Some(-drop))
        } else {
            ("shown", None)
        };
        let mut row = MetricGain {
            metric: metric.into(),
            base: None,
            candidate: None,
            gain: None,
            low: None,
            high: None,
            prompts: 0,
            role: role.into(),
            bound,
            passed: None,
        };
        if let Some(&Measured {
            base: before,
            candidate: after,
            gain,
            low,
            high,
            prompts: count,
        }) = measured
        {
            row.base = Some(before);
            row.candidate = Some(after);
            row.gain = Some(gain);
            row.low = Some(low);
            row.high = Some(high);
            row.prompts = count;
            match (role, bound) {
                ("gain", Some(bound)) => {
                    let passed = low.is_finite() && low > bound;
                    row.passed = Some(passed);
                    if !passed {
                        reasons.push(format!(
                            "the mean reward gain {} has a {percent}% interval from {} to {}, whose lower end is not above {}",
                            points(gain, metric),
                            points(low, metric),
                            points(high, metric),
                            points(bound, metric)
                        ));
                    }
                }
                ("guard", Some(bound)) => {
                    let passed = low.is_finite() && low >= bound;
                    row.passed = Some(passed);
                    if !passed {
                        reasons.push(format!(
                            "{metric} changed by {} ({percent}% interval {} to {}): it may fall by at most {}",
                            points(gain, metric),
                            points(low, metric),
                            points(high, metric),
                            points(-bound, metric).trim_start_matches('+')
                        ));
                    }
                }
                _ => {}
            }
        } else if metric == "reward" {
            row.passed = Some(false);
            reasons.push("the mean reward was not measured on both versions".into());
        }
        table.push(row);
    }
    GateDecision {
        passed: reasons.is_empty(),
        rule: rule.clone(),
        prompts,
        table,
        reasons,
        base_cached: false,
    }
}

/// The decision in one line, for the stage's event and the job's outcome.
pub fn gate_line(gate: &GateDecision) -> String {
    let shown = |metric: &str| {
        gate.row(metric).and_then(|row| {
            Some(format!(
                "{metric} {} [{}, {}]",
                points(row.gain?, metric),
                points(row.low?, metric),
                points(row.high?, metric)
            ))
        })
    };
    let figures: Vec<String> = ["reward", "quality", "count", "colour"]
        .into_iter()
        .filter_map(shown)
        .collect();
    if gate.passed {
        format!("passed on {} prompts: {}", gate.prompts, figures.join(", "))
    } else {
        format!("refused on {} prompts: {}", gate.prompts, gate.reasons.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Per prompt: reward total, images, and optionally (quality right, judged).
    type Row = (f64, f64, Option<(f64, f64)>);

    /// A version's figures from its rows.
    fn version(rows: &[Row]) -> Vec<PromptFigures> {
        rows.iter()
            .enumerate()
            .map(|(index, (reward, images, quality))| {
                let mut metrics = BTreeMap::new();
                metrics.insert(
                    "reward".to_string(),
                    Tally {
                        total: *reward,
                        count: *images,
                    },
                );
                if let Some((right, judged)) = quality {
                    metrics.insert(
                        "quality".to_string(),
                        Tally {
                            total: *right,
                            count: *judged,
                        },
                    );
                }
                PromptFigures {
                    prompt: format!("prompt {index}"),
                    metrics,
                }
            })
            .collect()
    }

    /// `n` prompts of 4 images: the base's mean reward per prompt varies from 0.3 to 0.7, and the candidate's
    /// is the base's plus `shift` plus seeded noise of half-width `noise`; quality 4 of 4 for the base, and
    /// for the candidate `quality(i)` of 4.
    fn synthetic(
        n: usize,
        shift: f64,
        noise: f64,
        quality: impl Fn(usize) -> f64,
    ) -> (Vec<PromptFigures>, Vec<PromptFigures>) {
        let mut rng = ChaCha8Rng::seed_from_u64(42);
        let mut uniform = move || (rng.next_u64() as f64 / u64::MAX as f64) * 2.0 - 1.0;
        let mut base = Vec::new();
        let mut candidate = Vec::new();
        for i in 0..n {
            let level = 0.3 + 0.4 * (i as f64 / n as f64);
            base.push((4.0 * level, 4.0, Some((4.0, 4.0))));
            candidate.push((4.0 * (level + shift + noise * uniform()), 4.0, Some((quality(i), 4.0))));
        }
        (version(&base), version(&candidate))
    }

    #[test]
    fn a_clear_gain_within_every_tolerance_passes() {
        let (base, candidate) = synthetic(200, 0.05, 0.05, |_| 4.0);
        let gate = decide(&base, &candidate, &GateRule::default(), 7);
        assert!(gate.passed, "{gate:?}");
        let reward = gate.row("reward").unwrap();
        assert!(reward.low.unwrap() > 0.0 && reward.low.unwrap() < 0.05 && reward.high.unwrap() > 0.05);
        assert_eq!(reward.passed, Some(true));
        assert_eq!(gate.row("quality").unwrap().passed, Some(true));
        assert_eq!(gate.prompts, 200);
        assert!(
            gate_line(&gate).starts_with("passed on 200 prompts: reward +0.05"),
            "{}",
            gate_line(&gate)
        );
    }

    #[test]
    fn a_quality_drop_beyond_the_tolerance_fails_and_says_why() {
        // Every fifth prompt loses 2 of its 4 clean images: 10 points of quality.
        let (base, candidate) = synthetic(200, 0.05, 0.05, |i| if i % 5 == 0 { 2.0 } else { 4.0 });
        let gate = decide(&base, &candidate, &GateRule::default(), 7);
        assert!(!gate.passed);
        let quality = gate.row("quality").unwrap();
        assert!((quality.gain.unwrap() + 0.10).abs() < 1e-12, "{quality:?}");
        assert_eq!(quality.passed, Some(false));
        assert_eq!(gate.reasons.len(), 1, "{:?}", gate.reasons);
        assert!(
            gate.reasons[0].starts_with("quality changed by -10.0 points"),
            "{:?}",
            gate.reasons
        );
        assert!(
            gate.reasons[0].ends_with("it may fall by at most 3.0 points"),
            "{:?}",
            gate.reasons
        );
    }

    #[test]
    fn a_drop_within_the_tolerance_but_uncertain_beyond_it_fails() {
        // 2.5 points lost on average, all of it on 1 prompt of 10: the interval reaches past -3 points.
        let (base, candidate) = synthetic(10, 0.05, 0.0, |i| if i == 0 { 3.0 } else { 4.0 });
        let gate = decide(&base, &candidate, &GateRule::default(), 7);
        let quality = gate.row("quality").unwrap();
        assert!(
            quality.gain.unwrap() > -0.03 && quality.low.unwrap() < -0.03,
            "{quality:?}"
        );
        assert!(!gate.passed);
    }

    #[test]
    fn a_noisy_tie_fails() {
        let (base, candidate) = synthetic(200, 0.0, 0.2, |_| 4.0);
        let gate = decide(&base, &candidate, &GateRule::default(), 7);
        assert!(!gate.passed);
        let reward = gate.row("reward").unwrap();
        assert!(reward.low.unwrap() < 0.0 && reward.high.unwrap() > 0.0, "{reward:?}");
        assert!(
            gate.reasons[0].contains("whose lower end is not above +0.0000"),
            "{:?}",
            gate.reasons
        );
    }

    #[test]
    fn the_interval_is_repeatable_and_narrows_with_more_prompts() {
        let (base, candidate) = synthetic(50, 0.02, 0.1, |_| 4.0);
        let once = decide(&base, &candidate, &GateRule::default(), 3);
        assert_eq!(once, decide(&base, &candidate, &GateRule::default(), 3));
        let width = |gate: &GateDecision| {
            let row = gate.row("reward").unwrap();
            row.high.unwrap() - row.low.unwrap()
        };
        let (base, candidate) = synthetic(800, 0.02, 0.1, |_| 4.0);
        let more = decide(&base, &candidate, &GateRule::default(), 3);
        assert!(
            width(&more) < width(&once) / 2.0,
            "{} vs {}",
            width(&more),
            width(&once)
        );
    }

    #[test]
    fn unmeasured_metrics_guard_nothing_but_an_unmeasured_reward_fails() {
        let base = version(&[(2.0, 4.0, None), (3.0, 4.0, None)]);
        let candidate = version(&[(3.0, 4.0, None), (4.0, 4.0, None)]);
        let gate = decide(&base, &candidate, &GateRule::default(), 1);
        assert!(gate.passed, "{gate:?}");
        assert_eq!(gate.row("quality").unwrap().passed, None);
        assert_eq!(gate.row("quality").unwrap().gain, None);
        let empty = decide(&[], &[], &GateRule::default(), 1);
        assert!(!empty.passed);
        assert_eq!(
            empty.reasons,
            vec!["the mean reward was not measured on both versions".to_string()]
        );
    }

    #[test]
    fn prompt_figures_join_rewards_and_the_raters_rows() {
        let rewards = vec![("a".to_string(), 0.5), ("a".to_string(), 0.7), ("b".to_string(), 0.1)];
        let rows = vec![
            serde_json::json!({"prompt": "a", "good": [1, 2], "quality": [2, 2],
                "attributes": {"colour": [2, 2], "count": [1, 2]}, "diversity": 0.25}),
            serde_json::json!({"prompt": "b", "good": [0, 0], "quality": [0, 0], "attributes": {},
                "diversity": null}),
        ];
        let figures = prompt_figures(&rewards, &rows);
        assert_eq!(figures.len(), 2);
        let a = &figures[0].metrics;
        assert_eq!(a["reward"], Tally { total: 1.2, count: 2.0 });
        assert_eq!(a["count"], Tally { total: 1.0, count: 2.0 });
        assert_eq!(
            a["diversity"],
            Tally {
                total: 0.25,
                count: 1.0
            }
        );
        // An unrated prompt has its reward and nothing else.
        assert_eq!(figures[1].metrics.keys().collect::<Vec<_>>(), vec!["reward"]);
    }
}

/// The last measured loop (models/heldout-eval.json: all 282 held-out prompts, 4 images each, the same seeds
/// for every version) replayed through the gate with its defaults. That file has no reward figures, so each
/// candidate is granted a certain reward gain: what refuses it is the guards alone.
#[cfg(test)]
mod replay {
    use super::*;

    fn version(data: &Value, name: &str, reward: f64) -> Vec<PromptFigures> {
        let rows = data["rows"][name].as_array().expect("rows of the version");
        let rewards: Vec<(String, f64)> = rows
            .iter()
            .flat_map(|row| std::iter::repeat_n((row["prompt"].as_str().unwrap_or("").to_string(), reward), 4))
            .collect();
        prompt_figures(&rewards, rows)
    }

    #[test]
    fn the_defaults_refuse_the_rounds_that_lost_quality() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/models/heldout-eval.json"))
            .expect("models/heldout-eval.json");
        let data: Value = serde_json::from_str(&text).expect("JSON");
        let base = version(&data, "pretrained", 0.5);
        for (name, lost) in [("round 2", 0.076), ("round 4", 0.128)] {
            let gate = decide(&base, &version(&data, name, 0.6), &GateRule::default(), 0);
            assert_eq!(gate.prompts, 282);
            assert!(!gate.passed, "{name}: {gate:?}");
            let quality = gate.row("quality").unwrap();
            assert!((quality.gain.unwrap() + lost).abs() < 0.001, "{name}: {quality:?}");
            assert_eq!(quality.passed, Some(false), "{name}");
            assert!(
                gate.reasons
                    .iter()
                    .any(|reason| reason.starts_with("quality changed by")),
                "{name}"
            );
            assert_eq!(gate.row("reward").unwrap().passed, Some(true));
        }
    }
}
