"""The loaders and registered checksums on the real files in ../shared/data (skipped when absent)."""

import pytest

from conftest import shared_file
from genrec.config import DataConfig
from genrec.data.loaders import read_interactions
from genrec.data.prepare import load_prepared, prepare


@pytest.mark.parametrize(
    "dataset, rel, users, items, rows",
    [
        ("ml-100k", "ml-100k/u.data.gz", 943, 1682, 100_000),
        ("beauty", "amazon-2014-5core/s3rec/Beauty.txt.gz", 22_363, 12_101, 198_502),
        ("toys", "amazon-2014-5core/s3rec/Toys_and_Games.txt.gz", 19_412, 11_924, 167_597),
    ],
)
def test_registered_datasets_prepare_with_published_counts(tmp_path, dataset, rel, users, items, rows):
    path = shared_file(rel)  # checksums of the uncompressed bytes are verified by prepare()
    data = load_prepared(prepare(DataConfig(dataset=dataset, source=str(path), cache_dir=str(tmp_path))))
    assert (data.num_users, data.num_items, len(data.items)) == (users, items, rows)
    assert (data.timestamps is not None) == (dataset == "ml-100k")


def test_s3rec_ids_keep_their_order(tmp_path):
    path = shared_file("amazon-2014-5core/s3rec/Beauty.txt.gz")
    data = load_prepared(prepare(DataConfig(dataset="beauty", source=str(path), cache_dir=str(tmp_path))))
    import gzip

    with gzip.open(path, "rt") as f:
        first = f.readline().split()
    assert list(data.user_ids[:1]) == [first[0]]
    assert [data.item_ids[i - 1] for i in data.items[data.offsets[0] : data.offsets[1]]] == first[1:]


def test_raw_amazon_review_json():
    t = read_interactions(shared_file("amazon-2014-5core/raw-musical-instruments/Musical_Instruments.json.gz"), "amazon-reviews-json")
    assert t.num_rows == 10_261
    assert len(set(t.column("user").to_pylist())) == 1_429 and len(set(t.column("item").to_pylist())) == 900
    assert min(t.column("timestamp").to_pylist()) == 1095465600


def test_movielens_100k_folds_read(tmp_path):
    t = read_interactions(shared_file("ml-100k/u1.base.gz"), "movielens-100k")
    assert t.num_rows == 80_000
