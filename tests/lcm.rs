//! Latent Consistency Models (issue #27): a guidance-distilled UNet takes the guidance scale as an embedding
//! (`timestep_cond`) instead of classifier-free guidance. From the same latents, our image equals Optimum's
//! `ORTLatentConsistencyModelPipeline` within 2/255 per pixel on models/tiny-lcm, at two guidance scales and a
//! non-square size. The service runs it with one UNet row per image and the export's own defaults (4 steps,
//! guidance 8.5). The golden file comes from `make_goldens --parts lcm`; the embedding itself is checked by the
//! unit test `guidance_embedding_matches_diffusers`.

mod common;

use std::sync::Arc;

use common::Server;
use serde_json::json;
use t2i_align::pipeline::output::NoProgress;
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::{ModelFolder, Pipeline};
use t2i_align::runtime::{Device, Runtime, SessionSettings};

fn tiny_lcm() -> std::path::PathBuf {
    common::repo_path("models/tiny-lcm")
}

#[test]
fn lcm_matches_optimum() {
    let golden = common::read_json("tests/golden/lcm.json");
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let folder = Arc::new(ModelFolder::open(&tiny_lcm()).unwrap());
    let mut pipeline = Pipeline::load(&mut runtime, folder).unwrap();
    let limits = pipeline.limits();
    assert_eq!(
        limits.default_scheduler,
        SchedulerKind::from_class_name("LCMScheduler").unwrap()
    );
    assert_eq!((limits.default_steps, limits.default_guidance_scale), (4, 8.5));
    let runs = golden["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    for run in runs {
        let name = run["name"].as_str().unwrap();
        let params = common::golden_params(run, limits.default_scheduler);
        let output = pipeline
            .generate_from_latents(&params, common::floats(&run["latents"]), &mut NoProgress)
            .unwrap();
        common::assert_within_2_levels(&format!("lcm {name}"), &output.images[0].png, run);
    }
}

/// Served: the export's defaults (4 LCM steps), one UNet row per image whatever the guidance scale, and the
/// guidance scale still steers the image (through the embedding).
#[test]
fn the_service_runs_lcm_unguided_with_its_defaults() {
    let server = Server::start_with_model(&tiny_lcm(), &["--no-reward-model"]);
    let before = server.get("/metrics").text();
    let response = server.post_json(
        "/generate",
        &json!({"prompt": "a red circle", "seed": 4, "n": 2}).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let images = common::generated_images(&response);
    assert_eq!(images.len(), 2);
    let after = server.get("/metrics").text();
    let calls = common::metric(&after, "t2i_unet_batch_requests_count")
        - common::metric(&before, "t2i_unet_batch_requests_count");
    let rows = common::metric(&after, "t2i_unet_batch_rows_sum") - common::metric(&before, "t2i_unet_batch_rows_sum");
    assert_eq!(calls, 4.0, "the default 4 steps, one UNet call each");
    assert_eq!(
        rows, 8.0,
        "guidance 8.5 without classifier-free guidance: one row per image per step"
    );
    let other = server.post_json(
        "/generate",
        &json!({"prompt": "a red circle", "seed": 4, "n": 2, "guidance_scale": 2.0}).to_string(),
    );
    assert_ne!(
        common::generated_images(&other)[0],
        images[0],
        "the guidance scale is embedded"
    );
}
