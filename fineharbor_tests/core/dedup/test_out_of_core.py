"""The vectorised pieces the global duplicate stage streams through: Arrow list columns to
NumPy matrices, exact-key pairs, connected components and the streamed covariance."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from fineharbor.core.dedup.clusters import _group_pairs, gather_vectors, list_matrix
from fineharbor.core.dedup.diversity import CovarianceAccumulator, diversity_score
from fineharbor.core.dedup.union_find import UnionFind, components


def test_list_matrix_reads_every_chunk_and_skips_nulls():
    first = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float16()))
    second = pa.array([[5.0, 6.0]], pa.list_(pa.float16())).slice(0, 1)
    matrix = list_matrix(pa.chunked_array([first.slice(1), second]), np.float32)
    assert matrix.dtype == np.float32 and matrix.flags.c_contiguous
    assert matrix.tolist() == [[3.0, 4.0], [5.0, 6.0]]
    assert list_matrix(pa.chunked_array([first]), np.float16).dtype == np.float16


def test_list_matrix_refuses_ragged_vectors():
    with pytest.raises(ValueError, match="different lengths"):
        list_matrix(pa.array([[1.0, 2.0], [3.0]], pa.list_(pa.float32())))


def test_group_pairs_of_an_arrow_column_match_the_python_keys():
    keys = ["b", None, "a", "b", "c", "a", "b", None]
    i, j, sim = _group_pairs(pa.chunked_array([pa.array(keys[:3]), pa.array(keys[3:])]))
    assert list(zip(i.tolist(), j.tolist(), strict=True)) == [(0, 3), (0, 6), (2, 5)]
    assert sim.tolist() == [1.0, 1.0, 1.0]
    same = _group_pairs(keys)
    assert all(np.array_equal(x, y) for x, y in zip(same, (i, j, sim), strict=True))


def test_components_match_union_find():
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, 300, 200), rng.integers(0, 300, 200)
    union = UnionFind(300)
    union.union_pairs(zip(a.tolist(), b.tolist(), strict=True))
    found = components(300, a, b)
    assert [c.tolist() for c in found] == union.components()
    assert [c.tolist() for c in components(300, a, b, min_size=1)] == union.components(1)
    assert components(0, np.zeros(0), np.zeros(0)) == []


def test_streamed_covariance_is_bit_for_bit_the_whole_arrays():
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((1000, 16)).astype(np.float16)
    whole = CovarianceAccumulator(chunk=128)
    whole.update(vectors)
    streamed = CovarianceAccumulator(chunk=128)
    for start in range(0, 1000, 77):
        streamed.update(vectors[start : start + 77])
    assert streamed.n == whole.n == 1000
    assert np.array_equal(streamed.eigenvalues(), whole.eigenvalues())
    assert diversity_score(vectors.astype(np.float32)).as_dict() == (
        diversity_score(vectors).as_dict()
    )


def test_gather_vectors_follows_the_requested_rows_across_chunks():
    first = pa.array([[1.0, 2.0], None, [3.0, 4.0]], pa.list_(pa.float16()))
    second = pa.array([[9.0, 9.0], [5.0, 6.0]], pa.list_(pa.float16())).slice(1)
    column = pa.chunked_array([first, second])
    matrix = gather_vectors(column, np.array([3, 0, 2]), np.float32, block=1)
    assert matrix.dtype == np.float32
    assert matrix.tolist() == [[5.0, 6.0], [1.0, 2.0], [3.0, 4.0]]
