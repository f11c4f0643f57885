"""Serving: the HTTP app (`app`), the generation worker (`worker`) and the web page (`static/`)."""
