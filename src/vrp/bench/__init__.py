"""Benchmarks: training throughput (`train`, `train_worker`, `flops`, `train_report`) and the server load check
(`serve`)."""
