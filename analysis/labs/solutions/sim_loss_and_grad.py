"""Solution of the lab exercise sim_loss_and_grad (pasted over the stub cell by tests/test_notebooks.py)."""

import numpy as np


def sim_loss_and_grad(X, Y):
    """L = mean((S(X) - S(Y))^2) and dL/dX.  X (B, D), Y (B, K) -> (float, (B, D))."""

    def normalize(Z):
        Zc = Z - Z.mean(axis=1, keepdims=True)  # (B, D)
        nrm = np.sqrt((Zc * Zc).sum(axis=1, keepdims=True))  # (B, 1)
        d = nrm + 1e-8
        return Zc, nrm, d, Zc / d

    B = X.shape[0]
    Xc, nrm, d, Xn = normalize(X)
    R = Xn @ Xn.T  # (B, B)
    S = np.clip(R, -1, 1)
    Yn = normalize(Y)[3]
    target = np.clip(Yn @ Yn.T, -1, 1)  # (B, B), a constant
    loss = float(np.mean((S - target) ** 2))
    dS = 2 * (S - target) / (B * B)
    dR = dS * ((R >= -1) & (R <= 1))  # the clamp passes no gradient outside [-1, 1]
    dXn = (dR + dR.T) @ Xn  # (B, D)
    # Xn = Xc / d with d = 1e-8 + |Xc|:  dXc = dXn / d - Xc (dXn . Xc) / (d^2 |Xc|)
    dXc = dXn / d - Xc * (dXn * Xc).sum(axis=1, keepdims=True) / (d * d * nrm)
    # Xc = X - mean(X): subtract the row mean of dXc (it is already ~0 here)
    dX = dXc - dXc.mean(axis=1, keepdims=True)
    return loss, dX
