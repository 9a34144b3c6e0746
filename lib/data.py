"""Datasets of the study: MNIST and KDD Cup 1999 (seed 001 §5.1), plus Fashion-MNIST.

    ds = parbp.data.load("mnist")
    ds.X_train, ds.Y_train, ds.X_val, ds.Y_val, ds.X_test, ds.Y_test   # float32
    ds.y_train, ds.y_val, ds.y_test                                    # integer labels

Files are looked up, in order, in ``$PARBP_DATA``, the repository's ``data/``, ``/usr/share/datasets/``
(Debian's dataset packages), and only then downloaded with pooch from the standard mirrors.
Integrity is checked by the sha256 of the *decompressed* bytes, because mirrors re-pack the ``.gz``
wrappers (seen here: the MNIST training images). ``PARBP_OFFLINE=1`` forbids downloads.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from .cli import check_choice
from .results import ROOT

REPO_DATA = ROOT / "data"
SYSTEM_DATA = Path("/usr/share/datasets")


class DataNotFoundError(FileNotFoundError):
    """A dataset file is neither on disk nor downloadable."""


class DataIntegrityError(ValueError):
    """A dataset file or array is not what it should be (hash, header, shape, NaN)."""


@dataclass(frozen=True)
class Source:
    """One file of a dataset: where it may live and what its bytes must hash to."""

    folder: str               # sub-folder under each data root, e.g. "mnist"
    filename: str             # the compressed name, e.g. "train-images-idx3-ubyte.gz"
    sha256: str               # of the decompressed bytes ('' if only the .gz hash is known)
    mirrors: tuple[str, ...]  # base URLs the file can be downloaded from
    gz_sha256: str = ""       # of the canonical .gz, accepted when the raw hash is unknown


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/",
                  "https://storage.googleapis.com/cvdf-datasets/mnist/")
_KDD_MIRRORS = ("http://kdd.ics.uci.edu/databases/kddcup99/",
                "https://archive.ics.uci.edu/ml/machine-learning-databases/kddcup99-mld/")

# the four files of an MNIST-format dataset and the shape each one's header must give
_IDX = {"train-images-idx3-ubyte": (60_000, 28, 28), "train-labels-idx1-ubyte": (60_000,),
        "t10k-images-idx3-ubyte": (10_000, 28, 28), "t10k-labels-idx1-ubyte": (10_000,)}


def _idx_sources(folder: str, mirrors: tuple[str, ...], hashes: tuple[str, ...]) -> dict[str, Source]:
    """The four IDX files of an MNIST-format dataset, with the sha256 of each one's decompressed bytes."""
    return {stem: Source(folder, stem + ".gz", sha, mirrors) for stem, sha in zip(_IDX, hashes)}


SOURCES: dict[str, dict[str, Source]] = {
    "mnist": _idx_sources("mnist", _MNIST_MIRRORS, (
        "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    )),
    "fashion-mnist": _idx_sources("fashion-mnist", ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",), (
        "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    )),
    "kddcup99": {
        "10percent": Source("kddcup99", "kddcup.data_10_percent.gz",
                            "f8c8267ebcd9c0ed1fd7d6277fe5bfff8732e9b7db8e61b873542b2a534b6f9a", _KDD_MIRRORS,
                            gz_sha256="8045aca0d84e70e622d1148d7df782496f6333bf6eb979a1b0837c42a9fd9561"),
        # Only the canonical .gz hash of the full set is published; its row count is checked too.
        "full": Source("kddcup99", "kddcup.data.gz", "", _KDD_MIRRORS,
                       gz_sha256="3b6c942aa0356c0ca35b7b595a26c89d343652c9db428893e7494f837b274292"),
    },
}

NAMES = tuple(SOURCES)
KDD_SUBSETS = {"10percent": 494_021, "full": 4_898_431}
KDD_ENCODINGS = ("onehot", "ordinal")

# The symbolic features of KDD Cup 99, with every value kddcup.names lists (fixed, so the input width
# does not depend on which subset was loaded).
KDD_CATEGORIES = {
    1: ("icmp", "tcp", "udp"),
    2: ("IRC", "X11", "Z39_50", "aol", "auth", "bgp", "courier", "csnet_ns", "ctf", "daytime", "discard",
        "domain", "domain_u", "echo", "eco_i", "ecr_i", "efs", "exec", "finger", "ftp", "ftp_data", "gopher",
        "harvest", "hostnames", "http", "http_2784", "http_443", "http_8001", "imap4", "iso_tsap", "klogin",
        "kshell", "ldap", "link", "login", "mtp", "name", "netbios_dgm", "netbios_ns", "netbios_ssn", "netstat",
        "nnsp", "nntp", "ntp_u", "other", "pm_dump", "pop_2", "pop_3", "printer", "private", "red_i",
        "remote_job", "rje", "shell", "smtp", "sql_net", "ssh", "sunrpc", "supdup", "systat", "telnet",
        "tftp_u", "tim_i", "time", "urh_i", "urp_i", "uucp", "uucp_path", "vmnet", "whois"),
    3: ("OTH", "REJ", "RSTO", "RSTOS0", "RSTR", "S0", "S1", "S2", "S3", "SF", "SH"),
}
KDD_N_FEATURES = 41


# -- The dataset object ----------------------------------------------------------------------------


@dataclass
class Dataset:
    """Train/validation/test splits as float32 matrices (one example per row) plus integer labels."""

    name: str
    X_train: np.ndarray
    Y_train: np.ndarray
    X_val: np.ndarray
    Y_val: np.ndarray
    X_test: np.ndarray
    Y_test: np.ndarray
    classes: tuple = ()
    info: dict = field(default_factory=dict)

    def __post_init__(self):
        for split in ("train", "val", "test"):
            X, Y = getattr(self, f"X_{split}"), getattr(self, f"Y_{split}")
            for kind, A, width in (("X", X, self.n_in), ("Y", Y, self.n_out)):
                if A.ndim != 2 or A.shape[1] != width:
                    raise DataIntegrityError(f"{self.name}: {kind}_{split} must have shape (n, {width}), got {A.shape}")
            if X.shape[0] != Y.shape[0]:
                raise DataIntegrityError(f"{self.name}: X_{split} has {X.shape[0]} rows but Y_{split} has {Y.shape[0]}")
            if X.dtype != np.float32 or Y.dtype != np.float32:
                raise DataIntegrityError(f"{self.name}: {split} arrays must be float32, got {X.dtype} and {Y.dtype}")
            if not np.isfinite(X).all():
                raise DataIntegrityError(f"{self.name}: X_{split} contains NaN or infinite values")

    n_in = property(lambda self: self.X_train.shape[1])
    n_out = property(lambda self: self.Y_train.shape[1])

    @staticmethod
    def labels(Y: np.ndarray) -> np.ndarray:
        """Integer labels from one-hot rows, or from a single 0/1 column."""
        return (Y[:, 0] > 0.5).astype(np.int64) if Y.shape[1] == 1 else Y.argmax(axis=1)

    y_train = property(lambda self: self.labels(self.Y_train))
    y_val = property(lambda self: self.labels(self.Y_val))
    y_test = property(lambda self: self.labels(self.Y_test))

    def take(self, n_train: int, n_val: int | None = None, n_test: int | None = None) -> "Dataset":
        """The first rows of each split: a quick, deterministic subset for demos and tests."""
        n_val = n_train // 5 if n_val is None else n_val
        n_test = n_val if n_test is None else n_test
        return replace(self, X_train=self.X_train[:n_train], Y_train=self.Y_train[:n_train], X_val=self.X_val[:n_val],
                       Y_val=self.Y_val[:n_val], X_test=self.X_test[:n_test], Y_test=self.Y_test[:n_test])

    def __repr__(self):
        return (f"<Dataset {self.name}: train {self.X_train.shape}, val {self.X_val.shape}, "
                f"test {self.X_test.shape}, {self.n_out} output(s)>")


# -- Finding, downloading and verifying files ------------------------------------------------------


def search_roots() -> list[Path]:
    """Folders searched for dataset files, in order."""
    return [Path(p).expanduser() for p in [os.environ.get("PARBP_DATA")] if p] + [REPO_DATA, SYSTEM_DATA]


def sha256(data: bytes) -> str:
    """The hex SHA-256 of ``data``."""
    return hashlib.sha256(data).hexdigest()


def read(src: Source, path: Path | None = None) -> bytes:
    """The decompressed bytes of ``path`` (default: ``src`` found or downloaded), checked against ``src``'s hash."""
    path = fetch(src) if path is None else path
    raw_file = path.read_bytes()
    compressed = raw_file[:2] == b"\x1f\x8b"
    try:
        data = gzip.decompress(raw_file) if compressed else raw_file
    except (OSError, EOFError) as e:
        raise DataIntegrityError(f"{path} is not a readable gzip file ({e}); delete it and fetch it again") from None
    if not (sha256(data) == src.sha256 if src.sha256 else compressed and sha256(raw_file) == src.gz_sha256):
        raise DataIntegrityError(f"{path} is corrupt or not the expected file: its sha256 does not match "
                                 f"{src.sha256 or f'(of the .gz) {src.gz_sha256}'}. Delete it and fetch it again "
                                 "(see data/README.md).")
    return data


def locate(src: Source) -> Path | None:
    """The first existing copy of ``src`` (compressed or not) under the search roots."""
    names = (src.filename, src.filename.removesuffix(".gz"))
    return next((path for root in search_roots() for folder in (root / src.folder, root) for name in names
                 if (path := folder / name).is_file()), None)


def fetch(src: Source) -> Path:
    """A verified local copy of ``src``: found on disk, or downloaded with pooch."""
    if (path := locate(src)) is not None:
        return path
    searched = ", ".join(str(r / src.folder) for r in search_roots())
    if os.environ.get("PARBP_OFFLINE"):
        raise DataNotFoundError(f"{src.filename} not found (searched {searched}) and downloads are off (PARBP_OFFLINE "
                                f"is set). Point PARBP_DATA at a folder holding {src.folder}/{src.filename}.")
    import pooch

    # where PARBP_DATA or the repository's data/ would find it, else pooch's cache
    root = search_roots()[0] if os.environ.get("PARBP_DATA") or REPO_DATA.is_dir() else Path(pooch.os_cache("parbp"))
    errors = []
    for mirror in src.mirrors:
        try:
            got = Path(pooch.retrieve(mirror + src.filename, known_hash=None, fname=src.filename,
                                      path=root / src.folder, progressbar=False))
            read(src, got)
            return got
        except DataIntegrityError as e:  # downloaded, but not the file: gone, so that it is not found next time
            got.unlink(missing_ok=True)
            errors.append(f"{mirror}: {e}")
        except Exception as e:  # network errors come in many types (requests, urllib3, OSError)
            errors.append(f"{mirror}: {type(e).__name__}: {e}")
    raise DataNotFoundError(f"{src.filename} not found (searched {searched}) and could not be downloaded:\n  "
                            + "\n  ".join(errors) + "\nIf this machine is offline, copy the file into "
                            f"$PARBP_DATA/{src.folder}/ and set PARBP_DATA.")


# -- MNIST-format (IDX) datasets -------------------------------------------------------------------


def parse_idx(data: bytes, expect_shape: tuple) -> np.ndarray:
    """An IDX file (the MNIST format) as a uint8 array, checking the header against ``expect_shape``."""
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise DataIntegrityError("not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if shape != tuple(expect_shape):
        raise DataIntegrityError(f"IDX header says shape {shape}, expected {tuple(expect_shape)}")
    arr = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise DataIntegrityError(f"IDX body has {arr.size} bytes, the header promises {int(np.prod(shape))}")
    return arr.reshape(shape)


def one_hot(y: np.ndarray, n: int) -> np.ndarray:
    """Integer labels as float32 one-hot rows of width ``n``."""
    return np.eye(n, dtype=np.float32)[y]


IDX_CLASSES = {"mnist": tuple(str(d) for d in range(10)),
               "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker",
                                 "Bag", "Ankle boot")}


def _load_idx_dataset(name: str, n_val: int = 10_000) -> Dataset:
    X, y, X_test, y_test = (parse_idx(read(SOURCES[name][stem]), shape) for stem, shape in _IDX.items())
    flat = lambda a: a.reshape(len(a), -1).astype(np.float32) / np.float32(255)  # noqa: E731  scale to [0, 1]
    n_train = len(X) - n_val  # seed 000: the first 50,000 train, the last 10,000 validate
    return Dataset(name, flat(X[:n_train]), one_hot(y[:n_train], 10), flat(X[n_train:]), one_hot(y[n_train:], 10),
                   flat(X_test), one_hot(y_test, 10), IDX_CLASSES[name],
                   {"split": f"train = first {n_train} of the official training set, val = last {n_val}, "
                             "test = the official 10,000", "scaling": "pixels / 255"})


# -- KDD Cup 1999 ----------------------------------------------------------------------------------


def parse_kdd(data: bytes, encoding: str = "onehot") -> tuple[np.ndarray, np.ndarray]:
    """Features (float64) and the binary label (1 = attack) of KDD Cup 99 CSV bytes."""
    import pandas as pd

    df = pd.read_csv(io.BytesIO(data), header=None)
    if df.shape[1] != KDD_N_FEATURES + 1:
        raise DataIntegrityError(f"KDD Cup 99 rows must have {KDD_N_FEATURES} features + a label, "
                                 f"got {df.shape[1]} columns")
    y = (df.pop(KDD_N_FEATURES).astype(str) != "normal.").to_numpy(np.int64)
    columns = [None if c in KDD_CATEGORIES else df[c].to_numpy(np.float64)[:, None] for c in range(KDD_N_FEATURES)]
    for col, vocab in KDD_CATEGORIES.items():
        codes = pd.Index(vocab).get_indexer(df[col])
        if (codes < 0).any():
            unknown = sorted(set(df[col][codes < 0]))[:5]
            raise DataIntegrityError(f"KDD Cup 99 column {col} has values outside kddcup.names: {unknown}")
        columns[col] = np.eye(len(vocab))[codes] if encoding == "onehot" else codes.astype(np.float64)[:, None]
    return np.hstack(columns), y


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Index arrays, one per fraction, with each class spread in proportion (seeded)."""
    rng = np.random.default_rng(seed)
    # per class: its indices, shuffled and cut in the fractions
    chunks = [np.split(idx, np.round(np.cumsum(fractions)[:-1] * len(idx)).astype(int))
              for idx in (rng.permutation(np.flatnonzero(y == cls)) for cls in np.unique(y))]
    return [rng.permutation(np.concatenate(part)) for part in zip(*chunks)]


def _load_kdd(subset: str = "10percent", encoding: str = "onehot", seed: int = 0,
              fractions=(25 / 36, 5 / 36, 6 / 36)) -> Dataset:
    check_choice("kddcup99 subset", subset, KDD_SUBSETS, unknown=True)
    check_choice("kddcup99 encoding", encoding, KDD_ENCODINGS, unknown=True)
    X, y = parse_kdd(read(SOURCES["kddcup99"][subset]), encoding)
    if len(y) != KDD_SUBSETS[subset]:
        raise DataIntegrityError(f"kddcup99 {subset} should have {KDD_SUBSETS[subset]} rows, got {len(y)}")
    train, val, test = stratified_split(y, fractions, seed)
    # Standardize with training statistics only; constant columns are left centred, not divided by 0.
    numeric = _kdd_numeric_columns(encoding)
    mean, std = X[train][:, numeric].mean(axis=0), X[train][:, numeric].std(axis=0)
    X[:, numeric] = (X[:, numeric] - mean) / np.where(std == 0, 1.0, std)
    X, Y = X.astype(np.float32), y.astype(np.float32)[:, None]
    return Dataset("kddcup99", X[train], Y[train], X[val], Y[val], X[test], Y[test], ("normal", "attack"),
                   {"subset": subset, "encoding": encoding, "seed": seed,
                    "split": "stratified by label, seeded: test = 1/6, the rest train:val = 5:1 (seed 001 §5.1)",
                    "scaling": "numeric columns standardized with train mean/std"})


def _kdd_numeric_columns(encoding: str) -> np.ndarray:
    """Positions of the non-categorical columns after encoding (those get standardized)."""
    if encoding == "ordinal":
        return np.arange(KDD_N_FEATURES)
    return np.flatnonzero(np.concatenate([np.zeros(len(KDD_CATEGORIES[c])) if c in KDD_CATEGORIES else [1]
                                          for c in range(KDD_N_FEATURES)]))


# -- The public entry points -----------------------------------------------------------------------


def load(name: str, **kwargs) -> Dataset:
    """Load a dataset by name: "mnist", "fashion-mnist" or "kddcup99". kddcup99 takes ``subset`` ("10percent",
    the default, or "full"), ``encoding`` ("onehot", the default: 122 inputs, so an MLP reads no order into
    service names; or "ordinal": the paper's 41 raw features) and the split ``seed``."""
    if check_choice("dataset", name, NAMES, unknown=True) == "kddcup99":
        return _load_kdd(**kwargs)
    if kwargs:
        raise ValueError(f"dataset {name!r} takes no options, got {sorted(kwargs)}")
    return _load_idx_dataset(name)


def dims(name: str, encoding: str = "onehot") -> tuple[int, int]:
    """(n_in, n_out) of a dataset without loading it (for benchmarks on synthetic batches)."""
    if check_choice("dataset", name, NAMES, unknown=True) == "kddcup99":
        check_choice("kddcup99 encoding", encoding, KDD_ENCODINGS, unknown=True)
        return KDD_N_FEATURES + (sum(len(v) - 1 for v in KDD_CATEGORIES.values()) if encoding == "onehot" else 0), 1
    return 784, 10


TOY = "toy"  # a small synthetic set for tests and smoke runs (no files needed)


def toy(n: int = 2000, n_in: int = 16, n_out: int = 4, seed: int = 0) -> Dataset:
    """A learnable synthetic classification set: labels are the argmax of a random linear teacher.
    It has no test split of its own: the validation split stands in."""
    rng = np.random.default_rng(seed)
    teacher = rng.normal(size=(n_in, n_out))
    X_train, X_val = (rng.uniform(0, 1, size=(m, n_in)).astype(np.float32) for m in (n, max(n // 5, 1)))
    Y_train, Y_val = (one_hot(((X - 0.5) @ teacher).argmax(axis=1), n_out) for X in (X_train, X_val))
    return Dataset(TOY, X_train, Y_train, X_val, Y_val, X_val, Y_val)


def random_batch(n_in: int, n_out: int, rows: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random minibatch (X uniform in [0, 1), one-hot Y): what timing a step needs, whose time does not
    depend on the values."""
    rng = np.random.default_rng(seed)
    return rng.uniform(0, 1, size=(rows, n_in)).astype(np.float32), one_hot(rng.integers(0, n_out, rows), n_out)


def load_first(name: str, n: int | None = None, seed: int = 0) -> Dataset:
    """``load(name)`` (or the toy set) cut to its first ``n`` training examples: the one meaning of
    ``--subset`` everywhere. Validation and test keep their first max(n // 5, 100) rows."""
    if name == TOY:
        return toy(n or 2000, seed=seed)
    ds = load(check_choice("dataset", name, (*NAMES, TOY), unknown=True))
    if n and n > len(ds.X_train):
        raise ValueError(f"--subset {n} is larger than {name}'s {len(ds.X_train)} training examples")
    return ds.take(n, max(n // 5, 100)) if n else ds
