//! SDXL and SDXL-Turbo (issue #27): from the same initial latents, our pipeline's image equals Optimum's
//! `ORTStableDiffusionXLPipeline` within 2/255 per pixel on models/tiny-sdxl (two text encoders, pooled
//! `text_embeds`, `time_ids`) and its Turbo variant; with a negative prompt, without one (zeros, by
//! `force_zeros_for_empty_prompt`), non-square, one unguided step of Euler ancestral, and Euler with trailing
//! spacing. Then the service around it: continuous batching, best_of, Turbo's defaults, and clear refusals.

mod common;

use common::Server;
use serde_json::{json, Value};
use t2i_align::pipeline::output::NoProgress;
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::tokenizer::ClipTokenizer;
use t2i_align::pipeline::ModelFolder;

fn tiny_sdxl() -> std::path::PathBuf {
    common::repo_path("models/tiny-sdxl")
}

fn tiny_sdxl_turbo() -> std::path::PathBuf {
    common::repo_path("models/tiny-sdxl-turbo")
}

fn golden() -> Value {
    common::read_json("tests/golden/sdxl.json")
}

/// Our image for one golden run, and the largest per-pixel difference from Optimum's.
fn max_pixel_error(run: &Value) -> f32 {
    let model = match run["model"].as_str().unwrap() {
        "base" => tiny_sdxl(),
        _ => tiny_sdxl_turbo(),
    };
    let mut pipeline = common::load_pipeline(&model);
    let scheduler = SchedulerKind::from_class_name(run["scheduler_class"].as_str().unwrap()).unwrap();
    // diffusers' "no negative prompt" is the service's empty one.
    let params = common::golden_params(run, scheduler);
    let output = pipeline
        .generate_from_latents(&params, common::floats(&run["latents"]), &mut NoProgress)
        .unwrap();
    let ours = image::load_from_memory(&output.images[0].png).unwrap().to_rgb8();
    assert_eq!(
        (ours.height() as u64, ours.width() as u64),
        (run["height"].as_u64().unwrap(), run["width"].as_u64().unwrap())
    );
    let theirs = common::floats(&run["image"]);
    assert_eq!(ours.as_raw().len(), theirs.len());
    let error = ours
        .as_raw()
        .iter()
        .zip(&theirs)
        .map(|(&a, &b)| (a as f32 / 255.0 - b).abs())
        .fold(0.0, f32::max);
    eprintln!("sdxl {}: max per-pixel error {:.3}/255", run["name"], error * 255.0);
    error
}

#[test]
fn sdxl_and_turbo_match_optimum() {
    let golden = golden();
    let runs = golden["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        let error = max_pixel_error(run);
        assert!(
            error <= 2.0 / 255.0,
            "{}: max per-pixel error {error} (= {} / 255)",
            run["name"],
            error * 255.0
        );
    }
}

/// SDXL's second tokenizer pads with `!`, a special token in transformers: a `!` in a prompt is id 0 there,
/// where the first tokenizer's BPE gives `!</w>`.
#[test]
fn the_second_tokenizer_splits_on_its_pad_token_as_transformers_does() {
    let tokenizer = ClipTokenizer::from_folder(&tiny_sdxl().join("tokenizer_2")).unwrap();
    for case in golden()["tokenizer_2"].as_array().unwrap() {
        let prompt = case["prompt"].as_str().unwrap();
        let expected = common::ids(&case["input_ids"]);
        assert_eq!(tokenizer.encode(prompt).unwrap().ids, expected, "{prompt}");
    }
    let first = ClipTokenizer::from_folder(&tiny_sdxl().join("tokenizer")).unwrap();
    assert_ne!(first.encode("wow!").unwrap().ids[2], 0);
}

#[test]
fn the_default_size_comes_from_the_export() {
    let limits = common::load_pipeline(&tiny_sdxl()).limits();
    // sample_size 8 cells × VAE factor 4; traced at a multiple of the UNet's 2× downsampling, so multiples of 8.
    assert_eq!(
        (limits.default_height, limits.default_width, limits.size_multiple),
        (32, 32, 8)
    );
    let turbo = common::load_pipeline(&tiny_sdxl_turbo()).limits();
    assert_eq!((turbo.default_steps, turbo.default_guidance_scale), (1, 0.0));
    assert_eq!(turbo.default_scheduler, SchedulerKind::EulerAncestral);
}

fn pngs(response: &common::Response) -> Vec<Vec<u8>> {
    common::generated_images(response)
        .into_iter()
        .map(image::RgbImage::into_raw)
        .collect()
}

/// Concurrent SDXL requests share UNet calls (their pooled embeddings and time ids batched with their latents)
/// and each still gets the image it gets alone; best_of ranks SDXL candidates with the reward model.
#[test]
fn the_service_batches_sdxl_requests_and_ranks_their_candidates() {
    let server = Server::start_with_model(&tiny_sdxl(), &[]);
    let bodies: Vec<String> = [
        json!({"prompt": "a red circle", "steps": 12, "seed": 1, "negative_prompt": "blurry"}),
        json!({"prompt": "two blue squares", "steps": 12, "seed": 2, "n": 2}),
        json!({"prompt": "a green star", "steps": 12, "seed": 3, "guidance_scale": 1.0}),
    ]
    .iter()
    .map(Value::to_string)
    .collect();
    let solo: Vec<_> = bodies
        .iter()
        .map(|body| pngs(&server.post_json("/generate", body)))
        .collect();
    let before = server.get("/metrics").text();
    let handles: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| {
            let port = server.port;
            std::thread::spawn(move || common::request(port, "POST", "/generate", Some(&body)).unwrap())
        })
        .collect();
    let together: Vec<_> = handles
        .into_iter()
        .map(|handle| pngs(&handle.join().unwrap()))
        .collect();
    let after = server.get("/metrics").text();
    for ((body, alone), batched) in bodies.iter().zip(&solo).zip(&together) {
        assert_eq!(alone.len(), batched.len(), "{body}");
        for (a, b) in alone.iter().zip(batched) {
            let worst = a.iter().zip(b).map(|(x, y)| x.abs_diff(*y)).max().unwrap_or(0);
            assert!(worst <= 8, "{body}: batched differs from solo by {worst} levels");
        }
    }
    let calls = common::metric(&after, "t2i_unet_batch_requests_count")
        - common::metric(&before, "t2i_unet_batch_requests_count");
    let members =
        common::metric(&after, "t2i_unet_batch_requests_sum") - common::metric(&before, "t2i_unet_batch_requests_sum");
    assert!(
        members > calls,
        "no UNet call was shared: {members} request-steps in {calls} calls"
    );

    let best = server.post_json(
        "/generate",
        &json!({"prompt": "a red circle", "steps": 4, "seed": 5, "best_of": 3, "return_candidate_scores": true})
            .to_string(),
    );
    assert_eq!(best.status, 200, "{}", best.text());
    let best = best.json();
    let scores: Vec<f64> = best["selection"]["candidate_scores"]
        .as_array()
        .unwrap()
        .iter()
        .map(|score| score.as_f64().unwrap())
        .collect();
    assert_eq!(scores.len(), 3);
    let top = scores.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (best["images"][0]["reward"].as_f64().unwrap() - top).abs() < 1e-6,
        "{best}"
    );
}

/// Turbo's export asks for one step without guidance: one UNet row per image and one call per request.
#[test]
fn turbo_serves_one_unguided_step_by_default() {
    let server = Server::start_with_model(&tiny_sdxl_turbo(), &[]);
    let before = server.get("/metrics").text();
    let response = server.post_json("/generate", r#"{"prompt":"a red circle","seed":4,"n":2}"#);
    assert_eq!(pngs(&response).len(), 2);
    let after = server.get("/metrics").text();
    let calls = common::metric(&after, "t2i_unet_batch_requests_count")
        - common::metric(&before, "t2i_unet_batch_requests_count");
    assert_eq!(calls, 1.0, "one step is one UNet call");
    let rows = common::metric(&after, "t2i_unet_batch_rows_sum") - common::metric(&before, "t2i_unet_batch_rows_sum");
    assert_eq!(rows, 2.0, "no guidance: one row per image");
}

#[test]
fn an_sdxl_export_without_its_second_encoder_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("tiny-sdxl");
    common::copy_dir(&tiny_sdxl(), &copy);
    std::fs::remove_file(copy.join("text_encoder_2/model.onnx")).unwrap();
    let error = ModelFolder::open(&copy)
        .err()
        .expect("opens without text_encoder_2")
        .to_string();
    assert!(error.contains("missing text_encoder_2/model.onnx"), "{error}");

    std::fs::remove_dir_all(copy.join("tokenizer_2")).unwrap();
    common::copy_dir(&tiny_sdxl().join("text_encoder_2"), &copy.join("text_encoder_2"));
    let error = ModelFolder::open(&copy)
        .err()
        .expect("opens without tokenizer_2")
        .to_string();
    assert!(error.contains("missing tokenizer_2/"), "{error}");

    let index = copy.join("model_index.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    config["_class_name"] = json!("StableDiffusionXLInpaintPipeline");
    std::fs::write(&index, config.to_string()).unwrap();
    let error = ModelFolder::open(&copy)
        .err()
        .expect("opens an inpainting class")
        .to_string();
    assert!(
        error.contains("StableDiffusionXLInpaintPipeline is not served") && error.contains("StableDiffusionXLPipeline"),
        "{error}"
    );
}
