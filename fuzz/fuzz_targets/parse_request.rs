//! Untrusted request bodies: `/generate` and `/fine-tunes` JSON is parsed and validated exactly as the routes
//! do it. Any input must end in a value or an error naming a field, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use t2i_align::http::error::parse_json;
use t2i_align::http::schemas::GenerateRequest;
use t2i_align::jobs::gate::GateRule;
use t2i_align::jobs::spec::{FineTuneRequest, JobLimits};
use t2i_align::pipeline::request::{check_work, validate, ModelLimits, RequestLimits};
use t2i_align::pipeline::scheduler::SchedulerKind;

fuzz_target!(|data: &[u8]| {
    if let Ok(request) = parse_json::<GenerateRequest>(data) {
        let model = ModelLimits {
            size_multiple: 16,
            default_height: 64,
            default_width: 64,
            default_scheduler: SchedulerKind::Ddim,
            default_steps: 20,
            default_guidance_scale: 7.5,
            img2img: true,
            requires_init_image: false,
        };
        let limits = RequestLimits::default();
        if let Ok(params) = validate(request.into(), &model, &limits) {
            let _ = check_work(&params, params.num_images, &limits);
        }
    }
    if let Ok(request) = parse_json::<FineTuneRequest>(data) {
        let _ = request.validate("base".into(), &JobLimits::default(), &GateRule::default());
    }
});
