//! `--optimize-graphs` (#29): the transformer optimiser's graphs are made at load, checked, recorded beside the
//! model, loaded in place of the originals while those still match, and give the same images.

mod common;

use std::path::Path;

use common::{copy_dir, generated_images, repo_path, tiny_sd, tiny_sd_wide, Server};

fn trainer_python() -> String {
    let python = repo_path(".venv-trainer/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run the tests through `make test`",
        python.display()
    );
    python.display().to_string()
}

fn images(server: &Server, size: u32) -> Vec<image::RgbImage> {
    let body = format!(
        r#"{{"prompt": "a red circle", "n": 2, "steps": 4, "seed": 11, "guidance_scale": 5.0, "width": {size}, "height": {size}}}"#
    );
    generated_images(&server.post_json("/generate", &body))
}

fn largest_difference(a: &[image::RgbImage], b: &[image::RgbImage]) -> u8 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .flat_map(|(a, b)| a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| x.abs_diff(*y)))
        .max()
        .unwrap_or(0)
}

fn manifest(folder: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(folder.join("optimized/optimized.json")).expect("optimized.json");
    serde_json::from_str(&text).expect("optimized.json is JSON")
}

/// Optimises a copy of `model` at load, then serves it with and without the optimised graphs.
fn optimised_images_match(model: &Path, size: u32) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    copy_dir(model, &folder);
    let python = trainer_python();

    let optimised = Server::start_with_model(&folder, &["--optimize-graphs", "on", "--trainer-python", &python]);
    let log = optimised.log();
    assert!(log.contains("graphs optimised"), "{log}");
    assert!(log.contains("loading the optimised graphs"), "{log}");
    let record = manifest(&folder);
    let unet = &record["components"]["unet"];
    assert_eq!(unet["kept"], true, "{record}");
    assert!(unet["relative_error"].as_f64().unwrap() <= 1e-3, "{record}");
    let fusions = unet["fusions"].as_object().expect("fusions");
    assert!(
        fusions.keys().any(|op| op.contains("Attention")),
        "the UNet's attention is fused: {record}"
    );
    assert!(folder.join("optimized/unet/model.onnx").is_file());
    let fused = images(&optimised, size);
    drop(optimised);

    let original = Server::start_with_model(&folder, &["--optimize-graphs", "off"]);
    assert!(!original.log().contains("optimised graphs"), "{}", original.log());
    let plain = images(&original, size);
    drop(original);
    let difference = largest_difference(&fused, &plain);
    assert!(
        difference <= 2,
        "the optimised graphs change pixels by up to {difference}"
    );

    // `cached` (the default) loads them without running the optimiser: a trainer Python that does not exist
    // is never asked for.
    let cached = Server::start_with_model(&folder, &["--trainer-python", "/nonexistent/bin/python"]);
    let log = cached.log();
    assert!(log.contains("loading the optimised graphs"), "{log}");
    assert!(!log.contains("optimising the graphs"), "{log}");
    assert_eq!(largest_difference(&images(&cached, size), &fused), 0);
}

#[test]
fn optimised_graphs_give_the_same_images() {
    optimised_images_match(&tiny_sd(), 64);
}

#[test]
fn optimised_graphs_with_external_weights_give_the_same_images() {
    // tiny-sd-wide keeps its UNet's weights in unet/model.onnx_data; so does the optimised copy.
    optimised_images_match(&tiny_sd_wide(), 64);
}

#[test]
fn stale_or_failed_optimisations_leave_the_export_serving() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("model");
    copy_dir(&tiny_sd(), &folder);

    // An optimiser that cannot run: the server says so and serves the export's own graphs.
    let failed = Server::start_with_model(
        &folder,
        &["--optimize-graphs", "on", "--trainer-python", "/nonexistent/bin/python"],
    );
    let log = failed.log();
    assert!(log.contains("the graph optimiser failed"), "{log}");
    assert!(log.contains("/nonexistent/bin/python"), "{log}");
    assert!(!log.contains("loading the optimised graphs"), "{log}");
    assert_eq!(images(&failed, 64).len(), 2);
    drop(failed);

    // A record made from other graphs (the UNet's sha256 no longer matches) is stale: not loaded.
    let python = trainer_python();
    drop(Server::start_with_model(
        &folder,
        &["--optimize-graphs", "on", "--trainer-python", &python],
    ));
    let mut record = manifest(&folder);
    record["components"]["unet"]["sha256"] = serde_json::json!("0".repeat(64));
    std::fs::write(folder.join("optimized/optimized.json"), record.to_string()).unwrap();
    let stale = Server::start_with_model(&folder, &[]);
    let log = stale.log();
    assert!(log.contains("the optimised graphs are stale"), "{log}");
    assert!(log.contains("unet/model.onnx changed since it was optimised"), "{log}");
    assert!(!log.contains("loading the optimised graphs"), "{log}");
}
