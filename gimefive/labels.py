"""The six emotion classes, in the paper's label order (the CSVs use these indices)."""

EMOTIONS: tuple[str, ...] = ("happiness", "surprise", "sadness", "anger", "disgust", "fear")
NUM_CLASSES = len(EMOTIONS)

#: Label shown for a face whose top probability is below the abstain threshold.
UNCERTAIN = "uncertain"
#: The abstain threshold when the weights' metadata names none (trained weights carry the
#: one chosen on their validation split; read it with checkpoint.uncertain_threshold_of).
UNCERTAIN_THRESHOLD = 0.4


def label_name(index: int) -> str:
    """Class name for a label index, with an error that names the valid range."""
    if not 0 <= int(index) < NUM_CLASSES:
        raise ValueError(f"label {index} is outside 0..{NUM_CLASSES - 1}")
    return EMOTIONS[int(index)]
