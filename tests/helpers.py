"""Helpers shared by several test modules (fixtures live in conftest.py): a tiny random Llama, seed-format xlsx
files, a caption file, dataset dirs and training configs for tiny runs, a live uvicorn server and the one-line CLI
error check."""
from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VTT = (b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello <b>viewers</b>\n\n"
       b"00:00:02.000 --> 00:00:04.000\ntoday we bake bread\n")


def tiny_llama(tokenizer: Any, seed: int = 0, **overrides: Any) -> Any:
    """A random 2-layer Llama (hidden 32) over the real tokenizer's vocabulary, fp32, eval mode."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
               num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
               tie_word_embeddings=True, bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
               pad_token_id=None)  # not the EOS id: padding_idx would zero EOS's (tied) embedding row
                                   # and no model could ever learn to stop
    cfg.update(overrides)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(LlamaConfig(**cfg))
    return model.eval()


def seed_text(prompt: str, comment: str) -> str:
    """One `text` cell of the seed xlsx: a LLaMA-2 [INST] prompt and its comment."""
    return f"<s>[INST] {prompt} [/INST] {comment} </s>"


def write_seed_xlsx(path: Path, n_videos: int = 10) -> list[list[str]]:
    """Seed-format rows: 3 comments per video, prompts equal except a truncated tail."""
    import pandas as pd

    rows, comments = [], []
    for v in range(n_videos):
        base = f"video {v} title " + " ".join(f"w{v}_{i}" for i in range(80))
        cs = [f"comment {v}-{k}" for k in range(3)]
        comments.append(cs)
        for k, c in enumerate(cs):
            prompt = base[: len(base) - 5 * k]  # later rows are truncated a little more, as in the seed
            rows.append({"comments": f" {c}", "titles": prompt, "text": seed_text(prompt, c), "length": 100})
    pd.DataFrame(rows).to_excel(path, index=False)
    return comments


@contextlib.contextmanager
def live_server(app: Any) -> Iterator[str]:
    """Run `app` with uvicorn on 127.0.0.1:<free port> in a thread; yield its base URL."""
    import uvicorn

    from vrp.bench.serve import free_port

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)


def one_line_error(capsys: Any, argv: list[str], *needles: str) -> str:
    """Run `vrp argv`; assert exit status 2 and a single `error: ` line containing every needle."""
    from vrp.cli import main

    rc = main(argv)
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith("error: ")]
    assert rc == 2, err
    assert len(lines) == 1 and "Traceback" not in err, err
    assert "\n" not in err.split("error: ", 1)[1].rstrip("\n"), err  # the message itself is one line
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


def write_splits(path: Path, train: list[Any], validation: list[Any]) -> Path:
    """Write `train` and `validation` (lists of `vrp.records.Video`) as a dataset dir's two JSONL splits."""
    from vrp.io import write_jsonl_atomic

    write_jsonl_atomic(path / "train.jsonl", (v.to_json() for v in train))
    write_jsonl_atomic(path / "validation.jsonl", (v.to_json() for v in validation))
    return path


def tiny_train_config(model_dir: Path, **overrides: Any) -> Any:
    """A `TrainConfig` for a seconds-long CPU run of the tiny model saved at `model_dir`: fp32, 64-token prompts,
    LoRA r8 without dropout, learning rate 1e-2 after one warm-up step, seed 0; `overrides` set any field."""
    from vrp.train.config import TrainConfig

    base = dict(model=str(model_dir), precision="fp32", max_prompt_tokens=64, max_row_tokens=256, lora_r=8,
                lora_alpha=16, lora_dropout=0.0, learning_rate=1e-2, warmup_steps=1,
                lr_scheduler="constant_with_warmup", seed=0)
    return TrainConfig(**{**base, **overrides})
