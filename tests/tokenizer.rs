//! Our CLIP tokenizer against transformers' `CLIPTokenizer` on the golden prompts (tests/golden/tokenizer.json,
//! written by t2i_trainer.goldens.make_goldens).

mod common;

use t2i_align::pipeline::tokenizer::ClipTokenizer;

fn check_folder(folder: &std::path::Path) {
    let golden = common::read_json("tests/golden/tokenizer.json");
    let tokenizer = ClipTokenizer::from_folder(folder).expect("tokenizer loads");
    assert_eq!(
        tokenizer.max_length() as u64,
        golden["model_max_length"].as_u64().unwrap()
    );
    let cases = golden["cases"].as_array().unwrap();
    assert!(cases.len() >= 60, "the golden file should hold at least 60 prompts");
    let mut failures = Vec::new();
    for case in cases {
        let prompt = case["prompt"].as_str().unwrap();
        let expected = common::ids(&case["input_ids"]);
        let encoded = tokenizer.encode(prompt).unwrap();
        if encoded.ids != expected {
            failures.push(format!(
                "{prompt:?}\n  ours:   {:?}\n  theirs: {:?}",
                encoded.ids, expected
            ));
        }
        let untruncated = case["num_tokens_untruncated"].as_u64().unwrap() as usize;
        if encoded.untruncated_len != untruncated {
            failures.push(format!(
                "{prompt:?}: length {} != {untruncated}",
                encoded.untruncated_len
            ));
        }
        assert_eq!(encoded.truncated(), untruncated > 77);
    }
    assert!(
        failures.is_empty(),
        "{} of {} prompts differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn matches_transformers_on_golden_prompts() {
    check_folder(&common::tiny_sd().join("tokenizer"));
}

/// Without tokenizer.json the pipeline is assembled from vocab.json + merges.txt; it must agree as well.
#[test]
fn vocab_and_merges_alone_match_too() {
    let dir = tempfile::tempdir().unwrap();
    let source = common::tiny_sd().join("tokenizer");
    for file in ["vocab.json", "merges.txt", "tokenizer_config.json"] {
        std::fs::copy(source.join(file), dir.path().join(file)).unwrap();
    }
    check_folder(dir.path());
}
