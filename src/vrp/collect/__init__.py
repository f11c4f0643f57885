"""Collecting from YouTube: URL forms and error classes (`youtube`), the yt-dlp / transcript-api boundary
(`fetch`), and how a collect dir's rows become `Video` records (`videos`)."""
