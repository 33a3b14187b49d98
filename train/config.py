"""The training recipe as a typed config: :class:`TrainConfig`, the schema of
``configs/train_*.yaml``.

Kept apart from the training loop so that reading, checking and documenting a recipe
(``gimefive train --help``, ``python -m gimefive.config --write-defaults``) does not
import torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gimefive.config import check_settings, load_config, setting, shipped_config

if TYPE_CHECKING:
    from gimefive.train.data import Augment

DEFAULT_CONFIG = shipped_config("train_default.yaml")
SCHEDULES = ("constant", "cosine", "onecycle")
PRECISIONS = ("auto", "bf16", "fp32")
AUGMENT_ON = ("auto", "loader", "device")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    """Recipe of one training run; the defaults are the paper's (Wang & Kawka, arXiv
    2402.15662): SGD, lr 1e-3, momentum 0.9, weight decay 1e-4, constant learning rate,
    no augmentation. ``configs/train_default.yaml`` is generated from it; the other
    ``configs/train_*.yaml`` recipes change some of its keys."""

    epochs: int = setting(30, min=1, help="Passes over the training faces (see "
                          "epoch_images); the schedule spans them all.")
    batch_size: int = setting(64, min=1, help="Faces per optimizer step.")
    lr: float = setting(1e-3, min=0, min_open=True, help="Peak learning rate (SGD). The "
                          "defaults of lr, momentum, weight_decay and schedule are the "
                          "paper's recipe (arXiv 2402.15662).")
    momentum: float = setting(0.9, min=0, max=1, max_open=True, help="SGD momentum.")
    nesterov: bool = setting(False, help="Nesterov momentum.")
    weight_decay: float = setting(1e-4, min=0, help="L2 weight decay.")
    schedule: str = setting("constant", choices=SCHEDULES, help="Learning rate over the "
                            "run: constant; cosine (to zero); onecycle (linear warm-up from "
                            "0.1x peak over warmup_epochs, then cosine to zero).")
    warmup_epochs: float = setting(0.0, min=0, help="Warm-up length of the onecycle "
                                   "schedule, in epochs (fractions allowed).")
    label_smoothing: float = setting(0.0, min=0, max=1, max_open=True,
                                     help="Cross-entropy label smoothing.")
    val_fraction: float = setting(0.1, min=0, max=1, max_open=True, help="Stratified "
                                  "share of the training CSV held out for validation.")
    early_stopping_patience: int = setting(8, min=0, help="Stop after this many epochs "
                                           "without validation gain; 0: never.")
    seed: int = setting(0, help="Random seed (split, shuffling, augmentation, init).")
    flip: bool = setting(False, help="Augment: random horizontal flips.")
    max_shift: float = setting(0.0, min=0, help="Augment: random shift up to this many "
                               "pixels.")
    max_rotate: float = setting(0.0, min=0, help="Augment: random rotation up to this many "
                                "degrees.")
    max_scale: float = setting(0.0, min=0, max=1, max_open=True, help="Augment: random "
                               "zoom up to this fraction.")
    max_train_images: int = setting(0, min=0, help="Train on a stratified subset of this "
                                    "many faces (quick runs); 0: all.")
    epoch_images: int = setting(0, min=0, help="Faces per epoch; 0: one pass. Else "
                                "consecutive chunks of an endless shuffled stream, so "
                                "every face is seen once before any repeats.")
    precision: str = setting("auto", choices=PRECISIONS, help="auto: bf16 where the "
                             "hardware runs it natively (AMX, CUDA), else fp32.")
    channels_last: bool = setting(True, help="Channels-last memory format (faster "
                                  "convolutions on CPU and GPU).")
    device: str = setting("auto", choices=DEVICES, help="auto: cuda when a CUDA GPU is "
                          "available, else cpu.")
    threads: int = setting(0, min=0, help="Torch CPU threads; 0: all cores.")
    num_workers: int = setting(0, min=0, help="DataLoader worker processes (0 or 1 on a "
                               "2-core machine).")
    augment_on: str = setting("auto", choices=AUGMENT_ON, help="loader: OpenCV per face; "
                              "device: batched on the training device "
                              "(train/device_augment.py); auto: device on CUDA, else loader.")
    eval_batch_size: int = setting(256, min=1, help="Faces per forward pass when "
                                   "validating.")
    checkpoint_minutes: float = setting(10.0, min=0, min_open=True, help="Also save the "
                                        "resume state this often inside an epoch.")
    cache_dir: str = setting("auto", help="Decoded-image cache: auto: $GIMEFIVE_CACHE or "
                             "~/.cache/gimefive; empty: no cache.")

    def __post_init__(self) -> None:
        check_settings(self, "train config")

    def augment(self) -> Augment:
        from gimefive.train.data import Augment

        return Augment(self.flip, self.max_shift, self.max_rotate, self.max_scale)


def load_train_config(path: str | Path | None = None, **overrides) -> TrainConfig:
    return load_config(TrainConfig, path if path is not None else DEFAULT_CONFIG, **overrides)
