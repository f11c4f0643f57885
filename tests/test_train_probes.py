"""The learning curve of `vrp train` (`vrp.train.probes`) and its best checkpoint (`vrp.train.checkpoint.keep_best`):
probe rows with every metric, a model that ignores the video at gain 0 and chance-level PMI ranking, a model that
learnt the videos ranking its comments first, the candidate sets, best != last with a learning rate made huge
mid-run, `--checkpoint best` in generate and evaluate, and a resumed run keeping its best."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import tiny_llama, tiny_train_config, write_splits

from vrp.artifacts import DatasetDir
from vrp.errors import ConfigError
from vrp.records import Comment, Video
from vrp.rundir import RunDir
from vrp.train import probes as P
from vrp.train.config import TrainConfig
from vrp.train.loop import finish, fit, train
from vrp.train.setup import setup, starting_state

TOPICS = ["cooking pasta with garlic", "building a gaming computer", "a morning run in the park",
          "reviewing a phone camera", "learning guitar chords"]
SHORT = ["great video", "i love this song", "first!", "so helpful thanks"]


def write_data(path: Path, val_equals_train: bool = False) -> Path:
    """train.jsonl: 4 videos (one comment each, 'great video!' twice across them); validation.jsonl: 5 videos with 2
    comments each, or the training videos again (`val_equals_train`)."""
    if val_equals_train:
        train_v = [Video(f"v{i}", f"title {i}", f"transcript number {i} " * 5, [Comment(c)]) for i, c in
                   enumerate(SHORT)]
        val_v = [Video(f"w{i}", v.title, v.transcript, v.comments) for i, v in enumerate(train_v)]
    else:
        train_v = [Video(f"t{i}", f"Train {i}", f"some talk about {t}. " * 4,
                         [Comment("great video!" if i % 2 else f"thanks for {t}")]) for i, t in enumerate(TOPICS[:4])]
        val_v = [Video(f"v{i}", f"Video {i}", f"today we are {t}. " * 4,
                       [Comment(f"I loved the part about {t.split()[-1]}"), Comment(f"more {t} please {i}")])
                 for i, t in enumerate(TOPICS)]
    write_splits(path, train_v, val_v)
    return path


def cfg(model_dir: Path, **kw) -> TrainConfig:
    return tiny_train_config(model_dir, **{**dict(batch_size=2, max_steps=4, eval_every=2, save_every=2, curve_videos=3), **kw})


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def val_rows(run: Path) -> list[dict]:
    return [r for r in rows(run) if "val_nll" in r]


@pytest.mark.slow
def test_curve_rows_tensorboard_chart_and_metrics(tmp_path: Path, tiny_model_dir: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run"
    m = train(cfg(tiny_model_dir), write_data(tmp_path / "data"), run, progress=False)
    vr = val_rows(run)
    assert [r["step"] for r in vr] == [0, 2, 4] and [r["comments_seen"] for r in vr] == [0, 4, 8]
    assert [r["step"] for r in rows(run)] == [0, 1, 2, 3, 4]
    for r in vr:
        recall = ("val_recall_at_10", "val_pmi_recall_at_10")  # 9 candidates: every order puts each in the top 10
        assert r["val_recall_at_10"] is None and r["val_pmi_recall_at_10"] is None
        for k in set(P.PROBE_KEYS + ("val_nll", "val_probe_seconds", "val_nll_seconds")) - set(recall):
            assert isinstance(r[k], float) and math.isfinite(r[k]), (k, r)
        for k in ("val_mrr", "val_pmi_mrr", "val_finished_rate"):
            assert 0 <= r[k] <= 1, (k, r[k])
        assert 1 <= r["val_median_new_tokens"] <= 8                      # the tests' generation budget (conftest)
        assert r["val_probe_seconds"] == pytest.approx(r["val_probe_score_seconds"] + r["val_probe_generate_seconds"])
        assert r["val_probe_score_seconds"] > 0 and r["val_probe_generate_seconds"] > 0
    # 3 probe videos of 2 comments: each ranks its 2 against the other 2 videos' 4 comments + the 3 training texts
    assert m["curve"]["videos"] == 3 and m["curve"]["video_ids"] == ["v0", "v1", "v2"]
    assert m["curve"]["mean_candidates"] == 2 + 4 + 3
    assert m["curve"]["random_mrr"] == pytest.approx(sum(1 / r for r in range(1, 9)) / 8)
    assert m["curve"]["random_recall_at_10"] is None  # Recall@10 among 9 candidates is 1 for any order
    assert m["final_validation"] == {k: v for k, v in vr[-1].items() if k.startswith("val_")}
    assert m["best_val_nll"] == min(r["val_nll"] for r in vr)
    ev = EventAccumulator(str(run / "logs"))
    ev.Reload()
    for tag in ("validation/nll", "validation/gain", "validation/pmi_mrr", "validation/finished_rate",
                "validation/probe_seconds"):
        assert [e.step for e in ev.Scalars(tag)] == [0, 2, 4], tag
    assert [e.value for e in ev.Scalars("validation/mrr")] == pytest.approx([r["val_mrr"] for r in vr], rel=1e-6)
    assert (run / "curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_curve_off_writes_nll_only_and_probes_leave_training_unchanged(tmp_path: Path, tiny_model_dir: Path) -> None:
    """With LoRA dropout every step draws random numbers: the probes' sampling must not shift them (torch's RNG is
    forked around the probe), so a run with probes trains exactly as one without."""
    data = write_data(tmp_path / "data")
    off = train(cfg(tiny_model_dir, curve_videos=0, lora_dropout=0.1), data, tmp_path / "off", progress=False)
    on = train(cfg(tiny_model_dir, curve_videos=3, lora_dropout=0.1), data, tmp_path / "on", progress=False)
    assert all(not any(k in r for k in P.PROBE_KEYS) for r in rows(tmp_path / "off"))
    assert [r["step"] for r in val_rows(tmp_path / "off")] == [0, 2, 4] and off["curve"] is None
    assert on["curve"]["videos"] == 3 and on["final_val_nll"] == off["final_val_nll"]
    a, b = _adapter(tmp_path / "off" / "adapter"), _adapter(tmp_path / "on" / "adapter")
    assert all(torch.equal(a[k], b[k]) for k in a) and any(a[k].abs().max() > 0 for k in a if "lora_B" in k)
    with pytest.raises(ConfigError, match="curve_videos: must be >= 0"):
        cfg(tiny_model_dir, curve_videos=-1)


@pytest.fixture(scope="module")
def blind_model_dir(tmp_path_factory, tokenizer) -> Path:
    """A 1-layer Llama whose attention output projection is zero: each position's logits depend only on its own
    token, so a comment's likelihood cannot depend on the video (LoRA on the MLP keeps it so while training)."""
    model = tiny_llama(tokenizer, seed=1, num_hidden_layers=1)
    with torch.no_grad():
        model.model.layers[0].self_attn.o_proj.weight.zero_()
    out = tmp_path_factory.mktemp("blind")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_model_that_ignores_the_video_has_zero_gain_and_chance_pmi_ranking(tmp_path: Path, blind_model_dir) -> None:
    run = tmp_path / "run"
    m = train(cfg(blind_model_dir, max_steps=2, eval_every=1, curve_videos=4,
                  target_modules=["gate_proj", "up_proj", "down_proj"]), write_data(tmp_path / "data"), run,
              progress=False)
    vr = val_rows(run)
    assert len(vr) == 3 and vr[-1]["val_nll"] != vr[0]["val_nll"]             # it trained
    for r in vr:
        assert abs(r["val_gain"]) < 1e-5
        # PMI = log p(c | video) - log p(c | no video) is 0 for every candidate: all tie -> exactly the random level
        assert r["val_pmi_mrr"] == pytest.approx(m["curve"]["random_mrr"], abs=1e-12)
        assert r["val_pmi_recall_at_10"] == pytest.approx(m["curve"]["random_recall_at_10"], abs=1e-12)


@pytest.mark.slow
def test_model_that_learnt_the_videos_ranks_their_comments_first_and_stops(tmp_path: Path, tokenizer) -> None:
    model_dir = tmp_path / "model"
    tiny_llama(tokenizer, hidden_size=128, intermediate_size=256, initializer_range=0.15).save_pretrained(model_dir)
    tokenizer.save_pretrained(model_dir)
    run = tmp_path / "run"
    train(cfg(model_dir, max_steps=40, learning_rate=5e-3, batch_size=4, lora_r=16, lora_alpha=32, eval_every=40,
              save_every=40, curve_videos=4), write_data(tmp_path / "data", val_equals_train=True), run,
          progress=False)
    first, last = val_rows(run)
    assert last["val_gain"] > 1.0 > abs(first["val_gain"])               # nats per token: the prompt now matters
    assert last["val_mrr"] == 1.0 > first["val_mrr"]                     # every real comment ranked first
    assert last["val_pmi_mrr"] > first["val_pmi_mrr"]                    # (4 candidates: Recall@10 is always 1)
    assert first["val_finished_rate"] == 0.0 and first["val_median_new_tokens"] == 8
    assert last["val_finished_rate"] == 1.0 and last["val_median_new_tokens"] <= 6   # the short comments + <|im_end|>


def test_probe_candidates(tokenizer) -> None:
    from vrp.prompts import PromptConfig, build_completion_ids

    pcfg = PromptConfig(max_prompt_tokens=64)
    val = [Video("a", "A", "alpha " * 5, [Comment("Great  video!"), Comment("a2"), Comment("great video!")]),
           Video("b", "B", "beta " * 5, [Comment("b1"), Comment("b2")]),
           Video("c", "C", "gamma " * 5, [Comment("c1")])]
    train_v = [Video("t", "T", "x", [Comment("great video!"), Comment("wow"), Comment("wow"), Comment("ok")])]
    ps = P.build_probe_set(tokenizer, val, train_v, pcfg, n_videos=3, seed=7, max_candidates=6)

    def ids(*texts):
        return [build_completion_ids(tokenizer, t, pcfg) for t in texts]

    assert ps.real[0] == ids("Great  video!", "a2")                     # one per text key, first spelling
    # room 4: 2 from the other videos (round-robin from the next one), 2 frequent ('great video!' is a real one)
    assert ps.distractors[0] == ids("b1", "c1", "wow", "ok")
    assert ps.distractors[1] == ids("c1", "Great  video!", "wow", "ok")
    assert ps.distractors[2] == ids("Great  video!", "b1", "a2", "wow", "ok")   # room 5: 3 + 2
    assert ps.partner == [1, 2, 0] and ps.seed == 7
    assert P.build_probe_set(tokenizer, val, train_v, pcfg, n_videos=0, seed=0) is None
    one = P.build_probe_set(tokenizer, val[:1], [], pcfg, n_videos=5, seed=0)
    assert one.partner == [-1] and one.distractors == [[]]


def _huge_lr_after(s, at_step: int, lr: float):
    """An `on_step` hook that makes the learning rate `lr` from step `at_step + 1` on (constant schedule)."""
    def hook(step: int) -> None:
        if step == at_step:
            s.scheduler.base_lrs = [lr] * len(s.scheduler.base_lrs)
            for g in s.optimizer.param_groups:
                g["lr"] = lr
    return hook


class Killed(Exception):
    pass


def _run_with_huge_lr(c: TrainConfig, data: Path, out: Path, kill_at: int | None = None) -> dict | None:
    """Train with the learning rate made 300x larger after step 4; killed after step `kill_at` (returns None)."""
    s = setup(c, DatasetDir(data), RunDir(out), False, False)
    state = starting_state(s, False, False)
    huge = _huge_lr_after(s, 4, 3.0)

    def hook(step: int) -> None:
        huge(step)
        if step == kill_at:
            raise Killed

    try:
        fit(s, state, on_step=hook, progress=False)
    except Killed:
        return None
    return finish(s, state)


def _best_cfg(model_dir: Path) -> TrainConfig:
    return cfg(model_dir, max_steps=8, eval_every=1, save_every=2, warmup_steps=0, lr_scheduler="constant",
               curve_videos=2)


def _adapter(path: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_best_checkpoint_is_the_lowest_validation_nll_not_the_last(tmp_path: Path, tiny_model_dir: Path,
                                                                    capsys) -> None:
    from vrp.cli import main
    from vrp.cli.evaluate import models_to_evaluate
    from vrp.model import load_for_inference
    from vrp.train.validate import evaluate_nll

    data = write_data(tmp_path / "data", val_equals_train=True)
    run = tmp_path / "run"
    m = _run_with_huge_lr(_best_cfg(tiny_model_dir), data, run)
    vr = val_rows(run)
    nll = {r["step"]: r["val_nll"] for r in vr}
    best = min(nll, key=nll.get)
    assert best == 4 and nll[5] > nll[4] and nll[8] > nll[4]            # the huge learning rate from step 5 hurt
    assert (m["best_step"], m["best_val_nll"], m["best_checkpoint"]) == (4, nll[4], "checkpoints/best-000004")
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best-000004", "step-000006", "step-000008"]
    assert RunDir(run).adapter("best") == run / "checkpoints" / "best-000004" / "adapter"
    # the best adapter is the step-4 model: its validation NLL is the one logged at step 4; adapter/ is the last one
    s = setup(_best_cfg(tiny_model_dir), DatasetDir(data), RunDir(tmp_path / "scratch"), False, False)
    for ckpt, step in (("best", 4), (None, 8)):
        model, tok, _ = load_for_inference(run=str(run), checkpoint=ckpt, precision="fp32")
        got = evaluate_nll(model, s.val_rows, tok.pad_token_id, s.prec, 2)["nll"]
        assert got == pytest.approx(nll[step], rel=1e-5), ckpt
    # `--checkpoint best` in generate, and in evaluate for every --run
    assert main(["generate", "--run", str(run), "--checkpoint", "best", "--title", "t", "--transcript", "words",
                 "--preset", "greedy", "--max-new-tokens", "3", "--precision", "fp32",
                 "--out", str(tmp_path / "one.jsonl")]) == 0
    assert json.loads((tmp_path / "one.jsonl").read_text())["adapter"].endswith("best-000004/adapter")
    (label, _, d), = models_to_evaluate(str(tiny_model_dir), [str(run)], "best")[1:]
    assert label == "run@best" and d.adapter() == run / "checkpoints" / "best-000004" / "adapter"
    assert main(["evaluate", "--data", str(data), "--model", "m", "--checkpoint", "best",
                 "--out", str(tmp_path / "rep")]) == 2
    assert "error: --checkpoint: needs a --run" in capsys.readouterr().err


@pytest.mark.slow
def test_resume_keeps_the_best_checkpoint(tmp_path: Path, tiny_model_dir: Path) -> None:
    data = write_data(tmp_path / "data", val_equals_train=True)
    full = _run_with_huge_lr(_best_cfg(tiny_model_dir), data, tmp_path / "full")
    # killed after step 7 (the step-6 checkpoint holds the best of step 4); the resume replays 7 and 8 with the
    # huge learning rate of the restored scheduler, which never beat step 4
    assert _run_with_huge_lr(_best_cfg(tiny_model_dir), data, tmp_path / "resumed", kill_at=7) is None
    resumed = train(_best_cfg(tiny_model_dir), data, tmp_path / "resumed", resume=True, progress=False)
    assert full["best_step"] == 4
    assert (resumed["best_step"], resumed["best_val_nll"]) == (full["best_step"], full["best_val_nll"])
    a, b = _adapter(tmp_path / "full" / "checkpoints" / "best-000004" / "adapter"), _adapter(
        tmp_path / "resumed" / "checkpoints" / "best-000004" / "adapter")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    drop = ("seconds", "tokens_per_s")
    strip = [[{k: v for k, v in r.items() if not any(d in k for d in drop)} for r in rows(tmp_path / x)]
             for x in ("full", "resumed")]
    assert strip[0] == strip[1]            # the probes did not disturb the RNG: same curve after the resume


def test_resumed_best_prefers_a_better_best_on_disk(tmp_path: Path) -> None:
    from vrp.train.checkpoint import resumed_best

    run = RunDir(tmp_path)
    assert resumed_best(run, {"step": 2, "val_nll": 3.0}) == {"step": 2, "val_nll": 3.0}   # none on disk
    for step, nll in ((2, 3.0), (5, 2.5)):     # a kill between writing best-5 and removing best-2 leaves both
        d = run.best_checkpoint_dir(step)
        (d / "adapter").mkdir(parents=True)
        (d / "state.json").write_text(json.dumps({"step": step, "val_nll": nll}))
    (run.best_checkpoint_dir(7) / "adapter").mkdir(parents=True)         # incomplete: no state.json
    assert run.best_checkpoint() == run.best_checkpoint_dir(5) and run.adapter("best").parent.name == "best-000005"
    assert RunDir(tmp_path, "best").adapter() == run.best_checkpoint_dir(5) / "adapter"
    assert resumed_best(run, {"step": 2, "val_nll": 3.0}) == {"step": 5, "val_nll": 2.5}
    assert resumed_best(run, None) == {"step": 5, "val_nll": 2.5}
    assert run.checkpoints() == [] and run.latest_checkpoint() is None   # best is no step checkpoint
