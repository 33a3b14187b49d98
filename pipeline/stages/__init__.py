"""The pipeline's stages, by name (``gimefive stage NAME``); imported only when used."""

from __future__ import annotations

import importlib

from gimefive.errors import GimefiveError

#: stage name -> "module:class"; the order is the data flow of ``gimefive annotate``
STAGES: dict[str, str] = {
    "source": "gimefive.pipeline.stages.source:SourceStage",
    "detect": "gimefive.pipeline.stages.detect:DetectStage",
    "classify": "gimefive.pipeline.stages.classify:ClassifyStage",
    "track": "gimefive.pipeline.stages.track:TrackStage",
    "annotate": "gimefive.pipeline.stages.annotate:AnnotateStage",
}


def stage_class(name: str):
    if name not in STAGES:
        raise GimefiveError(f"unknown stage {name!r}; expected one of {list(STAGES)}")
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)
