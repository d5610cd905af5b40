import hashlib
import json
import os
import zipfile

import numpy as np
import pyarrow as pa
import pytest

from genrec.config import DataConfig
from genrec.data.download import DatasetSpec, fetch
from genrec.data.loaders import SCHEMA
from genrec.data.prepare import build_sequences, load_prepared, prepare
from genrec.errors import ChecksumError, DataFormatError


def _table(rows):
    users, items, ts = zip(*rows)
    return pa.table([list(users), list(items), list(ts), [None] * len(rows)], schema=SCHEMA)


def test_time_sort_is_stable_and_ids_follow_first_appearance():
    # user a: items x(t=5), y(t=1), z(t=5) -> y, x, z (tie at t=5 keeps file order)
    _, data = build_sequences(_table([("a", "x", 5), ("b", "y", 3), ("a", "y", 1), ("a", "z", 5)]))
    assert list(data.item_ids) == ["x", "y", "z"] and list(data.user_ids) == ["a", "b"]
    seq_a = data.items[data.offsets[0] : data.offsets[1]]
    assert [data.item_ids[i - 1] for i in seq_a] == ["y", "x", "z"]
    assert data.timestamps[data.offsets[0] : data.offsets[1]].tolist() == [1, 5, 5]


def test_one_pass_filter_vs_iterative_kcore():
    rows = [("a", "x", 1), ("a", "y", 2), ("b", "x", 3), ("b", "y", 4), ("c", "x", 5), ("c", "z", 6)]
    # one pass, min 2: item z (1 rating) goes; user c keeps 1 interaction
    _, one = build_sequences(_table(rows), min_user=2, min_item=2)
    assert one.stats["interactions"] == 5 and one.num_users == 3
    # iterative: then user c (now 1) goes, then item x (now 2) stays
    _, core = build_sequences(_table(rows), min_user=2, min_item=2, kcore=True)
    assert core.stats["interactions"] == 4 and core.num_users == 2


def test_raw_integer_ids_keep_the_catalogue():
    _, data = build_sequences(_table([("1", "3", 1), ("1", "7", 2)]), raw_integer_ids=True)
    assert data.num_items == 7 and data.items.tolist() == [3, 7]


def test_partial_timestamps_rejected():
    t = pa.table([["a", "a"], ["x", "y"], [1, None], [None, None]], schema=SCHEMA)
    with pytest.raises(DataFormatError, match="1 of 2 rows have no timestamp"):
        build_sequences(t, origin="log.csv")


def test_prepare_roundtrip_and_cache(tmp_path, synthetic_csv):
    cfg = DataConfig(dataset="custom", source=str(synthetic_csv), format="csv",
                     columns={"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}, cache_dir=str(tmp_path / "c"))
    folder = prepare(cfg)
    data = load_prepared(folder)
    assert data.num_users == 60 and data.num_items == 40
    assert np.all(np.diff(data.timestamps[data.offsets[0] : data.offsets[1]]) > 0)
    assert json.loads((folder / "stats.json").read_text())["has_timestamps"] is True
    mtime = (folder / "stats.json").stat().st_mtime
    assert prepare(cfg) == folder and (folder / "stats.json").stat().st_mtime == mtime  # cached


# ---- download / source checks -------------------------------------------------------------------

def _spec(tmp_path, content: bytes, zipped: bool, sha=None, size=None):
    src = tmp_path / "upstream"
    src.mkdir(exist_ok=True)
    if zipped:
        archive = src / "ds.zip"
        with zipfile.ZipFile(archive, "w") as zf:
            zf.writestr("ds/u.data", content)
        url = archive.as_uri()
        md5 = hashlib.md5(archive.read_bytes()).hexdigest()
    else:
        (src / "u.data").write_bytes(content)
        url, md5 = (src / "u.data").as_uri(), None
    digest = sha or hashlib.sha256(content).hexdigest()
    return DatasetSpec("toy", "movielens-100k", url, "ds/u.data", size or len(content), {"sha256": digest}, archive_md5=md5)


@pytest.mark.parametrize("zipped", [False, True])
def test_download_checks_and_caches(tmp_path, zipped):
    content = b"1\t2\t3\t100\n"
    path = fetch(_spec(tmp_path, content, zipped), cache_dir=str(tmp_path / "cache"))
    assert path.read_bytes() == content and str(tmp_path / "cache") in str(path)


def test_checksum_mismatch_raises(tmp_path):
    with pytest.raises(ChecksumError, match="sha256"):
        fetch(_spec(tmp_path, b"1\t2\t3\t100\n", False, sha="0" * 64), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ChecksumError, match="should be 99 bytes"):
        fetch(_spec(tmp_path, b"1\t2\t3\t100\n", False, size=99), cache_dir=str(tmp_path / "cache2"))


def test_source_folder_gz_and_git_blob(tmp_path):
    import gzip

    content = b"1\t2\t3\t100\n"
    folder = tmp_path / "mirror" / "nested"
    folder.mkdir(parents=True)
    with gzip.open(folder / "u.data.gz", "wb") as f:
        f.write(content)
    blob = hashlib.sha1(b"blob %d\0" % len(content) + content).hexdigest()
    spec = DatasetSpec("toy", "movielens-100k", None, "ds/u.data", len(content), {"git-blob": blob})
    assert fetch(spec, cache_dir=str(tmp_path / "c"), source=str(tmp_path / "mirror")).name == "u.data.gz"


def test_unreachable_download_says_what_to_do(tmp_path):
    spec = DatasetSpec("toy", "movielens-100k", (tmp_path / "missing.txt").as_uri(), "u.data")
    with pytest.raises(DataFormatError, match="data.source=PATH"):
        fetch(spec, cache_dir=str(tmp_path / "c"))


def test_verification_is_remembered_until_the_file_changes(tmp_path, monkeypatch):
    import genrec.data.download as dl

    content = b"1\t2\t3\t100\n"
    spec = _spec(tmp_path, content, False)
    calls = []
    real = dl.verify
    monkeypatch.setattr(dl, "verify", lambda *a, **k: (calls.append(a[0]), real(*a, **k)))
    src = tmp_path / "upstream" / "u.data"
    fetch(spec, cache_dir=str(tmp_path / "c"), source=str(src))
    fetch(spec, cache_dir=str(tmp_path / "c"), source=str(src))
    assert len(calls) == 1
    src.write_bytes(b"1\t2\t3\t999\n")  # same size, new content and mtime
    import os
    os.utime(src, ns=(1, 1))
    with pytest.raises(ChecksumError):
        fetch(spec, cache_dir=str(tmp_path / "c"), source=str(src))


def test_unreachable_download_mentions_genrec_source(tmp_path):
    spec = DatasetSpec("toy", "movielens-100k", (tmp_path / "missing.txt").as_uri(), "u.data")
    with pytest.raises(DataFormatError, match="data.source=PATH .* GENREC_SOURCE=DIR"):
        fetch(spec, cache_dir=str(tmp_path / "c"))
    with pytest.raises(DataFormatError, match=r"data.source=.*nope: no such file or folder; .*GENREC_SOURCE"):
        fetch(spec, cache_dir=str(tmp_path / "c"), source=str(tmp_path / "nope"))


# ---- input checks: warned on stderr with counts, recorded in stats.json --------------------------

def test_input_checks_are_warned_and_recorded(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text(
        "user,item,ts\n"
        "a,x,10\na,y,5\n"  # a: y is earlier than x in the file (out of order)
        "a,x,10\n"  # a duplicate of the first row
        ",z,7\nb,,8\n  ,z,\n"  # three rows without a user or item id (one without a time too): dropped
        "b,x,1\nb,y,2\n"
    )
    folder = prepare(DataConfig(source=str(log), cache_dir=str(tmp_path / "c")))
    stats = json.loads((folder / "stats.json").read_text())
    assert (stats["raw_interactions"], stats["interactions"]) == (8, 5)
    assert (stats["empty_id_rows"], stats["duplicate_rows"], stats["out_of_order_timestamps"]) == (3, 1, 1)
    err = capsys.readouterr().err
    assert "log.csv: 3 row(s) with an empty user or item id dropped" in err
    assert "log.csv: 1 duplicate row(s)" in err and "log.csv: 1 row(s) earlier than the same user's previous row" in err


def test_clean_log_is_quiet(tmp_path, capsys):
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\na,x,1\na,y,2\nb,x,3\n")
    stats = json.loads((prepare(DataConfig(source=str(log), cache_dir=str(tmp_path / "c"))) / "stats.json").read_text())
    assert (stats["empty_id_rows"], stats["duplicate_rows"], stats["out_of_order_timestamps"]) == (0, 0, 0)
    assert "warning" not in capsys.readouterr().err


# ---- prepared data is found by its key, without the raw file --------------------------------------

def test_custom_log_prepared_copy_is_used_when_the_file_is_gone(tmp_path, synthetic_csv, capsys):
    cfg = DataConfig(source=str(synthetic_csv), cache_dir=str(tmp_path / "c"))  # columns recognised
    folder = prepare(cfg)
    synthetic_csv.unlink()
    assert prepare(cfg) == folder
    assert f"using its prepared copy {folder}" in capsys.readouterr().err
    with pytest.raises(DataFormatError, match=r"other.csv: no such file, and no prepared copy .* data.source=PATH"):
        prepare(DataConfig(source=str(tmp_path / "other.csv"), cache_dir=str(tmp_path / "c")))


def test_changed_custom_log_is_prepared_again(tmp_path):
    log = tmp_path / "log.csv"
    log.write_text("user,item,ts\na,x,1\na,y,2\n")
    cfg = DataConfig(source=str(log), columns={"user": "user", "item": "item", "timestamp": "ts"}, cache_dir=str(tmp_path / "c"))
    first = prepare(cfg)
    log.write_text("user,item,ts\na,x,1\na,y,2\na,z,3\n")
    os.utime(log, (1, 1))
    second = prepare(cfg)
    assert second != first and load_prepared(second).num_items == 3


def test_registered_dataset_is_found_by_its_published_digest(tmp_path, monkeypatch):
    from genrec.data.download import DATASETS

    content = b"1\t2\t3\t100\n1\t3\t4\t200\n"
    spec = _spec(tmp_path, content, False)
    monkeypatch.setitem(DATASETS, "toy", spec)
    mirror = tmp_path / "mirror" / "u.data"
    mirror.parent.mkdir()
    mirror.write_bytes(content)
    folder = prepare(DataConfig(dataset="toy", source=str(mirror), cache_dir=str(tmp_path / "c")))
    (tmp_path / "upstream" / "u.data").unlink()  # no download possible either
    mirror.unlink()
    for source in (str(mirror), None):  # the same content key, wherever the file was
        assert prepare(DataConfig(dataset="toy", source=source, cache_dir=str(tmp_path / "c"))) == folder
    with pytest.raises(DataFormatError, match="GENREC_SOURCE"):  # never prepared with these settings: needs the file
        prepare(DataConfig(dataset="toy", min_user_count=2, cache_dir=str(tmp_path / "c")))
