"""The converted Gemma folder's tokenizer loads as written through AutoTokenizer (as vLLM loads it).

transformers 5 records the class GemmaTokenizer for the GGUF's Unigram tokenizer, and that class
rebuilds a BPE model from the vocabulary alone: text splits into single characters. A tiny
Unigram tokenizer saved the same way shows it, and `models._load_tokenizer_as_written` mends it.
"""

from __future__ import annotations

import json

from tokenizers import Tokenizer, pre_tokenizers
from tokenizers import models as tokenizer_models
from transformers import AutoTokenizer, PreTrainedTokenizerFast

from tetris_ext import models


def _gemma_like_folder(path):
    """A Unigram tokenizer with whole-word pieces, recorded as GemmaTokenizer (as save_pretrained
    records the GGUF's); returns the tokenizer as written."""
    vocab = [
        ("<pad>", 0.0),
        ("<eos>", 0.0),
        ("<bos>", 0.0),
        ("<unk>", 0.0),
        ("▁hello", -1.0),
        ("▁world", -1.0),
    ]
    vocab += [("▁", -2.0)] + [(c, -5.0) for c in "helowrd"]
    backend = Tokenizer(tokenizer_models.Unigram(vocab, unk_id=3))
    backend.pre_tokenizer = pre_tokenizers.Metaspace()
    written = PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<bos>", eos_token="<eos>", unk_token="<unk>", pad_token="<pad>"
    )
    written.save_pretrained(path)
    config_path = path / "tokenizer_config.json"
    config = json.loads(config_path.read_text()) | {"tokenizer_class": "GemmaTokenizer"}
    config_path.write_text(json.dumps(config))
    return written


def test_autotokenizer_loads_the_mended_folder_as_written(tmp_path):
    written = _gemma_like_folder(tmp_path)
    text = "hello world"
    assert written(text).input_ids == [4, 5]
    # The defect this guards against: the recorded class splits into characters.
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids != [4, 5]
    models._load_tokenizer_as_written(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text).input_ids == [4, 5]
    before = (tmp_path / "tokenizer_config.json").read_text()
    models._load_tokenizer_as_written(tmp_path)  # idempotent
    assert (tmp_path / "tokenizer_config.json").read_text() == before
