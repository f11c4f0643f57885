"""Training: the config (`config`), the loop with validation and resume (`loop`), checkpoints (`checkpoint`)."""
