"""Classify stage: face crops through a GiMeFive backend in dynamic batches across frames.

Faces of consecutive frames are gathered until ``classify_max_batch`` faces are waiting
or the oldest has waited ``classify_max_wait_ms``; then one engine call (two when only
some frames want Grad-CAM, see ``cam_every``) classifies them all. Crops are squares
framed as ``align`` says (:func:`gimefive.pipeline.crops.crop_geometry`) and go through
:func:`gimefive.preprocess.preprocess_faces`, the same preprocessing the model was
trained with (with ``device`` on CUDA,
:func:`gimefive.pipeline.torch_crops.preprocess_crops_torch` does the same on the GPU,
each frame uploaded once). ``classify_workers`` engine calls run at once in threads: the
engines release the GIL, so a second call uses a core the first would leave idle.
"""

from __future__ import annotations

import numpy as np
from gimefive.pipeline import devices
from gimefive.pipeline.crops import crop_geometry, cut_faces
from gimefive.pipeline.messages import ClassifiedMsg, DetectionsMsg, Message
from gimefive.pipeline.stage import BatchWindow, Stage

from gimefive.preprocess import INPUT_SIZE, preprocess_faces

CAM_SIDE = {"conv5": 4, "conv4": 8}  # Grad-CAM resolution at 64x64 input


class ClassifyStage(Stage):
    name = "classify"
    accepts = (DetectionsMsg,)

    def setup(self) -> None:
        from gimefive.backends import create_backend

        c = self.config
        self.crop_device = devices.torch_device(c.device)  # None: OpenCV on the CPU
        options = {"weights": c.weights, "cam_layer": c.cam_layer}
        try:
            self.backend = create_backend(c.backend, threads=c.classify_threads, **options)
        except TypeError:  # a backend without a thread setting
            self.backend = create_backend(c.backend, **options)
        self.backend_name = getattr(self.backend, "name", c.backend)
        self.backend(np.zeros((2, 3, 64, 64), np.float32), cam=c.cam)  # warm-up
        from gimefive.checkpoint import uncertain_threshold_of

        self.threshold = (c.uncertain_threshold if c.uncertain_threshold is not None
                          else uncertain_threshold_of(c.weights))
        self.pool = None
        if c.classify_workers > 1:  # engines release the GIL: threads run calls in parallel
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(c.classify_workers, thread_name_prefix="engine")
        self.pending = BatchWindow(c.classify_max_wait_ms)
        self.pending_faces = 0

    def info(self) -> dict:
        return {"backend": self.backend_name, "uncertain_threshold": self.threshold,
                "crops": "opencv cpu" if self.crop_device is None
                else f"torch {self.crop_device}"}

    def wants_cam(self, msg: DetectionsMsg) -> bool:
        return self.config.cam and msg.index % self.config.cam_every == 0

    def process(self, msg: DetectionsMsg) -> list[Message]:
        self.pending.add(msg)
        self.pending_faces += len(msg.boxes)
        if self.pending_faces >= self.config.classify_max_batch:
            return self.flush()
        return []

    def wait_ms(self) -> float | None:
        return self.pending.wait_ms()

    def flush(self) -> list[Message]:
        pending, self.pending_faces = self.pending.take(), 0
        crops = [crop_geometry(m.boxes, m.landmarks, self.config.crop_scale, self.config.align,
                               self.config.crop_shift_y)
                 for m in pending]
        groups = {True: [], False: []}
        for m, c in zip(pending, crops, strict=True):
            groups[self.wants_cam(m)].append((m.image, c))
        results = {want: self._infer(self._prepare(items), want)
                   for want, items in groups.items()}
        offsets = {True: 0, False: 0}
        out = []
        for m, c in zip(pending, crops, strict=True):
            want, k = self.wants_cam(m), len(m.boxes)
            probs, cams = results[want]
            start = offsets[want]
            offsets[want] += k
            cam = cams[start:start + k] if cams is not None else None
            out.append(ClassifiedMsg(
                **m.detection_fields(), cam_layer=self.config.cam_layer,
                uncertain_threshold=float(self.threshold),
                probs=np.ascontiguousarray(probs[start:start + k], np.float32),
                cam=None if cam is None else np.ascontiguousarray(cam, np.float32), crops=c))
        return out

    def _prepare(self, items: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The network input ``[N,3,64,64]`` for ``(frame, crop rows)`` pairs: OpenCV
        crops, or (``crop_device``) each frame uploaded once and cropped there."""
        if self.crop_device is not None:
            import torch
            from gimefive.pipeline.torch_crops import preprocess_crops_torch

            with self.timed("crop"):
                items = [(image, c) for image, c in items if len(c)]
                frames = [torch.from_numpy(image).to(self.crop_device) for image, _ in items]
                batch = preprocess_crops_torch(frames, [c for _, c in items])
                return np.ascontiguousarray(batch.cpu().numpy(), np.float32)
        with self.timed("crop"):
            faces = [face for image, c in items for face in cut_faces(image, c)]
        if not faces:
            return np.zeros((0, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
        with self.timed("preprocess"):
            return preprocess_faces(faces, color="bgr")

    def _infer(self, batch: np.ndarray, cam: bool):
        if not len(batch):
            side = CAM_SIDE.get(self.config.cam_layer, 4)
            return np.zeros((0, 6), np.float32), (np.zeros((0, side, side), np.float32)
                                                  if cam else None)
        size = self.config.classify_max_batch
        workers = self.config.classify_workers
        if workers > 1 and len(batch) > 1:  # equal shares, one engine call per worker thread
            size = min(size, -(-len(batch) // workers))
        chunks = [batch[i:i + size] for i in range(0, len(batch), size)]
        with self.timed("engine_cam" if cam else "engine"):
            if self.pool is not None and len(chunks) > 1:
                results = list(self.pool.map(lambda b: self.backend(b, cam=cam), chunks))
            else:
                results = [self.backend(b, cam=cam) for b in chunks]
        self.count("faces", len(batch))
        self.count("engine_calls", len(results))
        if cam:
            self.count("cam_faces", len(batch))
        probs = np.concatenate([r[0] for r in results])
        return probs, (np.concatenate([r[1] for r in results]) if cam else None)

    def close(self) -> None:
        if getattr(self, "pool", None) is not None:
            self.pool.shutdown()
        if hasattr(self, "backend"):
            self.backend.close()
