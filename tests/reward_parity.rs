//! Reward parity: the service's preprocessing and ONNX scores equal Python's reference for the same image files,
//! within 1e-4: shapes-reward (a reward head; transformers' CLIPImageProcessor and the PyTorch model), a tiny
//! random CLIP exported by Optimum (CLIP similarity, as PickScore is used), a tiny random open_clip CLIP (the
//! cosine, as HPSv2 is used; open_clip's own tokenizer, transform and model) and a tiny LAION-style aesthetic
//! predictor (an image head), and a tiny ImageReward (BLIP; a reward head with a BERT tokenizer and a
//! normalised output). The golden files come from t2i_trainer.goldens.reward_goldens and the
//! t2i_trainer.build.export_*_reward scripts.

mod common;

use t2i_align::pipeline::tokenizer::ClipTokenizer;
use t2i_align::reward::manifest::{CropOffset, ImageSpec};
use t2i_align::reward::model::RewardModel;
use t2i_align::reward::preprocess::{decode_image, Preprocessor};
use t2i_align::runtime::{Device, Runtime, SessionSettings};

const TOLERANCE: f32 = 1e-4;

fn check(model_folder: &str, golden: &str) {
    let golden = common::read_json(&format!("tests/golden/reward/{golden}"));
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let mut model = RewardModel::load(&mut runtime, &common::repo_path(model_folder)).unwrap();
    let load = |relative: &str| {
        let bytes = std::fs::read(common::repo_path(&format!("tests/golden/reward/{relative}"))).unwrap();
        decode_image(&bytes, 1 << 24, relative).unwrap()
    };

    // Preprocessing alone first, so a failure says where it is.
    let expected = &golden["pixel_values"];
    let pixels = model
        .preprocessor()
        .pixel_values(&load(expected["image"].as_str().unwrap()));
    let reference = common::floats(&expected["values"]);
    assert_eq!(pixels.len(), reference.len());
    let worst = pixels
        .iter()
        .zip(&reference)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst < 1e-5, "pixel_values differ from transformers' by up to {worst}");

    let cases = golden["cases"].as_array().unwrap();
    let mut batch = Vec::new();
    let mut prompts = Vec::new();
    for case in cases {
        model
            .preprocessor()
            .pixel_values_into(&load(case["image"].as_str().unwrap()), &mut batch);
        prompts.push(case["prompt"].as_str().unwrap());
    }
    // All cases in one batched call, as the scorer runs them.
    let scores = model.score(&batch, &prompts).unwrap();
    let mut worst = 0.0f32;
    for (case, score) in cases.iter().zip(&scores) {
        let expected = case["score"].as_f64().unwrap() as f32;
        worst = worst.max((score - expected).abs());
    }
    assert!(
        worst < TOLERANCE,
        "{model_folder}: scores differ from PyTorch's by up to {worst} (tolerance {TOLERANCE})"
    );
    // The scores must also tell the cases apart, or the comparison proves little: every (image, prompt) pair
    // for a model that reads the prompt, every image for one that does not.
    let distinct: std::collections::BTreeSet<i64> = scores.iter().map(|s| (s * 1e3).round() as i64).collect();
    if golden["kind"] == "image_head" {
        let images: std::collections::BTreeSet<&str> =
            cases.iter().map(|case| case["image"].as_str().unwrap()).collect();
        assert_eq!(distinct.len(), images.len(), "{scores:?}");
    } else {
        assert!(distinct.len() > cases.len() / 2, "{scores:?}");
    }
}

#[test]
fn shapes_reward_matches_pytorch() {
    check("models/shapes-reward", "shapes-reward.json");
}

#[test]
fn clip_similarity_matches_pytorch() {
    check("models/tiny-clip-reward", "tiny-clip-reward.json");
}

#[test]
fn open_clip_cosine_matches_open_clip() {
    check("models/tiny-open-clip-reward", "tiny-open-clip-reward.json");
}

/// The open_clip folder's tokenizer pads with id 0 (`!`) as open_clip does, and leaves a `!` in a prompt to
/// BPE (`!</w>`, 256), unlike SDXL's second tokenizer, whose config makes `!` special.
#[test]
fn open_clip_tokens_match_open_clip() {
    let golden = common::read_json("tests/golden/reward/tiny-open-clip-reward.json");
    let tokenizer = ClipTokenizer::from_folder(&common::repo_path("models/tiny-open-clip-reward/tokenizer")).unwrap();
    let cases = golden["tokens"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        assert_eq!(
            tokenizer.encode(prompt).unwrap().ids,
            common::ids(&case["input_ids"]),
            "{prompt:?}"
        );
    }
}

#[test]
fn aesthetic_image_head_matches_pytorch() {
    check("models/tiny-aesthetic-reward", "tiny-aesthetic-reward.json");
}

/// ImageReward (BLIP): a BERT WordPiece tokenizer with BLIP's added tokens, an attention mask, the text encoder
/// cross-attending to the image, and the manifest's `score.normalize`, against ImageReward's own `score`
/// (torchvision's transform, the slow BertTokenizer, the PyTorch modules).
#[test]
fn image_reward_matches_its_reference() {
    check("models/tiny-image-reward", "tiny-image-reward.json");
    // torchvision's centre crop, which the manifest names: on an image 3 pixels wider than the crop it starts
    // one column later than transformers' would.
    let golden = common::read_json("tests/golden/reward/tiny-image-reward.json");
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let model = RewardModel::load(&mut runtime, &common::repo_path("models/tiny-image-reward")).unwrap();
    assert_eq!(model.manifest.image.crop_offset, CropOffset::RoundHalfEven);
    let crop = &golden["crop"];
    let path = format!("tests/golden/reward/{}", crop["image"].as_str().unwrap());
    let image = decode_image(&std::fs::read(common::repo_path(&path)).unwrap(), 1 << 24, "crop").unwrap();
    assert_eq!(image.dimensions(), (35, 32));
    let reference = common::floats(&crop["values"]);
    let worst = |values: Vec<f32>| {
        values
            .iter()
            .zip(&reference)
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max)
    };
    let ours = model.preprocessor().pixel_values(&image);
    assert!(worst(ours) < 1e-5, "pixel_values differ from torchvision's");
    let floored = Preprocessor::new(ImageSpec {
        crop_offset: CropOffset::Floor,
        ..model.manifest.image.clone()
    });
    assert!(
        worst(floored.pixel_values(&image)) > 0.01,
        "the golden does not tell the offsets apart"
    );
}

/// ImageReward's BERT tokenizer, read from its `tokenizer.json` by the same loader as CLIP's: the slow
/// BertTokenizer's ids (lowercasing, whitespace, punctuation, word pieces, BLIP's `[ENC]` as a special token,
/// truncation to 35 keeping `[SEP]`) and as many real tokens as its attention mask has.
#[test]
fn image_reward_tokens_match_bert() {
    let golden = common::read_json("tests/golden/reward/tiny-image-reward.json");
    let tokenizer = ClipTokenizer::from_folder(&common::repo_path("models/tiny-image-reward/tokenizer")).unwrap();
    assert_eq!(tokenizer.max_length(), 35);
    let cases = golden["tokens"].as_array().unwrap();
    assert_eq!(cases.len(), 3);
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let tokens = tokenizer.encode(prompt).unwrap();
        assert_eq!(tokens.ids, common::ids(&case["input_ids"]), "{prompt:?}");
        let real = common::ids(&case["attention_mask"])
            .iter()
            .filter(|&&bit| bit == 1)
            .count();
        assert_eq!(tokens.untruncated_len.min(35), real, "{prompt:?}");
    }
}
