"""The native kernel's worker threads (`native_pool.h`): any number of parts, callers on several
Python threads at once, and a process forked after the workers started all give the bytes and maps
of a one-thread call, and none of them hangs."""
import multiprocessing as mp
import threading

import pytest
import torch

from chaincomp.fmc import native
from chaincomp.fmc.codec import decode, encode, encode_with_stats

pytestmark = pytest.mark.skipif(native.library() is None, reason=f"native kernel unavailable: {native.reason}")


def relu_map(seed: int, shape=(2, 16, 32, 32)) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.relu(torch.randn(shape, generator=g))
    x[:, ::3] = 0  # whole zero channels: blocks of very different cost in one call
    return x.half()


@pytest.fixture
def set_parts(monkeypatch):
    """k parts per call on any map of this file (torch's thread setting restored after)."""
    monkeypatch.setattr(native, "MIN_VALUES_PER_THREAD", 256)
    before = torch.get_num_threads()
    yield torch.set_num_threads
    torch.set_num_threads(before)


def coded(x, parts: int, mode: str):
    torch.set_num_threads(parts)
    assert native.threads(x.numel()) == parts
    data = encode(x, mode=mode)
    return data, decode(data)


@pytest.mark.parametrize("mode", ["cbr", "vbr"])
def test_any_number_of_parts_gives_the_one_thread_result(set_parts, mode):
    x = relu_map(0)
    want, want_map = coded(x, 1, mode)
    for parts in (8, 3, 2, 5, 1, 2):  # more workers than parts, fewer, and back
        data, y = coded(x, parts, mode)
        assert data == want, parts
        assert torch.equal(y, want_map), parts


def test_part_counts_changing_call_after_call(set_parts):
    """Workers left idle by one call must not wake into the next (a part run twice would count its
    blocks twice in the stats, or a call would return before its parts finished)."""
    x = relu_map(2, shape=(1, 8, 32, 32))
    set_parts(1)
    want = {mode: encode_with_stats(x, mode=mode) for mode in ("cbr", "vbr")}
    for i in range(120):
        mode = ("cbr", "vbr")[i % 2]
        set_parts((8, 2, 5, 3, 7)[i % 5])
        data, stats = encode_with_stats(x, mode=mode)
        assert (data, stats) == want[mode], i


def test_concurrent_callers_get_their_own_results(set_parts):
    maps = [relu_map(s) for s in range(6)]
    set_parts(1)
    want = [encode(x, mode="cbr") for x in maps]
    set_parts(2)
    got: dict = {}

    def work(t: int) -> None:
        for _ in range(3):
            for i, x in enumerate(maps):
                got.setdefault((t, i), set()).add(encode(x, mode="cbr"))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=120)
    assert not any(th.is_alive() for th in threads), "a caller hung"
    assert all(got[(t, i)] == {want[i]} for t in range(4) for i in range(len(maps)))


def _child(x, queue) -> None:
    torch.set_num_threads(2)
    data = encode(x, mode="vbr")
    queue.put((data, decode(data).numpy()))  # numpy: a tensor would travel as a shared fd


def test_a_forked_child_starts_its_own_workers(set_parts):
    x = relu_map(1)
    want, want_map = coded(x, 2, "vbr")  # the parent's workers exist now
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    child = ctx.Process(target=_child, args=(x, queue))
    child.start()
    data, y = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0
    assert data == want and torch.equal(torch.from_numpy(y), want_map)
