"""`vrp evaluate` end to end on tiny random models, a model that ignores its input, and the evaluation helpers."""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
from helpers import FakeEmbedder

from vrp.comment_pool import frequent_comments, text_key
from vrp.evaluate import run as E
from vrp.evaluate.pmi import LAMBDA_GRID
from vrp.files import write_jsonl_atomic
from vrp.ranking import random_rank_stat
from vrp.records import Comment, Video

TOPICS = ["cooking pasta with garlic and olive oil", "building a gaming computer with a new graphics card",
          "a morning run through the city park", "reviewing a budget smartphone camera",
          "learning to play the guitar chords", "painting a landscape with watercolors",
          "a trip to the mountains with friends", "fixing a leaking kitchen sink"]


@pytest.fixture(autouse=True)
def fake_embedder_one_thread(monkeypatch):
    """Inject the fake embedder; run torch on one thread (tiny matmuls, and 2 threads stall when the CPU is shared)."""
    import torch

    import vrp.embeddings

    monkeypatch.setattr(vrp.embeddings, "load_embedder", lambda: FakeEmbedder())
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write_dataset(root: Path, comments_per_video: int = 2, train_copies_val: bool = False) -> Path:
    """validation.jsonl with 8 videos, train.jsonl with 4 (or comments copied from validation)."""
    val = [Video(f"v{i}", f"Video {i}", f"today we are {t}. " * 6,
                 [Comment(f"I loved the part about {t.split()[1 + k % 3]} number {i}{k}", rank=k + 1)
                  for k in range(comments_per_video)]) for i, t in enumerate(TOPICS)]
    if train_copies_val:
        train = [Video(f"t{i}", "T", "x " * 20, [Comment(val[i].comments[0].text)]) for i in range(3)]
    else:
        train = [Video(f"t{i}", f"Train {i}", f"some talk about topic {i}. " * 5,
                       [Comment("great video!"), Comment("great video!"), Comment(f"thanks for topic {i}")])
                 for i in range(4)]
    root.mkdir(parents=True, exist_ok=True)
    write_jsonl_atomic(root / "validation.jsonl", (v.to_json() for v in val))
    write_jsonl_atomic(root / "train.jsonl", (v.to_json() for v in train))
    return root


def write_seed_files(root: Path) -> tuple[Path, Path]:
    """A 3-video test xlsx in the original `[INST]` format and a seed_results dir with one output file."""
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    test = root / "test.xlsx"
    pd.DataFrame({"text": [f"<s>[INST] {t.upper()} transcript about {t} [/INST] " for t in TOPICS[:3]],
                  "length": [10, 10, 10]}).to_excel(test)
    res = root / "seed_results"
    res.mkdir()
    pd.DataFrame({"text": [" I love it ❤️❤️❤️❤️", " great video!", f" {TOPICS[2]} was fun"]}).to_excel(
        res / "beam.xlsx", index=False)
    return test, res


def test_candidate_sets_sources_and_no_duplicates():
    videos = [Video(f"v{i}", "", TOPICS[i], [Comment(f"c{i}a", rank=1), Comment(f"c{i}b", rank=2)])
              for i in range(6)]
    emb = FakeEmbedder().encode([v.transcript for v in videos])
    train = ["great video", "Great  video", "nice", "c0a", "wow"]
    freq = frequent_comments(train, 50)
    assert freq[0] == "great video" and len(freq) == 4          # "Great  video" is the same text
    sets = E.build_candidate_sets(videos, emb, freq, train, n_candidates=8, n_similar=3, n_frequent=2, seed=0)
    for i, cs in enumerate(sets):
        keys = [text_key(t) for t in cs.real + cs.distractors]
        assert cs.real == [f"c{i}a", f"c{i}b"]
        assert len(keys) == len(set(keys)) == 8
        assert cs.sources["similar_videos"] == 3 and cs.sources["frequent_training"] == 2
        assert cs.sources["random"] == 1 and cs.sources["short_by"] == 0
    # pool too small: 12 held-out + 3 new training texts ("c0a" repeats a held-out comment) = 15 < 30
    small = E.build_candidate_sets(videos, emb, freq, train, n_candidates=30, seed=0)
    assert all(len(c.real) + len(c.distractors) == 15 and c.sources["short_by"] == 15 for c in small)
    again = E.build_candidate_sets(videos, emb, freq, train, n_candidates=8, n_similar=3, n_frequent=2, seed=0)
    assert [c.distractors for c in again] == [c.distractors for c in sets]                  # deterministic


def test_derangement_has_no_fixed_points():
    for n in (2, 3, 10):
        p = E.derangement(n, seed=3)
        assert sorted(p) == list(range(n)) and all(p[i] != i for i in range(n))
    assert E.derangement(7, 1) == E.derangement(7, 1)


def _run(argv):
    from vrp.cli import main

    return main(argv)


@pytest.mark.e2e
def test_cli_end_to_end_tiny_model(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    import vrp.evaluate.generation as G

    ds = write_dataset(tmp_path / "ds")
    seed_test, seed_res = write_seed_files(tmp_path / "seed")
    out = tmp_path / "report"
    mauve_calls = []
    real_mauve = G.mauve_score
    monkeypatch.setattr(G, "mauve_score", lambda p, q, seed=0: mauve_calls.append((p, q)) or real_mauve(p, q, seed))
    argv = ["evaluate", "--data", str(ds), "--model", str(tiny_model_dir), "--out", str(out), "--presets", "nucleus",
            "--max-new-tokens", "6", "--num-candidates", "10", "--seed-test", str(seed_test),
            "--seed-results", str(seed_res), "--quiet", "--precision", "fp32"]
    assert _run(argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    for f in m["files"]:
        assert (out / f).is_file(), f
    assert {"report.md", "per_video.jsonl", "generations.jsonl", "ranking_mrr.png", "conditioning_gain.png",
            "gen_distinct_2.png", "seed_repetition_rate.png"} <= set(m["files"])
    (label, mm), = m["models"].items()
    lk = mm["likelihood"]
    assert lk["comments"] == 16 and lk["perplexity_own"] == pytest.approx(math.exp(lk["nll_own"]))
    g = lk["conditioning_gain"]
    assert g["ci95"][0] <= g["mean"] <= g["ci95"][1] and g["videos"] == 8
    rk = mm["ranking"]
    base = random_rank_stat(9)                                   # 10 candidates, 1 real ranked against 8 + itself
    assert m["candidates"]["min"] == 10
    assert rk["random_baseline"]["recall_at_1"] == pytest.approx(base.recall[1])
    assert rk["random_baseline"]["mrr"] == pytest.approx(base.rr)
    assert 1 <= rk["own_prompt"]["mean_rank"] <= 9
    # PMI ranking next to likelihood, lambda cross-fitted on 4 + 4 videos; the random baseline is the same
    assert sorted(rk["pmi"]["fold_videos"]) == [4, 4] and all(lam in LAMBDA_GRID for lam in rk["pmi"]["lambdas"])
    assert 1 <= rk["pmi"]["mean_rank"] <= 9 and m["metrics_version"] == 2
    gen = mm["generation"]["nucleus"]
    assert gen["outputs"] == 40                                               # 5 comments for each of 8 videos
    assert gen["on_topic"]["chance"] == pytest.approx(1 / 8)
    rows = [json.loads(x) for x in (out / "generations.jsonl").read_text().splitlines()]
    held = [r for r in rows if r["set"] == "held_out"]
    assert gen["finished_rate"] == pytest.approx(np.mean([r["finished"] for r in held]))
    assert gen["median_new_tokens"] == pytest.approx(np.median([r["new_tokens"] for r in held]))
    real_med = m["references"]["real_held_out"]["median_new_tokens"]
    assert gen["length_ratio_to_real"] == pytest.approx(gen["median_new_tokens"] / real_med)
    # MAUVE compares the embeddings of all 16 real comments (P) with those of the 40 generated ones (Q)
    (p, q), = mauve_calls
    fake = FakeEmbedder()
    real_texts = [c.text for v in E.load_eval_data(ds).videos for c in v.comments]
    assert np.allclose(p, fake.encode(real_texts)) and np.allclose(q, fake.encode([r["comment"] for r in held]))
    assert 0 <= gen["mauve"] <= 1
    sc = m["seed_comparison"]
    assert set(sc) == {"original/beam", f"{label}/nucleus"}
    assert sc["original/beam"]["repetition_rate"] == pytest.approx(1 / 3)
    assert sc["original/beam"]["on_topic"]["documents"] == 3
    assert m["references"]["real_held_out"]["outputs"] == 16                # every real comment of the videos
    assert mm["timing_s"]["ranking_total_s"] > 0
    per = [json.loads(x) for x in (out / "per_video.jsonl").read_text().splitlines()]
    assert len(per) == 8 and all(p["nll_other_video"] is not None for p in per)
    # the NLL of a video's comments equals a plain forward of prompt + comment (shared-prefix scoring is exact)
    _check_plain_forward(tiny_model_dir, tokenizer, ds, per[0])
    report = (out / "report.md").read_text()
    assert "Recall@1" in report and "random baseline" in report and "original/beam" in report
    assert "own video (PMI) (λ" in report and "Metrics version 2" in report and "MAUVE" in report
    assert "| Video 0 | I loved the part about pasta number 00 |" in report          # the side-by-side table
    numbers = [int(n) for n in re.findall(r"(?m)^## (\d+)\. ", report)]
    assert numbers == list(range(1, len(numbers) + 1)) and len(numbers) >= 5     # sections numbered in order
    assert {"gen_finished_rate.png", "gen_mauve.png"} <= set(m["files"])
    # a non-empty out dir is refused without --overwrite, replaced with it
    assert _run(argv) == 2
    (out / "stale.png").write_bytes(b"")
    assert _run(["evaluate", "--data", str(ds), "--model", str(tiny_model_dir), "--out", str(out), "--presets", "none",
                 "--num-candidates", "10", "--quiet", "--overwrite"]) == 0
    m2 = json.loads((out / "metrics.json").read_text())
    assert not (out / "gen_distinct_2.png").exists() and (out / "stale.png").exists()
    assert m2["models"][label]["generation"] == {} and not m2["seed_comparison"]
    assert "pmi" in m2["models"][label]["ranking"]                                   # --ranking both (default)
    assert _run(["evaluate", "--data", str(ds), "--model", str(tiny_model_dir), "--out", str(out), "--presets", "none",
                 "--num-candidates", "10", "--quiet", "--overwrite", "--ranking", "likelihood"]) == 0
    m3 = json.loads((out / "metrics.json").read_text())
    assert "pmi" not in m3["models"][label]["ranking"] and m3["models"][label]["timing_s"]["score_no_video_s"] == 0
    assert "(PMI)" not in (out / "report.md").read_text()


def _check_plain_forward(model_dir, tokenizer, ds, row):
    import torch
    from transformers import AutoModelForCausalLM

    from vrp.prompts import PromptConfig, build_completion_ids, build_prompt_ids
    from vrp.records import read_videos

    v = next(v for v in read_videos(ds / "validation.jsonl") if v.video_id == row["video_id"])
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    cfg = PromptConfig()
    p = build_prompt_ids(tokenizer, v.title, v.transcript, cfg)
    tot, n = 0.0, 0
    for c in v.comments:
        ids = build_completion_ids(tokenizer, c.text, cfg)
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([p + ids])).logits[0].float(), -1)
        tot += float(logp[len(p) - 1:-1].gather(1, torch.tensor(ids)[:, None]).sum())
        n += len(ids)
    assert row["nll_own"] == pytest.approx(-tot / n, abs=1e-4)


@pytest.fixture(scope="module")
def input_blind_model_dir(tmp_path_factory, tokenizer):
    """A real 1-layer Llama whose attention output projection is zero: every position's logits depend only on its
    own token, so a comment's likelihood cannot depend on the video (it sees only the previous token)."""
    import torch
    from helpers import tiny_llama

    model = tiny_llama(tokenizer, seed=1, num_hidden_layers=1)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
    out = tmp_path_factory.mktemp("blind")
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.mark.slow
def test_input_ignoring_model_has_zero_gain_and_random_ranking(tmp_path, input_blind_model_dir):
    # one real comment per video and training comments that repeat validation texts: every video's candidate set is
    # the same 8 texts, so a model that ignores the video ranks them in one fixed order and the real comments occupy
    # ranks 1..8 once each -> exactly the random baseline.
    ds = write_dataset(tmp_path / "ds", comments_per_video=1, train_copies_val=True)
    out = tmp_path / "report"
    assert _run(["evaluate", "--data", str(ds), "--model", str(input_blind_model_dir), "--out", str(out),
                 "--presets", "none", "--quiet", "--precision", "fp32"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["candidates"]["min"] == m["candidates"]["mean"] == 8 and m["candidates"]["videos_short"] == 8
    assert "pool too small" in " ".join(m["data"]["notes"])
    lk = next(iter(m["models"].values()))["likelihood"]
    for key in ("conditioning_gain", "title_only_gain"):
        assert abs(lk[key]["mean"]) < 1e-5 and abs(lk[key]["ci95"][0]) < 1e-5 and abs(lk[key]["ci95"][1]) < 1e-5
    rk = next(iter(m["models"].values()))["ranking"]
    for k in ("recall_at_1", "recall_at_5", "recall_at_10", "mrr", "mean_rank"):
        assert rk["own_prompt"][k] == pytest.approx(rk["random_baseline"][k], abs=1e-9), k
        assert rk["title_only"][k] == pytest.approx(rk["random_baseline"][k], abs=1e-9), k
    # PMI divides by the no-video likelihood, which for this model is the same: (1 - lambda) x likelihood keeps or
    # reverses the one fixed order, or ties everything (lambda 1), so over all videos every lambda gives chance MRR
    for lam, mrr in rk["pmi"]["grid_mrr_all_videos"].items():
        assert mrr == pytest.approx(rk["random_baseline"]["mrr"], abs=1e-9), lam
    assert rk["random_baseline"]["mean_rank"] == pytest.approx(4.5)


def test_cli_errors(tmp_path, tiny_model_dir, capsys):
    from helpers import one_line_error

    ds = write_dataset(tmp_path / "ds")
    model = ["evaluate", "--data", str(ds), "--model", str(tiny_model_dir), "--out", str(tmp_path / "o")]
    one_line_error(capsys, ["evaluate", "--data", str(ds), "--out", str(tmp_path / "o")],
                   "error: --model: give a --model and/or a --run")
    one_line_error(capsys, [*model, "--presets", "nope"], "error: --presets: unknown preset 'nope'")
    one_line_error(capsys, [*model, "--rerank", "0,3"], "error: --rerank: must be at least --num-comments (5), got 3")
    one_line_error(capsys, [*model, "--ranking", "best"], "error: --ranking:")
    one_line_error(capsys, [*model, "--seed-results", str(tmp_path)], "error: --seed-results: needs --seed-test")
    one_line_error(capsys, [*model, "--num-candidates", "1"], "error: --num-candidates: must be >= 2, got 1")
    (tmp_path / "e.yaml").write_text("num_candidates: 1\n")
    one_line_error(capsys, [*model, "--config", str(tmp_path / "e.yaml")],
                   "error: --num-candidates: must be >= 2, got 1 (options from", "e.yaml and the command line)")
    one = tmp_path / "one.jsonl"
    write_jsonl_atomic(one, [Video("a", "t", "x", [Comment("hi")]).to_json()])
    one_line_error(capsys, ["evaluate", "--data", str(one), "--model", str(tiny_model_dir), "--out",
                            str(tmp_path / "o")], "one.jsonl: need at least 2 held-out videos")
    assert not (tmp_path / "o").exists()


def test_settings_that_make_a_metric_meaningless_are_refused_before_any_model_is_loaded(tmp_path, capsys):
    """Candidates that the real comments fill leave no distractor (Recall@1 = MRR = 1 for any model and for random);
    greedy with reranking would be dropped: both are one-line errors, before a model is loaded (the model path does
    not exist), and `vrp generate` refuses greedy + rerank with the same rule."""
    from helpers import one_line_error

    ds = write_dataset(tmp_path / "ds", comments_per_video=3)
    model = ["evaluate", "--data", str(ds), "--model", str(tmp_path / "no-such-model"), "--out", str(tmp_path / "o")]
    one_line_error(capsys, [*model, "--num-candidates", "3"],
                   "error: --num-candidates: must exceed the real comments per video so that each is ranked against "
                   "at least one distractor: video 'v7' has 3", "give at least 4; got 3")
    line = one_line_error(capsys, [*model, "--presets", "greedy", "--rerank", "3", "--num-comments", "1"],
                          "error: --rerank: preset greedy gives a single comment")
    same = one_line_error(capsys, ["generate", "--model", str(tmp_path / "no-such-model"), "--transcript", "hi",
                                   "--preset", "greedy", "--rerank", "3", "--out", str(tmp_path / "g.csv")])
    assert same == line
    assert not (tmp_path / "o").exists() and not (tmp_path / "g.csv").exists()


def test_check_candidate_count_counts_distinct_real_comments_up_to_25():
    from vrp.errors import ConfigError
    from vrp.evaluate.candidates import MAX_REAL, check_candidate_count

    dup = Video("d", "t", "x", [Comment("Same text"), Comment("same  TEXT"), Comment("other")])
    check_candidate_count([dup], 3)                                # 2 distinct real comments: 1 distractor is left
    with pytest.raises(ConfigError, match=r"num_candidates: .*video 'd' has 2 .* give at least 3; got 2"):
        check_candidate_count([dup], 2)
    many = Video("m", "t", "x", [Comment(f"comment {i}") for i in range(40)])
    check_candidate_count([many], MAX_REAL + 1)                    # only the best 25 are ranked
    with pytest.raises(ConfigError, match=rf"has {MAX_REAL} \(at most {MAX_REAL} count\)"):
        check_candidate_count([many], MAX_REAL)


def test_a_video_without_distractors_is_left_out_of_the_ranking():
    from vrp.evaluate.pmi import pmi_ranks

    assert E._ranks([(-2.0, 2), (-4.0, 2)], []) == []
    assert [s.num_candidates for s in E._ranks([(-2.0, 2)], [(-3.0, 3), (-1.0, 1)])] == [3]
    row = {"own_all": [(-2.0, 2)], "no_video_all": [(-2.0, 2)], "n_real": 1}
    assert pmi_ranks(row, 0.5) == []
    summary = E.ranking_summary([{"rank_full": [], "rank_title": []},
                                 {"rank_full": E._ranks([(-1.0, 1)], [(-3.0, 1)] * 11),
                                  "rank_title": E._ranks([(-1.0, 1)], [(-3.0, 1)] * 11)}])
    assert summary["own_prompt"]["videos"] == 1 and summary["own_prompt"]["recall_at_10"] == 1.0
    assert summary["random_baseline"]["recall_at_1"] == pytest.approx(1 / 12)
    # with no-video scores: PMI is cross-fitted over videos with distractors only, and needs two of them
    rows = [{"rank_full": [], "rank_title": [], "own_all": [(-1.0, 1)], "no_video_all": [(-1.0, 1)], "n_real": 1},
            {"rank_full": E._ranks([(-1.0, 1)], [(-3.0, 1)]), "rank_title": [], "n_real": 1,
             "own_all": [(-1.0, 1), (-3.0, 1)], "no_video_all": [(-2.0, 1), (-2.0, 1)]}]
    assert "pmi" not in E.ranking_summary(rows)
    rows.append({**rows[1]})
    pmi = E.ranking_summary(rows)["pmi"]
    assert pmi["videos"] == 2 and pmi["fold_videos"] == [1, 1] and rows[0]["rank_pmi"] == []


@pytest.mark.slow
def test_run_dir_is_evaluated_next_to_base_with_loss_curve(tmp_path, tiny_model_dir, tokenizer, monkeypatch):
    """A `vrp train`-style run dir (config.yaml + adapter/ + metrics.jsonl): evaluated with its adapter, chart made."""
    import torch
    from helpers import tiny_llama
    from peft import LoraConfig, get_peft_model

    import vrp.rundir

    run = tmp_path / "run-a"
    model = get_peft_model(tiny_llama(tokenizer), LoraConfig(r=2, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)                                    # a non-zero adapter: the run differs from base
    model.save_pretrained(run / "adapter")
    (run / "config.yaml").write_text(f"model: {tiny_model_dir}\nmax_prompt_tokens: 256\ntruncation: head\n")
    (run / "metrics.jsonl").write_text("\n".join(json.dumps(d) for d in [
        {"step": 0, "val_nll": 3.0}, {"step": 1, "loss": 2.5}, {"step": 2, "loss": 2.0, "val_nll": 2.2}]) + "\n")
    ds = write_dataset(tmp_path / "ds")
    out = tmp_path / "report"
    reads: list[str] = []
    load_yaml = vrp.rundir.load_yaml
    monkeypatch.setattr(vrp.rundir, "load_yaml", lambda path: reads.append(str(path)) or load_yaml(path))
    monkeypatch.setattr(E, "mauve_available", lambda: True)  # as with vrp[mauve]: too few comments is then said
    assert _run(["evaluate", "--data", str(ds / "validation.jsonl"), "--run", str(run), "--out", str(out),
                 "--presets", "greedy", "--max-new-tokens", "4", "--max-gen-videos", "3", "--num-candidates", "6",
                 "--quiet", "--precision", "fp32"]) == 0
    assert reads == [str(run / "config.yaml")]  # the run's config is parsed once, by its RunDir
    m = json.loads((out / "metrics.json").read_text())
    assert list(m["models"]) == ["base:" + tiny_model_dir.name, "run-a"]
    base, ft = m["models"].values()
    assert ft["adapter"].endswith("adapter") and ft["max_prompt_tokens"] == 256 and base["max_prompt_tokens"] == 256  # one budget: the run's
    assert ft["likelihood"]["nll_own"] != pytest.approx(base["likelihood"]["nll_own"], abs=1e-4)
    assert ft["generation"]["greedy"]["outputs"] == 3 and ft["generation"]["greedy"]["on_topic"]["documents"] == 8
    assert "loss_run-a.png" in m["files"] and (out / "loss_run-a.png").stat().st_size > 1000
    assert m["data"]["train_comments"] == 0 and any("no training split" in n for n in m["data"]["notes"])
    assert m["candidates"]["mean_by_source"]["frequent_training"] == 0
    # 6 candidates of which 2 real: each real comment is ranked among 5, so Recall@5 and Recall@10 measure nothing
    for scoring in ("own_prompt", "title_only", "random_baseline", "pmi"):
        rk = ft["ranking"][scoring]
        assert rk["recall_at_5"] is None and rk["recall_at_10"] is None and 0 <= rk["recall_at_1"] <= 1, scoring
    assert ft["ranking"]["own_prompt"]["min_candidates"] == 5
    report = (out / "report.md").read_text()
    assert "up to 100 candidates" not in report and "target 6" in report
    assert ft["generation"]["greedy"]["mauve"] is None and ("MAUVE of run-a/greedy not computed: 3 generated and 6 "
                                                            "real comments, it needs 10 on each side") in report
    assert ("ranked among itself and its video's distractors: 5.0 candidates on average, 5 at least" in report
            and "Recall@5, Recall@10 not reported (–)" in report)


@pytest.mark.slow
def test_minilm_embedder_offline():
    """The bundled all-MiniLM-L6-v2 loads without network and puts paraphrases closer than unrelated text."""
    from vrp.embeddings import MiniLMEmbedder, embed_videos

    emb = MiniLMEmbedder()
    e = emb.encode(["great video, loved it", "awesome video, I loved this", "the tax code of 1986 was amended"])
    assert e.shape == (3, 384) and np.allclose(np.linalg.norm(e, axis=1), 1, atol=1e-4)
    assert e[0] @ e[1] > e[0] @ e[2] + 0.2
    v = embed_videos(emb, [Video("a", "Pasta", "how to cook pasta " * 300), Video("b", "", "guitar chords")])
    assert v.shape == (2, 384) and np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-4)


@pytest.mark.parametrize("row_tokens, rows_per_batch", [(512, 1), (100, 1), (100, 4)])
def test_score_videos_equals_scoring_each_video_alone(tokenizer, row_tokens, rows_per_batch):
    """`score_videos` (shared title-only / no-video prompts scored once for all their videos, `split_sdpa` with the
    prompt KV cache) gives the scores of `score_candidates` on each video alone with one big row, whatever the row
    size and batch (the old default 512 x 1 and several rows per video), in fp32."""
    from helpers import tiny_llama

    from vrp.attention import register
    from vrp.evaluate.candidates import CandidateSet
    from vrp.prompts import PromptConfig, build_completion_ids, no_video_prompt_ids, video_prompt_ids
    from vrp.scoring import score_candidates

    pcfg = PromptConfig(max_prompt_tokens=64)
    videos = [Video(f"v{i}", "Guitar night" if i == 2 else "", f"{TOPICS[i]}. " * 3,
                    [Comment(f"real comment {i}-{k} about {TOPICS[i]}") for k in range(1 + i % 2)]) for i in range(4)]
    csets = [CandidateSet([c.text for c in v.comments], [f"distractor {j} on {TOPICS[(i + j) % 8]}" for j in range(14)]
                          + ["the same comment for all"], {}) for i, v in enumerate(videos)]
    partner = [1, 2, 3, 0]
    model = tiny_llama(tokenizer, attn_implementation=register(), initializer_range=0.2)

    def alone(prompt, texts):
        return score_candidates(model, prompt, [build_completion_ids(tokenizer, t, pcfg) for t in texts],
                                max_row_tokens=4096)

    rows, timing = E.score_videos(model, tokenizer, pcfg, videos, csets, partner, row_tokens, rows_per_batch,
                                  progress=False, no_video=True)
    assert set(timing) >= {"score_own_prompt_s", "score_title_only_s", "score_no_video_s"}
    got, want = [], []
    for i, (v, cs, r) in enumerate(zip(videos, csets, rows)):
        texts = cs.real + cs.distractors
        want += alone(video_prompt_ids(tokenizer, v, pcfg), texts) + alone(video_prompt_ids(
            tokenizer, v, pcfg, transcript=""), cs.real) + alone(no_video_prompt_ids(tokenizer, pcfg), texts)
        want += alone(video_prompt_ids(tokenizer, videos[partner[i]], pcfg), cs.real)
        got += r["own_all"] + r["title"] + r["no_video_all"] + r["other"]
    assert [n for _, n in got] == [n for _, n in want]
    np.testing.assert_allclose([s for s, _ in got], [s for s, _ in want], rtol=1e-5, atol=1e-4)
    assert np.ptp([s for s, _ in want]) > 5       # the scores differ: a mix-up of candidates or prompts would fail


def test_evaluation_generates_with_its_own_budget():
    """`vrp evaluate` generates up to 64 new tokens per comment (docs/evaluation.md#speed), `vrp generate` up to 150
    as the original; `--max-new-tokens` still sets it."""
    from vrp.evaluate.config import EvaluateConfig
    from vrp.generate.config import GenerateConfig

    assert EvaluateConfig().generate_config("beam").max_new_tokens == 64
    assert GenerateConfig().max_new_tokens == 150
    assert EvaluateConfig(max_new_tokens=150).generate_config("nucleus").max_new_tokens == 150
