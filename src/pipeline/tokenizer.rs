//! The CLIP tokenizer, built with the `tokenizers` crate to behave as transformers' `CLIPTokenizer` does:
//! NFC, whitespace collapsed, lowercased, split by CLIP's regex, byte-level BPE with a `</w>` end-of-word suffix,
//! BOS/EOS added, truncated to `model_max_length` keeping EOS, then padded with the configured pad token.
//!
//! A folder with `tokenizer.json` uses that file's pipeline; otherwise the pipeline is assembled from
//! `vocab.json` + `merges.txt` (the files Optimum exports for Stable Diffusion 1.x).
//!
//! Before that, the text gets the character-level fixes of `ftfy.fix_text`, which the slow `CLIPTokenizer` runs
//! whenever ftfy is installed (it comes with open_clip, and diffusers pipelines load the slow class): curly
//! quotes become straight, Latin ligatures are spelled out, half- and full-width forms take standard width.
//! ftfy's heuristic repairs (mojibake, HTML entities) are not reproduced.

use std::borrow::Cow;
use std::path::Path;

use serde_json::Value;
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::replace::ReplacePattern;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::roberta::RobertaProcessing;
use tokenizers::{
    AddedToken, PaddingDirection, PaddingParams, PaddingStrategy, SplitDelimiterBehavior, Tokenizer,
    TruncationDirection, TruncationParams, TruncationStrategy,
};
use unicode_normalization::UnicodeNormalization;

use crate::error::{Error, Result};

/// CLIP's pre-tokenisation pattern (open_clip's SimpleTokenizer, case-insensitive because text is lowercased first).
const CLIP_SPLIT_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

const DEFAULT_BOS: &str = "<|startoftext|>";
const DEFAULT_EOS: &str = "<|endoftext|>";
const DEFAULT_MAX_LENGTH: usize = 77;

/// One encoded prompt: exactly `max_length` ids, and whether the prompt had to be cut.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenizedPrompt {
    pub ids: Vec<u32>,
    /// Tokens the prompt had before truncation, BOS and EOS included.
    pub untruncated_len: usize,
}

impl TokenizedPrompt {
    pub fn truncated(&self) -> bool {
        self.untruncated_len > self.ids.len()
    }
}

pub struct ClipTokenizer {
    /// Truncates and pads to `max_length`.
    tokenizer: Tokenizer,
    /// The same pipeline without truncation or padding, to tell how long the prompt really was.
    untruncated: Tokenizer,
    max_length: usize,
}

impl ClipTokenizer {
    /// Loads the `tokenizer/` folder of a diffusers/Optimum export.
    pub fn from_folder(folder: &Path) -> Result<Self> {
        let config = read_tokenizer_config(folder)?;
        let max_length = config
            .get("model_max_length")
            .and_then(Value::as_u64)
            .filter(|len| (2..=4096).contains(len))
            .map_or(DEFAULT_MAX_LENGTH, |len| len as usize);
        let bos = token_text(&config, "bos_token").unwrap_or_else(|| DEFAULT_BOS.to_string());
        let eos = token_text(&config, "eos_token").unwrap_or_else(|| DEFAULT_EOS.to_string());
        let pad = token_text(&config, "pad_token").unwrap_or_else(|| eos.clone());

        let tokenizer_json = folder.join("tokenizer.json");
        let mut tokenizer = if tokenizer_json.is_file() {
            Tokenizer::from_file(&tokenizer_json)
                .map_err(|err| Error::model(folder, format!("cannot read tokenizer.json: {err}")))?
        } else {
            let special_pad = pad_is_special(&config, &pad).then_some(pad.as_str());
            build_from_vocab(folder, &bos, &eos, special_pad)?
        };

        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(None)
            .map_err(|err| Error::model(folder, format!("cannot configure truncation: {err}")))?;
        let untruncated = tokenizer.clone();
        let pad_id = tokenizer
            .token_to_id(&pad)
            .ok_or_else(|| Error::model(folder, format!("pad token `{pad}` is not in the vocabulary")))?;
        tokenizer
            .with_truncation(Some(TruncationParams {
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                direction: TruncationDirection::Right,
                stride: 0,
            }))
            .map_err(|err| Error::model(folder, format!("cannot configure truncation: {err}")))?;
        tokenizer.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(max_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad,
        }));
        Ok(ClipTokenizer {
            tokenizer,
            untruncated,
            max_length,
        })
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Encodes one prompt to exactly `max_length` ids.
    pub fn encode(&self, prompt: &str) -> Result<TokenizedPrompt> {
        let text = fold_like_ftfy(prompt);
        let encode = |tokenizer: &Tokenizer| {
            tokenizer
                .encode(text.as_ref(), true)
                .map_err(|err| Error::Internal(format!("tokenizer failed: {err}")))
        };
        let untruncated_len = encode(&self.untruncated)?.len();
        let ids = encode(&self.tokenizer)?.get_ids().to_vec();
        Ok(TokenizedPrompt { ids, untruncated_len })
    }
}

/// ftfy's `fix_latin_ligatures`, `fix_character_width` and `uncurl_quotes`, in that order.
fn fold_like_ftfy(text: &str) -> Cow<'_, str> {
    if text.is_ascii() {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len());
    for ch in text.chars() {
        match ch {
            'Ĳ' => out.push_str("IJ"),
            'ĳ' => out.push_str("ij"),
            'ŉ' => out.push_str("ʼn"),
            'Ǳ' => out.push_str("DZ"),
            'ǲ' => out.push_str("Dz"),
            'ǳ' => out.push_str("dz"),
            'Ǆ' => out.push_str("DŽ"),
            'ǅ' => out.push_str("Dž"),
            'ǆ' => out.push_str("dž"),
            'Ǉ' => out.push_str("LJ"),
            'ǈ' => out.push_str("Lj"),
            'ǉ' => out.push_str("lj"),
            'Ǌ' => out.push_str("NJ"),
            'ǋ' => out.push_str("Nj"),
            'ǌ' => out.push_str("nj"),
            'ﬀ' => out.push_str("ff"),
            'ﬁ' => out.push_str("fi"),
            'ﬂ' => out.push_str("fl"),
            'ﬃ' => out.push_str("ffi"),
            'ﬄ' => out.push_str("ffl"),
            'ﬅ' => out.push_str("ſt"),
            'ﬆ' => out.push_str("st"),
            '\u{3000}' => out.push(' '),
            '\u{FF01}'..='\u{FFEF}' => out.extend(std::iter::once(ch).nfkc()),
            _ => out.push(ch),
        }
    }
    // uncurl_quotes runs after the width fix, so it also sees what the width fix produced.
    let out: String = out
        .chars()
        .map(|ch| match ch {
            '\u{02BC}' | '\u{2018}'..='\u{201B}' => '\'',
            '\u{201C}'..='\u{201F}' => '"',
            other => other,
        })
        .collect();
    Cow::Owned(out)
}

fn read_tokenizer_config(folder: &Path) -> Result<Value> {
    let path = folder.join("tokenizer_config.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|err| Error::model(folder, format!("cannot read tokenizer_config.json: {err}")))?;
    serde_json::from_str(&text)
        .map_err(|err| Error::model(folder, format!("tokenizer_config.json is not valid JSON: {err}")))
}

/// A special token is written either as a string or as an AddedToken object with `content`.
fn token_text(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(text) => Some(text.clone()),
        Value::Object(fields) => fields.get("content").and_then(Value::as_str).map(str::to_string),
        _ => None,
    }
}

/// Whether transformers matches the pad token as a special token before splitting: when
/// `added_tokens_decoder` lists it as special, or when the config has no `added_tokens_decoder` (older files,
/// whose special tokens transformers adds all). SDXL's second tokenizer pads with a special `!`; a folder
/// that pads like open_clip (id 0, `!`, with `!` in prompts left to BPE) lists only BOS and EOS there.
fn pad_is_special(config: &Value, pad: &str) -> bool {
    match config.get("added_tokens_decoder").and_then(Value::as_object) {
        None => true,
        Some(tokens) => tokens.values().any(|token| {
            token.get("content").and_then(Value::as_str) == Some(pad)
                && token.get("special").and_then(Value::as_bool).unwrap_or(false)
        }),
    }
}

/// The pipeline transformers' slow `CLIPTokenizer` runs. Its special tokens (BOS, EOS and, when `special_pad`
/// names it, the pad token) match before any splitting, as transformers' added tokens do: SDXL's second
/// tokenizer pads with `!`, so there a `!` in a prompt becomes the pad id (0), not BPE's `!</w>`.
fn build_from_vocab(folder: &Path, bos: &str, eos: &str, special_pad: Option<&str>) -> Result<Tokenizer> {
    let vocab = folder.join("vocab.json");
    let merges = folder.join("merges.txt");
    for file in [&vocab, &merges] {
        if !file.is_file() {
            return Err(Error::model(
                folder,
                format!(
                    "missing {} (a CLIP tokenizer needs tokenizer.json, or vocab.json and merges.txt)",
                    file.file_name().and_then(|name| name.to_str()).unwrap_or("?")
                ),
            ));
        }
    }
    let path_text = |path: &Path| path.to_string_lossy().into_owned();
    let bpe = BPE::from_file(&path_text(&vocab), &path_text(&merges))
        .unk_token(eos.to_string())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(|err| {
            Error::model(
                folder,
                format!("cannot build the BPE model from vocab.json/merges.txt: {err}"),
            )
        })?;

    let whitespace = Replace::new(ReplacePattern::Regex(r"\s+".to_string()), " ")
        .map_err(|err| Error::Internal(format!("whitespace pattern: {err}")))?;
    let normalizer = NormalizerSequence::new(vec![NFC.into(), whitespace.into(), Lowercase.into()]);
    let split = Split::new(
        SplitPattern::Regex(CLIP_SPLIT_PATTERN.to_string()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|err| Error::Internal(format!("CLIP split pattern: {err}")))?;
    let pre_tokenizer = PreTokenizerSequence::new(vec![split.into(), ByteLevel::new(false, false, false).into()]);

    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer
        .with_normalizer(Some(normalizer))
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevel::default()));
    let id = |token: &str| {
        tokenizer
            .token_to_id(token)
            .ok_or_else(|| Error::model(folder, format!("special token `{token}` is not in vocab.json")))
    };
    let (bos_id, eos_id) = (id(bos)?, id(eos)?);
    tokenizer.with_post_processor(Some(
        RobertaProcessing::new((eos.to_string(), eos_id), (bos.to_string(), bos_id))
            .trim_offsets(false)
            .add_prefix_space(false),
    ));
    let mut special = vec![AddedToken::from(bos, true), AddedToken::from(eos, true)];
    special.extend(special_pad.map(|pad| AddedToken::from(pad, true)));
    tokenizer.add_special_tokens(&special);
    Ok(tokenizer)
}

#[cfg(test)]
mod tests {
    use super::fold_like_ftfy;

    #[test]
    fn folds_what_ftfy_folds() {
        assert_eq!(fold_like_ftfy("don\u{2019}t \u{201C}stop\u{201D}"), "don't \"stop\"");
        assert_eq!(fold_like_ftfy("\u{FB01}ne"), "fine");
        assert_eq!(fold_like_ftfy("full\u{FF37}idth\u{3000}\u{FF21}"), "fullWidth A");
        assert_eq!(fold_like_ftfy("café 日本"), "café 日本");
    }
}
