"""CAM against bgwsol on one machine: the two-method comparison behind BENCHMARKS.md's first table.

``flows/compare_methods.py`` with these defaults: methods ``cam bgwsol``, seed 0, output
under ``outputs/compare_local``; any of its flags may be given and wins (see its ``--help``).
With no ``--source`` it first generates the synthetic dataset in the real ILSVRC layout and
shards it, trains each method with each seed (Ray Train on a local Ray, one worker per run),
chooses checkpoint and thresholds on the validation split, reads the test split once and
prints one table.

    python flows/compare_local.py                       # the embedded default
    python flows/compare_local.py --seeds 0 1 2 --output_dir outputs/bench3
"""

from __future__ import annotations

import sys

from bgwsol.errors import run_entry_point

import compare_methods  # flows/ is on sys.path when this file is run

DEFAULTS = ["--methods", "cam", "bgwsol", "--seeds", "0", "--output_dir", "outputs/compare_local"]


def main(argv: list[str] | None = None) -> int:
    # later flags win in argparse: the user's arguments override these defaults
    return compare_methods.main(DEFAULTS + list(sys.argv[1:] if argv is None else argv))


if __name__ == "__main__":
    sys.exit(run_entry_point(main, "compare_local"))
