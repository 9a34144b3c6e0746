"""parbp: a reproducible study of parallel backpropagation (Kamra, Goyal, Seo, Zois, USC 2016).

Modules, bottom to top: ``data`` and ``nets`` (definitions), ``reference`` (the equations),
``base`` (the trainer contract), the implementation families (``numpy_trainer``, ``cpu``,
``baselines``, ``cuda``, ``cupy_gpu``, ``mpi``, ``ipp``), ``trainers`` (the registry),
``train`` (one training loop) and the experiments on top (``bench``, ``experiments``).
"""
__version__ = "0.1.0"
