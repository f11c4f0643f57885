"""The training loop on a tiny random Llama: overfitting, adapter format, frozen base weights, exact resume,
run-dir safety."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from helpers import prepared_dataset, tiny_train_config, write_splits

from vrp.errors import ConfigError, VrpError
from vrp.records import Comment, Video
from vrp.train.config import TrainConfig
from vrp.train.loop import train

COMMENTS = ["great video", "i love this song", "first!", "so helpful thanks"]


def write_dataset(path: Path, n_val: int = 2) -> list[Video]:
    videos = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5, [Comment(c)]) for i, c in enumerate(COMMENTS)]
    val = [Video(f"val{i}", "t", f"held out {i} " * 5, [Comment("nice one"), Comment("cool")]) for i in range(n_val)]
    write_splits(path, videos, val)
    return videos


def cfg(model_dir: Path, **kw) -> TrainConfig:
    return tiny_train_config(model_dir, **{**dict(batch_size=2, max_steps=6, eval_every=3, save_every=2), **kw})


@pytest.fixture()
def data(tmp_path: Path) -> Path:
    d = tmp_path / "data"
    write_dataset(d)
    return d


@pytest.mark.slow
def test_overfit_then_generate_trained_comment_and_stop(tmp_path: Path, data: Path, tokenizer) -> None:
    from helpers import tiny_llama

    from vrp.decoding import generate_comments
    from vrp.model import load_for_inference
    from vrp.prompts import PromptConfig, build_prompt_ids

    # LoRA cannot change the (tied) output embeddings, so a random model needs room to separate the targets
    # from 49k random logits: hidden 128 with larger init can (hidden 32 plateaus near NLL 2 per token).
    model_dir = tmp_path / "model"
    tiny_llama(tokenizer, hidden_size=128, intermediate_size=256, initializer_range=0.15).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    m = train(cfg(model_dir, max_steps=40, learning_rate=5e-3, batch_size=4, lora_r=16, lora_alpha=32,
                  eval_every=40, save_every=40), data, tmp_path / "run", progress=False)
    assert m["final_train_loss"] < 0.05 < m["base_val_nll"]
    model, tok, info = load_for_inference(run=str(tmp_path / "run"), precision="fp32")
    assert info["adapter"].endswith("adapter")
    for i, comment in enumerate(COMMENTS):
        prompt = build_prompt_ids(tok, f"title {i}", f"transcript number {i} " * 5, PromptConfig(max_prompt_tokens=64))
        out = generate_comments(model, tok, prompt, "greedy", 1, max_new_tokens=20)[0]
        assert out.text == comment
        assert out.finished and out.tokens == len(tok(comment, add_special_tokens=False).input_ids) + 1


@pytest.mark.slow
def test_run_dir_contents_and_peft_adapter_roundtrip(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    run = tmp_path / "run"
    m = train(cfg(tiny_model_dir), data, run, progress=False)
    for name in ("adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "metrics.json",
                 "metrics.jsonl", "loss.png"):
        assert (run / name).is_file(), name
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names == [f"best-{m['best_step']:06d}", "step-000004", "step-000006"]  # best: vrp.train.checkpoint
    assert any((run / "logs").iterdir())  # TensorBoard events
    assert m["steps"] == 6 and m["comments_seen"] == 12 and m["base_val_nll"] is not None
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in hist] == [0, 1, 2, 3, 4, 5, 6] and "val_nll" in hist[3] and "val_nll" not in hist[2]
    assert "loss" not in hist[0] and hist[0]["val_nll"] == m["base_val_nll"]  # the base model's validation row
    # plain PEFT loading of the adapter gives the logits of the trained model
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = PeftModel.from_pretrained(base, str(run / "adapter")).eval()
    from vrp.model import load_for_inference

    ours, _, _ = load_for_inference(run=str(run), precision="fp32", merge=False)
    ids = torch.tensor([[1, 5, 9, 200, 3000, 2]])
    with torch.no_grad():
        a, b = peft_model(ids).logits, ours(ids).logits
        plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir)(ids).logits
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert (a - plain).abs().max() > 1e-3  # the adapter changed the model


def _adapter_tensors(run: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(run / "adapter" / "adapter_model.safetensors"))


@pytest.mark.slow
def test_kill_and_resume_equals_uninterrupted(tmp_path: Path, data: Path, tiny_model_dir: Path, capsys) -> None:
    c = cfg(tiny_model_dir, lora_dropout=0.1, max_steps=6, save_every=2, batch_size=1, grad_accum=2)
    full = train(c, data, tmp_path / "full", progress=False)

    class Killed(Exception):
        pass

    def kill_at_3(step: int) -> None:
        if step == 3:  # after the step-2 checkpoint and one more step that is lost
            raise Killed("killed at step 3")

    with pytest.raises(Killed, match="^killed at step 3$"):
        train(c, data, tmp_path / "resumed", on_step=kill_at_3, progress=False)
    assert not (tmp_path / "resumed" / "adapter").exists()
    with pytest.raises(VrpError, match="pass `resume` to continue it"):
        train(c, data, tmp_path / "resumed", progress=False)
    resumed = train(c, data, tmp_path / "resumed", resume=True, progress=False)
    assert f"resuming {tmp_path / 'resumed'} from checkpoint step-000002" in capsys.readouterr().err
    a, b = _adapter_tensors(tmp_path / "full"), _adapter_tensors(tmp_path / "resumed")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-6, atol=1e-7)
    assert resumed["final_val_nll"] == pytest.approx(full["final_val_nll"], rel=1e-6)
    assert resumed["comments_seen"] == full["comments_seen"] == 12


@pytest.mark.slow
def test_packing_none_and_shared_prefix_learn_the_same(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    # one comment per video: both modes build identical rows, so the runs must agree
    a = train(cfg(tiny_model_dir, packing="none"), data, tmp_path / "a", progress=False)
    b = train(cfg(tiny_model_dir, packing="shared_prefix"), data, tmp_path / "b", progress=False)
    assert a["final_val_nll"] == pytest.approx(b["final_val_nll"], rel=1e-5)


def test_config_errors(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    with pytest.raises(ConfigError, match="quantization: choose from none, 4bit, got '8bit'"):
        train(cfg(tiny_model_dir, quantization="8bit", device="cpu"), data, tmp_path / "r1", progress=False)
    with pytest.raises(ConfigError, match="precision: fp16"):
        train(cfg(tiny_model_dir, precision="fp16", device="cpu"), data, tmp_path / "r2", progress=False)
    with pytest.raises(ConfigError, match="packing: choose from shared_prefix, none, got 'zip'"):
        cfg(tiny_model_dir, packing="zip")
    with pytest.raises(ConfigError, match="data: .*nowhere has no train.jsonl"):
        train(cfg(tiny_model_dir), tmp_path / "nowhere", tmp_path / "r3", progress=False)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r3").exists()


@pytest.mark.slow
def test_training_changes_only_the_adapter(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    """The base model's weights are frozen: after the optimizer steps every base tensor is bit-identical, while
    every LoRA tensor moved (lora_B starts at zero, so a B still zero would mean the adapter learned nothing)."""
    from vrp.artifacts import DatasetDir
    from vrp.rundir import RunDir
    from vrp.train.loop import fit
    from vrp.train.setup import setup, starting_state

    s = setup(cfg(tiny_model_dir, max_steps=3), DatasetDir(data), RunDir(tmp_path / "run"), False, False)
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    fit(s, starting_state(s, False, False), progress=False)
    after = dict(s.model.named_parameters())
    lora = [n for n in before if "lora_" in n]
    base = [n for n in before if "lora_" not in n]
    assert lora and base and not any(after[n].requires_grad for n in base)
    for n in base:
        assert torch.equal(before[n], after[n].detach()), n
    for n in lora:
        assert not torch.equal(before[n], after[n].detach()), n
    assert all(before[n].abs().max() == 0 for n in lora if "lora_B" in n)


def test_resume_refuses_another_length_when_the_schedule_depends_on_it(tmp_path: Path, tiny_model_dir: Path) -> None:
    from dataclasses import replace

    from vrp.rundir import RunDir
    from vrp.train.setup import _check_resumed_total

    cosine = tiny_train_config(tiny_model_dir, lr_scheduler="cosine", max_steps=2)
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    run.save_config(cosine)
    with pytest.raises(ConfigError, match=r"max_steps: cannot change when resuming \(2 -> 3\): the run's "
                                          r"`lr_scheduler` 'cosine'"):
        _check_resumed_total(replace(cosine, max_steps=3), run)
    _check_resumed_total(cosine, run)  # the same length: fine
    constant = tiny_train_config(tiny_model_dir, lr_scheduler="constant_with_warmup", warmup_steps=1, max_steps=2)
    run.save_config(constant)
    _check_resumed_total(replace(constant, max_steps=5), run)  # its warmup is a number of steps: no total involved
    assert not constant.schedule_uses_total()
    assert replace(constant, warmup_steps=0, warmup_ratio=0.1).schedule_uses_total()


@pytest.mark.slow
def test_resume_from_python_refuses_what_the_cli_refuses(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    """`train(cfg, resume=True)` from Python checks the same resume policy as `vrp train --resume`: another learning
    rate is refused naming the option, before anything is written (config.yaml and the checkpoints stay as they
    were); the resumable options and `auto` prompt format still pass."""
    from dataclasses import replace

    from vrp.rundir import RunDir
    from vrp.train.setup import _check_resumed_total

    first = cfg(tiny_model_dir, lr_scheduler="constant", warmup_steps=0, warmup_ratio=0.0, max_steps=2)
    train(first, data, tmp_path / "run", progress=False)
    run = RunDir(tmp_path / "run")
    before = run.config_path.read_bytes()
    with pytest.raises(ConfigError, match=r"^learning_rate: a resumed run continues with the options in .*config\.yaml; "
                                          r"changed: learning_rate 0\.5 \(run: "):
        train(replace(first, learning_rate=0.5, max_steps=3), data, tmp_path / "run", resume=True, progress=False)
    assert run.config_path.read_bytes() == before
    assert sorted(p.name for p in run.checkpoints_dir.iterdir()) == ["best-000002", "step-000002"]
    _check_resumed_total(replace(first, max_steps=4, grad_accum=2, prompt_format="auto"), run)  # allowed changes


@pytest.mark.slow
def test_a_diverged_run_stops_with_an_error_before_spoiling_the_adapter(tmp_path: Path, data: Path,
                                                                       tiny_model_dir: Path) -> None:
    """A learning rate of 1e30 makes step 2's loss non-finite: the run stops there with an error that names the
    step and the learning rate (it used to finish with exit 0, `nan` in metrics.json and a NaN adapter)."""
    with pytest.raises(VrpError, match=r"^step 2: the training loss is nan.*training diverged \(learning rate 1e\+30\)"):
        train(cfg(tiny_model_dir, learning_rate=1e30, lr_scheduler="constant", warmup_steps=0, warmup_ratio=0.0,
                  max_steps=3, save_every=1), data, tmp_path / "run", progress=False)
    history = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [h["step"] for h in history if "loss" in h] == [1]        # step 1 was fine and is kept
    assert (tmp_path / "run" / "checkpoints" / "step-000001").is_dir()


@pytest.mark.slow
def test_resume_records_the_options_it_continues_with(tmp_path: Path, data: Path, tiny_model_dir: Path) -> None:
    """A resume that runs longer (constant schedule) and without the memory budget leaves a config.yaml that says
    so (it kept the first run's `max_steps: 2` and `max_memory` before)."""
    from dataclasses import replace

    from vrp.rundir import RunDir

    first = cfg(tiny_model_dir, lr_scheduler="constant", warmup_steps=0, warmup_ratio=0.0, max_steps=2,
                max_memory="100GB")
    train(first, data, tmp_path / "run", progress=False)
    train(replace(first, max_steps=3, max_memory=""), data, tmp_path / "run", resume=True, progress=False)
    saved = RunDir(tmp_path / "run").config()
    assert (saved["max_steps"], saved["max_memory"]) == (3, "")


@pytest.mark.slow
def test_resume_after_a_kill_keeps_metrics_and_refuses_other_data(tmp_path, tiny_model_dir) -> None:
    from vrp.options import build_config
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    ds = prepared_dataset(tmp_path)
    cfg = build_config(TrainConfig, None, dict(model=str(tiny_model_dir), precision="fp32", max_prompt_tokens=64,
                                               max_row_tokens=256, lora_r=2, max_steps=4, save_every=2,
                                               eval_every=100))

    def kill_after_3(step: int) -> None:
        if step == 3:
            raise KeyboardInterrupt("killed after step 3")

    with pytest.raises(KeyboardInterrupt, match="^killed after step 3$"):
        train(cfg, ds, tmp_path / "run", on_step=kill_after_3, progress=False)
    assert not (tmp_path / "run" / "adapter").exists()
    other = tmp_path / "other"
    other.mkdir()
    (other / "validation.jsonl").write_text((ds / "validation.jsonl").read_text())
    (other / "train.jsonl").write_text((ds / "train.jsonl").read_text() + json.dumps(
        {"video_id": "new", "title": "", "transcript": "x", "comments": [{"text": "c", "rank": 1}]}) + "\n")
    with pytest.raises(ConfigError, match="data: .*other is not the data this run was trained on"):
        train(cfg, other, tmp_path / "run", resume=True, progress=False)
    train(cfg, ds, tmp_path / "run", resume=True, progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    assert steps == [0, 1, 2, 3, 4]  # the base model's validation row, then one row per step (none twice)


def test_kill_while_saving_the_final_adapter_leaves_no_half_adapter(tmp_path, tiny_model_dir, monkeypatch) -> None:
    from transformers import PreTrainedTokenizerBase

    from vrp.options import build_config
    from vrp.train.config import TrainConfig
    from vrp.train.loop import train

    ds = prepared_dataset(tmp_path)
    cfg = build_config(TrainConfig, None, dict(model=str(tiny_model_dir), precision="fp32", max_prompt_tokens=64,
                                               max_row_tokens=256, lora_r=2, max_steps=1, eval_every=100))

    def killed(self, *a, **k):
        raise KeyboardInterrupt("killed while saving the tokenizer")

    monkeypatch.setattr(PreTrainedTokenizerBase, "save_pretrained", killed)
    with pytest.raises(KeyboardInterrupt, match="^killed while saving the tokenizer$"):
        train(cfg, ds, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "adapter").exists()
