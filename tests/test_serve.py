"""`bgwsol serve`: the registered model as a Ray Serve application on a local Ray, asked over real
HTTP: good images (raw bytes and multipart), garbage, an empty body, an oversized body, a wrong
content type; the answers agree with `bgwsol localize` on the same images, one at a time and in
batches; τ and the class names are the registered model's."""

from __future__ import annotations

import base64
import io
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import free_port

pytestmark = [pytest.mark.ray, pytest.mark.mlflow, pytest.mark.slow]

MODEL = "bgwsol-serve-test"
TAUS = {30: 0.2, 50: 0.35, 70: 0.5}
NAMES = ["disc", "square", "triangle"]


@pytest.fixture(scope="module")
def registered(mlflow_server):
    """A tiny (untrained) CAM network registered as ``MODEL`` with thresholds and class names: what
    the service says must come from the registry, whatever the model's quality."""
    import torch
    from mlflow import MlflowClient

    from bgwsol.checkpoint import build_model
    from bgwsol.config import RunConfig, replace, to_dict
    from bgwsol.methods import build_method
    from bgwsol.tracking.model_registry import log_and_register

    torch.manual_seed(0)
    cfg = replace(RunConfig(), **{"model.backbone": "tiny", "data.input_size": 32, "eval.scoremap_size": 32,
                                  "method.name": "cam"})
    model = build_model(cfg, len(NAMES), build_method(cfg.method))
    state = {"model": model.state_dict(), "config": to_dict(cfg), "classes": ["n0", "n1", "n2"], "class_names": NAMES,
             "epoch": 0, "best_score": 1.0, "manifest": "", "mlflow_run_id": None}
    client = MlflowClient(mlflow_server)
    run = client.create_run(client.create_experiment("test-serve"))
    log_and_register(state, tracking_uri=mlflow_server, run_id=run.info.run_id, name=MODEL, metric=1.0, taus=TAUS)
    client.set_terminated(run.info.run_id)
    return f"models:/{MODEL}@champion"


@pytest.fixture(scope="module")
def service(registered, mlflow_server, ray_local):
    """The application on the session's local Ray; yields ``(base URL, the same model as `bgwsol localize` loads it)``."""
    from ray import serve

    from bgwsol.serving.localizer import load_localizer
    from bgwsol.serving.http import ServeConfig, start

    cfg = ServeConfig(model=registered, tracking_uri=mlflow_server, port=free_port(), cpus_per_replica=0.5,
                      max_batch_size=4, batch_wait_s=0.05, max_body_bytes=200_000)
    url = start(cfg, app_name="bgwsol-test")
    try:
        yield url, load_localizer(registered, None, mlflow_server)
    finally:
        serve.shutdown()


def images(tiny_synthetic, count: int = 6):
    paths, _ = tiny_synthetic
    return sorted((paths.ilsvrc / "Data/CLS-LOC/val").glob("*.JPEG"))[:count]


def test_health_names_the_registered_model(service):
    import requests

    url, local = service
    health = requests.get(f"{url}/health", timeout=30).json()
    assert health["status"] == "ok" and health["classes"] == 3
    assert health["tau"] == pytest.approx(TAUS[50]) == local.tau  # the registered τ, not a default


def test_answers_agree_with_localize_one_by_one_and_in_batches(service, tiny_synthetic):
    import requests
    from PIL import Image

    from bgwsol.data.images import decode_rgb

    url, local = service
    files = images(tiny_synthetic)
    # without ?heatmap the service decodes a JPEG only as large as the model needs (draft mode): its
    # answers are localize's on the images decoded that way, boxes in the full images' pixels
    drafts = [decode_rgb(path.read_bytes(), local.cfg.data.input_size) for path in files]
    assert all(image.size != size for image, size in drafts)  # photos at least twice the input size: drafted
    expected = [local.batch([image], [size])[0] for image, size in drafts]
    raw = requests.post(f"{url}/localize", data=files[0].read_bytes(), headers={"Content-Type": "image/jpeg"},
                        timeout=60)
    assert raw.status_code == 200, raw.text
    body = raw.json()
    first = expected[0]
    assert (body["class_name"], body["class_index"], tuple(body["box"])) == (first.class_name, first.label, first.box)
    assert body["class_name"] in NAMES and body["score"] == pytest.approx(first.score, abs=1e-5)
    assert body["image_size"] == list(Image.open(files[0]).size) and body["tau"] == pytest.approx(TAUS[50])

    # multipart, as a browser form or `curl -F` sends it, with the heatmap: the photo at its own size
    form = requests.post(f"{url}/localize?heatmap=true", files={"image": (files[1].name, files[1].read_bytes(),
                                                                          "image/jpeg")}, timeout=60)
    assert form.status_code == 200, form.text
    with Image.open(io.BytesIO(base64.b64decode(form.json()["heatmap_png"]))) as picture, Image.open(files[1]) as photo:
        assert picture.size == photo.size
    with Image.open(files[1]) as photo:  # with the picture: decoded at full size, as localize does
        assert tuple(form.json()["box"]) == local(photo).box

    # concurrent requests are batched by the replica; the answers stay each image's own
    def ask(path):
        return requests.post(f"{url}/localize", data=path.read_bytes(), headers={"Content-Type": "image/jpeg"},
                             timeout=60).json()

    with ThreadPoolExecutor(len(files)) as pool:
        answers = list(pool.map(ask, files))
    for path, got, want in zip(files, answers, expected):
        assert got["class_index"] == want.label, path
        # a batch runs other convolution kernels than a single image: the map may move by a rounding step
        assert all(abs(a - b) <= 1 for a, b in zip(got["box"], want.box)), (path, got["box"], want.box)


@pytest.mark.parametrize("body, content_type, status, says", [
    (b"", "image/jpeg", 400, "empty body"),
    (b"this is not an image at all", "image/jpeg", 400, "not an image"),
    (b"x" * 300_000, "image/png", 413, "over the limit"),
    (b"{}", "application/json", 415, "is not accepted"),
])
def test_bad_requests_get_a_clear_4xx(service, body, content_type, status, says):
    import requests

    url, _ = service
    answer = requests.post(f"{url}/localize", data=body, headers={"Content-Type": content_type}, timeout=30)
    assert answer.status_code == status and says in answer.json()["detail"], answer.text
    assert requests.get(f"{url}/health", timeout=30).status_code == 200  # the replica is still there


def test_the_bad_input_corpus(service):
    """Every image of tests/bad_inputs.py sent as raw bytes: the rejected ones get 400 with the
    reason, the others an answer; the EXIF-rotated photo's box and size are in its displayed
    pixels; the replica answers health after each."""
    import requests

    import bad_inputs as corpus

    url, _ = service
    for name, (_, data, outcome) in corpus.images().items():
        if len(data) > 200_000:  # the service's --max_body_bytes in this test: the 413 case is tested above
            continue
        answer = requests.post(f"{url}/localize", data=data, headers={"Content-Type": "application/octet-stream"},
                               timeout=60)
        if outcome == "rejected":
            assert answer.status_code == 400, (name, answer.text)
            detail = answer.json()["detail"]
            assert detail.startswith(("the body is not an image bgwsol reads: ", "empty body")), (name, detail)
        else:
            assert answer.status_code == 200, (name, answer.text)
            if name == "EXIF-rotated JPEG":
                assert answer.json()["image_size"] == list(corpus.EXIF_DISPLAYED_SIZE)
                x0, y0, x1, y1 = answer.json()["box"]
                assert x1 < corpus.EXIF_DISPLAYED_SIZE[0] and y1 < corpus.EXIF_DISPLAYED_SIZE[1]
        assert requests.get(f"{url}/health", timeout=30).status_code == 200, name


def test_the_registered_model_answers_as_an_mlflow_pyfunc(registered, mlflow_server, tmp_path, monkeypatch):
    """``mlflow.pyfunc.load_model`` on the registered model (its loader module,
    bgwsol.serving.pyfunc) answers as ``bgwsol localize`` does, for a path and for bytes."""
    import mlflow.pyfunc
    import pandas as pd
    from PIL import Image

    from bgwsol.serving.localizer import load_localizer

    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    path = tmp_path / "shape.png"
    Image.new("RGB", (48, 40), (200, 30, 30)).save(path)
    model = mlflow.pyfunc.load_model(registered)
    answers = model.predict(pd.DataFrame({"image": [str(path), path.read_bytes()]}))
    expected = load_localizer(registered, None, mlflow_server)(Image.open(path))
    assert list(answers["class_name"]) == [expected.class_name] * 2 and expected.class_name in NAMES
    assert [list(b) for b in answers["box"]] == [list(expected.box)] * 2
