"""Background photos that look like a class (issue #36): `bgwsol check-background` ranks every
photo of a background set by a trained model, and the list it writes is what
``--background_exclude`` (the training flows) and ``--exclude`` (shard_background) leave out."""

from __future__ import annotations

import csv

import pytest
from PIL import Image

from bgwsol.data.sources.background import exclude_photos, read_background_folder, read_exclude_list

NAMES = ["disc", "square", "triangle"]


def photos(folder, n: int = 5):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (40 + 4 * i, 36), (20 * i, 200 - 30 * i, 90)).save(folder / f"scene{i}.jpg")
    return folder


def checkpoint(tmp_path, method: str):
    """A tiny, untrained network of ``method`` saved as a checkpoint file (the list's order is the
    model's business; what is tested is that every photo is scored and ranked)."""
    import torch

    from bgwsol.checkpoint import build_model, save_checkpoint
    from bgwsol.config import RunConfig, replace, to_dict
    from bgwsol.methods import build_method

    torch.manual_seed(0)
    cfg = replace(RunConfig(), **{"model.backbone": "tiny", "data.input_size": 32, "eval.scoremap_size": 32,
                                  "method.name": method})
    model = build_model(cfg, len(NAMES), build_method(cfg.method))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "classes": ["n0", "n1", "n2"], "class_names": NAMES,
             "epoch": 0, "best_score": 1.0, "manifest": "", "taus": {50: 0.5}}
    return save_checkpoint(state, tmp_path / f"ckpt_{method}")


def test_an_exclusion_file_is_lines_or_the_checks_csv(tmp_path):
    folder = photos(tmp_path / "bg")
    samples = read_background_folder(folder)
    plain = tmp_path / "drop.txt"
    plain.write_text(f"# reviewed 2026-12-07\nscene1.jpg\n\n{folder / 'scene3.jpg'}\nnot/there.jpg\n")
    kept, dropped, unmatched = exclude_photos(samples, read_exclude_list(plain))
    assert [s.image_id for s in dropped] == ["scene1.jpg", "scene3.jpg"]
    assert [s.image_id for s in kept] == ["scene0.jpg", "scene2.jpg", "scene4.jpg"]
    assert unmatched == {"not/there.jpg"}
    table = tmp_path / "check.csv"
    table.write_text("image_id,path,evidence,class_name,class_prob,fg_mass\nscene4.jpg,/x/scene4.jpg,0.9,disc,0.95,\n")
    assert read_exclude_list(table) == {"scene4.jpg", "/x/scene4.jpg"}
    assert [s.image_id for s in exclude_photos(samples, read_exclude_list(table))[1]] == ["scene4.jpg"]


def test_an_exclusion_that_leaves_nothing_is_refused_and_another_list_is_other_data(tmp_path):
    from bgwsol.data.shards.jobs import background_label, without_excluded
    from bgwsol.errors import UserError

    folder = photos(tmp_path / "bg", 2)
    samples = read_background_folder(folder)
    every = tmp_path / "all.txt"
    every.write_text("scene0.jpg\nscene1.jpg\n")
    with pytest.raises(UserError, match="all.txt: leaves out every background photo"):
        without_excluded(samples, str(every))
    one = tmp_path / "one.txt"
    one.write_text("scene0.jpg\n")
    assert [s.image_id for s in without_excluded(samples, str(one))] == ["scene1.jpg"]
    assert without_excluded(samples, "") == samples
    label = background_label(str(folder), str(one))
    assert label != background_label(str(folder), "") and "one.txt" in label
    one.write_text("scene1.jpg\n")
    assert background_label(str(folder), str(one)) != label  # another list: the shards are made again


@pytest.mark.parametrize("method", ["cam", "bgwsol"])
def test_check_background_ranks_every_photo_and_writes_a_list_the_next_run_reads(tmp_path, capsys, method):
    from bgwsol.serving.cli import main

    folder = photos(tmp_path / "bg")
    (folder / "broken.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "check.csv"
    rc = main(["check-background", "--model", str(checkpoint(tmp_path, method)), "--background", str(folder),
               "--out", str(out), "--top", "3"])
    printed = capsys.readouterr()
    assert rc == 0 and "broken.jpg: skipped" in printed.err
    rows = list(csv.DictReader(out.open()))
    assert sorted(r["image_id"] for r in rows) == [f"scene{i}.jpg" for i in range(5)]
    evidence = [float(r["evidence"]) for r in rows]
    assert evidence == sorted(evidence, reverse=True) and all(0 <= e <= 1 for e in evidence)
    assert all(r["class_name"] in NAMES and 0 < float(r["class_prob"]) <= 1 for r in rows)
    # a classifier's top probability over 3 classes is at least 1/3: evidence is its excess over chance
    assert all(abs(float(r["evidence"]) - (float(r["class_prob"]) - 1 / 3) * 1.5) < 1e-3 for r in rows)
    assert all((r["fg_mass"] != "") == (method == "bgwsol") for r in rows)  # only a foreground head has a mass
    assert len([line for line in printed.out.splitlines() if line.endswith(".jpg")]) == 3
    assert f"--background_exclude {out}" in printed.out
    assert read_exclude_list(out) >= {r["image_id"] for r in rows}


@pytest.mark.ray
def test_shard_background_leaves_out_what_the_list_names(tmp_path, ray_local):
    from bgwsol.config import replace
    from bgwsol.data.shards.jobs import BackgroundShardJob, run_background_job

    folder = photos(tmp_path / "bg", 6)
    drop = tmp_path / "drop.txt"
    drop.write_text("scene2.jpg\nscene5.jpg\n")
    job = replace(BackgroundShardJob(source=str(folder), output=str(tmp_path / "shards"), exclude=str(drop)),
                  **{"etl.samples_per_shard": 4, "etl.max_short_side": 32})
    shards = run_background_job(job, show_progress=False)
    assert sum(shards.usable("background")[0].values()) == 4  # 6 photos less the 2 the list names
    assert "drop.txt" in shards.manifest["source"]
