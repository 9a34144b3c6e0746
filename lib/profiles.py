"""The study's profiles: papermill parameters per notebook, overriding its stored (quick) defaults.

A profile maps a notebook's file name to one dict of parameters, or to a list of dicts to run the notebook
several times (05 runs once per network and dataset); a notebook a profile does not name runs once with
its stored defaults. ``python -m parbp.study --profile NAME`` runs one.
"""
from __future__ import annotations

_DEFAULT = {
    "02_serial.ipynb": dict(NET="2h", BATCHES=[1, 10, 100, 1000], REPEATS=5, TRAIN_NET="1h",
                            TRAIN_EXAMPLES=50_000, EPOCHS=5, BATCH_SIZE=50, LR=0.1),
    "03_threads.ipynb": dict(NET="2h", BATCHES=[10, 100, 1000], THREADS=[1, 2], REPEATS=5, HOGWILD_EXAMPLES=20_000,
                             HOGWILD_EPOCHS=5),
    # seed 003's experiment at its scale: all 50,000 training images, batch 100, 5 epochs, 1-4 processes,
    # the rate by grid search on the validation split (about 13 runs of ~20-40 s on 2 quiet cores)
    "06_mpi_sgd.ipynb": dict(processes=[1, 2, 3, 4], subset=None, epochs=5, lrs=[0.05, 0.1, 0.2], bench_steps=10,
                             measure_nets=["1h", "2h"], label="full"),
    # the engine goals' setting: Net-2h, all of MNIST, batch 1000, m = 8. With sigmoid + MSE, Net-2h at lr 0.1 sits on
    # a plateau near 0.9 for its first epochs; the threshold marks leaving it (equal epochs hold at any threshold)
    "07_data_vs_model_parallel.ipynb": dict(net="2h", subset=None, epochs=3, batch_size=1000, micro_batches=8,
                                            val_loss_threshold=0.92, sweep_batch=1000, sweep_steps=5,
                                            relay_steps=3, message_budget=0.03, label="full"),
    "05_speedup.ipynb": [
        dict(net="1h", dataset="mnist", batch_sizes=[1, 10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
        dict(net="2h", dataset="mnist", batch_sizes=[10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
        dict(net="1h", dataset="kddcup99", batch_sizes=[10, 100, 1000], threads=[1, 2], n_steps=5, label="full"),
    ],
    # the paper's setting on all of MNIST: grid search on the validation split, then 45 epochs (>= 97.5%)
    "08_accuracy.ipynb": dict(train_examples=50_000, grid_examples=50_000, lrs=[0.03, 0.1, 0.2], grid_epochs=1,
                              batch_size=10, epochs=45, expect_test_acc=0.975),
    # compression of notebook 08's trained Net-1h (>= 97.5 %); retraining at batch 50, lr 0.5 (08's per-example step)
    "09_memory_and_compression.ipynb": dict(
        model_path="../build/models/net1h_mnist_full.npz", train_examples=50_000, train_2h_epochs=5,
        memory_nets=["1h", "2h"], memory_batches=[10, 100, 1000], retrain_examples=50_000, retrain_epochs=1, retrain_lr=0.5,
        test_examples=10_000, schedule_1h=[[0.5, 0.3], [0.8, 0.5], [0.9, 0.6], [0.95, 0.7], [0.97, 0.75], [0.97, 0.75]],
        schedule_2h=[[0.5, 0.5, 0.3], [0.8, 0.8, 0.5], [0.9, 0.9, 0.6], [0.95, 0.95, 0.7]],
        bits_1h=[4, 5], bits_2h=[4, 4, 5], bits_curve=[2, 3, 4, 5, 6, 8], finetune_examples=10_000,
        speed_sparsities=[0.0, 0.5, 0.8, 0.9, 0.95, 0.97, 0.99], speed_batches=[1, 10, 100], speed_repeats=7,
        label="full", check_goals=True),
}

# The paper-scale experiments only (batch 10,000; all of MNIST in 06 and 07; the longer accuracy run), within
# 75 minutes on 2 cores. Cut: 00-04 (an empty list = not run), which have no paper-scale setting beyond the
# default's and no profile label, so a rerun would only overwrite the default's figures with more repeats;
# and Hogwild in 05 (below).
_NOT_PAPER_SCALE = ("00_setup_and_data.ipynb", "01_backprop_math.ipynb", "02_serial.ipynb", "03_threads.ipynb",
                    "04_cuda.ipynb")
_PAPER = {
    **_DEFAULT,
    **{name: [] for name in _NOT_PAPER_SCALE},
    # + the runs that explain our seed-003 rows (parbp.seed003_experiments): 2 seeds, the first 10,000 images,
    # and async x3, x4 at lr / w on all of them; and the timed runs twice more, so each time has 3 runs
    "06_mpi_sgd.ipynb": dict(_DEFAULT["06_mpi_sgd.ipynb"], lrs=[0.03, 0.05, 0.1, 0.2, 0.3], bench_steps=20,
                             explain_seeds=[0, 1], explain_subset=10_000, explain_processes=[2, 3, 4],
                             explain_seed_scale_workers=[3, 4], time_repeats=3, label="paper"),
    "07_data_vs_model_parallel.ipynb": dict(_DEFAULT["07_data_vs_model_parallel.ipynb"], epochs=5, goal_rounds=5,
                                            label="paper"),
    # the paper's implementations (and the GPU ones where there is a GPU); Hogwild is cut here: not in the
    # paper, and at batch 10,000 its 10-example microbatches took 7 of the 22 minutes of Net-2h's run (load ~5)
    "05_speedup.ipynb": [
        dict(run, batch_sizes=[1, 10, 100, 1000, 10_000] if run["net"] == "1h" else [10, 100, 1000, 10_000],
             n_steps=7, label="paper", impls=["serial-example", "serial-blas", "numpy", "threads", "blas-parallel",
                                              "hybrid", "torch", "pytensor", "theano", "numba-cuda", "cupy",
                                              "torch-cuda"])
        for run in _DEFAULT["05_speedup.ipynb"]
    ],
    "08_accuracy.ipynb": dict(_DEFAULT["08_accuracy.ipynb"], lrs=[0.01, 0.03, 0.1, 0.2], grid_epochs=2, epochs=60,
                              label="paper"),
    # compresses the network the paper profile's 08 trained
    "09_memory_and_compression.ipynb": dict(_DEFAULT["09_memory_and_compression.ipynb"],
                                            model_path="../build/models/net1h_mnist_paper.npz", label="paper"),
}

PROFILES: dict[str, dict[str, dict | list[dict]]] = {"default": _DEFAULT, "paper": _PAPER}
