"""Bulk data jobs: AudioEdit-style synthesis of edit pairs (`synth`), frozen-MLLM feature
precomputation (`precompute`) and the shard format a trainer streams (`shards`)."""
