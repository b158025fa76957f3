"""End-to-end jobs behind ``flows/``: the main job, the method comparison, and their preflight checks."""
