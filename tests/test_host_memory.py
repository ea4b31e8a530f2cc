"""Host memory hygiene: glibc arena cap / trim (fst_jax.host_memory) and the sampler releasing
its prepared weights before a train update (Sampler.release_prepared)."""

import gc
import os
import subprocess
import sys
import textwrap
import weakref

import jax
import pytest

from fst_jax import host_memory
from fst_jax.models import get_config, init_params
from fst_jax.models.random_init import tiny_tokenizer
from fst_jax.sampling import Sampler, SamplingParams, build_bank

glibc = pytest.mark.skipif(host_memory._glibc() is None, reason="needs glibc (Linux)")


def test_user_setting_is_kept_and_bad_caps_fail():
    assert host_memory.configure_malloc(2, environ={"MALLOC_ARENA_MAX": "8"}) is None
    with pytest.raises(ValueError, match="arena_max=0"):
        host_memory.configure_malloc(0, environ={})


@glibc
def test_cap_is_set_when_the_user_set_none():
    assert host_memory.configure_malloc(host_memory.DEFAULT_ARENA_MAX, environ={}) == 2


@glibc
def test_trim_returns_freed_heap_pages_to_the_os():
    # Small blocks (below glibc's mmap threshold) live in the heap; the last one stays allocated
    # so the freed ones below it cannot go back by shrinking the heap top: only malloc_trim
    # returns them. Measured by the kernel (/proc/self/statm), in a fresh process.
    code = textwrap.dedent("""
        import ctypes, os, sys
        sys.path.insert(0, os.getcwd())
        from fst_jax import host_memory
        libc = host_memory._glibc()
        libc.malloc.restype = ctypes.c_void_p
        libc.free.argtypes = [ctypes.c_void_p]
        page = os.sysconf("SC_PAGE_SIZE")
        rss = lambda: int(open("/proc/self/statm").read().split()[1]) * page
        n, size = 4000, 64 * 1024  # 250 MiB
        blocks = [libc.malloc(size) for _ in range(n)]
        for b in blocks:
            ctypes.memset(b, 1, size)
        for b in blocks[:-1]:
            libc.free(b)
        before = rss()
        trimmed = host_memory.trim()
        print(before, rss(), int(trimmed))
    """)
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_="1000000000000")  # no automatic trimming
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                         check=True).stdout  # fmt: skip
    before, after, trimmed = map(int, out.split())
    freed = 3999 * 64 * 1024
    assert trimmed == 1
    assert before - after > 0.8 * freed, (before, after)


def test_release_prepared_frees_the_stale_version_and_the_next_call_prepares_anew():
    tok, cfg = tiny_tokenizer(), get_config("tiny_llama")
    params = init_params(cfg, jax.random.PRNGKey(0))
    sampler = Sampler(cfg, tok, kernel_layout="out_in")  # a real copy: transposed kernels
    version = jax.tree.map(lambda x: x + 0, params)  # the θ a train update will replace
    prepared = sampler.prepare_params(version)
    refs = [weakref.ref(x) for x in jax.tree.leaves(version) + jax.tree.leaves(prepared.params)]
    del version, prepared
    gc.collect()
    assert all(r() is not None for r in refs)  # the memo keeps θ and its prepared copy alive
    sampler.release_prepared()
    gc.collect()
    assert [r for r in refs if r() is not None] == []
    # Results do not depend on the release: same tokens as a sampler that never released.
    bank = build_bank(tok, ["Be brief.", "You are a pirate."], max_prompts=2, max_len=48)
    sp = SamplingParams(greedy=True, max_new_tokens=4)
    key = jax.random.PRNGKey(0)
    a = sampler.sample(params, bank, [0, 1], ["Say hi", "Why?"], key, sp)
    b = Sampler(cfg, tok, kernel_layout="out_in").sample(
        params, bank, [0, 1], ["Say hi", "Why?"], key, sp
    )
    assert [list(t) for t in a.completion_tokens] == [list(t) for t in b.completion_tokens]
