"""`vrp.comment_pool`: when two comments are the same text, the distinct texts and the most frequent comments, as
training's learning curve and `vrp evaluate`'s candidate sets use them."""
from __future__ import annotations

import numpy as np
import pytest

from vrp.comment_pool import distinct_texts, frequent_comments, text_key


def test_text_key_lowercases_and_collapses_whitespace():
    assert text_key("  Great \t  VIDEO!\n") == "great video!"
    assert text_key("a\u00a0\u2003b") == "a b"                      # Unicode spaces are whitespace too
    assert text_key(" \n ") == ""


def test_distinct_texts_keep_the_first_spelling_and_drop_blanks():
    assert distinct_texts(["Great  video!", "a2", " ", "great video!", "A2 "]) == ["Great  video!", "a2"]


def test_frequent_comments_by_count_then_first_appearance():
    train = ["great video!", "wow", "Wow ", "ok", "", "  ", "great  VIDEO!", "nice", "wow"]
    assert frequent_comments(train, 3) == ["wow", "great video!", "ok"]     # 3, 2, then 'ok' before 'nice'
    assert frequent_comments(train, 10) == ["wow", "great video!", "ok", "nice"]   # blank comments are not counted
    assert frequent_comments([], 5) == []


def test_frequent_comments_break_count_ties_by_centrality():
    """Among comments seen once, the one whose embedding is closest to the mean of all comes first."""
    comments = ["odd one", "typical", "also typical", "odd one"]
    emb = np.array([[0.0, 1.0], [1.0, 0.1], [1.0, -0.1], [0.0, 1.0]])
    assert frequent_comments(comments, 3) == ["odd one", "typical", "also typical"]
    # cosine to the mean row: 'typical' 0.77, 'also typical' 0.63; the count still comes first ('odd one', twice)
    assert frequent_comments(comments, 3, emb) == ["odd one", "typical", "also typical"]
    emb2 = emb.copy()
    emb2[2] = [1.0, 0.3]                                                   # now 0.71 vs 0.83
    assert frequent_comments(comments, 3, emb2) == ["odd one", "also typical", "typical"]
    with pytest.raises(ValueError, match="4 comments but 3 embedding rows"):
        frequent_comments(comments, 3, emb[:3])
