"""examples/quickstart.ipynb runs top to bottom (nbclient) on a kernel of this interpreter."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[2] / "examples" / "quickstart.ipynb"


@pytest.fixture()
def kernel(tmp_path, monkeypatch):
    """A kernel spec named after this test that launches ``sys.executable`` (the venv's python, with ipykernel
    from the test extras), found through $JUPYTER_PATH; the kernel inherits this process' environment."""
    spec = tmp_path / "jupyter" / "kernels" / "mimlab-test"
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "mimlab test", "language": "python"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    src = str(Path(__file__).resolve().parents[2] / "platform")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH")) if p))
    return "mimlab-test"


@pytest.mark.timeout(900)  # wall time on a shared 2-core machine varies a lot
def test_quickstart_notebook_runs_top_to_bottom_and_shows_its_results(kernel):
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(nb, kernel_name=kernel, timeout=900, resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    text = "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                     if o.get("output_type") == "stream")
    assert "online k-NN top-1" in text and "untrained" in text
    assert "k-NN top-1 (k=20" in text
    assert "deletion" in text and "pointing" in text and "energy" in text
    figures = [any("image/png" in o.get("data", {}) for o in c.get("outputs", []))
               for c in nb.cells if c.cell_type == "code"]
    # the images, the three methods, and the [cls] attention before and after (the last cell)
    assert sum(figures) == 3 and figures[0] and figures[2] and figures[-1]
