"""Concept balancing (Vo et al. 2024): hierarchical k-means and balanced top-down sampling."""

from fineharbor.core.concepts.kmeans import ConceptHierarchy, hierarchical_kmeans
from fineharbor.core.concepts.params import ConceptLevel, ConceptParams
from fineharbor.core.concepts.sampling import Flatness, balanced_sample, flatness

__all__ = [
    "ConceptHierarchy",
    "ConceptLevel",
    "ConceptParams",
    "Flatness",
    "balanced_sample",
    "flatness",
    "hierarchical_kmeans",
]
