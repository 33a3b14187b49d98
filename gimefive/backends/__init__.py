"""Classifier engines behind one interface, chosen by name (``--backend onnxruntime``).

Every backend maps a preprocessed batch ``float32 [N,3,64,64]`` (see
:func:`gimefive.preprocess.preprocess_faces`) to ``probs [N,6]`` and, when asked, the
Grad-CAM map ``cam [N,h,w]`` of the predicted class, scaled to 0..1 per face.
"""

from gimefive.backends.base import (
    BACKENDS,
    Backend,
    available_backends,
    create_backend,
    register_backend,
)

__all__ = ["BACKENDS", "Backend", "available_backends", "create_backend", "register_backend"]
