"""Every epoch stream is a new Ray Data execution: on the 2-CPU runtime its first two tasks must run together.

Ray Data 2.60 gives a new execution 0 CPUs for its first second (its resource limits are read before the
autoscaling coordinator's reservation is back, then cached for 1 s), so a second task waited ~1 s behind the first;
``mimlab.runtime.ray_env`` shortens that refresh (see ``_prompt_ray_data``)."""

from __future__ import annotations


def _intervals(ray, tasks: int, seconds: float) -> list[tuple[float, float]]:
    import time

    import numpy as np

    def busy(batch: dict) -> dict:
        start = time.time()
        time.sleep(seconds)
        return {"start": np.array([start]), "end": np.array([time.time()])}

    ds = ray.data.range(tasks, override_num_blocks=tasks).map_batches(busy, batch_size=1, num_cpus=1)
    rows = list(ds.iter_rows())
    return sorted((float(r["start"]), float(r["end"])) for r in rows)


def test_a_new_execution_runs_two_tasks_at_once_from_its_start(ray_local):
    from mimlab.runtime.ray_env import ensure_ray

    ensure_ray()  # what every epoch stream calls in the process that executes it
    _intervals(ray_local, 2, 0.05)  # the runtime's worker processes exist (their start-up is once per run)
    for _ in range(2):  # two fresh executions: each pays the start-up latency
        (s0, e0), (s1, e1), *_ = _intervals(ray_local, 4, 0.8)
        assert s1 < e0, f"the second task started {s1 - s0:.2f} s after the first, which ran {e0 - s0:.2f} s"
