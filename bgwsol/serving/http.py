"""``bgwsol serve``: a registered model answering over HTTP, as a Ray Serve application.

Routes (FastAPI, behind Ray Serve's proxy):

* ``POST /localize`` (``?heatmap=true`` adds the overlay picture): the body is the image's
  bytes (``image/jpeg``, ``image/png``, ``image/webp``, ``application/octet-stream``) or a
  ``multipart/form-data`` upload (the first file field). The answer is JSON: ``class_name``,
  ``class_index``, ``score`` (softmax), ``box`` ``[x0, y0, x1, y1]`` (inclusive corners in the
  original image's pixels), ``image_size`` ``[w, h]``, ``tau``, and with ``heatmap`` a PNG (base64)
  of the heatmap over the image with the box and "<class> <score>" drawn at the image's size.
  A wrong content type is 415, an empty body 400, a body over ``max_body_bytes`` 413, bytes
  that are not an image 400; each with ``{"detail": "<one line>"}``.
* ``GET /health``: the model, its classes and τ (200 once the replica has loaded it).

Requests are batched per replica (:func:`ray.serve.batch`: up to ``max_batch_size`` images,
waiting at most ``batch_wait_s`` for a batch to fill); replicas scale the service out. A JPEG is
decoded only as large as the model needs (draft mode) unless the overlay picture is asked for;
decoding and the forward pass run in threads, so a replica decodes and batches the next requests
while the model computes. The model runs in channels_last, fp32 or bf16 (``precision``). τ and
the class names are the registered model's (chosen on validation when it was trained).
"""


# no "from __future__ import annotations": FastAPI reads the route signatures of build_app's closure
import base64
import io
from dataclasses import dataclass

from bgwsol.config import Precision, option
from bgwsol.service_start import start_with_retries

IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "application/octet-stream")


@dataclass
class ServeConfig:
    """What ``bgwsol serve`` runs; every field is a flag."""

    model: str = option("", "models:/<name>@<alias>, runs:/<run id>/model, or a checkpoint file or folder")
    tracking_uri: str = option("", "MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    tau: float = option(-1.0, "score-map threshold (negative: the one registered with the model)")
    host: str = option("127.0.0.1", "address the HTTP proxy listens on (0.0.0.0 on a cluster)")
    port: int = option(8000, "HTTP port")
    replicas: int = option(1, "replicas of the model (each loads it once)")
    cpus_per_replica: float = option(1.0, "CPUs Ray reserves for each replica")
    max_batch_size: int = option(8, "images batched into one forward pass (1: no batching)")
    batch_wait_s: float = option(0.01, "longest wait for a batch to fill, seconds")
    max_body_bytes: int = option(10 * 2**20, "largest request body accepted (413 above it)")
    precision: Precision = option("fp32", "fp32 (channels_last), or bf16 autocast: the forward pass about 1.8x faster "
                                    "on a CPU with native bf16 (refused elsewhere), same classes, boxes moved by a "
                                    "few pixels")


def serve_problems(cfg: ServeConfig) -> list[str]:
    """What can be checked before Ray or the model is touched, one line each."""
    problems = []
    if not cfg.model:
        problems.append("--model is required (models:/bgwsol-ilsvrc@champion, runs:/..., or a checkpoint)")
    for flag, value, low in (("--port", cfg.port, 1), ("--replicas", cfg.replicas, 1),
                             ("--max_batch_size", cfg.max_batch_size, 1), ("--max_body_bytes", cfg.max_body_bytes, 1)):
        if value < low:
            problems.append(f"{flag} {value}: must be at least {low}")
    if not 0 < cfg.port < 65536:
        problems.append(f"--port {cfg.port}: not a TCP port")
    if cfg.batch_wait_s < 0:
        problems.append(f"--batch_wait_s {cfg.batch_wait_s}: must not be negative")
    if cfg.cpus_per_replica < 0:
        problems.append(f"--cpus_per_replica {cfg.cpus_per_replica}: must not be negative")
    from bgwsol.precision import precision_problem

    if precision_problem(cfg.precision, "cpu"):
        problems.append(f"--precision {cfg.precision!r}: {precision_problem(cfg.precision, 'cpu')}")
    return problems


def answer(result, tau: float) -> dict:
    """The JSON body for one :class:`~bgwsol.serving.localizer.Localization`."""
    return {"class_name": result.class_name, "class_index": int(result.label), "score": float(result.score),
            "box": [int(v) for v in result.box], "image_size": list(result.heatmap.shape[::-1]), "tau": float(tau)}


def overlay_png(result, image) -> bytes:
    """The heatmap over ``image`` with the box and "<class> <score>" drawn at its size, as PNG bytes."""
    import numpy as np

    from bgwsol.evaluation.viz import overlay

    picture = overlay(np.asarray(image), result.heatmap, np.array([result.box]), np.zeros((0, 4)),
                      caption=f"{result.class_name} {result.score:.2f}")
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()


class BadRequest(Exception):
    """A request this service refuses: ``status`` (4xx) and a one-line reason."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


async def read_image(request, max_body_bytes: int, min_short_side: int = 0):
    """``(upright RGB PIL image, (w, h) at full size)`` of the request's body; :class:`BadRequest`
    for what cannot be one. A JPEG is decoded at the smallest DCT scale that keeps a short side of
    at least ``min_short_side`` pixels (0: full size), the rest at full size."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
        raise BadRequest(413, f"body of {int(declared)} bytes is over the limit of {max_body_bytes}")
    if content_type == "multipart/form-data":
        form = await request.form(max_files=1, max_fields=10, max_part_size=max_body_bytes)
        files = [v for v in form.values() if hasattr(v, "read")]
        if not files:
            raise BadRequest(400, "multipart body has no file field (send the image as a file)")
        data = await files[0].read()
    elif content_type in IMAGE_TYPES:
        data = b""
        async for chunk in request.stream():
            data += chunk
            if len(data) > max_body_bytes:
                raise BadRequest(413, f"body is over the limit of {max_body_bytes} bytes")
    else:
        raise BadRequest(415, f"content type {content_type or '(none)'!r} is not accepted; send "
                              f"{', '.join(IMAGE_TYPES)} or multipart/form-data")
    if not data:
        raise BadRequest(400, "empty body: send the image's bytes")
    if len(data) > max_body_bytes:
        raise BadRequest(413, f"body of {len(data)} bytes is over the limit of {max_body_bytes}")
    import asyncio

    from bgwsol.data.images import RejectedImage, decode_rgb

    try:  # in a thread (PIL decodes without the GIL): the replica takes requests meanwhile
        return await asyncio.to_thread(decode_rgb, data, min_short_side)  # upright RGB, bombs refused
    except RejectedImage as exc:
        raise BadRequest(400, f"the body is not an image bgwsol reads: {exc}") from exc


def build_app(cfg: ServeConfig):
    """The Ray Serve application (``Deployment.bind``) of ``cfg``."""
    from fastapi import FastAPI, Request
    from fastapi.responses import JSONResponse
    from ray import serve

    api = FastAPI(title="bgwsol", description="Weakly supervised object localization: class, score and box.")

    # a replica takes two batches' worth of requests at once: one batch computes while the next fills
    # (Serve's default of 5 ongoing requests capped every batch at 5 whatever max_batch_size said)
    @serve.deployment(num_replicas=cfg.replicas, ray_actor_options={"num_cpus": cfg.cpus_per_replica},
                      max_ongoing_requests=max(5, 2 * cfg.max_batch_size))
    @serve.ingress(api)
    class BgwsolLocalizer:
        def __init__(self, config: ServeConfig):
            import torch

            from bgwsol.serving.localizer import load_localizer

            torch.set_num_threads(max(1, int(config.cpus_per_replica)))
            self.config = config
            self.localizer = load_localizer(config.model, None if config.tau < 0 else config.tau,
                                            config.tracking_uri, config.precision)
            self.predict.set_max_batch_size(config.max_batch_size)
            self.predict.set_batch_wait_timeout_s(config.batch_wait_s)

        @api.get("/health")
        def health(self) -> dict:
            return {"status": "ok", "model": self.config.model, "classes": len(self.localizer.class_names),
                    "tau": self.localizer.tau, "max_batch_size": self.config.max_batch_size}

        @api.post("/localize")
        async def localize(self, request: Request, heatmap: bool = False):
            # without the overlay picture, a JPEG is decoded only as large as the model needs (draft mode)
            draft = 0 if heatmap else self.localizer.cfg.data.input_size
            try:
                image, size = await read_image(request, self.config.max_body_bytes, draft)
            except BadRequest as bad:
                return JSONResponse({"detail": bad.detail}, status_code=bad.status)
            result = await self.predict((image, size))
            body = answer(result, self.localizer.tau)
            if heatmap:
                body["heatmap_png"] = base64.b64encode(overlay_png(result, image)).decode()
            return body

        @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.01)
        async def predict(self, requests: list) -> list:
            """``[(image, (w, h) at full size)]`` -> one Localization each, in one forward pass (in a
            thread: the replica decodes the next requests and fills the next batch meanwhile)."""
            import asyncio

            images, sizes = zip(*requests)
            return await asyncio.to_thread(self.localizer.batch, list(images), list(sizes))

    return BgwsolLocalizer.bind(cfg)


def start(cfg: ServeConfig, app_name: str = "bgwsol") -> str:
    """Deploy ``cfg`` on the connected Ray (Serve's HTTP proxy on ``cfg.host:cfg.port``); returns
    the service's base URL once every replica has loaded the model."""
    from ray import serve

    def deploy() -> None:
        serve.start(http_options={"host": cfg.host, "port": cfg.port})
        serve.run(build_app(cfg), name=app_name, route_prefix="/")

    # a controller or proxy too slow to come up on a busy machine is shut down and started again
    start_with_retries("The Serve application", deploy, serve.shutdown,
                       advice="rerun when the machine is less busy")
    return f"http://{cfg.host}:{cfg.port}"


def app_builder(args: dict):
    """Ray Serve's application builder (``import_path: bgwsol.serving.http:app_builder`` in a Serve
    config or a KubeRay ``RayService``, ``args`` being :class:`ServeConfig` fields); refuses a
    configuration with problems in one line."""
    from bgwsol.config import from_dict
    from bgwsol.errors import UserError

    cfg = from_dict(ServeConfig, dict(args))
    problems = serve_problems(cfg)
    if problems:
        raise UserError("; ".join(problems))
    return build_app(cfg)
