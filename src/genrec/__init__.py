"""genrec: generative recommendation — HSTU / SASRec sequence models from raw logs to served models."""

__version__ = "0.1.0"


def __getattr__(name: str):  # keep ``import genrec`` light; load the API on first use
    if name == "Recommender":
        from genrec.recommender import Recommender

        return Recommender
    if name in ("ExperimentConfig", "load_config"):
        from genrec import config

        return getattr(config, name)
    raise AttributeError(name)


__all__ = ["ExperimentConfig", "Recommender", "load_config"]
