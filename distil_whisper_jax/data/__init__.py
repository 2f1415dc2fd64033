"""Datasets: opening every kind of source, Parquet, per-host blocks, row audio and language, the WER filter, the
training stream."""
