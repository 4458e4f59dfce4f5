"""Self-play data: generation, trmph import, the shard format and the memory-mapped dataset."""
