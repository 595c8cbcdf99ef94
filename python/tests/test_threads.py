"""One Anonymizer shared by many threads: the same regions as one thread finds, and the
GIL released while an image is processed (other Python threads keep running)."""

from __future__ import annotations

import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import obscura
from photos import must_cover_faces, photo


def test_many_threads_share_one_anonymizer(anonymizer: obscura.Anonymizer) -> None:
    names = list(must_cover_faces())[:6]
    expected = {n: anonymizer.anonymize(photo(n)).regions for n in names}
    jobs = names * 4 + [None] * 4  # bad inputs interleaved with good ones
    with ThreadPoolExecutor(max_workers=8) as pool:

        def run(name):
            if name is None:
                try:
                    anonymizer.anonymize(b"\xff\xd8\xff\xe0 truncated")
                except obscura.InvalidImage as e:
                    return e
                raise AssertionError("a bad input passed")
            return anonymizer.anonymize(photo(name))

        results = list(pool.map(run, jobs))
    for name, result in zip(jobs, results):
        if name is None:
            assert isinstance(result, obscura.CorruptImage)
        else:
            assert result.regions == expected[name], name


def test_the_gil_is_released_while_an_image_is_processed(anonymizer: obscura.Anonymizer) -> None:
    # With a switch interval of minutes, a thread that holds the GIL keeps it until it
    # blocks or releases it. This thread counts while a worker anonymises; the worker
    # reads the count as soon as its calls return. Had the calls held the GIL, this
    # thread could not have counted at all meanwhile.
    data = photo(next(iter(must_cover_faces())))
    inside = threading.Event()
    done = threading.Event()
    count = 0
    seen_by_worker = []

    def worker() -> None:
        inside.set()
        for _ in range(3):
            anonymizer.anonymize(data)
        seen_by_worker.append(count)
        done.set()

    interval = sys.getswitchinterval()
    sys.setswitchinterval(300)
    try:
        thread = threading.Thread(target=worker)
        thread.start()
        inside.wait()
        while not done.is_set():
            count += 1
            time.sleep(0.001)  # lets the worker take the GIL back when its call returns
        thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert seen_by_worker[0] > 0, "this thread never ran while the worker was inside anonymize()"
