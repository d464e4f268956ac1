//! Fine-tune jobs and model versions over HTTP (#5), against a real server, the real trainer
//! (`t2i_trainer.jobs.finetune` in `.venv-trainer`) and tiny-sd: the lifecycle from ratings to generating with the
//! new version, cancel, a server killed mid-job, a corrupt candidate, and bad specs.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use common::{binary, repo_path, Server};
use serde_json::{json, Value};

/// The server flags that point jobs at this checkout's trainer.
fn trainer_args() -> Vec<String> {
    let python = repo_path(".venv-trainer/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run the tests through `make test` (it builds the trainer's venv)",
        python.display()
    );
    vec![
        "--trainer-python".into(),
        python.display().to_string(),
        "--trainer-dir".into(),
        repo_path("trainer").display().to_string(),
        "--trainer-threads".into(),
        "1".into(),
    ]
}

fn start(data_dir: &std::path::Path, extra: &[&str]) -> Server {
    let data = data_dir.display().to_string();
    let trainer = trainer_args();
    let mut args: Vec<&str> = vec!["--data-dir", &data];
    args.extend(trainer.iter().map(String::as_str));
    args.extend(extra);
    Server::start(&args)
}

/// A job small enough for tiny-sd to finish in seconds; `steps` sets how long the trainer runs.
fn tiny_job(steps: u64) -> Value {
    json!({
        "prompts": ["a red circle", "two blue squares"],
        "images_per_prompt": 2,
        "hyperparameters": {"steps": steps, "batch_size": 4, "learning_rate": 1e-4},
        "pretrain_data": {"kind": "shapes_world", "images": 8},
        "eval_prompts": ["a red circle", "three green stars"],
        "eval_images_per_prompt": 2,
        // tiny-sd is random: the gate is opened wide so that the lifecycle does not depend on its luck.
        "gate": {"min_reward_gain": -1.0, "max_drop": {"quality": 1.0, "colour": 1.0, "background": 1.0, "shape": 1.0, "diversity": 1.0}},
    })
}

fn job(server: &Server, id: &str) -> Value {
    let response = server.get(&format!("/fine-tunes/{id}"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()
}

fn events(server: &Server, id: &str) -> Vec<Value> {
    let response = server.get(&format!("/fine-tunes/{id}/events?limit=1000"));
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["data"].as_array().cloned().unwrap_or_default()
}

fn wait_for(server: &Server, id: &str, what: &str, done: impl Fn(&Value, &[Value]) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(150);
    loop {
        let current = job(server, id);
        if done(&current, &events(server, id)) {
            return current;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} never {what}: {current}\nevents: {:#?}\nlog:\n{}",
            events(server, id),
            server.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn wait_final(server: &Server, id: &str) -> Value {
    wait_for(server, id, "finished", |job, _| {
        !matches!(job["status"].as_str(), Some("queued" | "running"))
    })
}

/// Processes whose command line mentions `needle` (the job's trainer spec file).
fn processes_with(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let text = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if text.contains(needle) && !text.contains("fine_tune_api") {
                found.push(text);
            }
        }
    }
    found
}

fn wait_no_trainer(id: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !processes_with(id).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the trainer of {id} still runs: {:?}",
            processes_with(id)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn model_ids(server: &Server) -> (Vec<String>, String) {
    let models = server.get("/models").json();
    let ids = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|model| model["id"].as_str().unwrap().to_string())
        .collect();
    (ids, models["active"].as_str().unwrap().to_string())
}

#[test]
fn the_trainer_runs_on_two_nodes_that_meet_at_a_rendezvous_named_after_the_job() {
    let data = tempfile::tempdir().unwrap();
    // Two "nodes" on this machine: the second is started through a launcher that names it and runs locally.
    let endpoint = format!("127.0.0.1:{}", common::free_port());
    let flags = [
        "--trainer-nodes",
        "node-a,node-b",
        "--trainer-nproc-per-node",
        "1",
        "--trainer-node-launcher",
        "env T2I_NODE={node}",
        "--trainer-rdzv-endpoint",
        endpoint.as_str(),
    ];
    let server = start(data.path(), &flags);
    let created = server.post_json("/fine-tunes", &tiny_job(2).to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}\n{}", server.log());
    let events = events(&server, &id);
    let started = events
        .iter()
        .find(|event| event["kind"] == "trainer" && event["message"].as_str().unwrap().starts_with("started: "))
        .unwrap();
    let command = started["message"].as_str().unwrap();
    assert!(
        command.contains("torchrun --nnodes=2 --nproc-per-node=1 --rdzv-backend=c10d"),
        "{command}"
    );
    assert!(command.contains(&format!("--rdzv-id={id}-a1")), "{command}");
    let world = events
        .iter()
        .find(|event| event["data"]["event"] == "start")
        .unwrap_or_else(|| panic!("no start event: {events:#?}"));
    assert_eq!(world["data"]["processes"], 2, "{world}");
    assert!(data.path().join("jobs").join(&id).join("trainer-node-1.log").is_file());
}

#[test]
fn a_node_that_fails_stops_the_others_and_fails_the_job() {
    let data = tempfile::tempdir().unwrap();
    // The second node's launcher fails at once; node 0 would otherwise wait at the rendezvous for minutes.
    let endpoint = format!("127.0.0.1:{}", common::free_port());
    let flags = [
        "--trainer-nodes",
        "node-a,node-b",
        "--trainer-node-launcher",
        "false {node}",
        "--trainer-rdzv-endpoint",
        endpoint.as_str(),
    ];
    let server = start(data.path(), &flags);
    let created = server.post_json("/fine-tunes", &tiny_job(2).to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    // wait_final gives up after 150 s, long before the rendezvous would (600 s).
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("`false node-b") && error.contains("failed"), "{error}");
    wait_no_trainer(&id);
}

#[test]
fn rate_fine_tune_activate_generate_and_survive_a_restart() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), &[]);
    // Two rated images: the job trains on them too (good 1, bad 0).
    let generated = server.post_json("/generate", r#"{"prompt": "a red circle", "n": 2, "seed": 3}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    let images = generated.json()["images"].as_array().unwrap().clone();
    for (image, label) in images.iter().zip(["good", "bad"]) {
        let body = json!({"image_id": image["image_id"], "label": label, "rater": "test"});
        assert_eq!(server.post_json("/feedback", &body.to_string()).status, 201);
    }

    // A rating of an image sent with its prompt: no model generated it, so the job's filter leaves it out.
    let png = std::fs::read(repo_path("tests/golden/reward/shapes-reward/1.png")).unwrap();
    let body = json!({"image": BASE64.encode(&png), "prompt": "a red circle", "label": "good"});
    assert_eq!(server.post_json("/feedback", &body.to_string()).status, 201);

    // Created and followed to the end through the CLI, as a user would, on the ratings of tiny-sd's images.
    let spec = data.path().join("job.json");
    std::fs::write(&spec, tiny_job(3).to_string()).unwrap();
    let url = format!("http://127.0.0.1:{}", server.port);
    let output = Command::new(binary())
        .args([
            "fine-tune",
            "create",
            "--url",
            &url,
            "--activate",
            "--feedback-model",
            "tiny-sd",
            "--file",
        ])
        .arg(&spec)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "fine-tune create failed:\n{stderr}\n{}",
        server.log()
    );
    assert!(stderr.contains("succeeded"), "{stderr}");

    let listed = server.get("/fine-tunes").json();
    let id = listed["data"][0]["id"].as_str().unwrap().to_string();
    let done = job(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["progress"], 1.0);
    let version = done["result_model"].as_str().unwrap().to_string();
    assert!(version.starts_with("tiny-sd-ft-"), "{version}");
    let metrics = &done["metrics"];
    assert_eq!(done["spec"]["feedback_filter"]["model"], "tiny-sd", "{done}");
    assert_eq!(metrics["training_set"]["rated"], 2, "{metrics}");
    assert_eq!(metrics["training_set"]["reward_scored"], 4, "{metrics}");
    assert_eq!(metrics["trainer"]["losses"].as_array().unwrap().len(), 3, "{metrics}");
    assert!(metrics["evaluation"]["base"]["mean_reward"].is_number(), "{metrics}");
    assert!(
        metrics["evaluation"]["candidate"]["mean_reward"].is_number(),
        "{metrics}"
    );
    assert_eq!(metrics["gate"]["passed"], true, "{metrics}");
    // The gate's table: every metric with its paired bootstrap interval over the 2 evaluation prompts.
    let table = metrics["gate"]["table"].as_array().unwrap();
    let reward = table.iter().find(|row| row["metric"] == "reward").unwrap();
    assert_eq!(
        (reward["role"].as_str(), reward["prompts"].as_u64()),
        (Some("gain"), Some(2)),
        "{reward}"
    );
    let (low, gain, high) = (
        reward["low"].as_f64().unwrap(),
        reward["gain"].as_f64().unwrap(),
        reward["high"].as_f64().unwrap(),
    );
    assert!(low <= gain && gain <= high, "{reward}");
    assert_eq!(metrics["gate"]["prompts"], 2, "{metrics}");
    assert_eq!(metrics["gate"]["rule"]["confidence"], 0.95, "{metrics}");
    let kinds: Vec<String> = events(&server, &id)
        .iter()
        .map(|event| event["kind"].as_str().unwrap().to_string())
        .collect();
    for kind in ["status", "stage", "trainer", "progress", "metrics"] {
        assert!(kinds.iter().any(|k| k == kind), "no `{kind}` event: {kinds:?}");
    }
    // The trainer got the job's hyperparameters, the defaults filled in.
    let started = events(&server, &id)
        .into_iter()
        .find(|event| event["kind"] == "trainer" && event["message"].as_str().unwrap().starts_with("started"))
        .unwrap();
    assert_eq!(started["data"]["lr_schedule"], "cosine", "{started}");
    assert_eq!(started["data"]["learning_rate"], 1e-4, "{started}");

    // The new version is registered with its lineage and checksums, and active.
    let models = server.get("/models").json();
    assert_eq!(models["active"], version.as_str());
    let record = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["id"] == version.as_str())
        .unwrap()
        .clone();
    assert_eq!(record["lineage"], json!(["tiny-sd"]));
    assert_eq!(record["job_id"], id.as_str());
    assert!(record["checksummed_files"].as_u64().unwrap() >= 8, "{record}");
    let generated = server.post_json("/generate", r#"{"prompt": "a red circle", "seed": 1}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    assert_eq!(generated.json()["model"], version.as_str());
    let old = server.post_json(
        "/generate",
        r#"{"prompt": "a red circle", "seed": 1, "model": "tiny-sd"}"#,
    );
    assert_eq!(old.json()["model"], "tiny-sd");
    assert_ne!(
        old.json()["images"][0]["png_base64"],
        generated.json()["images"][0]["png_base64"],
        "the fine-tuned weights draw differently"
    );
    let metrics_text = server.get("/metrics").text();
    assert!(
        metrics_text.contains(r#"t2i_fine_tune_jobs{status="succeeded"} 1"#),
        "{metrics_text}"
    );
    assert!(
        metrics_text.contains(&format!(r#"model="{version}""#)),
        "{metrics_text}"
    );
    assert!(metrics_text.contains("t2i_fine_tune_stage_duration_seconds_count{stage=\"train\"} 1"));

    // A swap does not drop a request in flight: it finishes on the version it started with.
    let port = server.port;
    let slow = std::thread::spawn(move || {
        common::request(
            port,
            "POST",
            "/generate",
            Some(r#"{"prompt": "two blue squares", "n": 8, "steps": 150, "seed": 5}"#),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(50));
    let swapped = server.post_json("/models/tiny-sd/activate", "");
    assert_eq!(swapped.status, 200, "{}", swapped.text());
    assert_eq!(swapped.json()["active"], "tiny-sd");
    let slow = slow.join().unwrap();
    assert_eq!(slow.status, 200, "{}", slow.text());
    assert_eq!(slow.json()["model"], version.as_str());
    assert_eq!(server.post_json("/models/nope/activate", "").status, 422);

    // The active version survives a restart.
    let activated = server.post_json(&format!("/models/{version}/activate"), "");
    assert_eq!(activated.status, 200, "{}", activated.text());
    server.kill();
    let server = start(data.path(), &[]);
    assert_eq!(server.get("/health").json()["model"], version.as_str());
    let (ids, active) = model_ids(&server);
    assert_eq!(ids, vec!["tiny-sd".to_string(), version.clone()]);
    assert_eq!(active, version);
}

#[test]
fn the_base_evaluation_is_cached_and_a_gate_without_evidence_refuses() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let mut ids = Vec::new();
    for min_reward_gain in [-1.0, 1.0] {
        let mut spec = tiny_job(2);
        spec["gate"]["min_reward_gain"] = json!(min_reward_gain);
        spec["base_model"] = json!("tiny-sd");
        spec["activate_on_success"] = json!(true);
        spec["use_feedback"] = json!(false);
        let created = server.post_json("/fine-tunes", &spec.to_string());
        assert_eq!(created.status, 201, "{}", created.text());
        let id = created.json()["id"].as_str().unwrap().to_string();
        assert_eq!(wait_final(&server, &id)["status"], "succeeded", "{}", server.log());
        ids.push(id);
    }
    let (first, second) = (job(&server, &ids[0]), job(&server, &ids[1]));
    assert_eq!(first["metrics"]["gate"]["base_cached"], false, "{first}");
    assert_eq!(second["metrics"]["gate"]["base_cached"], true, "{second}");
    // The same base, prompts and seeds: the cached figures are the first job's.
    assert_eq!(
        first["metrics"]["evaluation"]["base"],
        second["metrics"]["evaluation"]["base"]
    );
    let cache = data.path().join("eval-cache").join("tiny-sd");
    assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1, "{}", cache.display());

    // A reward gain above 1 cannot be shown: the gate refuses, says why, and the version is not activated.
    let gate = &second["metrics"]["gate"];
    assert_eq!(gate["passed"], false, "{gate}");
    assert!(
        gate["reasons"][0].as_str().unwrap().starts_with("the mean reward gain"),
        "{gate}"
    );
    assert_eq!(second["metrics"]["activated"], false);
    let (_, active) = model_ids(&server);
    assert_eq!(active, first["result_model"].as_str().unwrap());
    let outcome = events(&server, &ids[1])
        .into_iter()
        .filter_map(|event| event["message"].as_str().map(str::to_string))
        .find(|message| message.contains("not activated"))
        .unwrap();
    assert!(outcome.contains("the gate refused on 2 prompts"), "{outcome}");
}

#[test]
fn retraining_the_reward_model_registers_a_reward_version_and_scores_with_it() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    for (number, prompt) in ["a red circle", "two blue squares", "three green stars", "a blue cross"]
        .iter()
        .enumerate()
    {
        let body = json!({"prompt": prompt, "n": 3, "seed": number});
        let images = server.post_json("/generate", &body.to_string()).json()["images"].clone();
        for (index, image) in images.as_array().unwrap().iter().enumerate() {
            let label = if (number + index) % 2 == 0 { "good" } else { "bad" };
            let rating = json!({"image_id": image["image_id"], "label": label});
            assert_eq!(server.post_json("/feedback", &rating.to_string()).status, 201);
        }
    }
    let mut spec = tiny_job(2);
    spec["retrain_reward_model"] = json!(true);
    let created = server.post_json("/fine-tunes", &spec.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}\n{:#?}", events(&server, &id));
    let reward = &done["metrics"]["reward_model"];
    let version = reward["version"].as_str().unwrap();
    assert!(version.starts_with("shapes-reward-ft-"), "{reward}");
    assert_eq!(reward["parent"], "shapes-reward");
    assert_eq!(reward["rescored_samples"], 4, "{reward}");
    assert_eq!(reward["retrained"]["ratings"], 12, "{reward}");
    let models = server.get("/models").json();
    let record = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["id"] == version)
        .unwrap()
        .clone();
    assert_eq!(record["kind"], "reward");
    assert_eq!(record["active"], false);
    assert!(record["checksummed_files"].as_u64().unwrap() >= 3, "{record}");
    // The folder it was registered under (a new prefix per registration) serves as a reward model.
    let files = record["files"].as_str().unwrap();
    assert!(files.starts_with(&format!("models/{version}-")), "{record}");
    let manifest = data.path().join(files).join("manifest.json");
    let manifest: Value = serde_json::from_str(&std::fs::read_to_string(manifest).unwrap()).unwrap();
    assert_eq!(manifest["name"], version);
    assert!(events(&server, &id)
        .iter()
        .any(|event| event["kind"] == "reward_trainer"));
    assert_eq!(
        server.post_json(&format!("/models/{version}/activate"), "").status,
        422,
        "a reward version is not a diffusion model"
    );
}

/// A version's entry in `GET /models`.
fn model_record(server: &Server, id: &str) -> Value {
    let models = server.get("/models").json();
    let found = models["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|model| model["id"] == id);
    found.cloned().unwrap_or_else(|| panic!("no version {id} in {models}"))
}

#[test]
fn a_lora_job_registers_merged_weights_that_serve_and_keeps_the_adapter_with_them() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let mut spec = tiny_job(3);
    spec["use_feedback"] = json!(false);
    spec["hyperparameters"]["lora_rank"] = json!(4);
    spec["hyperparameters"]["learning_rate"] = json!(1e-2);
    let created = server.post_json("/fine-tunes", &spec.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}\n{:#?}", events(&server, &id));
    // The stored spec records the alpha it trained with (the rank, by default), and the metrics say LoRA.
    assert_eq!(done["spec"]["hyperparameters"]["lora_alpha"], 4.0, "{done}");
    let lora = json!({"rank": 4, "alpha": 4.0, "text_encoder": false, "adapter": "adapter/"});
    assert_eq!(done["metrics"]["trainer"]["lora"], lora, "{done}");
    let all = events(&server, &id);
    let started = all
        .iter()
        .find(|event| event["kind"] == "trainer" && event["message"].as_str().unwrap().starts_with("started"))
        .unwrap();
    assert_eq!(
        (&started["data"]["lora_rank"], &started["data"]["lora_alpha"]),
        (&json!(4), &json!(4.0))
    );
    assert!(all.iter().any(|event| event["data"]["event"] == "lora"), "{all:#?}");

    // The version holds the adapter beside the merged weights, checksummed with them.
    let version = done["result_model"].as_str().unwrap().to_string();
    let record = model_record(&server, &version);
    assert_eq!(record["metrics"]["trainer"]["lora"], lora, "{record}");
    let folder = data.path().join(record["files"].as_str().unwrap());
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(folder.join("t2i-align-manifest.json")).unwrap()).unwrap();
    let files = manifest["files"].as_object().unwrap();
    assert_eq!(record["checksummed_files"], files.len(), "{record}");
    for file in ["adapter/adapter.safetensors", "adapter/adapter.json", "unet/model.onnx"] {
        assert!(
            files.contains_key(file) && folder.join(file).is_file(),
            "{file}: {manifest}"
        );
    }
    let adapter: Value = serde_json::from_slice(&std::fs::read(folder.join("adapter/adapter.json")).unwrap()).unwrap();
    assert_eq!(
        (&adapter["rank"], &adapter["alpha"]),
        (&json!(4), &json!(4.0)),
        "{adapter}"
    );

    // The merged weights serve through the unchanged runtime, and draw differently from the base.
    let body = |model: &str| json!({"prompt": "a red circle", "seed": 1, "model": model}).to_string();
    let tuned = server.post_json("/generate", &body(&version));
    assert_eq!(tuned.status, 200, "{}", tuned.text());
    assert_eq!(tuned.json()["model"], version.as_str());
    let base = server.post_json("/generate", &body("tiny-sd"));
    assert_ne!(
        tuned.json()["images"][0]["png_base64"],
        base.json()["images"][0]["png_base64"]
    );
}

#[test]
fn cancel_stops_the_trainer_and_registers_nothing() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let created = server.post_json("/fine-tunes", &tiny_job(100_000).to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    // A second job waits in the queue behind it; cancelling a queued job is immediate.
    let queued = server.post_json("/fine-tunes", &tiny_job(3).to_string()).json();
    let queued_id = queued["id"].as_str().unwrap();
    assert_eq!(queued["status"], "queued");
    let cancelled = server.post_json(&format!("/fine-tunes/{queued_id}/cancel"), "");
    assert_eq!(cancelled.status, 200);
    assert_eq!(cancelled.json()["status"], "cancelled");

    wait_for(&server, &id, "trained", |_, events| {
        events.iter().any(|event| event["data"]["event"] == "data")
    });
    assert!(!processes_with(&id).is_empty(), "the trainer should be running");
    let response = server.post_json(&format!("/fine-tunes/{id}/cancel"), "");
    assert_eq!(response.status, 200, "{}", response.text());
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "cancelled", "{done}");
    assert!(done["result_model"].is_null());
    wait_no_trainer(&id);
    // A finished job cannot be cancelled: the request conflicts with its state.
    let again = server.post_json(&format!("/fine-tunes/{id}/cancel"), "");
    assert_eq!(again.status, 409, "{}", again.text());
    assert_eq!(again.json()["error"]["type"], "conflict");
    assert_eq!(server.post_json("/fine-tunes/ft_nope/cancel", "").status, 404);
    assert_eq!(model_ids(&server).0, vec!["tiny-sd".to_string()]);
    let listed = server.get("/fine-tunes?status=cancelled").json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 2);
}

#[test]
fn a_server_killed_mid_job_fails_it_once_its_lease_runs_out_on_the_last_attempt() {
    let data = tempfile::tempdir().unwrap();
    let leases = ["--job-lease-seconds", "2", "--job-max-attempts", "1"];
    let mut server = start(data.path(), &leases);
    let created = server.post_json("/fine-tunes", &tiny_job(100_000).to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let running = wait_for(&server, &id, "trained", |_, events| {
        events.iter().any(|event| event["data"]["event"] == "data")
    });
    assert_eq!(running["attempt"], 1, "{running}");
    let dead_worker = running["worker"].as_str().unwrap().to_string();
    server.kill();
    // The trainer dies with the server (PR_SET_PDEATHSIG): nothing keeps writing into the job folder.
    wait_no_trainer(&id);

    // The next worker finds the dead one's lease expired, on the job's last attempt: it fails the job.
    let server = start(data.path(), &leases);
    let failed = wait_final(&server, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(
        error.contains("interrupted") && error.contains(&dead_worker),
        "{failed}"
    );
    assert!(failed["finished_at"].is_number());
    let last = events(&server, &id).last().cloned().unwrap();
    assert_eq!(last["level"], "error");
    assert!(last["message"].as_str().unwrap().contains("interrupted"), "{last}");
    let (ids, active) = model_ids(&server);
    assert_eq!(ids, vec!["tiny-sd".to_string()], "nothing half-registered");
    assert_eq!(active, "tiny-sd");
    assert!(!data.path().join("jobs").join(&id).join("candidate.partial").exists());
    assert_eq!(
        std::fs::read_dir(data.path().join("models")).unwrap().count(),
        0,
        "no stray version folder"
    );
}

#[test]
fn a_reclaimed_job_goes_on_training_from_its_last_checkpoint() {
    let data = tempfile::tempdir().unwrap();
    let flags = ["--job-lease-seconds", "2", "--job-checkpoint-every", "10"];
    let mut server = start(data.path(), &flags);
    let created = server.post_json("/fine-tunes", &tiny_job(300).to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let stored = |events: &[Value]| {
        events
            .iter()
            .filter(|event| {
                event["kind"] == "checkpoint" && event["message"].as_str().unwrap().starts_with("checkpoint")
            })
            .filter_map(|event| event["data"]["step"].as_i64())
            .max()
    };
    wait_for(&server, &id, "checkpointed", |_, events| stored(events).is_some());
    server.kill();
    wait_no_trainer(&id);
    // The checkpoint stored last before the kill (another may have been written meanwhile, but not stored).
    let last = std::fs::read_to_string(data.path().join("checkpoints").join(&id).join("checkpoint.json")).unwrap();
    let last: i64 = serde_json::from_str::<Value>(&last).unwrap()["step"].as_i64().unwrap();

    let server = start(data.path(), &flags);
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["attempt"], 2);
    let events = events(&server, &id);
    let resumed = events
        .iter()
        .find(|event| {
            event["message"]
                .as_str()
                .unwrap()
                .starts_with("train: resuming from step")
        })
        .unwrap_or_else(|| panic!("no resume event: {events:#?}"));
    assert_eq!(resumed["data"]["step"], last, "{resumed}");
    // Attempt 2's trainer starts after the checkpoint's step.
    let second = events
        .iter()
        .position(|event| event["message"].as_str().unwrap().starts_with("running: attempt 2"))
        .unwrap();
    let first_step = events[second..]
        .iter()
        .find(|event| event["kind"] == "progress")
        .map(|event| event["data"]["step"].as_i64().unwrap())
        .unwrap();
    assert!(
        first_step > last,
        "attempt 2 began at step {first_step}, after the checkpoint at {last}"
    );
    assert!(
        !data.path().join("checkpoints").join(&id).join("checkpoint.pt").exists(),
        "the checkpoint goes with the finished job"
    );
}

#[test]
fn a_corrupt_candidate_is_refused_and_the_active_version_keeps_serving() {
    let data = tempfile::tempdir().unwrap();
    let trainer = format!(
        "{} {}",
        repo_path(".venv/bin/python").display(),
        repo_path("tests/corrupt_trainer.py").display()
    );
    let server = start(data.path(), &["--trainer-command", &trainer]);
    let mut spec = tiny_job(3);
    spec["activate_on_success"] = json!(true);
    let created = server.post_json("/fine-tunes", &spec.to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("refused") && error.contains("unet"), "{error}");
    assert_eq!(model_ids(&server), (vec!["tiny-sd".to_string()], "tiny-sd".to_string()));
    let generated = server.post_json("/generate", r#"{"prompt": "a red circle"}"#);
    assert_eq!(generated.status, 200);
    assert_eq!(generated.json()["model"], "tiny-sd");
}

#[test]
fn a_dpo_job_trains_on_a_good_and_a_bad_rating_of_a_prompt_and_fails_naming_why_without_one() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let generated = server.post_json("/generate", r#"{"prompt": "a red circle", "n": 2, "seed": 3}"#);
    assert_eq!(generated.status, 200, "{}", generated.text());
    let images = generated.json()["images"].as_array().unwrap().clone();
    for ((image, label), rater) in images.iter().zip(["good", "bad"]).zip(["ann", "bob"]) {
        let body = json!({"image_id": image["image_id"], "label": label, "rater": rater});
        assert_eq!(server.post_json("/feedback", &body.to_string()).status, 201);
    }
    // The ratings alone: one pair, the good image over the bad one.
    let mut body = tiny_job(2);
    body["images_per_prompt"] = json!(0);
    body["hyperparameters"]["objective"] = json!("dpo");
    body["hyperparameters"]["objective_beta"] = json!(500.0);
    // The pre-training term anchored to the base: the trainer gets it, and trains with it.
    body["hyperparameters"]["pretrain_target"] = json!("base");
    let created = server.post_json("/fine-tunes", &body.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["spec"]["hyperparameters"]["objective"], "dpo", "{done}");
    let trainer_events = events(&server, &id);
    let started = trainer_events
        .iter()
        .find(|event| event["kind"] == "trainer" && event["message"].as_str().unwrap().starts_with("started"))
        .unwrap();
    assert_eq!(started["data"]["objective"], "dpo", "{started}");
    assert_eq!(started["data"]["objective_beta"], 500.0, "{started}");
    assert_eq!(started["data"]["pretrain_target"], "base", "{started}");
    let formed = trainer_events
        .iter()
        .find(|event| event["message"] == "trainer: data")
        .unwrap();
    assert_eq!(
        formed["data"]["objective"],
        json!({"name": "dpo", "beta": 500.0, "pairs": 1, "prompts": 1, "min_margin": 0.25}),
        "{formed}"
    );

    // One rater's good rating alone pairs with nothing: the trainer refuses and the job fails saying why.
    body["feedback_filter"] = json!({"rater": "ann"});
    let created = server.post_json("/fine-tunes", &body.to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(error.contains("objective dpo has nothing to train on"), "{error}");
}

/// The reward model's score of a job's image file for `prompt`, through POST /score.
fn score_file(server: &Server, path: &std::path::Path, prompt: &str) -> f64 {
    let png = std::fs::read(path).unwrap();
    let body = json!({"prompt": prompt, "images": [BASE64.encode(&png)]});
    let response = server.post_json("/score", &body.to_string());
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["scores"][0].as_f64().unwrap()
}

#[test]
fn relabelling_adds_each_image_under_the_sibling_prompt_the_reward_model_prefers() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let threshold = 0.3;
    let mut body = tiny_job(2);
    body["prompts"] = json!(["two blue squares", "three blue squares", "two red circles"]);
    body["images_per_prompt"] = json!(4);
    body["relabel"] = json!({"words": ["two", "three"], "threshold": threshold});
    let created = server.post_json("/fine-tunes", &body.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["spec"]["relabel"]["words"], json!(["two", "three"]), "{done}");

    // The rule, checked against the reward model's own scores of the job's files: a sampled image below the
    // threshold whose prompt has a sibling ("two red circles" has none) is relabelled exactly when the
    // sibling's score reaches the threshold and beats its own prompt's.
    let folder = data.path().join("jobs").join(&id).join("data");
    let lines: Vec<Value> = std::fs::read_to_string(folder.join("samples.jsonl"))
        .unwrap()
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    let sibling = |prompt: &str| match prompt {
        "two blue squares" => Some("three blue squares"),
        "three blue squares" => Some("two blue squares"),
        _ => None,
    };
    let mut expected = Vec::new();
    let mut candidates = 0;
    for sample in lines.iter().filter(|sample| sample["source"] == "reward_model") {
        let prompt = sample["prompt"].as_str().unwrap();
        let (Some(other), true) = (sibling(prompt), sample["reward"].as_f64().unwrap() < threshold) else {
            continue;
        };
        candidates += 1;
        let path = folder.join(sample["image"].as_str().unwrap());
        let own = score_file(&server, &path, prompt);
        let theirs = score_file(&server, &path, other);
        if theirs >= threshold && theirs > own {
            expected.push((sample["image"].as_str().unwrap().to_string(), other.to_string(), theirs));
        }
    }
    let relabelled: Vec<(String, String, f64)> = lines
        .iter()
        .filter(|sample| sample["source"] == "relabelled")
        .map(|sample| {
            let image = sample["image"].as_str().unwrap().to_string();
            (
                image,
                sample["prompt"].as_str().unwrap().to_string(),
                sample["reward"].as_f64().unwrap(),
            )
        })
        .collect();
    assert_eq!(relabelled.len(), expected.len(), "{relabelled:?} against {expected:?}");
    // tiny-sd's images at these seeds give the rule both answers: some relabelled, some not.
    assert!(
        !relabelled.is_empty() && relabelled.len() < candidates,
        "{relabelled:?} of {candidates}"
    );
    for ((image, prompt, reward), (want_image, want_prompt, want_reward)) in relabelled.iter().zip(&expected) {
        assert_eq!((image, prompt), (want_image, want_prompt));
        assert!((reward - want_reward).abs() < 1e-4, "{reward} against {want_reward}");
    }
    let figures = &done["metrics"]["training_set"];
    assert_eq!(figures["relabel_candidates"], candidates, "{figures}");
    assert_eq!(figures["relabelled"], relabelled.len(), "{figures}");
    assert_eq!(figures["reward_scored"], 12, "{figures}");
    assert_eq!(figures["samples"], lines.len(), "{figures}");
}

#[test]
fn the_pretrain_filter_keeps_the_renders_whose_caption_the_reward_model_prefers_balanced_across_words() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    let words = ["one", "two", "three", "four"];
    let mut body = tiny_job(2);
    body["pretrain_data"] = json!({"kind": "shapes_world", "images": 48, "filter": {"words": words}});
    let created = server.post_json("/fine-tunes", &body.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(
        done["spec"]["pretrain_data"]["filter"],
        json!({"words": words, "balance": true}),
        "{done}"
    );

    // The rule, checked against the reward model's own scores of the renders through POST /score: each
    // render whose caption states a number carries its variants in the world's grammar (the caption with each
    // number, "a red circle" among them); kept are those whose caption scores above each other variant, then
    // the same share of each number's captions, the first of each.
    let folder = data.path().join("jobs").join(&id);
    let rows = |dir: &std::path::Path| -> Vec<Value> {
        std::fs::read_to_string(dir.join("metadata.jsonl"))
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect()
    };
    let read = |dir: &std::path::Path| -> Vec<(String, String)> {
        rows(dir)
            .iter()
            .map(|row| {
                (
                    row["file_name"].as_str().unwrap().to_string(),
                    row["text"].as_str().unwrap().to_string(),
                )
            })
            .collect()
    };
    let render_rows = rows(&folder.join("pretrain-renders"));
    let renders = read(&folder.join("pretrain-renders"));
    assert_eq!(renders.len(), 48);
    assert!(
        render_rows
            .iter()
            .any(|row| row["text"].as_str().unwrap().starts_with("a ") && row["variants"].is_object()),
        "the world's singular captions are judged too: {render_rows:?}"
    );
    let mut word_of = Vec::new();
    let mut preferred = Vec::new();
    for (index, row) in render_rows.iter().enumerate() {
        let caption = row["text"].as_str().unwrap();
        let Some(variants) = row["variants"].as_object() else {
            // The world's captions state their number first.
            let first = caption.split_whitespace().next().unwrap();
            assert!(
                !(words.contains(&first) || first == "a" || first == "an"),
                "a caption stating a number has variants: {row}"
            );
            word_of.push(None);
            continue;
        };
        let texts: Vec<&str> = words.iter().map(|word| variants[*word].as_str().unwrap()).collect();
        let own = texts.iter().position(|text| *text == caption).unwrap();
        word_of.push(Some(own));
        let file = row["file_name"].as_str().unwrap();
        let scores: Vec<f64> = texts
            .iter()
            .map(|text| score_file(&server, &folder.join("pretrain-renders").join(file), text))
            .collect();
        if (0..words.len()).all(|other| other == own || scores[own] > scores[other]) {
            preferred.push(index);
        }
    }
    let captions = |word: usize| word_of.iter().filter(|of| **of == Some(word)).count();
    let chosen = |word: usize| preferred.iter().filter(|&&index| word_of[index] == Some(word)).count();
    let share = (0..words.len())
        .filter(|&word| captions(word) > 0)
        .map(|word| chosen(word) as f64 / captions(word) as f64)
        .fold(f64::INFINITY, f64::min);
    let mut taken = [0usize; 4];
    let mut expected = Vec::new();
    for &index in &preferred {
        let word = word_of[index].unwrap();
        if (taken[word] as f64) < (share * captions(word) as f64).round() {
            taken[word] += 1;
            expected.push(renders[index].clone());
        }
    }
    assert!(
        !expected.is_empty() && expected.len() < preferred.len(),
        "{expected:?} of {preferred:?}"
    );
    let kept = read(&folder.join("pretrain"));
    assert_eq!(
        kept.iter().map(|(_, caption)| caption).collect::<Vec<_>>(),
        expected.iter().map(|(_, caption)| caption).collect::<Vec<_>>()
    );
    for ((file, _), (source, _)) in kept.iter().zip(&expected) {
        let bytes = std::fs::read(folder.join("pretrain").join(file)).unwrap();
        assert_eq!(
            bytes,
            std::fs::read(folder.join("pretrain-renders").join(source)).unwrap()
        );
    }
    let figures = &done["metrics"]["pretrain"];
    assert_eq!(figures["images"], 48, "{figures}");
    assert_eq!(figures["judged"], word_of.iter().flatten().count(), "{figures}");
    assert_eq!(figures["preferred"], preferred.len(), "{figures}");
    assert_eq!(figures["kept"], kept.len(), "{figures}");
    for (word, name) in words.iter().enumerate() {
        assert_eq!(
            figures["by_word"][name],
            json!({"captions": captions(word), "kept": taken[word]}),
            "{figures}"
        );
    }
    // The trainer trained on the kept renders alone.
    let trainer_data = events(&server, &id)
        .into_iter()
        .find(|event| event["message"] == "trainer: data")
        .unwrap();
    assert_eq!(trainer_data["data"]["pretrain"], kept.len(), "{trainer_data}");
    assert!(figures.get("reused_from").is_none(), "{figures}");

    // A second job with the same reward model, data and filter (a next round) links the first job's kept
    // images instead of rendering and judging again, and says so.
    let created = server.post_json("/fine-tunes", &body.to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let second = created.json()["id"].as_str().unwrap().to_string();
    let again = wait_final(&server, &second);
    assert_eq!(again["status"], "succeeded", "{again}");
    let second_folder = data.path().join("jobs").join(&second);
    assert!(!second_folder.join("pretrain-renders").exists());
    assert_eq!(rows(&second_folder.join("pretrain")), rows(&folder.join("pretrain")));
    let mut reused = figures.clone();
    reused["reused_from"] = json!(id);
    assert_eq!(again["metrics"]["pretrain"], reused, "{again}");
    let label = events(&server, &second)
        .into_iter()
        .filter_map(|event| event["message"].as_str().map(str::to_string))
        .find(|message| message.starts_with("label: done"))
        .unwrap();
    assert!(label.contains(&format!("as judged by job {id}")), "{label}");
}

#[test]
fn the_cli_refuses_a_relabel_threshold_or_a_filter_balance_without_words_before_sending_anything() {
    for (flag, value, says) in [
        (
            "--relabel-threshold",
            "0.5",
            "--relabel-threshold needs --relabel-words",
        ),
        (
            "--pretrain-filter-balance",
            "false",
            "--pretrain-filter-balance needs --pretrain-filter-words",
        ),
    ] {
        // Port 9 (discard) has no server: the flag is refused before any request.
        let output = Command::new(binary())
            .args(["fine-tune", "create", "--url", "http://127.0.0.1:9", flag, value])
            .env("ORT_DYLIB_PATH", "")
            .output()
            .unwrap();
        assert!(!output.status.success());
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(says), "{stderr}");
    }
}

#[test]
fn bad_specs_get_a_422_naming_the_field() {
    let data = tempfile::tempdir().unwrap();
    let server = start(data.path(), &[]);
    for (body, field) in [
        (r#"{"base_model": "no-such-model"}"#.to_string(), "base_model"),
        (
            r#"{"hyperparameters": {"steps": 0}}"#.to_string(),
            "hyperparameters.steps",
        ),
        (r#"{"hyperparameters": {"beta": NaN}}"#.to_string(), "beta"),
        (
            r#"{"hyperparameters": {"beta": "NaN"}}"#.to_string(),
            "hyperparameters.beta",
        ),
        (
            r#"{"pretrain_data": {"kind": "folder", "path": "/no/such/folder"}}"#.to_string(),
            "pretrain_data.path",
        ),
        (
            r#"{"hyperparameters": {"lr_schedule": "linear"}}"#.to_string(),
            "hyperparameters.lr_schedule",
        ),
        (
            r#"{"hyperparameters": {"lora_rank": 257}}"#.to_string(),
            "hyperparameters.lora_rank",
        ),
        (
            r#"{"hyperparameters": {"lora_alpha": 4}}"#.to_string(),
            "hyperparameters.lora_alpha",
        ),
        (
            r#"{"hyperparameters": {"objective": "ppo"}}"#.to_string(),
            "hyperparameters.objective",
        ),
        (
            r#"{"hyperparameters": {"pretrain_target": "ema"}}"#.to_string(),
            "hyperparameters.pretrain_target",
        ),
        (
            r#"{"hyperparameters": {"objective_beta": 500}}"#.to_string(),
            "hyperparameters.objective_beta",
        ),
        (
            r#"{"hyperparameters": {"objective": "kto", "objective_beta": 0}}"#.to_string(),
            "hyperparameters.objective_beta",
        ),
        (r#"{"learning_rate": 0.1}"#.to_string(), "learning_rate"),
        (r#"{"images_per_prompt": -1}"#.to_string(), "images_per_prompt"),
        (r#"{"reward_model": "nope"}"#.to_string(), "reward_model"),
        (
            r#"{"retrain_reward_model": true, "use_feedback": false}"#.to_string(),
            "retrain_reward_model",
        ),
        (
            r#"{"feedback_filter": {"model": "no-such-model"}}"#.to_string(),
            "feedback_filter.model",
        ),
        (
            r#"{"use_feedback": false, "feedback_filter": {"rater": "ann"}}"#.to_string(),
            "feedback_filter",
        ),
        (r#"{"feedback_filter": {"models": ["tiny-sd"]}}"#.to_string(), "models"),
        (r#"{"relabel": {"words": ["two"]}}"#.to_string(), "relabel.words"),
        (
            r#"{"pretrain_data": {"kind": "shapes_world", "filter": {"words": ["two", "two"]}}}"#.to_string(),
            "pretrain_data.filter.words",
        ),
        (
            r#"{"pretrain_data": {"kind": "shapes_world", "filter": {"words": ["one", "a few"]}}}"#.to_string(),
            "pretrain_data.filter.words",
        ),
        (
            r#"{"pretrain_data": {"kind": "shapes_world", "filter": ["one", "two"]}}"#.to_string(),
            "pretrain_data.filter",
        ),
        (r#"{"relabel": {"words": ["two", "two"]}}"#.to_string(), "relabel.words"),
        (
            r#"{"relabel": {"words": ["two", "a few"]}}"#.to_string(),
            "relabel.words",
        ),
        (
            r#"{"relabel": {"words": ["two", "three"], "threshold": 0}}"#.to_string(),
            "relabel.threshold",
        ),
        (
            r#"{"relabel": {"words": ["two", "three"], "threshold": 1.5}}"#.to_string(),
            "relabel.threshold",
        ),
        (r#"{"relabel": {"threshold": 0.5}}"#.to_string(), "words"),
    ] {
        let response = server.post_json("/fine-tunes", &body);
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        let error = response.json()["error"].clone();
        assert_eq!(error["param"], field, "{body}: {error}");
    }
    assert_eq!(server.get("/fine-tunes/ft_nope").status, 404);
    assert_eq!(server.get("/fine-tunes?limit=0").status, 422);
    assert_eq!(server.get("/fine-tunes?status=done").status, 422);
    assert_eq!(server.get("/fine-tunes/ft_nope/events").status, 404);
    let listed = server.get("/fine-tunes").json();
    assert_eq!(listed["data"], json!([]), "nothing was queued");
}

#[test]
fn sigterm_gives_the_running_job_back_to_the_queue_and_fails_it_on_its_last_attempt() {
    let data = tempfile::tempdir().unwrap();
    let mut server = start(data.path(), &["--shutdown-grace", "20"]);
    let created = server.post_json("/fine-tunes", &tiny_job(100_000).to_string());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let trained = |_: &Value, events: &[Value]| events.iter().any(|event| event["data"]["event"] == "data");
    wait_for(&server, &id, "trained", trained);
    server.terminate();
    let status = server
        .wait_exit(Duration::from_secs(40))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    wait_no_trainer(&id);

    // Attempt 1 of 2 was interrupted: the job is queued again. An API-only replica runs no job, so it stays so.
    let mut server = start(data.path(), &["--roles", "api"]);
    let queued = job(&server, &id);
    assert_eq!(
        (&queued["status"], &queued["attempt"]),
        (&json!("queued"), &json!(1)),
        "{queued}"
    );
    assert!(queued["worker"].is_null(), "{queued}");
    let last = events(&server, &id).last().cloned().unwrap();
    assert!(last["message"].as_str().unwrap().contains("queued again"), "{last}");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(job(&server, &id)["status"], "queued");
    assert!(server.log().contains("runs no jobs (--roles api)"), "{}", server.log());
    server.terminate();
    server
        .wait_exit(Duration::from_secs(40))
        .expect("the API replica exits");

    // A worker claims it as attempt 2 of 2; a shutdown now fails it, as interrupted.
    let mut server = start(data.path(), &["--shutdown-grace", "20"]);
    let running = wait_for(&server, &id, "trained again", |job, events| {
        job["attempt"] == 2 && events.iter().filter(|event| event["data"]["event"] == "data").count() >= 2
    });
    assert_eq!(running["status"], "running");
    server.terminate();
    server
        .wait_exit(Duration::from_secs(40))
        .expect("the server exits after SIGTERM");
    wait_no_trainer(&id);
    let server = start(data.path(), &[]);
    let failed = job(&server, &id);
    assert_eq!(failed["status"], "failed", "{failed}");
    let error = failed["error"].as_str().unwrap();
    assert!(error.contains("interrupted: the server shut down"), "{failed}");
    let last = events(&server, &id).last().cloned().unwrap();
    assert!(
        last["message"]
            .as_str()
            .unwrap()
            .contains("interrupted: the server shut down"),
        "{last}"
    );
    assert_eq!(model_ids(&server).0, vec!["tiny-sd".to_string()], "nothing registered");
}

#[test]
fn without_the_trainers_python_a_job_is_refused_up_front() {
    let server = Server::start(&["--trainer-python", "/nonexistent/venv/bin/python"]);
    assert!(
        server.log().contains("fine-tune jobs cannot run here"),
        "{}",
        server.log()
    );
    let created = server.post_json("/fine-tunes", &tiny_job(1).to_string());
    assert_eq!(created.status, 503, "{}", created.text());
    let message = created.json()["error"]["message"].as_str().unwrap().to_string();
    assert!(
        message.contains("/nonexistent/venv/bin/python") && message.contains("make trainer-venv"),
        "{message}"
    );
    assert_eq!(server.get("/fine-tunes").json()["data"].as_array().unwrap().len(), 0);
}

/// A base the trainer cannot fine-tune is refused with a 422 naming why, before a job is queued: one without
/// diffusers weights (tiny-sd-wide is ONNX only), and one whose weights are of another family.
#[test]
fn a_base_the_trainer_cannot_train_is_refused_up_front() {
    let data = tempfile::tempdir().unwrap();
    let trainer = trainer_args();
    let refusal = |model: &std::path::Path, expected: &[&str]| {
        let folder = tempfile::tempdir().unwrap();
        let data = folder.path().display().to_string();
        let mut args: Vec<&str> = vec!["--data-dir", &data];
        args.extend(trainer.iter().map(String::as_str));
        let server = Server::start_with_model(model, &args);
        let created = server.post_json("/fine-tunes", &tiny_job(1).to_string());
        assert_eq!(created.status, 422, "{}", created.text());
        let error = &created.json()["error"];
        assert_eq!(error["param"], "base_model", "{error}");
        let message = error["message"].as_str().unwrap();
        for part in expected {
            assert!(message.contains(part), "{part} in {message}");
        }
        assert_eq!(server.get("/fine-tunes").json()["data"].as_array().unwrap().len(), 0);
    };
    refusal(&common::tiny_sd_wide(), &["has no diffusers weights"]);

    let sdxl = data.path().join("tiny-sd-as-xl");
    common::copy_dir(&common::tiny_sd(), &sdxl);
    let index = sdxl.join("diffusers/model_index.json");
    let mut config: Value = serde_json::from_str(&std::fs::read_to_string(&index).unwrap()).unwrap();
    config["_class_name"] = json!("StableDiffusionXLPipeline");
    std::fs::write(&index, config.to_string()).unwrap();
    refusal(
        &sdxl,
        &[
            "is a StableDiffusionXLPipeline",
            "train StableDiffusionPipeline models only",
        ],
    );
}

/// A job's sampling requests are held to --max-work as users' requests are: one prompt's images above it fail the
/// job at its sample stage, before anything is sampled, with an error naming the field and the flag.
#[test]
fn a_job_whose_sampling_is_above_max_work_fails_naming_it() {
    let data = tempfile::tempdir().unwrap();
    // tiny-sd samples at 64×64 with its default 25 steps: 2 images are 204800 pixel-steps.
    let server = start(data.path(), &["--max-work", "100000"]);
    let created = server.post_json("/fine-tunes", &tiny_job(2).to_string());
    assert_eq!(created.status, 201, "{}", created.text());
    let id = created.json()["id"].as_str().unwrap().to_string();
    let done = wait_final(&server, &id);
    assert_eq!(done["status"], "failed", "{done}");
    let error = done["error"].as_str().unwrap();
    assert!(
        error.contains("images_per_prompt 2") && error.contains("100000 (--max-work)"),
        "{error}"
    );
    assert!(
        server.get("/models").text().matches("-ft-").count() == 0,
        "nothing was registered"
    );
}
