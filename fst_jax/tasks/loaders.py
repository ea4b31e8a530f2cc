"""Row sources for the real datasets: local JSONL / JSON, HF `datasets`, TFDS array_record.

Every task's real loader goes through `load_rows`, so all three sources behave the same and a
malformed row is reported with its file, row number and field. TFDS is used only through the
array_record `data_source` path, which works without TensorFlow installed; the builder
that converts a JSONL file into that format lives in `tfds_builder.py` (TFDS needs builders in
their own module file).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

from fst_jax.paths import read_jsonl


def write_jsonl(path: str, rows: Sequence[dict]) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, sort_keys=True) + "\n")


def load_hf(dataset_id: str, split: str = "train", data_files: Any = None, **kwargs) -> list[dict]:
    """Rows from HF `datasets` (Hub id, or a builder like "json" with `data_files`)."""
    import datasets

    try:
        ds = datasets.load_dataset(dataset_id, split=split, data_files=data_files, **kwargs)
    except Exception as e:
        raise RuntimeError(
            f"Could not load HF dataset {dataset_id!r} (split {split!r}): {type(e).__name__}: {e}. "
            "Offline? Download the files once and pass path=<local .jsonl/.json/.parquet>."
        ) from e
    return [dict(r) for r in ds]


def load_tfds(name: str, data_dir: str, split: str = "train") -> list[dict]:
    """Rows from a TFDS array_record dataset prepared by `tfds_builder.build_array_record`."""
    import tensorflow_datasets as tfds

    try:
        src = tfds.data_source(name, data_dir=data_dir, split=split)
    except Exception as e:
        raise RuntimeError(
            f"Could not open TFDS data_source {name!r} in {data_dir!r} (split {split!r}): {e}. "
            "Prepare it with fst_jax.tasks.tfds_builder.build_array_record(jsonl, data_dir)."
        ) from e
    rows = []
    for i in range(len(src)):
        rec = src[i]
        raw = rec["json"]
        rows.append(json.loads(raw.decode("utf-8") if isinstance(raw, bytes) else raw))
    return rows


def load_rows(
    path: str | None = None,
    hf_id: str | None = None,
    hf_split: str = "train",
    tfds_name: str | None = None,
    tfds_dir: str | None = None,
    tfds_split: str = "train",
) -> list[dict]:
    """Dispatch on the given source: a local file, an HF dataset id, or a TFDS data_source."""
    given = [x for x in (path, hf_id, tfds_name) if x]
    if len(given) != 1:
        raise ValueError(
            "Give exactly one data source: path=<local .jsonl/.json/.parquet>, hf_id=<datasets "
            f"id>, or tfds_name=<name> with tfds_dir=<data dir>; got {len(given)}."
        )
    if path:
        if path.endswith(".parquet"):
            return load_hf("parquet", split="train", data_files=path)
        return read_jsonl(path)
    if hf_id:
        return load_hf(hf_id, split=hf_split)
    if not tfds_dir:
        raise ValueError("tfds_name needs tfds_dir=<the data_dir it was prepared in>.")
    return load_tfds(tfds_name, tfds_dir, tfds_split)


def require(row: dict, fields: dict[str, type | tuple], where: str) -> None:
    """Check a row has each field with the expected type; the error names row and field."""
    for field, typ in fields.items():
        if field not in row or row[field] is None:
            raise ValueError(
                f"{where}: missing field {field!r} (row has {sorted(row)[:12]}); fix or remove "
                "this row in the source file."
            )
        if not isinstance(row[field], typ):
            raise ValueError(
                f"{where}: field {field!r} should be {typ}, got {type(row[field]).__name__} "
                f"({str(row[field])[:80]!r}); fix this row in the source file."
            )
