"""The ``bgwsol`` command: ``bgwsol localize --model MODEL IMAGE...`` and ``bgwsol serve --model MODEL``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from bgwsol.serving.localizer import load_localizer


def localize_main(args: argparse.Namespace) -> int:
    from bgwsol.data.images import RejectedImage, read_image_file
    from bgwsol.evaluation.viz import overlay

    try:
        localizer = load_localizer(args.model, args.tau, args.tracking_uri, args.precision)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported with the model named
        print(f"error: cannot load model {args.model!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    if args.masks:
        Path(args.masks).mkdir(parents=True, exist_ok=True)
    failures, said = 0, False
    for path in args.images:
        try:
            image = read_image_file(path)  # upright RGB (EXIF orientation applied), bombs refused
        except (OSError, RejectedImage) as exc:
            print(f"{path}: skipped: {exc}", file=sys.stderr)
            failures += 1
            continue
        r = localizer(image)
        picture = out_dir / f"{Path(path).stem}_localized.png"
        overlay(np.asarray(image), r.heatmap, np.array([r.box]), np.zeros((0, 4)),
                caption=f"{r.class_name} {r.score:.2f}").save(picture)
        line = f"{path}\t{r.class_name}\tclass {r.label}\tscore {r.score:.3f}\tbox {list(r.box)}\t{picture}"
        if args.masks:
            from PIL import Image

            mask, where = localizer.mask(r)
            if not said:
                print(f"masks: {where}", file=sys.stderr)
                said = True
            mask_file = Path(args.masks) / f"{Path(path).stem}_mask.png"
            Image.fromarray(mask.astype(np.uint8) * 255).save(mask_file)
            line += f"\t{mask_file}"
        print(line)
    if failures:
        print(f"{failures} of {len(args.images)} images skipped", file=sys.stderr)
    return 1 if failures else 0


def serve_main(args: argparse.Namespace) -> int:
    """Deploy the model with Ray Serve (on RAY_ADDRESS's cluster, or a local Ray) until Ctrl-C."""
    import time

    from bgwsol.config import config_from_args
    from bgwsol.errors import report_problems
    from bgwsol.ray_init import RayConfig, init_ray
    from bgwsol.serving.http import ServeConfig, serve_problems, start

    cfg = config_from_args(ServeConfig, args, ServeConfig())
    problems = serve_problems(cfg)
    if problems:
        return report_problems(problems)
    try:  # the model must load here before any replica tries
        localizer = load_localizer(cfg.model, None if cfg.tau < 0 else cfg.tau, cfg.tracking_uri, cfg.precision)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported with the model named
        print(f"error: cannot load model {cfg.model!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    from ray import serve

    init_ray(RayConfig())
    try:
        url = start(cfg)
        print(f"serving {cfg.model} ({len(localizer.class_names)} classes, tau {localizer.tau:.2f}, "
              f"{localizer.precision.describe()}, "
              f"{cfg.replicas} replica(s), batches of up to {cfg.max_batch_size})\n"
              f"  curl -X POST --data-binary @IMAGE.jpg -H 'Content-Type: image/jpeg' {url}/localize\n"
              f"  health: {url}/health; Ctrl-C stops", flush=True)
        while True:
            time.sleep(3600)
    finally:
        serve.shutdown()


def check_background_main(args: argparse.Namespace) -> int:
    from bgwsol.serving.background_check import check_background, write_scores

    try:
        localizer = load_localizer(args.model, None, args.tracking_uri, args.precision)
    except Exception as exc:  # noqa: BLE001 - any load failure is reported with the model named
        print(f"error: cannot load model {args.model!r}: {type(exc).__name__}: {str(exc).splitlines()[0]}",
              file=sys.stderr)
        return 2
    scores, skipped = check_background(localizer, args.background)
    for path, why in skipped:
        print(f"{path}: skipped: {why}", file=sys.stderr)
    out = write_scores(scores, args.out)
    print("evidence\tfg_mass\tlooks like\tphoto")
    for s in scores[:max(0, args.top)]:
        mass = "-" if s.fg_mass is None else f"{s.fg_mass:.2f}"
        print(f"{s.evidence:.2f}\t{mass}\t{s.class_name} ({s.class_prob:.2f})\t{s.path}")
    print(f"{len(scores)} photos scored, {len(skipped)} skipped; the ranked list: {out}\n"
          f"review it, keep only the rows to leave out, then rerun with --background_exclude {out}")
    return 1 if skipped and not scores else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="bgwsol", description="Weakly supervised object localization with background images.")
    sub = parser.add_subparsers(dest="command", required=True)
    loc = sub.add_parser("localize", help="class, score, box and a heatmap overlay for each image",
                         description="Prints one line per image (path, class name, class index, score, box as "
                                     "inclusive x0 y0 x1 y1 pixels, overlay file, and with --masks the mask file) and writes a PNG with the heatmap, "
                                     "the box in red.")
    loc.add_argument("--model", required=True,
                     help="models:/bgwsol-ilsvrc@champion, runs:/<run id>/model, or a checkpoint (checkpoint.pt or the "
                          "checkpoint_* folder holding it)")
    # one spelling across the bgwsol commands (serve's flags come from ServeConfig's fields); the
    # hyphenated one is accepted too
    loc.add_argument("--tracking_uri", "--tracking-uri", dest="tracking_uri", default="",
                     help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    loc.add_argument("--tau", type=float, default=None, help="score-map threshold (default: the one registered with the model)")
    loc.add_argument("--precision", choices=("fp32", "bf16"), default="fp32",
                     help="fp32 (default, channels_last); bf16: bf16 autocast, the forward pass about 1.8x faster on "
                          "a CPU with native bf16 (AVX-512 BF16 or AMX; refused elsewhere), same classes, boxes moved "
                          "by a few pixels")
    loc.add_argument("--out", default="localized", help="folder for the overlay PNGs (default: ./localized)")
    loc.add_argument("--masks", default="", metavar="DIR",
                     help="also write each image's object mask (PNG, 0/255, the image's size) here: the heatmap at the "
                          "mask threshold chosen on validation masks (best mask mIoU), or at the box threshold for a "
                          "model scored without masks (said once on stderr)")
    loc.add_argument("images", nargs="+", help="image files")
    loc.set_defaults(func=localize_main)
    chk = sub.add_parser("check-background", help="background photos that look like a class, most suspicious first",
                         description="Scores every photo of a background set with a trained model: how far its top "
                                     "class probability stands above chance (evidence, 0-1) and, for bgwsol, how much "
                                     "of it the foreground head calls object (fg_mass). Writes the ranked list as "
                                     "CSV and prints the top ones. Review the list, delete the rows you keep, and "
                                     "pass the file to the next run as --background_exclude FILE (shard_background: "
                                     "--exclude FILE): every photo it names is left out.")
    chk.add_argument("--model", required=True, help="models:/bgwsol-ilsvrc@champion, runs:/<run id>/model, or a checkpoint")
    chk.add_argument("--tracking_uri", "--tracking-uri", dest="tracking_uri", default="",
                     help="MLflow tracking URI (default: MLFLOW_TRACKING_URI)")
    chk.add_argument("--background", required=True, help="the background folder (local or s3://bucket/prefix)")
    chk.add_argument("--out", default="background_check.csv", help="the ranked list (CSV; default: ./background_check.csv)")
    chk.add_argument("--top", type=int, default=20, help="how many of the most class-like photos to print (default: 20)")
    chk.add_argument("--precision", choices=("fp32", "bf16"), default="fp32", help="as for localize")
    chk.set_defaults(func=check_background_main)
    from bgwsol.config import add_config_args
    from bgwsol.serving.http import ServeConfig

    srv = sub.add_parser("serve", help="the model over HTTP with Ray Serve (batching, health route, replicas)",
                         description="Runs a Ray Serve application answering POST /localize (the image's bytes "
                                     "or a multipart upload) with JSON: class name and index, score, box in the "
                                     "image's pixels, and with ?heatmap=true the overlay as a PNG (base64). "
                                     "GET /health describes the model. On RAY_ADDRESS's cluster, else a local Ray.")
    add_config_args(srv, ServeConfig, ServeConfig())
    srv.add_argument("--tracking-uri", dest="tracking_uri", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    srv.set_defaults(func=serve_main)
    return parser


def main(argv: list[str] | None = None) -> int:
    from bgwsol.errors import run_entry_point

    args = build_parser().parse_args(argv)
    return run_entry_point(lambda: args.func(args), "bgwsol")


if __name__ == "__main__":
    sys.exit(main())
