"""The keys file: concurrent `mlserve keys` runs keep every change, and a rewrite never follows a
link left where its temp file goes."""

from __future__ import annotations

import multiprocessing

from mlserve import keys

NUM_WRITERS = 6


def _create(path, name, barrier) -> None:
    barrier.wait()
    keys.create_key(path, name, ("infer",))


def test_concurrent_creates_keep_every_key(tmp_path):
    """Each run reads, hashes for tens of ms, then writes: without the lock they all read the same
    file and the last rename wins (and their shared `.tmp` name made some fail outright)."""
    path = tmp_path / "keys.json"
    context = multiprocessing.get_context("fork")
    barrier = context.Barrier(NUM_WRITERS)
    workers = [context.Process(target=_create, args=(path, f"k{i}", barrier)) for i in range(NUM_WRITERS)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(120)
    assert [w.exitcode for w in workers] == [0] * NUM_WRITERS
    assert sorted(k.name for k in keys.read_keys(path).values()) == [f"k{i}" for i in range(NUM_WRITERS)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keys.json", "keys.json.lock"]  # no temp debris


def test_a_rewrite_never_follows_a_link_left_at_the_temp_name(tmp_path):
    path = tmp_path / "keys.json"
    token = keys.create_key(path, "a", ("infer",))
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    (tmp_path / "keys.json.tmp").symlink_to(victim)
    keys.revoke_key(path, "a")
    keys.create_key(path, "b", ("admin",))
    assert victim.read_text() == "precious"
    found = keys.read_keys(path)
    assert found[keys.split_token(token)[0]].revoked and {k.name for k in found.values()} == {"a", "b"}
    assert (path.stat().st_mode & 0o777) == 0o600
