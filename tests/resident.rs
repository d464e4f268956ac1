//! The device-resident denoising loop (issue #29, item 3) against the host loop it replaces: the same requests
//! through both, on the CPU provider (where "the device" is host memory and the same code runs), give the same
//! images to within one level of 8-bit rounding. Every family's conditioning (SD 1.x, the legacy int64
//! timestep, SDXL's pooled embeddings and time ids, the refiner's aesthetic scores and img2img, LCM's guidance
//! embedding), every scheduler, and units of different requests sharing UNet calls.

mod common;

use std::path::Path;
use std::sync::Arc;

use t2i_align::pipeline::request::InitImage;
use t2i_align::pipeline::scheduler::SchedulerKind;
use t2i_align::pipeline::{GenerateParams, ModelFolder, Pipeline, Sampled};
use t2i_align::runtime::{Device, ResidentLoop, Runtime, SessionSettings};

/// The same model loaded twice: on the host loop, and on the resident loop.
fn pipelines(model: &Path) -> (Pipeline, Pipeline) {
    let load = |resident_loop| {
        let settings = SessionSettings {
            resident_loop,
            ..SessionSettings::default()
        };
        let mut runtime = Runtime::init(Some(&common::ort_dylib()), Device::Cpu, settings).unwrap();
        Pipeline::load(&mut runtime, Arc::new(ModelFolder::open(model).unwrap())).unwrap()
    };
    (load(ResidentLoop::Off), load(ResidentLoop::On))
}

fn params(scheduler: SchedulerKind, steps: usize, images: usize, seed: u64) -> GenerateParams {
    GenerateParams {
        prompt: "a red circle on a blue background".into(),
        negative_prompt: "green".into(),
        num_images: images,
        steps,
        guidance_scale: 6.0,
        scheduler,
        seed,
        width: 64,
        height: 64,
        eta: 0.0,
        guidance_rescale: 0.0,
        aesthetic_score: None,
        init: None,
    }
}

/// One request alone, through `begin`, `step` and `finish`, saying whether it ran resident.
fn run(pipeline: &mut Pipeline, params: &GenerateParams) -> (Sampled, bool) {
    let latents = pipeline.initial_latents(params);
    let mut unit = pipeline.begin(vec![(params.clone(), latents)]).pop().unwrap().unwrap();
    let resident = unit.is_resident();
    while !unit.finished() {
        pipeline.step(&mut [&mut unit]).unwrap();
    }
    (pipeline.finish(vec![unit]).pop().unwrap().unwrap(), resident)
}

fn assert_same_images(what: &str, host: &Sampled, resident: &Sampled) {
    assert_eq!(host.images.len(), resident.images.len(), "{what}");
    for (a, b) in host.images.iter().zip(&resident.images) {
        let worst = common::max_level_difference(a.rgb.as_raw(), b.rgb.as_raw());
        assert!(worst <= 1, "{what}, image {}: the loops differ by {worst}/255", a.index);
    }
}

#[test]
fn every_scheduler_matches_the_host_loop() {
    let (mut host, mut resident) = pipelines(&common::shapes_sd());
    for scheduler in SchedulerKind::ALL {
        // LCM's schedule on an SD model is still a schedule: the arithmetic is what is compared.
        for (steps, images) in [(1, 1), (9, 2)] {
            let request = GenerateParams {
                eta: if scheduler == SchedulerKind::Ddim { 0.7 } else { 0.0 },
                ..params(scheduler, steps, images, 11)
            };
            let (a, on_host) = run(&mut host, &request);
            let (b, on_device) = run(&mut resident, &request);
            assert!(
                !on_host && on_device,
                "{scheduler}: host {on_host}, resident {on_device}"
            );
            assert_same_images(&format!("{scheduler}, {steps} steps"), &a, &b);
        }
    }
}

#[test]
fn every_family_matches_the_host_loop() {
    let cases: Vec<(&str, std::path::PathBuf, GenerateParams)> = vec![
        (
            "legacy int64 timestep",
            common::tiny_sd_legacy(),
            params(SchedulerKind::Pndm, 6, 2, 3),
        ),
        (
            "sdxl",
            common::repo_path("models/tiny-sdxl"),
            params(SchedulerKind::Euler, 5, 2, 4),
        ),
        ("lcm", common::repo_path("models/tiny-lcm"), {
            let mut request = params(SchedulerKind::Lcm, 4, 2, 5);
            request.guidance_scale = 8.0;
            request
        }),
    ];
    for (what, model, request) in cases {
        let (mut host, mut resident) = pipelines(&model);
        let (a, _) = run(&mut host, &request);
        let (b, on_device) = run(&mut resident, &request);
        assert!(on_device, "{what} did not run resident");
        assert_same_images(what, &a, &b);
    }
}

#[test]
fn img2img_and_the_refiner_match_the_host_loop() {
    let start = image::RgbImage::from_fn(64, 64, |x, y| image::Rgb([(x * 4) as u8, (y * 4) as u8, 128]));
    for (what, model) in [
        ("img2img", common::tiny_sd()),
        ("refiner", common::repo_path("models/tiny-sdxl-refiner")),
    ] {
        let (mut host, mut resident) = pipelines(&model);
        let mut request = params(SchedulerKind::DpmSolverMultistep, 8, 2, 6);
        let size = host.limits().default_width;
        request.width = size;
        request.height = size;
        request.init = Some(Arc::new(InitImage::new(&start, size, size, 0.6)));
        let (a, _) = run(&mut host, &request);
        let (b, on_device) = run(&mut resident, &request);
        assert!(on_device, "{what} did not run resident");
        assert_same_images(what, &a, &b);
    }
}

/// Units of three requests (different prompts, image counts, with and without guidance) share every UNet
/// call, and each still gets the images it gets alone on the host; on an export that takes a timestep per
/// row, a fourth joins two steps late and shares the calls too.
#[test]
fn units_sharing_calls_match_each_request_alone() {
    for model in [common::shapes_sd(), common::tiny_sd()] {
        let (mut host, mut resident) = pipelines(&model);
        let mut requests = vec![
            params(SchedulerKind::Ddim, 8, 1, 21),
            GenerateParams {
                prompt: "three green squares".into(),
                guidance_scale: 1.0,
                ..params(SchedulerKind::Ddim, 8, 2, 22)
            },
            params(SchedulerKind::Ddim, 8, 2, 23),
        ];
        let per_row = resident.per_row_timesteps();
        if per_row {
            requests.push(params(SchedulerKind::Euler, 6, 1, 24));
        }
        let alone: Vec<Sampled> = requests.iter().map(|request| run(&mut host, request).0).collect();
        let begin = |pipeline: &mut Pipeline, request: &GenerateParams| {
            let latents = pipeline.initial_latents(request);
            pipeline.begin(vec![(request.clone(), latents)]).pop().unwrap().unwrap()
        };
        let mut units: Vec<_> = requests[..3]
            .iter()
            .map(|request| begin(&mut resident, request))
            .collect();
        let mut calls = 0;
        let mut shared = 0;
        while units.iter().any(|unit| !unit.finished()) {
            if per_row && calls == 2 {
                units.push(begin(&mut resident, &requests[3]));
            }
            let mut batch: Vec<&mut _> = units.iter_mut().filter(|unit| !unit.finished()).collect();
            shared = shared.max(batch.len());
            resident.step(&mut batch).unwrap();
            calls += 1;
        }
        assert_eq!(shared, requests.len(), "{}: every unit shared a call", model.display());
        let results = resident.finish(units);
        for ((request, alone), together) in requests.iter().zip(&alone).zip(results) {
            let what = format!("{} seed {}", model.display(), request.seed);
            assert_same_images(&what, alone, &together.unwrap());
        }
    }
}

#[test]
fn clamping_schedulers_and_guidance_rescale_stay_on_the_host() {
    let (_, mut resident) = pipelines(&common::shapes_sd());
    let request = GenerateParams {
        guidance_rescale: 0.7,
        ..params(SchedulerKind::Euler, 4, 1, 9)
    };
    let (_, on_device) = run(&mut resident, &request);
    assert!(!on_device, "guidance_rescale is not linear and must run on the host");
}

/// Through the server: concurrent requests on `--resident-loop on` (sharing the batcher's calls) get the images
/// `--resident-loop off` gives them, and a bad value is refused by name.
#[test]
fn the_server_serves_both_loops_alike() {
    let bodies: Vec<String> = (0..3)
        .map(|seed| {
            format!(
                r#"{{"prompt":"a red circle","steps":8,"seed":{seed},"n":{},"scheduler":"dpm++2m"}}"#,
                1 + seed % 2
            )
        })
        .collect();
    let images = |flag: &str| {
        let server = common::Server::start(&["--no-reward-model", "--resident-loop", flag]);
        let responses: Vec<common::Response> = std::thread::scope(|scope| {
            let handles: Vec<_> = bodies
                .iter()
                .map(|body| scope.spawn(|| server.post_json("/generate", body)))
                .collect();
            handles.into_iter().map(|handle| handle.join().unwrap()).collect()
        });
        responses
            .iter()
            .map(|response| {
                assert_eq!(response.status, 200, "{}", response.text());
                common::generated_images(response)
            })
            .collect::<Vec<_>>()
    };
    let (host, device) = (images("off"), images("on"));
    for (a, b) in host.iter().flatten().zip(device.iter().flatten()) {
        let worst = common::max_level_difference(a.as_raw(), b.as_raw());
        // Batched calls may round the last bits differently (tests/batching.rs allows a few levels).
        assert!(worst <= 3, "the loops differ by {worst}/255");
    }
    assert_eq!(host.iter().flatten().count(), 4);
    let refused = std::process::Command::new(common::binary())
        .args(["serve", "--resident-loop", "sometimes"])
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--resident-loop"));
}

/// A pipeline that leaves the resident loop (as a worker whose warm-up failed on it under `auto` does) runs
/// the units it begins from then on on the host, with the same images.
#[test]
fn a_pipeline_can_leave_the_resident_loop() {
    let (mut host, mut resident) = pipelines(&common::shapes_sd());
    assert!(resident.resident_loop() && !host.resident_loop());
    // `on`, not `auto`: a failure must stand, not fall back.
    assert!(!resident.resident_loop_by_auto());
    let request = params(SchedulerKind::Euler, 5, 1, 31);
    let (on_device, was_resident) = run(&mut resident, &request);
    assert!(was_resident);
    resident.leave_resident_loop();
    assert!(!resident.resident_loop());
    let (after, still_resident) = run(&mut resident, &request);
    assert!(!still_resident);
    assert_same_images("after leaving", &on_device, &after);
    assert_same_images("against the host pipeline", &run(&mut host, &request).0, &after);
}
