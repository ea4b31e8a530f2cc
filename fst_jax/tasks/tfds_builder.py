"""TFDS builder turning JSONL files into an array_record dataset readable without TensorFlow.

TFDS looks up a builder's code directory, so it must live in its own module file.
Each record holds one JSON-encoded row in a `json` Text feature; `loaders.load_tfds` decodes it.
Usage: `build_array_record({"train": "a.jsonl", "validation": "b.jsonl"}, data_dir)`, then
`get_task(..., tfds_name="fst_jsonl", tfds_dir=data_dir)`.
"""

from __future__ import annotations

import json
from typing import ClassVar

import tensorflow_datasets as tfds

from fst_jax.paths import read_jsonl


class FstJsonl(tfds.core.GeneratorBasedBuilder):
    """Rows of local JSONL files, one JSON string per record."""

    VERSION = tfds.core.Version("1.0.0")
    SPLIT_FILES: ClassVar[dict[str, str]] = {}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self, features=tfds.features.FeaturesDict({"json": tfds.features.Text()})
        )

    def _split_generators(self, dl_manager):
        return {split: self._generate_examples(path) for split, path in self.SPLIT_FILES.items()}

    def _generate_examples(self, path):
        for i, row in enumerate(read_jsonl(path)):
            yield i, {"json": json.dumps(row, sort_keys=True)}


def build_array_record(split_files: dict[str, str], data_dir: str) -> str:
    """Prepare the `fst_jsonl` dataset in `data_dir` (array_record); returns its name."""
    FstJsonl.SPLIT_FILES = dict(split_files)
    builder = FstJsonl(data_dir=data_dir, file_format="array_record")
    builder.download_and_prepare()
    return builder.name
