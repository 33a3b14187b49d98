"""Which faces sit on a discontinuity of Grad-CAM, where two exact fp32 runtimes may differ.

Grad-CAM is a piecewise function: each ReLU in the head either passes its gradient or
not, each 2x2 max-pool routes to one element or (when the window's max is <= 0) to
none, and the explained class is an arg-max. When a pre-activation is within roundoff
of zero (or two logits within roundoff of each other), ONNX Runtime and PyTorch, whose
convolutions round differently at the 1e-6 level, can take different branches, and
both maps are then correct for their own forward pass. Verification compares the
branch each runtime took, face by face, and gates the CAM tolerance on the faces where
both took the same branches; the others are reported (and must stay rare).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

#: at most this fraction of verification faces may be over tolerance on a branch boundary
#: (the 8x8 conv4 map depends on ~12k max-pool routing choices per face, conv5 on ~4k)
MAX_BOUNDARY_FRACTION = 0.10


def _pool_decisions(pre_bn_relu: np.ndarray, routing: bool) -> list[np.ndarray]:
    """Per face: which 2x2 windows pass gradient (max > 0) and, if ``routing``, where."""
    b = np.asarray(pre_bn_relu, np.float32)
    n, c, h, w = b.shape
    windows = b.reshape(n, c, h // 2, 2, w // 2, 2).transpose(0, 1, 2, 4, 3, 5)
    windows = windows.reshape(n, c, h // 2, w // 2, 4)
    positive = windows.max(axis=-1) > 0
    out = [positive.reshape(n, -1)]
    if routing:
        out.append((windows.argmax(axis=-1) * positive).reshape(n, -1))
    return out


def branch_signature(z1, z2, logits, bn4, bn5, cam_layer: str, class_input: bool) -> np.ndarray:
    """One row per face of every discrete choice the Grad-CAM gradient depends on."""
    parts = [np.asarray(z1) > 0, np.asarray(z2) > 0]
    if not class_input:
        parts.append(np.asarray(logits).argmax(axis=1)[:, None])
    if cam_layer == "conv5":
        parts += _pool_decisions(bn5, routing=False)  # only "window max > 0" matters
    else:
        parts += _pool_decisions(bn5, routing=True) + _pool_decisions(bn4, routing=True)
    return np.concatenate([p.reshape(len(p), -1).astype(np.int64) for p in parts], axis=1)


def torch_signature(model, x: np.ndarray, cam_layer: str, class_input: bool) -> np.ndarray:
    bns = {}
    with torch.no_grad():
        h = torch.from_numpy(x)
        for i, (conv, bn) in enumerate(model.blocks(), start=1):
            b = bn(conv(h))
            bns[i] = b.numpy()
            h = F.max_pool2d(F.relu(b), 2)
        z1 = model.fc1(h.mean(dim=(2, 3)))
        z2 = model.fc2(F.relu(z1))
        logits = model.fc3(F.relu(z2))
    return branch_signature(z1.numpy(), z2.numpy(), logits.numpy(), bns[4], bns[5], cam_layer,
                            class_input)


def onnx_signature(path: str | Path, x: np.ndarray, cam_layer: str, class_input: bool,
                   feed_extra: dict | None = None) -> np.ndarray:
    """The same choices as ONNX Runtime made them (intermediate tensors exposed as outputs)."""
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(path))
    gemms = [n.output[0] for n in model.graph.node if n.op_type == "Gemm"]
    convs = [n.output[0] for n in model.graph.node if n.op_type == "Conv"]
    if len(gemms) != 3 or len(convs) != 5:
        raise ValueError(f"{path}: expected 3 Gemm and 5 Conv nodes, found "
                         f"{len(gemms)} and {len(convs)}")
    # B_i is the BatchNormalization after conv i, or conv i's own output where the
    # exporter folded BN into the conv (done when nothing else reads the raw conv output)
    bn_after = {n.input[0]: n.output[0] for n in model.graph.node
                if n.op_type == "BatchNormalization"}
    b4, b5 = (bn_after.get(c, c) for c in convs[3:])
    names = [gemms[0], gemms[1], gemms[2], b4, b5]
    for name in names:
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    with tempfile.TemporaryDirectory() as tmp:
        probe = Path(tmp) / "probe.onnx"
        onnx.save(model, str(probe))
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        session = ort.InferenceSession(str(probe), opts, providers=["CPUExecutionProvider"])
        z1, z2, logits, bn4, bn5 = session.run(names, {"input": x, **(feed_extra or {})})
    return branch_signature(z1, z2, logits, bn4, bn5, cam_layer, class_input)


def boundary_faces(path, model, x: np.ndarray, cam_layer: str, class_input: bool,
                   feed_extra: dict | None = None) -> np.ndarray:
    """Boolean [N]: faces where ONNX Runtime and PyTorch took a different branch."""
    ours = torch_signature(model, x, cam_layer, class_input)
    theirs = onnx_signature(path, x, cam_layer, class_input, feed_extra)
    return (ours != theirs).any(axis=1)
