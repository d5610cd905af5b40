import gzip
import json
from pathlib import Path

import pytest

from genrec.data.loaders import read_interactions
from genrec.errors import DataFormatError


def _write(path: Path, text: str, gz: bool = False) -> Path:
    if gz:
        path = path.with_name(path.name + ".gz")
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return path


@pytest.mark.parametrize("gz", [False, True])
def test_movielens_100k(tmp_path, gz):
    p = _write(tmp_path / "u.data", "196\t242\t3\t881250949\n186\t302\t3.5\t891717742\n", gz)
    t = read_interactions(p, "movielens-100k")
    assert t.to_pylist() == [
        {"user": "196", "item": "242", "timestamp": 881250949, "rating": 3.0},
        {"user": "186", "item": "302", "timestamp": 891717742, "rating": 3.5},
    ]


def test_movielens_1m_double_colon(tmp_path):
    p = _write(tmp_path / "ratings.dat", "1::1193::5::978300760\n1::661::3::978302109\n")
    assert read_interactions(p, "movielens-1m").column("item").to_pylist() == ["1193", "661"]


def test_movielens_20m_header(tmp_path):
    p = _write(tmp_path / "ratings.csv", "userId,movieId,rating,timestamp\n1,2,3.5,1112486027\n1,29,3.5,1112484676\n")
    t = read_interactions(p, "movielens-20m")
    assert t.num_rows == 2 and t.column("rating").to_pylist() == [3.5, 3.5]


def test_amazon_ratings_csv(tmp_path):
    p = _write(tmp_path / "ratings_Books.csv", "AH2L9G3DQHHAJ,0000000116,4.0,1019865600\nA2IIIDRK3PRRZY,0000000116,1.0,1395619200\n")
    t = read_interactions(p, "amazon-ratings-csv")
    assert t.column("user").to_pylist() == ["AH2L9G3DQHHAJ", "A2IIIDRK3PRRZY"]
    assert t.column("timestamp").to_pylist() == [1019865600, 1395619200]


def test_amazon_reviews_json(tmp_path):
    rows = [{"reviewerID": "A1", "asin": "B1", "overall": 5.0, "unixReviewTime": 100, "helpful": [0, 0]},
            {"reviewerID": "A2", "asin": "B1", "overall": 2.0, "unixReviewTime": 200}]
    p = _write(tmp_path / "reviews.json", "\n".join(json.dumps(r) for r in rows) + "\n", gz=True)
    t = read_interactions(p, "amazon-reviews-json")
    assert t.to_pylist()[1] == {"user": "A2", "item": "B1", "timestamp": 200, "rating": 2.0}


def test_sequence_file(tmp_path):
    p = _write(tmp_path / "Beauty.txt", "1 5 6 7\n2 6 8\n")
    t = read_interactions(p, "sequences")
    assert t.column("user").to_pylist() == ["1", "1", "1", "2", "2"]
    assert t.column("item").to_pylist() == ["5", "6", "7", "6", "8"]
    assert t.column("timestamp").null_count == 5


def test_generic_csv_and_parquet(tmp_path, synthetic_csv):
    cols = {"user": "user_id", "item": "item_id", "timestamp": "ts", "rating": "stars"}
    t = read_interactions(synthetic_csv, "csv", cols)
    assert t.num_rows > 100 and t.column_names == ["user", "item", "timestamp", "rating"]
    import pyarrow.parquet as pq
    import pyarrow.csv as pacsv

    pq.write_table(pacsv.read_csv(synthetic_csv), tmp_path / "log.parquet")
    t2 = read_interactions(tmp_path / "log.parquet", "parquet", cols)
    assert t2.column("timestamp").to_pylist() == t.column("timestamp").to_pylist()


def test_generic_csv_quoted_fields(tmp_path):
    p = _write(tmp_path / "log.csv", 'user,item,when\n"Smith, J",item 1,5\n')
    t = read_interactions(p, "csv", {"user": "user", "item": "item", "timestamp": "when"})
    assert t.to_pylist() == [{"user": "Smith, J", "item": "item 1", "timestamp": 5, "rating": None}]


def test_generic_csv_without_header_by_position(tmp_path):
    p = _write(tmp_path / "log.tsv", "a\tx\t10\nb\ty\t20\n")
    t = read_interactions(p, "csv", {"user": "0", "item": "1", "timestamp": "2"}, delimiter="\t", has_header=False)
    assert t.column("timestamp").to_pylist() == [10, 20] and t.column("rating").null_count == 2


# ---- malformed input: the error names the file and the line ------------------------------------

@pytest.mark.parametrize("gz", [False, True])
def test_bad_line_names_file_and_line(tmp_path, gz):
    p = _write(tmp_path / "u.data", "1\t2\t3\t100\n1\t3\t4\t200\n1\t4\n", gz)
    with pytest.raises(DataFormatError, match=rf"{p.name}:3: expected 4 fields"):
        read_interactions(p, "movielens-100k")


MALFORMED = [
    # (file name, content, format, column mapping, expected message)
    ("ratings.dat", "1::2::3::100\n1::3::4::yesterday\n", "movielens-1m", None,
     r"ratings.dat:2: field 'timestamp' = 'yesterday' is not a number"),
    ("u.data", "", "movielens-100k", None, r"u.data: file is empty"),
    ("log.csv", "user,item\na,b\n", "csv", {"user": "user", "item": "item", "timestamp": "ts"},
     r"log.csv:1: missing column\(s\) \['ts'\]"),
    ("r.json", '{"reviewerID": "a", "asin": "b", "overall": 1, "unixReviewTime": 5}\n{"reviewerID": "a", \n',
     "amazon-reviews-json", None, r"r.json:2: not valid JSON"),
    ("r.json", '{"reviewerID": "a", "overall": 1, "unixReviewTime": 5}\n', "amazon-reviews-json", None,
     r"r.json:1: missing field 'asin'"),
    ("s.txt", "1 2 3\n7\n", "sequences", None, r"s.txt:2: expected 'user item"),
    ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,x,5\n", "movielens-20m", None,
     r"ratings.csv:2: field 'rating' = 'x' is not a number"),
]


@pytest.mark.parametrize("name, content, fmt, columns, message", MALFORMED)
def test_malformed_input_names_file_and_line(tmp_path, name, content, fmt, columns, message):
    with pytest.raises(DataFormatError, match=message):
        read_interactions(_write(tmp_path / name, content), fmt, columns)


def test_unknown_format(tmp_path):
    with pytest.raises(DataFormatError, match="unknown data.format"):
        read_interactions(_write(tmp_path / "x", "1"), "nope")
