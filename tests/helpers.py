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
    from vrp.files import write_jsonl_atomic

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


# --- shared-prefix packing exactness (tests/test_packing*.py) ---------------------------------------------------
PACK_EOS = 2  # the bundled tokenizer's EOS (`<|im_end|>`), also the pad id of the packed batches


def random_ids(gen: Any, n: int) -> list[int]:
    """n random token ids in [3, 5000) from the torch generator `gen`."""
    import torch

    return torch.randint(3, 5000, (n,), generator=gen).tolist()


def make_videos() -> list[Any]:
    """Three encoded videos of different prompt lengths (40, 25, 60 tokens); `b` has a single comment, `a` has a
    1-token-plus-EOS comment."""
    import torch

    from vrp.prompts import EncodedVideo

    g = torch.Generator().manual_seed(1)
    comp = lambda n: random_ids(g, n - 1) + [PACK_EOS]  # noqa: E731
    return [EncodedVideo("a", random_ids(g, 40), [comp(12), comp(9), comp(15), comp(2)]),
            EncodedVideo("b", random_ids(g, 25), [comp(7)]),
            EncodedVideo("c", random_ids(g, 60), [comp(4), comp(6), comp(2), comp(8)])]


def with_lora(model: Any, target_modules: Any = "all-linear") -> Any:
    """`model` with a PEFT LoRA adapter (r 4, on `target_modules`: all linear layers by default) whose A and B are
    both random (so every adapter weight has a gradient), in eval mode."""
    from peft import LoraConfig, get_peft_model

    cfg = LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, target_modules=target_modules, init_lora_weights=False)
    return get_peft_model(model, cfg).eval()


def grads(model: Any) -> dict[str, Any]:
    """The gradients of the trainable parameters by name (copies); zeroes them."""
    out = {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return out


def packed_loss(model: Any, rows: list[Any], mode: str, rows_per_batch: int) -> Any:
    """Mean NLL per target over all rows, as the training loop computes it (sum over batches / total N); runs
    backward and returns the detached loss."""
    import torch

    from vrp.loss import loss_sum
    from vrp.packing import collate

    total, n = torch.zeros(()), 0
    for i in range(0, len(rows), rows_per_batch):
        s, k = loss_sum(model, collate(rows[i:i + rows_per_batch], PACK_EOS, mode))
        assert s.dtype == torch.float32 and s.ndim == 0
        total, n = total + s, n + k
    loss = total / n
    loss.backward()
    return loss.detach()
