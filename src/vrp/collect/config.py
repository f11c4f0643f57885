"""`CollectConfig`: the options of `vrp collect`, with their help texts, defaults and checks; the stage is
`vrp.collect.fetch`. Imports nothing heavy."""
from __future__ import annotations

from dataclasses import dataclass

from vrp.errors import ConfigError
from vrp.limits import COLLECT_COMMENTS, RETRIES
from vrp.options import check_choice, check_positive, check_range, coerce_fields, option


@dataclass
class CollectConfig:
    """Options of `vrp collect`; the field docs are its `--help`, `__post_init__` their one validation. Times are
    seconds."""

    max_videos: int | None = option("stop once the dir holds N videos, earlier runs included (None: all listed "
                                    "videos)", None, "N")
    comments_per_video: int = option("top-level comments to fetch per video, sorted by 'top' (YouTube's relevance "
                                     "order)", 20, "K", limit=COLLECT_COMMENTS)
    languages: list[str] = option("transcript languages in order of preference (ISO 639-1, e.g. en,de)", ["en"],
                                  "LANGS")
    comment_sort: str = option("YouTube's comment order: top or new", "top")
    sleep: float = option("pause between two videos", 1.0, "SECONDS")
    cookies: str | None = option("Netscape-format cookies file for yt-dlp (e.g. for age-restricted videos; "
                                 "youtube-transcript-api does not use it)", None, "FILE")
    proxy: str | None = option("proxy for yt-dlp and youtube-transcript-api, e.g. http://host:port", None, "URL")
    retries: int = option("extra attempts after a transient error (HTTP 429, bot check, timeout)", 3, limit=RETRIES)
    backoff: float = option("first wait before a retry; doubled after each attempt", 5.0, "SECONDS")
    backoff_max: float = option("longest wait before a retry", 300.0, "SECONDS")
    socket_timeout: float = option("network timeout of yt-dlp", 30.0, "SECONDS")
    transcript_api: bool = option("fall back to youtube-transcript-api when yt-dlp gives no usable subtitle track",
                                  True)
    progress: bool = option("show a progress bar", True)

    def __post_init__(self) -> None:
        coerce_fields(self)
        check_range(self, "comments_per_video", "max_videos", low=1)
        check_range(self, "sleep", "retries", "backoff", "backoff_max", low=0)
        check_positive(self, "socket_timeout")
        if not self.languages:
            raise ConfigError("languages", "needs at least one language code, e.g. en")
        check_choice(self, "comment_sort", ("top", "new"))
