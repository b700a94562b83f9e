"""The staging pool's sizing and reuse, and the copy-out that keeps answers apart, run on CPU with
pinning off (page-locking needs CUDA); the CUDA runs are in test_cuda_backends.py."""

from __future__ import annotations

import threading

import numpy as np
import torch

from mlserve.engine.pinned import DeviceCopier, PinnedPool


def test_a_key_keeps_its_buffer_until_a_batch_outgrows_it():
    pool = PinnedPool(pin_memory=False, min_capacity=4)
    first = pool.take("in:x", torch.float32, (3,))
    assert first.shape == (3,) and pool.num_allocations == 1 and pool.nbytes == 4 * 4
    same = pool.take("in:x", torch.float32, (2, 2))
    assert same.shape == (2, 2) and same.data_ptr() == first.data_ptr() and pool.num_allocations == 1
    grown = pool.take("in:x", torch.float32, (5,))
    assert pool.num_allocations == 2 and pool.nbytes == 8 * 4  # next power of two, the old buffer dropped
    smaller = pool.take("in:x", torch.float32, (1, 3))
    assert smaller.data_ptr() == grown.data_ptr() and pool.num_allocations == 2


def test_a_new_dtype_or_key_gets_its_own_buffer():
    pool = PinnedPool(pin_memory=False, min_capacity=1)
    floats = pool.take("in:x", torch.float32, (8,))
    ints = pool.take("in:x", torch.int64, (8,))
    assert ints.dtype == torch.int64 and pool.num_allocations == 2
    other = pool.take("in:n", torch.int64, (8,))
    assert other.data_ptr() != ints.data_ptr() and pool.num_allocations == 3
    assert floats.dtype == torch.float32  # the dropped buffer stays valid for whoever still holds it


def test_capacity_rounds_up_to_a_power_of_two():
    pool = PinnedPool(pin_memory=False, min_capacity=1)
    pool.take("out:y", torch.float16, (1000,))
    assert pool.nbytes == 1024 * 2
    pool.take("out:y", torch.float16, (1024,))
    assert pool.num_allocations == 1
    pool.take("out:y", torch.float16, (1025,))
    assert pool.nbytes == 2048 * 2


def test_zero_rows_and_scalars_take_a_view():
    pool = PinnedPool(pin_memory=False)
    assert pool.take("in:x", torch.float32, (0, 3)).shape == (0, 3)
    assert pool.take("in:s", torch.int32, ()).shape == ()


def test_to_device_stages_any_layout_of_the_array():
    copier = DeviceCopier(torch.device("cpu"), pin_memory=False)
    strided = np.arange(24, dtype=np.int64).reshape(4, 6)[::-1, ::2]
    read_only = np.arange(6, dtype=np.float16).reshape(2, 3)
    read_only.flags.writeable = False
    cases = ((strided, torch.int64), (read_only, torch.float16), (np.array([True, False]), torch.bool))
    for array, dtype in cases:
        staged = copier.to_device("x", array)
        assert staged.dtype == dtype
        np.testing.assert_array_equal(staged.numpy(), array)


def test_answers_never_alias_the_buffer_the_next_batch_overwrites():
    """The hazard: to_host returning a view of staging would let batch 2 rewrite batch 1's answer."""
    copier = DeviceCopier(torch.device("cpu"), pin_memory=False)
    first = copier.to_host({"y": torch.full((4, 3), 1.0), "n": torch.arange(4)})
    kept = {name: a.copy() for name, a in first.items()}
    second = copier.to_host({"y": torch.full((4, 3), 7.0), "n": torch.arange(4) * 10})
    for name in first:
        np.testing.assert_array_equal(first[name], kept[name])
        assert not np.shares_memory(first[name], second[name])
    np.testing.assert_array_equal(second["y"], np.full((4, 3), 7.0, np.float32))
    staging = copier.pool.take("out:y", torch.float32, (4, 3)).numpy()
    assert not np.shares_memory(second["y"], staging)
    assert copier.pool.num_allocations == 2  # one buffer per output, reused by the second batch


def test_each_worker_thread_has_its_own_pool():
    copier = DeviceCopier(torch.device("cpu"), pin_memory=False)
    pools = []
    threads = [threading.Thread(target=lambda: pools.append(copier.pool)) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert len({id(p) for p in pools}) == 3 and copier.pool not in pools
