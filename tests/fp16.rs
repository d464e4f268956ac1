//! The fp16 variant (`t2i_trainer.build.convert_fp16`, issue #6): made from tiny-sd, checked component by component
//! by the converter, and served by the service unchanged (its inputs and outputs stay float32), with images
//! that match the float32 model's to within a level of 8-bit rounding. With `--io float16` the graphs also take
//! and return float16, as Optimum's `--dtype fp16` exports do, and the service converts at the session boundary.

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use std::path::Path;

use common::Server;

fn pixels(response: &serde_json::Value) -> Vec<u8> {
    let png = BASE64
        .decode(response["images"][0]["png_base64"].as_str().unwrap())
        .unwrap();
    image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
}

/// Runs the converter from `model` into `out` and returns its `fp16.json`.
fn convert(model: &Path, out: &Path, extra: &[&str]) -> serde_json::Value {
    let (model, out) = (model.display().to_string(), out.display().to_string());
    let mut args = vec!["--model", model.as_str(), "--out", out.as_str()];
    args.extend_from_slice(extra);
    let converted = common::run_python("t2i_trainer.build.convert_fp16", &args);
    assert!(
        converted.status.success(),
        "{}",
        String::from_utf8_lossy(&converted.stderr)
    );
    common::read_json_path(&Path::new(&out).join("fp16.json"))
}

#[test]
fn the_fp16_variant_serves_unchanged_and_matches_float32() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("tiny-sd-fp16");
    let model = common::tiny_sd();
    let report = convert(&model, &out, &[]);
    for component in ["text_encoder", "unet", "vae_decoder"] {
        let entry = &report["components"][component];
        assert_eq!(entry["dtype"], "float16", "{component}: {entry}");
        assert!(entry["relative_error"].as_f64().unwrap() < 0.02, "{component}: {entry}");
    }
    // The graphs really hold float16 weights: half the bytes.
    let size = |folder: &Path| std::fs::metadata(folder.join("unet/model.onnx")).unwrap().len();
    assert!(size(&out) * 10 < size(&model) * 6, "{} vs {}", size(&out), size(&model));

    let body = r#"{"prompt":"a red circle","steps":10,"seed":3}"#;
    let fp32 = Server::start(&[]).post_json("/generate", body);
    let fp16 = Server::start_with_model(&out, &[]).post_json("/generate", body);
    assert_eq!(fp16.status, 200, "{}", fp16.text());
    let (a, b) = (pixels(&fp32.json()), pixels(&fp16.json()));
    assert_eq!(a.len(), b.len());
    let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
    let mean = a.iter().zip(&b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64;
    assert!(worst <= 2 && mean < 0.25, "worst {worst}/255, mean {mean}/255");
}

#[test]
fn a_component_beyond_the_tolerance_is_kept_in_float32() {
    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("strict");
    let model = common::tiny_sd();
    // A tolerance no fp16 graph can meet: every component falls back to the original float32 graph.
    let report = convert(&model, &out, &["--tolerance", "1e-12"]);
    for component in ["text_encoder", "unet", "vae_decoder"] {
        assert_eq!(report["components"][component]["dtype"], "float32", "{report}");
        let original = std::fs::read(model.join(component).join("model.onnx")).unwrap();
        let kept = std::fs::read(out.join(component).join("model.onnx")).unwrap();
        assert!(original == kept, "{component} was not restored byte for byte");
    }
    let refused = common::run_python(
        "t2i_trainer.build.convert_fp16",
        &["--model", "/nonexistent", "--out", "/tmp/x"],
    );
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--model"));
}

#[test]
fn an_export_with_float16_inputs_and_outputs_serves_and_matches_float32() {
    use std::sync::Arc;
    use t2i_align::pipeline::output::NoProgress;
    use t2i_align::pipeline::scheduler::SchedulerKind;
    use t2i_align::pipeline::{GenerateParams, ModelFolder, Pipeline};
    use t2i_align::runtime::{Device, ResidentLoop, Runtime, SessionSettings};

    let folder = tempfile::tempdir().unwrap();
    let out = folder.path().join("tiny-sd-fp16-io");
    let report = convert(&common::tiny_sd(), &out, &["--io", "float16"]);
    assert_eq!(report["io"], "float16", "{report}");
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let mut load = |model: &Path| Pipeline::load(&mut runtime, Arc::new(ModelFolder::open(model).unwrap())).unwrap();
    let (mut fp32, mut fp16) = (load(&common::tiny_sd()), load(&out));
    let contract = fp16.describe_contract().join("\n");
    for input in [
        "`sample` float16",
        "`timestep` float16",
        "`encoder_hidden_states` float16",
        "`latent_sample` float16",
    ] {
        assert!(contract.contains(input), "{input} in {contract}");
    }
    let params = GenerateParams {
        prompt: "a red circle".into(),
        negative_prompt: String::new(),
        num_images: 2,
        steps: 10,
        guidance_scale: 7.5,
        scheduler: SchedulerKind::Ddim,
        seed: 3,
        width: 64,
        height: 64,
        eta: 0.0,
        guidance_rescale: 0.0,
        aesthetic_score: Default::default(),
        init: None,
    };
    let (a, b) = (
        fp32.generate(&params, &mut NoProgress).unwrap(),
        fp16.generate(&params, &mut NoProgress).unwrap(),
    );
    for (a, b) in a.images.iter().zip(&b.images) {
        let decode = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8().into_raw();
        let (a, b) = (decode(&a.png), decode(&b.png));
        let worst = a.iter().zip(&b).map(|(x, y)| x.abs_diff(*y)).max().unwrap();
        let mean = a.iter().zip(&b).map(|(x, y)| f64::from(x.abs_diff(*y))).sum::<f64>() / a.len() as f64;
        eprintln!("float16 I/O against float32: worst {worst}/255, mean {mean:.3}/255");
        assert!(worst <= 2 && mean < 0.25, "worst {worst}/255, mean {mean}/255");
    }
    // The device-resident loop runs the float16 UNet in float16 and keeps its state in float32: the same
    // images as the host loop on the same export.
    let settings = SessionSettings {
        resident_loop: ResidentLoop::On,
        ..SessionSettings::default()
    };
    let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, settings).unwrap();
    let mut resident = Pipeline::load(&mut runtime, Arc::new(ModelFolder::open(&out).unwrap())).unwrap();
    let on_device = resident.generate(&params, &mut NoProgress).unwrap();
    for (a, b) in b.images.iter().zip(&on_device.images) {
        let decode = |png: &[u8]| image::load_from_memory(png).unwrap().to_rgb8().into_raw();
        let worst = common::max_level_difference(&decode(&a.png), &decode(&b.png));
        assert!(worst <= 1, "float16 export, resident against host loop: {worst}/255");
    }
}
