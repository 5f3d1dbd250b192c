"""bioplaus: backprop-free, biologically plausible local learning (Nøkland & Eidnes, ICML 2019).

A hand-written array engine: every op has an explicit backward, no autograd framework.
The same code runs on NumPy (CPU) and CuPy (GPU); see :mod:`bioplaus.backend`.
"""

__version__ = "0.1.0"
