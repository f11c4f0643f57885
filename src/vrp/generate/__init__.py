"""`vrp generate`: inputs to prompts to comments for each decoding preset, written as CSV / XLSX / JSONL (`run`)."""
