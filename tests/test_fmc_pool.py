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


def mixed_blocks(seed: int) -> torch.Tensor:
    """64 blocks of 8x8, each zero, constant, of few values (a low block) or random, in a seeded order:
    with 8 blocks a part, each part's piece of a VBR section is a few bits to a few hundred, starting
    anywhere in a byte (and often ending in the byte it starts in)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(1, 16, 16, 16)
    for b, kind in enumerate(torch.randint(0, 4, (64,), generator=g).tolist()):
        c, r, w = b // 4, (b // 2) % 2, b % 2
        view = x[0, c, 8 * r:8 * r + 8, 8 * w:8 * w + 8]
        if kind == 1:
            view.fill_(float(torch.rand(1, generator=g)) + 0.5)
        elif kind == 2:
            view.copy_(torch.tensor([0.5, 2.0])[torch.randint(0, 2, (8, 8), generator=g)])
            view[0, :2] = torch.tensor([0.5, 2.0])  # the endpoints alone: exact with k - 1 bits
        elif kind == 3:
            view.copy_(torch.randn(8, 8, generator=g))
    return x.half()


@pytest.mark.parametrize("seed", range(4))
def test_parts_writing_pieces_of_one_byte_give_the_torch_path_bytes(set_parts, monkeypatch, seed):
    """The VBR layout (`fmc_vbr_pack`) runs on the scan's parts, each writing its piece of every
    section at once; a byte two pieces share is assembled after the threads finish."""
    x = mixed_blocks(seed)
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "0")
    want, want_stats = encode_with_stats(x, mode="vbr")
    monkeypatch.setenv("CHAINCOMP_FMC_NATIVE", "1")
    assert min(want_stats["mode_histogram"]["tag"].values()) > 0  # every tag, so 2-3 tag planes
    for parts in (1, 2, 3, 5, 8):
        set_parts(parts)
        assert native.threads(x.numel()) == parts
        assert encode_with_stats(x, mode="vbr") == (want, want_stats), parts
