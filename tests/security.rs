//! API keys and scopes, request deadlines, and a graceful stop on SIGTERM, against a real server (#7).

mod common;

use std::time::Duration;

use common::Server;

const INFERENCE_KEY: &str = "app-key-0123456789abcdef";
const ADMIN_KEY: &str = "ops-key-fedcba9876543210";

fn keys_env() -> String {
    format!("app:inference:{INFERENCE_KEY},ops:admin:{ADMIN_KEY}")
}

fn with_key(server: &Server, method: &str, path: &str, body: Option<&str>, key: Option<&str>) -> common::Response {
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(key) = key {
        request.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    let body = body.unwrap_or("");
    if !body.is_empty() || method == "POST" {
        request.push_str(&format!(
            "Content-Type: application/json\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    request.push_str("\r\n");
    request.push_str(body);
    common::send_raw(server.port, request.as_bytes()).expect("request")
}

const GENERATE: &str = r#"{"prompt":"a red circle","steps":3}"#;

#[test]
fn keys_gate_routes_by_scope_and_are_never_logged() {
    let keys = keys_env();
    let server = Server::start_with_env(&common::tiny_sd(), &[], &[("T2I_API_KEYS", &keys)]);
    assert!(server.log().contains("API keys loaded"), "{}", server.log());

    // Open routes.
    for path in ["/health", "/ready", "/metrics", "/openapi.json"] {
        assert_eq!(with_key(&server, "GET", path, None, None).status, 200, "{path}");
    }
    // A server with keys serves the committed document, each operation with the scope its route needs.
    let committed = std::fs::read_to_string(common::repo_path("openapi/openapi.json")).unwrap();
    assert_eq!(with_key(&server, "GET", "/openapi.json", None, None).text(), committed);
    // The console's page is open (it asks for a key when the API answers 401); `make web` builds it.
    let console = with_key(&server, "GET", "/", None, None);
    assert_eq!(console.status, 200, "{}", console.text());
    assert!(console.text().contains("<title>t2i-align console</title>"));
    // Taking back a rating needs a key like giving one.
    let undo = with_key(&server, "DELETE", "/feedback/fb_0", None, None);
    assert_eq!(undo.status, 401, "{}", undo.text());
    let undo = with_key(&server, "DELETE", "/feedback/fb_0", None, Some(INFERENCE_KEY));
    assert_eq!(undo.status, 404, "{}", undo.text());
    // No key, a wrong key: 401 with a Bearer challenge.
    for key in [None, Some("not-a-key-but-long-enough")] {
        let response = with_key(&server, "POST", "/generate", Some(GENERATE), key);
        assert_eq!(response.status, 401, "{key:?}: {}", response.text());
        assert_eq!(response.header("WWW-Authenticate"), Some("Bearer"));
        assert_eq!(response.json()["error"]["type"], "unauthorized");
    }
    // The OpenAI-compatible route answers in OpenAI's shape.
    let openai = with_key(
        &server,
        "POST",
        "/v1/images/generations",
        Some(r#"{"prompt":"x"}"#),
        None,
    );
    assert_eq!(openai.status, 401);
    assert_eq!(openai.json()["error"]["code"], "unauthorized");

    // An inference key generates, but may not run fine-tunes or export feedback: 403.
    let generated = with_key(&server, "POST", "/generate", Some(GENERATE), Some(INFERENCE_KEY));
    assert_eq!(generated.status, 200, "{}", generated.text());
    assert_eq!(
        with_key(&server, "GET", "/models", None, Some(INFERENCE_KEY)).status,
        200
    );
    for (method, path, scope) in [
        ("GET", "/fine-tunes", "fine-tune"),
        ("GET", "/feedback/export", "feedback"),
        ("POST", "/models/tiny-sd/activate", "admin"),
        ("GET", "/keys", "admin"),
        ("GET", "/audit", "admin"),
    ] {
        let response = with_key(&server, method, path, None, Some(INFERENCE_KEY));
        assert_eq!(response.status, 403, "{method} {path}: {}", response.text());
        let message = response.json()["error"]["message"].as_str().unwrap().to_string();
        assert!(message.contains(&format!("needs `{scope}`")), "{message}");
    }
    // An admin key may do both.
    assert_eq!(
        with_key(&server, "GET", "/fine-tunes", None, Some(ADMIN_KEY)).status,
        200
    );
    assert_eq!(
        with_key(&server, "POST", "/generate", Some(GENERATE), Some(ADMIN_KEY)).status,
        200
    );
    let log = server.log();
    assert!(
        !log.contains(INFERENCE_KEY) && !log.contains(ADMIN_KEY),
        "a key reached the log"
    );
}

#[test]
fn metrics_can_be_protected() {
    let keys = keys_env();
    let server = Server::start_with_env(&common::tiny_sd(), &["--protect-metrics"], &[("T2I_API_KEYS", &keys)]);
    assert_eq!(with_key(&server, "GET", "/metrics", None, None).status, 401);
    assert_eq!(
        with_key(&server, "GET", "/metrics", None, Some(INFERENCE_KEY)).status,
        403
    );
    assert_eq!(with_key(&server, "GET", "/metrics", None, Some(ADMIN_KEY)).status, 200);
    assert_eq!(with_key(&server, "GET", "/health", None, None).status, 200);
}

#[test]
fn open_mode_warns_and_require_auth_refuses_to_start() {
    let server = Server::start(&[]);
    assert!(server.log().contains("OPEN MODE"), "{}", server.log());
    drop(server);
    let output = std::process::Command::new(common::binary())
        .args(["serve", "--port", "0", "--require-auth", "--model"])
        .arg(common::tiny_sd())
        .env("ORT_DYLIB_PATH", common::ort_dylib())
        .env_remove("T2I_API_KEYS")
        .output()
        .expect("run t2i-align");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--require-auth is set but no API keys"), "{stderr}");
    // A short key is refused, and the error does not quote it.
    let output = std::process::Command::new(common::binary())
        .args(["serve", "--port", "0", "--model"])
        .arg(common::tiny_sd())
        .env("ORT_DYLIB_PATH", common::ort_dylib())
        .env("T2I_API_KEYS", "admin:tooshort")
        .output()
        .expect("run t2i-align");
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("at least 16"), "{stderr}");
    assert!(!stderr.contains("tooshort"), "{stderr}");
}

#[test]
fn a_deadline_stops_the_work_and_answers_504() {
    let server = Server::start(&[]);
    let slow = r#"{"prompt":"a long job","steps":150,"n":8}"#;
    let mut request = format!(
        "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-Request-Timeout: 0.3\r\nContent-Length: {}\r\n\r\n{slow}",
        slow.len()
    );
    let started = std::time::Instant::now();
    let response = common::send_raw(server.port, request.as_bytes()).unwrap();
    assert_eq!(response.status, 504, "{}", response.text());
    assert!(started.elapsed() < Duration::from_secs(5));
    let error = response.json()["error"].clone();
    assert_eq!(error["type"], "timeout");
    assert!(error["message"].as_str().unwrap().contains("0.3 s"), "{error}");
    // The work left the batch: the drop is counted, no image was made, and the server goes on.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let metrics = server.get("/metrics").text();
        if metrics.contains("t2i_requests_dropped_total{reason=\"deadline\"} 1") {
            assert!(metrics.contains("t2i_images_generated_total 0"), "{metrics}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{metrics}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.post_json("/generate", GENERATE).status, 200);

    // A header that is not a number of seconds within the limit: 400 naming it.
    for value in ["soon", "0", "-1", "1e9"] {
        request = format!(
            "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
             X-Request-Timeout: {value}\r\nContent-Length: {}\r\n\r\n{GENERATE}",
            GENERATE.len()
        );
        let response = common::send_raw(server.port, request.as_bytes()).unwrap();
        assert_eq!(response.status, 400, "{value}: {}", response.text());
        assert_eq!(response.json()["error"]["param"], "X-Request-Timeout");
    }
}

/// The sum of `t2i_runs_terminated_total` over its stages.
fn runs_terminated(server: &Server) -> u64 {
    server
        .get("/metrics")
        .text()
        .lines()
        .filter(|line| line.starts_with("t2i_runs_terminated_total{"))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

fn wait_for_metric(server: &Server, what: &str, done: impl Fn(&str) -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    loop {
        let metrics = server.get("/metrics").text();
        if done(&metrics) {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{what} never happened:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_run_is_terminated_inside_onnx_runtime_by_a_deadline_or_a_disconnect() {
    // One step of four 512x512 images: a single UNet call (8 rows of 64x64 latents) and a VAE decode that each
    // take far longer than the deadline on these cores, so the deadline falls inside an ONNX Runtime run.
    let server = Server::start(&["--image-retention", "0"]);
    let big = r#"{"prompt":"a big job","steps":1,"n":4,"width":512,"height":512}"#;
    let request = format!(
        "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\n\
         X-Request-Timeout: 0.5\r\nContent-Length: {}\r\n\r\n{big}",
        big.len()
    );
    let response = common::send_raw(server.port, request.as_bytes()).unwrap();
    assert_eq!(response.status, 504, "{}", response.text());
    // The watchdog set the run's terminate flag: the run ended early with an error, counted by stage.
    wait_for_metric(&server, "a terminated run", |metrics| {
        metrics.contains("t2i_requests_dropped_total{reason=\"deadline\"} 1")
    });
    assert_eq!(runs_terminated(&server), 1, "{}", server.get("/metrics").text());
    // The flag was cleared: the next request runs.
    assert_eq!(server.post_json("/generate", GENERATE).status, 200);

    // A client that goes away mid-run stops it the same way.
    let body = big.replace("a big job", "a big job again");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    std::io::Write::write_all(
        &mut stream,
        common::raw_request("POST", "/generate", Some(&body)).as_bytes(),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    drop(stream);
    wait_for_metric(&server, "a disconnect", |metrics| {
        metrics.contains("t2i_requests_dropped_total{reason=\"client_disconnected\"} 1")
    });
    assert_eq!(runs_terminated(&server), 2, "{}", server.get("/metrics").text());
    let metrics = server.get("/metrics").text();
    assert!(metrics.contains("t2i_images_generated_total 1"), "{metrics}");
    assert_eq!(server.post_json("/generate", GENERATE).status, 200);
}

#[test]
fn sigterm_lets_in_flight_requests_finish_and_exits_zero() {
    let mut server = Server::start(&["--shutdown-grace", "20"]);
    let port = server.port;
    let busy = std::thread::spawn(move || {
        common::request(
            port,
            "POST",
            "/generate",
            Some(r#"{"prompt":"finish me","steps":150,"n":4}"#),
        )
        .unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    server.terminate();
    let answer = busy.join().unwrap();
    assert_eq!(answer.status, 200, "the in-flight request finishes: {}", answer.text());
    let status = server
        .wait_exit(Duration::from_secs(30))
        .expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}\n{}", server.log());
    assert!(server.log().contains("shutting down"), "{}", server.log());
}

#[test]
fn cors_is_off_by_default_and_answers_only_configured_origins() {
    let preflight = |port: u16| {
        let request = "OPTIONS /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: https://app.example\r\n\
                       Access-Control-Request-Method: POST\r\nAccess-Control-Request-Headers: authorization\r\n\r\n";
        common::send_raw(port, request.as_bytes()).unwrap()
    };
    let server = Server::start(&[]);
    let response = preflight(server.port);
    assert!(
        response.header("Access-Control-Allow-Origin").is_none(),
        "CORS is off by default"
    );
    drop(server);
    let server = Server::start(&["--cors-origins", "https://app.example"]);
    let response = preflight(server.port);
    assert_eq!(
        response.header("Access-Control-Allow-Origin"),
        Some("https://app.example")
    );
    let other = "OPTIONS /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nOrigin: https://evil.example\r\n\
                 Access-Control-Request-Method: POST\r\n\r\n";
    let response = common::send_raw(server.port, other.as_bytes()).unwrap();
    assert!(response.header("Access-Control-Allow-Origin").is_none());
}

#[test]
fn model_ids_cannot_walk_out_of_the_data_directory() {
    let server = Server::start(&[]);
    for id in ["../tiny-sd", "..%2F..%2Fetc", "%2Fetc%2Fpasswd", "tiny-sd%2F..%2F.."] {
        let response = server.post_json(&format!("/models/{id}/activate"), "");
        assert!(
            response.status == 404 || response.status == 422,
            "{id}: {} {}",
            response.status,
            response.text()
        );
    }
    for model in ["../tiny-sd", "/etc/passwd", "tiny-sd/../../x"] {
        let body = format!(r#"{{"prompt":"x","steps":2,"model":"{model}"}}"#);
        let response = server.post_json("/generate", &body);
        assert!(
            response.status == 404 || response.status == 422,
            "{model}: {} {}",
            response.status,
            response.text()
        );
    }
    // The active version is unchanged.
    assert_eq!(server.get("/health").json()["model"], "tiny-sd");
}

#[test]
fn the_work_budget_names_the_product_and_the_limit() {
    let server = Server::start(&["--max-work", "100000"]);
    // 2 images × 20 steps × 64×64 = 163,840 pixel-steps: over.
    let response = server.post_json("/generate", r#"{"prompt":"x","n":2,"steps":20}"#);
    assert_eq!(response.status, 422, "{}", response.text());
    let error = response.json()["error"].clone();
    assert_eq!(error["param"], "steps");
    let message = error["message"].as_str().unwrap();
    assert!(
        message.contains("163840") && message.contains("100000 (--max-work)"),
        "{message}"
    );
    // 2 × 10 × 64×64 = 81,920: within.
    assert_eq!(
        server
            .post_json("/generate", r#"{"prompt":"x","n":2,"steps":10}"#)
            .status,
        200
    );
}

#[test]
fn one_key_may_not_hold_more_than_its_share_of_requests() {
    let keys = keys_env();
    let server = Server::start_with_env(
        &common::tiny_sd(),
        &["--max-concurrent-per-key", "1"],
        &[("T2I_API_KEYS", &keys)],
    );
    let port = server.port;
    let long = r#"{"prompt":"a long job","steps":150,"n":4}"#;
    let busy = std::thread::spawn(move || {
        let request = format!(
            "POST /generate HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer {INFERENCE_KEY}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{long}",
            long.len()
        );
        common::send_raw(port, request.as_bytes()).unwrap()
    });
    std::thread::sleep(Duration::from_millis(300));
    let second = with_key(&server, "POST", "/generate", Some(GENERATE), Some(INFERENCE_KEY));
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.header("Retry-After"), Some("1"));
    assert_eq!(second.json()["error"]["type"], "rate_limited");
    assert!(second.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--max-concurrent-per-key"));
    // Another key is not held back.
    assert_eq!(
        with_key(&server, "POST", "/generate", Some(GENERATE), Some(ADMIN_KEY)).status,
        200
    );
    assert_eq!(busy.join().unwrap().status, 200);
    // The slot is free again.
    assert_eq!(
        with_key(&server, "POST", "/generate", Some(GENERATE), Some(INFERENCE_KEY)).status,
        200
    );
}

#[test]
fn the_document_declares_the_refusals_keys_bring() {
    let keys = keys_env();
    let server = Server::start_with_env(&common::tiny_sd(), &[], &[("T2I_API_KEYS", &keys)]);
    let doc = with_key(&server, "GET", "/openapi.json", None, None).json();
    let generate = &doc["paths"]["/generate"]["post"]["responses"];
    assert!(generate["401"].is_object(), "{generate}");
    assert!(generate["429"].is_object(), "{generate}");
    // Any keyed route can refuse a valid key that lacks its scope.
    assert!(generate["403"].is_object(), "{generate}");
    assert!(doc["paths"]["/fine-tunes"]["post"]["responses"]["403"].is_object());
    assert_eq!(
        doc["paths"]["/fine-tunes"]["post"]["security"],
        serde_json::json!([{"api_key": ["fine-tune"]}])
    );
    // OpenAI's route answers in OpenAI's error shape.
    assert_eq!(
        doc["paths"]["/v1/images/generations"]["post"]["responses"]["401"]["content"]["application/json"]["schema"]
            ["$ref"],
        "#/components/schemas/OpenAiErrorBody"
    );
    assert!(doc["paths"]["/health"]["get"]["responses"]["401"].is_null());
}

#[test]
fn open_mode_needs_a_loopback_address_or_an_explicit_opt_out() {
    // 192.0.2.1 (TEST-NET-1) is an address no machine here has: a server that passes the key check fails to
    // bind it, so these runs never listen beyond loopback.
    let data = tempfile::tempdir().unwrap();
    let serve = |extra: &[&str]| {
        let output = std::process::Command::new(common::binary())
            .args([
                "serve",
                "--host",
                "192.0.2.1",
                "--port",
                "0",
                "--no-reward-model",
                "--data-dir",
            ])
            .arg(data.path())
            .args(extra)
            .arg("--model")
            .arg(common::tiny_sd())
            .env("ORT_DYLIB_PATH", common::ort_dylib())
            .env_remove("T2I_API_KEYS")
            .env_remove("T2I_ALLOW_OPEN")
            .output()
            .expect("run t2i-align");
        assert!(!output.status.success());
        String::from_utf8_lossy(&output.stderr).to_string()
    };
    let refused = serve(&[]);
    for expected in [
        "refusing to serve without API keys on --host 192.0.2.1",
        "T2I_API_KEYS",
        "t2i-align keys create",
        "--allow-open",
    ] {
        assert!(refused.contains(expected), "{expected}: {refused}");
    }
    // With the opt-out it goes on, in open mode, and says so (then cannot bind the foreign address).
    let opted_out = serve(&["--allow-open"]);
    assert!(opted_out.contains("OPEN MODE"), "{opted_out}");
    assert!(opted_out.contains("cannot listen on 192.0.2.1"), "{opted_out}");
    // A stored key is enough to bind any address, and the server then needs it.
    let created = std::process::Command::new(common::binary())
        .args([
            "keys",
            "create",
            "--name",
            "first",
            "--tenant",
            "ops",
            "--scopes",
            "admin",
            "--data-dir",
        ])
        .arg(data.path())
        .output()
        .expect("run t2i-align keys create");
    assert!(created.status.success(), "{}", String::from_utf8_lossy(&created.stderr));
    let secret = String::from_utf8(created.stdout).unwrap().trim().to_string();
    assert!(
        !String::from_utf8_lossy(&created.stderr).contains(&secret),
        "the secret goes to stdout only"
    );
    let keyed = serve(&[]);
    assert!(keyed.contains("API keys loaded"), "{keyed}");
    assert!(keyed.contains("cannot listen on 192.0.2.1"), "{keyed}");
    let server = Server::start_with_env(&common::tiny_sd(), &["--data-dir", data.path().to_str().unwrap()], &[]);
    assert_eq!(with_key(&server, "GET", "/keys", None, None).status, 401);
    let listed = with_key(&server, "GET", "/keys", None, Some(&secret));
    assert_eq!(listed.status, 200, "{}", listed.text());
    assert_eq!(listed.json()["data"][0]["name"], "first");
    assert!(!server.log().contains(&secret), "a key reached the log");
}

#[test]
fn stored_keys_are_made_scoped_revoked_and_audited() {
    let keys = keys_env();
    let server = Server::start_with_env(
        &common::tiny_sd(),
        &["--key-refresh", "0.2"],
        &[("T2I_API_KEYS", &keys)],
    );
    let made = with_key(
        &server,
        "POST",
        "/keys",
        Some(r#"{"name":"trainer","tenant":"acme","scopes":["fine-tune","feedback"]}"#),
        Some(ADMIN_KEY),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    let made = made.json();
    let (id, secret) = (made["id"].as_str().unwrap(), made["secret"].as_str().unwrap());
    assert_eq!(made["tenant"], "acme");
    assert_eq!(made["created_by"], "ops");
    assert_eq!(made["scopes"], serde_json::json!(["feedback", "fine-tune"]));
    assert!(secret.starts_with(made["prefix"].as_str().unwrap()));
    // Its scopes, and nothing else.
    assert_eq!(with_key(&server, "GET", "/fine-tunes", None, Some(secret)).status, 200);
    assert_eq!(with_key(&server, "GET", "/feedback", None, Some(secret)).status, 200);
    let generate = with_key(&server, "POST", "/generate", Some(GENERATE), Some(secret));
    assert_eq!(generate.status, 403, "{}", generate.text());
    assert_eq!(with_key(&server, "GET", "/keys", None, Some(secret)).status, 403);
    // The fine-tune client sends the key from T2I_API_KEY, and says so when it is missing.
    let client = |key: Option<&str>| {
        let mut command = std::process::Command::new(common::binary());
        command
            .args(["fine-tune", "list", "--url"])
            .arg(format!("http://127.0.0.1:{}", server.port))
            .env_remove("T2I_API_KEY");
        if let Some(key) = key {
            command.env("T2I_API_KEY", key);
        }
        command.output().expect("run t2i-align fine-tune list")
    };
    let without = client(None);
    assert!(!without.status.success());
    assert!(String::from_utf8_lossy(&without.stderr).contains("set T2I_API_KEY"));
    let with = client(Some(secret));
    assert!(with.status.success(), "{}", String::from_utf8_lossy(&with.stderr));
    // Inference keys may not make keys; bad fields are 422s that name them.
    let refused = with_key(
        &server,
        "POST",
        "/keys",
        Some(r#"{"name":"x","scopes":["admin"]}"#),
        Some(INFERENCE_KEY),
    );
    assert_eq!(refused.status, 403);
    for (body, param) in [
        (r#"{"name":"x","scopes":["root"]}"#, "scopes[0]"),
        (r#"{"name":"x","scopes":[]}"#, "scopes"),
        (r#"{"name":"","scopes":["inference"]}"#, "name"),
        (r#"{"name":"x","tenant":"a b","scopes":["inference"]}"#, "tenant"),
        (
            r#"{"name":"x","scopes":["inference"],"expires_in_seconds":0}"#,
            "expires_in_seconds",
        ),
        (
            r#"{"name":"x","scopes":["inference"],"rate_limit":[1,2]}"#,
            "rate_limit",
        ),
    ] {
        let response = with_key(&server, "POST", "/keys", Some(body), Some(ADMIN_KEY));
        assert_eq!(response.status, 422, "{body}: {}", response.text());
        assert_eq!(response.json()["error"]["param"], param, "{body}");
    }
    // The list never shows a secret, and records the last use.
    std::thread::sleep(Duration::from_millis(600));
    let listed = with_key(&server, "GET", "/keys?tenant=acme", None, Some(ADMIN_KEY));
    assert_eq!(listed.status, 200);
    assert!(!listed.text().contains(secret));
    let listed = listed.json();
    assert_eq!(listed["data"].as_array().unwrap().len(), 1);
    assert!(listed["data"][0]["last_used_at"].is_i64(), "{listed}");
    // Revoked: refused at once, saying so; revoking again changes nothing; an unknown id is 404.
    let revoked = with_key(&server, "DELETE", &format!("/keys/{id}"), None, Some(ADMIN_KEY));
    assert_eq!(revoked.status, 200, "{}", revoked.text());
    let refused = with_key(&server, "GET", "/fine-tunes", None, Some(secret));
    assert_eq!(refused.status, 401);
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("was revoked"));
    let again = with_key(&server, "DELETE", &format!("/keys/{id}"), None, Some(ADMIN_KEY)).json();
    assert_eq!(again["revoked_at"], revoked.json()["revoked_at"]);
    assert_eq!(
        with_key(&server, "DELETE", "/keys/key_nope", None, Some(ADMIN_KEY)).status,
        404
    );
    // The audit log has both, newest first, with the acting key's name and tenant.
    let audit = with_key(&server, "GET", "/audit?limit=2", None, Some(ADMIN_KEY)).json();
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["key.revoke", "key.revoke"]);
    let audit = with_key(&server, "GET", "/audit", None, Some(ADMIN_KEY)).json();
    let created = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["action"] == "key.create")
        .unwrap();
    assert_eq!(
        (created["key_name"].as_str(), created["tenant"].as_str()),
        (Some("ops"), Some("default"))
    );
    assert_eq!(created["target"], id);
    assert!(!server.log().contains(secret), "a key reached the log");
}

#[test]
fn a_tenant_past_its_job_quota_gets_a_429_naming_the_limit() {
    let keys = format!("acme:app:fine-tune:{INFERENCE_KEY},other:ops:admin:{ADMIN_KEY}");
    // An API-only replica: the jobs stay queued, so they count against the quota.
    let server = Server::start_with_env(
        &common::tiny_sd(),
        &["--roles", "api", "--tenant-max-jobs", "1"],
        &[("T2I_API_KEYS", &keys)],
    );
    let job = r#"{"prompts": ["a red circle"], "images_per_prompt": 1}"#;
    let first = with_key(&server, "POST", "/fine-tunes", Some(job), Some(INFERENCE_KEY));
    assert_eq!(first.status, 201, "{}", first.text());
    assert_eq!(first.json()["tenant"], "acme");
    let second = with_key(&server, "POST", "/fine-tunes", Some(job), Some(INFERENCE_KEY));
    assert_eq!(second.status, 429, "{}", second.text());
    assert_eq!(second.json()["error"]["type"], "quota_exceeded");
    assert!(second.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("--tenant-max-jobs 1"));
    assert_eq!(second.header("Retry-After"), Some("60"));
    // Another tenant has its own quota; cancelling frees a slot.
    let other = with_key(&server, "POST", "/fine-tunes", Some(job), Some(ADMIN_KEY));
    assert_eq!(other.status, 201, "{}", other.text());
    let id = first.json()["id"].as_str().unwrap().to_string();
    let cancelled = with_key(
        &server,
        "POST",
        &format!("/fine-tunes/{id}/cancel"),
        None,
        Some(INFERENCE_KEY),
    );
    assert_eq!(cancelled.status, 200, "{}", cancelled.text());
    let third = with_key(&server, "POST", "/fine-tunes", Some(job), Some(INFERENCE_KEY));
    assert_eq!(third.status, 201, "{}", third.text());
    // Each creation and the cancellation are in the audit log, with the acting key and its tenant.
    let audit = with_key(&server, "GET", "/audit", None, Some(ADMIN_KEY)).json();
    let actions: Vec<(String, String)> = audit["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|entry| {
            (
                entry["action"].as_str().unwrap().into(),
                entry["tenant"].as_str().unwrap().into(),
            )
        })
        .collect();
    assert_eq!(
        actions,
        [
            ("fine_tune.create".to_string(), "acme".to_string()),
            ("fine_tune.cancel".into(), "acme".into()),
            ("fine_tune.create".into(), "other".into()),
            ("fine_tune.create".into(), "acme".into()),
        ]
    );
}

#[test]
fn rate_limits_count_requests_and_work_per_key_with_the_standard_headers() {
    let keys = keys_env();
    let server = Server::start_with_env(
        &common::tiny_sd(),
        &["--rate-limit-requests", "4", "--rate-limit-work", "0"],
        &[("T2I_API_KEYS", &keys)],
    );
    let mut remaining = Vec::new();
    for _ in 0..4 {
        let response = with_key(&server, "GET", "/models", None, Some(INFERENCE_KEY));
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.header("RateLimit-Limit"), Some("4"));
        remaining.push(response.header("RateLimit-Remaining").unwrap().to_string());
    }
    // The window may turn over between two requests (it is a minute of the clock); then the count starts again.
    let refused = with_key(&server, "GET", "/models", None, Some(INFERENCE_KEY));
    if remaining == ["3", "2", "1", "0"] && refused.status != 200 {
        assert_eq!(refused.status, 429, "{}", refused.text());
        assert_eq!(refused.json()["error"]["type"], "rate_limited");
        assert!(refused.json()["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--rate-limit-requests"));
        let reset: u64 = refused.header("RateLimit-Reset").unwrap().parse().unwrap();
        assert!((1..=60).contains(&reset), "{reset}");
        assert_eq!(refused.header("Retry-After"), Some(reset.to_string().as_str()));
        assert_eq!(refused.header("RateLimit-Remaining"), Some("0"));
        // Another key has its own window; open routes have none.
        assert_eq!(with_key(&server, "GET", "/models", None, Some(ADMIN_KEY)).status, 200);
        assert!(with_key(&server, "GET", "/health", None, None)
            .header("RateLimit-Limit")
            .is_none());
        let metrics = with_key(&server, "GET", "/metrics", None, None).text();
        assert!(
            metrics.contains(r#"t2i_rate_limited_total{limit="requests",tenant="default"} 1"#),
            "{metrics}"
        );
    } else {
        assert_eq!(remaining.last().map(String::as_str), Some("0"), "{remaining:?}");
    }

    // A stored key with its own work limit: one 64×64 image at 2 steps is 8192 pixel-steps.
    let made = with_key(
        &server,
        "POST",
        "/keys",
        Some(
            r#"{"name":"small","scopes":["inference"],"rate_limit":{"requests_per_minute":0,"work_per_minute":20000}}"#,
        ),
        Some(ADMIN_KEY),
    );
    assert_eq!(made.status, 201, "{}", made.text());
    assert_eq!(made.json()["rate_limit"]["work_per_minute"], 20000);
    let secret = made.json()["secret"].as_str().unwrap().to_string();
    let body = r#"{"prompt":"a red circle","steps":2,"width":64,"height":64}"#;
    let first = with_key(&server, "POST", "/generate", Some(body), Some(&secret));
    assert_eq!(first.status, 200, "{}", first.text());
    assert!(
        first.header("RateLimit-Limit").is_none(),
        "no request limit for this key"
    );
    let too_big = r#"{"prompt":"a red circle","steps":10,"width":64,"height":64}"#;
    let refused = with_key(&server, "POST", "/generate", Some(too_big), Some(&secret));
    assert_eq!(refused.status, 429, "{}", refused.text());
    assert!(refused.json()["error"]["message"]
        .as_str()
        .unwrap()
        .contains("work_per_minute"));
}
