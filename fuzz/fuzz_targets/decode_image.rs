//! Untrusted image bytes, as `/score`, `/rerank` and `/feedback` receive them: decoding must answer an error
//! (never panic, never allocate past the pixel limit, which is checked from the header before decoding).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = t2i_align::reward::preprocess::decode_image(data, 1 << 20, "image");
});
