//! Reward parity: the service's preprocessing and ONNX scores equal Python's (transformers' CLIPImageProcessor
//! and the PyTorch model) for the same image files, within 1e-4, for both manifest kinds: shapes-reward (a
//! reward head) and a tiny random CLIP exported by Optimum (CLIP similarity, as PickScore is used). The golden
//! files come from t2i_trainer.goldens.reward_goldens and t2i_trainer.build.export_clip_reward.

mod common;

use t2i_align::reward::model::RewardModel;
use t2i_align::reward::preprocess::decode_image;
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
    // The scores must also tell the prompts apart, or the comparison proves little.
    let distinct: std::collections::BTreeSet<i64> = scores.iter().map(|s| (s * 1e4).round() as i64).collect();
    assert!(distinct.len() > cases.len() / 2, "{scores:?}");
}

#[test]
fn shapes_reward_matches_pytorch() {
    check("models/shapes-reward", "shapes-reward.json");
}

#[test]
fn clip_similarity_matches_pytorch() {
    check("models/tiny-clip-reward", "tiny-clip-reward.json");
}
