"""Parallel work: shard planning, rank/world from the environment, one process per GPU."""
