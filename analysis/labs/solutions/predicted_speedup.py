"""Solution of the lab exercise predicted_speedup (pasted over the stub cell by tests/test_notebooks.py)."""


def predicted_speedup(stage_times):
    """Throughput of the full pipeline over the sequential run's.  stage_times: each stage's time per batch."""
    return sum(stage_times) / max(stage_times)
