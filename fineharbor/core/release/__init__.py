"""The release: recipe, selection, shards in the `datasets` layout, WebDataset tars, card."""

from fineharbor.core.release.params import ReleaseRecipe

__all__ = ["ReleaseRecipe"]
