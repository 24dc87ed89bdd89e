"""`datasets.load_dataset` by name or builder, streamed; images kept undecoded."""

from __future__ import annotations

from collections.abc import Iterator

from fineharbor.core.config import HfDatasetSource, IngestParams, Shard
from fineharbor.core.readers.common import BatchBuilder, Progress, RawBatch, SourceLocationError
from fineharbor.core.readers.fields import get_path


def _image_columns(features) -> list[str]:
    import datasets

    columns = []
    for name, feature in (features or {}).items():
        inner = getattr(feature, "feature", None)
        if isinstance(feature, datasets.Image) or isinstance(inner, datasets.Image):
            columns.append(name)
    return columns


def read_hf_dataset(
    source: HfDatasetSource,
    params: IngestParams,
    progress: Progress | None = None,
    shard: Shard | None = None,
) -> Iterator[RawBatch]:
    import datasets

    try:
        dataset = datasets.load_dataset(
            source.location,
            source.subset,
            data_files=source.data_files,
            split=source.split,
            streaming=True,
        )
    except (FileNotFoundError, ValueError, datasets.exceptions.DatasetNotFoundError) as error:
        raise SourceLocationError(
            f"datasets.load_dataset({source.location!r}, {source.subset!r}, "
            f"split={source.split!r}) failed: {error}"
        ) from error
    if shard is not None:
        if shard.count > dataset.num_shards:
            raise SourceLocationError(
                f"{source.location!r} streams from {dataset.num_shards} files: it cannot be split "
                f"into {shard.count} shards (set `shards` to at most {dataset.num_shards})"
            )
        dataset = dataset.shard(num_shards=shard.count, index=shard.index)
    if dataset.features is None:
        dataset = dataset._resolve_features()
    columns = _image_columns(dataset.features)
    for column in columns:
        feature = dataset.features[column]
        undecoded = datasets.Image(decode=False)
        dataset = dataset.cast_column(
            column, undecoded if isinstance(feature, datasets.Image) else datasets.List(undecoded)
        )
    builder = BatchBuilder(source.name, source.batch_size, progress=progress)
    for index, row in enumerate(dataset):
        key = get_path(row, source.mapping.origin_key) if source.mapping.origin_key else None
        origin_key = str(key) if key not in (None, "") else f"{source.split}:{index}"
        images = []
        for column in columns:
            value = row.get(column)
            for item in value if isinstance(value, list) else [value]:
                if item is not None and item.get("bytes") is not None:
                    images.append({"bytes": item["bytes"], "path": item.get("path")})
        record = {k: v for k, v in row.items() if k not in columns}
        builder.keep(origin_key, record, images, origin_uri=f"hf://{source.location}")
        yield from builder.drain_if_full()
    yield from builder.drain()
