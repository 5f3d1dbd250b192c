"""Solution of the lab exercise binary_label_code (pasted over the stub cell by tests/test_notebooks.py)."""



def binary_label_code(Y, P):
    """1[Y P > 0] as floats.  Y (N, K) one-hot, P (K, T) -> (N, T)."""
    return (Y @ P > 0).astype(float)
