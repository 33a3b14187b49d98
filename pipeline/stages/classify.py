"""Classify stage: per-track classification through a GiMeFive backend, in dynamic batches.

The tracker runs before this stage, so each face arrives with its track id, and the
schedule (:mod:`gimefive.pipeline.schedule`) decides which faces are measured on each
frame and which carry their track's last result; Grad-CAM is computed on sampled
measurements only (``cam_every`` per track). Faces to measure, from consecutive frames,
are gathered until ``classify_max_batch`` are waiting or the oldest has waited
``classify_max_wait_ms``; then one engine call (two when only some want Grad-CAM)
classifies them all. Crops are squares framed as ``align`` says
(:func:`gimefive.pipeline.crops.crop_geometry`) and go through
:func:`gimefive.preprocess.preprocess_faces`, the same preprocessing the model was
trained with (with ``device`` on CUDA,
:func:`gimefive.pipeline.torch_crops.preprocess_crops_torch` does the same on the GPU,
each frame uploaded once). ``classify_workers`` engine calls run at once in threads: the
engines release the GIL, so a second call uses a core the first would leave idle.
"""

from __future__ import annotations

import warnings

import numpy as np
from gimefive.pipeline import degrade, devices
from gimefive.pipeline.crops import crop_geometry, cut_faces
from gimefive.pipeline.messages import EndOfStream, Message, TrackedMsg, TrackIdsMsg
from gimefive.pipeline.schedule import FacePlan, LazyThumbnails, ScheduleSettings, StreamSchedule
from gimefive.pipeline.stage import BatchWindow, Stage

from gimefive.preprocess import INPUT_SIZE, preprocess_faces

CAM_SIDE = {"conv5": 4, "conv4": 8}  # Grad-CAM resolution at 64x64 input


class ClassifyStage(Stage):
    name = "classify"
    accepts = (TrackIdsMsg,)

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
        if c.cam and c.cam_every > 1:  # probs-only calls will come: load that graph now
            self.backend(np.zeros((2, 3, 64, 64), np.float32), cam=False)
        from gimefive.checkpoint import uncertain_threshold_of

        self.threshold = (c.uncertain_threshold if c.uncertain_threshold is not None
                          else uncertain_threshold_of(c.weights))
        self.pool = None
        if c.classify_workers > 1:  # engines release the GIL: threads run calls in parallel
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(c.classify_workers, thread_name_prefix="engine")
        self.pending = BatchWindow(c.classify_max_wait_ms)
        self.pending_faces = 0
        self.schedules: dict[str, StreamSchedule] = {}

    def info(self) -> dict:
        return {"backend": self.backend_name, "uncertain_threshold": self.threshold,
                "crops": "opencv cpu" if self.crop_device is None
                else f"torch {self.crop_device}"}

    def _schedule(self, msg: TrackIdsMsg) -> StreamSchedule:
        schedule = self.schedules.get(msg.stream)
        if schedule is None:
            from gimefive.pipeline.stages.track import relink_frames

            c = self.config
            schedule = self.schedules[msg.stream] = StreamSchedule(ScheduleSettings(
                every=c.classify_every, move=c.classify_move, look=c.classify_look,
                margin=c.classify_margin,
                cam=c.cam, cam_every=c.cam_every, uncertain_threshold=float(self.threshold),
                smoothing=c.smoothing, alpha=c.smoothing_alpha, window=c.smoothing_window,
                hysteresis=c.label_hysteresis,
                keep_frames=max(c.track_max_age, relink_frames(c, msg)) + 1))
        return schedule

    def process(self, msg: TrackIdsMsg) -> list[Message]:
        schedule = self._schedule(msg)
        _, scale, cam_scale = degrade.multipliers(msg.extra)  # a live run behind: >1
        out = self.flush() if schedule.needs_results(msg.index, msg.track_ids, scale) else []
        looks = LazyThumbnails(msg.image, msg.boxes) if self.config.classify_look > 0 else None
        plan = schedule.plan(msg.index, msg.track_ids, msg.boxes, scale, looks, cam_scale)
        self.pending.add((msg, plan))
        self.pending_faces += int(plan.measure.sum())
        # nothing to measure in the window: no reason to hold its frames back
        if self.pending_faces == 0 or self.pending_faces >= self.config.classify_max_batch:
            out += self.flush()
        return out

    def wait_ms(self) -> float | None:
        return self.pending.wait_ms()

    def flush(self) -> list[Message]:
        pending, self.pending_faces = self.pending.take(), 0
        c = self.config
        crops = [crop_geometry(m.boxes, m.landmarks, c.crop_scale, c.align, c.crop_shift_y)
                 for m, _ in pending]
        groups = {True: [], False: []}  # with Grad-CAM, without
        for (m, plan), rows in zip(pending, crops, strict=True):
            for want in (True, False):
                chosen = plan.measure & (plan.cam == want)
                if chosen.any():
                    groups[want].append((m.image, rows[chosen]))
        results = {want: self._infer(self._prepare(items), want)
                   for want, items in groups.items()}
        offsets = {True: 0, False: 0}
        out = []
        for (m, plan), rows in zip(pending, crops, strict=True):
            probs, cams = self._rows_of(plan, results, offsets)
            faces = self.schedules[m.stream].record(m.index, m.track_ids, plan, probs, cams)
            self.count("carried", int((~plan.measure).sum()))
            out.append(TrackedMsg(
                **m.track_fields(), cam_layer=c.cam_layer,
                uncertain_threshold=float(self.threshold), probs=faces.probs, cam=faces.cam,
                crops=rows, smoothed=faces.smoothed, labels=faces.labels,
                uncertain=faces.uncertain, measured=plan.measure.copy(),
                result_age=faces.result_age, cam_from=faces.cam_from))
        return out

    @staticmethod
    def _rows_of(plan: FacePlan, results: dict, offsets: dict
                 ) -> tuple[np.ndarray, np.ndarray | None]:
        """One frame's measured rows, in face order: probabilities of every measured face,
        Grad-CAM maps of those measured with it."""
        probs = np.zeros((int(plan.measure.sum()), 6), np.float32)
        cams, row = [], 0
        for i in np.flatnonzero(plan.measure):
            want = bool(plan.cam[i])
            p, maps = results[want]
            probs[row] = p[offsets[want]]
            if want:
                cams.append(maps[offsets[want]])
            offsets[want] += 1
            row += 1
        return probs, (np.stack(cams) if cams else None)

    def end_stream(self, eos: EndOfStream):
        yield from self.flush()
        self.schedules.pop(eos.stream, None)
        yield eos

    def _prepare(self, items: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
        """The network input ``[N,3,64,64]`` for ``(frame, crop rows)`` pairs: OpenCV
        crops, or (``crop_device``) each frame uploaded once and cropped there."""
        if self.crop_device is not None:
            import torch
            from gimefive.pipeline.torch_crops import preprocess_crops_torch

            with self.timed("crop"):
                items = [(image, c) for image, c in items if len(c)]
                with warnings.catch_warnings():  # a frame in shared memory is read-only;
                    warnings.filterwarnings("ignore", "The given NumPy array is not writable")
                    frames = [torch.from_numpy(image).to(self.crop_device)  # copied at once
                              for image, _ in items]
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
