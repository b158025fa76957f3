"""Sharding: Ray Data ETL into WebDataset tars + manifest, and reading a committed shard set."""
