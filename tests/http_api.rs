//! The HTTP API end to end: a real `t2i-align serve` process on the tiny test model.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{raw_request, Server};

fn decode_png(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    assert!(bytes.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
    image::load_from_memory(&bytes).expect("decodable PNG").to_rgb8()
}

#[test]
fn generate_returns_pngs_and_is_reproducible_by_seed() {
    let server = Server::start(&[]);
    let body = r#"{"prompt":"a red circle on a white background","n":2,"steps":5,"seed":1234,"scheduler":"ddim"}"#;
    let first = server.post_json("/generate", body);
    assert_eq!(first.status, 200, "{}", first.text());
    let json = first.json();
    assert_eq!(json["model"], "tiny-sd");
    assert!(json["id"].as_str().unwrap().starts_with("gen-"));
    let images = json["images"].as_array().unwrap();
    assert_eq!(images.len(), 2);
    for (index, image) in images.iter().enumerate() {
        assert_eq!(image["index"], index);
        assert_eq!(image["seed"], 1234 + index as u64);
        let png = decode_png(image["png_base64"].as_str().unwrap());
        assert_eq!(png.dimensions(), (64, 64));
    }
    for key in ["queue_ms", "text_encode_ms", "denoise_ms", "decode_ms", "total_ms"] {
        assert!(json["timings"][key].as_f64().unwrap() >= 0.0, "{key}");
    }
    assert_eq!(json["warnings"].as_array().unwrap().len(), 0);

    let second = server.post_json("/generate", body).json();
    for (again, first) in second["images"].as_array().unwrap().iter().zip(images) {
        assert_eq!(
            again["png_base64"], first["png_base64"],
            "the same seed must give the same PNG bytes"
        );
        assert_eq!(again["reward"], first["reward"]);
        assert_ne!(
            again["image_id"], first["image_id"],
            "every stored image gets its own id"
        );
    }
    let other = server.post_json("/generate", &body.replace("1234", "99")).json();
    assert_ne!(other["images"][0]["png_base64"], json["images"][0]["png_base64"]);
}

#[test]
fn every_scheduler_and_size_is_served() {
    let server = Server::start(&[]);
    for scheduler in ["ddim", "euler", "euler_a", "dpm++2m", "pndm", "lcm"] {
        let body = format!(
            r#"{{"prompt":"three green squares","steps":4,"seed":5,"scheduler":"{scheduler}","width":96,"height":48}}"#
        );
        let response = server.post_json("/generate", &body);
        assert_eq!(response.status, 200, "{scheduler}: {}", response.text());
        let png = decode_png(response.json()["images"][0]["png_base64"].as_str().unwrap());
        assert_eq!(png.dimensions(), (96, 48), "{scheduler}");
    }
    // Stochastic samplers draw their step noise from the seeded streams too.
    for body in [
        r#"{"prompt":"a star","steps":4,"seed":8,"scheduler":"euler_a","n":2}"#,
        r#"{"prompt":"a star","steps":4,"seed":8,"scheduler":"ddim","eta":0.7}"#,
        r#"{"prompt":"a star","steps":4,"seed":8,"scheduler":"lcm","n":2,"guidance_rescale":0.7}"#,
    ] {
        let first = server.post_json("/generate", body).json();
        let second = server.post_json("/generate", body).json();
        let pngs = |json: &serde_json::Value| -> Vec<serde_json::Value> {
            json["images"]
                .as_array()
                .unwrap()
                .iter()
                .map(|image| image["png_base64"].clone())
                .collect()
        };
        assert_eq!(pngs(&first), pngs(&second), "{body}");
    }
    let no_guidance = server.post_json("/generate", r#"{"prompt":"a star","steps":3,"guidance_scale":1.0}"#);
    assert_eq!(no_guidance.status, 200, "{}", no_guidance.text());
}

#[test]
fn bad_input_gets_a_4xx_naming_the_field_and_the_limit() {
    let mut server = Server::start(&[]);
    let cases: &[(&str, u16, Option<&str>, &str)] = &[
        (r#"{"prompt": "a cat""#, 400, None, "not valid JSON"),
        (r#"not json"#, 400, None, "not valid JSON"),
        (
            r#"{"prompt":"a cat","colour":"red"}"#,
            422,
            Some("colour"),
            "unknown field",
        ),
        (r#"{"n":1}"#, 422, Some("prompt"), "missing field"),
        (r#"{"prompt":""}"#, 422, Some("prompt"), "must not be empty"),
        (r#"{"prompt":"a cat","n":0}"#, 422, Some("n"), "between 1 and 8"),
        (r#"{"prompt":"a cat","n":40}"#, 422, Some("n"), "Given: 40"),
        (r#"{"prompt":"a cat","n":"two"}"#, 422, Some("n"), "invalid type"),
        (
            r#"{"prompt":"a cat","steps":0}"#,
            422,
            Some("steps"),
            "between 1 and 150",
        ),
        (
            r#"{"prompt":"a cat","steps":100000}"#,
            422,
            Some("steps"),
            "between 1 and 150",
        ),
        (r#"{"prompt":"a cat","width":70}"#, 422, Some("width"), "multiple of 16"),
        (
            r#"{"prompt":"a cat","height":-64}"#,
            422,
            Some("height"),
            "between 16 and 1024",
        ),
        (
            r#"{"prompt":"a cat","height":4096}"#,
            422,
            Some("height"),
            "between 16 and 1024",
        ),
        (
            r#"{"prompt":"a cat","guidance_scale":"NaN"}"#,
            422,
            Some("guidance_scale"),
            "invalid type",
        ),
        (
            r#"{"prompt":"a cat","guidance_scale":1e999}"#,
            400,
            Some("guidance_scale"),
            "number out of range",
        ),
        (
            r#"{"prompt":"a cat","guidance_scale":-3}"#,
            422,
            Some("guidance_scale"),
            "between 0 and 100",
        ),
        (
            r#"{"prompt":"a cat","scheduler":"lms"}"#,
            422,
            Some("scheduler"),
            "ddim",
        ),
        (r#"{"prompt":"a cat","eta":2}"#, 422, Some("eta"), "between 0 and 1"),
        (
            r#"{"prompt":"a cat","guidance_rescale":1.5}"#,
            422,
            Some("guidance_rescale"),
            "`guidance_rescale` must be between 0 and 1. Given: 1.5",
        ),
        (
            r#"{"prompt":"a cat","scheduler":"lcm","steps":60}"#,
            422,
            Some("scheduler"),
            "at most `original_inference_steps` (50) steps",
        ),
    ];
    for (body, status, param, fragment) in cases {
        let response = server.post_json("/generate", body);
        assert_eq!(response.status, *status, "{body}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["param"].as_str(), *param, "{body}: {error}");
        let message = error["message"].as_str().unwrap();
        assert!(message.contains(fragment), "{body}: `{message}` lacks `{fragment}`");
        assert!(error["type"].as_str().unwrap().ends_with("error") || error["type"] == "invalid_request");
    }
    let long = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(5000));
    let response = server.post_json("/generate", &long);
    assert_eq!(response.status, 422);
    assert!(response.text().contains("at most 4096 bytes"));
    let huge = format!(r#"{{"prompt":"{}"}}"#, "a".repeat(2 << 20));
    let response = server.post_json("/generate", &huge);
    assert_eq!(response.status, 413, "{}", response.text());
    assert_eq!(response.json()["error"]["type"], "payload_too_large");
    assert!(response.text().contains("1048576 bytes"), "{}", response.text());
    let missing = server.get("/no-such-route");
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"]["type"], "not_found");

    assert!(server.is_running(), "bad input must never stop the server");
    assert_eq!(server.get("/health").status, 200);
    let ok = server.post_json("/generate", r#"{"prompt":"a cat","steps":2}"#);
    assert_eq!(ok.status, 200, "{}", ok.text());
}

#[test]
fn an_overlong_prompt_is_cut_with_a_warning() {
    let server = Server::start(&[]);
    let prompt = "a red circle and ".repeat(30);
    let response = server.post_json("/generate", &format!(r#"{{"prompt":"{prompt}","steps":2}}"#));
    assert_eq!(response.status, 200, "{}", response.text());
    let warnings = response.json()["warnings"].clone();
    let warning = warnings[0].as_str().expect("a warning");
    assert!(warning.contains("`prompt` was cut to 77 tokens"), "{warning}");
}

#[test]
fn health_ready_metrics_and_docs() {
    let server = Server::start(&[]);
    let health = server.get("/health").json();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["ready"], true);
    assert_eq!(health["model"], "tiny-sd");
    assert_eq!(health["device"], "cpu");
    assert_eq!(health["execution_provider"], "CPUExecutionProvider");
    assert_eq!(server.get("/ready").status, 200);
    assert!(server.log().contains("CPUExecutionProvider"), "the log names the EP");

    let response = server.post_json("/generate", r#"{"prompt":"a blue star","steps":3,"scheduler":"ddim"}"#);
    assert_eq!(response.status, 200);
    let metrics = server.get("/metrics").text();
    for expected in [
        "t2i_http_requests_total{method=\"POST\",route=\"/generate\",status=\"200\"} 1",
        "t2i_http_request_duration_seconds_bucket",
        "t2i_queue_depth 0",
        "t2i_stage_duration_seconds_count{execution_provider=\"CPUExecutionProvider\",stage=\"unet_step\"} 3",
        "t2i_stage_duration_seconds_count{execution_provider=\"CPUExecutionProvider\",stage=\"text_encode\"} 1",
        "t2i_stage_duration_seconds_count{execution_provider=\"CPUExecutionProvider\",stage=\"vae_decode\"} 1",
        "t2i_stage_duration_seconds_count{execution_provider=\"CPUExecutionProvider\",stage=\"png_encode\"} 1",
        "t2i_images_generated_total 1",
        "t2i_model_info{device=\"cpu\",execution_provider=\"CPUExecutionProvider\",model=\"tiny-sd\"} 1",
    ] {
        assert!(metrics.contains(expected), "missing `{expected}` in\n{metrics}");
    }

    let spec = server.get("/openapi.json");
    assert_eq!(spec.status, 200);
    assert!(spec.json()["paths"]["/generate"]["post"].is_object());
    let committed = std::fs::read_to_string(common::repo_path("openapi/openapi.json")).unwrap();
    // This server has no keys, so its document asks for none: the committed one (a server with keys) without
    // its security scheme and requirements.
    let mut open: serde_json::Value = serde_json::from_str(&committed).unwrap();
    open["components"].as_object_mut().unwrap().remove("securitySchemes");
    for item in open["paths"].as_object_mut().unwrap().values_mut() {
        for operation in item.as_object_mut().unwrap().values_mut() {
            operation.as_object_mut().unwrap().remove("security");
        }
    }
    assert!(
        !spec.text().contains("\"security"),
        "an open server's spec asks for no key"
    );
    assert_eq!(
        spec.json(),
        open,
        "the served spec is the committed one, less its security"
    );
    // A path we serve, asked with a method it does not take: 405 naming the methods it does take.
    for (method, path, allowed) in [
        ("PUT", "/generate", "POST"),
        ("GET", "/generate", "POST"),
        ("PATCH", "/feedback", "POST, GET"),
    ] {
        let response = common::request(server.port, method, path, Some("{}")).expect("request");
        assert_eq!(response.status, 405, "{method} {path}: {}", response.text());
        assert_eq!(response.header("Allow"), Some(allowed), "{method} {path}");
        assert_eq!(response.json()["error"]["type"], "method_not_allowed");
    }
    assert_eq!(server.get("/no-such-path").status, 404);
    let docs = server.get("/docs/");
    assert_eq!(docs.status, 200, "{}", docs.text());
    assert!(docs.text().to_lowercase().contains("swagger"));
    let initializer = server.get("/docs/swagger-initializer.js");
    assert!(initializer.text().contains("/openapi.json"), "{}", initializer.text());
}

/// Starts a long generation (4 images, 150 steps) on another thread and gives it time to reach the worker.
fn occupy_the_worker(port: u16) -> std::thread::JoinHandle<common::Response> {
    let body = r#"{"prompt":"a long job","steps":150,"n":4}"#;
    let busy = std::thread::spawn(move || common::request(port, "POST", "/generate", Some(body)).unwrap());
    std::thread::sleep(Duration::from_millis(300));
    busy
}

#[test]
fn http_threads_answer_while_a_worker_is_busy() {
    let server = Server::start(&["--workers", "1"]);
    let port = server.port;
    let busy = occupy_the_worker(port);
    let health = server.get("/health");
    assert_eq!(health.status, 200);
    let invalid = server.post_json("/generate", r#"{"prompt":""}"#);
    assert_eq!(invalid.status, 422, "validation answers without waiting for the worker");
    assert!(
        !busy.is_finished(),
        "the long job should still be running while /health answers"
    );
    assert_eq!(busy.join().unwrap().status, 200);
}

#[test]
fn a_full_queue_answers_429_with_retry_after() {
    let server = Server::start(&["--workers", "1", "--queue-capacity", "1"]);
    let port = server.port;
    let body = r#"{"prompt":"four yellow circles","steps":60,"n":2}"#;
    let handles: Vec<_> = (0..6)
        .map(|_| std::thread::spawn(move || common::request(port, "POST", "/generate", Some(body)).unwrap()))
        .collect();
    let responses: Vec<_> = handles.into_iter().map(|handle| handle.join().unwrap()).collect();
    let statuses: Vec<u16> = responses.iter().map(|r| r.status).collect();
    assert!(statuses.contains(&200), "{statuses:?}");
    let rejected: Vec<_> = responses.iter().filter(|r| r.status == 429).collect();
    assert!(!rejected.is_empty(), "expected some 429s: {statuses:?}");
    for response in rejected {
        let retry_after: u64 = response.header("Retry-After").expect("Retry-After").parse().unwrap();
        assert!(retry_after >= 1);
        let error = response.json()["error"].clone();
        assert_eq!(error["type"], "overloaded");
        assert!(error["message"].as_str().unwrap().contains("limit 1"), "{error}");
    }
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("t2i_requests_dropped_total{reason=\"queue_full\"}"),
        "{metrics}"
    );
}

#[test]
fn a_client_that_disconnects_has_its_work_dropped() {
    let server = Server::start(&["--workers", "1"]);
    let port = server.port;
    // Occupy the only worker, so the next request waits in the queue.
    let busy = occupy_the_worker(port);
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"prompt":"abandoned","steps":150}"#;
        stream
            .write_all(raw_request("POST", "/generate", Some(body)).as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_millis(200));
        // Dropping the stream hangs up before the answer.
    }
    assert_eq!(busy.join().unwrap().status, 200);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.get("/metrics").text();
        if metrics.contains("t2i_requests_dropped_total{reason=\"client_disconnected\"} 1") {
            // Only the busy job's images were made: the abandoned request never ran to the end.
            assert!(metrics.contains("t2i_images_generated_total 4"), "{metrics}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request was not dropped:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_server_with_other_limits_states_them_and_bodies_are_read_as_json_schema_reads_them() {
    let server = Server::start(&["--max-steps", "3", "--max-images", "2", "--max-score-images", "5"]);
    let doc = server.get("/openapi.json").json();
    let schemas = &doc["components"]["schemas"];
    let generate = &schemas["GenerateRequest"]["properties"];
    assert_eq!(generate["steps"]["maximum"], 3);
    assert_eq!(generate["n"]["maximum"], 2);
    // tiny-sd's sizes are multiples of 16.
    assert_eq!(generate["width"]["multipleOf"], 16);
    assert_eq!(generate["seed"]["maximum"], serde_json::json!(u64::MAX));
    assert_eq!(schemas["ScoreRequest"]["properties"]["images"]["maxItems"], 5);
    assert_eq!(doc["paths"]["/images"]["get"]["parameters"][1]["schema"]["minimum"], 1);
    // The form's image parts are files, of the media types the server decodes.
    let form = &doc["paths"]["/score"]["post"]["requestBody"]["content"]["multipart/form-data"];
    assert_eq!(form["encoding"]["image"]["contentType"], "image/png, image/jpeg");
    assert_eq!(schemas["ImageFile"]["format"], "binary");
    // An open server asks for no key.
    assert!(doc["paths"]["/generate"]["post"]["security"].is_null());

    // A whole-number float is an integer, as in JSON Schema; an array is not a body.
    let whole = server.post_json("/generate", r#"{"prompt":"a red circle","steps":2.0,"seed":1}"#);
    assert_eq!(whole.status, 200, "{}", whole.text());
    let array = server.post_json("/generate", r#"["a red circle", 1]"#);
    assert_eq!(array.status, 422, "{}", array.text());
    // A cursor of the right shape that names nothing is gone (404); any other text is not a cursor (422).
    let gone = server.get("/images?after=img_0123456789abcdef0123456789abcdef");
    assert_eq!(gone.status, 404, "{}", gone.text());
    assert_eq!(server.get("/images?after=nope").status, 422);
}

/// tiny-sd-wide: non-square by default (its UNet's `sample_size` is [9, 13] latent cells, 72×104 pixels), traced
/// with explicit upsample sizes, so any multiple of 8 renders, as in Optimum; it warms up at its own default.
#[test]
fn a_non_square_model_serves_its_own_size_and_any_multiple_of_8() {
    let server = Server::start_with_model(&common::tiny_sd_wide(), &["--warmup", "true"]);
    let generate = |body: &str| server.post_json("/generate", body);
    let default = generate(r#"{"prompt":"a red circle","steps":2,"seed":1}"#);
    assert_eq!(default.status, 200, "{}", default.text());
    let image = decode_png(default.json()["images"][0]["png_base64"].as_str().unwrap());
    assert_eq!((image.width(), image.height()), (104, 72));

    let odd = generate(r#"{"prompt":"a red circle","steps":2,"seed":1,"width":40,"height":56}"#);
    assert_eq!(odd.status, 200, "{}", odd.text());
    let image = decode_png(odd.json()["images"][0]["png_base64"].as_str().unwrap());
    assert_eq!((image.width(), image.height()), (40, 56));

    let refused = generate(r#"{"prompt":"a red circle","width":60}"#);
    assert_eq!(refused.status, 422);
    let error = &refused.json()["error"];
    assert_eq!(error["param"], "width");
    assert!(error["message"].as_str().unwrap().contains("multiple of 8"), "{error}");

    let openapi = server.get("/openapi.json").json();
    let width = &openapi["components"]["schemas"]["GenerateRequest"]["properties"]["width"];
    assert_eq!(width["multipleOf"], 8, "{width}");
    assert_eq!(width["minimum"], 8, "{width}");
}
