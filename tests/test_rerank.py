"""Maximum mutual information reranking: the PMI score, near-duplicate removal, reranking on a tiny model, and its
wiring into `vrp generate` (predict rows) and `vrp serve` (the `rerank` field)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vrp.errors import ConfigError
from vrp.presets import check_rerank
from vrp.rerank import drop_near_duplicates, rerank_comments


class WordEmbedder:
    """One dimension per distinct first word: comments that start with the same word are near-duplicates."""

    def __init__(self) -> None:
        self.words: dict[str, int] = {}

    def encode(self, texts):
        out = np.zeros((len(texts), 64), dtype=np.float32)
        for i, t in enumerate(texts):
            w = (t.split() or [""])[0]
            out[i, self.words.setdefault(w, len(self.words)) % 64] = 1.0
        return out


@pytest.fixture(scope="module")
def model(tokenizer):
    from helpers import tiny_llama

    return tiny_llama(tokenizer, seed=3)


def prompts(tokenizer):
    from vrp.prompts import PromptConfig, build_prompt_ids, no_video_prompt_ids

    cfg = PromptConfig()
    return build_prompt_ids(tokenizer, "Bread", "today we bake bread with a lot of butter", cfg), \
        no_video_prompt_ids(tokenizer, cfg)


def test_near_duplicates() -> None:
    a, b = np.array([1.0, 0.0]), np.array([0.0, 1.0])
    assert drop_near_duplicates(np.stack([a, 0.99 * a + 0.01 * b, b, a])) == [0, 2]
    assert drop_near_duplicates(np.stack([a, 0.8 * a + 0.6 * b]), threshold=0.9) == [0, 1]   # cosine 0.8


def test_check_rerank() -> None:
    check_rerank(0, 5, ["greedy"])
    check_rerank(5, 5, ["nucleus"])
    with pytest.raises(ConfigError, match="at least `num_comments` \\(3\\), got 2"):
        check_rerank(2, 3, ["nucleus"])
    with pytest.raises(ConfigError, match="greedy gives a single comment"):
        check_rerank(4, 1, ["nucleus", "greedy"])
    with pytest.raises(ConfigError, match=">= 0"):
        check_rerank(-1, 1, [])


def test_rerank_returns_distinct_comments_ordered_by_pmi(model, tokenizer) -> None:
    """From 8 samples: at most K comments, no two with the same first word (near-duplicates for this embedder),
    ordered by PMI; each PMI equals the per-token log-likelihood under the video prompt minus lambda times that under
    the no-video prompt, both recomputed here with plain forward passes."""
    p, nv = prompts(tokenizer)
    out = rerank_comments(model, tokenizer, p, nv, "nucleus", num_comments=4, pool=8, max_new_tokens=6, seed=0,
                          lam=0.7, embedder=WordEmbedder())
    assert 1 <= len(out) <= 4
    firsts = [(c.text.split() or [""])[0] for c in out]
    assert len(set(firsts)) == len(firsts)
    keys = [(not c.finished, -c.pmi) for c in out]
    assert keys == sorted(keys)

    def logp(prefix, toks):
        with torch.no_grad():
            lp = torch.log_softmax(model(torch.tensor([prefix + toks])).logits[0].float(), -1)
        return float(lp[len(prefix) - 1:-1].gather(1, torch.tensor(toks)[:, None]).sum())

    for c in out:
        n = len(c.token_ids)
        assert n == c.tokens
        assert c.pmi == pytest.approx(logp(p, c.token_ids) / n - 0.7 * logp(nv, c.token_ids) / n, abs=1e-3)
    # the best is the best of all 8 samples (same seed, same samples): no sample scores higher
    from vrp.decoding import generate_comments

    all8 = generate_comments(model, tokenizer, p, "nucleus", 8, 6, 0, no_video_ids=nv)
    assert [c.text for c in all8].count(out[0].text) >= 1
    best = max((logp(p, c.token_ids) - 0.7 * logp(nv, c.token_ids)) / len(c.token_ids)
               for c in all8 if c.text and c.finished == out[0].finished)
    assert out[0].pmi == pytest.approx(best, abs=1e-3)


def test_rerank_drops_all_near_duplicates(model, tokenizer) -> None:
    """An embedder that maps every comment to one vector leaves only the best-scored comment."""
    class Same:
        def encode(self, texts):
            return np.ones((len(texts), 4), dtype=np.float32)

    p, nv = prompts(tokenizer)
    out = rerank_comments(model, tokenizer, p, nv, "cad", num_comments=3, pool=5, max_new_tokens=4, seed=1,
                          embedder=Same())
    assert len(out) == 1 and out[0].pmi is not None


def test_generate_with_rerank_adds_pmi_column(model, tokenizer, monkeypatch) -> None:
    import vrp.embeddings
    from vrp.generate.config import GenerateConfig
    from vrp.generate.run import predict
    from vrp.records import Video

    monkeypatch.setattr(vrp.embeddings, "load_embedder", lambda: WordEmbedder())
    rows = predict([Video("a", "Bread", "we bake bread")], GenerateConfig(preset="nucleus", num_comments=2, rerank=5,
                                                                          max_new_tokens=5),
                   progress=False, loaded=(model, tokenizer, {"model": "tiny", "adapter": None}))
    assert 1 <= len(rows) <= 2 and all(isinstance(r["pmi"], float) for r in rows)
    keys = [(not r["finished"], -r["pmi"]) for r in rows]
    assert keys == sorted(keys)
    with pytest.raises(ConfigError, match="rerank: must be at least `num_comments` \\(3\\), got 2"):
        GenerateConfig(num_comments=3, rerank=2)


def test_serve_rerank_field(model, tokenizer, monkeypatch) -> None:
    """POST /v1/predict with `rerank`: the worker reranks (tiny model, fake embedder) and returns PMI scores; bad
    combinations are 422s naming the field."""
    from starlette.testclient import TestClient

    import vrp.embeddings
    from vrp.serve.app import create_app
    from vrp.serve.config import ServeConfig

    monkeypatch.setattr(vrp.embeddings, "load_embedder", lambda: WordEmbedder())
    app = create_app(ServeConfig(max_rerank=6, max_new_tokens=8, default_max_new_tokens=4),
                     (model, tokenizer, {"model": "tiny", "adapter": None, "precision": "fp32"}))
    c = TestClient(app, raise_server_exceptions=False)
    body = {"title": "Bread", "transcript": "today we bake bread", "num_comments": 2, "seed": 1}
    r = c.post("/v1/predict", json={**body, "rerank": 6})
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rerank"] == 6 and 1 <= len(out["comments"]) <= 2
    assert all(isinstance(x["pmi"], float) for x in out["comments"])
    plain = c.post("/v1/predict", json=body).json()
    assert plain["rerank"] == 0 and all(x["pmi"] is None for x in plain["comments"])
    for extra, needle in (({"rerank": 1}, "rerank must be at least num_comments (2), got 1"),
                          ({"rerank": 7}, "less than or equal to 6"),
                          ({"rerank": 4, "preset": "greedy", "num_comments": 1}, "greedy gives a single comment")):
        bad = c.post("/v1/predict", json={**body, **extra})
        assert bad.status_code == 422 and needle in bad.json()["message"], bad.text
    assert c.get("/v1/info").json()["limits"]["max_rerank"] == 6
