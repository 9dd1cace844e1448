"""The shard format: Parquet rows of encoded images with their label, source path and optional foreground mask.

Columns: ``image: binary`` (JPEG/PNG bytes), ``label: int64`` (null = unlabeled: pretraining data), ``path: string``
and optionally ``mask: binary`` (PNG, foreground, same size as the image). Everything that reads or writes shards
goes through this module.
"""

from __future__ import annotations

import pyarrow as pa

from mimlab.errors import UserError

REQUIRED_COLUMNS: dict[str, pa.DataType] = {"image": pa.binary(), "label": pa.int64(), "path": pa.string()}
OPTIONAL_COLUMNS: dict[str, pa.DataType] = {"mask": pa.binary()}
SHARD_SUFFIX = ".parquet"
CLASSES_FILE = "classes.json"


def shard_schema(with_mask: bool) -> pa.Schema:
    """The Arrow schema of a shard, with or without the ``mask`` column."""
    fields = [pa.field(name, dtype) for name, dtype in REQUIRED_COLUMNS.items()]
    if with_mask:
        fields.append(pa.field("mask", OPTIONAL_COLUMNS["mask"]))
    return pa.schema(fields)


def check_schema(schema: pa.Schema, where: str) -> bool:
    """Check a shard's schema; return whether it carries masks.

    Raises:
        UserError: naming the file and the missing or mistyped column.
    """
    for name, dtype in REQUIRED_COLUMNS.items():
        if name not in schema.names:
            raise UserError(f"shard '{where}' has no '{name}' column; expected columns image, label, path [, mask]")
        actual = schema.field(name).type
        if not _compatible(actual, dtype):
            raise UserError(f"shard '{where}': column '{name}' is {actual}, expected {dtype}")
    return "mask" in schema.names


def _compatible(actual: pa.DataType, expected: pa.DataType) -> bool:
    if actual == expected:
        return True
    if pa.types.is_binary(expected):
        return pa.types.is_binary(actual) or pa.types.is_large_binary(actual)
    if pa.types.is_string(expected):
        return pa.types.is_string(actual) or pa.types.is_large_string(actual)
    if pa.types.is_integer(expected):  # an all-null label column written by another tool has type null
        return pa.types.is_integer(actual) or pa.types.is_null(actual)
    return False


def records_table(images: list[bytes], labels: list[int | None], paths: list[str],
                  masks: list[bytes] | None = None) -> pa.Table:
    """Build one shard's table from parallel lists (``masks`` ``None`` ⇒ no mask column; a ``None`` label is
    stored as null)."""
    columns = [pa.array(images, pa.binary()), pa.array(labels, pa.int64()), pa.array(paths, pa.string())]
    if masks is not None:
        columns.append(pa.array(masks, pa.binary()))
    return pa.Table.from_arrays(columns, schema=shard_schema(masks is not None))
