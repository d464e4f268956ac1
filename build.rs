//! Embeds the web console (web/dist, built by `make web` with Vite) into the binary, so that the server needs
//! neither node nor the folder at run time. Without a built console the table is empty and `/` says how to
//! build it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR"));
    let dist = root.join("web").join("dist");
    println!("cargo:rerun-if-changed={}", dist.display());
    println!("cargo:rerun-if-changed=build.rs");

    let mut files = Vec::new();
    if dist.join("index.html").is_file() {
        collect(&dist, &dist, &mut files);
        files.sort();
    } else {
        println!(
            "cargo:warning=web/dist/index.html is missing: the web console is not embedded (run `make web`, then rebuild)"
        );
    }
    let mut table = String::from("&[\n");
    for (route, path) in &files {
        let _ = writeln!(
            table,
            "    ({route:?}, include_bytes!({:?})),",
            path.display().to_string()
        );
    }
    table.push(']');
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("console_assets.rs");
    std::fs::write(&out, table).expect("write console_assets.rs");
}

/// Every file under `dir` as (its path from `dist` with `/` separators, its absolute path).
fn collect(dist: &Path, dir: &Path, files: &mut Vec<(String, PathBuf)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(dist, &path, files);
        } else if let Ok(relative) = path.strip_prefix(dist) {
            let route: Vec<String> = relative
                .components()
                .map(|part| part.as_os_str().to_string_lossy().into_owned())
                .collect();
            files.push((route.join("/"), path));
        }
    }
}
