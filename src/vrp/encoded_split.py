"""A split's encodings as they lie in the token cache's memory-mapped Arrow table (`vrp.token_cache` writes and
checks it), read one video at a time.

Knows: the table's columns (`video_id` string, `prompt_ids` list<int32>, `completions` and `contexts`
list<list<int32>>, one row per video, `vrp.prompts.EncodedVideo`'s fields), how to read one row into an
`EncodedVideo`, and how to get every length from the Arrow list offsets without building Python lists (what
`vrp.packing.make_rows` plans rows from). Python lists exist only for the video being read, so memory does not grow
with the number of videos.
Does not know: where the table comes from, its key or its checks (`vrp.token_cache`), packing.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from vrp.prompts import EncodedVideo


class EncodedSplit(Sequence[EncodedVideo]):
    """The encodings of a split: `table`, a pyarrow Table (the cache's Arrow files memory-mapped by
    `datasets.Dataset.from_file`) of rows `video_id`, `prompt_ids`, `completions`, `contexts` (int32).
    `split[i]` reads video i into an `EncodedVideo` (Python lists; the last one read is kept, so the rows of one
    video read it once); `lengths()` gives every length without building the lists."""

    def __init__(self, table: Any) -> None:
        self.table = table
        self._last: tuple[int, EncodedVideo] | None = None

    def __len__(self) -> int:
        return self.table.num_rows

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        i = range(len(self))[i]  # IndexError past the end, negative indices from the end
        if self._last is None or self._last[0] != i:
            d = self.table.slice(i, 1).to_pylist()[0]
            self._last = (i, EncodedVideo(d["video_id"], d["prompt_ids"], d["completions"], d["contexts"]))
        return self._last[1]

    def lengths(self) -> Iterator[tuple[str, int, list[int], list[int]]]:
        """Per video in order: `(video_id, prompt tokens, tokens of each completion, tokens of each context)` (the
        contexts' list empty when the video has none), computed from the Arrow list offsets."""
        import pyarrow.compute as pc

        t = self.table
        if not t.num_rows:
            return
        ids = t.column("video_id").to_pylist()
        prompt = pc.list_value_length(t.column("prompt_ids")).to_numpy(zero_copy_only=False)
        per = {}
        for col in ("completions", "contexts"):
            counts = pc.list_value_length(t.column(col)).to_numpy(zero_copy_only=False)
            flat = pc.list_value_length(pc.list_flatten(t.column(col))).to_numpy(zero_copy_only=False)
            per[col] = (counts, flat.tolist())
        (nc, comp), (nx, ctx) = per["completions"], per["contexts"]
        ci = xi = 0
        for v in range(t.num_rows):
            a, b = int(nc[v]), int(nx[v])
            yield ids[v], int(prompt[v]), comp[ci:ci + a], ctx[xi:xi + b]
            ci, xi = ci + a, xi + b
