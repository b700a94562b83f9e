"""Batch jobs: readers and writers (npz, jsonl, parquet), checkpoints, progress, the offline run and
the in-server job manager. Knows nothing of HTTP."""
