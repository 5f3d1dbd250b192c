"""Solution of the lab exercise feedback_error (pasted over the stub cell by tests/test_notebooks.py)."""



def feedback_error(dlogits, B):
    """The error sent to h by feedback alignment.  dlogits (N, T), B (T, D) -> (N, D)."""
    return dlogits @ B  # not a gradient: B stands in for the decoder's weights
