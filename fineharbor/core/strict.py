"""Base of every configuration model: unknown keys are errors and values are immutable.

Kept apart from config.py so stage modules can declare their parameters and config.py can
mount them in the project file without an import cycle.
"""

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
