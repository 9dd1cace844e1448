"""Ray Data stays quiet in our processes and in Ray's workers (a sweep's trials stream one dataset per epoch): no
progress bars, no INFO lines, unless the user asks for them."""

from __future__ import annotations

import logging


def test_ray_data_progress_bars_and_info_lines_are_off_in_the_driver_and_the_workers(ray_local):
    ray = ray_local
    from ray.data import DataContext

    def seen() -> tuple[bool, int, str | None]:
        import logging
        import os

        from ray.data import DataContext

        return (DataContext.get_current().enable_progress_bars, logging.getLogger("ray.data").getEffectiveLevel(),
                os.environ.get("RAY_DATA_DISABLE_PROGRESS_BARS"))

    assert DataContext.get_current().enable_progress_bars is False
    assert logging.getLogger("ray.data").getEffectiveLevel() == logging.WARNING
    # a worker process (where a trial's Ray Data stream runs) inherits the same defaults
    assert ray.get(ray.remote(seen).remote()) == (False, logging.WARNING, "1")


def test_a_users_own_ray_data_settings_are_kept(monkeypatch):
    from mimlab.runtime.ray_env import apply_default_env

    monkeypatch.setenv("RAY_DATA_DISABLE_PROGRESS_BARS", "0")
    monkeypatch.setenv("RAY_DATA_LOG_LEVEL", "INFO")
    apply_default_env()
    import os

    assert os.environ["RAY_DATA_DISABLE_PROGRESS_BARS"] == "0" and os.environ["RAY_DATA_LOG_LEVEL"] == "INFO"
