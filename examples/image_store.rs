//! What storing one generated image costs `/generate` (the `insert_image` call after the pipeline, retention
//! included), on the embedded store (SQLite and a local folder) in a throwaway directory, at several numbers
//! of stored images. At each size the store is first filled to `--image-retention` = that size, so that every
//! timed insert is at the limit and drops one old image, as on a server that has been up a while.
//!
//! Prints one JSON object: for each size, the median, p90 and mean milliseconds per insert over `--inserts`.
//!
//! ```sh
//! cargo run --release --example image_store -- --sizes 100,1000,10000 --inserts 400
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use t2i_align::storage::{Storage, StoredImage};

fn parse_args() -> Result<(Vec<u64>, usize), String> {
    let mut sizes = vec![100, 1_000, 10_000];
    let mut inserts = 400;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--sizes" => {
                sizes = value
                    .split(',')
                    .map(|size| {
                        size.trim()
                            .parse::<u64>()
                            .map_err(|err| format!("--sizes {size}: {err}"))
                    })
                    .collect::<Result<_, _>>()?;
                if sizes.contains(&0) {
                    return Err("--sizes: each size must be at least 1".into());
                }
            }
            "--inserts" => {
                inserts = value.parse().map_err(|err| format!("--inserts {value}: {err}"))?;
                if inserts == 0 {
                    return Err("--inserts must be at least 1".into());
                }
            }
            _ => return Err(format!("unknown flag {flag}; known: --sizes, --inserts")),
        }
    }
    Ok((sizes, inserts))
}

fn image(png: &Arc<Vec<u8>>, seed: u64) -> StoredImage {
    StoredImage {
        png: png.clone(),
        prompt: "two blue stars on a white background".into(),
        seed,
        model: "shapes-sd".into(),
        reward: Some(0.5),
        tenant: "default".into(),
    }
}

async fn measure(root: &Path, size: u64, inserts: usize, png: &Arc<Vec<u8>>) -> Result<serde_json::Value, String> {
    let storage = Storage::open(root, size).await.map_err(|err| err.to_string())?;
    for seed in 0..size {
        storage
            .insert_image(&image(png, seed))
            .await
            .map_err(|err| err.to_string())?;
    }
    let mut millis = Vec::with_capacity(inserts);
    for seed in 0..inserts as u64 {
        let started = Instant::now();
        storage
            .insert_image(&image(png, size + seed))
            .await
            .map_err(|err| err.to_string())?;
        millis.push(started.elapsed().as_secs_f64() * 1e3);
    }
    let mean = millis.iter().sum::<f64>() / millis.len() as f64;
    millis.sort_by(f64::total_cmp);
    let at = |share: f64| millis[((millis.len() - 1) as f64 * share).round() as usize];
    Ok(serde_json::json!({
        "stored": size,
        "inserts": inserts,
        "median_ms": (at(0.5) * 1e3).round() / 1e3,
        "p90_ms": (at(0.9) * 1e3).round() / 1e3,
        "mean_ms": (mean * 1e3).round() / 1e3,
    }))
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (sizes, inserts) = match parse_args() {
        Ok(parsed) => parsed,
        Err(message) => {
            eprintln!("image_store: {message}");
            std::process::exit(2);
        }
    };
    // A 64x64 PNG's size, as /generate stores for shapes-sd.
    let png = Arc::new(vec![7u8; 6_000]);
    let mut results = Vec::new();
    for size in sizes {
        let dir = match tempfile::tempdir() {
            Ok(dir) => dir,
            Err(err) => {
                eprintln!("image_store: cannot make a temporary directory: {err}");
                std::process::exit(1);
            }
        };
        match measure(dir.path(), size, inserts, &png).await {
            Ok(result) => results.push(result),
            Err(message) => {
                eprintln!("image_store: {message}");
                std::process::exit(1);
            }
        }
    }
    println!("{}", serde_json::json!({ "sizes": results }));
}
