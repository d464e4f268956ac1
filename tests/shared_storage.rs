//! `serve --database-url` and `--object-store` (#25), on a real Postgres server and a real S3-compatible store
//! (SeaweedFS):
//! - a server whose records live on Postgres keeps them across restarts (and writes no SQLite file), reports
//!   an outage of the database on `/ready` and in its errors, naming the database without its password, and
//!   keeps running; a bad or unreachable URL stops start-up with a clear error;
//! - two servers sharing one database and one bucket see each other's images and ratings, image bytes
//!   included, and an outage of the store is reported the same way.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::postgres::Postgres;
use common::seaweed::{self, Seaweed};
use common::{binary, ort_dylib, tiny_sd, Server};
use serde_json::{json, Value};

#[test]
fn a_server_on_postgres_keeps_its_state_and_reports_an_outage() {
    let postgres = Postgres::start();
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().to_str().unwrap().to_string();
    let url = postgres.url();
    // A trainer that fails at once: the job still samples, records its stages and events, and fails.
    let args = [
        "--data-dir",
        data_dir.as_str(),
        "--database-url",
        url.as_str(),
        "--trainer-command",
        "false",
        "--trainer-python",
        "/bin/false",
    ];

    let server = Server::start(&args);
    let generated = server.post_json("/generate", r#"{"prompt":"a red circle","steps":2,"n":2,"seed":3}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    let ids: Vec<String> = generated.json()["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|image| image["image_id"].as_str().unwrap().to_string())
        .collect();
    let rated = server.post_json("/feedback", &json!({"image_id": ids[0], "label": "good"}).to_string());
    assert_eq!(rated.status, 201, "{}", rated.text());
    let job = server.post_json(
        "/fine-tunes",
        &json!({
            "prompts": ["a red circle"],
            "images_per_prompt": 2,
            "hyperparameters": {"steps": 1, "batch_size": 2},
            "pretrain_data": {"kind": "shapes_world", "images": 2},
            "eval_prompts": ["a red circle"],
            "eval_images_per_prompt": 1,
        })
        .to_string(),
    );
    assert_eq!(job.status, 201, "{}", job.text());
    let job_id = job.json()["id"].as_str().unwrap().to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let failed = loop {
        let current = server.get(&format!("/fine-tunes/{job_id}")).json();
        if current["status"] == "failed" {
            break current;
        }
        assert!(
            Instant::now() < deadline,
            "the job never failed: {current}\n{}",
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(!failed["error"].as_str().unwrap().is_empty(), "{failed}");
    let events = server.get(&format!("/fine-tunes/{job_id}/events?limit=100")).json();
    let kinds: Vec<&str> = events["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|event| event["kind"].as_str().unwrap())
        .collect();
    assert!(kinds.contains(&"stage") && kinds.contains(&"status"), "{events}");
    drop(server);
    assert!(
        !data.path().join("t2i-align.db").exists(),
        "with --database-url the state is on Postgres, not in a SQLite file"
    );

    let server = Server::start(&args);
    let ratings = server.get("/feedback").json();
    assert_eq!(ratings["data"].as_array().unwrap().len(), 1, "{ratings}");
    assert_eq!(ratings["data"][0]["image_id"], Value::String(ids[0].clone()));
    let images = server.get("/images").json();
    assert_eq!(images["data"].as_array().unwrap().len(), 2, "{images}");
    let jobs = server.get("/fine-tunes").json();
    assert_eq!(jobs["data"].as_array().unwrap().len(), 1, "{jobs}");
    assert_eq!(jobs["data"][0]["status"], "failed", "{jobs}");

    postgres.stop();
    let ready = server.get("/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    let message = ready.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&format!("127.0.0.1:{}", postgres.port)) && message.contains("unreachable"),
        "{message}"
    );
    let refused = server.post_json("/feedback", &json!({"image_id": ids[1], "label": "bad"}).to_string());
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(refused.json()["error"]["type"], "unavailable", "{}", refused.text());
    // Still serving what needs no database, and still alive.
    assert_eq!(server.get("/health").status, 200);
}

fn serve_with(url: &str) -> (std::process::Output, Duration) {
    let data = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let output = Command::new(binary())
        .args(["serve", "--port", "0", "--warmup", "false", "--model"])
        .arg(tiny_sd())
        .arg("--data-dir")
        .arg(data.path())
        .args(["--database-url", url])
        .env("ORT_DYLIB_PATH", ort_dylib())
        .env("NO_COLOR", "1")
        .output()
        .expect("run t2i-align");
    (output, started.elapsed())
}

#[test]
fn a_bad_or_unreachable_database_url_stops_start_up_clearly() {
    let (output, _) = serve_with("mysql://app:s3cret@db/t2i");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--database-url") && stderr.contains("postgres://"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");

    let port = common::free_port();
    let (output, took) = serve_with(&format!("postgres://app:s3cret@127.0.0.1:{port}/t2i"));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains(&format!("postgres://app:***@127.0.0.1:{port}/t2i")),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret"), "{stderr}");
    assert!(took < Duration::from_secs(60), "start-up gave up after {took:?}");

    let data = tempfile::tempdir().unwrap();
    let output = Command::new(binary())
        .args(["serve", "--port", "0", "--warmup", "false", "--model"])
        .arg(tiny_sd())
        .arg("--data-dir")
        .arg(data.path())
        .args(["--object-store", "ftp://files.example/t2i"])
        .env("ORT_DYLIB_PATH", ort_dylib())
        .output()
        .expect("run t2i-align");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("--object-store") && stderr.contains("s3://bucket"),
        "{stderr}"
    );
}

#[test]
fn two_servers_on_one_database_and_bucket_share_images_and_ratings() {
    let postgres = Postgres::start();
    let store = Seaweed::start();
    let url = postgres.url();
    let endpoint = store.endpoint();
    let bucket = format!("s3://{}/shared", seaweed::BUCKET);
    let credentials = [
        ("AWS_ACCESS_KEY_ID", seaweed::ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", seaweed::SECRET_KEY),
    ];
    // Each has a data directory of its own (Server::start makes one): nothing is shared through the disk.
    let args = [
        "--database-url",
        url.as_str(),
        "--object-store",
        bucket.as_str(),
        "--s3-endpoint",
        endpoint.as_str(),
        "--warmup",
        "false",
    ];
    let first = Server::start_with_env(&tiny_sd(), &args, &credentials);
    let second = Server::start_with_env(&tiny_sd(), &args, &credentials);

    let generated = first.post_json("/generate", r#"{"prompt":"two blue squares","steps":2,"seed":5}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    let image_id = generated.json()["images"][0]["image_id"].as_str().unwrap().to_string();
    let fetched = second.get(&format!("/images/{image_id}"));
    assert_eq!(fetched.status, 200, "{}", fetched.text());
    let png = fetched.body.clone();
    assert_eq!(&png[1..4], b"PNG");
    assert_eq!(first.get(&format!("/images/{image_id}")).body, png);

    let rated = second.post_json("/feedback", &json!({"image_id": image_id, "label": "good"}).to_string());
    assert_eq!(rated.status, 201, "{}", rated.text());
    let export = first.get("/feedback/export?include_images=true");
    assert_eq!(export.status, 200, "{}", export.text());
    let lines: Vec<Value> = export
        .text()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", export.text());
    assert_eq!(lines[0]["image_id"], Value::String(image_id.clone()));
    assert!(!lines[0]["image_base64"].as_str().unwrap_or("").is_empty());

    store.stop();
    let ready = first.get("/ready");
    assert_eq!(ready.status, 503, "{}", ready.text());
    let message = ready.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains(&endpoint) && message.contains("object store"),
        "{message}"
    );
    let refused = second.get(&format!("/images/{image_id}"));
    assert_eq!(refused.status, 503, "{}", refused.text());
    assert_eq!(first.get("/health").status, 200);
}

/// Waits until `GET /rollout` on `server` shows `replicas` replicas all serving `version`; returns it.
fn wait_converged(server: &Server, version: &str, replicas: usize, within: Duration) -> Value {
    let deadline = std::time::Instant::now() + within;
    loop {
        let rollout = server.get("/rollout").json();
        let listed = rollout["replicas"].as_array().map_or(0, Vec::len);
        if rollout["version"] == version && rollout["converged"] == true && listed == replicas {
            return rollout;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the replicas did not all serve {version} within {within:?}: {rollout:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_version_activated_on_one_replica_is_served_by_every_replica() {
    let postgres = Postgres::start();
    let url = postgres.url();
    let args = ["--database-url", url.as_str(), "--warmup", "false"];
    let first = Server::start(&args);
    let second = Server::start(&args);
    let rollout = wait_converged(&first, "tiny-sd", 2, Duration::from_secs(10));
    assert_eq!(rollout["generation"], 1, "{rollout}");

    // A third replica started on another folder makes its version active: the other two follow it.
    let copies = tempfile::tempdir().unwrap();
    let other = copies.path().join("tiny-sd-b");
    common::copy_dir(&tiny_sd(), &other);
    let third = Server::start_with_model(&other, &args);
    let rollout = wait_converged(&third, "tiny-sd-b", 3, Duration::from_secs(10));
    assert_eq!(rollout["generation"], 2, "{rollout}");
    for server in [&first, &second, &third] {
        let generated = server.post_json("/generate", r#"{"prompt":"a red circle","steps":2,"seed":1}"#);
        assert_eq!(generated.status, 200, "{}", generated.text());
        assert_eq!(
            generated.json()["model"],
            "tiny-sd-b",
            "responses name the version that served them"
        );
    }

    // Every replica's listening connection is cut, and then a version is activated: polling finds it.
    let cut = postgres.sql(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity \
         WHERE application_name = 't2i-align rollout listener'",
    );
    assert_eq!(cut.trim(), "3", "one listener per replica");
    let started = std::time::Instant::now();
    let activated = second.post_json("/models/tiny-sd/activate", "");
    assert_eq!(activated.status, 200, "{}", activated.text());
    let rollout = wait_converged(&first, "tiny-sd", 3, Duration::from_secs(10));
    assert_eq!(rollout["generation"], 3, "{rollout}");
    eprintln!("rolled out to 3 replicas in {:.1} s", started.elapsed().as_secs_f64());
    let generated = third.post_json("/generate", r#"{"prompt":"a red circle","steps":2,"seed":1}"#);
    assert_eq!(generated.json()["model"], "tiny-sd");
    // The listeners came back: the next activation is announced again.
    let activated = first.post_json("/models/tiny-sd-b/activate", "");
    assert_eq!(activated.status, 200, "{}", activated.text());
    wait_converged(&second, "tiny-sd-b", 3, Duration::from_secs(10));
    let listeners =
        postgres.sql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 't2i-align rollout listener'");
    assert_eq!(listeners.trim(), "3", "every listener reconnected");
}
