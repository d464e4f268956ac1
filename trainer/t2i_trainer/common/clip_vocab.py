"""OpenAI CLIP's BPE vocabulary, rebuilt from the merges file that open-clip-torch ships.

Standard library only, so the Rust project's lightweight test environment can import it.
"""

import gzip
import json
from pathlib import Path

BOS_TOKEN = "<|startoftext|>"
EOS_TOKEN = "<|endoftext|>"
CLIP_VOCAB_SIZE = 49408
# OpenAI CLIP keeps the first 49152 - 256 - 2 merges of the BPE file (line 0 is a version header).
CLIP_MERGE_COUNT = 49152 - 256 - 2


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible map from bytes to printable unicode characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codepoints = printable[:]
    shift = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            codepoints.append(256 + shift)
            shift += 1
    return dict(zip(printable, (chr(c) for c in codepoints), strict=True))


def clip_merges(bpe_path: Path) -> list[tuple[str, str]]:
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    return [tuple(line.split()) for line in lines[1 : CLIP_MERGE_COUNT + 1]]


def clip_vocab(merges: list[tuple[str, str]]) -> dict[str, int]:
    """CLIP's encoder in SimpleTokenizer's order: bytes, bytes + '</w>', merges, special tokens."""
    byte_chars = list(bytes_to_unicode().values())
    tokens = byte_chars + [char + "</w>" for char in byte_chars]
    tokens += ["".join(merge) for merge in merges]
    tokens += [BOS_TOKEN, EOS_TOKEN]
    return {token: index for index, token in enumerate(tokens)}


def write_clip_vocab_files(folder: Path, bpe_path: Path) -> tuple[Path, Path]:
    """Write vocab.json and merges.txt in the layout of openai/clip-vit-large-patch14."""
    merges = clip_merges(bpe_path)
    vocab = clip_vocab(merges)
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary must have {CLIP_VOCAB_SIZE} entries. Built: {len(vocab)}")
    folder.mkdir(parents=True, exist_ok=True)
    vocab_path = folder / "vocab.json"
    merges_path = folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_path.write_text(
        "#version: 0.2\n" + "".join(f"{left} {right}\n" for left, right in merges), encoding="utf-8"
    )
    return vocab_path, merges_path
