"""What a run reads, decided once on the driver for every rank: the shard sets (:class:`RunData`),
their intact shards (:class:`DataPlan`, :func:`plan_data`), and where a rank runs (:class:`Worker`).

Training (:mod:`bgwsol.training.engine`) and scoring (:mod:`bgwsol.evaluation.scoring`) both
read through a plan, so every rank reads the same lists (or DDP hangs on unequal step counts).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import torch

log = logging.getLogger(__name__)


@dataclass
class RunData:
    """Where a run reads its images: a committed shard set, and a background shard set for
    methods that use one (``s3://bucket/prefix`` or a folder holding ``manifest.json``)."""

    shards: str
    background_shards: str = ""


@dataclass
class DataPlan:
    """The intact shards of a run, decided once (on the driver) for every rank.

    Every rank must read the same lists, or their step counts differ and DDP hangs. Damaged
    shards (missing, or not the size the manifest records) are left out and counted.
    """

    train: list[str]
    val: list[str]
    test: list[str]
    background: list[str] | None
    shard_counts: dict[str, int]    # samples per intact dataset shard, by URL (as the manifest records)
    expected: dict[str, int]        # samples per split in the manifest
    classes: list[str]
    class_names: list[str] | None
    digest: str                     # the dataset manifest's SHA-256
    dataset: str
    damaged: dict[str, str] = field(default_factory=dict)  # shard URL -> why
    source: str = ""                # the dataset shard set's URL
    background_source: str = ""     # the background shard set's URL ("" without one)
    background_digest: str = ""     # its manifest's SHA-256

    def inputs(self) -> list[dict]:
        """The shard sets this plan reads, as :meth:`bgwsol.tracking.run_logger.RunLogger.log_inputs` takes them."""
        out = [{"name": f"{self.dataset}-shards", "url": self.source, "digest": self.digest, "context": "training"}]
        if self.background_source:
            out.append({"name": "background-shards", "url": self.background_source, "digest": self.background_digest,
                        "context": "background"})
        return out

    def sizes(self, urls: list[str]) -> list[int]:
        """Samples in each of ``urls`` (intact dataset shards of this plan)."""
        return [self.shard_counts[u] for u in urls]

    @property
    def counts(self) -> dict[str, int]:
        """Intact samples per split (``"train"``, ``"val"``, ``"test"``)."""
        return {split: sum(self.sizes(getattr(self, split))) for split in ("train", "val", "test")}

    @property
    def lost(self) -> int:
        """Samples of the dataset in damaged shards."""
        counts = self.counts
        return sum(self.expected[s] - counts[s] for s in counts)


def plan_data(data: RunData, uses_background: bool) -> DataPlan:
    """Open the shard sets of ``data`` and list their intact shards; raises ShardSetError when
    no training shard is left, ValueError when a method needs background and none is set."""
    from bgwsol.data.shards.shardset import ShardSet, ShardSetError

    shards = ShardSet.open(data.shards)
    sizes: dict[str, dict[str, int]] = {}
    damaged: dict[str, str] = {}
    for split in ("train", "val", "test"):
        sizes[split], bad = shards.usable(split) if split in shards.splits else ({}, {})
        damaged.update(bad)
    background, bg_set = None, None
    if uses_background:
        if not data.background_shards:
            raise ValueError("this method needs background images: give a background shard set")
        bg_set = ShardSet.open(data.background_shards)
        bg_sizes, bad = bg_set.usable("background")
        background = list(bg_sizes)
        damaged.update(bad)
    plan = DataPlan(list(sizes["train"]), list(sizes["val"]), list(sizes["test"]), background,
                    {url: n for found in sizes.values() for url, n in found.items()},
                    {s: shards.count(s) if s in shards.splits else 0 for s in sizes}, shards.classes,
                    shards.manifest.get("class_names"), shards.digest, shards.manifest["dataset"], damaged,
                    shards.location.url, bg_set.location.url if bg_set else "", bg_set.digest if bg_set else "")
    if damaged:
        log.warning("%d damaged shards left out (%d samples of the dataset): %s", len(damaged), plan.lost,
                    "; ".join(f"{u}: {why}" for u, why in damaged.items()))
    if not plan.train or (uses_background and not background):
        raise ShardSetError(f"no intact training shards left in {data.shards}"
                            + (f" / {data.background_shards}" if uses_background else ""))
    return plan


@dataclass
class Worker:
    """This process's place in a run: rank ``rank`` of ``world``, its device and loader processes.

    The engine trains in channels_last everywhere (on CPU about 1.4x the steps of NCHW with
    oneDNN, ``benchmarks/bench_cpu_speed.py``), with bf16 autocast on CUDA; on CPU in fp32 (bf16
    autocast there would change the training numerics; BENCHMARKS.md, "CPU speed").
    """

    rank: int = 0
    world: int = 1
    device: str = "cpu"
    loader_workers: int = 0

    @property
    def amp(self) -> bool:
        return torch.device(self.device).type == "cuda"

    @property
    def memory_format(self) -> torch.memory_format:
        """The training batches' memory format; the model's weights are converted to it too."""
        return torch.channels_last
