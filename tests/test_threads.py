"""The default thread count: the physical cores of the process's affinity mask (SMT siblings once)."""

from __future__ import annotations

import os

from gadget.backends import default_threads, physical_cores


def fake_sysfs(tmp_path, siblings: dict[int, str]):
    for cpu, text in siblings.items():
        topology = tmp_path / f'cpu{cpu}' / 'topology'
        topology.mkdir(parents=True)
        (topology / 'thread_siblings_list').write_text(text + '\n')
    return tmp_path


def test_smt_siblings_count_once(tmp_path):
    # 4 cores with 2 hyper-threads each: CPU n and n+4 share a core (the usual Linux numbering)
    sysfs = fake_sysfs(tmp_path, {c: f'{c % 4},{c % 4 + 4}' for c in range(8)})
    assert physical_cores(range(8), sysfs) == 4
    assert physical_cores([0, 4], sysfs) == 1             # one core's two threads
    assert physical_cores([0, 1, 2, 3], sysfs) == 4       # one thread of each core
    assert physical_cores([0, 1, 5], sysfs) == 2


def test_ranges_and_unreadable_topology(tmp_path):
    sysfs = fake_sysfs(tmp_path, {0: '0-1', 1: '0-1', 2: '2-3', 3: '2-3', 4: 'garbage'})
    assert physical_cores(range(4), sysfs) == 2
    assert physical_cores([4, 5], sysfs) == 2             # unreadable or missing: each CPU is a core
    assert physical_cores([], sysfs) == 1


def test_default_is_within_the_affinity_mask():
    usable = len(os.sched_getaffinity(0))
    assert 1 <= default_threads() <= usable
    assert default_threads() == physical_cores(os.sched_getaffinity(0))


def test_thread_count_changes_keep_results_and_close_frees_the_pool():
    # The CPU backend's thread pool is gadget's own (made again on every change of thread count).
    import numpy as np

    from gadget import ggml as G
    from gadget.backends import Backend
    from gadget.compute import GgmlCompute

    rng = np.random.default_rng(0)
    a, b = rng.standard_normal((64, 96), dtype=np.float32), rng.standard_normal((48, 96), dtype=np.float32)
    backend = Backend('cpu', n_threads=2)
    with GgmlCompute({}, {'a': ('F32', (96, 64)), 'b': ('F32', (96, 48))},
                     lambda ctx, p, t: G.ggml_mul_mat(ctx, t['a'], t['b']), backend=backend) as c:
        results = []
        for n in (2, 1, 3, 2):
            backend.set_n_threads(n)
            results.append(c(a=a, b=b))
    for got in results:
        np.testing.assert_allclose(got, b @ a.T, rtol=1e-5, atol=1e-4)
    backend.close()
    backend.close()
    assert 'closed' in repr(backend)


def test_models_sharing_a_backend_compute_one_at_a_time_from_two_threads():
    # GGML's CPU backend has one thread pool and one work buffer: the backend's lock serialises
    # computes of different models on it, so each thread gets its own model's numbers.
    import threading

    import numpy as np

    from gadget import ggml as G
    from gadget.backends import Backend
    from gadget.compute import GgmlCompute

    rng = np.random.default_rng(1)
    with Backend('cpu', n_threads=2) as backend:
        jobs = []
        for k in range(2):
            a = rng.standard_normal((1024, 512), dtype=np.float32)
            b = rng.standard_normal((256, 512), dtype=np.float32)
            c = GgmlCompute({}, {'a': ('F32', (512, 1024)), 'b': ('F32', (512, 256))},
                            lambda ctx, p, t: G.ggml_mul_mat(ctx, t['a'], t['b']), backend=backend,
                            blas=False)
            c.set_input('a', a)
            c.set_input('b', b)
            jobs.append((c, b @ a.T))
        errors = []

        def work(c, expected):
            try:
                for _ in range(20):
                    np.testing.assert_allclose(c.compute(), expected, rtol=1e-4, atol=1e-3)
            except Exception as exc:      # reported below, in the test's thread
                errors.append(exc)

        # (without the lock the two computes deadlock in GGML's thread pool: daemon threads and a
        # bounded wait turn that into a failure instead of a hung test run)
        threads = [threading.Thread(target=work, args=job, daemon=True) for job in jobs]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not any(t.is_alive() for t in threads), 'the computes did not finish: deadlock'
        for c, _ in jobs:
            c.close()
    assert not errors, errors[0]
