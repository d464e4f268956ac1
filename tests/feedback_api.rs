//! Feedback end to end: rate generated images by id or send an image with its prompt, list with filters and
//! paging, export as JSON lines, and refuse bad input naming the field.

mod common;

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use common::Server;
use serde_json::{json, Value};

fn post(server: &Server, body: Value) -> common::Response {
    server.post_json("/feedback", &body.to_string())
}

#[test]
fn ratings_are_stored_listed_and_exported() {
    let server = Server::start(&[]);
    let generated = server.post_json(
        "/generate",
        r#"{"prompt":"three red circles","steps":3,"n":2,"seed":4}"#,
    );
    assert_eq!(generated.status, 200, "{}", generated.text());
    let generated = generated.json();
    let ids: Vec<&str> = generated["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["image_id"].as_str().unwrap())
        .collect();

    let good = post(&server, json!({"image_id": ids[0], "label": "good", "rater": "ann"}));
    assert_eq!(good.status, 201, "{}", good.text());
    let good = good.json();
    assert!(good["id"].as_str().unwrap().starts_with("fb_"));
    assert_eq!(good["prompt"], "three red circles");
    assert_eq!(good["image_id"], ids[0]);
    assert_eq!(good["model"], generated["model"]);
    let png = std::fs::read(common::repo_path("tests/golden/reward/shapes-reward/1.png")).unwrap();
    let sent = post(
        &server,
        json!({"image": BASE64.encode(&png), "prompt": "a red circle", "label": "bad", "rater": "bob"}),
    );
    assert_eq!(sent.status, 201, "{}", sent.text());
    assert_eq!(sent.json()["image_id"], Value::Null);
    assert_eq!(sent.json()["model"], Value::Null);
    assert_eq!(post(&server, json!({"image_id": ids[1], "label": "skip"})).status, 201);

    let all = server.get("/feedback").json();
    assert_eq!(all["data"].as_array().unwrap().len(), 3);
    assert_eq!(all["has_more"], false);
    let first_page = server.get("/feedback?limit=2").json();
    assert_eq!(first_page["data"].as_array().unwrap().len(), 2);
    assert_eq!(first_page["has_more"], true);
    let after = first_page["last_id"].as_str().unwrap();
    let second_page = server.get(&format!("/feedback?limit=2&after={after}")).json();
    assert_eq!(second_page["data"][0]["label"], "skip");
    assert_eq!(second_page["has_more"], false);
    let goods = server.get("/feedback?label=good").json();
    assert_eq!(goods["data"].as_array().unwrap().len(), 1);
    assert_eq!(server.get("/feedback?rater=bob").json()["data"][0]["label"], "bad");
    let model = generated["model"].as_str().unwrap();
    let by_model = server.get(&format!("/feedback?model={model}")).json();
    let labels: Vec<&str> = by_model["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|rating| rating["label"].as_str().unwrap())
        .collect();
    assert_eq!(labels, vec!["good", "skip"], "the uploaded image has no model");
    assert_eq!(server.get("/feedback?model=ft-other").json()["data"], json!([]));
    let by_image = server.get(&format!("/feedback?image_id={}", ids[1])).json();
    assert_eq!(by_image["data"].as_array().unwrap().len(), 1);

    let export = server.get("/feedback/export?include_images=true");
    assert_eq!(export.status, 200);
    assert_eq!(export.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = export
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    assert_eq!(BASE64.decode(lines[1]["image_base64"].as_str().unwrap()).unwrap(), png);
    let plain = server.get("/feedback/export?label=bad").text();
    assert_eq!(plain.lines().count(), 1);
    assert!(!plain.contains("image_base64"));

    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("t2i_feedback_total{label=\"good\"} 1"), "{metrics}");
    assert!(metrics.contains("t2i_feedback_total{label=\"bad\"} 1"), "{metrics}");
}

#[test]
fn bad_feedback_gets_a_4xx_naming_the_field() {
    let mut server = Server::start(&[]);
    let generated = server.post_json("/generate", r#"{"prompt":"a star","steps":2}"#).json();
    let id = generated["images"][0]["image_id"].as_str().unwrap().to_string();
    let png = BASE64.encode(std::fs::read(common::repo_path("tests/golden/reward/shapes-reward/0.png")).unwrap());
    let cases = [
        (json!({"image_id": id, "label": "great"}), "label", "good, bad, skip"),
        (json!({"image_id": "img_nope", "label": "good"}), "image_id", "img_nope"),
        (
            json!({"image_id": id, "image": png, "label": "good"}),
            "image",
            "not both",
        ),
        (json!({"label": "good"}), "image_id", "is required"),
        (
            json!({"image": png, "label": "good"}),
            "prompt",
            "required with `image`",
        ),
        (
            json!({"image_id": id, "prompt": "x", "label": "good"}),
            "prompt",
            "leave `prompt` out",
        ),
        (
            json!({"image": "%%%", "prompt": "a", "label": "good"}),
            "image",
            "not valid base64",
        ),
        (
            json!({"image": BASE64.encode(b"not an image"), "prompt": "a", "label": "good"}),
            "image",
            "not a PNG",
        ),
        (
            json!({"image_id": id, "label": "good", "rater": "r".repeat(200)}),
            "rater",
            "at most 128",
        ),
        (
            json!({"image_id": id, "label": "good", "stars": 5}),
            "stars",
            "unknown field",
        ),
    ];
    for (body, param, words) in cases {
        let response = post(&server, body.clone());
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        let error = &response.json()["error"];
        assert_eq!(error["param"], param, "{body}: {error}");
        assert!(error["message"].as_str().unwrap().contains(words), "{body}: {error}");
    }
    for (query, param) in [
        ("limit=0", "limit"),
        ("limit=5000", "limit"),
        ("label=great", "label"),
        ("after=fb_nope", "after"),
        ("colour=red", "query"),
    ] {
        for path in ["/feedback", "/feedback/export"] {
            let response = server.get(&format!("{path}?{query}"));
            assert_eq!(response.status, 422, "{path}?{query}: {}", response.text());
            assert_eq!(response.json()["error"]["param"], param, "{path}?{query}");
        }
    }
    assert!(server.is_running());
}

#[test]
fn simulate_raters_labels_stored_images_through_the_api() {
    let server = Server::start_with_model(&common::shapes_sd(), &[]);
    for body in [
        r#"{"prompt":"two blue stars on a white background","steps":4,"n":2,"seed":1}"#,
        r#"{"prompt":"a photo of a cat","steps":2,"seed":1}"#,
    ] {
        assert_eq!(server.post_json("/generate", body).status, 200);
    }
    let listed = server.get("/images?limit=2").json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
    assert_eq!(listed["has_more"], true);
    let id = listed["data"][0]["id"].as_str().unwrap();
    let png = server.get(&format!("/images/{id}"));
    assert_eq!(png.header("content-type"), Some("image/png"));
    assert!(png.body.starts_with(b"\x89PNG"));
    assert_eq!(server.get("/images/img_nope").status, 404);
    assert_eq!(server.get("/images?limit=0").json()["error"]["param"], "limit");

    let run = || {
        let url = format!("http://127.0.0.1:{}", server.port);
        let output = common::run_python("t2i_scripts.eval.simulate_raters", &["--url", &url]);
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        assert!(
            output.status.success(),
            "{stdout}\n{}",
            String::from_utf8_lossy(&output.stderr)
        );
        serde_json::from_str::<Value>(stdout.lines().last().unwrap()).unwrap()
    };
    let counts = run();
    assert_eq!(
        counts["good"].as_u64().unwrap() + counts["bad"].as_u64().unwrap(),
        2,
        "{counts}"
    );
    assert_eq!(counts["not_shapes"], 1, "{counts}");
    let ratings = server.get("/feedback?rater=simulated").json();
    assert_eq!(ratings["data"].as_array().unwrap().len(), 2);
    // A second run leaves rated images alone.
    let again = run();
    assert_eq!(again["already_rated"], 2, "{again}");
}

#[test]
fn a_rating_can_be_taken_back_once() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    let server = Server::start(&["--data-dir", &data_dir]);
    let generated = server.post_json("/generate", r#"{"prompt":"a red circle","steps":2,"seed":1}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    let image_id = generated.json()["images"][0]["image_id"].as_str().unwrap().to_string();
    let rating = post(&server, json!({"image_id": image_id, "label": "good"})).json();
    let id = rating["id"].as_str().unwrap();
    let files = |folder: &str| std::fs::read_dir(data.path().join(folder)).unwrap().count();
    assert_eq!(files("feedback"), 1);

    let deleted = common::request(server.port, "DELETE", &format!("/feedback/{id}"), None).unwrap();
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    assert_eq!(deleted.json()["label"], "good");
    assert_eq!(server.get("/feedback").json()["data"].as_array().unwrap().len(), 0);
    assert_eq!(
        files("feedback"),
        0,
        "the rating's copy of the image is deleted with it"
    );
    // The generated image itself stays: it can be rated again.
    assert_eq!(post(&server, json!({"image_id": image_id, "label": "bad"})).status, 201);

    let again = common::request(server.port, "DELETE", &format!("/feedback/{id}"), None).unwrap();
    assert_eq!(again.status, 404, "{}", again.text());
    assert_eq!(again.json()["error"]["type"], "not_found");
    assert!(again.text().contains(id), "{}", again.text());
    let metrics = server.get("/metrics").text();
    assert!(
        metrics.contains("t2i_feedback_deleted_total{label=\"good\"} 1"),
        "{metrics}"
    );
}
