//! Shared helpers for the integration tests: the model folders, the ONNX Runtime library, a server process
//! started on a free port, and a tiny HTTP/1.1 client (raw sockets, so tests can also hang up mid-request).

#![allow(dead_code)]

pub mod postgres;
pub mod seaweed;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A port nothing listens on right now, on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("no free port on 127.0.0.1")
}

pub fn repo_path(relative: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(relative)
}

pub fn tiny_sd() -> PathBuf {
    repo_path("models/tiny-sd")
}

pub fn tiny_sd_legacy() -> PathBuf {
    repo_path("models/tiny-sd-legacy")
}

/// Non-square (72×104 by default), any multiple of 8, its UNet's weights in `unet/model.onnx_data`.
#[allow(dead_code)]
pub fn tiny_sd_wide() -> PathBuf {
    repo_path("models/tiny-sd-wide")
}

/// Copies a folder and everything in it: a model folder to change, or to register under another name.
#[allow(dead_code)]
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

/// The ONNX Runtime library the Makefile installs; the tests need it and say how to get it.
pub fn ort_dylib() -> PathBuf {
    let path = std::env::var_os("ORT_DYLIB_PATH")
        .map(PathBuf::from)
        .expect("ORT_DYLIB_PATH is not set: run the tests through `make test` (it installs onnxruntime==1.31.1)");
    assert!(
        path.is_file(),
        "ORT_DYLIB_PATH={} does not exist: run `make venv`",
        path.display()
    );
    path
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_t2i-align")
}

pub fn read_json(relative: &str) -> serde_json::Value {
    read_json_path(&repo_path(relative))
}

pub fn read_json_path(path: &std::path::Path) -> serde_json::Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|err| panic!("cannot read {}: {err}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|err| panic!("{} is not JSON: {err}", path.display()))
}

/// A golden's token ids.
#[allow(dead_code)]
pub fn ids(value: &serde_json::Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|id| id.as_u64().expect("an id") as u32)
        .collect()
}

pub fn floats(value: &serde_json::Value) -> Vec<f32> {
    value
        .as_array()
        .expect("an array of numbers")
        .iter()
        .map(|v| v.as_f64().expect("a number") as f32)
        .collect()
}

/// A `t2i-align serve` process on a free port, killed when dropped.
pub struct Server {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<String>>,
    /// A data directory of its own, unless the test passed `--data-dir`; removed with the server.
    _data_dir: Option<tempfile::TempDir>,
}

impl Server {
    pub fn start(extra_args: &[&str]) -> Server {
        Self::start_with_model(&tiny_sd(), extra_args)
    }

    pub fn start_with_model(model: &std::path::Path, extra_args: &[&str]) -> Server {
        Self::start_with_env(model, extra_args, &[])
    }

    /// Starts a server with extra environment variables (e.g. `T2I_API_KEYS`).
    pub fn start_with_env(model: &std::path::Path, extra_args: &[&str], envs: &[(&str, &str)]) -> Server {
        // One intra-op thread unless the test sets its own: tests run side by side on two cores.
        let threads: &[&str] = if extra_args.contains(&"--intra-threads") {
            &[]
        } else {
            &["--intra-threads", "1"]
        };
        let data_dir =
            (!extra_args.contains(&"--data-dir")).then(|| tempfile::tempdir().expect("a temporary data dir"));
        let data_args: Vec<String> = match &data_dir {
            Some(dir) => vec!["--data-dir".into(), dir.path().display().to_string()],
            None => Vec::new(),
        };
        let mut child = Command::new(binary())
            .args(["serve", "--host", "127.0.0.1", "--port", "0"])
            .args(threads)
            .args(&data_args)
            .arg("--model")
            .arg(model)
            .args(extra_args)
            .env("ORT_DYLIB_PATH", ort_dylib())
            .env("RUST_LOG", "info,ort=warn")
            .envs(envs.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn t2i-align serve");
        let stderr = child.stderr.take().expect("piped stderr");
        let log = Arc::new(Mutex::new(String::new()));
        let (port_tx, port_rx) = mpsc::channel();
        let log_writer = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://127.0.0.1:").nth(1) {
                    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                    let _ = port_tx.send(digits.parse::<u16>().unwrap_or(0));
                }
                let mut log = log_writer.lock().unwrap();
                log.push_str(&line);
                log.push('\n');
            }
        });
        let port = port_rx.recv_timeout(Duration::from_secs(60)).unwrap_or(0);
        let mut server = Server {
            child,
            port,
            log,
            _data_dir: data_dir,
        };
        assert!(port != 0, "the server did not start:\n{}", server.log());
        server.wait_ready();
        server
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("the server exited with {status}:\n{}", self.log());
            }
            if let Ok(response) = request(self.port, "GET", "/ready", None) {
                if response.status == 200 {
                    return;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("the server was not ready within 120 s:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.port, "GET", path, None).expect("GET")
    }

    pub fn post_json(&self, path: &str, body: &str) -> Response {
        request(self.port, "POST", path, Some(body)).expect("POST")
    }

    /// POSTs `multipart/form-data`: each part is (name, file name for files, bytes).
    pub fn post_multipart(&self, path: &str, parts: &[(&str, Option<&str>, &[u8])]) -> Response {
        let boundary = "t2i-test-boundary-7d3f";
        let mut body = Vec::new();
        for (name, filename, data) in parts {
            body.extend_from_slice(format!("--{boundary}\r\n").as_bytes());
            match filename {
                Some(file) => body.extend_from_slice(
                    format!(
                        "Content-Disposition: form-data; name=\"{name}\"; filename=\"{file}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
                    )
                    .as_bytes(),
                ),
                None => body.extend_from_slice(
                    format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
                ),
            }
            body.extend_from_slice(data);
            body.extend_from_slice(b"\r\n");
        }
        body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
        let mut raw = format!(
            "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: multipart/form-data; boundary={boundary}\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        raw.extend_from_slice(&body);
        send_raw(self.port, &raw).expect("POST multipart")
    }

    /// SIGKILL, as a crash or the OOM killer would stop it; nothing gets to clean up.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits up to `timeout` for the process to exit on its own; its status, or None if it is still running.
    pub fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends SIGTERM, as an orchestrator stopping the service would.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM failed");
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| panic!("not JSON ({err}): {}", self.text()))
    }
}

/// Sends one request with `Connection: close` and reads the whole response.
pub fn request(port: u16, method: &str, path: &str, body: Option<&str>) -> std::io::Result<Response> {
    send_raw(port, raw_request(method, path, body).as_bytes())
}

/// Sends raw request bytes and reads the whole response.
pub fn send_raw(port: u16, request: &[u8]) -> std::io::Result<Response> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    stream.write_all(request)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw)?;
    parse_response(&raw)
}

/// PyTorch's score of golden image `shapes-reward/<index>.png` for `prompt` (tests/golden/reward).
pub fn golden_reward_score(prompt: &str, index: usize) -> f64 {
    let golden = read_json("tests/golden/reward/shapes-reward.json");
    let image = format!("shapes-reward/{index}.png");
    golden["cases"]
        .as_array()
        .expect("cases")
        .iter()
        .find(|case| case["prompt"] == prompt && case["image"] == image.as_str())
        .unwrap_or_else(|| panic!("no golden case for {prompt:?} and {image}"))["score"]
        .as_f64()
        .expect("a score")
}

/// Runs a module of the repository's Python packages (t2i_trainer, t2i_scripts) in `.venv` (which `make test`
/// installs), as `python -m <module>`, and returns its output.
pub fn run_python(module: &str, args: &[&str]) -> std::process::Output {
    python_command(&["-m", module], args)
}

/// Runs a Python file of the repository (such as a test client under tests/) in `.venv`.
pub fn run_python_file(script: &str, args: &[&str]) -> std::process::Output {
    python_command(&[&repo_path(script).display().to_string()], args)
}

/// `.venv/bin/python` with `first` then `args`. trainer/ and scripts/ go on PYTHONPATH, as the server does for
/// its trainer children, so the packages import even where `make venv` has not installed them.
fn python_command(first: &[&str], args: &[&str]) -> std::process::Output {
    let python = repo_path(".venv/bin/python");
    assert!(
        python.is_file(),
        "{} is missing: run the tests through `make test`",
        python.display()
    );
    let mut paths = vec![repo_path("trainer"), repo_path("scripts")];
    if let Some(existing) = std::env::var_os("PYTHONPATH") {
        paths.extend(std::env::split_paths(&existing).filter(|path| !path.as_os_str().is_empty()));
    }
    Command::new(python)
        .args(first)
        .args(args)
        .env("PYTHONPATH", std::env::join_paths(paths).expect("PYTHONPATH entries"))
        .output()
        .unwrap_or_else(|err| panic!("cannot run {}: {err}", first.join(" ")))
}

pub fn shapes_sd() -> PathBuf {
    repo_path("models/shapes-sd")
}

pub fn raw_request(method: &str, path: &str, body: Option<&str>) -> String {
    let body = body.unwrap_or("");
    format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
}

fn parse_response(raw: &[u8]) -> std::io::Result<Response> {
    let invalid = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| invalid("no header end"))?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| invalid("no status"))?;
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    let mut body = raw[split + 4..].to_vec();
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    if chunked {
        body = dechunk(&body);
    }
    Ok(Response { status, headers, body })
}

fn dechunk(mut data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = data.windows(2).position(|w| w == b"\r\n") {
        let size = usize::from_str_radix(String::from_utf8_lossy(&data[..end]).trim(), 16).unwrap_or(0);
        if size == 0 {
            break;
        }
        let start = end + 2;
        out.extend_from_slice(&data[start..(start + size).min(data.len())]);
        data = &data[(start + size + 2).min(data.len())..];
    }
    out
}

/// The images of a 200 `/generate` answer, decoded.
pub fn generated_images(response: &Response) -> Vec<image::RgbImage> {
    use base64::Engine as _;
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|image| {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(image["png_base64"].as_str().expect("png_base64"))
                .expect("base64");
            image::load_from_memory(&bytes).expect("a PNG").to_rgb8()
        })
        .collect()
}

/// A Prometheus sample's value, e.g. `t2i_unet_batch_requests_sum`.
pub fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// A pipeline over a model folder, on the CPU with default sessions.
pub fn load_pipeline(model: &Path) -> t2i_align::pipeline::Pipeline {
    use t2i_align::runtime::{Device, Runtime, SessionSettings};
    let mut runtime = Runtime::init(Some(&ort_dylib()), Device::Cpu, SessionSettings::default()).unwrap();
    let folder = Arc::new(t2i_align::pipeline::ModelFolder::open(model).unwrap());
    t2i_align::pipeline::Pipeline::load(&mut runtime, folder).unwrap()
}

/// A golden's 8-bit values (an image's RGB bytes).
pub fn bytes(value: &serde_json::Value) -> Vec<u8> {
    value
        .as_array()
        .expect("an array of bytes")
        .iter()
        .map(|value| value.as_u64().expect("a byte") as u8)
        .collect()
}

/// An image encoded as PNG, to post.
pub fn png_of(image: &image::RgbImage) -> Vec<u8> {
    let mut bytes = Vec::new();
    image
        .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
        .unwrap();
    bytes
}

/// The largest difference between two images' 8-bit values, as `n/255`; the sizes must match.
pub fn max_level_difference(ours: &[u8], theirs: &[u8]) -> u8 {
    assert_eq!(ours.len(), theirs.len(), "the images differ in size");
    ours.iter().zip(theirs).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0)
}

/// A golden's image: `{"width", "height", "rgb": [bytes]}`.
pub fn golden_image(record: &serde_json::Value) -> image::RgbImage {
    image::RgbImage::from_raw(
        record["width"].as_u64().expect("width") as u32,
        record["height"].as_u64().expect("height") as u32,
        bytes(&record["rgb"]),
    )
    .expect("rgb holds width × height × 3 bytes")
}

/// A golden run's request: its prompt, negative prompt (none is empty), steps, guidance scale and size, with
/// `scheduler`, one image, seed 0 and every other field at its default. Tests add an init image or scores.
pub fn golden_params(
    run: &serde_json::Value,
    scheduler: t2i_align::pipeline::scheduler::SchedulerKind,
) -> t2i_align::pipeline::GenerateParams {
    t2i_align::pipeline::GenerateParams {
        prompt: run["prompt"].as_str().expect("prompt").into(),
        negative_prompt: run["negative_prompt"].as_str().unwrap_or("").into(),
        num_images: 1,
        steps: run["steps"].as_u64().expect("steps") as usize,
        guidance_scale: run["guidance_scale"].as_f64().expect("guidance_scale") as f32,
        scheduler,
        seed: 0,
        width: run["width"].as_u64().expect("width") as usize,
        height: run["height"].as_u64().expect("height") as usize,
        eta: 0.0,
        guidance_rescale: 0.0,
        aesthetic_score: Default::default(),
        init: None,
    }
}

/// Asserts that our PNG has the golden run's size and is within 2/255 of its `image_u8` (the reference's
/// 8-bit output) at every value; prints and returns the largest difference.
pub fn assert_within_2_levels(label: &str, png: &[u8], run: &serde_json::Value) -> u8 {
    let ours = image::load_from_memory(png).expect("a PNG").to_rgb8();
    assert_eq!(
        (u64::from(ours.width()), u64::from(ours.height())),
        (
            run["width"].as_u64().expect("width"),
            run["height"].as_u64().expect("height")
        ),
        "{label}: size"
    );
    let worst = max_level_difference(ours.as_raw(), &bytes(&run["image_u8"]));
    eprintln!("{label}: max per-pixel difference {worst}/255");
    assert!(worst <= 2, "{label}: max per-pixel difference {worst}/255");
    worst
}
