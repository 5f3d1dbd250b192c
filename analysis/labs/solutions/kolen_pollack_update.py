"""Solution of the lab exercise kolen_pollack_update (pasted over the stub cell by tests/test_notebooks.py)."""


def kolen_pollack_update(B, dW, lr, weight_decay):
    """B after one Kolen-Pollack step, given the layer's weight gradient dW.  B, dW (out, in) -> (out, in)."""
    return B - lr * (dW + weight_decay * B)  # not a gradient: B receives W's update, and decays as W does
