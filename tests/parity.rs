//! End-to-end parity: from the same initial latents, our pipeline's image equals Optimum's
//! `ORTStableDiffusionPipeline` within 2/255 per pixel, for DDIM and Euler, on both exporter contracts
//! (float-scalar timestep + int64 ids, and the legacy int64 [B] timestep + int32 ids); and on tiny-sd-wide, a
//! non-square export with its UNet's weights in external data, at the size Optimum picks by itself and at a
//! multiple of 8 that is not one of the UNet's downsampling.

mod common;

use std::sync::Arc;

use t2i_align::pipeline::output::NoProgress;
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::{GenerateParams, ModelFolder, Pipeline};
use t2i_align::runtime::{Device, Runtime, SessionSettings};

fn max_pixel_error(golden_name: &str, model: &std::path::Path) -> f32 {
    let golden = common::read_json(&format!("tests/golden/{golden_name}"));
    let mut pipeline = common::load_pipeline(model);
    let params = GenerateParams {
        prompt: golden["prompt"].as_str().unwrap().into(),
        negative_prompt: golden["negative_prompt"].as_str().unwrap().into(),
        num_images: 1,
        steps: golden["steps"].as_u64().unwrap() as usize,
        guidance_scale: golden["guidance_scale"].as_f64().unwrap() as f32,
        scheduler: SchedulerKind::from_name(golden["scheduler"].as_str().unwrap()).unwrap(),
        seed: 0,
        width: golden["width"].as_u64().unwrap() as usize,
        height: golden["height"].as_u64().unwrap() as usize,
        eta: 0.0,
        guidance_rescale: 0.0,
        aesthetic_score: Default::default(),
        init: None,
    };
    let latents = common::floats(&golden["latents"]);
    let output = pipeline
        .generate_from_latents(&params, latents, &mut NoProgress)
        .unwrap();
    let ours = image::load_from_memory(&output.images[0].png)
        .unwrap()
        .to_rgb8()
        .into_raw();
    let theirs = common::floats(&golden["image"]);
    assert_eq!(ours.len(), theirs.len());
    let error = ours
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
        .fold(0.0, f32::max);
    eprintln!(
        "{golden_name} on {}: max per-pixel error {:.3}/255",
        model.display(),
        error * 255.0
    );
    error
}

#[test]
fn ddim_matches_optimum() {
    let error = max_pixel_error("e2e_ddim.json", &common::tiny_sd());
    assert!(
        error <= 2.0 / 255.0,
        "max per-pixel error {error} (= {} / 255)",
        error * 255.0
    );
}

#[test]
fn euler_matches_optimum() {
    let error = max_pixel_error("e2e_euler.json", &common::tiny_sd());
    assert!(
        error <= 2.0 / 255.0,
        "max per-pixel error {error} (= {} / 255)",
        error * 255.0
    );
}

#[test]
fn legacy_contract_matches_optimum() {
    for golden in ["e2e_ddim.json", "e2e_euler.json"] {
        let error = max_pixel_error(golden, &common::tiny_sd_legacy());
        assert!(error <= 2.0 / 255.0, "{golden}: max per-pixel error {error}");
    }
}

#[test]
fn non_square_sizes_match_optimum_with_external_data() {
    for golden in ["e2e_wide_default.json", "e2e_wide_56x40.json"] {
        let error = max_pixel_error(golden, &common::tiny_sd_wide());
        assert!(error <= 2.0 / 255.0, "{golden}: max per-pixel error {error}");
    }
}

/// The sizes a request may ask for, and the one it gets by default, are those Optimum renders: the UNet's own
/// `sample_size` ([9, 13] cells, so 72×104), and any multiple of 8 where the export traced explicit upsample
/// sizes; only multiples of 16 (8 × the UNet's 2× downsampling) where it traced a fixed 2× upsampling.
#[test]
fn the_default_size_and_size_multiple_come_from_the_export() {
    let golden = common::read_json("tests/golden/e2e_wide_default.json");
    let wide = common::load_pipeline(&common::tiny_sd_wide()).limits();
    assert_eq!((wide.default_height, wide.default_width), (72, 104));
    assert_eq!(
        (golden["height"].as_u64(), golden["width"].as_u64()),
        (Some(72), Some(104)),
        "Optimum's own default"
    );
    assert_eq!(wide.size_multiple, 8);

    let square = common::load_pipeline(&common::tiny_sd()).limits();
    assert_eq!(
        (square.default_height, square.default_width, square.size_multiple),
        (64, 64, 16)
    );
}

#[test]
fn a_missing_external_data_file_is_named_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tiny-sd-wide");
    common::copy_dir(&common::tiny_sd_wide(), &copy);
    std::fs::remove_file(copy.join("unet/model.onnx_data")).unwrap();
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let folder = Arc::new(ModelFolder::open(&copy).unwrap());
    let error = Pipeline::load(&mut runtime, folder)
        .err()
        .expect("loads without its weights")
        .to_string();
    assert!(
        error.contains("unet") && error.contains("`model.onnx_data`") && error.contains("missing"),
        "{error}"
    );
}
