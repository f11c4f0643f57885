"""Helpers shared by several test modules (fixtures live in conftest.py; no test module imports another): a tiny
random Llama, seed-format xlsx files, a caption file, dataset dirs and training configs for tiny runs, a live uvicorn
server and the one-line CLI error check, the packing and lean-LoRA exactness helpers, chat formats of other model
families, a fake sentence embedder, and the fakes of the `vrp serve` tests."""
from __future__ import annotations

import contextlib
import hashlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VTT = (b"WEBVTT\n\n00:00:00.000 --> 00:00:02.000\nhello <b>viewers</b>\n\n"
       b"00:00:02.000 --> 00:00:04.000\ntoday we bake bread\n")

VRP_COMMAND = [sys.executable, "-c", "import sys; from vrp.cli import main; sys.exit(main())"]  # `vrp` in a subprocess


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


def write_csv_table(path: Path, **cols: list[Any]) -> Path:
    """A CSV table at `path` with one column per keyword (equal-length lists); returns `path`."""
    import pandas as pd

    pd.DataFrame(cols).to_csv(path, index=False)
    return path


def prepared_dataset(tmp_path: Path) -> Path:
    """`vrp prepare` of a 2-video table (2 comments each; one video per split) into `tmp_path/ds`."""
    from vrp.cli import main

    d = tmp_path / "ds"
    src = write_csv_table(tmp_path / "t.csv", title=["a", "a", "b", "b"],
                          transcript=["one two", "one two", "three", "three"], comment=["c1", "c2", "c3", "c4"])
    assert main(["prepare", str(src), "--out", str(d), "--val-fraction", "0.5"]) == 0
    return d


SMALL_RUN_FLAGS = ["--precision", "fp32", "--max-prompt-tokens", "64", "--max-row-tokens", "256"]  # tiny-model runs

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


# --- memory-lean LoRA training (tests/test_lean.py, tests/test_attention.py) ---------------------------------------
def lean_videos() -> list[Any]:
    """Three encoded videos (prompts of 40, 23 and 31 random tokens; 3, 1 and 2 comments ending in `PACK_EOS`)."""
    import torch

    from vrp.prompts import EncodedVideo

    g = torch.Generator().manual_seed(3)
    ids = lambda n: torch.randint(3, 5000, (n,), generator=g).tolist()  # noqa: E731
    return [EncodedVideo("a", ids(40), [ids(11) + [PACK_EOS], ids(8) + [PACK_EOS], ids(5) + [PACK_EOS]]),
            EncodedVideo("b", ids(23), [ids(6) + [PACK_EOS]]),
            EncodedVideo("c", ids(31), [ids(3) + [PACK_EOS], ids(9) + [PACK_EOS]])]


def lean_model(tokenizer: Any, prec: Any, lean: bool, dropout: float = 0.0, attn: str = "sdpa", seed: int = 0) -> Any:
    """Tiny Llama in `prec` (a `vrp.precision.Precision`) with LoRA r 4 on every linear layer (A and B random, so
    every LoRA weight gets a gradient), `lean` selecting vrp's lean LoRA forward, attention `attn`, in train mode."""
    import torch

    from vrp.adapter import attach_lora
    from vrp.attention import register
    from vrp.lora import LoraSettings

    if attn == "split_sdpa":
        register()
    model = tiny_llama(tokenizer, attn_implementation=attn, initializer_range=0.2).to(prec.weight_dtype)
    torch.manual_seed(seed)
    model = attach_lora(model, LoraSettings(r=4, alpha=8, dropout=dropout), prec, lean=lean)
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    return model.train()


def lean_loss_and_grads(model: Any, prec: Any, mode: str = "shared_prefix") -> tuple[float, dict[str, Any]]:
    """Mean NLL per target of `lean_videos()` packed in `mode` (rows of 70 tokens, 3 rows a batch, under `prec`'s
    autocast) and the fp32 gradients of the trainable parameters by name; zeroes the gradients."""
    import torch

    from vrp.loss import loss_sum
    from vrp.packing import collate, make_rows
    from vrp.precision import autocast_ctx

    rows = make_rows(lean_videos(), mode, 70)
    total, n = torch.zeros(()), 0
    for i in range(0, len(rows), 3):
        with autocast_ctx(prec):
            s, k = loss_sum(model, collate(rows[i:i + 3], PACK_EOS, mode))
        total, n = total + s, n + k
    (total / n).backward()
    out = {k: p.grad.detach().float().clone() for k, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    return float((total / n).detach()), out


def assert_grads_close(got: dict[str, Any], want: dict[str, Any], rel: float) -> None:
    """The gradients of `lean_model` (2 layers x 7 linear x LoRA A and B) agree within `rel` of each one's max."""
    assert got.keys() == want.keys() and len(want) == 2 * 7 * 2
    for k in want:
        scale = want[k].abs().max()
        assert scale > 0, k
        assert (got[k] - want[k]).abs().max() <= rel * scale, k


# --- chat formats of other model families (tests/test_chat_template.py, tests/test_export.py) -------------------
# The turn markup of Llama-3, Gemma, Phi-3-mini, Mistral v0.1 and LLaMA-2 as each family's tokenizer_config.json
# renders it.
LLAMA3 = ("{{ bos_token }}{% for m in messages %}<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n"
          "{{ m['content'] | trim }}<|eot_id|>{% endfor %}"
          "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}")
GEMMA = ("{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}"
         "{% endif %}{% for m in messages %}{% set role = 'model' if m['role'] == 'assistant' else m['role'] %}"
         "<start_of_turn>{{ role }}\n{{ m['content'] | trim }}<end_of_turn>\n{% endfor %}"
         "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
PHI3 = ("{{ bos_token }}{% for m in messages %}{% if m['role'] == 'user' %}<|user|>\n{{ m['content'] }}<|end|>\n"
        "<|assistant|>\n{% elif m['role'] == 'assistant' %}{{ m['content'] }}<|end|>\n{% endif %}{% endfor %}")
MISTRAL = ("{{ bos_token }}{% for m in messages %}{% if (m['role'] == 'user') != (loop.index0 % 2 == 0) %}"
           "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
           "{% if m['role'] == 'user' %}[INST] {{ m['content'] }} [/INST]{% else %}{{ m['content'] }}{{ eos_token }}"
           "{% endif %}{% endfor %}")
LLAMA2 = ("{% for m in messages %}{% if m['role'] == 'system' %}{{ bos_token }}[INST] <<SYS>>\n{{ m['content'] }}\n"
          "<</SYS>>\n\n{% elif m['role'] == 'user' %}{% if loop.index0 == 0 %}{{ bos_token }}[INST] {% endif %}"
          "{{ m['content'] | trim }} [/INST]{% else %}{{ ' ' + m['content'] | trim + ' ' + eos_token }}{% endif %}"
          "{% endfor %}")

# name: (chat template, added special tokens, bos, eos, end-of-turn token, renders a system message)
FORMATS = {
    "chatml-eos-endoftext": (None, [], None, "<|endoftext|>", "<|im_end|>", True),   # the example
    "llama3": (LLAMA3, ["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>",
                        "<|eot_id|>", "<|eom_id|>"], "<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", True),
    "gemma": (GEMMA, ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>", "<end_of_turn>", False),
    "phi3": (PHI3, ["<s>", "<|user|>", "<|assistant|>", "<|end|>"], "<s>", "<|endoftext|>", "<|end|>", False),
    "mistral": (MISTRAL, ["<s>", "</s>"], "<s>", "</s>", "</s>", False),
    "llama2": (LLAMA2, ["<s>", "</s>"], "<s>", "</s>", "</s>", True),
}


def chat_tokenizer(tokenizer_dir: Path, name: str) -> Any:
    """A fresh copy of the SmolLM2 tokenizer turned into the chat format `name` of FORMATS."""
    from transformers import AutoTokenizer

    template, added, bos, eos, _, _ = FORMATS[name]
    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    if added:
        tok.add_special_tokens({"additional_special_tokens": added})
    if template:
        tok.chat_template = template
    if bos:
        tok.bos_token = bos
    tok.eos_token = eos
    return tok


# --- videos for `vrp bench train` (tests/test_bench_train.py, tests/test_train_distributed.py) --------------------
def bench_videos(n: int = 6) -> list[Any]:
    """n videos of 3 comments; comment 'shared' appears in videos 1 and 2 (a duplicate text across videos)."""
    from vrp.records import Comment, Video

    out = []
    for i in range(n):
        texts = [f"v{i} first", "shared" if i in (1, 2) else f"v{i} second", f"v{i} third"]
        out.append(Video(video_id=f"vid{i}", title=f"Video {i}",
                         transcript=" ".join(f"word{i}_{j}" for j in range(300)),
                         comments=[Comment(text=t, rank=r + 1) for r, t in enumerate(texts)]))
    return out


# --- a sentence embedder without a model (tests/test_evaluate_run.py, tests/test_cli_tiers.py) ----------------
class FakeEmbedder:
    """Deterministic bag-of-words hashing embedder (64 dims, unit rows): similar words -> similar vectors."""

    def encode(self, texts: list[str]) -> Any:
        """(len(texts), 64) float32 unit rows (all zeros for a text without words)."""
        import numpy as np

        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            for w in t.lower().split():
                out[i, int(hashlib.md5(w.encode()).hexdigest(), 16) % 64] += 1
        n = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.where(n == 0, 1, n)


# --- vrp serve (tests/test_serve_*.py) -----------------------------------------------------------------------
INFO = {"model": "tiny-llama", "adapter": "runs/demo/adapter", "precision": "cpu-fp32"}  # the app's model info
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def client(app: Any) -> Any:
    """A Starlette TestClient of `app` that turns server exceptions into 500 responses, as uvicorn does."""
    from starlette.testclient import TestClient

    return TestClient(app, raise_server_exceptions=False)


class Recorder:
    """A fake generator: records the prompt and returns `n` fixed comments; optionally waits for `release`."""

    def __init__(self, release: threading.Event | None = None) -> None:
        self.prompts: list[list[int]] = []
        self.started = threading.Event()
        self.release = release

    def __call__(self, model: Any, tok: Any, prompt_ids: list[int], preset: Any, n: int, max_new_tokens: int,
                 seed: int) -> list[Any]:
        from vrp.decoding import GeneratedComment

        self.prompts.append(list(prompt_ids))
        self.started.set()
        if self.release is not None:
            assert self.release.wait(20), "test never released the fake generator"
        return [GeneratedComment(text=f"comment {i}", tokens=3, logprob=-1.5, finished=True) for i in range(n)]
