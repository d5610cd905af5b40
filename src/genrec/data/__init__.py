"""Data: raw-log readers, registered datasets and downloads, canonical Parquet form, splits, batches."""

from genrec.data.download import DATASETS, DatasetSpec, fetch
from genrec.data.loaders import FORMATS, read_interactions
from genrec.data.prepare import SequenceData, build_sequences, load_prepared, prepare

__all__ = ["DATASETS", "FORMATS", "DatasetSpec", "SequenceData", "build_sequences", "fetch", "load_prepared", "prepare", "read_interactions"]
