"""Process settings for the numeric work of a compile (native.py)."""

from __future__ import annotations

from threadpoolctl import threadpool_info

from onnxopt.native import malloc_arenas, numeric_limits


def _blas_threads() -> set[int]:
    return {info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"}


def test_numeric_limits_put_blas_on_one_thread_and_restore_it():
    before = _blas_threads()
    with numeric_limits():
        assert _blas_threads() <= {1}
    assert _blas_threads() == before


def test_malloc_arenas_is_a_no_op_where_there_is_no_glibc(monkeypatch):
    import onnxopt.native as native

    monkeypatch.setattr(native, "_glibc", lambda: None)
    ran = []
    with malloc_arenas(1):
        ran.append(True)
    assert ran == [True]


def test_malloc_arenas_sets_and_resets_glibc_limit(monkeypatch):
    import onnxopt.native as native

    calls = []

    class FakeLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(native, "_glibc", lambda: FakeLibc())
    with malloc_arenas(2):
        assert calls == [(native.M_ARENA_MAX, 2)]
    assert calls[-1] == (native.M_ARENA_MAX, 0)
