"""The CLIP vocabulary must be OpenAI CLIP's, id for id."""

import json
from pathlib import Path

from t2i_trainer.common.clip_vocab import (
    BOS_TOKEN,
    CLIP_MERGE_COUNT,
    CLIP_VOCAB_SIZE,
    EOS_TOKEN,
    bytes_to_unicode,
    clip_merges,
    clip_vocab,
    write_clip_vocab_files,
)

# "a photo of a cat" through openai/clip-vit-large-patch14's tokenizer.
CAT_IDS = [49406, 320, 1125, 539, 320, 2368, 49407]
CAT_TOKENS = [BOS_TOKEN, "a</w>", "photo</w>", "of</w>", "a</w>", "cat</w>", EOS_TOKEN]


def exported_vocab(tiny_sd: Path) -> dict[str, int]:
    return json.loads((tiny_sd / "tokenizer" / "vocab.json").read_text(encoding="utf-8"))


def bpe_path() -> Path:
    import open_clip

    return Path(open_clip.tokenizer.default_bpe())


def test_bytes_to_unicode_maps_every_byte_to_a_distinct_character():
    table = bytes_to_unicode()
    assert sorted(table) == list(range(256))
    assert len(set(table.values())) == 256


def test_exported_vocab_has_clip_size_and_real_ids(tiny_sd):
    vocab = exported_vocab(tiny_sd)
    assert len(vocab) == CLIP_VOCAB_SIZE
    assert sorted(vocab.values()) == list(range(CLIP_VOCAB_SIZE))
    assert [vocab[token] for token in CAT_TOKENS] == CAT_IDS


def test_exported_vocab_starts_with_bytes_then_word_final_bytes(tiny_sd):
    vocab = exported_vocab(tiny_sd)
    byte_chars = list(bytes_to_unicode().values())
    assert [vocab[char] for char in byte_chars] == list(range(256))
    assert [vocab[char + "</w>"] for char in byte_chars] == list(range(256, 512))


def test_exported_merges_have_version_header_and_clip_merge_count(tiny_sd):
    lines = (tiny_sd / "tokenizer" / "merges.txt").read_text(encoding="utf-8").splitlines()
    assert lines[0] == "#version: 0.2"
    assert len(lines) - 1 == CLIP_MERGE_COUNT == 48894
    assert lines[1] == "i n"


def test_vocab_built_from_open_clip_bpe_is_the_exported_one(trainer_packages, tiny_sd, tmp_path):
    vocab_path, merges_path = write_clip_vocab_files(tmp_path, bpe_path())
    assert json.loads(vocab_path.read_text(encoding="utf-8")) == exported_vocab(tiny_sd)
    assert merges_path.read_text(encoding="utf-8") == (tiny_sd / "tokenizer" / "merges.txt").read_text(
        encoding="utf-8"
    )


def test_vocab_matches_open_clip_simple_tokenizer(trainer_packages):
    import open_clip

    # open_clip names its special tokens <start_of_text>/<end_of_text>; every other entry must agree.
    reference = open_clip.tokenizer.SimpleTokenizer().encoder
    vocab = clip_vocab(clip_merges(bpe_path()))
    ordinary = {token: index for token, index in vocab.items() if token not in (BOS_TOKEN, EOS_TOKEN)}
    assert ordinary == {token: index for token, index in reference.items() if index < 49406}


def test_exported_tokenizer_gives_real_clip_ids(trainer_packages, tiny_sd):
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd / "tokenizer"))
    assert tokenizer("a photo of a cat").input_ids == CAT_IDS
    assert tokenizer.model_max_length == 77
    assert tokenizer.pad_token_id == tokenizer.eos_token_id == tokenizer.unk_token_id == 49407
    assert tokenizer.bos_token_id == 49406


def test_exported_tokenizer_agrees_with_open_clip_on_plain_prompts(trainer_packages, tiny_sd):
    import open_clip
    from transformers import CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tiny_sd / "tokenizer"))
    reference = open_clip.tokenizer.SimpleTokenizer()
    for prompt in ["an astronaut riding a horse", "Hello, World! 3 red cubes", "the cat's toy isn't here"]:
        assert tokenizer(prompt).input_ids[1:-1] == reference.encode(prompt)
