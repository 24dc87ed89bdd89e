"""Base of every configuration model: unknown keys are errors and values are immutable.

Kept apart from config.py so stage modules can declare their parameters and config.py can
mount them in the project file without an import cycle.
"""

from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def moved_to_release(where: str, moved: Mapping[str, str]) -> Callable[[type, Any], Any]:
    """A ``mode="before"`` model validator refusing keys whose threshold moved to the release
    recipe, naming the field that replaced each: a score removes samples in one place only, and
    an old project file must not load as if its filter still applied."""

    def refuse(cls: type, data: Any) -> Any:
        if isinstance(data, Mapping):
            old = [key for key in moved if key in data]
            if old:
                raise ValueError(
                    "; ".join(
                        f"{where}.{key} was removed: scores are thresholded by the release "
                        f"recipe only, set {moved[key]} instead (docs/release.md)"
                        for key in old
                    )
                )
        return data

    return refuse
