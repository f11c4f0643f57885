"""Shared fixtures: the real SmolLM2 tokenizer (read from the bundled GGUF, no network) and a tiny random Llama
(`helpers.tiny_llama`) saved as a local checkpoint so the CLI can load it with `--model DIR`."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers import tiny_llama

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True, scope="session")
def _one_thread():
    """Tiny models run as fast on one intra-op thread, and 2 OpenMP threads slow down ~50x when the 2 cores are
    busy with other work."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(autouse=True, scope="session")
def _short_probe_generation():
    """Every validation of a training run samples one comment per probe video (`vrp.train.probes`), up to 150 tokens;
    a random tiny model never stops, so each would take seconds. 8 new tokens keep the whole code path."""
    import vrp.train.probes

    budget = vrp.train.probes.GENERATE_MAX_NEW_TOKENS
    vrp.train.probes.GENERATE_MAX_NEW_TOKENS = 8
    yield
    vrp.train.probes.GENERATE_MAX_NEW_TOKENS = budget


@pytest.fixture(scope="session")
def tokenizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with the SmolLM2-135M-Instruct tokenizer (chat template included), extracted from the GGUF."""
    from transformers import AutoTokenizer

    from vrp.model import bundled_gguf_path

    gguf = bundled_gguf_path()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    out = tmp_path_factory.mktemp("tokenizer")
    tok.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def tokenizer(tokenizer_dir: Path):
    """The real SmolLM2 tokenizer: BOS `<|im_start|>`=1, EOS `<|im_end|>`=2, pad == EOS."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tokenizer_dir)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer) -> Path:
    """A saved tiny random Llama checkpoint + tokenizer, loadable with `--model DIR`."""
    out = tmp_path_factory.mktemp("tiny-llama")
    model = tiny_llama(tokenizer)
    model.save_pretrained(out)
    model.generation_config.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out
