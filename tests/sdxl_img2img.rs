//! SDXL image-to-image and SDXL's refiner (issue #27): from the same starting image and the same two noises
//! (the encoded image's latent sample, then add_noise's), our image equals Optimum's
//! `ORTStableDiffusionXLImg2ImgPipeline` within 2/255 per pixel, on models/tiny-sdxl-refiner (one text encoder,
//! `text_encoder_2`; five time ids ending in an aesthetic score: diffusers' defaults 6 and 2.5, and 7 and 2
//! given) and on the base model models/tiny-sdxl (six time ids). Then the service: a refiner refuses a request
//! without a starting image, and aesthetic scores are ignored, with a warning, where a model takes none. The golden file comes
//! from `make_goldens --parts sdxl_img2img`.

mod common;

use std::sync::Arc;

use common::Server;
use serde_json::{json, Value};
use t2i_align::pipeline::output::NoProgress;
use t2i_align::pipeline::request::{AestheticScores, InitImage};
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::{GenerateParams, Pipeline};

fn tiny_sdxl() -> std::path::PathBuf {
    common::repo_path("models/tiny-sdxl")
}

fn tiny_sdxl_refiner() -> std::path::PathBuf {
    common::repo_path("models/tiny-sdxl-refiner")
}

#[test]
fn sdxl_img2img_and_the_refiner_match_optimum() {
    let golden = common::read_json("tests/golden/sdxl_img2img.json");
    let runs = golden["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 3);
    let mut refiner = common::load_pipeline(&tiny_sdxl_refiner());
    let mut base = common::load_pipeline(&tiny_sdxl());
    let scheduler = SchedulerKind::from_class_name("EulerDiscreteScheduler").unwrap();
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let pipeline = match run["model"].as_str().unwrap() {
            "refiner" => &mut refiner,
            _ => &mut base,
        };
        assert_eq!(pipeline.model().default_scheduler, scheduler, "{name}");
        let defaults = AestheticScores::default();
        let score = |field: &str, default: f32| run[field].as_f64().map_or(default, |value| value as f32);
        let base = common::golden_params(run, scheduler);
        let start = common::golden_image(&run["init_image"]);
        let strength = run["strength"].as_f64().unwrap() as f32;
        let params = GenerateParams {
            aesthetic_score: Some(AestheticScores {
                score: score("aesthetic_score", defaults.score),
                negative: score("negative_aesthetic_score", defaults.negative),
            }),
            init: Some(Arc::new(InitImage::new(&start, base.width, base.height, strength))),
            ..base
        };
        let draws = [common::floats(&run["posterior_noise"]), common::floats(&run["noise"])].concat();
        let output = pipeline.generate_from_latents(&params, draws, &mut NoProgress).unwrap();
        common::assert_within_2_levels(&format!("sdxl img2img {name}"), &output.images[0].png, run);
    }
}

/// The aesthetic score is an input that matters: the same refinement at another score is another image.
#[test]
fn the_refiner_is_conditioned_on_the_aesthetic_score() {
    let golden = common::read_json("tests/golden/sdxl_img2img.json");
    let run = &golden["runs"][0];
    let mut refiner = common::load_pipeline(&tiny_sdxl_refiner());
    let limits = refiner.limits();
    assert!(limits.requires_init_image && limits.img2img && refiner.model().family.aesthetic_scores());
    let base = common::load_pipeline(&tiny_sdxl());
    assert!(!base.limits().requires_init_image && !base.model().family.aesthetic_scores());
    let start = common::golden_image(&run["init_image"]);
    let image_at = |pipeline: &mut Pipeline, score: f32| {
        let params = GenerateParams {
            prompt: "a red circle".into(),
            negative_prompt: String::new(),
            num_images: 1,
            steps: 6,
            guidance_scale: 5.0,
            scheduler: SchedulerKind::from_class_name("EulerDiscreteScheduler").unwrap(),
            seed: 11,
            width: 32,
            height: 32,
            eta: 0.0,
            guidance_rescale: 0.0,
            aesthetic_score: Some(AestheticScores { score, negative: 2.5 }),
            init: Some(Arc::new(InitImage::new(&start, 32, 32, 0.8))),
        };
        pipeline.generate(&params, &mut NoProgress).unwrap().images[0]
            .png
            .clone()
    };
    let six = image_at(&mut refiner, 6.0);
    assert_eq!(six, image_at(&mut refiner, 6.0), "seeded: the same image");
    assert_ne!(six, image_at(&mut refiner, 9.0), "the score changes the image");
}

/// The refiner served: it warms up (on a gray image), refines a posted image with or without aesthetic scores,
/// and refuses by name a request without `init_image` and a score out of range, on /generate and OpenAI's
/// route. The base model ignores aesthetic scores, which it cannot take, and says so.
#[test]
fn the_service_serves_the_refiner_and_refuses_what_it_cannot_do() {
    use base64::Engine as _;
    let golden = common::read_json("tests/golden/sdxl_img2img.json");
    let start = common::golden_image(&golden["runs"][1]["init_image"]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(common::png_of(&start));
    let server = Server::start_with_model(&tiny_sdxl_refiner(), &["--no-reward-model"]);
    let body = |extra: Value| {
        let mut body = json!({"prompt": "a red circle", "init_image": encoded, "steps": 6, "seed": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let plain = common::generated_images(&server.post_json("/generate", &body(json!({"n": 2}))));
    assert_eq!(plain.len(), 2);
    assert_eq!(plain[0].dimensions(), (start.width() / 8 * 8, start.height() / 8 * 8));
    let defaults = common::generated_images(&server.post_json(
        "/generate",
        &body(json!({"n": 2, "aesthetic_score": 6.0, "negative_aesthetic_score": 2.5})),
    ));
    assert_eq!(plain, defaults, "6 and 2.5 are the defaults");
    let scored = common::generated_images(&server.post_json("/generate", &body(json!({"aesthetic_score": 9.5}))));
    assert_ne!(plain[0], scored[0]);

    let refused = server.post_json("/generate", &json!({"prompt": "a red circle"}).to_string());
    assert_eq!(refused.status, 422, "{}", refused.text());
    let error = refused.json();
    assert_eq!(error["error"]["param"], "init_image", "{error}");
    assert!(
        error["error"]["message"].as_str().unwrap().contains("refines images"),
        "{error}"
    );
    for (extra, param) in [
        (json!({"aesthetic_score": 11.0}), "aesthetic_score"),
        (json!({"negative_aesthetic_score": -1.0}), "negative_aesthetic_score"),
    ] {
        let response = server.post_json("/generate", &body(extra.clone()));
        assert_eq!(response.status, 422, "{extra}: {}", response.text());
        let error = response.json();
        assert_eq!(error["error"]["param"], param, "{error}");
        assert!(
            error["error"]["message"].as_str().unwrap().contains("between 0 and 10"),
            "{error}"
        );
    }
    let openai = server.post_json("/v1/images/generations", &json!({"prompt": "a red circle"}).to_string());
    assert_eq!(openai.status, 400, "{}", openai.text());
    assert_eq!(openai.json()["error"]["param"], "init_image");
    assert!(server.log().contains("warmed up"), "{}", server.log());
    drop(server);

    let base = Server::start_with_model(&tiny_sdxl(), &["--no-reward-model"]);
    // SDXL img2img on the base model: a starting image, no aesthetic score.
    let plain = base.post_json("/generate", &body(json!({})));
    assert_eq!(plain.json()["warnings"], json!([]), "{}", plain.text());
    let scored = base.post_json("/generate", &body(json!({"aesthetic_score": 7.0})));
    assert_eq!(
        common::generated_images(&scored),
        common::generated_images(&plain),
        "ignored"
    );
    let warnings = scored.json()["warnings"].to_string();
    assert!(warnings.contains("takes no aesthetic score"), "{warnings}");
}
