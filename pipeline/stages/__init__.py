"""The pipeline's stages, by name (``gimefive stage NAME``); imported only when used."""

from __future__ import annotations

import importlib

from gimefive.errors import GimefiveError

#: stage name -> "module:class"; the order is the data flow of ``gimefive annotate``
STAGES: dict[str, str] = {
    "source": "gimefive.pipeline.stages.source:SourceStage",
    "detect": "gimefive.pipeline.stages.detect:DetectStage",
    "track": "gimefive.pipeline.stages.track:TrackStage",
    "classify": "gimefive.pipeline.stages.classify:ClassifyStage",
    "annotate": "gimefive.pipeline.stages.annotate:AnnotateStage",
}


#: the stage names in data-flow order (the one place that order is written)
ORDER: tuple[str, ...] = tuple(STAGES)
#: the stages between a run's sources and its annotate stage
MIDDLE: tuple[str, ...] = ORDER[1:-1]


def next_stage(name: str) -> str:
    """The stage that ``name`` sends to (the annotate stage sends to the outputs)."""
    return ORDER[ORDER.index(name) + 1]


def stage_class(name: str):
    if name not in STAGES:
        raise GimefiveError(f"unknown stage {name!r}; expected one of {list(STAGES)}")
    module, attr = STAGES[name].split(":")
    return getattr(importlib.import_module(module), attr)
