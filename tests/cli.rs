//! The binary's command line: `generate`, `openapi`, and start-up failures that must be loud and clear.

mod common;

use std::process::{Command, Output};

use common::{binary, ort_dylib, repo_path, tiny_sd};

fn run(args: &[&str], ort: Option<&std::path::Path>) -> Output {
    let mut command = Command::new(binary());
    command
        .args(args)
        .env("RUST_LOG", "info,ort=warn")
        .env_remove("ORT_DYLIB_PATH");
    if let Some(path) = ort {
        command.env("ORT_DYLIB_PATH", path);
    }
    command.output().expect("run t2i-align")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn openapi_spec_is_committed_and_current() {
    let output = run(&["openapi"], None);
    assert!(output.status.success());
    let generated = String::from_utf8(output.stdout).unwrap();
    let committed = std::fs::read_to_string(repo_path("openapi/openapi.json")).unwrap_or_default();
    assert!(
        generated == committed,
        "openapi/openapi.json is stale: regenerate it with `make openapi` (t2i-align openapi > openapi/openapi.json)"
    );
}

#[test]
fn generate_writes_a_png() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cat.png");
    let model = tiny_sd();
    let output = run(
        &[
            "generate",
            "a green triangle",
            "--steps",
            "3",
            "--seed",
            "7",
            "-o",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
        Some(&ort_dylib()),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let png = image::open(&out).expect("a PNG was written").to_rgb8();
    assert_eq!(png.dimensions(), (64, 64));
    assert!(stderr(&output).contains("seed 7"));
}

#[test]
fn generate_serves_the_shapes_model_by_default() {
    // No --model: the default is models/shapes-sd, a VAE of factor 4 (16x16 latents for 64x64 images).
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("shapes.png");
    let output = Command::new(binary())
        .current_dir(repo_path(""))
        .args([
            "generate",
            "two blue stars on a white background",
            "--steps",
            "4",
            "--seed",
            "3",
        ])
        .args(["--intra-threads", "1", "-o", out.to_str().unwrap()])
        .env("ORT_DYLIB_PATH", ort_dylib())
        .env_remove("T2I_MODEL")
        .output()
        .expect("run t2i-align");
    assert!(output.status.success(), "{}", stderr(&output));
    let png = image::open(&out).expect("a PNG was written").to_rgb8();
    assert_eq!(png.dimensions(), (64, 64));
    // A trained model draws a plain background: the border is nearly one colour, unlike random weights' noise.
    let border: Vec<[u8; 3]> = (0..64)
        .flat_map(|i| [png.get_pixel(i, 0).0, png.get_pixel(0, i).0])
        .collect();
    let spread = |channel: usize| {
        let values = border.iter().map(|pixel| pixel[channel] as i32);
        values.clone().max().unwrap() - values.min().unwrap()
    };
    assert!(
        (0..3).all(|channel| spread(channel) < 64),
        "border is not plain: {border:?}"
    );
}

#[test]
fn a_missing_library_stops_start_up_with_a_fix() {
    let output = run(&["serve", "--port", "0"], None);
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("ORT_DYLIB_PATH") && text.contains("make venv"), "{text}");

    let output = run(
        &["serve", "--port", "0"],
        Some(std::path::Path::new("/nonexistent/libonnxruntime.so")),
    );
    assert!(!output.status.success());
    assert!(stderr(&output).contains("/nonexistent/libonnxruntime.so"));

    // A file that is not ONNX Runtime at all.
    let not_a_library = repo_path("Cargo.toml");
    let output = run(&["serve", "--port", "0"], Some(&not_a_library));
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("cannot load ONNX Runtime") && text.contains("onnxruntime==1.31.1"),
        "{text}"
    );
}

/// Whether CUDA can run here: the ONNX Runtime library beside it has the CUDA provider (onnxruntime-gpu) and
/// `nvidia-smi` lists a GPU. The device tests expect what this says, so they pass on a GPU machine too.
fn cuda_present() -> bool {
    let library = ort_dylib();
    let provider = library
        .parent()
        .is_some_and(|folder| folder.join("libonnxruntime_providers_cuda.so").is_file());
    let gpu = Command::new("nvidia-smi")
        .arg("-L")
        .output()
        .is_ok_and(|output| output.status.success() && String::from_utf8_lossy(&output.stdout).contains("GPU"));
    provider && gpu
}

#[test]
fn device_cuda_runs_on_cuda_or_fails_loudly() {
    // `generate`, not `serve`: it ends either way, so nothing waits on a server that really started.
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("cuda.png");
    let model = tiny_sd();
    let output = run(
        &[
            "generate",
            "a red circle",
            "--steps",
            "2",
            "--device",
            "cuda",
            "-o",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
        ],
        Some(&ort_dylib()),
    );
    let text = stderr(&output);
    if cuda_present() {
        assert!(
            output.status.success(),
            "--device cuda failed with a CUDA provider and a GPU: {text}"
        );
        assert!(out.is_file(), "{text}");
        assert!(text.contains("CUDAExecutionProvider"), "{text}");
    } else {
        assert!(
            !output.status.success(),
            "--device cuda must not fall back silently: {text}"
        );
        assert!(text.contains("cuda:0") && text.contains("onnxruntime-gpu"), "{text}");
        assert!(!out.exists());
    }
}

#[test]
fn device_auto_uses_cuda_when_present_else_cpu_with_a_warning() {
    let server = common::Server::start(&["--device", "auto"]);
    let health = server.get("/health").json();
    assert_eq!(health["device"], "auto");
    if cuda_present() {
        assert_eq!(health["execution_provider"], "CUDAExecutionProvider");
    } else {
        assert_eq!(health["execution_provider"], "CPUExecutionProvider");
        assert!(server.log().contains("falling back to CPU"), "{}", server.log());
    }
}

#[test]
fn a_bad_device_name_is_a_cli_error() {
    let output = run(&["serve", "--device", "tpu"], None);
    assert!(!output.status.success());
    assert!(stderr(&output).contains("expected cpu, cuda, cuda:N or auto"));
}

#[test]
fn a_warm_up_size_the_model_cannot_make_stops_start_up() {
    let data = tempfile::tempdir().unwrap();
    let model = tiny_sd();
    let output = run(
        &[
            "serve",
            "--port",
            "0",
            "--model",
            model.to_str().unwrap(),
            "--data-dir",
            data.path().to_str().unwrap(),
            "--warmup-images",
            "1,2",
            "--warmup-sizes",
            "64,63",
        ],
        Some(&ort_dylib()),
    );
    assert!(!output.status.success());
    // Without colour codes, which the log puts between a field's name and its value.
    let mut text = String::new();
    let mut escape = false;
    for c in stderr(&output).chars() {
        match (escape, c) {
            (false, '\u{1b}') => escape = true,
            (true, 'm') => escape = false,
            (true, _) => {}
            (false, c) => text.push(c),
        }
    }
    assert!(text.contains("--warmup-sizes: 63 is not a multiple"), "{text}");
    assert!(
        text.contains("height=64 width=64 images=2"),
        "the valid sizes warm up first: {text}"
    );
}

#[test]
fn an_incomplete_model_folder_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("broken");
    common::copy_dir(&tiny_sd(), &copy);
    std::fs::remove_file(copy.join("unet/model.onnx")).unwrap();
    let output = run(
        &["generate", "x", "--steps", "1", "--model", copy.to_str().unwrap()],
        Some(&ort_dylib()),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("missing unet/model.onnx"),
        "{}",
        stderr(&output)
    );

    std::fs::remove_file(copy.join("scheduler/scheduler_config.json")).unwrap();
    std::fs::write(copy.join("unet/model.onnx"), b"not onnx").unwrap();
    let output = run(
        &["generate", "x", "--model", copy.to_str().unwrap()],
        Some(&ort_dylib()),
    );
    assert!(
        stderr(&output).contains("missing scheduler/scheduler_config.json"),
        "{}",
        stderr(&output)
    );

    let output = run(&["generate", "x", "--model", "/nonexistent/model"], Some(&ort_dylib()));
    assert!(stderr(&output).contains("not a directory"), "{}", stderr(&output));
}

#[test]
fn a_missing_or_truncated_external_data_file_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("wide");
    common::copy_dir(&common::tiny_sd_wide(), &copy);
    let data = copy.join("unet/model.onnx_data");
    let weights = std::fs::read(&data).unwrap();
    std::fs::remove_file(&data).unwrap();
    let png = dir.path().join("out.png");
    let (model, png) = (copy.to_str().unwrap(), png.to_str().unwrap());
    let generate = || {
        run(
            &["generate", "x", "--steps", "1", "--model", model, "-o", png],
            Some(&ort_dylib()),
        )
    };
    let output = generate();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(
        text.contains("unet") && text.contains("`model.onnx_data`") && text.contains("missing"),
        "{text}"
    );

    std::fs::write(&data, &weights[..weights.len() / 2]).unwrap();
    let output = generate();
    assert!(!output.status.success());
    let text = stderr(&output);
    assert!(text.contains("model.onnx_data") && text.contains("truncated"), "{text}");

    std::fs::write(&data, &weights).unwrap();
    let output = generate();
    assert!(output.status.success(), "{}", stderr(&output));
}

#[test]
fn a_bad_defaults_file_names_the_field_and_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("bad-defaults");
    common::copy_dir(&tiny_sd(), &copy);
    let cases = [
        (
            r#"{"default_steps": 0}"#,
            "t2i-align.json: default_steps must be between 1 and 1000. Given: 0",
        ),
        (
            r#"{"default_guidance_scale": 500}"#,
            "default_guidance_scale must be between 0 and 100. Given: 500",
        ),
        (r#"{"default_stepz": 20}"#, "unknown field `default_stepz`"),
        ("not json", "t2i-align.json is not valid"),
    ];
    for (text, expected) in cases {
        std::fs::write(copy.join("t2i-align.json"), text).unwrap();
        let output = run(
            &["generate", "x", "--model", copy.to_str().unwrap()],
            Some(&ort_dylib()),
        );
        assert!(!output.status.success());
        assert!(stderr(&output).contains(expected), "{text}: {}", stderr(&output));
    }
}

#[test]
fn score_prints_the_reward_of_each_image() {
    let prompt = "a red circle";
    let images: Vec<String> = (0..3)
        .map(|index| {
            repo_path(&format!("tests/golden/reward/shapes-reward/{index}.png"))
                .display()
                .to_string()
        })
        .collect();
    let reward_model = repo_path("models/shapes-reward");
    let mut args = vec![
        "score",
        "--prompt",
        prompt,
        "--reward-model",
        reward_model.to_str().unwrap(),
    ];
    args.extend(images.iter().map(String::as_str));
    let output = run(&args, Some(&ort_dylib()));
    assert!(output.status.success(), "{}", stderr(&output));
    let stdout = String::from_utf8(output.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{stdout}");
    for (index, line) in lines.iter().enumerate() {
        let (score, path) = line.split_once('\t').unwrap();
        assert_eq!(path, images[index]);
        let expected = common::golden_reward_score(prompt, index);
        assert!((score.parse::<f64>().unwrap() - expected).abs() < 1e-4, "{line}");
    }

    let missing = run(
        &[
            "score",
            "--prompt",
            prompt,
            "/nonexistent/x.png",
            "--reward-model",
            reward_model.to_str().unwrap(),
        ],
        Some(&ort_dylib()),
    );
    assert!(!missing.status.success());
    assert!(stderr(&missing).contains("/nonexistent/x.png"), "{}", stderr(&missing));
    let bad_model = run(
        &[
            "score",
            "--prompt",
            prompt,
            &images[0],
            "--reward-model",
            "/nonexistent/reward",
        ],
        Some(&ort_dylib()),
    );
    assert!(!bad_model.status.success());
    assert!(stderr(&bad_model).contains("manifest.json"), "{}", stderr(&bad_model));
}

#[test]
fn generate_best_of_keeps_the_best_candidate() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("best.png");
    let model = repo_path("models/shapes-sd");
    let reward_model = repo_path("models/shapes-reward");
    let output = run(
        &[
            "generate",
            "three red circles",
            "--steps",
            "4",
            "--seed",
            "11",
            "--best-of",
            "3",
            "-o",
            out.to_str().unwrap(),
            "--model",
            model.to_str().unwrap(),
            "--reward-model",
            reward_model.to_str().unwrap(),
            "--intra-threads",
            "1",
        ],
        Some(&ort_dylib()),
    );
    let log = stderr(&output);
    assert!(output.status.success(), "{log}");
    assert!(log.contains("shapes-reward scored 3 candidates"), "{log}");
    assert!(log.contains("reward "), "{log}");
    assert!(image::open(&out).is_ok());

    let refused = run(
        &["generate", "a", "--best-of", "99", "--model", model.to_str().unwrap()],
        Some(&ort_dylib()),
    );
    assert!(!refused.status.success());
    assert!(
        stderr(&refused).contains("--best-of: `best_of` must be between 1 and 16"),
        "{}",
        stderr(&refused)
    );
}

/// `generate` takes the server's request limits, --max-work included, and refuses a request above one by
/// naming the flag, before any image is made.
#[test]
fn generate_holds_a_request_to_max_work() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("refused.png");
    let model = tiny_sd();
    let args = |steps: &'static str| {
        vec![
            "generate".to_string(),
            "a green triangle".into(),
            "-n".into(),
            "2".into(),
            "--steps".into(),
            steps.into(),
            "--max-work".into(),
            "100000".into(),
            "-o".into(),
            out.display().to_string(),
            "--model".into(),
            model.display().to_string(),
        ]
    };
    // 2 images × 20 steps × 64×64 pixels = 163840 pixel-steps, above 100000.
    let refused_args = args("20");
    let refused_args: Vec<&str> = refused_args.iter().map(String::as_str).collect();
    let refused = run(&refused_args, Some(&ort_dylib()));
    assert!(!refused.status.success());
    let message = stderr(&refused);
    assert!(
        message.contains("163840") && message.contains("100000 (--max-work)"),
        "{message}"
    );
    assert!(!out.exists() && !dir.path().join("refused-0.png").exists());
    // 2 × 10 × 64×64 = 81920 fits.
    let allowed_args = args("10");
    let allowed_args: Vec<&str> = allowed_args.iter().map(String::as_str).collect();
    let allowed = run(&allowed_args, Some(&ort_dylib()));
    assert!(allowed.status.success(), "{}", stderr(&allowed));
}
