"""Evaluation: metric formulas (`metrics`), sentence embeddings (`embed`), ranking candidates (`candidates`), the
evaluation run (`run`) and its report (`report`)."""
