//! A throwaway Postgres server for the tests that need the real engine: `initdb` into a temporary folder,
//! `postgres` on 127.0.0.1 and a free port with trust authentication, and nothing kept afterwards.
//!
//! - **The binaries:** `$T2I_PG_BINDIR`, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's
//!   `postgresql` package, which `make system-deps` installs). A missing install fails the test, naming it.
//! - **Root:** `initdb` refuses to run as root, so as root the server runs as the `postgres` user (`runuser`),
//!   in a folder that user owns.
//! - **Stopping:** dropping the handle stops the server and removes its folder. If the test process dies
//!   first, a watchdog shell beside the server (it watches `/proc/<pid>`, since the `postgres` user may not signal
//!   root's process) stops it within a second and removes its folder, so no server outlives its test. A
//!   server kept in a `static` for a whole test binary is stopped that way.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Postgres {
    dir: PathBuf,
    watchdog: Child,
    pub port: u16,
}

/// The folder of `initdb` and `postgres`.
pub fn bindir() -> PathBuf {
    if let Some(dir) = std::env::var_os("T2I_PG_BINDIR") {
        return PathBuf::from(dir);
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse().ok()?;
            let bin = entry.path().join("bin");
            bin.join("initdb").is_file().then_some((version, bin))
        })
        .collect();
    versions.sort();
    versions
        .pop()
        .map(|(_, bin)| bin)
        .expect("no Postgres server binaries in /usr/lib/postgresql/*/bin (install Debian's postgresql: `make system-deps`), or set T2I_PG_BINDIR")
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// `program` with `args`, as the `postgres` user when this process is root.
fn command(program: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program).args(args);
        command
    } else {
        let mut command = Command::new(program);
        command.args(args);
        command
    }
}

impl Postgres {
    /// A new, empty server, ready for connections.
    pub fn start() -> Postgres {
        let bin = bindir();
        let dir = std::env::temp_dir().join(format!("t2i-pg-{}", uuid_like()));
        std::fs::create_dir_all(&dir).expect("create the server's folder");
        if is_root() {
            let status = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(&dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "chown {} to the postgres user failed", dir.display());
        }
        let data = dir.join("data");
        let data_arg = data.to_str().expect("a UTF-8 temporary folder");
        let init = command(
            &bin.join("initdb"),
            &[
                "-D",
                data_arg,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        )
        .stdout(Stdio::null())
        .output()
        .expect("run initdb");
        assert!(
            init.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&init.stderr)
        );
        let port = super::free_port();
        let postgres = bin.join("postgres");
        // The server in the background, and a loop that stops it when this test process is gone.
        let script = format!(
            "{postgres} -D '{data_arg}' -k '{socket}' -p {port} -c listen_addresses=127.0.0.1 -c fsync=off \
             -c synchronous_commit=off -c full_page_writes=off >'{log}' 2>&1 & server=$!; \
             while [ -d /proc/{parent} ] && kill -0 $server 2>/dev/null; do sleep 0.5; done; \
             kill -INT $server 2>/dev/null; wait $server; [ -d /proc/{parent} ] || rm -rf '{dir}'",
            postgres = postgres.display(),
            socket = dir.display(),
            log = dir.join("server.log").display(),
            dir = dir.display(),
            parent = std::process::id(),
        );
        let watchdog = command(Path::new("/bin/sh"), &["-c", &script])
            .stdin(Stdio::null())
            .spawn()
            .expect("start postgres");
        let server = Postgres { dir, watchdog, port };
        server.wait_ready();
        server
    }

    /// `postgres://postgres@127.0.0.1:<port>/postgres`: no password, as the server trusts loopback.
    pub fn url(&self) -> String {
        self.url_of("postgres")
    }

    /// The URL of another database on this server.
    pub fn url_of(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        let bin = bindir();
        loop {
            let ready = TcpStream::connect(("127.0.0.1", self.port)).is_ok()
                && Command::new(bin.join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "postgres"])
                    .stdout(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success());
            if ready {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "postgres did not accept connections within 60 s: {}",
                std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Postgres {
    /// Runs one SQL statement with psql as the superuser; returns its rows, unaligned.
    pub fn sql(&self, statement: &str) -> String {
        let output = Command::new(bindir().join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
                "-d",
                "postgres",
            ])
            .args(["-At", "-c", statement])
            .output()
            .expect("run psql");
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Stops the server now (a fast shutdown), as an outage would; its folder stays until the handle drops.
    pub fn stop(&self) {
        let _ = command(
            &bindir().join("pg_ctl"),
            &[
                "-D",
                &self.dir.join("data").to_string_lossy(),
                "-m",
                "fast",
                "-w",
                "stop",
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // The watchdog's loop ends when the server does, then the folder goes.
        self.stop();
        let _ = self.watchdog.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A name no other test's folder has: the process id and a clock reading.
fn uuid_like() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.as_nanos())
        .unwrap_or_default();
    format!("{}-{nanos}", std::process::id())
}
