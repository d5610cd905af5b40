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


# ---- real-world CSVs: recognised columns, BOM, times, delimiters, exact line numbers -------------

MOVIELENS_CSV = "userId,movieId,rating,timestamp\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n"


@pytest.mark.parametrize("header", ["userId,movieId,rating,timestamp", "USER_ID,Item_Id,Stars,TS", "uid,asin,overall,unixReviewTime"])
def test_common_column_names_are_recognised(tmp_path, header):
    p = _write(tmp_path / "ratings.csv", header + "\n1,31,2.5,1260759144\n1,1029,3.0,1260759179\n")
    t = read_interactions(p, "csv")  # no data.columns
    assert t.to_pylist()[1] == {"user": "1", "item": "1029", "timestamp": 1260759179, "rating": 3.0}


def test_recognised_columns_in_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"customer_id": [7, 8], "product_id": ["a", "b"], "date": pa.array([0, 86400], pa.timestamp("s"))}), tmp_path / "log.parquet")
    t = read_interactions(tmp_path / "log.parquet", "parquet")
    assert t.to_pylist()[1] == {"user": "8", "item": "b", "timestamp": 86400, "rating": None}


@pytest.mark.parametrize("header, problem", [
    ("uid,movie,rating", r"no item column\) in \['uid', 'movie', 'rating'\]"),
    ("user,user_id,item", r"several user columns \['user', 'user_id'\]"),
    ("userId,movieId,time,date", r"several timestamp columns \['time', 'date'\]"),
])
def test_ambiguous_or_missing_columns_list_the_header_and_the_names(tmp_path, header, problem):
    p = _write(tmp_path / "log.csv", header + "\n1,2,3\n")
    with pytest.raises(DataFormatError, match=problem) as exc:
        read_interactions(p, "csv")
    assert "data.columns.user=" in str(exc.value) and "movieId" in str(exc.value) and "unixReviewTime" in str(exc.value)


def test_utf8_bom_is_stripped(tmp_path):
    p = tmp_path / "ratings.csv"
    p.write_bytes(b"\xef\xbb\xbf" + MOVIELENS_CSV.encode())
    assert read_interactions(p, "csv", {"user": "userId", "item": "movieId"}).column("user").to_pylist() == ["1", "1"]
    assert read_interactions(p, "csv").column("user").to_pylist() == ["1", "1"]
    p.write_bytes(b"\xef\xbb\xbf" + b"u1,i1,5\n")
    assert read_interactions(p, "csv", {"user": "0", "item": "1", "timestamp": "2"}, has_header=False).column("user").to_pylist() == ["u1"]


@pytest.mark.parametrize("text, seconds", [
    ("1260759144", 1260759144), ("1260759144.9", 1260759144), ("1.26e9", 1_260_000_000),
    ("2015-03-04", 1425427200), ("2015-03-04T12:30:00", 1425472200), ("2015-03-04 12:30:00.5", 1425472200),
    ("2015-03-04T12:30:00Z", 1425472200), ("2015-03-04T14:30:00+02:00", 1425472200),
])
def test_float_and_iso_8601_times(tmp_path, text, seconds):
    p = _write(tmp_path / "log.csv", f"user,item,time\na,x,{text}\n")
    columns = {"user": "user", "item": "item", "timestamp": "time"}
    assert read_interactions(p, "csv", columns).column("timestamp").to_pylist() == [seconds]


def test_mixed_iso_offsets_in_one_column(tmp_path):
    p = _write(tmp_path / "log.csv", "user,item,date\na,x,2015-03-04\na,y,2015-03-04T01:00:00+01:00\n")
    columns = {"user": "user", "item": "item", "timestamp": "date"}
    assert read_interactions(p, "csv", columns).column("timestamp").to_pylist() == [1425427200, 1425427200]


def test_tab_delimiter_from_the_command_line(tmp_path):
    from genrec.config import experiment_from_dict
    from genrec.errors import ConfigError

    p = _write(tmp_path / "log.tsv", "user_id\titem_id\tts\na\tx\t5\n")
    for text in ("\\t", "tab", "TAB"):  # what a shell hands over for data.delimiter='\t'
        cfg = experiment_from_dict({}, [f"data.delimiter={text}"]).data
        assert cfg.delimiter == "\t"
        columns = {"user": "user_id", "item": "item_id", "timestamp": "ts"}
        assert read_interactions(p, "csv", columns, delimiter=cfg.delimiter).column("timestamp").to_pylist() == [5]
    with pytest.raises(DataFormatError, match=r"one field only when split at ','.*; set data.delimiter='\\t'"):
        read_interactions(p, "csv")  # the default comma on a tab-separated file: say which flag fixes it
    with pytest.raises(ConfigError, match="data.delimiter=';;' must be one character"):
        experiment_from_dict({}, ["data.delimiter=;;"])


def test_quoted_newlines_and_blank_lines_are_read(tmp_path):
    p = _write(tmp_path / "log.csv", 'user,item,ts,title\na,x,1,"Toy\nStory"\n\nb,y,2,"said ""hi"""\n\n')
    t = read_interactions(p, "csv")
    assert t.column("item").to_pylist() == ["x", "y"] and t.column("timestamp").to_pylist() == [1, 2]


CSV_ERRORS = [
    # (content, expected message): every parse error names the file and the line
    ('user,item,ts\na,x,1\nb,"y,2\nc,z,3\n', r"log.csv:3: bad quoting \(unexpected end of data\)"),
    ("user,item,ts\na,x,1\nb,y\nc,z,3\n", r"log.csv:3: expected 3 fields separated by ',' \(as in line 1\), got 2: 'b,y'"),
    ("user,item,ts\na,x,1\n\nb,y,2,9\n", r"log.csv:4: expected 3 fields .* got 4"),
    ('user,item,ts,title\na,x,1,"two\nlines"\nb,y,yesterday,t\n', r"log.csv:4: timestamp 'yesterday' is not .* ISO-8601"),
    ("user,item,ts\na,x,1\nb,y,2015-03-04\n", r"log.csv:3: timestamp '2015-03-04' is not unix seconds like the rows before it"),
    ("user,item,rating\na,x,4\n\nb,y,four\n", r"log.csv:4: rating 'four' is not a number: 'b,y,four'"),
    ("user,item,ts\na,x,1\nb,y,nan\n", r"log.csv:3: no timestamp although other rows have one .*: 'b,y,nan'"),
    ("user,item,ts\na,x,2015-03-04\nb,y,\n", r"log.csv:3: no timestamp although other rows have one .*: 'b,y,'"),
]


@pytest.mark.parametrize("content, message", CSV_ERRORS)
def test_csv_parse_errors_name_the_line(tmp_path, content, message):
    header = content.split("\n", 1)[0].split(",")
    columns = {"user": "user", "item": "item", **{"timestamp" if h == "ts" else h: h for h in header[2:3]}}
    with pytest.raises(DataFormatError, match=message):
        read_interactions(_write(tmp_path / "log.csv", content), "csv", columns)


def test_non_utf8_bytes_name_the_line(tmp_path):
    p = tmp_path / "log.csv"
    p.write_bytes(b"user,item\na,x\nb,caf\xe9\n")
    with pytest.raises(DataFormatError, match=r"log.csv:3: not UTF-8 text"):
        read_interactions(p, "csv", {"user": "user", "item": "item"})
