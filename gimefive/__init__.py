"""GiMeFive: facial emotion recognition with Grad-CAM explanations, at video rate."""

from gimefive.labels import EMOTIONS, NUM_CLASSES

__all__ = ["EMOTIONS", "NUM_CLASSES", "__version__"]
__version__ = "0.1.0"
