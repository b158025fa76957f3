"""The console of a command-line job: this package's lines on the terminal, everything else in
the log file, errors once in one line; progress lines read as a person would want them."""

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from bgwsol.progress import ProgressBoard, duration, epoch_line, step_line

ROOT = Path(__file__).resolve().parents[1]

JOB = textwrap.dedent("""
    import logging, os, sys, warnings
    from bgwsol import console
    from bgwsol.errors import UserError, run_entry_point

    def main():
        log = logging.getLogger("bgwsol.workflows.fake")
        log.info("before the log file")
        console.log_to(sys.argv[1], "fake", verbose=sys.argv[2] == "verbose")
        log.info("stage one ...")
        os.write(2, b"[core_worker.cc:2465] noise from C++\\n")
        print("TrainingReport(metrics={'x': np.float64(1.0)})")
        print("noise on stderr", file=sys.stderr)
        warnings.warn("a warning the user can do nothing about")
        logging.getLogger("ray.data").warning("a library warning")
        for _ in range(2):
            logging.getLogger("ray.data").error("a library error\\nwith a second line")
        log.warning("something the user should know")
        console.emit("THE TABLE")
        if sys.argv[3] == "bug":
            raise ValueError("an unexpected bug")
        if sys.argv[3] == "user":
            raise UserError("s3://b/x: cannot reach the S3 endpoint")
        return 0

    sys.exit(run_entry_point(main, "fake_job"))
""")


def run_job(tmp_path: Path, verbose: str, ending: str) -> tuple[subprocess.CompletedProcess, str]:
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-c", JOB, str(out), verbose, ending], capture_output=True, text=True,
                          timeout=120, cwd=ROOT)
    logs = list((out / "logs").glob("fake-*.log"))
    assert len(logs) == 1, done.stderr
    return done, logs[0].read_text()


def test_the_terminal_shows_our_lines_and_the_log_file_everything(tmp_path):
    done, log = run_job(tmp_path, "quiet", "ok")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "THE TABLE\n"
    terminal = done.stderr
    for line in ("before the log file", "stage one ...", "warning: something the user should know"):
        assert line in terminal
    assert "log: " in terminal and "--verbose shows it here" in terminal
    # the libraries' output and warnings went to the log only; their error reached the terminal once, in one line
    for noise in ("core_worker.cc", "np.float64(", "noise on stderr", "a warning the user can do nothing about",
                  "a library warning", "with a second line"):
        assert noise not in terminal
        assert noise in log
    assert terminal.count("error (ray.data): a library error (details: ") == 1
    assert "something the user should know" in log and "Traceback" not in terminal


def test_a_bug_leaves_its_traceback_in_the_log_and_one_line_on_the_terminal(tmp_path):
    done, log = run_job(tmp_path, "quiet", "bug")
    assert done.returncode == 1
    lines = [line for line in done.stderr.splitlines() if "fake_job:" in line]
    assert len(lines) == 1 and "error: ValueError: an unexpected bug (traceback: " in lines[0]
    assert "Traceback" not in done.stderr
    assert "Traceback (most recent call last)" in log and "an unexpected bug" in log

    done, log = run_job(tmp_path / "user", "quiet", "user")
    assert done.returncode == 1
    assert "fake_job: error: s3://b/x: cannot reach the S3 endpoint" in done.stderr
    assert "cannot reach the S3 endpoint" in log


def test_verbose_brings_the_libraries_output_back(tmp_path):
    done, log = run_job(tmp_path, "verbose", "ok")
    assert done.returncode == 0
    for noise in ("core_worker.cc", "noise on stderr", "a library warning"):
        assert noise in done.stderr
    assert "something the user should know" in log  # the log file is written either way


def test_progress_lines_read_well():
    event = {"run": "cam-ilsvrc-3f2a", "epochs": 5, "epoch": 1, "train_loss": np.float64(1.23456),
             "images_per_s": 412.4, "val_maxboxacc_v2": 63.24, "val_top1_loc": 40.0, "best_score": 63.24,
             "epoch_s": 40.0, "select": "top1_loc"}
    line = epoch_line(event)
    assert line == ("cam-ilsvrc-3f2a  epoch 2/5  loss 1.235  412 img/s  val MaxBoxAccV2 63.2, Top-1 Loc 40.0 "
                    "(best Top-1 Loc 63.2)  ETA 2 min 00 s")
    assert "np.float64" not in line
    last = epoch_line({**event, "epoch": 4})
    assert "ETA" not in last and "epoch 5/5" in last
    step = step_line({"run": "r", "epochs": 5, "epoch": 0, "step": 10, "steps": 40, "elapsed_s": 5.0,
                      "images_per_s": 256.0})
    assert step == "r  epoch 1/5  step 10/40  256 img/s  epoch ETA 15 s"
    assert [duration(s) for s in (4.2, 65, 3725)] == ["4 s", "1 min 05 s", "1 h 02 min"]


def test_the_board_keeps_epoch_events_when_it_must_drop():
    board = ProgressBoard(limit=3)
    for event in ({"kind": "epoch", "epoch": 0}, {"kind": "step", "step": 1}, {"kind": "step", "step": 2},
                  {"kind": "epoch", "epoch": 1}):
        board.push(event)
    assert board.drain() == [{"kind": "epoch", "epoch": 0}, {"kind": "step", "step": 2}, {"kind": "epoch", "epoch": 1}]
    assert board.drain() == []
