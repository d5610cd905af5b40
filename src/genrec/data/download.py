"""Registered datasets: official download addresses, published checksums, default preprocessing.

Archives are checked against the MD5 that GroupLens publishes beside them; the data file that is
actually read is checked against its size and SHA-256 (or, for MovieLens-1M ``ratings.dat``, its
git blob id, the only published digest we could confirm). A file supplied with ``--source`` is
checked the same way; a gzipped copy is checked on its uncompressed bytes. A dataset whose digest
is not pinned is read with a warning that says so.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
import urllib.request
import warnings
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from genrec.data.columns import COLUMN_NAMES
from genrec.errors import ChecksumError, DataFormatError


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    format: str
    url: str | None
    """Official download address (an archive or the data file itself)."""
    member: str
    """Path of the data file inside the archive, or the file name when ``url`` is the file."""
    member_size: int | None = None
    member_digests: dict[str, str] = field(default_factory=dict)
    """``{"sha256"|"git-blob": hex}`` of the uncompressed data file."""
    archive_md5: str | None = None
    min_user_count: int = 0
    min_item_count: int = 0
    raw_integer_ids: bool = False
    description: str = ""
    local_names: tuple[str, ...] = ()
    """Other names a local copy of the data file may have (searched in ``data.source`` folders)."""
    companions: dict[str, str] = field(default_factory=dict)
    """Files the loader reads beside the data file (P5's ``datamaps.json``) -> SHA-256 of their
    uncompressed bytes; downloaded from the data file's folder, checked like it."""

    @property
    def content_digests(self) -> dict:
        """What identifies the pinned content (names the prepared folder)."""
        return {**self.member_digests, "companions": self.companions} if self.companions else self.member_digests


GROUPLENS = "https://files.grouplens.org/datasets/movielens"
S3REC = "https://raw.githubusercontent.com/aHuiWang/CIKM2020-S3Rec/master/data"
SNAP = "http://snap.stanford.edu/data/amazon/productGraph/categoryFiles"
P5 = "https://raw.githubusercontent.com/WangXFng/RDRec/4055c3028d3afbd57a0fffd54076825836b7cad7/data"
"""P5's Beauty/Toys files as re-published by the RDRec authors (sequential.txt + datamaps.json)."""

def _p5(name: str, size: int, sha256: str, maps_sha256: str, what: str) -> DatasetSpec:
    """A P5 sequence file with its ``datamaps.json`` (users become Amazon reviewer ids, items ASINs)."""
    return DatasetSpec(
        f"{name}-p5", "p5-sequences", f"{P5}/{name}/sequential.txt", "sequential.txt", size, {"sha256": sha256},
        description=f"Amazon 2014 5-core {what} in P5 form with datamaps.json beside it: reviewer ids and ASINs, so "
        "domains join by user (data.domains)",
        local_names=(f"p5/{name}/sequential.txt", f"{name}/sequential.txt"), companions={"datamaps.json": maps_sha256},
    )


DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in [
        DatasetSpec(
            "ml-100k", "movielens-100k", f"{GROUPLENS}/ml-100k.zip", "ml-100k/u.data", 1_979_173,
            {"sha256": "06416e597f82b7342361e41163890c81036900f418ad91315590814211dca490"},
            archive_md5="0e33842e24a9c977be4e0107933c0723",
            description="MovieLens 100K: 100,000 ratings, 943 users, 1,682 movies, timestamps",
        ),
        DatasetSpec(
            "ml-1m", "movielens-1m", f"{GROUPLENS}/ml-1m.zip", "ml-1m/ratings.dat", None,
            {"git-blob": "77a7c4b150f588c23bb9e1f068aa996c0b413695"},
            archive_md5="c4d9eecfca2ab87c1945afe126590906", raw_integer_ids=True,
            description="MovieLens 1M: 1,000,209 ratings, 6,040 users, 3,706 movies (HSTU protocol: no filtering, raw ids)",
        ),
        DatasetSpec(
            "ml-20m", "movielens-20m", f"{GROUPLENS}/ml-20m.zip", "ml-20m/ratings.csv", 533_445_239,
            {"sha256": "3ac7efb234124851718f05fe575e560aad243f5464c6e1decd8c7e39511cf664"},
            archive_md5="cd245b17a1ae2cc31bb14903e1204af3", raw_integer_ids=True,
            description="MovieLens 20M: 20,000,263 ratings (HSTU protocol: no filtering, raw ids)",
        ),
        DatasetSpec(
            "amazon-books", "amazon-ratings-csv", f"{SNAP}/ratings_Books.csv", "ratings_Books.csv", 916_259_383,
            {"sha256": "411873640232eaa462881c67e9b5e07ce4f1a4c135cf5c7a98ccd3a33901dc11"},
            min_user_count=5, min_item_count=5,
            description="Amazon 2014 Books ratings (HSTU protocol: users and items with >= 5 ratings, one pass)",
        ),
        DatasetSpec(
            "beauty", "sequences", f"{S3REC}/Beauty.txt", "Beauty.txt", 1_090_094,
            {"sha256": "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8"},
            description="Amazon 2014 5-core Beauty, S3-Rec sequences: 22,363 users, 12,101 items, no timestamps",
        ),
        DatasetSpec(
            "toys", "sequences", f"{S3REC}/Toys_and_Games.txt", "Toys_and_Games.txt", 922_166,
            {"sha256": "176c680c688d497598c4a89a03b402c0fe78d795e5db335c2e78dd5f2d778a3f"},
            description="Amazon 2014 5-core Toys and Games, S3-Rec sequences: 19,412 users, 11,924 items, no timestamps",
        ),
        _p5("beauty", 1_090_094, "226cce9c3105299ca0db9615d7d3fb32b3175e90da43100ae352599f0f0107b8",
            "c3386147637538f6d97f7eafffeb4e7180daa0638875bc1d889bbee45ce241a8", "Beauty (the S3-Rec sequences, same file)"),
        _p5("toys", 921_692, "fa1cff57550387966440a93219753b97df62269455b3497612cdca3e8db0ceee",
            "a67fd09b5bbca12aea613015d9d1ed99610bb35015d3bbe8cd9e7a3eeda2c90c",
            "Toys and Games (a different numbering from the S3-Rec toys file)"),
        DatasetSpec(
            "instruments", "amazon-reviews-json", f"{SNAP}/reviews_Musical_Instruments_5.json.gz",
            "reviews_Musical_Instruments_5.json.gz", 7_445_886,
            {"sha256": "8e1aaab451ba61484dfe393f53d11886246bc426c7046b180b62352580f68c1d"},
            description="Amazon 2014 5-core Musical Instruments raw reviews (ratings 1-5, timestamps): 10,261 "
            "reviews, 1,429 users, 900 items (digest of the copy we could check by counts)",
            local_names=("Musical_Instruments.json",),
        ),
        DatasetSpec(
            "sports", "sequences", f"{S3REC}/Sports_and_Outdoors.txt", "Sports_and_Outdoors.txt",
            description="Amazon 2014 5-core Sports and Outdoors, S3-Rec sequences (digest not pinned)",
        ),
    ]
}


ITEM_FEATURE_FILES: dict[str, DatasetSpec] = {
    # data.item_features=auto: each dataset's own attribute file (genrec.data.item_features), checked like the logs
    "beauty": DatasetSpec("beauty-attributes", "item-features", f"{S3REC}/Beauty_item2attributes.json", "Beauty_item2attributes.json",
                          305_674, {"sha256": "129e40f67486f6877eff0f5318cfa8530ee8ac23d8b0d1de04e1bb7a2ba0b2d4"},
                          description="S3-Rec Beauty item attributes (category and brand tokens)"),
    "toys": DatasetSpec("toys-attributes", "item-features", f"{S3REC}/Toys_and_Games_item2attributes.json",
                        "Toys_and_Games_item2attributes.json", 327_536,
                        {"sha256": "d371acd25101eedac04afc727626464b7acec770c4eda708705d51eb76eb1ad0"},
                        description="S3-Rec Toys and Games item attributes (numbered like s3rec/Toys_and_Games.txt only)"),
    "ml-100k": DatasetSpec("ml-100k-items", "item-features", f"{GROUPLENS}/ml-100k.zip", "ml-100k/u.item", 236_344,
                           {"sha256": "553841ebc7de3a0fd0d6b62a204ea30c1e651aacfb2814c7a6584ac52f2c5701"},
                           archive_md5="0e33842e24a9c977be4e0107933c0723", description="MovieLens 100K genres and release dates"),
    "ml-1m": DatasetSpec("ml-1m-movies", "item-features", f"{GROUPLENS}/ml-1m.zip", "ml-1m/movies.dat", 171_308,
                         {"sha256": "0140fc2356357c1a851d0f52e893a1e4d3696df632c4141cea8d5bc3d621f0b9"},
                         archive_md5="c4d9eecfca2ab87c1945afe126590906", description="MovieLens 1M genres and years"),
}

USER_FEATURE_FILES: dict[str, DatasetSpec] = {
    # data.user_features=auto: each dataset's own user demographics (genrec.data.user_features), checked like the logs
    "ml-100k": DatasetSpec("ml-100k-users", "user-features", f"{GROUPLENS}/ml-100k.zip", "ml-100k/u.user", 22_628,
                           {"sha256": "f120e114da2e8cf314fd28f99417c94ae9ddf1cb6db8ce0e4b5995d40e90e62c"},
                           archive_md5="0e33842e24a9c977be4e0107933c0723",
                           description="MovieLens 100K user demographics (age, gender, occupation, zip code)"),
    "ml-1m": DatasetSpec("ml-1m-users", "user-features", f"{GROUPLENS}/ml-1m.zip", "ml-1m/users.dat", 134_368,
                         {"sha256": "1dc3a95300cb19f7c10e027daf29b8cdf1d908dab65b5edfb45950aa389a10a3"},
                         archive_md5="c4d9eecfca2ab87c1945afe126590906",
                         description="MovieLens 1M user demographics (age group, gender, occupation, zip code)"),
}

CUSTOM = {
    "format": "csv (any one-character delimiter), parquet, or any format above (data.format)",
    "url": None,
    "description": "your own interaction log, one row per interaction: genrec train configs/custom/hstu.yaml data.source=ratings.csv",
    "reads": "user and item ids (required), timestamp (unix seconds or ISO-8601) and rating (optional), "
    "from columns recognised by name (any case) unless data.columns names them",
    "recognised_columns": {k: list(v) for k, v in COLUMN_NAMES.items()},
    "keys": ["data.source", "data.format", "data.columns.user", "data.columns.item", "data.columns.timestamp",
             "data.columns.rating", "data.delimiter", "data.has_header", "data.action_columns",
             "data.min_user_count", "data.min_item_count", "data.kcore", "data.raw_integer_ids", "data.cache_dir"],
    "min_user_count": 0, "min_item_count": 0,
}
"""What ``data.dataset=custom`` reads, as ``genrec datasets`` lists it (README "Your own data")."""


def cache_root(cache_dir: str | None = None) -> Path:
    root = cache_dir or os.environ.get("GENREC_DATA_DIR") or Path.home() / ".cache" / "genrec"
    return Path(root)


def _digest(path: Path, algo: str) -> str:
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        if algo == "git-blob":  # sha1 over "blob <size>\0" + content
            size = sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))
            f.seek(0)
            h = hashlib.sha1(f"blob {size}\0".encode())
        else:
            h = hashlib.new(algo)
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _uncompressed_size(path: Path) -> int:
    if not str(path).endswith(".gz"):
        return path.stat().st_size
    with gzip.open(path, "rb") as f:
        return sum(len(chunk) for chunk in iter(lambda: f.read(1 << 20), b""))


def verify(path: Path, size: int | None, digests: dict[str, str], what: str) -> None:
    """Raise :class:`ChecksumError` unless ``path`` has the published size and digests."""
    if size is not None and (actual := _uncompressed_size(path)) != size:
        raise ChecksumError(f"{path}: {what} should be {size:,} bytes, found {actual:,}")
    for algo, expected in digests.items():
        if (actual := _digest(path, algo)) != expected:
            raise ChecksumError(f"{path}: {what} {algo} is {actual}, the published value is {expected}")
    if not digests:
        warnings.warn(f"{path}: no published checksum is pinned for {what}; read unverified", stacklevel=2)


def _download(url: str, dest: Path) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=dest.parent, delete=False, suffix=".part") as tmp:
        try:
            with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - fixed registry URLs
                shutil.copyfileobj(resp, tmp, 1 << 20)
        except OSError as exc:
            os.unlink(tmp.name)
            raise DataFormatError(f"could not download {url} ({exc}); download it yourself and {OFFLINE_HINT}") from None
    os.replace(tmp.name, dest)


def _from_archive(archive: Path, member: str, dest: Path) -> Path:
    with zipfile.ZipFile(archive) as zf:
        names = zf.namelist()
        match = member if member in names else next((n for n in names if n.endswith("/" + Path(member).name) or n == Path(member).name), None)
        if match is None:
            raise DataFormatError(f"{archive}: no member {member!r} in the archive")
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_suffix(dest.suffix + ".part")
        with zf.open(match) as src, open(tmp, "wb") as out:
            shutil.copyfileobj(src, out, 1 << 20)
    os.replace(tmp, dest)
    return dest


def base_name(path: Path) -> str:
    """The file name without a ``.gz`` suffix (what names the format)."""
    return path.name.removesuffix(".gz")


def _find_in_folder(folder: Path, member: str, other_names: tuple[str, ...] = ()) -> Path:
    # names with a folder part first (``p5/toys/sequential.txt``): several datasets share a file name
    names = [n for n in other_names if "/" in n] + [Path(member).name] + [n for n in other_names if "/" not in n]
    for name in names:
        for candidate in (name.removesuffix(".gz"), name.removesuffix(".gz") + ".gz"):
            hits = sorted(folder.rglob(candidate))
            if len(hits) > 1 and "/" not in name:  # e.g. two P5 folders' sequential.txt: never guess
                raise DataFormatError(f"{folder}: several files named {candidate}: {[str(h) for h in hits[:4]]}; "
                                      "give the file itself (data.source=PATH)")
            if hits:
                return hits[0]
    raise DataFormatError(f"{folder}: no file named {' or '.join(names)} (or .gz) inside")


def _local_copy(spec: DatasetSpec) -> Path | None:
    """A copy of the data file under a folder listed in ``$GENREC_SOURCE`` (os.pathsep-separated)."""
    for folder in filter(None, os.environ.get("GENREC_SOURCE", "").split(os.pathsep)):
        try:
            return _find_in_folder(Path(folder), spec.member, spec.local_names)
        except DataFormatError:
            continue
    return None


OFFLINE_HINT = "pass data.source=PATH (the file, a folder holding it, or the official zip) or set GENREC_SOURCE=DIR to a folder holding it"


def locate(spec: DatasetSpec, cache_dir: str | None = None, source: str | None = None) -> Path | None:
    """The dataset's data file if it is on this machine: ``source`` (file, folder or zip archive)
    when given, else a folder in ``$GENREC_SOURCE``, else the download cache. None when ``source``
    does not exist, or (without one) when the file would have to be downloaded. Nothing is checked."""
    root = cache_root(cache_dir) / "raw" / spec.name
    if source is not None:
        src = Path(source)
        if src.is_dir():
            return _find_in_folder(src, spec.member, spec.local_names)
        if zipfile.is_zipfile(src):
            return _from_archive(src, spec.member, root / Path(spec.member).name)
        return src if src.is_file() else None
    if local := _local_copy(spec):
        return local
    path = root / Path(spec.member).name
    return path if path.exists() else None


def fetch(spec: DatasetSpec, cache_dir: str | None = None, source: str | None = None, check: bool = True) -> Path:
    """Return the local path of the dataset's data file: :func:`locate`'s, else downloaded once
    into the cache. Checks sizes and digests."""
    path = locate(spec, cache_dir, source)
    if path is None and source is not None:
        raise DataFormatError(f"data.source={source}: no such file or folder; {OFFLINE_HINT}")
    if path is None:
        path = cache_root(cache_dir) / "raw" / spec.name / Path(spec.member).name
        if spec.url is None:
            raise DataFormatError(f"dataset {spec.name} has no download address; {OFFLINE_HINT}")
        if spec.url.endswith(".zip"):
            archive = path.parent / Path(spec.url).name
            _download(spec.url, archive)
            if spec.archive_md5:
                verify(archive, None, {"md5": spec.archive_md5}, "archive")
            _from_archive(archive, spec.member, path)
            archive.unlink()
        else:
            _download(spec.url, path)
    if check:
        _verify_once(path, spec, cache_root(cache_dir) / "verified" / f"{spec.name}.json")
    for name, digest in spec.companions.items():
        _companion(spec, path, name, digest, check)
    return path


def _companion(spec: DatasetSpec, path: Path, name: str, digest: str, check: bool) -> Path:
    """A file the loader reads beside the data file: found there (or its .gz), else downloaded
    there from the data file's address folder; its digest checked."""
    found = next((p for p in (path.parent / name, path.parent / f"{name}.gz") if p.exists()), None)
    if found is None:
        if spec.url is None or spec.url.endswith(".zip"):
            raise DataFormatError(f"{path}: dataset {spec.name} needs {name} beside it")
        found = path.parent / name
        _download(f"{spec.url.rsplit('/', 1)[0]}/{name}", found)
    if check:
        verify(found, None, {"sha256": digest}, f"{spec.name} {name}")
    return found


def _verify_once(path: Path, spec: DatasetSpec, stamp: Path) -> None:
    """Verify a data file, remembering (path, size, mtime) so an unchanged file is hashed once."""
    st = path.stat()
    key = {"path": str(path.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns, "digests": spec.member_digests}
    if stamp.exists() and json.loads(stamp.read_text()) == key:
        return
    verify(path, spec.member_size, spec.member_digests, f"{spec.name} data file")
    if spec.member_digests:
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(json.dumps(key))
