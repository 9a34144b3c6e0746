"""Checkpoints and saved networks: a run's state in one ``.npz``, written atomically, read back whole or refused.

    checkpoint.save(path, params, state)      # params [(W, b), ...]; state: a JSON-able dict
    params, state = checkpoint.load(path)     # CheckpointError if the file is truncated or corrupt
    checkpoint.check_identity(state, identity, path)   # CheckpointMismatch naming the field that differs

    save_params(path, params, meta)            # a trained network for another notebook or program
    params, meta = load_params(path)

A plain ``.npz``: ``W0, b0, W1, b1, ...`` (W (n_in, n_out), as every trainer stores it) and ``meta``, a JSON
string holding a SHA-256 of every array, so a file changed after writing is refused. Written through
``results.atomic_write``: a run killed while saving leaves the previous checkpoint, never half of a new one.
"""
from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np

from .results import atomic_write

FORMAT = 1  # bump when the layout changes; an old file is then refused with a message saying so


class CheckpointError(ValueError):
    """The file cannot be used: truncated, corrupt, or not a parbp checkpoint."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint belongs to another run (another net, dataset, trainer, seed, ...)."""


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _flatten(params) -> dict[str, np.ndarray]:
    return {f"{k}{l}": np.asarray(a) for l, (W, b) in enumerate(params) for k, a in (("W", W), ("b", b))}


def save_arrays(path, arrays: dict[str, np.ndarray], meta: dict) -> Path:
    """Named arrays and a meta dict in one .npz, with the arrays' SHA-256: every file parbp saves (checkpoints,
    trained networks, compressed networks) is written here and read back by ``load_arrays``."""
    text = np.array(json.dumps({**meta, "format": FORMAT, "sha256": _digest(arrays)}))

    def write(tmp):
        with open(tmp, "wb") as f:  # a file, not a name: np.savez would add .npz to a name
            np.savez(f, meta=text, **arrays)

    return atomic_write(path, write)


def load_arrays(path) -> tuple[dict[str, np.ndarray], dict]:
    """Every array and the meta dict, verified; nothing is returned from a damaged file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}  # reads every member: the zip checks each one's CRC
        meta = json.loads(str(arrays.pop("meta")))
    except (zipfile.BadZipFile, OSError, EOFError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path} is truncated or corrupt and was not loaded ({type(e).__name__}: {e}); "
                              f"delete it to start over") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a parbp checkpoint of format {FORMAT} "
                              f"(found format {meta.get('format') if isinstance(meta, dict) else None!r})")
    if _digest(arrays) != meta.get("sha256"):
        raise CheckpointError(f"{path} is corrupt: its arrays do not match the SHA-256 recorded when it was "
                              f"written; it was not loaded")
    return arrays, meta


# -- Training checkpoints --------------------------------------------------------------------------


def save(path, params, state: dict) -> Path:
    """Write ``params`` and ``state`` (JSON-able: epoch, history, RNG state, the run's identity) atomically."""
    return save_arrays(path, _flatten(params), {"kind": "checkpoint", "state": state})


def load(path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """(params, state) from ``path``; CheckpointError if it is damaged, FileNotFoundError if absent."""
    params, meta = _read_kind(path, "checkpoint", "a saved network, not a training checkpoint")
    return params, meta["state"]


def check_identity(state: dict, identity: dict, path) -> None:
    """Refuse a checkpoint whose recorded run differs from this one, naming every field that differs."""
    saved, now = state.get("identity", {}), json.loads(json.dumps(identity))  # tuples stored as lists
    diffs = [f"{k}: checkpoint has {saved.get(k)!r}, this run has {now[k]!r}"
             for k in now if saved.get(k) != now[k]]
    if diffs:
        raise CheckpointMismatch(f"{path} belongs to another run and was not loaded; " + "; ".join(diffs))


def data_fingerprint(dataset) -> dict:
    """What identifies a dataset for resuming: its name, split sizes and a hash of the training split."""
    h = hashlib.blake2b(digest_size=16)
    for a in (dataset.X_train, dataset.Y_train):
        h.update(np.ascontiguousarray(a).tobytes())
    return {"name": dataset.name, "n_train": len(dataset.X_train), "n_val": len(dataset.X_val),
            "n_test": len(getattr(dataset, "X_test", ())), "train_blake2b": h.hexdigest()}


def rng_from_state(state: dict) -> np.random.Generator:
    """A generator in the state a checkpoint recorded (``rng.bit_generator.state``)."""
    bitgen = getattr(np.random, state["bit_generator"])()
    bitgen.state = state
    return np.random.Generator(bitgen)


# -- Saved networks (a trained model handed from one notebook to another) --------------------------


def save_params(path, params, meta: dict) -> Path:
    """Write a trained network: ``W0, b0, W1, b1, ...`` as given (W is (n_in, n_out)) and ``meta`` as JSON."""
    if reserved := {"kind", "format", "sha256"} & set(meta):
        raise ValueError(f"meta keys {sorted(reserved)} are reserved for the file's own bookkeeping")
    return save_arrays(path, _flatten(params), {**meta, "kind": "params"})


def load_params(path) -> tuple[list[tuple[np.ndarray, np.ndarray]], dict]:
    """(params, meta) from a file written by ``save_params``; damaged files are refused."""
    params, meta = _read_kind(path, "params", "a training checkpoint, not a saved network (use checkpoint.load)")
    return params, {k: v for k, v in meta.items() if k not in ("kind", "format", "sha256")}


def _read_kind(path, kind: str, otherwise: str):
    """(params, meta) of a verified file of this ``kind``; CheckpointError saying it is ``otherwise``."""
    arrays, meta = load_arrays(path)
    if meta.get("kind") != kind:
        raise CheckpointError(f"{path} is {otherwise}")
    try:
        return [(arrays[f"W{l}"], arrays[f"b{l}"]) for l in range(sum(k.startswith("W") for k in arrays))], meta
    except KeyError as e:
        raise CheckpointError(f"{path} lacks array {e.args[0]}; it was not loaded") from None
