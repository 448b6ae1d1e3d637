"""Quality and wall-clock speedup of PASTA against sequential and parallel baselines."""
