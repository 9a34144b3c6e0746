"""Writing results: atomically (a crash never leaves half a file) and as a figure with its data beside it.

``PARBP_FIGURES``, when set, redirects everything aimed at the repository's ``figures/`` there:
``make test`` uses it so that executing the notebooks under nbval never rewrites committed results.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .envinfo import machine_label

ROOT = Path(__file__).resolve().parent.parent  # the repository
FIGURES = ROOT / "figures"
NOTEBOOKS = ROOT / "notebooks"
BUILD = ROOT / "build"


def redirect(path) -> Path:
    """``path``, moved under ``$PARBP_FIGURES`` if it points into the repository's figures/."""
    path, target = Path(path), os.environ.get("PARBP_FIGURES")
    if target and path.resolve().is_relative_to(FIGURES):
        return Path(target) / path.resolve().relative_to(FIGURES)
    return path  # not under figures/ (or no redirection): where it was asked


def atomic_write(path, write) -> Path:
    """Call ``write(tmp_path)`` on a temporary file in the target folder, then rename it into place."""
    path = redirect(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes files private; results are for everyone to read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    """The process's umask (reading it means setting it: put it back)."""
    os.umask(mask := os.umask(0))
    return mask


def write_csv(df, path, **kwargs) -> Path:
    """``df.to_csv`` atomically (index dropped unless asked)."""
    return atomic_write(path, lambda tmp: df.to_csv(tmp, **{"index": False, **kwargs}))


def write_text(text: str, path) -> Path:
    """``text`` into ``path``, atomically."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def save_figure(fig, df, path, dpi: int = 120, machine: str | None = None) -> tuple[Path, Path]:
    """Save ``fig`` as ``path`` (PNG) and the tidy data it plots as the CSV beside it.

    The PNG is stamped with the machine it was measured on (a figure travels without its CSV): this one, or
    ``machine`` for data measured elsewhere (``envinfo.label_of`` a committed row)."""
    path = redirect(Path(path).with_suffix(".png"))
    if not any(getattr(t, "_parbp_stamp", False) for t in fig.texts):
        stamp = fig.text(0.995, 0.002, f"measured on {machine or machine_label()}", ha="right", va="bottom",
                         fontsize=6, color="0.45")
        stamp._parbp_stamp = True
    png = atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format="png"))
    return png, write_csv(df, path.with_suffix(".csv"))


def readme_markers(source: str) -> tuple[str, str]:
    """The README's markers around a block generated from ``source`` (a path like ``figures/x.md``)."""
    return f"<!-- BEGIN {source} -->", f"<!-- END {source} -->"


def _block_span(readme: str, source: str) -> tuple[int, int] | None:
    """Where the text between the README's markers for ``source`` starts and stops; None without them."""
    begin, end = readme_markers(source)
    return (readme.index(begin) + len(begin), readme.index(end)) if begin in readme and end in readme else None


def readme_block(readme: str, source: str) -> str:
    """The text between the README's markers for ``source``."""
    start, stop = _block_span(readme, source)
    return readme[start:stop].strip("\n")


def sync_readme_block(readme, source: str, text: str, missing_ok: bool = False) -> bool:
    """Put ``text`` between the README's markers for ``source`` (atomically). Without the markers: False
    when ``missing_ok``, else a ValueError naming them."""
    readme = Path(readme)
    if (span := _block_span(s := readme.read_text(), source)) is None and missing_ok:
        return False
    if span is None:
        raise ValueError(f"{readme} has no {' ... '.join(readme_markers(source))} markers to copy {source} between")
    write_text(s[:span[0]] + "\n" + text.strip("\n") + "\n" + s[span[1]:], readme)
    return True


def plain_number(x: float) -> str:
    """1, 30, 1,000 or 0.3: how a reader writes a tick value (matplotlib's log axes write 3×10⁰)."""
    return f"{x:,.0f}" if x >= 1 and float(x).is_integer() else f"{x:g}"


def plain_log_ticks(ax, xticks=None) -> None:
    """Plain labels (1, 3, 10 … or 100, 1,000) on every log axis of ``ax``, where matplotlib writes 3×10⁰;
    matplotlib picks which ticks get a label, or the x axis gets exactly ``xticks`` (a few powers of two:
    workers, micro-batches) and no minor ticks. Call after setting the scales."""
    from matplotlib.ticker import FixedLocator, LogFormatter, NullLocator

    class Plain(LogFormatter):
        def _num_to_string(self, x, vmin, vmax):
            return plain_number(x)

    for axis in (ax.xaxis, ax.yaxis):
        if axis.get_scale() == "log":
            base = axis.get_transform().base  # 10, or 2 for thread and process counts
            axis.set_major_formatter(Plain(base=base, labelOnlyBase=False))
            axis.set_minor_formatter(Plain(base=base, labelOnlyBase=False))
    if xticks is not None:
        ax.xaxis.set_major_locator(FixedLocator(list(xticks)))
        ax.xaxis.set_minor_locator(NullLocator())
