"""The bad-input corpus (tests/bad_inputs.py) against every entry point that can receive it: the
shard flow (a folder and an S3 source), the crawler, the training loader, ``bgwsol localize``,
``bgwsol-eval`` (and ``bgwsol serve`` in tests/test_serve.py). Each input is used with the
convention of bgwsol/data/images.py, or rejected with one line naming the file and the reason
and counted while the work goes on, or refused before any work; never a traceback, a hang or a
silently wrong box. docs/faults.md, "Bad inputs tried", is the table of these outcomes."""

from __future__ import annotations

import functools
import io
import json
import subprocess
import sys
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import bad_inputs as corpus

ROOT = Path(__file__).resolve().parents[1]


def red_share(image: Image.Image, box) -> float:
    """Share of the pixels inside the inclusive ``box`` that are red (the EXIF photo's object)."""
    x0, y0, x1, y1 = (int(v) for v in box)
    rgb = np.asarray(image.convert("RGB"), dtype=np.int32)[y0:y1 + 1, x0:x1 + 1]
    return float(((rgb[..., 0] > 150) & (rgb[..., 1] < 100) & (rgb[..., 2] < 100)).mean())


def test_decoding_follows_the_stated_conventions():
    from bgwsol.data.images import RejectedImage, decode_rgb

    for name, (_, data, outcome) in corpus.images().items():
        if outcome == "rejected":
            with pytest.raises(RejectedImage):
                decode_rgb(data)
            continue
        image, size = decode_rgb(data)
        assert image.mode == "RGB" and image.size == size, name
    image, size = decode_rgb(corpus.exif_rotated_photo())
    assert size == corpus.EXIF_DISPLAYED_SIZE  # width and height as displayed
    assert red_share(image, corpus.EXIF_OBJECT_BOX) > 0.95  # the box drawn on the displayed photo is on the object
    with pytest.raises(RejectedImage, match="decompression bomb"):
        decode_rgb(corpus.decompression_bomb())
    palette_png = corpus.images()["palette with transparency"][1]
    with Image.open(io.BytesIO(palette_png)) as raw:  # palette index 0 is the transparent one
        transparent, colours = np.asarray(raw) == 0, np.asarray(raw.convert("RGB"))
    composited = np.asarray(decode_rgb(palette_png)[0])
    assert transparent.any() and (~transparent).any() and (colours[transparent] != 255).any()
    assert (composited[transparent] == 255).all()  # composited over white, not the palette's colour
    assert (composited[~transparent] == colours[~transparent]).all()  # the opaque pixels as they were


def cub_tree(root: Path) -> dict[str, str]:
    """A CUB-layout folder: every corpus image (train split, the EXIF photo in test with its box on
    the displayed object), four plain photos, and one annotation row pointing outside its image.
    Returns ``{corpus name or "box outside": relative image path}``."""
    images = corpus.images()
    rows, where = [], {}
    for i in range(4):
        rows.append((f"001.ok/ok{i}.jpg", corpus._bytes(corpus._photo(seed=20 + i), "JPEG"), (4, 4, 40, 30), 1))
    rows.append(("001.ok/outside.jpg", corpus._bytes(corpus._photo(seed=30), "JPEG"), (500, 400, 20, 20), 1))
    where["box outside"] = "001.ok/outside.jpg"
    for name, (file_name, data, _) in images.items():
        rel = f"002.corpus/{file_name}"
        x0, y0, x1, y1 = corpus.EXIF_OBJECT_BOX
        box = (x0, y0, x1 - x0 + 1, y1 - y0 + 1) if name == "EXIF-rotated JPEG" else (0, 0, 1, 1)
        rows.append((rel, data, box, 0 if name == "EXIF-rotated JPEG" else 1))
        where[name] = rel
    rows.append(("001.ok/test.jpg", corpus._bytes(corpus._photo(seed=40), "JPEG"), (2, 2, 50, 50), 0))
    (root / "images").mkdir(parents=True)
    lines = {n: [] for n in ("images", "image_class_labels", "train_test_split", "bounding_boxes")}
    for i, (rel, data, box, is_train) in enumerate(rows, start=1):
        (root / "images" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "images" / rel).write_bytes(data)
        lines["images"].append(f"{i} {rel}")
        lines["image_class_labels"].append(f"{i} {1 if rel.startswith('001') else 2}")
        lines["train_test_split"].append(f"{i} {is_train}")
        lines["bounding_boxes"].append(f"{i} {' '.join(str(float(v)) for v in box)}")
    for name, content in lines.items():
        (root / f"{name}.txt").write_text("\n".join(content) + "\n")
    (root / "classes.txt").write_text("1 001.ok\n2 002.corpus\n")
    return where


def check_shard_set(out: str, where: dict[str, str]) -> dict[str, str]:
    """The rejects of a shard set of :func:`cub_tree`: exactly the corpus's rejected images and the
    box outside its image (and the 1 px photo, whose box cannot span 2 px), each with its reason;
    the EXIF photo's box lands on its object.
    Returns ``{corpus name: reason}``."""
    from bgwsol.data.shards.shardset import ShardSet

    shards = ShardSet.open(out)
    report = [json.loads(line) for line in shards.location.join("rejects.jsonl").read_bytes().decode().splitlines()]
    by_file = {r["path"].replace("\\", "/").split("/images/")[-1]: r["reason"] for r in report}
    reasons = {name: by_file[rel] for name, rel in where.items() if rel in by_file}
    # a 1 x 1 photo cannot hold a box (a box spans at least 2 px): its annotation is refused
    assert set(reasons) == corpus.rejected() | {"box outside", "1 x 1 px"}, reasons
    assert reasons["box outside"].startswith("bad box") and reasons["1 x 1 px"].startswith("bad box")
    assert "decompression bomb" in reasons["decompression bomb"]
    assert shards.manifest["rejects"]["count"] == len(reasons)
    from test_etl import read_all

    found = False
    for split in shards.splits:
        for key, sample in read_all(shards, split).items():
            meta = json.loads(sample["json"])
            if key.endswith("exif_rotated"):
                found = True
                with Image.open(io.BytesIO(sample["jpg"])) as image:
                    assert image.size == corpus.EXIF_DISPLAYED_SIZE
                    assert red_share(image, meta["boxes"][0]) > 0.9
    assert found
    return reasons


@pytest.mark.ray
@pytest.mark.s3
def test_shard_flow_on_the_corpus_from_a_folder_and_from_a_bucket(tmp_path, ray_local, bucket):
    """``flows/shard_cub.py`` on a folder: exit 0, the rejects named and counted, the console as
    the training flows': the log file's path first, no Ray Data line, the summary. The same tree in
    a bucket gives the same rejects."""
    from conftest import upload_tree

    from bgwsol.data.shards.etl import ShardConfig, dataset_listings, write_shard_set

    where = cub_tree(tmp_path / "cub")
    out = tmp_path / "shards"
    done = subprocess.run([sys.executable, "flows/shard_cub.py", "--source", str(tmp_path / "cub"),
                           "--output", str(out),
                           "--etl.max_reject_share", "0.6", "--etl.max_short_side", "200",
                           "--log_dir", str(tmp_path / "logs")],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    err = done.stderr.splitlines()
    assert err[0].startswith("log: " + str(tmp_path / "logs" / "shard_cub-")), err[:3]
    assert not [line for line in err if "INFO" in line or "Traceback" in line], err
    assert "rejected" in done.stdout and "rejects.jsonl" in done.stdout
    assert "Ray Data" not in done.stdout
    logs = list((tmp_path / "logs").glob("shard_cub-*.log"))
    assert len(logs) == 1 and "streaming_executor" in logs[0].read_text()  # Ray Data's lines are kept there
    from_folder = check_shard_set(str(out), where)

    upload_tree(tmp_path / "cub", f"s3://{bucket}/cub")
    cfg = ShardConfig(max_reject_share=0.6, max_short_side=200)
    listings, classes, names = dataset_listings("cub", f"s3://{bucket}/cub", cfg.val_fraction)
    write_shard_set(listings, f"s3://{bucket}/shards", dataset="cub", classes=classes, class_names=names, cfg=cfg)
    assert check_shard_set(f"s3://{bucket}/shards", where) == from_folder


def test_crawler_on_the_corpus(tmp_path):
    """A URL list of the corpus served over HTTP: the rejected ones are reported with their URL
    and reason, every other one is cached as an image."""
    from bgwsol.data.sources.crawl import CrawlConfig, crawl, read_url_list

    paths = corpus.write_images(tmp_path / "site")
    handler = functools.partial(SimpleHTTPRequestHandler, directory=str(tmp_path / "site"))
    handler.log_message = lambda *args: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        base = f"http://127.0.0.1:{server.server_address[1]}"
        (tmp_path / "urls.txt").write_text("".join(f"{base}/{p.name}\n" for p in paths.values()))
        report = crawl(read_url_list(tmp_path / "urls.txt"), tmp_path / "cache",
                       CrawlConfig(max_bytes=5_000_000, retries=1), show_progress=False)
    finally:
        server.shutdown()
    rejected = {r["url"].rsplit("/", 1)[-1]: r["reason"] for r in report.rejects}
    names = {p.name: name for name, p in paths.items()}
    assert {names[f] for f in rejected} == corpus.rejected(), rejected
    assert all(reason for reason in rejected.values())
    assert len(report.samples) == len(paths) - len(rejected)


def test_training_loader_skips_and_counts_a_shard_of_the_corpus(tmp_path):
    """A shard (written by hand, not by the ETL) whose ``jpg`` members are the corpus: the
    evaluation stream yields the usable ones and counts the others as skipped."""
    import webdataset as wds

    from bgwsol.data.loader import EvalStream

    shard = tmp_path / "bad-000000.tar"
    with wds.TarWriter(str(shard)) as sink:
        for i, (name, (_, data, _)) in enumerate(corpus.images().items()):
            sink.write({"__key__": f"s{i:02d}", "jpg": data, "json": json.dumps({"label": 0, "boxes": [[0, 0, 0, 0]]})})
    got = list(EvalStream([str(shard)], input_size=16))
    assert len(got) == len(corpus.images()) - len(corpus.rejected())
    assert sum(s["skipped"] for s in got) == len(corpus.rejected())
    exif = [s for s in got if s["key"] == f"s{list(corpus.images()).index('EXIF-rotated JPEG'):02d}"]
    assert exif[0]["size"] == corpus.EXIF_DISPLAYED_SIZE


def tiny_checkpoint(folder: Path) -> Path:
    """An untrained tiny CAM network saved as a bgwsol checkpoint (what it predicts does not matter here)."""
    import torch

    from bgwsol.checkpoint import build_model, save_checkpoint
    from bgwsol.config import RunConfig, replace, to_dict
    from bgwsol.methods import build_method

    torch.manual_seed(0)
    cfg = replace(RunConfig(), **{"model.backbone": "tiny", "data.input_size": 32, "eval.scoremap_size": 32,
                                  "method.name": "cam"})
    model = build_model(cfg, 2, build_method(cfg.method))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "classes": ["a", "b"], "class_names": ["a", "b"],
             "epoch": 0, "best_score": 1.0, "manifest": "", "mlflow_run_id": None, "taus": {50: 0.3}}
    return save_checkpoint(state, folder)


def test_localize_goes_on_past_bad_images_and_exits_nonzero(tmp_path):
    """``bgwsol localize`` on every corpus file and one that does not exist: one stderr line per
    file it skips (the file and the reason), a result line and an overlay at the photo's displayed
    size for every other, exit 1; no traceback."""
    paths = corpus.write_images(tmp_path / "in")
    ckpt = tiny_checkpoint(tmp_path / "model")
    files = [str(p) for p in paths.values()] + [str(tmp_path / "in" / "missing.jpg")]
    exe = Path(sys.executable).with_name("bgwsol")
    done = subprocess.run([str(exe), "localize", "--model", str(ckpt), "--tau", "0.3", "--out", str(tmp_path / "out"),
                           *files], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr
    skipped = [line for line in done.stderr.splitlines() if ": skipped: " in line]
    expect = {str(paths[n]) for n in corpus.rejected()} | {files[-1]}
    assert {line.split(": skipped: ")[0] for line in skipped} == expect
    assert f"{len(expect)} of {len(files)} images skipped" in done.stderr
    printed = [line.split("\t")[0] for line in done.stdout.splitlines() if "\t" in line]
    assert sorted(printed) == sorted(set(map(str, paths.values())) - expect)
    with Image.open(tmp_path / "out" / "exif_rotated_localized.png") as overlay:
        assert overlay.size == corpus.EXIF_DISPLAYED_SIZE


def test_eval_refuses_bad_score_maps_naming_each_and_scores_nothing(tmp_path, capsys):
    """``bgwsol-eval`` on maps with NaN, the wrong shape, values outside [0, 1] and one missing:
    each file is named with its problem, exit 2, and no number is printed."""
    from bgwsol.evaluation.cli import main

    meta, scores = tmp_path / "meta", tmp_path / "scores"
    bad = corpus.score_maps()
    ids = [f"val/{name.replace(' ', '_').replace(',', '')}" for name in bad] + ["val/good", "val/absent"]
    meta.mkdir()
    (meta / "image_ids.txt").write_text("\n".join(ids) + "\n")
    (meta / "class_labels.txt").write_text("".join(f"{i},0\n" for i in ids))
    (meta / "image_sizes.txt").write_text("".join(f"{i},8,8\n" for i in ids))
    (meta / "localization.txt").write_text("".join(f"{i},1,1,5,5\n" for i in ids))
    (scores / "val").mkdir(parents=True)
    for image_id, m in zip(ids, list(bad.values()) + [np.full((8, 8), 0.5, np.float32)]):
        np.save(scores / f"{image_id}.npy", m)
    assert main(["--scoremap_root", str(scores), "--metadata_root", str(meta), "--json"]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    lines = [line for line in err.splitlines() if line.startswith("bgwsol-eval: error: ")]
    assert "4 of 5 score maps are unusable" in lines[0]
    assert any("NaN" in line and "val/NaN" in line for line in lines)
    assert any("must be 2-D" in line for line in lines)
    assert any("must lie in [0, 1]" in line for line in lines)
    assert any("no score map for image 'val/absent'" in line for line in lines)
