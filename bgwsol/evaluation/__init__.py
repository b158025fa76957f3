"""Scoring localization maps: wsolevaluation's metrics, maps -> boxes, the evaluator, pictures, ``bgwsol-eval``."""
