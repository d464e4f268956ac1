//! img2img (issue #27): from the same starting image and the same two noises (the encoded image's latent
//! sample, then add_noise's), our pipeline's image equals Optimum's `ORTStableDiffusionImg2ImgPipeline` within
//! 2/255 per pixel, for DDIM, PNDM (whose warm-up counts from the first step that runs), DPM-Solver++ and Euler
//! from an image diffusers resizes (Lanczos) to the size it renders. The golden file comes from
//! `make_goldens --parts img2img`.

mod common;

use std::sync::Arc;

use serde_json::Value;
use t2i_align::pipeline::output::NoProgress;
use t2i_align::pipeline::request::InitImage;
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::{GenerateParams, ModelFolder, Pipeline};
use t2i_align::runtime::{Device, Runtime, SessionSettings};

fn golden() -> Value {
    common::read_json("tests/golden/img2img.json")
}

fn start_image(golden: &Value, name: &str) -> image::RgbImage {
    common::golden_image(&golden["images"][name])
}

#[test]
fn img2img_matches_optimum() {
    let golden = golden();
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let folder = Arc::new(ModelFolder::open(&common::tiny_sd()).unwrap());
    let mut pipeline = Pipeline::load(&mut runtime, folder).unwrap();
    assert!(pipeline.limits().img2img, "tiny-sd has a vae_encoder");
    let runs = golden["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 4);
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let start = start_image(&golden, run["image"].as_str().unwrap());
        let strength = run["strength"].as_f64().unwrap() as f32;
        let scheduler = SchedulerKind::from_class_name(run["scheduler_class"].as_str().unwrap()).unwrap();
        let base = common::golden_params(run, scheduler);
        let params = GenerateParams {
            init: Some(Arc::new(InitImage::new(&start, base.width, base.height, strength))),
            ..base
        };
        let draws = [common::floats(&run["posterior_noise"]), common::floats(&run["noise"])].concat();
        let output = pipeline.generate_from_latents(&params, draws, &mut NoProgress).unwrap();
        common::assert_within_2_levels(&format!("img2img {name}"), &output.images[0].png, run);
    }
}

/// `/generate` with `init_image`: the image's own size by default (rounded down to the model's multiple),
/// seeded results, strength that changes them, best_of on top, and every bad input refused by name.
#[test]
fn generate_takes_an_init_image_and_refuses_bad_ones_by_name() {
    use base64::Engine as _;
    let server = common::Server::start(&["--no-reward-model"]);
    let start = start_image(&golden(), "odd"); // 50x37: tiny-sd renders multiples of 16, so 48x32
    let encoded = base64::engine::general_purpose::STANDARD.encode(common::png_of(&start));
    let body = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"prompt": "a red circle", "init_image": encoded, "steps": 10, "seed": 3});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body.to_string()
    };
    let first =
        common::generated_images(&server.post_json("/generate", &body(serde_json::json!({"strength": 0.5, "n": 2}))));
    assert_eq!(first.len(), 2);
    assert_eq!(first[0].dimensions(), (48, 32));
    assert_ne!(first[0], first[1], "each image has its own noise");
    let again =
        common::generated_images(&server.post_json("/generate", &body(serde_json::json!({"strength": 0.5, "n": 2}))));
    assert_eq!(first, again, "the same seed gives the same images");
    let stronger =
        common::generated_images(&server.post_json("/generate", &body(serde_json::json!({"strength": 1.0}))));
    assert_ne!(first[0], stronger[0]);
    let sized =
        common::generated_images(&server.post_json("/generate", &body(serde_json::json!({"width": 32, "height": 64}))));
    assert_eq!(sized[0].dimensions(), (32, 64));
    // A starting image smaller than one multiple renders at one multiple.
    let tiny = base64::engine::general_purpose::STANDARD.encode(common::png_of(&image::RgbImage::new(3, 2)));
    let small = serde_json::json!({"prompt": "a", "init_image": tiny, "steps": 4}).to_string();
    assert_eq!(
        common::generated_images(&server.post_json("/generate", &small))[0].dimensions(),
        (16, 16)
    );

    for (extra, param, words) in [
        (serde_json::json!({"strength": 1.5}), "strength", "at most 1"),
        (serde_json::json!({"strength": 0.0}), "strength", "above 0"),
        (serde_json::json!({"init_image": "not base64!"}), "init_image", "base64"),
        (
            serde_json::json!({"init_image": "aGVsbG8="}),
            "init_image",
            "init_image",
        ),
    ] {
        let response = server.post_json("/generate", &body(extra.clone()));
        assert_eq!(response.status, 422, "{extra}: {}", response.text());
        assert_eq!(response.json()["error"]["param"], param, "{extra}: {}", response.text());
        assert!(response.text().contains(words), "{extra}: {}", response.text());
    }
    let alone = server.post_json("/generate", r#"{"prompt":"a","strength":0.5}"#);
    assert_eq!(alone.status, 422, "{}", alone.text());
    assert_eq!(alone.json()["error"]["param"], "strength");
}

/// An export without a VAE encoder serves text-to-image and refuses img2img, naming `init_image`.
#[test]
fn a_model_without_a_vae_encoder_refuses_img2img_by_name() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("no-encoder");
    common::copy_dir(&common::tiny_sd(), &copy);
    std::fs::remove_dir_all(copy.join("vae_encoder")).unwrap();
    let server = common::Server::start_with_model(&copy, &["--no-reward-model"]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(common::png_of(&image::RgbImage::new(32, 32)));
    let response = server.post_json(
        "/generate",
        &serde_json::json!({"prompt": "a", "init_image": encoded, "steps": 4}).to_string(),
    );
    assert_eq!(response.status, 422, "{}", response.text());
    assert_eq!(response.json()["error"]["param"], "init_image");
    assert!(response.text().contains("vae_encoder"), "{}", response.text());
    assert_eq!(server.post_json("/generate", r#"{"prompt":"a","steps":4}"#).status, 200);
}

/// `/v1/images/edits` as OpenAI's clients send it: a form with the image file.
#[test]
fn openai_edits_serves_img2img_from_a_form() {
    let server = common::Server::start(&["--no-reward-model"]);
    let png = common::png_of(&start_image(&golden(), "square"));
    let response = server.post_multipart(
        "/v1/images/edits",
        &[
            ("image", Some("start.png"), png.as_slice()),
            ("prompt", None, b"a red circle"),
            ("n", None, b"2"),
            ("strength", None, b"0.6"),
        ],
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let data = response.json()["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    for (parts, param) in [
        (vec![("prompt", None, b"a".as_slice())], "image"),
        (
            vec![
                ("image", Some("a.png"), png.as_slice()),
                ("mask", Some("m.png"), png.as_slice()),
                ("prompt", None, b"a".as_slice()),
            ],
            "mask",
        ),
        (
            vec![
                ("image", Some("a.png"), b"not an image".as_slice()),
                ("prompt", None, b"a".as_slice()),
            ],
            "image",
        ),
    ] {
        let response = server.post_multipart("/v1/images/edits", &parts);
        assert_eq!(response.status, 400, "{param}: {}", response.text());
        assert_eq!(response.json()["error"]["param"], param, "{}", response.text());
    }
}
