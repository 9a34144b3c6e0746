"""The registry of trainers: every implementation in this study, found by name.

Implementations are imported lazily, so asking for "numpy" never imports torch or CUDA,
and a family whose package is missing is reported unavailable with the import error as the reason.
"""
from __future__ import annotations

import importlib

from .base import Trainer, TrainerUnavailable

# name -> "module:Class", in the order the study introduces them
_REGISTRY = {
    "reference": "parbp.reference:ReferenceTrainer",
    "numpy": "parbp.numpy_trainer:NumpyTrainer",
    "serial-example": "parbp.cpu:SerialExampleTrainer",
    "serial-blas": "parbp.cpu:MatrixTrainer",
    "threads": "parbp.cpu:ThreadsTrainer",
    "blas-parallel": "parbp.cpu:BlasParallelTrainer",
    "hybrid": "parbp.cpu:HybridTrainer",
    "hogwild": "parbp.cpu:HogwildTrainer",
    "torch": "parbp.baselines:TorchTrainer",
    "pytensor": "parbp.baselines:PyTensorTrainer",
    "theano": "parbp.baselines:TheanoTrainer",
    "numba-cuda": "parbp.cuda:NumbaCudaTrainer",
    "cupy": "parbp.cupy_gpu:CupyTrainer",
}


def names() -> list[str]:
    """Every registered trainer, in the order the study introduces them."""
    return list(_REGISTRY)


def gpu() -> list[str]:
    """The trainers that run on a GPU (the benchmark's ``--device gpu`` set; "torch" joins with device="cuda")."""
    return [n for n in _REGISTRY if get(n).device == "gpu"]


def fastest_cpu(threaded: bool = True) -> str:
    """The first available of the CPU trainers that train fastest here: ``threads`` (when several threads
    may be used), then ``serial-blas``, then ``numpy``, which runs everywhere."""
    for name in ("threads", "serial-blas", "numpy")[0 if threaded else 1:]:
        if not why_unavailable(name):
            return name
    raise TrainerUnavailable("no CPU trainer can run here")


def get(name: str) -> type[Trainer]:
    """The trainer class registered as ``name``."""
    if name not in _REGISTRY:
        raise ValueError(f"unknown trainer {name!r}; registered trainers are: {', '.join(_REGISTRY)}")
    module, cls = _REGISTRY[name].split(":")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError as e:
        # A stand-in that explains itself on construction, so names() stays complete everywhere.
        reason = f"importing {module} failed ({e})"
        return type(cls, (Trainer,), {"name": name, "availability": classmethod(lambda c: (False, reason))})


def why_unavailable(name: str) -> str:
    """'' if ``name`` can run here, else the reason it cannot."""
    ok, why = get(name).availability()
    return "" if ok else why


def available() -> list[str]:
    """The registered trainers that can run on this machine."""
    return [n for n in _REGISTRY if not why_unavailable(n)]


def make(name: str, **kwargs) -> Trainer:
    """Shorthand for ``get(name)(**kwargs)``."""
    return get(name)(**kwargs)
