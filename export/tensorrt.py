"""TensorRT engines from the exported ONNX graph (FP32, FP16, INT8), cached per GPU.

NOT VERIFIED HERE: no machine this project was built on has an NVIDIA GPU or
TensorRT. The build and run code follows TensorRT's documented Python API (10.x:
``Builder``, ``OnnxParser``, ``IBuilderConfig.set_memory_pool_limit``, optimisation
profiles, ``build_serialized_network``, ``IInt8EntropyCalibrator2``;
``execute_async_v3`` at run time). What can be checked without a GPU is tested:
the graph's operators against TensorRT's ONNX support matrix
(:mod:`gimefive.export.tensorrt_ops`), calibration batching, cache keys, and the
error when TensorRT is missing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from gimefive.errors import GimefiveError

PRECISIONS = ("fp32", "fp16", "int8")
MISSING = ("TensorRT is not installed (it needs an NVIDIA GPU; install the extra: "
           "pip install 'gimefive[gpu]')")


def require_tensorrt():
    """Import tensorrt or raise the one-line error; also requires a CUDA device."""
    try:
        import tensorrt as trt
    except ImportError:
        raise GimefiveError(MISSING) from None
    import torch

    if not torch.cuda.is_available():
        raise GimefiveError("TensorRT needs an NVIDIA GPU, and torch sees no CUDA device")
    return trt


# ---------------------------------------------------------------- graph check

def unsupported_operators(onnx_path: str | Path) -> list[str]:
    """Problems TensorRT's ONNX parser would report for this graph ([] when none)."""
    import onnx
    from gimefive.export.tensorrt_ops import CONSTANT_INPUTS, MAX_OPSET, SUPPORTED

    model = onnx.load(str(onnx_path), load_external_data=False)
    problems = []
    opset = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if opset > MAX_OPSET:
        problems.append(f"opset {opset} > {MAX_OPSET}")
    constants = {i.name for i in model.graph.initializer}
    constants |= {o for n in model.graph.node if n.op_type == "Constant" for o in n.output}
    for node in model.graph.node:
        if node.domain not in ("", "ai.onnx") or node.op_type not in SUPPORTED:
            problems.append(f"{node.op_type} ({node.name}) is not supported")
            continue
        rule = CONSTANT_INPUTS.get(node.op_type)
        if rule and len(node.input) > rule[0] and node.input[rule[0]] and \
                node.input[rule[0]] not in constants:
            problems.append(f"{node.op_type} ({node.name}): {rule[1]}")
        if node.op_type == "MaxPool" and len([o for o in node.output if o]) > 1:
            problems.append(f"MaxPool ({node.name}): `Indices` output unsupported")
    return problems


# ---------------------------------------------------------------- cache keys

@dataclass(frozen=True)
class EngineKey:
    """Everything a serialized engine depends on: it only runs where all of these match."""

    onnx_stem: str       # already carries weights hash, CAM layer, opset
    gpu: str             # e.g. "NVIDIA H100 80GB HBM3"
    compute_capability: str  # e.g. "9.0"
    trt_version: str
    precision: str
    max_batch: int

    def filename(self) -> str:
        gpu = re.sub(r"[^A-Za-z0-9]+", "_", self.gpu).strip("_")
        return (f"{self.onnx_stem}-{gpu}-sm{self.compute_capability.replace('.', '')}"
                f"-trt{self.trt_version}-{self.precision}-b{self.max_batch}.engine")

    def calibration_cache_name(self) -> str:
        """INT8 scales depend on the graph, the data and TensorRT, not on the GPU."""
        return f"{self.onnx_stem}-trt{self.trt_version}-int8.calib"


def engine_key(onnx_path: str | Path, precision: str, max_batch: int, gpu: str | None = None,
               compute_capability: str | None = None, trt_version: str | None = None
               ) -> EngineKey:
    """The key for this machine (GPU and TensorRT looked up when not given)."""
    if precision not in PRECISIONS:
        raise GimefiveError(f"TensorRT precision must be one of {PRECISIONS}, got {precision!r}")
    if max_batch < 1:
        raise GimefiveError(f"max batch must be >= 1, got {max_batch}")
    if gpu is None or compute_capability is None:
        import torch

        if not torch.cuda.is_available():
            raise GimefiveError("TensorRT needs an NVIDIA GPU, and torch sees no CUDA device")
        gpu = torch.cuda.get_device_name()
        compute_capability = "{}.{}".format(*torch.cuda.get_device_capability())
    if trt_version is None:
        trt_version = require_tensorrt().__version__
    return EngineKey(Path(onnx_path).stem, gpu, compute_capability, trt_version, precision,
                     int(max_batch))


# ---------------------------------------------------------------- calibration

class CalibrationBatches:
    """Fixed-size batches of calibration faces, as TensorRT's calibrator asks for them.

    TensorRT calls ``get_batch`` until it returns None and expects every batch to have
    exactly ``get_batch_size()`` faces, so a last partial batch is dropped (and the
    constructor refuses a set smaller than one batch).
    """

    def __init__(self, x: np.ndarray, batch_size: int = 32) -> None:
        if x.ndim != 4 or x.shape[1:] != (3, 64, 64):
            raise GimefiveError(f"calibration faces must be [N,3,64,64], got {x.shape}")
        if batch_size < 1 or len(x) < batch_size:
            raise GimefiveError(f"need at least one full calibration batch of {batch_size} "
                                f"faces, got {len(x)}")
        self.x = np.ascontiguousarray(x, np.float32)
        self.batch_size = batch_size

    def __len__(self) -> int:
        return len(self.x) // self.batch_size

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self.x[i * self.batch_size:(i + 1) * self.batch_size]

    def digest(self) -> str:
        return hashlib.sha256(self.x.tobytes()).hexdigest()[:16]


def make_calibrator(trt, batches: CalibrationBatches, cache_file: Path):
    """An ``IInt8EntropyCalibrator2`` feeding ``batches`` from CUDA memory (via torch)."""
    import torch

    class Calibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self._it = iter(batches)
            self._device = None  # kept alive until the next batch replaces it

        def get_batch_size(self) -> int:
            return batches.batch_size

        def get_batch(self, names):
            batch = next(self._it, None)
            if batch is None:
                return None
            self._device = torch.from_numpy(batch).cuda()
            return [int(self._device.data_ptr())]

        def read_calibration_cache(self):
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache) -> None:
            cache_file.write_bytes(bytes(cache))

    return Calibrator()


# ---------------------------------------------------------------- build

def build_engine(onnx_path: str | Path, engine_path: str | Path, precision: str = "fp16",
                 max_batch: int = 128, opt_batch: int = 32, calibration: np.ndarray | None = None,
                 calibration_cache: Path | None = None, workspace_gib: float = 2.0) -> Path:
    """Parse the ONNX graph and write a serialized engine with a dynamic batch profile."""
    trt = require_tensorrt()
    problems = unsupported_operators(onnx_path)
    if problems:
        raise GimefiveError(f"{onnx_path}: TensorRT cannot parse it: {problems[0]}")
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0 if int(trt.__version__.split(".")[0]) >= 10 else \
        1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise GimefiveError(f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    profile = builder.create_optimization_profile()
    opt = max(1, min(opt_batch, max_batch))
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (opt, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibration is None:
            raise GimefiveError("INT8 needs calibration faces (training crops)")
        config.set_flag(trt.BuilderFlag.INT8)
        batches = CalibrationBatches(calibration, min(32, len(calibration)))
        config.int8_calibrator = make_calibrator(trt, batches, Path(calibration_cache))
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise GimefiveError(f"TensorRT failed to build an engine from {onnx_path}")
    engine_path = Path(engine_path)
    engine_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = engine_path.with_name(engine_path.name + ".tmp")
    tmp.write_bytes(bytes(serialized))
    tmp.replace(engine_path)
    return engine_path
