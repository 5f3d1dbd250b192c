"""bioplaus: backprop-free, biologically plausible local learning (Nøkland & Eidnes, ICML 2019).

A hand-written array engine: every op has an explicit backward, no autograd framework.
The same code runs on NumPy (CPU) and CuPy (GPU); see :mod:`bioplaus.backend`.

NOTE (threads): OpenBLAS's idle threads spin for 2^28 clock cycles (a tenth of a second) after each
call before they sleep, and on a small machine that takes a core from the engine's own threads (the
element-wise passes, the convolutions' chunks run side by side); a shorter spin costs nothing but a
thread's wake-up (README, "Threads").
OpenBLAS reads ``OPENBLAS_THREAD_TIMEOUT`` (the log2 of that spin) when NumPy is first imported, so
it is set here, where a run's process (``sims/run.py``, ``bioplaus-run``, ``python -m bioplaus``)
imports bioplaus before NumPy; a value already in the environment is kept, and a process that
imported NumPy first (a notebook) keeps OpenBLAS's default. It changes no number.
"""

import os

__version__ = "0.1.0"
BLAS_SPIN = "12"  # log2 of the clock cycles an idle OpenBLAS thread spins before it sleeps (default 28)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", BLAS_SPIN)
