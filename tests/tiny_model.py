"""A tiny randomly initialised BERT saved as a sentence-transformers model, for tests of adding, locking and serving
a model by its pin with no network: 32 dimensions, query/document prompts and Matryoshka sizes in its config."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

TINY_DIMENSION = 32
TINY_MATRYOSHKA = (32, 16, 8)
TINY_PROMPTS = {"query": "query: ", "document": "passage: "}
TINY_MAX_SEQ_LENGTH = 64
WORDS = (
    "query passage the a of and to in is for on with at by from meeting jazz night harbour market farmers ada "
    "lovelace jane doe acme corp budget review office lisbon quartet doors open cinema pier note follow up call "
    "event contact email phone city music art food hello world search document"
).split()


def save_tiny_model(folder: Path, seed: int = 0) -> Path:
    """Write the model into `folder` (its own random weights for each seed) and return it."""
    import torch

    torch.manual_seed(seed)
    with tempfile.TemporaryDirectory(prefix="tiny-bert-source-") as tmp:
        _save(folder, Path(tmp))
    settings = folder / "config_sentence_transformers.json"
    document = json.loads(settings.read_text())
    document["matryoshka_dimensions"] = list(TINY_MATRYOSHKA)
    settings.write_text(json.dumps(document, indent=2))
    return folder


def _save(folder: Path, source: Path) -> None:
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocabulary = specials + list(dict.fromkeys([*WORDS, ":", ",", ".", *"abcdefghijklmnopqrstuvwxyz0123456789"]))
    (source / "vocab.txt").write_text("\n".join(vocabulary) + "\n")
    tokenizer = BertTokenizerFast(vocab_file=str(source / "vocab.txt"), do_lower_case=True)
    config = BertConfig(
        vocab_size=len(vocabulary),
        hidden_size=TINY_DIMENSION,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    BertModel(config).save_pretrained(source)
    tokenizer.save_pretrained(source)
    transformer = Transformer(str(source), max_seq_length=TINY_MAX_SEQ_LENGTH)
    model = SentenceTransformer(
        modules=[transformer, Pooling(TINY_DIMENSION, "mean"), Normalize()], prompts=dict(TINY_PROMPTS), device="cpu"
    )
    model.save(str(folder))
