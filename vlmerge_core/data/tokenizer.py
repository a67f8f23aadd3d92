"""WordPiece tokenizer of the micro-world, built as a HuggingFace ``tokenizers`` WordPiece model.

Loaded through ``transformers.PreTrainedTokenizerFast`` so that a local BERT vocabulary (a folder
with ``vocab.txt`` or ``tokenizer.json``) can be used instead by giving its path.
Special tokens: [PAD]=0, [UNK]=1, [CLS]=2, [SEP]=3, [MASK]=4; every encoding is ``[CLS] text [SEP]``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from vlmerge_core.io import atomic_write

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def learn_wordpiece_vocab(word_counts: Counter, vocab_size: int) -> list[str]:
    """WordPiece vocabulary by greedy pair merges (the procedure of HF ``WordPieceTrainer``).

    Start from the specials, the word-initial characters and the ``##``-prefixed inner characters;
    repeatedly merge the most frequent adjacent pair (ties broken by the pair's strings) until
    ``vocab_size`` entries or no pair is left. Written here because the ``tokenizers`` trainer
    breaks frequency ties in hash-map order, so its vocabulary differs between processes.
    """
    words = {w: [w[0]] + [f"##{c}" for c in w[1:]] for w in word_counts}
    vocab = list(SPECIAL_TOKENS)
    vocab += sorted({s for sym in words.values() for s in sym if not s.startswith("##")} - set(vocab))
    vocab += sorted({s for sym in words.values() for s in sym if s.startswith("##")})
    known = set(vocab)
    while len(vocab) < vocab_size:
        pairs: Counter = Counter()
        for w, sym in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[a, b] += word_counts[w]
        if not pairs:
            break
        (a, b), _ = min(pairs.items(), key=lambda kv: (-kv[1], kv[0]))
        merged = a + b[2:]
        for w, sym in words.items():
            i, out = 0, []
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(merged)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[w] = out
        if merged not in known:
            vocab.append(merged)
            known.add(merged)
    return vocab


def train_tokenizer(texts: Iterable[str], vocab_size: int):
    """A BERT-style WordPiece ``tokenizers.Tokenizer`` for ``texts`` (deterministic for a corpus)."""
    from tokenizers import (  # on use: training only
        Tokenizer,
        decoders,
        normalizers,
        pre_tokenizers,
        processors,
    )
    from tokenizers.models import WordPiece  # on use: training only

    normalizer = normalizers.BertNormalizer(
        lowercase=True, clean_text=True, handle_chinese_chars=False, strip_accents=True
    )
    pre = pre_tokenizers.BertPreTokenizer()
    counts: Counter = Counter()
    for text in texts:
        counts.update(w for w, _ in pre.pre_tokenize_str(normalizer.normalize_str(text)))
    vocab = learn_wordpiece_vocab(counts, vocab_size)
    tok = Tokenizer(
        WordPiece(vocab={t: i for i, t in enumerate(vocab)}, unk_token="[UNK]", max_input_chars_per_word=100)
    )
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre, decoders.WordPiece(prefix="##")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab.index("[CLS]")), ("[SEP]", vocab.index("[SEP]"))],
    )
    return tok


def save_tokenizer(tok, path: str | Path) -> Path:
    """Write ``tokenizer.json`` atomically."""
    with atomic_write(path) as fh:
        fh.write(tok.to_str(pretty=True) + "\n")
    return Path(path)


def load_tokenizer(path: str | Path):
    """A ``transformers.PreTrainedTokenizerFast`` from a ``tokenizer.json`` file or a folder.

    A folder may hold ``tokenizer.json`` (ours or any fast tokenizer) or a BERT ``vocab.txt``.
    """
    from transformers import BertTokenizerFast, PreTrainedTokenizerFast  # heavy: seconds to import

    path = Path(path)
    if path.is_dir():
        if (path / "tokenizer.json").exists():
            path = path / "tokenizer.json"
        elif (path / "vocab.txt").exists():
            return BertTokenizerFast.from_pretrained(str(path), local_files_only=True)
        else:
            raise FileNotFoundError(f"{path}: no tokenizer.json or vocab.txt in this folder")
    if not path.exists():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    return PreTrainedTokenizerFast(
        tokenizer_file=str(path),
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )


class TokenizerMismatchError(ValueError):
    """A checkpoint was pre-trained with another tokenizer than the one given to fine-tune it."""


def tokenizer_identity(tok: Any, name: str) -> dict[str, Any]:
    """What a checkpoint records of its tokenizer: ``{"name", "vocab_size", "sha256"}``.

    ``sha256`` hashes the vocabulary (every token with its id), so two files of the same vocabulary
    agree wherever they live, and two vocabularies that give one id two meanings never do.
    """
    vocab = sorted(tok.get_vocab().items(), key=lambda kv: (kv[1], kv[0]))
    digest = hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode("utf-8")).hexdigest()
    return {"name": str(name), "vocab_size": len(vocab), "sha256": digest[:16]}


def load_identified_tokenizer(path: str | Path) -> tuple[Any, dict[str, Any]]:
    """:func:`load_tokenizer` of ``path`` and its identity, named after the file or folder."""
    tok = load_tokenizer(path)
    return tok, tokenizer_identity(tok, Path(path).name)


def describe_tokenizer(identity: Mapping[str, Any]) -> str:
    """One line naming a tokenizer identity, for messages."""
    return f"{identity.get('name', '?')} (vocab {identity.get('vocab_size', '?')}, sha256 {identity.get('sha256', '?')})"


def check_tokenizer(recorded: Mapping[str, Any] | None, given: Mapping[str, Any], source: str) -> None:
    """Refuse a tokenizer whose vocabulary differs from the one ``source`` was pre-trained with.

    A checkpoint without a record (a random model, a converted file given no tokenizer) passes.

    Raises:
        TokenizerMismatchError: names the checkpoint and both tokenizers.
    """
    if not recorded or recorded.get("sha256") == given.get("sha256"):
        return
    raise TokenizerMismatchError(
        f"{source}: pre-trained with tokenizer {describe_tokenizer(recorded)}, but given "
        f"{describe_tokenizer(given)}: token ids would mean other words; fine-tune with the "
        "pre-training tokenizer (finetune.real_paths.tokenizer, or the world's tokenizer.json)"
    )
