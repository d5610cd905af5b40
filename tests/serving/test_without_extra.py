"""Without the serve extra, genrec still imports and works, and `genrec serve` says what to install."""

import subprocess
import sys

BLOCK = """
import importlib.abc, sys
class NoServeExtra(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("fastapi", "uvicorn", "prometheus_client", "faiss", "httpx", "starlette", "orjson"):
            raise ModuleNotFoundError(name)
sys.meta_path.insert(0, NoServeExtra())
"""


def test_core_imports_and_serve_names_the_extra(checkpoints):
    code = BLOCK + f"""
import genrec, genrec.cli, genrec.serving
from genrec import Recommender
rec = Recommender.load({str(checkpoints["retrieval"])!r})
assert rec.recommend(["i1"], k=2, timestamps=[1])
raise SystemExit(genrec.cli.main(["serve", {str(checkpoints["retrieval"])!r}]))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "genrec serve needs fastapi, uvicorn, prometheus-client, orjson: pip install 'genrec[serve]'" in proc.stderr
