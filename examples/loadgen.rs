//! A closed-loop HTTP load generator for `make bench`: `--concurrency` clients, each sending the next request as
//! soon as its last one is answered, over kept-alive connections, for `--requests` requests in all (after
//! `--warmup` untimed ones per client). Prints one JSON object: requests, errors, status counts, wall seconds,
//! requests per second, and latency percentiles in milliseconds.
//!
//! ```sh
//! cargo run --release --example loadgen -- --url http://127.0.0.1:8080/generate \
//!     --body '{"prompt":"a red circle"}' --concurrency 8 --requests 64
//! ```

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

struct Args {
    url: String,
    body: String,
    concurrency: usize,
    requests: usize,
    warmup: usize,
}

fn parse_args() -> Result<Args, String> {
    let mut args = Args {
        url: String::new(),
        body: String::new(),
        concurrency: 1,
        requests: 16,
        warmup: 1,
    };
    let mut values = std::env::args().skip(1);
    while let Some(flag) = values.next() {
        let mut value = || values.next().ok_or_else(|| format!("{flag} needs a value"));
        let number = |text: String, name: &str| {
            text.parse::<usize>()
                .map_err(|_| format!("{name} must be a whole number. Given: {text}"))
        };
        match flag.as_str() {
            "--url" => args.url = value()?,
            "--body" => args.body = value()?,
            "--body-file" => {
                let path = value()?;
                args.body = std::fs::read_to_string(&path).map_err(|err| format!("--body-file {path}: {err}"))?;
            }
            "--concurrency" => args.concurrency = number(value()?, "--concurrency")?.max(1),
            "--requests" => args.requests = number(value()?, "--requests")?.max(1),
            "--warmup" => args.warmup = number(value()?, "--warmup")?,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    if args.url.is_empty() || args.body.is_empty() {
        return Err("--url and --body (or --body-file) are required".into());
    }
    Ok(args)
}

/// One request; returns the status (0 for a transport error) and the time it took.
fn send(agent: &ureq::Agent, url: &str, body: &str) -> (u16, Duration) {
    let started = Instant::now();
    let status = match agent
        .post(url)
        .set("Content-Type", "application/json")
        .send_string(body)
    {
        Ok(response) => {
            let status = response.status();
            // Read the whole body, as a real client would.
            let _ = response.into_string();
            status
        }
        Err(ureq::Error::Status(status, response)) => {
            let _ = response.into_string();
            status
        }
        Err(_) => 0,
    };
    (status, started.elapsed())
}

fn percentile(sorted: &[f64], share: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (share * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

fn main() {
    let args = match parse_args() {
        Ok(args) => args,
        Err(message) => {
            eprintln!("loadgen: {message}");
            std::process::exit(2);
        }
    };
    let args = Arc::new(args);
    let next = Arc::new(AtomicUsize::new(0));
    let agents: Vec<ureq::Agent> = (0..args.concurrency)
        .map(|_| ureq::AgentBuilder::new().timeout(Duration::from_secs(600)).build())
        .collect();
    // Warm-up: every client's connection is open and the server has seen each client once.
    std::thread::scope(|scope| {
        for agent in &agents {
            let args = args.clone();
            scope.spawn(move || {
                for _ in 0..args.warmup {
                    send(agent, &args.url, &args.body);
                }
            });
        }
    });
    let started = Instant::now();
    let results: Vec<(u16, Duration)> = std::thread::scope(|scope| {
        let handles: Vec<_> = agents
            .iter()
            .map(|agent| {
                let args = args.clone();
                let next = next.clone();
                scope.spawn(move || {
                    let mut mine = Vec::new();
                    while next.fetch_add(1, Ordering::Relaxed) < args.requests {
                        mine.push(send(agent, &args.url, &args.body));
                    }
                    mine
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap_or_default())
            .collect()
    });
    let seconds = started.elapsed().as_secs_f64();
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for (status, _) in &results {
        *statuses.entry(status.to_string()).or_default() += 1;
    }
    let mut ok: Vec<f64> = results
        .iter()
        .filter(|(status, _)| *status == 200)
        .map(|(_, elapsed)| elapsed.as_secs_f64() * 1e3)
        .collect();
    ok.sort_by(f64::total_cmp);
    let summary = serde_json::json!({
        "concurrency": args.concurrency,
        "requests": results.len(),
        "ok": ok.len(),
        "errors": results.len() - ok.len(),
        "statuses": statuses,
        "seconds": seconds,
        "requests_per_second": ok.len() as f64 / seconds,
        "mean_ms": if ok.is_empty() { f64::NAN } else { ok.iter().sum::<f64>() / ok.len() as f64 },
        "p50_ms": percentile(&ok, 0.50),
        "p90_ms": percentile(&ok, 0.90),
        "p99_ms": percentile(&ok, 0.99),
    });
    println!("{summary}");
}
