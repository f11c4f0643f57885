"""`vrp prepare`: a source (table, collect dir, caption-less JSONL) to a dataset dir with train/validation splits (`run`)."""
