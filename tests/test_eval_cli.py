import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bgwsol.evaluation.cli import main


def write_case(root: Path, maps: dict[str, np.ndarray]) -> tuple[Path, Path]:
    """Two 224x224 images at original size 448x448 with GT box [100, 100, 299, 299] (-> [50, 50, 149, 149])."""
    meta, scores = root / "meta", root / "scores"
    meta.mkdir()
    ids = list(maps)
    (meta / "image_ids.txt").write_text("".join(f"{i}\n" for i in ids))
    (meta / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (meta / "image_sizes.txt").write_text("".join(f"{i},448,448\n" for i in ids))
    (meta / "localization.txt").write_text("".join(f"{i},100,100,299,299\n" for i in ids))
    for image_id, m in maps.items():
        p = scores / f"{image_id}.npy"
        p.parent.mkdir(parents=True, exist_ok=True)
        np.save(p, m)
    return scores, meta


def region(x0, y0, x1, y1):
    m = np.zeros((224, 224), np.float32)
    m[y0:y1 + 1, x0:x1 + 1] = 1.0
    return m


def test_json_output_on_a_hit_and_a_miss(tmp_path, capsys):
    # hit: region [50..148] gives box [50, 50, 149, 149] == GT -> IoU 1; miss: far corner
    scores, meta = write_case(tmp_path, {"val/a.JPEG": region(50, 50, 148, 148), "val/b.JPEG": region(190, 190, 220, 220)})
    assert main(["--scoremap_root", str(scores), "--metadata_root", str(meta), "--multi_contour_eval", "true",
                 "--cam_curve_interval", "0.1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["num_images"] == 2
    assert out["MaxBoxAcc"] == {"30": 50.0, "50": 50.0, "70": 50.0}
    assert out["MaxBoxAccV2"] == 50.0


def test_hyphenated_flags_and_iou_list(tmp_path, capsys):
    # region [50..130]: box [50, 50, 131, 131], IoU = 82^2 / 100^2 = 0.6724 -> hit at 30 and 50, miss at 70
    scores, meta = write_case(tmp_path, {"a": region(50, 50, 130, 130)})
    assert main(["--scoremap-root", str(scores), "--metadata-root", str(meta), "--iou-threshold-list", "50", "70",
                 "--cam-curve-interval", "0.5", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["MaxBoxAcc"] == {"50": 100.0, "70": 0.0}


@pytest.mark.parametrize("bad, needle", [(np.full((224, 224), np.nan, np.float32), "NaN"),
                                          (np.full((224, 224), 2.0, np.float32), "[0, 1]"),
                                          (np.zeros((224,), np.float32), "2-D")])
def test_bad_map_names_the_image(tmp_path, capsys, bad, needle):
    scores, meta = write_case(tmp_path, {"good": region(50, 50, 148, 148), "val/broken": bad})
    assert main(["--scoremap_root", str(scores), "--metadata_root", str(meta)]) == 2
    err = capsys.readouterr().err
    assert "val/broken" in err and needle in err


def test_missing_map_names_the_image(tmp_path, capsys):
    scores, meta = write_case(tmp_path, {"good": region(50, 50, 148, 148)})
    (meta / "image_ids.txt").write_text("good\nabsent\n")
    (meta / "image_sizes.txt").write_text("good,448,448\nabsent,448,448\n")
    (meta / "localization.txt").write_text("good,100,100,299,299\nabsent,1,1,5,5\n")
    assert main(["--scoremap_root", str(scores), "--metadata_root", str(meta)]) == 2
    assert "'absent'" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    scores, meta = write_case(tmp_path, {"a": region(50, 50, 148, 148)})
    exe = Path(sys.executable).with_name("bgwsol-eval")
    proc = subprocess.run([str(exe), "--scoremap_root", str(scores), "--metadata_root", str(meta), "--json"],
                          capture_output=True, text=True, check=True)
    assert json.loads(proc.stdout)["MaxBoxAccV2"] == 100.0
