"""How a trained model runs for inference: memory format and autocast dtype.

``fp32`` (the default of ``bgwsol localize``, ``bgwsol serve`` and every evaluation pass): fp32
in channels_last (NHWC) weights and inputs, which oneDNN runs faster on CPU than NCHW and which
gives the same classes and boxes as NCHW on the real test photos. ``bf16``: channels_last and
bf16 autocast, faster again where the device computes bf16 natively (CPU: AVX-512 BF16 or AMX
tiles, as ``torch.cpu`` reports them; CUDA: ``torch.cuda.is_bf16_supported``), refused where it
does not; it is not the default because it moves boxes: on the development set's test photos the
class is the same on every photo but most boxes move by a few pixels, MaxBoxAccV2 by up to 0.9
points (``benchmarks/bench_precision.py``, BENCHMARKS.md). The model's outputs come back in fp32
either way. :func:`reference_precision` (fp32, NCHW, the model untouched) is what both are
measured against.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass

import torch

PRECISIONS = ("fp32", "bf16")


def bf16_native(device: torch.device | str) -> bool:
    """Whether ``device`` computes bf16 in hardware (not emulated), as torch itself reports it."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        cpu = torch.cpu  # private capability checks, but torch's own report of what oneDNN will use
        return bool(getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
                    or getattr(cpu, "_is_amx_tile_supported", lambda: False)())
    return False


@dataclass(frozen=True)
class InferencePrecision:
    """``channels_last``: weights and inputs in NHWC; ``autocast``: the forward's dtype (None: fp32)."""

    device_type: str
    channels_last: bool
    autocast: torch.dtype | None

    def describe(self) -> str:
        """e.g. ``"bf16 autocast, channels_last"`` or ``"fp32"``."""
        parts = ["bf16 autocast" if self.autocast == torch.bfloat16 else "fp32"]
        return ", ".join(parts + (["channels_last"] if self.channels_last else []))

    def prepare(self, model: torch.nn.Module) -> torch.nn.Module:
        """``model`` in this memory format (in place, as ``Module.to`` does), in eval mode."""
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        return model.eval()

    def forward(self, model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """``model(images)`` with ``images`` ``(B, 3, H, W)`` float (normalized) in this precision;
        floating outputs come back as fp32 tensors."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        context = torch.autocast(self.device_type, dtype=self.autocast) if self.autocast else nullcontext()
        with context:
            outputs = model(images)
        return fp32_outputs(outputs)


def fp32_outputs(outputs: dict) -> dict:
    """A model's outputs with every floating tensor in fp32; other entries (e.g. BAS's
    ``erased_cams`` function) as they are."""
    return {k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v) for k, v in outputs.items()}


def inference_precision(device: torch.device | str = "cpu", choice: str = "fp32") -> InferencePrecision:
    """The precision ``choice`` (:data:`PRECISIONS`) on ``device``; ``bf16`` where the device has no
    native bf16 raises ValueError (emulated, it would be slower than fp32)."""
    problem = precision_problem(choice, device)
    if problem:
        raise ValueError(f"precision {choice!r}: {problem}")
    return InferencePrecision(torch.device(device).type, channels_last=True, autocast=torch.bfloat16 if choice == "bf16" else None)


def precision_problem(choice: str, device: torch.device | str = "cpu") -> str:
    """Why ``choice`` cannot run on ``device`` (one line: not one of :data:`PRECISIONS`, or bf16
    without native support), or ""."""
    if choice not in PRECISIONS:
        return f"must be one of {', '.join(PRECISIONS)}"
    if choice == "bf16" and not bf16_native(device):
        kind = torch.device(device).type
        return (f"this {kind.upper()} has no native bf16 (torch reports "
                f"{'neither AVX-512 BF16 nor AMX' if kind == 'cpu' else 'none'}): emulated it is slower than fp32")
    return ""


def reference_precision(device: torch.device | str = "cpu") -> InferencePrecision:
    """fp32 in NCHW, the model's memory format untouched: what the fast paths are measured against."""
    return InferencePrecision(torch.device(device).type, channels_last=False, autocast=None)
