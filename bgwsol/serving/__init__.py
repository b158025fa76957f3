"""A trained checkpoint answering for one image (class, score, box, heatmap), and the ``bgwsol`` command."""
