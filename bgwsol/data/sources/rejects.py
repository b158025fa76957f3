"""Samples that cannot be used: the rejects report, and the share above which a job stops.

One bad file (an undecodable image, an inverted box) is skipped, counted and listed; many bad
files mean a wrong layout or a wrong root, and a job that went on would leave a result that
looks complete but is not. Above ``max_share`` of the samples the job stops and names the
first bad files.
"""

from __future__ import annotations

from bgwsol.data.sources.records import DatasetFormatError

DEFAULT_MAX_SHARE = 0.01


class TooManyRejects(DatasetFormatError):
    """More samples were rejected than the configured share allows."""


def reject(sample_id: str, path: str, reason: str, split: str = "") -> dict:
    """One line of the rejects report: ``{"key", "path", "reason"}`` (plus ``"split"`` when given)."""
    rec = {"key": sample_id, "path": path, "reason": reason}
    return {"split": split, **rec} if split else rec


def annotation_reject(sample_id: str, path: str, problem: str, split: str = "") -> dict:
    """The report line of a sample its reader flagged (``Sample.problem``): reason ``"bad annotation: ..."``."""
    return reject(sample_id, path, f"bad annotation: {problem}", split)


def check_share(rejects: list[dict], total: int, max_share: float, where: str) -> None:
    """Raise :class:`TooManyRejects` when ``len(rejects) / total`` exceeds ``max_share``.

    The message names ``where`` (the dataset root or shard prefix), the count and the first
    three rejects with their reasons.
    """
    if not rejects or total <= 0 or len(rejects) / total <= max_share:
        return
    first = "; ".join(f"{r['path']}: {r['reason']}" for r in rejects[:3])
    raise TooManyRejects(f"{where}: {len(rejects)} of {total} samples rejected ({100 * len(rejects) / total:.1f} % "
                         f"> the limit of {100 * max_share:g} %: a wrong layout or root?); first: {first}")
