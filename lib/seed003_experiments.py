"""Why our seed-003 rows differ from the seed's: each suspected difference put back, one run per variant.

    python -m parbp.seed003_experiments --subset 20000 --seeds 0 1 --out figures/06_seed003_explain_paper.csv

**Async.** Our parameter server adds every worker's change in full: with w workers in lockstep each update is
computed on weights w-1 updates old, and the server moves about w times as far per round as serial SGD. The
variants (``ASYNC``): ``delta`` (06's server), ``staleness`` (Zhang et al. 2016: lr/τ per gradient),
``per_worker`` (lr / w, the 1/(p-1) of p processes), ``replace`` (seed 003 read literally: the server takes the
worker's w_i as v), and serial SGD at lr / w (``serial_lr_per_worker``: as many updates, each as small as
per_worker's). "Processes" counts *workers*, as the seed's two-process async had two (plus the server's rank).

**Sync.** Averaging after every step of p workers at batch 100 is one step of batch p·100 (``serial_batch``,
which should match ``average``); ``whole_data`` gives every worker all the data, at our rate and at p times it
(``whole_data_lr_p``); ``SEED_SETUP`` puts back the seed's unstated setup at its rate 1.0, serially and averaged.

One row per variant × processes × seed (test accuracy, mean staleness, setting), appended to ``--out`` as it
finishes, so an interrupted run keeps what it measured.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from . import seed003

#: the CSV's columns, in order (one row per variant × processes × seed)
COLUMNS = ["experiment", "variant", "processes", "mpi_processes", "seed", "net", "loss", "lr", "lr_rule",
           "async_rule", "whole_data", "batch_size", "subset", "epochs", "test_acc", "test_loss", "val_acc",
           "staleness_mean", "updates_per_epoch", "time_s", "setting"]

#: async variant -> (the server's rule, the per-step rate as a function of (lr, workers), that rate in words)
ASYNC = {"delta": ("delta", lambda lr, w: lr, "lr"),
         "staleness": ("staleness", lambda lr, w: lr, "lr / max(1, staleness) per update"),
         "per_worker": ("delta", lambda lr, w: lr / w, "lr / workers"),
         "replace": ("replace", lambda lr, w: lr, "lr")}
#: the seed's unstated setup: variant -> (net, loss); trained with the numpy trainer at the seed's rate
SEED_SETUP = {"xent": ("1h", "xent"), "h100": ("100", "mse"), "xent_h100": ("100", "xent")}
SEED_LR = seed003.SEED_LR
SEED_ACCURACY = seed003.SEED_RESULTS.set_index(["method", "processes"]).accuracy  # the seed's own rows


def jobs(lr: float, processes: list[int], seeds: list[int], seed_scale_workers=()):
    """Every run as (fields for its row, seed003.run's arguments), async first (the issue's goal), then sync,
    then ``async_seed_scale``: serial SGD at lr and at lr / w, and async at lr / w, on all the training images
    (``subset=None``) for each of ``seed_scale_workers``."""
    for seed in seeds:
        yield dict(experiment="reference", variant="serial", processes=1, lr_rule="lr"), \
            dict(mode="allreduce", processes=1, lr=lr, seed=seed)
        for w in processes:
            # lr / w moves every update 1/w as far, over serial's number of updates: serial SGD at lr / w is
            # what per_worker can at best reach in the same epochs
            yield dict(experiment="async", variant="serial_lr_per_worker", processes=w, lr_rule="lr / workers, serial"), \
                dict(mode="allreduce", processes=1, lr=lr / w, seed=seed)
            for variant, (rule, rate, words) in ASYNC.items():
                yield dict(experiment="async", variant=variant, processes=w, lr_rule=words, async_rule=rule), \
                    dict(mode="async", processes=w + 1, lr=rate(lr, w), seed=seed, async_rule=rule)
    for seed in seeds:
        for p in processes:
            yield dict(experiment="sync", variant="serial_batch", processes=p, lr_rule="lr, batch p·100"), \
                dict(mode="allreduce", processes=1, lr=lr, seed=seed, batch_size=100 * p)
            yield dict(experiment="sync", variant="average", processes=p, lr_rule="lr"), \
                dict(mode="average", processes=p, lr=lr, seed=seed)
            for variant, scale, words in (("whole_data", 1, "lr"), ("whole_data_lr_p", p, "lr · p")):
                yield dict(experiment="sync", variant=variant, processes=p, lr_rule=words, whole_data=True), \
                    dict(mode="average", processes=p, lr=lr * scale, seed=seed, whole_data=True)
        for variant, (net, loss) in SEED_SETUP.items():
            for p in [1, *processes]:
                yield dict(experiment="seed_setup", variant=variant, processes=p, lr_rule="1.0 (the seed's)"), \
                    dict(mode="allreduce" if p == 1 else "average", processes=p, lr=SEED_LR, seed=seed, net=net,
                         loss=loss, impl="numpy")
    scale = dict(experiment="async_seed_scale")
    for seed in seeds if seed_scale_workers else ():
        yield dict(scale, variant="serial", processes=1, lr_rule="lr"), \
            dict(mode="allreduce", processes=1, lr=lr, seed=seed, subset=None)
        for w in seed_scale_workers:
            yield dict(scale, variant="serial_lr_per_worker", processes=w, lr_rule="lr / workers, serial"), \
                dict(mode="allreduce", processes=1, lr=lr / w, seed=seed, subset=None)
            yield dict(scale, variant="per_worker", processes=w, lr_rule="lr / workers", async_rule="delta"), \
                dict(mode="async", processes=w + 1, lr=lr / w, seed=seed, subset=None)


def seed_setup_jobs(processes: list[int], seeds: list[int]):
    """The seed's likely setup put back on all the training images: a 100-unit hidden layer, MSE and its rate
    1.0 (its serial run took 9 s for 5 epochs, a small network's time), trained serially and averaged over p
    processes, and async with w workers under both server rules (``delta``, ours; ``replace``, the seed's)."""
    setup = dict(lr=SEED_LR, net="100", loss="mse", impl="numpy", subset=None)
    for seed in seeds:
        for p in [1, *processes]:
            yield dict(experiment="seed_setup_all", variant="h100", processes=p, lr_rule="1.0 (the seed's)"), \
                dict(mode="allreduce" if p == 1 else "average", processes=p, seed=seed, **setup)
        for w in processes:
            for rule in ("delta", "replace"):
                yield dict(experiment="seed_setup_all", variant=f"h100_async_{rule}", processes=w,
                           lr_rule="1.0 (the seed's)", async_rule=rule), \
                    dict(mode="async", processes=w + 1, seed=seed, async_rule=rule, **setup)


def run(ds, lr: float, processes=(2, 3, 4), seeds=(0, 1), subset=None, epochs=5, net="1h", out=None,
        log=print, seed_scale_workers=(), seed_setup_only=False, **common) -> pd.DataFrame:
    """Every job of ``jobs`` (or only ``seed_setup_jobs``); with ``out``, rows are appended to that CSV as they
    finish (and it is started afresh). ``common`` goes to every ``seed003.run`` (e.g. ``dataset``, ``impl``)
    below the job's own."""
    from .results import write_csv

    if not seeds or not processes:
        raise ValueError("seeds and processes must each name at least one value")
    rows, full = [], len(ds.X_train)
    todo = seed_setup_jobs(list(processes), list(seeds)) if seed_setup_only else \
        jobs(lr, list(processes), list(seeds), list(seed_scale_workers))
    for fields, job in todo:
        job = {"net": net, "batch_size": seed003.SETTING["batch_size"], "subset": subset, **common, **job}
        data = f"all {full:,} training images" if job["subset"] is None else \
            f"the first {job['subset']:,} of {full:,} training images (cut for time)"
        mode, n = job.pop("mode"), job.pop("processes")
        df = seed003.run(mode, n, ds=ds, epochs=epochs, **job)
        last = df[df["rank"] == 0].sort_values("epoch").iloc[-1]  # the final epoch, as rank 0 saw it
        rows.append({"async_rule": "", "whole_data": False, **fields, "seed": job["seed"], "net": job["net"],
                     "loss": job.get("loss", "mse"), "lr": job["lr"], "batch_size": job["batch_size"],
                     "subset": job["subset"] or full, "epochs": epochs, "mpi_processes": int(last.processes),
                     "setting": f"MNIST, {data}, {epochs} epochs, lr decay 1%/epoch, sigmoid hidden layer, test "
                                "accuracy on 10,000 images",
                     "test_acc": last.test_acc, "test_loss": last.test_loss, "val_acc": last.val_acc,
                     "staleness_mean": last.get("staleness_mean", float("nan")),
                     "updates_per_epoch": last.get("updates", float("nan")), "time_s": last.elapsed_s})
        log(f"{fields['experiment']:10s} {fields['variant']:15s} x{fields['processes']} seed {job['seed']}: "
            f"test acc {rows[-1]['test_acc']:.4f}, staleness {rows[-1]['staleness_mean']:.2f}")
        if out:
            write_csv(pd.DataFrame(rows, columns=COLUMNS), out)
    return pd.DataFrame(rows, columns=COLUMNS)


def summary(df: pd.DataFrame) -> pd.DataFrame:
    """Per variant and process count, over seeds: test accuracy (mean, min, max), mean staleness, and the gap
    in points to serial SGD of the same setup and seed (the reference run; for the seed's setup, its
    processes-1 row), mean and worst."""
    serial = df[df.processes == 1].groupby(["experiment", "variant", "seed"]).test_acc.first()
    own = {"seed_setup": None, "async_seed_scale": "serial", "seed_setup_all": "h100"}  # None: the row's own variant
    key = [(e, own[e] or v, s) if e in own else ("reference", "serial", s)
           for e, v, s in zip(df.experiment, df.variant, df.seed)]
    df = df.assign(gap_points=100 * (df.test_acc - serial.reindex(key).to_numpy()))
    return (df.groupby(["experiment", "variant", "processes"], sort=False)
            .agg(seeds=("seed", "nunique"), test_acc=("test_acc", "mean"), test_acc_min=("test_acc", "min"),
                 test_acc_max=("test_acc", "max"), staleness_mean=("staleness_mean", "mean"),
                 gap_points=("gap_points", "mean"), gap_points_min=("gap_points", "min"),
                 gap_points_max=("gap_points", "max"), lr=("lr", "first"), lr_rule=("lr_rule", "first"))
            .reset_index())


def findings(df: pd.DataFrame, tolerance_points: float = 3.0, seed_margin_points: float = 3.0) -> list[str]:
    """What the runs say, as sentences built from the numbers."""
    s = summary(df)
    ref = df[df.experiment == "reference"].test_acc
    out = [f"Serial SGD (the reference): test accuracy {ref.mean():.4f} over {len(ref)} seed(s) "
           f"({df.setting.iloc[0]})."] if len(ref) else []
    out += _seed_setup_findings(s)
    asyncs = s[s.experiment.isin(["async", "async_seed_scale"])]
    where = {"async": "", "async_seed_scale": " on all the training images"}
    for (experiment, w), g in asyncs[asyncs.processes > 1].groupby(["experiment", "processes"], sort=False):
        g = g.set_index("variant")
        fixed = [v for v in ("staleness", "per_worker") if v in g.index and g.gap_points_min[v] >= -tolerance_points]
        parts = ", ".join(f"{v} {g.test_acc[v]:.4f} ({g.gap_points[v]:+.1f} pts"
                          + (f", staleness {g.staleness_mean[v]:.2f})" if g.staleness_mean.notna()[v] else ")")
                          for v in g.index)
        verdict = (f"within {tolerance_points:g} points of serial for every seed with: {', '.join(fixed)}" if fixed else
                   f"no rate brings it within {tolerance_points:g} points of serial")
        out.append(f"Async with {w} workers ({w + 1} MPI processes){where[experiment]}: {parts}; {verdict}.")
    st = s[(s.experiment == "async") & (s.variant == "staleness")].set_index("processes")
    low = st[st.staleness_mean <= 1.5].staleness_mean
    if len(low):  # lr/τ with τ <= 1 is the full rate: the rule cannot slow those updates down
        out.append("Where the staleness-aware run's mean staleness is at most 1.5 ("
                   + ", ".join(f"{w} workers: {m:.2f}" for w, m in low.items())
                   + "), lr/τ leaves most updates at the full rate.")
    for (experiment, w), g in asyncs.groupby(["experiment", "processes"]):
        g = g.set_index("variant")
        if {"per_worker", "serial_lr_per_worker"} <= set(g.index):
            out.append(f"Async with {w} workers at lr / {w}{where[experiment]}: "
                       f"{_versus(g, 'per_worker', 'serial_lr_per_worker')} serial SGD at lr / {w}, whose gap to "
                       f"serial at lr is {g.gap_points['serial_lr_per_worker']:+.1f} pts in these epochs.")
    y = s[s.experiment == "sync"].set_index(["variant", "processes"])
    for p in sorted({p for _, p in y.index}):
        if ("serial_batch", p) in y.index and ("average", p) in y.index:
            out.append(f"Sync x{p} (one averaged step of {p} x batch 100 is one step of batch {100 * p}; both take 1/{p} "
                       f"of serial's steps): averaging {_versus(y.xs(p, level='processes'), 'average', 'serial_batch')} "
                       f"serial SGD at batch {100 * p}.")
    beat = s[s.experiment.isin(["sync", "seed_setup"]) & (s.processes > 1) & (s.variant != "serial_batch")]
    if len(beat):
        best = beat.loc[beat.gap_points.idxmax()]
        winners = beat[beat.gap_points_min >= seed_margin_points - 1]
        out.append(f"The best sync setting against its serial run: {best.experiment}/{best.variant} x{best.processes} "
                   f"at {best.gap_points:+.1f} pts (seed 003: +3.3 pts). "
                   + (f"Settings where sync beats serial by about {seed_margin_points:g} points for every seed: "
                      + ", ".join(f"{r.experiment}/{r.variant} x{r.processes} ({r.gap_points:+.1f})" for r in winners.itertuples())
                      if len(winners) else f"No setting tried beats serial by about {seed_margin_points:g} points."))
    return out


def _seed_setup_findings(s: pd.DataFrame) -> list[str]:
    """The seed's setup on all the images beside the seed's own accuracies, per method and process count."""
    g = s[s.experiment == "seed_setup_all"].set_index(["variant", "processes"])
    if g.empty:
        return []
    def row(variant, p, method):
        r = g.loc[(variant, p)]
        return (f"x{p} {r.test_acc:.4f} ({r.test_acc_min:.4f}-{r.test_acc_max:.4f}; "
                f"seed {SEED_ACCURACY.get((method, p), float('nan')):.4f})")
    out = [f"The seed's setup (100 hidden units, MSE, lr 1.0) on all the training images, mean over {int(g.seeds.max())} "
           f"seed(s): serial {g.loc[('h100', 1)].test_acc:.4f} (seed {SEED_ACCURACY['serial', 1]:.4f}); sync "
           + ", ".join(row("h100", p, "sync") for v, p in g.index if v == "h100" and p > 1) + "."]
    for rule in ("delta", "replace"):
        ws = [p for v, p in g.index if v == f"h100_async_{rule}"]
        if ws:
            out.append(f"Async ({rule}) in that setup with w workers: "
                       + ", ".join(row(f"h100_async_{rule}", w, "async") for w in ws) + ".")
    return out


def _versus(g: pd.DataFrame, a: str, b: str) -> str:
    """'0.70 (seeds 0.69-0.71) is within the seeds' spread of 0.71 (...)' for two variants' rows of a summary."""
    def acc(v):
        return f"{g.test_acc[v]:.4f} (seeds {g.test_acc_min[v]:.4f}-{g.test_acc_max[v]:.4f})"
    overlap = g.test_acc_min[a] <= g.test_acc_max[b] and g.test_acc_min[b] <= g.test_acc_max[a]
    return f"{a} {acc(a)} is {'within' if overlap else 'outside'} the seeds' spread of {b} {acc(b)},"


def beside_seed(df: pd.DataFrame) -> pd.DataFrame:
    """Seed 003's async and sync rows as gaps to its serial run (points), beside every variant's gap to our serial
    run (mean, min and max over seeds): the gap, not the accuracy, is what a different data size and loss leave
    comparable."""
    s = summary(df)
    s = s[s.experiment.isin(["async", "async_seed_scale", "sync", "seed_setup"]) & (s.processes > 1)].copy()
    s["seed_gap_points"] = [100 * (SEED_ACCURACY.get(("async" if e.startswith("async") else "sync", p), float("nan"))
                                   - SEED_ACCURACY["serial", 1]) for e, p in zip(s.experiment, s.processes)]
    return s[["experiment", "processes", "seed_gap_points", "variant", "gap_points", "gap_points_min",
              "gap_points_max"]].reset_index(drop=True)


def main(argv=None) -> int:
    from . import cli, data

    parser = cli.Parser(prog="python -m parbp.seed003_experiments", description=__doc__.split("\n\n")[0])
    parser.add_argument("--subset", type=cli.positive_int, default=None, help="first N training images (default all)")
    parser.add_argument("--epochs", type=cli.positive_int, default=seed003.SETTING["epochs"])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--processes", type=cli.positive_int, nargs="+", default=[2, 3, 4])
    parser.add_argument("--seed-scale-workers", type=cli.positive_int, nargs="*", default=[3, 4],
                        help="async at lr / w on all the training images for these worker counts")
    parser.add_argument("--lr", type=cli.positive_float, default=0.1, help="serial SGD's rate (06's grid picks 0.1)")
    parser.add_argument("--seed-setup-only", action="store_true",
                        help="only the seed's likely setup (100 hidden units, MSE, lr 1.0) on all the training images")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    df = run(data.load_first("mnist"), args.lr, args.processes, args.seeds, args.subset, args.epochs, out=args.out,
             seed_scale_workers=args.seed_scale_workers, seed_setup_only=args.seed_setup_only)
    print("\n".join(findings(df)))
    return 0


if __name__ == "__main__":
    from .cli import run as _run

    sys.exit(_run(main, prog="python -m parbp.seed003_experiments"))
