"""The search's trial lines (bgwsol/training/tune.py, ``trial_lines``): what the console says
as each Tune trial ends, also after a stopped search was restored."""

import logging
from types import SimpleNamespace


def trial(trial_id: str, status: str, iterations: int):
    return SimpleNamespace(trial_id=trial_id, status=status, last_result={"training_iteration": iterations})


def test_a_restored_search_counts_the_trials_that_ended_before_it(caplog):
    from bgwsol.training.tune import trial_lines

    lines = trial_lines(total=2, metric="val_top1_loc", mode="max", epochs=3)
    first = trial("a1", "TERMINATED", 3)  # finished before the job was stopped and rerun
    second = trial("b2", "RUNNING", 3)
    lines.on_trial_result(0, [first, second], second, {"val_top1_loc": 41.5})
    with caplog.at_level(logging.INFO, logger="bgwsol.training.tune"):
        lines.on_trial_complete(0, [first, second], second)
    said = [r.getMessage() for r in caplog.records if r.name == "bgwsol.training.tune"]
    assert said == ["search: trial b2 finished after 3 epoch(s), best val_top1_loc 41.5; 2 of 2 trials done, "
                    "best so far 41.5 (trial b2)"]


def test_a_trial_asha_stops_is_said_so(caplog):
    from bgwsol.training.tune import trial_lines

    lines = trial_lines(total=3, metric="val_top1_loc", mode="max", epochs=3)
    weak = trial("c3", "RUNNING", 1)
    with caplog.at_level(logging.INFO, logger="bgwsol.training.tune"):
        lines.on_trial_complete(0, [weak], weak)
    assert "stopped by ASHA after 1 epoch(s); 1 of 3 trials done" in caplog.records[-1].getMessage()


def test_a_restored_trial_that_reports_its_committed_last_epoch_is_finished(caplog):
    """The job stopped after Ray Train committed the run's last epoch: the restored trial reports
    that epoch once (Tune's count is 1), and the line counts the run's epochs, not Tune's reports."""
    from bgwsol.training.tune import trial_lines

    lines = trial_lines(total=1, metric="val_top1_loc", mode="max", epochs=2)
    restored = SimpleNamespace(trial_id="d4", status="RUNNING", last_result={"training_iteration": 1, "epoch": 1})
    with caplog.at_level(logging.INFO, logger="bgwsol.training.tune"):
        lines.on_trial_complete(0, [restored], restored)
    assert "trial d4 finished after 2 epoch(s); 1 of 1 trials done" in caplog.records[-1].getMessage()
