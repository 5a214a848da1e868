"""When the training stage starts on its own."""

import dagster as dg
from pydantic import Field

DEFAULT_MIN_NEW_TRAIN_CLIPS = 20


class TrainingTriggerResource(dg.ConfigurableResource):
    """The training sensor's threshold: labelled train clips landed since the last checkpoint."""

    min_new_train_clips: int = Field(
        default=DEFAULT_MIN_NEW_TRAIN_CLIPS,
        description="Start a training run once this many new labelled train clips have landed.",
    )
