"""Datasets: synthetic generator, readers of the real layouts, and the in-process dataset."""
