"""Shared test setup.

numba reads NUMBA_ENABLE_CUDASIM when it is first imported, so it is set here, before any test
imports numba: on a machine without an NVIDIA driver the CUDA kernels run on numba's simulator.
"""
import os
import shutil

if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("NUMBA_ENABLE_CUDASIM", "1")
