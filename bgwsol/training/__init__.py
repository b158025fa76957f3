"""The training engine and the places it runs: in this process, on Ray Train workers, under Ray Tune."""
