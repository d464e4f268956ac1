//! The reward in the serving path, end to end on the shipped models (shapes-sd scored by shapes-reward):
//! best_of and min_reward in /generate, /score (JSON, multipart, image ids), /rerank, the OpenAI route,
//! metrics, and every bad input the issue lists.

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::Server;
use serde_json::{json, Value};

fn shapes_server(extra: &[&str]) -> Server {
    Server::start_with_model(&common::shapes_sd(), extra)
}

fn golden_png(index: usize) -> Vec<u8> {
    std::fs::read(common::repo_path(&format!(
        "tests/golden/reward/shapes-reward/{index}.png"
    )))
    .unwrap()
}

fn floats(value: &Value) -> Vec<f64> {
    value.as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect()
}

#[test]
fn best_of_returns_the_best_candidates_with_their_rewards() {
    let server = shapes_server(&["--candidate-batch-size", "4"]);
    let body = json!({"prompt": "two blue stars on a white background", "n": 2, "best_of": 4, "seed": 7,
                      "steps": 8, "return_candidate_scores": true})
    .to_string();
    let response = server.post_json("/generate", &body);
    assert_eq!(response.status, 200, "{}", response.text());
    let first = response.json();
    let selection = &first["selection"];
    assert_eq!(selection["reward_model"], "shapes-reward");
    assert_eq!(selection["best_of"], 4);
    assert_eq!(selection["candidates"], 8);
    assert_eq!(selection["accepted"], 2);
    let candidates = floats(&selection["candidate_scores"]);
    assert_eq!(candidates.len(), 8);
    let mut ranked: Vec<(usize, f64)> = candidates.iter().copied().enumerate().collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    let images = first["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (image, (candidate, score)) in images.iter().zip(&ranked) {
        // The best candidates, best first, each with its score and its own seed.
        assert!((image["reward"].as_f64().unwrap() - score).abs() < 1e-6, "{image}");
        assert_eq!(image["seed"], 7 + *candidate as u64);
    }
    assert!(first["timings"]["score_ms"].as_f64().unwrap() > 0.0);

    // The same seed gives the same images and scores.
    let again = server.post_json("/generate", &body).json();
    assert_eq!(again["selection"]["candidate_scores"], selection["candidate_scores"]);
    for (a, b) in again["images"].as_array().unwrap().iter().zip(images) {
        assert_eq!(a["png_base64"], b["png_base64"]);
    }

    // /score on the stored images gives back the rewards /generate reported.
    let ids: Vec<&str> = images.iter().map(|image| image["image_id"].as_str().unwrap()).collect();
    let scored = server.post_json(
        "/score",
        &json!({"prompt": "two blue stars on a white background", "image_ids": ids}).to_string(),
    );
    assert_eq!(scored.status, 200, "{}", scored.text());
    for (score, image) in floats(&scored.json()["scores"]).iter().zip(images) {
        assert!((score - image["reward"].as_f64().unwrap()).abs() < 1e-5);
    }

    // A candidate that best_of=1 would have drawn is the same image: candidate j starts from seed + j.
    let (best, _) = ranked[0];
    let single = server.post_json(
        "/generate",
        &json!({"prompt": "two blue stars on a white background", "seed": 7 + best, "steps": 8}).to_string(),
    );
    let single = single.json();
    let pixels = |image: &Value| {
        let png = BASE64.decode(image["png_base64"].as_str().unwrap()).unwrap();
        image::load_from_memory(&png).unwrap().to_rgb8().into_raw()
    };
    // Batched with three other candidates or alone: the same pixels, up to float rounding across batch sizes.
    let worst = pixels(&single["images"][0])
        .iter()
        .zip(pixels(&images[0]))
        .map(|(a, b)| a.abs_diff(b))
        .max()
        .unwrap();
    assert!(worst <= 2, "the candidate and the single image differ by {worst}/255");
    assert_eq!(single["selection"]["best_of"], 1);

    // Two best_of=4 requests count; the plain scored one (best_of 1) is no selection and does not.
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("t2i_candidates_generated_total{reward_model=\"shapes-reward\"} 16"),
        "{metrics}"
    );
    assert!(
        metrics.contains("t2i_candidates_accepted_total{reward_model=\"shapes-reward\"} 4"),
        "{metrics}"
    );
    assert!(
        metrics.contains("t2i_reward_score_bucket{model=\"shapes-reward\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("t2i_reward_batch_size_bucket{model=\"shapes-reward\""),
        "{metrics}"
    );
    assert!(metrics.contains("t2i_reward_batch_duration_seconds_count{model=\"shapes-reward\"}"));
    assert!(metrics
        .contains("t2i_stage_duration_seconds_count{execution_provider=\"CPUExecutionProvider\",stage=\"score\"}"));
}

#[test]
fn min_reward_samples_until_enough_pass_or_the_budget_runs_out() {
    let server = shapes_server(&["--candidate-batch-size", "2"]);
    let ask = |min_reward: f64, max_candidates: u32| {
        let response = server.post_json(
            "/generate",
            &json!({"prompt": "a red circle", "seed": 3, "steps": 6, "min_reward": min_reward,
                    "max_candidates": max_candidates})
            .to_string(),
        );
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    };
    // Unreachable: every round runs, then the best candidate comes back anyway.
    let hard = ask(1e9, 6);
    assert_eq!(hard["selection"]["candidates"], 6);
    assert_eq!(hard["selection"]["accepted"], 0);
    assert_eq!(hard["selection"]["min_reward"], 1e9);
    assert_eq!(hard["images"].as_array().unwrap().len(), 1);
    // Reached in the first round of 2: no more rounds.
    let easy = ask(-1e9, 6);
    assert_eq!(easy["selection"]["candidates"], 2);
    assert_eq!(easy["selection"]["accepted"], 2);
    assert_eq!(easy["selection"]["best_of"], Value::Null);
}

#[test]
fn score_takes_json_multipart_and_ids_alike() {
    let server = shapes_server(&[]);
    let pngs: Vec<Vec<u8>> = (0..4).map(golden_png).collect();
    let encoded: Vec<String> = pngs.iter().map(|png| BASE64.encode(png)).collect();
    let prompt = "two blue stars on a white background";
    let response = server.post_json("/score", &json!({"prompt": prompt, "images": encoded}).to_string());
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["model"], "shapes-reward");
    let scores = floats(&body["scores"]);
    assert_eq!(scores.len(), 4);
    // All four images went through one ONNX call.
    assert_eq!(body["timings"]["batch_sizes"], json!([4]));
    // The golden scores from PyTorch, for the same files and prompt.
    for (index, score) in scores.iter().enumerate() {
        let expected = common::golden_reward_score(prompt, index);
        assert!((score - expected).abs() < 1e-4, "image {index}: {score} vs {expected}");
    }

    // A data URL and a per-image prompt list.
    let data_url = format!("data:image/png;base64,{}", encoded[0]);
    let listed = server.post_json(
        "/score",
        &json!({"prompt": [prompt, "a red circle"], "images": [data_url, encoded[1]]}).to_string(),
    );
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert!((floats(&listed.json()["scores"])[0] - scores[0]).abs() < 1e-6);

    // multipart/form-data with the same files.
    let mut parts: Vec<(&str, Option<&str>, &[u8])> = vec![("prompt", None, prompt.as_bytes())];
    for png in &pngs {
        parts.push(("image", Some("image.png"), png.as_slice()));
    }
    let form = server.post_multipart("/score", &parts);
    assert_eq!(form.status, 200, "{}", form.text());
    for (a, b) in floats(&form.json()["scores"]).iter().zip(&scores) {
        assert!((a - b).abs() < 1e-6);
    }
}

#[test]
fn rerank_puts_the_best_first() {
    let server = shapes_server(&[]);
    let encoded: Vec<String> = (0..5).map(|index| BASE64.encode(golden_png(index))).collect();
    let response = server.post_json(
        "/rerank",
        &json!({"prompt": "a red circle", "images": encoded, "top_k": 3, "return_images": true}).to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let ranked = response.json();
    let ranked = ranked.as_array().unwrap();
    assert_eq!(ranked.len(), 3);
    let scores: Vec<f64> = ranked.iter().map(|entry| entry["score"].as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|pair| pair[0] >= pair[1]), "{scores:?}");
    for entry in ranked {
        let index = entry["index"].as_u64().unwrap() as usize;
        assert_eq!(entry["image"].as_str().unwrap(), encoded[index]);
    }
    // The full ranking agrees with /score.
    let scored = server.post_json(
        "/score",
        &json!({"prompt": "a red circle", "images": encoded}).to_string(),
    );
    let all = floats(&scored.json()["scores"]);
    let best = (0..all.len()).max_by(|&a, &b| all[a].total_cmp(&all[b])).unwrap();
    assert_eq!(ranked[0]["index"], best);
    let plain = server.post_json(
        "/rerank",
        &json!({"prompt": "a red circle", "images": encoded}).to_string(),
    );
    let plain = plain.json();
    assert_eq!(plain.as_array().unwrap().len(), 5);
    assert!(plain[0].get("image").is_none());
}

#[test]
fn bad_reward_input_gets_a_4xx_naming_the_problem() {
    let mut server = shapes_server(&[
        "--max-best-of",
        "8",
        "--max-candidates",
        "16",
        "--max-image-pixels",
        "10000",
    ]);
    let expect = |path: &str, body: String, status: u16, param: &str, words: &str| {
        let response = server.post_json(path, &body);
        assert_eq!(response.status, status, "{body}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["param"], param, "{body}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(words), "{body}: {message}");
    };
    let png = BASE64.encode(golden_png(0));
    expect(
        "/score",
        json!({"prompt": "a", "images": ["%%%"]}).to_string(),
        422,
        "images[0]",
        "not valid base64",
    );
    let text = BASE64.encode(b"this is not an image");
    expect(
        "/score",
        json!({"prompt": "a", "images": [png, text]}).to_string(),
        422,
        "images[1]",
        "not a PNG or JPEG",
    );
    // A truncated PNG: the header reads, the pixels do not.
    let bytes = golden_png(0);
    let truncated = BASE64.encode(&bytes[..bytes.len() / 2]);
    expect(
        "/score",
        json!({"prompt": "a", "images": [truncated]}).to_string(),
        422,
        "images[0]",
        "does not decode",
    );
    // 96x80 = 7680 pixels pass the limit of 10000; a 200x200 image does not, refused from its header.
    let mut big = Vec::new();
    image::RgbImage::new(200, 200)
        .write_to(&mut std::io::Cursor::new(&mut big), image::ImageFormat::Png)
        .unwrap();
    expect(
        "/score",
        json!({"prompt": "a", "images": [BASE64.encode(&big)]}).to_string(),
        422,
        "images[0]",
        "40000 pixels; the limit is 10000",
    );
    expect(
        "/score",
        json!({"prompt": ["a", "b", "c"], "images": [png, png]}).to_string(),
        422,
        "prompt",
        "3 entries for 2 images",
    );
    expect(
        "/score",
        json!({"prompt": "a", "image_ids": ["img_nope"]}).to_string(),
        422,
        "image_ids[0]",
        "img_nope",
    );
    expect(
        "/score",
        json!({"prompt": "a"}).to_string(),
        422,
        "images",
        "is required",
    );
    expect(
        "/score",
        json!({"prompt": "a", "images": [png], "image_ids": ["x"]}).to_string(),
        422,
        "image_ids",
        "not both",
    );
    expect(
        "/score",
        json!({"prompt": "a", "images": [png], "model": "pickscore"}).to_string(),
        422,
        "model",
        "shapes-reward",
    );
    expect(
        "/score",
        json!({"prompt": 3, "images": [png]}).to_string(),
        422,
        "prompt",
        "one per image",
    );
    expect(
        "/rerank",
        json!({"prompt": "a", "images": [png], "top_k": 0}).to_string(),
        422,
        "top_k",
        "at least 1",
    );
    expect(
        "/generate",
        json!({"prompt": "a", "best_of": 9}).to_string(),
        422,
        "best_of",
        "between 1 and 8",
    );
    expect(
        "/generate",
        json!({"prompt": "a", "best_of": 8, "n": 3}).to_string(),
        422,
        "best_of",
        "8 × 3 = 24",
    );
    expect(
        "/generate",
        json!({"prompt": "a", "min_reward": 0.5, "max_candidates": 17}).to_string(),
        422,
        "max_candidates",
        "between n (1) and 16",
    );
    expect(
        "/generate",
        json!({"prompt": "a", "reward_model": "nope"}).to_string(),
        422,
        "reward_model",
        "nope",
    );
    // JSON has no NaN: the parser's error still names the field and says why.
    expect(
        "/generate",
        r#"{"prompt": "a", "min_reward": NaN}"#.to_string(),
        400,
        "min_reward",
        "JSON has no NaN",
    );
    // A form with no prompt, and one with an unknown field.
    let form = server.post_multipart("/score", &[("image", Some("a.png"), &bytes)]);
    assert_eq!(form.status, 422, "{}", form.text());
    assert_eq!(form.json()["error"]["param"], "prompt");
    let form = server.post_multipart("/score", &[("prompt", None, b"a"), ("colour", None, b"red")]);
    assert_eq!(form.json()["error"]["param"], "colour");
    assert!(server.is_running(), "bad input must never take the server down");
}

#[test]
fn the_openai_route_answers_in_openais_shape() {
    let server = shapes_server(&[]);
    let response = server.post_json(
        "/v1/images/generations",
        &json!({"model": "shapes-sd", "prompt": "a red circle", "n": 2, "size": "64x64",
                "response_format": "b64_json", "user": "test", "best_of": 2})
        .to_string(),
    );
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert!(body["created"].as_u64().unwrap() > 1_700_000_000);
    let data = body["data"].as_array().unwrap();
    assert_eq!(data.len(), 2);
    assert_eq!(body["model"], "shapes-sd", "the version that served it");
    let png = BASE64.decode(data[0]["b64_json"].as_str().unwrap()).unwrap();
    assert_eq!(image::load_from_memory(&png).unwrap().to_rgb8().dimensions(), (64, 64));

    for (body, param) in [
        (json!({"prompt": "a", "n": 100}), "n"),
        (json!({"prompt": "a", "model": "dall-e-3"}), "model"),
        (json!({"prompt": "a", "response_format": "url"}), "response_format"),
        (json!({"prompt": "a", "size": "big"}), "size"),
        (json!({"prompt": "a", "style": "vivid"}), "style"),
    ] {
        let response = server.post_json("/v1/images/generations", &body.to_string());
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["type"], "invalid_request_error", "{error}");
        assert_eq!(error["param"], param, "{error}");
        assert!(error["code"].is_string() && error["message"].is_string(), "{error}");
    }
}

/// The official `openai` Python package as the client (installed in .venv by `make venv`).
#[test]
fn the_openai_python_client_works_against_the_server() {
    let server = shapes_server(&[]);
    let url = format!("http://127.0.0.1:{}/v1", server.port);
    let output = common::run_python_file("tests/openai_client.py", &[&url]);
    assert!(
        output.status.success(),
        "openai client check failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn no_reward_model_means_unscored_images_and_clear_refusals() {
    let server = Server::start(&["--no-reward-model"]);
    let response = server.post_json("/generate", r#"{"prompt":"a red circle","steps":3}"#);
    assert_eq!(response.status, 200, "{}", response.text());
    let body = response.json();
    assert_eq!(body["images"][0]["reward"], Value::Null);
    assert_eq!(body["selection"], Value::Null);
    let refused = server.post_json("/generate", r#"{"prompt":"a red circle","best_of":2}"#);
    assert_eq!(refused.status, 422);
    assert!(refused.text().contains("--reward-model"), "{}", refused.text());
    let png = BASE64.encode(golden_png(0));
    let score = server.post_json("/score", &json!({"prompt": "a", "images": [png]}).to_string());
    assert_eq!(score.status, 422);
    assert_eq!(score.json()["error"]["param"], "model");
}

#[test]
fn image_ids_survive_a_restart_and_old_ones_expire() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    let generate = |server: &Server| -> Value {
        let response = server.post_json("/generate", r#"{"prompt":"a red circle","steps":3,"n":2,"seed":1}"#);
        assert_eq!(response.status, 200, "{}", response.text());
        response.json()
    };
    let score = |server: &Server, id: &Value| {
        server.post_json(
            "/score",
            &json!({"prompt": "a red circle", "image_ids": [id]}).to_string(),
        )
    };
    let first = {
        let server = shapes_server(&["--data-dir", data, "--image-retention", "3"]);
        generate(&server)
    };
    // A new process on the same data directory still has the images.
    let server = shapes_server(&["--data-dir", data, "--image-retention", "3"]);
    let old = &first["images"][0];
    let scored = score(&server, &old["image_id"]);
    assert_eq!(scored.status, 200, "{}", scored.text());
    assert!((floats(&scored.json()["scores"])[0] - old["reward"].as_f64().unwrap()).abs() < 1e-5);
    // Two more images push the oldest past the retention of 3: its id and its file are gone.
    generate(&server);
    let expired = score(&server, &old["image_id"]);
    assert_eq!(expired.status, 422, "{}", expired.text());
    assert_eq!(expired.json()["error"]["param"], "image_ids[0]");
    assert!(expired.text().contains("--image-retention"), "{}", expired.text());
    assert_eq!(std::fs::read_dir(dir.path().join("images")).unwrap().count(), 3);
    assert_eq!(score(&server, &first["images"][1]["image_id"]).status, 200);
}

/// The score a reward parity golden records for one image file and prompt.
fn golden_score(model: &str, image: &str, prompt: &str) -> f64 {
    let golden = common::read_json(&format!("tests/golden/reward/{model}.json"));
    golden["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|case| case["image"] == image && case["prompt"] == prompt)
        .unwrap_or_else(|| panic!("no golden case for {image} and {prompt:?}"))["score"]
        .as_f64()
        .unwrap()
}

/// Reward models users know, of every manifest kind, loaded side by side from the manifests alone: requests
/// name the one to use, and each scores as its Python reference does.
#[test]
fn several_reward_models_of_every_kind_serve_side_by_side() {
    let server = shapes_server(&[
        "--reward-model",
        "models/shapes-reward,models/tiny-open-clip-reward,models/tiny-aesthetic-reward,models/tiny-clip-reward,\
         models/tiny-image-reward",
    ]);
    let prompt = "a red circle";
    for model in [
        "tiny-open-clip-reward",
        "tiny-aesthetic-reward",
        "tiny-clip-reward",
        "shapes-reward",
        "tiny-image-reward",
    ] {
        let image = format!("{model}/2.png");
        let png = std::fs::read(common::repo_path(&format!("tests/golden/reward/{image}"))).unwrap();
        let body = json!({"prompt": prompt, "images": [BASE64.encode(png)], "model": model}).to_string();
        let response = server.post_json("/score", &body);
        assert_eq!(response.status, 200, "{model}: {}", response.text());
        let answer = response.json();
        assert_eq!(answer["model"], model);
        let score = floats(&answer["scores"])[0];
        let expected = golden_score(model, &image, prompt);
        assert!((score - expected).abs() < 1e-4, "{model}: {score} vs {expected}");
    }

    // best_of ranks by the model the request names; the aesthetic model ignores the prompt.
    let body = json!({"prompt": prompt, "n": 1, "best_of": 3, "seed": 11, "steps": 4,
                      "reward_model": "tiny-aesthetic-reward", "return_candidate_scores": true});
    let response = server.post_json("/generate", &body.to_string());
    assert_eq!(response.status, 200, "{}", response.text());
    let answer = response.json();
    assert_eq!(answer["selection"]["reward_model"], "tiny-aesthetic-reward");
    let candidates = floats(&answer["selection"]["candidate_scores"]);
    let best = candidates.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    assert!(
        (answer["images"][0]["reward"].as_f64().unwrap() - best).abs() < 1e-6,
        "{answer}"
    );
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("model=\"tiny-aesthetic-reward\""), "{metrics}");
    // ImageReward's standardised scores get buckets from -3 to 3.
    assert!(
        metrics.contains("t2i_reward_score_bucket{model=\"tiny-image-reward\",le=\"-3\"}"),
        "{metrics}"
    );
}
