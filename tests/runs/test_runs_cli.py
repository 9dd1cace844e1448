"""`platform runs compare` answers bad stores with one line, at once."""

from __future__ import annotations


def test_unreachable_tracking_server_fails_fast_with_one_line(cli_error):
    # port 9 (discard) has no listener on 127.0.0.1: MLflow's own client would retry for ~4 minutes
    cli_error(["runs", "compare", "masking-layers", "--tracking-uri", "http://127.0.0.1:9"],
              "http://127.0.0.1:9", "unreachable", timeout=30, subprocess=True)


def test_missing_sqlite_store_is_one_line(cli_error, tmp_path):
    store = tmp_path / "nope.db"
    cli_error(["runs", "compare", "masking-layers", "--tracking-uri", f"sqlite:///{store}"], str(store),
              "does not exist", timeout=60, subprocess=True)
    assert not store.exists()  # reading must not create an empty store


def test_unreachable_server_from_the_environment_fails_fast(cli_error):
    cli_error(["runs", "compare", "masking-layers"], "http://127.0.0.1:9", "unreachable", timeout=30,
              subprocess=True, env={"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"})
