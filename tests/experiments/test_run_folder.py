"""Run folders are claimed before a run: writable, locked for the run's lifetime, never silently reused."""

import os
import signal
import subprocess
import sys

import pytest

from genrec.errors import GenrecError
from genrec.experiments.run_folder import LOCK, claim


def _old_run(folder):
    folder.mkdir()
    (folder / "config.yaml").write_text("name: old\n")
    (folder / "log.jsonl").write_text('{"epoch": 1}\n')
    (folder / "best").mkdir()
    (folder / "best" / "model.safetensors").write_bytes(b"x")


def test_a_folder_holding_a_run_is_refused_without_resume_or_overwrite(tmp_path):
    _old_run(tmp_path / "run")
    with pytest.raises(GenrecError) as err:
        with claim(tmp_path / "run"):
            pass
    assert str(tmp_path / "run") in str(err.value) and "--resume" in str(err.value) and "--overwrite" in str(err.value)
    assert (tmp_path / "run" / "log.jsonl").exists()  # nothing touched
    with claim(tmp_path / "run", resume=True):
        assert (tmp_path / "run" / "log.jsonl").exists()


def test_overwrite_deletes_the_old_run_but_never_a_folder_that_is_not_one(tmp_path):
    _old_run(tmp_path / "run")
    with claim(tmp_path / "run", overwrite=True) as out:
        assert sorted(p.name for p in out.iterdir()) == [LOCK]
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "thesis.tex").write_text("precious")
    with pytest.raises(GenrecError, match="does not look like a genrec run folder"):
        with claim(tmp_path / "home", overwrite=True):
            pass
    assert sorted(p.name for p in (tmp_path / "home").iterdir()) == ["thesis.tex"]  # not even a .lock left
    with pytest.raises(GenrecError, match="give one of them"):
        with claim(tmp_path / "x", resume=True, overwrite=True):
            pass


def test_a_second_claim_fails_at_once_and_a_killed_holder_releases_it(tmp_path):
    out = tmp_path / "run"
    with claim(out):
        with pytest.raises(GenrecError, match=f"in use by another training \\(pid {os.getpid()} on "):
            with claim(out, resume=True):
                pass
    # another process holds it, then dies by SIGKILL: the kernel drops its lock
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time\nfrom genrec.experiments.run_folder import claim\n"
         "with claim(sys.argv[1], resume=True):\n    print('held', flush=True)\n    time.sleep(120)", str(out)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(GenrecError, match=f"pid {holder.pid} "):
            with claim(out, resume=True):
                pass
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    with claim(out, resume=True):
        assert (out / LOCK).read_text().startswith(f"pid {os.getpid()} ")
    assert (out / LOCK).read_text() == ""  # a finished run's lock names nobody


def test_an_unwritable_folder_is_a_clear_error(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(GenrecError, match="cannot write the run folder there"):
        with claim(tmp_path / "file" / "run"):
            pass


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders; the case above covers the check")
def test_a_read_only_folder_is_a_clear_error(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(GenrecError, match="cannot write the run folder there"):
            with claim(tmp_path / "ro" / "run"):
                pass
        with pytest.raises(GenrecError, match="cannot write the run folder there"):
            with claim(tmp_path / "ro"):
                pass
    finally:
        (tmp_path / "ro").chmod(0o755)
