"""Model weights on disk: safetensors with JSON metadata, or the paper's ``.pth`` state dict.

Training-resume state (optimizer, epoch, RNG) is separate and lives in ``gimefive.train``;
a weights file only ever holds tensors plus metadata, so loading it runs no code.

torch is imported only by the functions that build or write a model: reading the
metadata (the uncertain threshold, in every classify stage) must not cost a stage the
seconds of importing torch when its engine is ONNX Runtime.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS, UNCERTAIN_THRESHOLD

if TYPE_CHECKING:
    import torch

    from gimefive.model import GiMeFive

WEIGHTS_DIR = Path(__file__).parent / "weights"
DEFAULT_WEIGHTS = WEIGHTS_DIR / "gimefive.safetensors"


def save_weights(path: str | Path, model: GiMeFive, metadata: dict | None = None,
                 dtype: torch.dtype | None = None) -> Path:
    """Write the model's state dict and ``metadata`` (model config and class names added);
    floating-point tensors as ``dtype`` (None: float32)."""
    import torch
    from safetensors.torch import save_file

    dtype = dtype or torch.float32
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    meta = {"model": model.config.to_dict(), "classes": list(EMOTIONS), **(metadata or {})}
    tensors = {k: v.detach().to("cpu", dtype if v.is_floating_point() else v.dtype).contiguous()
               for k, v in model.state_dict().items()}
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file(tensors, str(tmp), metadata={"gimefive": json.dumps(meta)})
    tmp.replace(path)
    return path


def read_metadata(path: str | Path) -> dict:
    with safe_open(str(path), framework="numpy") as f:  # the header only: no torch
        raw = (f.metadata() or {}).get("gimefive")
    return json.loads(raw) if raw else {}


def uncertain_threshold_of(weights: str | Path | None = None, meta: dict | None = None
                           ) -> float:
    """The abstain threshold of ``weights`` (default: the shipped ones): the
    ``uncertain_threshold`` their metadata (or the given ``meta``) holds, else
    :data:`~gimefive.labels.UNCERTAIN_THRESHOLD`. The one reader every command uses."""
    if meta is None:
        path = Path(weights) if weights else DEFAULT_WEIGHTS
        meta = read_metadata(path) if path.suffix == ".safetensors" and path.is_file() else {}
    value = meta.get("uncertain_threshold")
    if isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1:
        return float(value)
    return UNCERTAIN_THRESHOLD


def _read_state_dict(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    import torch

    if path.suffix == ".safetensors":
        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
        return state, read_metadata(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a bad file
        raise GimefiveError(f"{path}: not a PyTorch state dict ({exc.__class__.__name__})") from exc
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        return obj["model"], obj.get("metadata", {})
    if not isinstance(obj, dict):
        raise GimefiveError(f"{path}: expected a state dict, found {type(obj).__name__}")
    return obj, {}


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu"
               ) -> tuple[GiMeFive, dict]:
    """Build GiMeFive from a weights file (default: the shipped weights), in eval mode, fp32."""
    from gimefive.model import GiMeFive, ModelConfig

    path = Path(path) if path is not None else DEFAULT_WEIGHTS
    if not path.is_file():
        if path == DEFAULT_WEIGHTS:
            raise GimefiveError(
                "no shipped weights in this install; pass --weights PATH "
                "(a .safetensors from `gimefive train` or the paper's .pth)")
        raise GimefiveError(f"weights file not found: {path}")
    state, meta = _read_state_dict(path)
    state = {k.removeprefix("module."): v for k, v in state.items()}
    config = ModelConfig(**meta.get("model", {}))
    model = GiMeFive(config)
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:  # shape mismatch
        first = str(exc).strip().splitlines()[-1].strip()
        raise GimefiveError(f"{path}: not GiMeFive weights ({first})") from None
    if missing or unexpected:
        raise GimefiveError(
            f"{path}: not GiMeFive weights ({len(missing)} missing keys, e.g. {missing[:3]}; "
            f"{len(unexpected)} unexpected, e.g. {unexpected[:3]})")
    model.float().eval().to(device)
    return model, meta
