"""The training loop: typed config, seeded, resumable, with best-checkpoint saving.

A run directory holds everything one run produces:

- ``best.safetensors``: the best weights on the validation split, with metadata (model
  hyperparameters, class names, the recipe, sha256 of the data CSV, epochs,
  accuracies, the chosen ``uncertain_threshold``);
- ``state.pt``: resume state (model, optimizer, scheduler, epoch, step, RNG, history),
  written every epoch and every ``checkpoint_minutes`` inside an epoch;
- ``config.yaml``: the resolved config; ``metrics.csv`` / ``metrics.json``: per epoch.
"""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from gimefive.train.config import TrainConfig, load_train_config
from gimefive.train.data import (
    FaceDataset,
    FaceSplit,
    collate_faces,
    load_split,
    stratified_split,
)
from gimefive.train.device_augment import augment_batch
from gimefive.train.evaluate import (
    autocast_context,
    choose_uncertain_threshold,
    compute_metrics,
    predict_probs,
)

from gimefive.checkpoint import save_weights
from gimefive.config import save_config, to_dict
from gimefive.errors import GimefiveError
from gimefive.labels import EMOTIONS
from gimefive.model import GiMeFive, ModelConfig

STATE_FILE, BEST_FILE, CONFIG_FILE = "state.pt", "best.safetensors", "config.yaml"
SYNC_EVERY = 50  # steps between reading the loss back from the device (each read syncs)


# ----------------------------------------------------------------------------- set-up


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise GimefiveError("device 'cuda' requested but no CUDA GPU is available")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return torch.device(name)


def bf16_is_fast(device: torch.device) -> bool:
    """bf16 pays off on CUDA and on CPUs with native bf16 (AMX / AVX512-BF16) only.

    On other CPUs oneDNN emulates it and a training step is many times slower than fp32.
    """
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(name: str, device: torch.device) -> str:
    if name == "auto":
        return "bf16" if bf16_is_fast(device) else "fp32"
    return name


def seed_everything(seed: int) -> None:
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def lr_factor(config: TrainConfig, step: int, total_steps: int, steps_per_epoch: int) -> float:
    """Multiplier of the peak LR at global ``step`` (schedules are per step)."""
    if config.schedule == "constant":
        return 1.0
    warmup = int(config.warmup_epochs * steps_per_epoch) if config.schedule == "onecycle" else 0
    if step < warmup:
        return 0.1 + 0.9 * step / max(warmup, 1)
    progress = (step - warmup) / max(total_steps - warmup, 1)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Epoch ``epoch``'s indices, fixed by the seed, from ``start``: resumable mid-epoch.

    The data is an endless stream of shuffled passes (pass k shuffled by (seed, k)); epoch
    e is its chunk [e * per_epoch, (e + 1) * per_epoch).
    """

    def __init__(self, n: int, seed: int, epoch: int, start: int = 0,
                 per_epoch: int = 0) -> None:
        per_epoch = per_epoch or n
        positions = np.arange(epoch * per_epoch + start, (epoch + 1) * per_epoch)
        passes = positions // n
        self.order = np.empty(len(positions), dtype=np.int64)
        for k in np.unique(passes):
            here = passes == k
            self.order[here] = np.random.default_rng((seed, int(k), 7)).permutation(n)[
                positions[here] % n]

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[int]:
        return iter(self.order.tolist())


# ----------------------------------------------------------------------------- the run


@dataclass
class TrainResult:
    out_dir: Path
    best_weights: Path
    best_epoch: int
    best_val_accuracy: float
    epochs_run: int
    stopped_early: bool
    history: list[dict]


class TrainingInterrupted(GimefiveError):
    """Ctrl-C or SIGTERM: the state was saved between two steps; ``--resume`` continues."""

    exit_code = 130


class Trainer:
    """One run: data, model and optimizer, the epoch loop, checkpoints and metrics."""

    def __init__(self, config: TrainConfig, data_dir: str | Path, train_csv: str | Path,
                 out_dir: str | Path, *, strict: bool = False, progress: bool = True,
                 log: Callable[[str], None] | None = None) -> None:
        self.config, self.out_dir = config, Path(out_dir)
        self.progress = progress
        self.log = log or (lambda msg: print(msg, file=sys.stderr, flush=True))
        if config.threads:
            torch.set_num_threads(config.threads)
        self.device = resolve_device(config.device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed 64x64 shapes: pick the fastest
        self.precision = resolve_precision(config.precision, self.device)
        if self.precision == "bf16" and not bf16_is_fast(self.device):
            self.log("warning: this device has no native bf16; bf16 training will be slow")
        seed_everything(config.seed)

        split = load_split(data_dir, train_csv, strict=strict, cache_dir=config.cache_dir or None,
                           progress=progress)
        if split.skipped:
            self.log(f"skipped {len(split.skipped)} missing or unreadable image(s), "
                     f"e.g. {Path(data_dir) / split.skipped[0]}")
        self.data_dir, self.full = Path(data_dir), split
        self.train_split, self.val_split = self._carve(split)
        self.log(f"data: {len(self.train_split)} train / {len(self.val_split)} validation faces "
                 f"from {split.csv_path} ({self.device}, {self.precision}"
                 f"{', channels_last' if config.channels_last else ''})")

        self.model = GiMeFive(ModelConfig()).to(self.device)
        if config.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=config.lr,
                                         momentum=config.momentum, nesterov=config.nesterov,
                                         weight_decay=config.weight_decay)
        self.epoch_images = config.epoch_images or len(self.train_split)
        self.steps_per_epoch = math.ceil(self.epoch_images / config.batch_size)
        total = self.steps_per_epoch * config.epochs
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(config, s, total, self.steps_per_epoch))
        self.dataset = FaceDataset(self.train_split, config.augment(), config.seed)
        self.augment_on = config.augment_on
        if self.augment_on == "auto":
            self.augment_on = "device" if self.device.type == "cuda" else "loader"
        if self.augment_on == "device":  # the whole uint8 split on the device (~4 KB a face)
            self.device_images = torch.from_numpy(self.train_split.images).to(self.device)
            self.device_labels = torch.from_numpy(self.train_split.labels).to(self.device)
        self.epoch, self.step_in_epoch = 0, 0
        self.running = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
        self.best_acc, self.best_epoch, self.history = -1.0, 0, []
        self._stop_signal: str | None = None

    def _on_signal(self, signum, frame) -> None:
        self._stop_signal = signal.Signals(signum).name

    def _carve(self, split: FaceSplit) -> tuple[FaceSplit, FaceSplit]:
        cfg = self.config
        train_idx, val_idx = stratified_split(split.labels, cfg.val_fraction, cfg.seed)
        if cfg.max_train_images and cfg.max_train_images < len(train_idx):
            keep_frac = cfg.max_train_images / len(train_idx)
            _, picked = stratified_split(split.labels[train_idx], keep_frac, cfg.seed + 1)
            train_idx = train_idx[picked]
        if len(train_idx) == 0:
            raise GimefiveError(f"{split.csv_path}: no training faces left after the validation "
                                f"split (val_fraction {cfg.val_fraction})")
        return split.subset(train_idx), split.subset(val_idx)

    # ------------------------------------------------------------------ state on disk

    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(), "epoch": self.epoch,
                "step_in_epoch": self.step_in_epoch, "running": dict(self.running),
                "best_acc": self.best_acc, "best_epoch": self.best_epoch,
                "history": json.dumps(self.history), "torch_rng": torch.get_rng_state(),
                "config": json.dumps(to_dict(self.config)),
                "train_csv_sha256": self.full.csv_sha256}

    def save_state(self) -> None:
        path = self.out_dir / STATE_FILE
        tmp = path.with_name(path.name + ".tmp")
        torch.save(self.state_dict(), tmp)
        os.replace(tmp, path)

    def load_state(self) -> None:
        path = self.out_dir / STATE_FILE
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as exc:  # torch raises many types for a damaged file
            raise GimefiveError(f"{path}: cannot read resume state ({exc.__class__.__name__})"
                                ) from None
        if state.get("train_csv_sha256") != self.full.csv_sha256:
            raise GimefiveError(f"{path}: this run was trained on a different CSV "
                                f"than {self.full.csv_path}; resume with the same data")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.epoch, self.step_in_epoch = state["epoch"], state["step_in_epoch"]
        self.running = dict(state["running"])
        self.best_acc, self.best_epoch = state["best_acc"], state["best_epoch"]
        self.history = json.loads(state["history"])
        torch.set_rng_state(state["torch_rng"].cpu())
        self.log(f"resumed {self.out_dir} at epoch {self.epoch + 1}, step {self.step_in_epoch}"
                 f" (best val accuracy so far {max(self.best_acc, 0) * 100:.2f}%)")

    def _write_metrics(self) -> None:
        (self.out_dir / "metrics.json").write_text(json.dumps(self.history, indent=2) + "\n")
        with open(self.out_dir / "metrics.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=list(self.history[0]))
            writer.writeheader()
            writer.writerows(self.history)

    # ------------------------------------------------------------------ epochs

    def _batches(self, sampler: EpochSampler) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Normalised (augmented) input and labels, on the training device."""
        cfg = self.config
        if self.augment_on == "device":
            generator = torch.Generator(device=self.device)
            generator.manual_seed(cfg.seed * 1_000_003 + self.epoch)
            order = torch.from_numpy(sampler.order).to(self.device)
            augment = cfg.augment()
            for start in range(0, len(order), cfg.batch_size):
                idx = order[start:start + cfg.batch_size]
                yield augment_batch(self.device_images[idx], augment, generator), \
                    self.device_labels[idx]
            return
        self.dataset.set_epoch(self.epoch)
        loader = torch.utils.data.DataLoader(self.dataset, batch_size=cfg.batch_size,
                                             sampler=sampler, num_workers=cfg.num_workers,
                                             collate_fn=collate_faces,
                                             # own generator: creating the iterator must
                                             # not draw from the global (dropout) RNG,
                                             # or a resumed run would diverge
                                             generator=torch.Generator().manual_seed(cfg.seed))
        for x, y in loader:
            yield x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)

    def _flush_running(self, sums: torch.Tensor) -> None:
        """Move the on-device loss / correct sums into ``running`` (one sync, not per step)."""
        loss_sum, correct = sums.tolist()
        if not math.isfinite(loss_sum):
            raise GimefiveError(f"training diverged at epoch {self.epoch + 1}, step "
                                f"{self.step_in_epoch} (loss {loss_sum}); lower the lr")
        self.running["loss"] += loss_sum
        self.running["correct"] += int(correct)
        sums.zero_()

    def _train_epoch(self) -> None:
        from tqdm import tqdm

        cfg = self.config
        sampler = EpochSampler(len(self.train_split), cfg.seed, self.epoch,
                               self.step_in_epoch * cfg.batch_size, self.epoch_images)
        self.model.train()
        last_save = time.monotonic()
        tty = sys.stderr.isatty()
        bar = tqdm(desc=f"epoch {self.epoch + 1}/{cfg.epochs}", unit="batch",
                   total=self.steps_per_epoch, initial=self.step_in_epoch,
                   disable=not self.progress, mininterval=1.0 if tty else 30.0,
                   dynamic_ncols=True)
        run = self.running
        sums = torch.zeros(2, dtype=torch.float64, device=self.device)  # loss, correct
        started = time.perf_counter()
        for x, y in self._batches(sampler):
            if cfg.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast_context(self.device, self.precision):
                logits = self.model(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.scheduler.step()
            self.step_in_epoch += 1
            sums += torch.stack([loss.detach().double() * len(y),
                                 (logits.argmax(1) == y).sum().double()])
            run["seen"] += len(y)
            bar.update(1)
            stopping = self._stop_signal is not None
            saving = time.monotonic() - last_save > cfg.checkpoint_minutes * 60
            if stopping or saving or self.step_in_epoch % SYNC_EVERY == 0:
                self._flush_running(sums)
                run["seconds"] += time.perf_counter() - started
                started = time.perf_counter()
                bar.set_postfix(loss=f"{run['loss'] / run['seen']:.3f}",
                                acc=f"{run['correct'] / run['seen'] * 100:.1f}%",
                                lr=f"{self.scheduler.get_last_lr()[0]:.2e}", refresh=False)
            if stopping:
                bar.close()
                self.save_state()
                raise TrainingInterrupted(
                    f"interrupted ({self._stop_signal}) at epoch {self.epoch + 1}, step "
                    f"{self.step_in_epoch}; state saved in {self.out_dir}, rerun with --resume")
            if saving:
                self.save_state()
                last_save = time.monotonic()
                started = time.perf_counter()
        self._flush_running(sums)
        run["seconds"] += time.perf_counter() - started
        bar.close()

    def _validate(self) -> tuple[dict, np.ndarray]:
        probs = predict_probs(self.model, self.val_split.images,
                              batch_size=self.config.eval_batch_size, precision="fp32",
                              device=self.device, channels_last=self.config.channels_last,
                              progress=self.progress)
        loss = float(F.nll_loss(torch.log(torch.from_numpy(probs).clamp_min(1e-12)),
                                torch.from_numpy(self.val_split.labels)))
        m = compute_metrics(self.val_split.labels, probs)
        return {"val_loss": loss, "val_accuracy": m.accuracy,
                "val_macro_recall": m.macro_recall}, probs

    def _save_best(self, row: dict, probs: np.ndarray) -> None:
        threshold = choose_uncertain_threshold(probs, self.val_split.labels)
        uncertain = int(np.sum(probs.max(axis=1) < threshold))
        meta = {
            "recipe": to_dict(self.config),
            "data": {"train_csv": self.full.csv_path.name,
                     "train_csv_sha256": self.full.csv_sha256,
                     "train_faces": len(self.train_split), "val_faces": len(self.val_split),
                     "skipped": len(self.full.skipped)},
            "epochs": self.epoch + 1, "best_epoch": self.epoch + 1,
            "val_accuracy": row["val_accuracy"], "val_macro_recall": row["val_macro_recall"],
            "uncertain_threshold": threshold, "val_uncertain_count": uncertain,
            "precision": self.precision, "torch": torch.__version__,
        }
        save_weights(self.out_dir / BEST_FILE, self.model, meta)

    def run(self, resume: bool = False, stop_after: int | None = None) -> TrainResult:
        """Train to ``config.epochs`` (or only ``stop_after`` more epochs, as if interrupted)."""
        cfg = self.config
        self.out_dir.mkdir(parents=True, exist_ok=True)
        state_exists = (self.out_dir / STATE_FILE).is_file()
        if resume and state_exists:
            self.load_state()
        elif resume:
            self.log(f"no resume state in {self.out_dir}; starting a new run")
        elif state_exists or (self.out_dir / BEST_FILE).is_file():
            raise GimefiveError(f"{self.out_dir} already holds a training run; pass --resume to "
                                f"continue it or choose another --out")
        save_config(cfg, self.out_dir / CONFIG_FILE)
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            handlers = {s: signal.signal(s, self._on_signal)
                        for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            return self._epochs(stop_after)
        finally:
            for s, h in handlers.items():
                signal.signal(s, h)

    def _epochs(self, stop_after: int | None) -> TrainResult:
        cfg = self.config
        stopped_early = False
        last = cfg.epochs if stop_after is None else min(cfg.epochs, self.epoch + stop_after)
        while self.epoch < last:
            self._train_epoch()
            val, probs = self._validate()
            run = self.running
            row = {"epoch": self.epoch + 1, "train_loss": run["loss"] / max(run["seen"], 1),
                   "train_accuracy": run["correct"] / max(run["seen"], 1), **val,
                   "lr": self.scheduler.get_last_lr()[0], "train_seconds": run["seconds"],
                   "images_per_second": run["seen"] / max(run["seconds"], 1e-9)}
            self.history.append(row)
            improved = row["val_accuracy"] > self.best_acc
            if improved:
                self.best_acc, self.best_epoch = row["val_accuracy"], self.epoch + 1
                self._save_best(row, probs)
            self.log(f"epoch {self.epoch + 1}/{cfg.epochs}: train loss {row['train_loss']:.4f} "
                     f"acc {row['train_accuracy'] * 100:.2f}% | val acc "
                     f"{row['val_accuracy'] * 100:.2f}% macro recall "
                     f"{row['val_macro_recall'] * 100:.2f}%{'  (best, saved)' if improved else ''}"
                     f" | {row['images_per_second']:.1f} img/s")
            self.epoch += 1
            self.step_in_epoch = 0
            self.running = {"loss": 0.0, "correct": 0, "seen": 0, "seconds": 0.0}
            self._write_metrics()
            self.save_state()
            patience = cfg.early_stopping_patience
            if patience and self.epoch - self.best_epoch >= patience and self.epoch < cfg.epochs:
                self.log(f"early stopping: no validation improvement for {patience} epochs")
                stopped_early = True
                break
        return TrainResult(self.out_dir, self.out_dir / BEST_FILE, self.best_epoch,
                           self.best_acc, self.epoch, stopped_early, self.history)


def train(config: TrainConfig, data_dir: str | Path, train_csv: str | Path,
          out_dir: str | Path, *, resume: bool = False, strict: bool = False,
          progress: bool = True) -> TrainResult:
    """Train GiMeFive; see :class:`Trainer` for what lands in ``out_dir``."""
    return Trainer(config, data_dir, train_csv, out_dir, strict=strict,
                   progress=progress).run(resume=resume)


__all__ = ["TrainConfig", "TrainResult", "Trainer", "train", "load_train_config", "EMOTIONS"]
