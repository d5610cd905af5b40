"""Every shipped config parses, validates and builds its model; presets match PAPERS.md §1.2."""

from pathlib import Path

import pytest

from genrec.config import load_config
from genrec.errors import ConfigError
from genrec.models import build_model

ROOT = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(p for p in ROOT.rglob("*.yaml") if p.parent.name not in ("sweeps", "spaces"))  # spaces: tests/experiments/test_tune.py
SWEEPS = sorted((ROOT / "sweeps").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_config_builds(path):
    cfg = load_config(path)
    assert path.read_text().startswith(f"# genrec train configs/{path.parent.name}/{path.name}")
    cfg.model.num_items = 10  # decided by the data, as the attribute table's shape below
    if cfg.model.item_features != "none":
        cfg.model.num_attribute_tokens, cfg.model.max_item_attributes = 5, 3
    if cfg.model.behaviour_embedding:
        cfg.model.num_behaviours = 4  # decided by the data (behaviour values, or own/context x domain)
    if cfg.model.user_features != "none":
        cfg.model.user_attributes, cfg.model.max_user_attributes = ["gender=F", "age=25-34"], 2  # decided by the data
    model = build_model(cfg.model)
    assert sum(t.numel() for t in [*model.parameters(), *model.buffers()]) > 0  # popularity: counts only


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_points_build(path):
    from genrec.experiments.scaling import SweepConfig, point_config

    assert path.read_text().startswith(f"# genrec scale configs/sweeps/{path.name}")
    sweep, base_dir = SweepConfig.load(path)
    for p in sweep.points():
        cfg = point_config(sweep, base_dir, p)
        cfg.model.num_items = 10
        assert cfg.model.num_layers == p["layers"] and cfg.model.embedding_dim == p["width"]
        assert sum(t.numel() for t in build_model(cfg.model).parameters()) > 0


def test_reference_presets():
    big = load_config((ROOT / "ml-20m/hstu-large.yaml")).model
    assert (big.embedding_dim, big.num_layers, big.num_heads, big.attention_dim, big.max_seq_len) == (256, 16, 8, 32, 200)
    books = load_config((ROOT / "books/hstu.yaml"))
    assert books.train.num_negatives == 512 and books.model.dropout == 0.5 and books.train.epochs == 201
    assert load_config((ROOT / "ml-1m/sasrec.yaml")).model.name == "sasrec"


def test_override_beats_preset(tmp_path):
    assert load_config((ROOT / "ml-1m/hstu-large.yaml"), ["model.num_layers=3"]).model.num_layers == 3
    with pytest.raises(ConfigError, match="model.preset='nope'"):
        load_config((ROOT / "ml-1m/hstu.yaml"), ["model.preset=nope"])


# shipped unified configs chosen among benchmarks/unified.py's rows: each is its row's base config plus the row's
# overrides, so the row's numbers in benchmarks/RESULTS.md are this config's
CHOSEN = [
    ("ml-100k/unified-hstu.yaml", "ml-100k/unified-hstu-multitask.yaml", ["train.epochs=80"]),
    ("instruments/unified-hstu.yaml", "instruments/unified-hstu-multitask.yaml",
     ["task.weighter=constant", "task.hard_negatives=0", "task.potential_positive_alpha=0"]),
    ("instruments/unified-llama.yaml", "instruments/unified-llama-multitask.yaml", []),
    ("ml-100k/unified-llama.yaml", "ml-100k/unified-llama-multitask.yaml",
     ["train.epochs=80", "task.weighter=constant", "task.hard_negatives=0", "task.potential_positive_alpha=0"]),
]


@pytest.mark.parametrize("chosen, base, overrides", CHOSEN, ids=[c[0] for c in CHOSEN])
def test_chosen_unified_configs_equal_their_benchmark_rows(chosen, base, overrides):
    import dataclasses

    want = dataclasses.asdict(load_config(ROOT / base, overrides)) | {"name": None}  # the run's name is the file's
    got = dataclasses.asdict(load_config(ROOT / chosen)) | {"name": None}
    assert f"= {Path(base).name}" in (ROOT / chosen).read_text().split("\ndata:")[0]
    assert got == want
