//! Continuous batching end to end: concurrent requests share UNet calls, get the images they would get alone,
//! and one request leaving mid-denoise does not disturb the others.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{raw_request, Server};

fn decode_png(b64: &str) -> image::RgbImage {
    let bytes = base64::engine::general_purpose::STANDARD.decode(b64).expect("base64");
    image::load_from_memory(&bytes).expect("decodable PNG").to_rgb8()
}

/// The images of a /generate answer.
fn images(response: &common::Response) -> Vec<image::RgbImage> {
    assert_eq!(response.status, 200, "{}", response.text());
    response.json()["images"]
        .as_array()
        .expect("images")
        .iter()
        .map(|image| decode_png(image["png_base64"].as_str().expect("png_base64")))
        .collect()
}

/// Largest difference of one channel value between two images of the same size.
fn max_difference(a: &image::RgbImage, b: &image::RgbImage) -> u8 {
    assert_eq!(a.dimensions(), b.dimensions());
    a.as_raw()
        .iter()
        .zip(b.as_raw())
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0)
}

/// A batched call runs the same graph at another batch size, and ONNX Runtime's kernels may then round the
/// last float bits differently; tens of steps carry that into a few PNG levels at most. A wrong row, timestep
/// or noise stream would change the whole image (a mean of tens of levels). Which requests share which calls
/// depends on when they arrive: one composition of dpm++2m at 35 steps (a multistep solver, which carries
/// rounding further) measured a mean of 0.572 levels, so the mean allowed is 1.
fn assert_close(alone: &image::RgbImage, batched: &image::RgbImage, what: &str) {
    let difference = max_difference(alone, batched);
    let mean = alone
        .as_raw()
        .iter()
        .zip(batched.as_raw())
        .map(|(x, y)| f64::from(x.abs_diff(*y)))
        .sum::<f64>()
        / alone.as_raw().len() as f64;
    assert!(
        difference <= 8 && mean <= 1.0,
        "{what}: the batched image differs from the solo one by up to {difference} levels (mean {mean:.3})"
    );
}

/// Sends every body at once, each from its own thread, and returns the answers in order.
fn concurrently(port: u16, bodies: &[String]) -> Vec<common::Response> {
    let handles: Vec<_> = bodies
        .iter()
        .cloned()
        .map(|body| std::thread::spawn(move || common::request(port, "POST", "/generate", Some(&body)).unwrap()))
        .collect();
    handles.into_iter().map(|handle| handle.join().unwrap()).collect()
}

/// Requests of different prompts, step counts, schedulers and image counts, each sent alone and then all
/// together: together they must share UNet calls and still give each its own images.
fn check_shared_calls_match_solo_results(server: &Server) {
    let bodies: Vec<String> = [
        r#"{"prompt":"a red circle","steps":40,"seed":7,"scheduler":"ddim"}"#,
        r#"{"prompt":"two blue squares","steps":30,"seed":8,"n":2,"scheduler":"euler"}"#,
        r#"{"prompt":"a green star on a black background","steps":35,"seed":9,"scheduler":"dpm++2m"}"#,
        r#"{"prompt":"three yellow triangles","steps":40,"seed":10,"scheduler":"euler_a","guidance_scale":1.0}"#,
    ]
    .map(String::from)
    .to_vec();
    let solo: Vec<Vec<image::RgbImage>> = bodies
        .iter()
        .map(|body| images(&server.post_json("/generate", body)))
        .collect();
    let before = server.get("/metrics").text();
    let together = concurrently(server.port, &bodies);
    let after = server.get("/metrics").text();
    for ((body, alone), response) in bodies.iter().zip(&solo).zip(&together) {
        let batched = images(response);
        assert_eq!(batched.len(), alone.len(), "{body}");
        for (a, b) in alone.iter().zip(&batched) {
            assert_close(a, b, body);
        }
    }
    let calls = common::metric(&after, "t2i_unet_batch_requests_count")
        - common::metric(&before, "t2i_unet_batch_requests_count");
    let members =
        common::metric(&after, "t2i_unet_batch_requests_sum") - common::metric(&before, "t2i_unet_batch_requests_sum");
    assert!(
        members > calls,
        "concurrent requests never shared a UNet call: {members} request-steps in {calls} calls"
    );
    let steps: f64 = 40.0 + 30.0 + 35.0 + 40.0;
    assert!(
        calls < steps,
        "{calls} UNet calls for {steps} request-steps: no batching happened"
    );
}

#[test]
fn requests_at_different_steps_share_calls_with_a_per_row_timestep() {
    // tiny-sd-legacy's UNet takes an int64 timestep per row: units at any step share a call.
    let server = Server::start_with_model(&common::tiny_sd_legacy(), &[]);
    assert!(
        server.log().contains("the UNet takes a timestep per row"),
        "{}",
        server.log()
    );
    check_shared_calls_match_solo_results(&server);
}

#[test]
fn a_scalar_timestep_batches_only_same_step_requests_and_says_so() {
    // tiny-sd is Optimum's default export: one float timestep per call.
    let server = Server::start(&[]);
    assert!(
        server.log().contains("only requests at the same timestep share a call"),
        "{}",
        server.log()
    );
    // Identical step schedules that arrive together run in step; results still match the solo ones.
    let bodies: Vec<String> = (0..3)
        .map(|index| format!(r#"{{"prompt":"shape {index}","steps":30,"seed":{index},"scheduler":"ddim"}}"#))
        .collect();
    let solo: Vec<_> = bodies
        .iter()
        .map(|body| images(&server.post_json("/generate", body)))
        .collect();
    for (alone, response) in solo.iter().zip(concurrently(server.port, &bodies)) {
        assert_close(&alone[0], &images(&response)[0], "scalar timestep");
    }
}

#[test]
fn a_request_cancelled_mid_denoise_leaves_and_the_others_finish() {
    // The abandoned request is long (900 steps of 8 images), so it cannot finish before its client leaves.
    let server = Server::start_with_model(&common::tiny_sd_legacy(), &["--max-steps", "1000"]);
    let port = server.port;
    let survivor = r#"{"prompt":"a red circle","steps":150,"seed":3}"#.to_string();
    let alone = images(&server.post_json("/generate", &survivor));
    let generated_before = common::metric(&server.get("/metrics").text(), "t2i_images_generated_total");
    let handle = {
        let survivor = survivor.clone();
        std::thread::spawn(move || common::request(port, "POST", "/generate", Some(&survivor)).unwrap())
    };
    {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let body = r#"{"prompt":"abandoned","steps":900,"n":8,"seed":4}"#;
        stream
            .write_all(raw_request("POST", "/generate", Some(body)).as_bytes())
            .unwrap();
        // Long enough to be admitted and denoised beside the survivor for a while.
        std::thread::sleep(Duration::from_millis(300));
    }
    let response = handle.join().unwrap();
    assert_close(&alone[0], &images(&response)[0], &survivor);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let metrics = server.get("/metrics").text();
        if metrics.contains("t2i_requests_dropped_total{reason=\"client_disconnected\"} 1") {
            let generated = common::metric(&metrics, "t2i_images_generated_total") - generated_before;
            assert_eq!(generated, 1.0, "only the survivor's image was made");
            assert_eq!(common::metric(&metrics, "t2i_active_requests"), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the abandoned request never left:\n{metrics}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The worker goes on serving.
    assert_eq!(server.post_json("/generate", &survivor).status, 200);
}
