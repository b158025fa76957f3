"""The one pattern of every ``flows/*.py`` entry point: flags over a config dataclass, every check
before any work (all problems at once, one line each, exit status 2), the libraries' output to
a log file whose path is the first line, the job, and what it prints at the end.

    def main(argv=None) -> int:
        job, _ = parse_job(MyJob, DEFAULTS, __doc__, argv)
        return run_job(job, my_problems(job), my_work, log_dir=job.log_dir, name="my_job")
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable


def parse_job(job_cls: type, defaults: Any, doc: str | None, argv: list[str] | None = None,
              epilog: str | None = None) -> tuple[Any, argparse.Namespace]:
    """``(job, the parsed flags)``: every field of ``job_cls`` is a flag over ``defaults``
    (``--config file.yaml`` too); ``--help`` shows ``doc`` and ``epilog``."""
    from bgwsol.config import add_config_args, config_from_args

    parser = argparse.ArgumentParser(description=doc, epilog=epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser, job_cls, defaults)
    args = parser.parse_args(argv)
    return config_from_args(job_cls, args, defaults), args


def run_job(job: Any, problems: list[str], work: Callable[[Any], str], *, log_dir: str | Path | None, name: str,
            verbose: bool = False) -> int:
    """Refuse ``job`` if there are ``problems`` (exit status 2, nothing done); else send the
    libraries' output to ``<log_dir>/<name>-<time>.log`` (with ``log_dir``), run ``work(job)`` and
    print what it returns on standard output. Returns the exit status."""
    from bgwsol import console
    from bgwsol.errors import report_problems

    if problems:
        return report_problems(problems)
    if log_dir is not None:
        console.log_in(log_dir, name, verbose=verbose)
    console.emit(work(job))
    return 0
