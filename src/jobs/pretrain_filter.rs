//! The pre-training images a job keeps by the reward model's judgement of their captions
//! (`pretrain_data.filter`, #26). The pre-training term trains on captioned images whose captions may be wrong:
//! the shapes world's pre-training captions state a wrong number (or none) half the time, as web captions do,
//! which is why the base counts badly. The reward model, trained on people's ratings with the paper's
//! prompt-classification loss, tells a prompt from its one-word perturbations. Here it compares each caption
//! with its variants, one per filter word, and the image is kept when its own caption wins. The variants are
//! the data's own where its `metadata.jsonl` row gives them (`"variants": {"one": "a red circle", "two": "two
//! red circles", ...}`, written in the caption's grammar); otherwise a caption holding exactly one of the
//! words is compared with the same caption under each other word. Balanced, every word keeps the same share
//! of the captions it judges.
//!
//! `shapes_world` renders are first written to the job's folder by `t2i_trainer.jobs.pretrain_renders` (the
//! same draw the trainer makes, with the world's count variants); a `folder` is read where it is. The kept
//! images go to the job's `pretrain` folder (hard links where the file system allows, else copies) with their
//! captions in a `metadata.jsonl`, and the trainer reads that folder.
//!
//! The judgement depends only on the reward model, the data and the filter, so a worker remembers it: a later
//! job on the same worker with the same three (a fine-tune round after round) links the earlier job's kept
//! folder instead of judging again.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::jobs::context::{JobContext, KeptPretrain};
use crate::jobs::metrics::{PretrainFigures, WordFigures};
use crate::jobs::relabel::{score_patiently, PAIRS_PER_CALL};
use crate::jobs::sampling::sample_pixels;
use crate::jobs::spec::PretrainFilter;
use crate::reward::Scorer;

/// The largest pre-training image, in pixels.
const MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;
/// The image files a caption folder's `.txt` layout reads, as the trainer's `IMAGE_SUFFIXES`.
const IMAGE_SUFFIXES: [&str; 5] = ["png", "jpg", "jpeg", "webp", "bmp"];

/// An image of a caption folder: its file (relative to the folder), caption, and the caption's variants by
/// word where the folder's `metadata.jsonl` gives them.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct CaptionedImage {
    pub(super) file: String,
    pub(super) caption: String,
    pub(super) variants: Option<BTreeMap<String, String>>,
}

/// The images of a caption folder, read as the trainer reads them: a `metadata.jsonl` of `{file_name, text}`,
/// or else each image file with a same-named `.txt` caption, in file name order.
pub(super) fn read_caption_folder(folder: &Path) -> Result<Vec<CaptionedImage>> {
    let unreadable = |err: std::io::Error| Error::Internal(format!("cannot read {}: {err}", folder.display()));
    let metadata = folder.join("metadata.jsonl");
    if metadata.is_file() {
        let text = std::fs::read_to_string(&metadata).map_err(unreadable)?;
        let mut images = Vec::new();
        for (number, line) in text.lines().enumerate().filter(|(_, line)| !line.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line).map_err(|err| {
                Error::Internal(format!("{} line {}: not JSON: {err}", metadata.display(), number + 1))
            })?;
            let variants = match row.get("variants") {
                None | Some(serde_json::Value::Null) => None,
                Some(given) => Some(serde_json::from_value(given.clone()).map_err(|_| {
                    Error::Internal(format!(
                        "{} line {}: `variants` must be an object of word to caption text",
                        metadata.display(),
                        number + 1
                    ))
                })?),
            };
            match (row["file_name"].as_str(), row["text"].as_str()) {
                (Some(file), Some(caption)) => images.push(CaptionedImage {
                    file: file.to_string(),
                    caption: caption.to_string(),
                    variants,
                }),
                _ => {
                    return Err(Error::Internal(format!(
                        "{} line {}: needs string fields `file_name` and `text`",
                        metadata.display(),
                        number + 1
                    )))
                }
            }
        }
        return Ok(images);
    }
    let mut names: Vec<String> = std::fs::read_dir(folder)
        .map_err(unreadable)?
        .filter_map(|entry| entry.ok())
        .filter_map(|entry| entry.file_name().into_string().ok())
        .collect();
    names.sort();
    let mut images = Vec::new();
    for name in names {
        let path = folder.join(&name);
        let image_file = path
            .extension()
            .and_then(|extension| extension.to_str())
            .is_some_and(|extension| IMAGE_SUFFIXES.contains(&extension.to_ascii_lowercase().as_str()));
        let caption = path.with_extension("txt");
        if image_file && caption.is_file() {
            let text = std::fs::read_to_string(&caption).map_err(unreadable)?;
            images.push(CaptionedImage {
                file: name,
                caption: text.trim().to_string(),
                variants: None,
            });
        }
    }
    Ok(images)
}

/// The word swap, for data without variants. For a caption holding exactly one of `words` as a
/// whitespace-separated word: that word's index, and the caption with each word in its place, in the order of
/// `words` (its own among them; words joined by single spaces). None for a caption holding none of them, or
/// more than one.
pub(super) fn variants(caption: &str, words: &[String]) -> Option<(usize, Vec<String>)> {
    let tokens: Vec<&str> = caption.split_whitespace().collect();
    let mut found = tokens
        .iter()
        .enumerate()
        .filter_map(|(position, token)| words.iter().position(|word| word == token).map(|word| (position, word)));
    let (position, own) = found.next()?;
    if found.next().is_some() {
        return None;
    }
    let mut variant = tokens.clone();
    let all = words
        .iter()
        .map(|word| {
            variant[position] = word.as_str();
            variant.join(" ")
        })
        .collect();
    Some((own, all))
}

/// What the filter compares for one image: its own word's index and the caption of every word, in the order
/// of `words`. With the data's variants: every word must have one, and exactly one of them must be the caption
/// itself (else the image is not judged). Without them: the word swap of `variants`.
pub(super) fn judgement(image: &CaptionedImage, words: &[String]) -> Option<(usize, Vec<String>)> {
    let Some(given) = &image.variants else {
        return variants(&image.caption, words);
    };
    let all: Vec<String> = words
        .iter()
        .map(|word| given.get(word).cloned())
        .collect::<Option<_>>()?;
    let mut own = all
        .iter()
        .enumerate()
        .filter(|(_, text)| **text == image.caption)
        .map(|(index, _)| index);
    let first = own.next()?;
    if own.next().is_some() {
        return None;
    }
    Some((first, all))
}

/// Whether the caption's own word (`own`) scored above every other word's caption.
pub(super) fn preferred(own: usize, scores: &[f32]) -> bool {
    let mine = scores[own];
    mine.is_finite()
        && scores
            .iter()
            .enumerate()
            .all(|(index, &score)| index == own || mine > score)
}

/// Thins the preferred images (indices into `words_of`, each image's word) so that each word keeps the same
/// share of the captions that hold it: the least share preferred of any word present, rounded. The first
/// preferred images of each word are kept. Returns the kept indices in order.
pub(super) fn balance(words_of: &[Option<usize>], preferred: &[usize]) -> Vec<usize> {
    let mut captions: HashMap<usize, usize> = HashMap::new();
    for word in words_of.iter().flatten() {
        *captions.entry(*word).or_default() += 1;
    }
    let mut chosen: HashMap<usize, usize> = HashMap::new();
    for &index in preferred {
        if let Some(word) = words_of[index] {
            *chosen.entry(word).or_default() += 1;
        }
    }
    let share = captions
        .iter()
        .map(|(word, &count)| chosen.get(word).copied().unwrap_or(0) as f64 / count as f64)
        .fold(f64::INFINITY, f64::min);
    if !share.is_finite() {
        return Vec::new();
    }
    let mut taken: HashMap<usize, usize> = HashMap::new();
    let mut kept = Vec::new();
    for &index in preferred {
        let Some(word) = words_of[index] else { continue };
        let quota = (share * captions[&word] as f64).round() as usize;
        let count = taken.entry(word).or_default();
        if *count < quota {
            *count += 1;
            kept.push(index);
        }
    }
    kept
}

/// Puts `from` at `to`: a hard link, or a copy where the file system refuses one.
fn link_or_copy(from: &Path, to: &Path) -> Result<()> {
    if std::fs::hard_link(from, to).is_ok() {
        return Ok(());
    }
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|err| Error::Internal(format!("cannot copy {} to {}: {err}", from.display(), to.display())))
}

/// Links every file of the caption folder `from` into a new folder `to` (written beside it and renamed into
/// place).
fn link_folder(from: &Path, to: &Path) -> Result<()> {
    replace_folder(to, |partial| {
        let unreadable = |err: std::io::Error| Error::Internal(format!("cannot read {}: {err}", from.display()));
        for entry in std::fs::read_dir(from).map_err(unreadable)? {
            let entry = entry.map_err(unreadable)?;
            link_or_copy(&entry.path(), &partial.join(entry.file_name()))?;
        }
        Ok(())
    })
}

/// Writes the folder `out` whole: `fill` writes it as `<out>.partial` (emptied first), which then replaces
/// `out`.
fn replace_folder(out: &Path, fill: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let failed = |path: &Path, err: std::io::Error| Error::Internal(format!("cannot write {}: {err}", path.display()));
    let partial = partial_of(out);
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(|err| failed(&partial, err))?;
    }
    std::fs::create_dir_all(&partial).map_err(|err| failed(&partial, err))?;
    fill(&partial)?;
    if out.exists() {
        std::fs::remove_dir_all(out).map_err(|err| failed(out, err))?;
    }
    std::fs::rename(&partial, out).map_err(|err| failed(out, err))
}

/// `<out>.partial`, where a folder is written before it is renamed into place.
fn partial_of(out: &Path) -> PathBuf {
    out.with_file_name(format!(
        "{}.partial",
        out.file_name().map(|name| name.to_string_lossy()).unwrap_or_default()
    ))
}

/// What a caption folder holds, as a hash of each file's name, length and modification time: a folder
/// changed since it was judged hashes differently.
fn folder_fingerprint(folder: &Path, hasher: &mut impl Hasher) -> Result<()> {
    let entries =
        std::fs::read_dir(folder).map_err(|err| Error::Internal(format!("cannot read {}: {err}", folder.display())))?;
    let mut files: Vec<(String, u64, Option<std::time::SystemTime>)> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| {
            let metadata = entry.metadata().ok();
            (
                entry.file_name().to_string_lossy().into_owned(),
                metadata.as_ref().map(|metadata| metadata.len()).unwrap_or(0),
                metadata.and_then(|metadata| metadata.modified().ok()),
            )
        })
        .collect();
    files.sort();
    files.hash(hasher);
    Ok(())
}

impl JobContext<'_> {
    /// The filter's kept pre-training images, written to `out` as a caption folder: linked from an earlier
    /// job on this worker that judged the same data with the same reward model and filter, else judged here.
    pub(super) async fn pretrain_kept(
        &self,
        scorer: &Arc<Scorer>,
        filter: &PretrainFilter,
        out: &Path,
    ) -> Result<PretrainFigures> {
        let folder_source = match &self.spec.pretrain_data.path {
            Some(path) if self.spec.pretrain_data.kind == "folder" => Some(PathBuf::from(path)),
            _ => None,
        };
        // What the judgement depends on: the reward model (this process's instance), the filter and the data.
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        (
            scorer.name(),
            Arc::as_ptr(scorer) as usize,
            &filter.words,
            filter.balance,
        )
            .hash(&mut hasher);
        match &folder_source {
            Some(folder) => {
                folder.hash(&mut hasher);
                folder_fingerprint(folder, &mut hasher)?;
            }
            None => (
                "shapes_world",
                self.spec.pretrain_data.render_count(),
                self.pretrain_render_seed(),
            )
                .hash(&mut hasher),
        }
        let key = hasher.finish();
        let earlier = self
            .services
            .kept_pretrain
            .lock()
            .ok()
            .and_then(|kept| kept.get(&key).cloned());
        if let Some(earlier) = earlier.filter(|earlier| earlier.folder.join("metadata.jsonl").is_file()) {
            link_folder(&earlier.folder, out)?;
            return Ok(PretrainFigures {
                reused_from: Some(earlier.job),
                ..earlier.figures
            });
        }
        let source = match folder_source {
            Some(folder) => folder,
            None => {
                let renders = self.folder.join("pretrain-renders");
                self.write_pretrain_renders(self.spec.pretrain_data.render_count(), &renders)
                    .await?;
                renders
            }
        };
        let figures = self.filter_pretrain(scorer, filter, &source, out).await?;
        if let Ok(mut kept) = self.services.kept_pretrain.lock() {
            kept.insert(
                key,
                KeptPretrain {
                    job: self.job.id.clone(),
                    folder: out.to_path_buf(),
                    figures: figures.clone(),
                },
            );
        }
        Ok(figures)
    }

    /// The seed of the trainer's `shapes_world` pre-training draw: the job's seed + 1 (finetune.py).
    fn pretrain_render_seed(&self) -> u64 {
        self.spec.seed.wrapping_add(1)
    }

    /// Writes the `shapes_world` pre-training renders the trainer would draw (`images`, the trainer's seed) to
    /// `out`, through `t2i_trainer.jobs.pretrain_renders`.
    async fn write_pretrain_renders(&self, images: u32, out: &Path) -> Result<()> {
        let mut command = self.python("jobs.pretrain_renders");
        for (flag, value) in [
            ("--images", images.to_string()),
            ("--seed", self.pretrain_render_seed().to_string()),
            ("--out", out.to_string_lossy().into_owned()),
        ] {
            command.extend([flag.to_string(), value]);
        }
        self.run_tool(&command, "pretrain_renders").await?;
        Ok(())
    }

    /// Judges the captions of the caption folder `source` with `scorer` and writes the kept images to `out`
    /// as a caption folder.
    async fn filter_pretrain(
        &self,
        scorer: &Arc<Scorer>,
        filter: &PretrainFilter,
        source: &Path,
        out: &Path,
    ) -> Result<PretrainFigures> {
        let images = read_caption_folder(source)?;
        let judged: Vec<Option<(usize, Vec<String>)>> =
            images.iter().map(|image| judgement(image, &filter.words)).collect();
        let words_of: Vec<Option<usize>> = judged.iter().map(|entry| entry.as_ref().map(|(own, _)| *own)).collect();
        let preprocessor = scorer.preprocessor();
        let mut winners = Vec::new();
        let mut pending: Vec<usize> = Vec::new();
        let mut prompts: Vec<String> = Vec::new();
        let mut pixels: Vec<f32> = Vec::new();
        let mut one = Vec::new();
        let words = filter.words.len();
        for (index, entry) in judged.iter().enumerate() {
            let Some((_, captions)) = entry else { continue };
            self.check_cancelled()?;
            one.clear();
            sample_pixels(source, &images[index].file, preprocessor, MAX_IMAGE_PIXELS, &mut one)?;
            for caption in captions {
                prompts.push(caption.clone());
                pixels.extend_from_slice(&one);
            }
            pending.push(index);
            if prompts.len() >= PAIRS_PER_CALL {
                let scores = score_patiently(scorer, std::mem::take(&mut prompts), std::mem::take(&mut pixels)).await?;
                take_winners(&mut winners, &std::mem::take(&mut pending), &words_of, &scores, words);
            }
        }
        if !pending.is_empty() {
            let scores = score_patiently(scorer, prompts, pixels).await?;
            take_winners(&mut winners, &pending, &words_of, &scores, words);
        }
        let kept = if filter.balance {
            balance(&words_of, &winners)
        } else {
            winners.clone()
        };
        let mut by_word: BTreeMap<String, WordFigures> = filter
            .words
            .iter()
            .map(|word| (word.clone(), WordFigures { captions: 0, kept: 0 }))
            .collect();
        for word in words_of.iter().flatten() {
            if let Some(figures) = by_word.get_mut(&filter.words[*word]) {
                figures.captions += 1;
            }
        }
        for &index in &kept {
            if let Some(figures) = words_of[index].and_then(|word| by_word.get_mut(&filter.words[word])) {
                figures.kept += 1;
            }
        }
        let figures = PretrainFigures {
            images: images.len(),
            judged: words_of.iter().flatten().count(),
            preferred: winners.len(),
            kept: kept.len(),
            balance: filter.balance,
            by_word,
            reused_from: None,
        };
        if kept.is_empty() {
            return Err(Error::validation(
                "pretrain_data.filter",
                format!(
                    "the pre-training filter kept no image: of {} images, {} have a caption holding exactly one of \
                     `pretrain_data.filter.words`, and the reward model preferred {} of those captions to every \
                     other word's",
                    figures.images, figures.judged, figures.preferred
                ),
            ));
        }
        write_kept(source, out, &images, &kept)?;
        Ok(figures)
    }
}

/// Adds to `winners` each of `pending` whose own caption won: `scores` holds each one's captions' scores in
/// turn, `words` of them each.
fn take_winners(winners: &mut Vec<usize>, pending: &[usize], words_of: &[Option<usize>], scores: &[f32], words: usize) {
    for (slot, &index) in pending.iter().enumerate() {
        let own = words_of[index].unwrap_or(0);
        if preferred(own, &scores[slot * words..(slot + 1) * words]) {
            winners.push(index);
        }
    }
}

/// The kept images as a caption folder at `out` (written beside it and renamed into place).
fn write_kept(source: &Path, out: &Path, images: &[CaptionedImage], kept: &[usize]) -> Result<()> {
    replace_folder(out, |partial| {
        let mut lines = String::new();
        for (number, &index) in kept.iter().enumerate() {
            let image = &images[index];
            let extension = Path::new(&image.file)
                .extension()
                .map(|extension| extension.to_string_lossy().into_owned())
                .unwrap_or_else(|| "png".into());
            let name = format!("{number:07}.{extension}");
            link_or_copy(&source.join(&image.file), &partial.join(&name))?;
            let mut row = serde_json::json!({"file_name": name, "text": image.caption});
            if let Some(variants) = &image.variants {
                row["variants"] = serde_json::json!(variants);
            }
            lines.push_str(&row.to_string());
            lines.push('\n');
        }
        let metadata = partial.join("metadata.jsonl");
        std::fs::write(&metadata, lines)
            .map_err(|err| Error::Internal(format!("cannot write {}: {err}", metadata.display())))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers() -> Vec<String> {
        ["one", "two", "three", "four"].map(String::from).to_vec()
    }

    #[test]
    fn a_caption_with_exactly_one_of_the_words_gets_one_variant_per_word() {
        let (own, all) = variants("three  red circles", &numbers()).unwrap();
        assert_eq!(own, 2);
        assert_eq!(
            all,
            [
                "one red circles",
                "two red circles",
                "three red circles",
                "four red circles"
            ]
        );
        assert_eq!(variants("red circles", &numbers()), None);
        assert_eq!(variants("two red circles and one square", &numbers()), None);
        // Whole words only, case-sensitively.
        assert_eq!(variants("someone's Two red circles", &numbers()), None);
    }

    #[test]
    fn the_datas_own_variants_are_compared_when_given() {
        let image = |caption: &str, variants: &[(&str, &str)]| CaptionedImage {
            file: "0.png".into(),
            caption: caption.into(),
            variants: Some(
                variants
                    .iter()
                    .map(|(word, text)| (word.to_string(), text.to_string()))
                    .collect(),
            ),
        };
        let world = [
            ("one", "a red circle"),
            ("two", "two red circles"),
            ("three", "three red circles"),
            ("four", "four red circles"),
        ];
        // "a red circle" holds no number word; its variants judge it all the same, in the world's grammar.
        let (own, all) = judgement(&image("a red circle", &world), &numbers()).unwrap();
        assert_eq!(own, 0);
        assert_eq!(all, world.map(|(_, text)| text));
        let (own, _) = judgement(&image("three red circles", &world), &numbers()).unwrap();
        assert_eq!(own, 2);
        // Not judged: a word without a variant, a caption that is none of them, a caption that is two of them.
        assert_eq!(judgement(&image("two red circles", &world[..3]), &numbers()), None);
        assert_eq!(judgement(&image("red circles", &world), &numbers()), None);
        let twice = [
            ("one", "a red circle"),
            ("two", "a red circle"),
            ("three", "x"),
            ("four", "y"),
        ];
        assert_eq!(judgement(&image("a red circle", &twice), &numbers()), None);
        // Words the variants do not cover at all: the filter's words pick the entries it needs.
        let words: Vec<String> = vec!["two".into(), "four".into()];
        assert_eq!(
            judgement(&image("four red circles", &world), &words),
            Some((1, vec!["two red circles".into(), "four red circles".into()]))
        );
        // Without variants the word swap applies.
        let plain = CaptionedImage {
            variants: None,
            ..image("two red circles", &[])
        };
        assert_eq!(judgement(&plain, &numbers()).unwrap().0, 1);
        assert_eq!(
            judgement(
                &CaptionedImage {
                    variants: None,
                    ..image("a red circle", &[])
                },
                &numbers()
            ),
            None
        );
    }

    #[test]
    fn a_caption_is_preferred_only_when_it_beats_every_other_word() {
        assert!(preferred(1, &[0.1, 0.6, 0.5, 0.2]));
        assert!(!preferred(1, &[0.1, 0.6, 0.6, 0.2]), "a tie is no win");
        assert!(!preferred(2, &[0.1, 0.6, 0.5, 0.2]));
        assert!(!preferred(0, &[f32::NAN, 0.1]));
        assert!(
            !preferred(0, &[0.9, f32::NAN]),
            "a score that cannot be compared is not beaten"
        );
    }

    #[test]
    fn balancing_keeps_the_same_share_of_every_word() {
        // Four captions with word 0, four with word 1, two with none.
        let words_of = [
            Some(0),
            Some(0),
            Some(0),
            Some(0),
            Some(1),
            Some(1),
            Some(1),
            Some(1),
            None,
            None,
        ];
        // Every word-0 caption won, two word-1 captions did: the least share is 2 of 4.
        let preferred = [0, 1, 2, 3, 5, 7];
        assert_eq!(balance(&words_of, &preferred), [0, 1, 5, 7]);
        // A word none of whose captions won keeps nothing of any word.
        assert_eq!(balance(&words_of, &[0, 1]), Vec::<usize>::new());
        assert_eq!(balance(&[None, None], &[]), Vec::<usize>::new());
    }

    #[test]
    fn a_caption_folder_reads_as_the_trainer_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("b.png"), b"png").unwrap();
        std::fs::write(dir.path().join("b.txt"), "two red circles\n").unwrap();
        std::fs::write(dir.path().join("a.PNG"), b"png").unwrap();
        std::fs::write(dir.path().join("a.txt"), "one red circle").unwrap();
        std::fs::write(dir.path().join("c.png"), b"no caption").unwrap();
        let read = read_caption_folder(dir.path()).unwrap();
        let pairs: Vec<(&str, &str)> = read
            .iter()
            .map(|image| (image.file.as_str(), image.caption.as_str()))
            .collect();
        assert_eq!(pairs, [("a.PNG", "one red circle"), ("b.png", "two red circles")]);
        // A metadata.jsonl wins over the .txt files, and the kept images are written as one.
        std::fs::write(
            dir.path().join("metadata.jsonl"),
            "{\"file_name\": \"b.png\", \"text\": \"four red circles\"}\n\n{\"file_name\": \"c.png\", \"text\": \"x\"}\n",
        )
        .unwrap();
        let read = read_caption_folder(dir.path()).unwrap();
        assert_eq!(read.len(), 2);
        let out = dir.path().join("kept");
        write_kept(dir.path(), &out, &read, &[1]).unwrap();
        let kept = read_caption_folder(&out).unwrap();
        assert_eq!(
            kept,
            [CaptionedImage {
                file: "0000000.png".into(),
                caption: "x".into(),
                variants: None,
            }]
        );
        assert_eq!(std::fs::read(out.join("0000000.png")).unwrap(), b"no caption");
        // Variants are read, and kept with their image.
        std::fs::write(
            dir.path().join("metadata.jsonl"),
            "{\"file_name\": \"b.png\", \"text\": \"a circle\", \"variants\": {\"one\": \"a circle\", \"two\": \"two circles\"}}\n",
        )
        .unwrap();
        let read = read_caption_folder(dir.path()).unwrap();
        let variants = read[0].variants.clone().unwrap();
        assert_eq!(variants["two"], "two circles");
        write_kept(dir.path(), &out, &read, &[0]).unwrap();
        assert_eq!(read_caption_folder(&out).unwrap()[0].variants, Some(variants));
        // A linked copy of a kept folder holds the same files.
        let linked = dir.path().join("linked");
        link_folder(&out, &linked).unwrap();
        assert_eq!(
            read_caption_folder(&linked).unwrap(),
            read_caption_folder(&out).unwrap()
        );
        assert_eq!(std::fs::read(linked.join("0000000.png")).unwrap(), b"png");
        std::fs::write(
            dir.path().join("metadata.jsonl"),
            "{\"file_name\": \"b.png\", \"text\": \"a\", \"variants\": [\"a\"]}\n",
        )
        .unwrap();
        let err = read_caption_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("`variants`"), "{err}");
        std::fs::write(dir.path().join("metadata.jsonl"), "{\"file_name\": 3}\n").unwrap();
        let err = read_caption_folder(dir.path()).unwrap_err().to_string();
        assert!(err.contains("line 1") && err.contains("file_name"), "{err}");
    }
}
