"""An Anonymizer used before fork() works in the forked children (issue 25, case 4).

A forked child has only the thread that forked: ONNX Runtime's and the redaction pool's
worker threads stay in the parent, so a child that used the parent's anonymiser slept
forever with no error. The package now builds the anonymiser again in a child on first use.
Tested the way services meet it: multiprocessing's fork pool and a real pre-forking server
(gunicorn --preload, which imports the application, and so loads the models, before it
forks its workers)."""

from __future__ import annotations

import json
import multiprocessing
import os
import re
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import obscura
from photos import EVAL, must_cover_faces, photo

NAME = next(iter(must_cover_faces()))

# Set in the parent before the pool forks; the children inherit it.
_inherited: obscura.Anonymizer | None = None


def _regions_in_child(name: str) -> tuple[int, list]:
    assert _inherited is not None
    result = _inherited.anonymize(photo(name))
    return os.getpid(), result.regions


def test_a_fork_pool_uses_an_anonymizer_made_and_used_before_the_fork() -> None:
    global _inherited
    _inherited = obscura.Anonymizer()
    expected = _inherited.anonymize(photo(NAME)).regions
    assert expected, "the photo has faces"
    context = multiprocessing.get_context("fork")
    with context.Pool(2) as pool:
        # A hang here was the bug: wait a bounded time, then fail instead of hanging.
        results = pool.map_async(_regions_in_child, [NAME] * 4).get(timeout=300)
    pids = {pid for pid, _ in results}
    assert os.getpid() not in pids, "the work ran in the children"
    for _, regions in results:
        assert regions == expected
    # The parent's own anonymiser still works after its children used theirs.
    assert _inherited.anonymize(photo(NAME)).regions == expected


APP = textwrap.dedent(
    """
    import json, os, obscura
    anonymizer = obscura.Anonymizer()
    # Used in the master, before gunicorn forks its workers.
    WARM = anonymizer.anonymize(open({photo!r}, "rb").read())

    def app(environ, start_response):
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        try:
            result = anonymizer.anonymize(body)
        except obscura.InvalidImage as e:
            start_response("400 Bad Request", [("Content-Type", "text/plain")])
            return [str(e).encode()]
        start_response("200 OK", [("Content-Type", "image/jpeg"), ("X-Regions", json.dumps(result.report["regions"])), ("X-Pid", str(os.getpid()))])
        return [result.data]
    """
)


def test_gunicorn_preload_workers_anonymise_with_the_masters_anonymizer(tmp_path: Path) -> None:
    import gunicorn  # noqa: F401  (python/requirements-test.txt installs it)

    image = EVAL / "images" / NAME
    (tmp_path / "app.py").write_text(APP.format(photo=str(image)))
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "--preload", "--workers", "2", "--timeout", "300", "--bind", "127.0.0.1:0", "app:app"],
        cwd=tmp_path,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = None
        deadline = time.monotonic() + 120
        lines = []
        while port is None and time.monotonic() < deadline:
            line = server.stderr.readline()
            if not line:
                break
            lines.append(line)
            found = re.search(r"Listening at: http://127\.0\.0\.1:(\d+)", line)
            if found:
                port = int(found.group(1))
        assert port, "gunicorn did not start:\n" + "".join(lines)
        expected = obscura.Anonymizer().anonymize(image.read_bytes()).report["regions"]
        pids = set()
        for _ in range(6):
            request = urllib.request.Request(f"http://127.0.0.1:{port}/", data=image.read_bytes(), method="POST")
            # A hung worker was the bug: gunicorn's own timeout is longer than this one.
            with urllib.request.urlopen(request, timeout=240) as response:
                assert response.status == 200
                assert json.loads(response.headers["X-Regions"]) == expected
                pids.add(response.headers["X-Pid"])
                obscura_output = response.read()
            assert obscura_output[:2] == b"\xff\xd8", "a JPEG came back"
        assert str(server.pid) not in pids, "the master never serves requests"
    finally:
        server.terminate()
        server.wait(timeout=60)
