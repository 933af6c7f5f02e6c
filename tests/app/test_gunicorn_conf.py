"""gunicorn.conf.py: the settings `gunicorn --workers 3 wsgi:app` picks up from the root."""

from __future__ import annotations

import runpy
from types import SimpleNamespace

import pytest
from prometheus_client import multiprocess

from app.config import PROJECT_ROOT

CONF = PROJECT_ROOT / "gunicorn.conf.py"


def test_web_workers_serve_several_requests_at_once():
    # More than one thread makes gunicorn run its gthread worker instead of the sync one.
    assert runpy.run_path(str(CONF))["threads"] > 1


@pytest.mark.parametrize("multiproc", [True, False])
def test_an_exited_worker_leaves_the_live_gauges_only_in_multiprocess_mode(
        multiproc, monkeypatch, tmp_path):
    marked: list[int] = []
    monkeypatch.setattr(multiprocess, "mark_process_dead", marked.append)
    if multiproc:
        monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    else:
        monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
    runpy.run_path(str(CONF))["child_exit"](None, SimpleNamespace(pid=4242))
    assert marked == ([4242] if multiproc else [])
