//! Tenants and roles on every route (#28). Two tenants, `acme` and `other`, each with an app key (inference,
//! feedback and fine-tune scopes) and an admin key, call every route the server declares: the routes come from
//! the one route table (`t2i_align::http::endpoints()`), so a new route fails this test until it says what
//! each caller gets. The targets are acme's records (an image, a rating, a job, a stored key).
//!
//! - acme's own app key reads and changes them; `other`'s app key gets 404 for each id in a path (422 for an id
//!   in a body, as for any unknown id) and never sees them in a listing; admin routes are 403 to both app keys;
//!   `other`'s admin key sees and changes everything.
//! - The table of what each caller got is RELIABILITY.md's security section; `UPDATE_DOCS=1` writes it, and
//!   the test fails when the committed one differs.

mod common;

use std::fmt::Write as _;

use base64::Engine as _;
use common::Server;
use serde_json::{json, Value};

const ACME_APP: &str = "acme-app-key-0123456789abcdef";
const ACME_ADMIN: &str = "acme-admin-key-0123456789abcd";
const OTHER_APP: &str = "other-app-key-0123456789abcde";
const OTHER_ADMIN: &str = "other-admin-key-0123456789abc";
const DOC: &str = "RELIABILITY.md";
const BEGIN: &str = "<!-- security:begin -->";
const END: &str = "<!-- security:end -->";

/// The callers of the table's columns.
const CALLERS: [(&str, Option<&str>); 5] = [
    ("no key", None),
    ("acme app (owner)", Some(ACME_APP)),
    ("acme admin", Some(ACME_ADMIN)),
    ("other app", Some(OTHER_APP)),
    ("other admin", Some(OTHER_ADMIN)),
];

fn keys_env() -> String {
    [
        format!("acme:app:inference+feedback+fine-tune:{ACME_APP}"),
        format!("acme:ops:admin:{ACME_ADMIN}"),
        format!("other:app:inference+feedback+fine-tune:{OTHER_APP}"),
        format!("other:ops:admin:{OTHER_ADMIN}"),
    ]
    .join(",")
}

enum Body {
    None,
    Json(String),
    /// A multipart form: (name, file name for files, bytes).
    Form(Vec<(&'static str, Option<&'static str>, Vec<u8>)>),
}

fn call(server: &Server, method: &str, path: &str, body: &Body, key: Option<&str>) -> common::Response {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n");
    if let Some(key) = key {
        head.push_str(&format!("Authorization: Bearer {key}\r\n"));
    }
    let (content_type, bytes) = match body {
        Body::None => (None, Vec::new()),
        Body::Json(text) => (Some("application/json".to_string()), text.clone().into_bytes()),
        Body::Form(parts) => {
            let boundary = "t2i-tenants-boundary";
            let mut bytes = Vec::new();
            for (name, file, data) in parts {
                bytes.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
                let disposition = match file {
                    Some(file) => format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: image/png\r\n\r\n"
                    ),
                    None => format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n"),
                };
                bytes.extend_from_slice(disposition.as_bytes());
                bytes.extend_from_slice(data);
                bytes.extend_from_slice(b"\r\n");
            }
            bytes.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
            (Some(format!("multipart/form-data; boundary={boundary}")), bytes)
        }
    };
    if let Some(content_type) = content_type {
        head.push_str(&format!("Content-Type: {content_type}\r\n"));
    }
    if !bytes.is_empty() || method == "POST" {
        head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
    }
    head.push_str("\r\n");
    let mut raw = head.into_bytes();
    raw.extend_from_slice(&bytes);
    common::send_raw(server.port, &raw).expect("request")
}

fn ok_json(response: common::Response, what: &str) -> Value {
    assert!(
        (200..300).contains(&response.status),
        "{what}: {} {}",
        response.status,
        response.text()
    );
    response.json()
}

/// acme's records, made with acme's keys.
struct Acme<'a> {
    server: &'a Server,
    image: String,
    png: Vec<u8>,
    rating: String,
    job: String,
}

impl Acme<'_> {
    fn rating(&self) -> String {
        let body = Body::Json(json!({"image_id": self.image, "label": "good"}).to_string());
        ok_json(call(self.server, "POST", "/feedback", &body, Some(ACME_APP)), "rate")["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn job(&self) -> String {
        ok_json(
            call(self.server, "POST", "/fine-tunes", &job_body(), Some(ACME_APP)),
            "create a job",
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    }

    fn key(&self) -> String {
        let body = Body::Json(json!({"name": "spare", "scopes": ["inference"]}).to_string());
        ok_json(
            call(self.server, "POST", "/keys", &body, Some(ACME_ADMIN)),
            "make a key",
        )["id"]
            .as_str()
            .unwrap()
            .to_string()
    }
}

fn job_body() -> Body {
    Body::Json(json!({"prompts": ["a red circle"], "images_per_prompt": 1}).to_string())
}

/// What a caller should get on a route: the status, and for a listing whether acme's record is in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Outcome {
    status: u16,
    sees_acme: Option<bool>,
}

fn outcome(status: u16) -> Outcome {
    Outcome {
        status,
        sees_acme: None,
    }
}

fn listing(status: u16, sees_acme: bool) -> Outcome {
    Outcome {
        status,
        sees_acme: Some(sees_acme),
    }
}

impl std::fmt::Display for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.sees_acme {
            None => write!(f, "{}", self.status),
            Some(true) => write!(f, "{}, sees acme's", self.status),
            Some(false) => write!(f, "{}, not acme's", self.status),
        }
    }
}

/// For one route: the request (made fresh for each caller, so that a deletion does not change what the next
/// caller finds), where acme's record shows in a listing, and what each caller of `CALLERS` should get.
struct Case {
    path: String,
    body: Body,
    /// A listing: the id of acme's record that it should or should not hold.
    holds: Option<String>,
    expected: [Outcome; 5],
}

fn case(acme: &Acme, method: &str, route: &str, assets: &str) -> Case {
    let generate = Body::Json(json!({"prompt": "a red circle", "steps": 2}).to_string());
    let score = Body::Json(json!({"prompt": "a red circle", "image_ids": [acme.image]}).to_string());
    let admin_only = |ok| [outcome(401), outcome(403), outcome(ok), outcome(403), outcome(ok)];
    let everyone = |ok| [outcome(401), outcome(ok), outcome(ok), outcome(ok), outcome(ok)];
    // An id in the path: acme's owner and any admin reach it; the other tenant's key gets 404.
    let by_id = |ok| [outcome(401), outcome(ok), outcome(ok), outcome(404), outcome(ok)];
    let lists = |path: &str, id: &str| Case {
        path: path.to_string(),
        body: Body::None,
        holds: Some(id.to_string()),
        expected: [
            outcome(401),
            listing(200, true),
            listing(200, true),
            listing(200, false),
            listing(200, true),
        ],
    };
    let plain = |path: String, body, expected| Case {
        path,
        body,
        holds: None,
        expected,
    };
    let open = [outcome(200); 5];
    match (method, route) {
        ("GET", "/health")
        | ("GET", "/ready")
        | ("GET", "/openapi.json")
        | ("GET", "/metrics")
        | ("GET", "/")
        | ("GET", "/favicon.svg") => plain(route.to_string(), Body::None, open),
        ("GET", "/assets/{file}") => plain(format!("/assets/{assets}"), Body::None, open),
        ("POST", "/generate") => plain(route.into(), generate, everyone(200)),
        ("POST", "/v1/images/generations") => plain(
            route.into(),
            Body::Json(json!({"prompt": "a red circle"}).to_string()),
            everyone(200),
        ),
        ("POST", "/v1/images/edits") => plain(
            route.into(),
            Body::Form(vec![
                ("image", Some("start.png"), acme.png.clone()),
                ("prompt", None, b"a red circle".to_vec()),
            ]),
            everyone(200),
        ),
        // An id in the body that the caller may not see is refused as unknown: 422 naming the field.
        ("POST", "/score") | ("POST", "/rerank") => plain(
            route.into(),
            score,
            [outcome(401), outcome(200), outcome(200), outcome(422), outcome(200)],
        ),
        ("POST", "/feedback") => plain(
            route.into(),
            Body::Json(json!({"image_id": acme.image, "label": "bad"}).to_string()),
            [outcome(401), outcome(201), outcome(201), outcome(422), outcome(201)],
        ),
        ("GET", "/feedback") => lists("/feedback", &acme.rating),
        ("GET", "/feedback/export") => lists("/feedback/export", &acme.rating),
        ("DELETE", "/feedback/{id}") => plain(format!("/feedback/{}", acme.rating()), Body::None, by_id(200)),
        ("GET", "/images") => lists("/images", &acme.image),
        ("GET", "/images/{id}") => plain(format!("/images/{}", acme.image), Body::None, by_id(200)),
        ("POST", "/fine-tunes") => plain(route.into(), job_body(), everyone(201)),
        ("GET", "/fine-tunes") => lists("/fine-tunes", &acme.job),
        ("GET", "/fine-tunes/{id}") => plain(format!("/fine-tunes/{}", acme.job), Body::None, by_id(200)),
        ("GET", "/fine-tunes/{id}/events") => plain(format!("/fine-tunes/{}/events", acme.job), Body::None, by_id(200)),
        ("POST", "/fine-tunes/{id}/cancel") => {
            plain(format!("/fine-tunes/{}/cancel", acme.job()), Body::None, by_id(200))
        }
        ("GET", "/models") | ("GET", "/rollout") => plain(route.into(), Body::None, everyone(200)),
        ("POST", "/models/{id}/activate") => plain("/models/tiny-sd/activate".into(), Body::None, admin_only(200)),
        ("POST", "/keys") => plain(
            route.into(),
            Body::Json(json!({"name": "made", "scopes": ["inference"]}).to_string()),
            admin_only(201),
        ),
        ("GET", "/keys") | ("GET", "/audit") => plain(route.into(), Body::None, admin_only(200)),
        ("DELETE", "/keys/{id}") => plain(format!("/keys/{}", acme.key()), Body::None, admin_only(200)),
        (method, route) => {
            panic!("{method} {route} is a route this test does not know: say in `case` what each tenant and role gets")
        }
    }
}

#[test]
fn every_route_keeps_each_tenant_to_its_own_records() {
    let data = tempfile::tempdir().unwrap();
    let data_dir = data.path().display().to_string();
    // An API-only replica: jobs stay queued, so their ids can be read, listed and cancelled without training.
    let server = Server::start_with_env(
        &common::tiny_sd(),
        &[
            "--data-dir",
            &data_dir,
            "--roles",
            "api",
            "--max-concurrent-per-key",
            "0",
            "--tenant-max-jobs",
            "0",
        ],
        &[("T2I_API_KEYS", &keys_env())],
    );
    let generated = ok_json(
        call(
            &server,
            "POST",
            "/generate",
            &Body::Json(json!({"prompt": "a red circle", "steps": 2}).to_string()),
            Some(ACME_APP),
        ),
        "generate",
    );
    let image = generated["images"][0]["image_id"].as_str().unwrap().to_string();
    let png = base64::engine::general_purpose::STANDARD
        .decode(generated["images"][0]["png_base64"].as_str().unwrap())
        .unwrap();
    let mut acme = Acme {
        server: &server,
        image,
        png,
        rating: String::new(),
        job: String::new(),
    };
    acme.rating = acme.rating();
    acme.job = acme.job();
    let index = call(&server, "GET", "/", &Body::None, None).text();
    let assets = index
        .split("/assets/")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("the console's page names an asset")
        .to_string();

    let mut routes: Vec<(&str, &str)> = t2i_align::http::endpoints()
        .iter()
        .map(|endpoint| (endpoint.method.name(), endpoint.path))
        .collect();
    routes.sort();
    let mut table = String::new();
    let _ = writeln!(
        table,
        "| route | {} |\n|---|{}",
        CALLERS.map(|(name, _)| name).join(" | "),
        "---|".repeat(CALLERS.len())
    );
    let mut wrong = Vec::new();
    for (method, route) in routes {
        let mut got = Vec::new();
        for (column, (name, key)) in CALLERS.iter().enumerate() {
            let case = case(&acme, method, route, &assets);
            let response = call(&server, method, &case.path, &case.body, *key);
            let sees_acme = case
                .holds
                .as_deref()
                .filter(|_| response.status == 200)
                .map(|id| response.text().contains(id));
            let outcome = Outcome {
                status: response.status,
                sees_acme,
            };
            if outcome != case.expected[column] {
                wrong.push(format!(
                    "{method} {route} as {name}: expected {}, got {outcome}: {}",
                    case.expected[column],
                    response.text().chars().take(200).collect::<String>()
                ));
            }
            got.push(outcome.to_string());
        }
        let _ = writeln!(table, "| `{method} {route}` | {} |", got.join(" | "));
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    assert!(
        !server.log().contains(ACME_APP) && !server.log().contains(OTHER_ADMIN),
        "a key reached the log"
    );
    check_section(&table);
}

/// RELIABILITY.md's security section holds this table.
fn check_section(table: &str) {
    let section = format!(
        "{BEGIN}\n## Tenants and roles on every route (`cargo test --test tenants`)\n\n\
         Written by tests/tenants.rs (`UPDATE_DOCS=1 cargo test --release --test tenants`), which calls every route of \
         the route table with five callers and fails when any gets other than this. The targets are records of \
         tenant `acme` (an image, a rating, a fine-tune job, a stored key). App keys hold the inference, feedback \
         and fine-tune scopes; admin keys hold admin. An id in a path that belongs to another tenant is a 404, as \
         an unknown id; one in a body is a 422 naming the field, as an unknown id. \"sees acme's\" says whether a \
         listing held acme's record.\n\n{table}{END}"
    );
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(DOC);
    let text = std::fs::read_to_string(&path).unwrap();
    let updated = match (text.find(BEGIN), text.find(END)) {
        (Some(start), Some(end)) => format!("{}{section}{}", &text[..start], &text[end + END.len()..]),
        _ => format!("{}\n{section}\n", text.trim_end()),
    };
    if std::env::var_os("UPDATE_DOCS").is_some_and(|value| value == "1") {
        std::fs::write(&path, updated).unwrap();
        return;
    }
    assert!(
        text == updated,
        "{DOC}'s security section is stale: run `UPDATE_DOCS=1 cargo test --release --test tenants`"
    );
}
