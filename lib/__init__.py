"""parbp: a reproducible study of parallel backpropagation (Kamra, Goyal, Seo, Zois, USC 2016).

The modules in layers, bottom to top; a module imports only from its own layer or the ones below
(``tests/test_layers.py`` reads every import and holds the library to it).
"""
__version__ = "0.1.0"

LAYERS = {
    # data, networks, the equations, the trainer contract and registry, the training loop, checkpoints,
    # the command-line parser and input checks, result files and repository paths, the machine report, timing
    # code side by side
    "core": ("data", "nets", "reference", "base", "trainers", "train", "checkpoint", "cli", "results", "envinfo",
             "timing"),
    # the trainers themselves (and the kernels and BLAS calls they are built from), compressed networks
    "implementations": ("blas", "numpy_trainer", "cpu", "cuda", "cupy_gpu", "baselines", "theano_worker",
                        "compress"),
    # several processes training one network: what they share, MPI, ipyparallel engines, pipelines, tensor
    # parallelism, emulated hosts
    "distributed": ("distributed", "pipeline", "mpi", "ipp", "ipp_relay", "tensor_parallel", "hosts"),
    # timing, memory and communication measurements
    "measurement": ("bench", "memory", "roofline", "mpi_bench", "ipp_bench", "costmodel", "tensor_parallel_bench", "hosts_bench",
                    "example_threads"),
    # the notebooks' helpers and figures (04's drawing of how CUDA blocks tile a matrix, 07's pipelines and
    # scaling), the committed results, the study runner and its profiles, the GPU campaign, the seeds' claims, the book
    "study": ("experiments", "cuda_tiling", "engine_figures", "committed", "profiles", "study", "gpu_campaign",
              "seed003", "seed003_experiments", "seed004", "claims", "book"),
}
