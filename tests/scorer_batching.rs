//! The scorer batches images across requests: jobs that wait while a batch runs share the next ONNX call, a
//! job larger than the batch limit is split, and every job gets its own scores back in order.

mod common;

use std::sync::Arc;
use std::time::Duration;

use t2i_align::metrics::Metrics;
use t2i_align::reward::model::RewardModel;
use t2i_align::reward::preprocess::decode_image;
use t2i_align::reward::Scorer;
use t2i_align::runtime::{Device, Runtime, SessionSettings};

#[test]
fn waiting_requests_share_a_batch_and_get_their_own_scores() {
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let model = RewardModel::load(&mut runtime, &common::repo_path("models/shapes-reward")).unwrap();
    let preprocessor = model.preprocessor().clone();
    let scorer = Arc::new(Scorer::start(model, 64, 16, Arc::new(Metrics::new())).unwrap());
    let images: Vec<Vec<f32>> = (0..5)
        .map(|index| {
            let path = common::repo_path(&format!("tests/golden/reward/shapes-reward/{index}.png"));
            preprocessor.pixel_values(&decode_image(&std::fs::read(path).unwrap(), 1 << 24, "image").unwrap())
        })
        .collect();
    let job = |count: usize, prompt: &str| -> (Vec<String>, Vec<f32>) {
        let pixels = (0..count).flat_map(|i| images[i % images.len()].clone()).collect();
        (vec![prompt.to_string(); count], pixels)
    };

    // Alone first, for reference.
    let (prompts, pixels) = job(8, "a red circle");
    let alone = scorer.score_blocking(prompts, pixels).unwrap();
    assert_eq!(alone.batch_sizes, vec![8]);

    // A big job (two batches of 64), and two small ones that arrive while its first batch runs.
    let big = {
        let scorer = scorer.clone();
        let (prompts, pixels) = job(128, "two blue stars on a white background");
        std::thread::spawn(move || scorer.score_blocking(prompts, pixels).unwrap())
    };
    // Long enough for the big job to be submitted first even on a loaded machine; short against its two batches.
    std::thread::sleep(Duration::from_millis(20));
    let small: Vec<_> = ["a red circle", "three green triangles"]
        .into_iter()
        .map(|prompt| {
            let scorer = scorer.clone();
            let (prompts, pixels) = job(8, prompt);
            std::thread::spawn(move || scorer.score_blocking(prompts, pixels).unwrap())
        })
        .collect();
    let big = big.join().unwrap();
    let small: Vec<_> = small.into_iter().map(|handle| handle.join().unwrap()).collect();

    assert_eq!(big.scores.len(), 128);
    assert_eq!(big.batch_sizes.len(), 2, "128 images at a limit of 64 need two calls");
    for scored in &small {
        assert_eq!(scored.scores.len(), 8);
        assert!(
            scored.batch_sizes.iter().all(|&size| size > 8),
            "a waiting request should share its ONNX call: {:?}",
            scored.batch_sizes
        );
    }
    // Scores do not depend on the company a request keeps in its batch.
    for (a, b) in small[0].scores.iter().zip(&alone.scores) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    assert!(
        small[1].scores != small[0].scores,
        "different prompts must score differently"
    );
}
