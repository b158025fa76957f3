"""``bgwsol-eval``: score saved score maps in wsolevaluation's layout.

Maps are ``<scoremap_root>/<image_id>.npy`` (2-D float in [0, 1]); the metadata folder
holds ``image_ids.txt``, ``class_labels.txt``, ``image_sizes.txt`` and ``localization.txt``.
Ground-truth boxes are resized from the original image size to the map's size with int
truncation (224 x 224 maps give wsolevaluation's numbers).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from bgwsol.evaluation.boxes import resize_boxes
from bgwsol.data.sources.records import DatasetFormatError
from bgwsol.data.sources.wsol_metadata import read_wsol_metadata
from bgwsol.evaluation.scoremaps import ScoremapError, check_scoremap
from bgwsol.evaluation.metrics import BoxAccumulator, cam_thresholds, mean_over


def _str2bool(v: str) -> bool:
    if v.lower() in ("1", "true", "yes", "y", "t"):
        return True
    if v.lower() in ("0", "false", "no", "n", "f"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {v!r}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bgwsol-eval",
        description="Compute MaxBoxAcc / MaxBoxAccV2 of saved score maps, as wsolevaluation defines them "
                    "(same numbers, computed once per distinct binarization instead of once per threshold).")
    for name in ("scoremap_root", "scoremap-root"):
        p.add_argument(f"--{name}", dest="scoremap_root", type=Path,
                       help="folder with <image_id>.npy score maps" if "_" in name else argparse.SUPPRESS)
    for name in ("metadata_root", "metadata-root"):
        p.add_argument(f"--{name}", dest="metadata_root", type=Path,
                       help="folder with image_ids.txt, class_labels.txt, image_sizes.txt, localization.txt"
                       if "_" in name else argparse.SUPPRESS)
    for name in ("cam_curve_interval", "cam-curve-interval"):
        p.add_argument(f"--{name}", dest="cam_curve_interval", type=float, default=0.01,
                       help="threshold step: thresholds are arange(0, 1, step) (default 0.01)" if "_" in name else argparse.SUPPRESS)
    for name in ("multi_contour_eval", "multi-contour-eval"):
        p.add_argument(f"--{name}", dest="multi_contour_eval", type=_str2bool, nargs="?", const=True, default=False,
                       help="boxes from all contours (MaxBoxAccV2) instead of the largest one; accepts true/false"
                       if "_" in name else argparse.SUPPRESS)
    for name in ("iou_threshold_list", "iou-threshold-list"):
        p.add_argument(f"--{name}", dest="iou_threshold_list", type=int, nargs="+", default=[30, 50, 70],
                       help="IoU thresholds in percent (default 30 50 70)" if "_" in name else argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p


def score_folder(scoremap_root: Path, metadata_root: Path, interval: float, multi_contour: bool,
                 iou_thresholds: list[int]) -> dict:
    meta = read_wsol_metadata(metadata_root)
    acc = BoxAccumulator(cam_thresholds(interval), tuple(iou_thresholds), multi_contour)
    problems = []  # every bad map is named, and then no number is given: a partial score would look complete
    for image_id in meta.image_ids:
        path = scoremap_root / f"{image_id}.npy"
        try:
            scoremap = np.load(path, allow_pickle=False)
            check_scoremap(scoremap, image_id)
        except FileNotFoundError:
            problems.append(f"{path}: no score map for image {image_id!r}")
            continue
        except (ValueError, OSError, EOFError) as exc:  # ScoremapError is a ValueError
            problems.append(f"{path}: {exc}" if isinstance(exc, ScoremapError) else
                            f"{path}: not a readable .npy file ({exc})")
            continue
        if problems:
            continue  # no score will be given: only look for further problems
        h, w = scoremap.shape
        acc.accumulate(scoremap, resize_boxes(meta.boxes[image_id], meta.sizes[image_id], (w, h)), image_id=image_id)
    if problems:
        shown = "\n".join(problems[:20]) + (f"\n... and {len(problems) - 20} more" if len(problems) > 20 else "")
        raise ScoremapError(f"{len(problems)} of {len(meta.image_ids)} score maps are unusable, nothing was "
                            f"scored:\n{shown}")
    per_iou = acc.max_box_acc()
    return {"MaxBoxAcc": {str(k): v for k, v in per_iou.items()},
            "MaxBoxAccV2": mean_over(per_iou, acc.iou_thresholds),
            "best_threshold": {str(k): v for k, v in acc.best_thresholds().items()},
            "num_images": acc.count,
            "multi_contour_eval": multi_contour,
            "cam_curve_interval": interval}


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.scoremap_root is None or args.metadata_root is None:
        build_parser().error("--scoremap_root and --metadata_root are required")
    try:
        result = score_folder(args.scoremap_root, args.metadata_root, args.cam_curve_interval,
                              args.multi_contour_eval, args.iou_threshold_list)
    except (ScoremapError, DatasetFormatError, ValueError, OSError) as exc:
        for line in str(exc).splitlines():
            print(f"bgwsol-eval: error: {line}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result))
    else:
        print(f"images: {result['num_images']}  contours: {'all' if args.multi_contour_eval else 'largest'}  "
              f"thresholds: arange(0, 1, {args.cam_curve_interval})")
        for k, v in result["MaxBoxAcc"].items():
            print(f"MaxBoxAcc@IoU{k}: {v:.2f}  (best threshold {result['best_threshold'][k]:.3f})")
        print(f"mean over IoU {args.iou_threshold_list} (MaxBoxAccV2 with all contours): {result['MaxBoxAccV2']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
