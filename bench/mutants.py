"""Mutation testing of the numerical cores with mutmut: killed / timed-out / survived mutants per module.

For each module, mutmut (a maintained mutation tool, `pip install -e ".[dev]"`) rewrites the module into many
small variants (an operator flipped, a constant changed, an argument dropped) and runs that module's own tests
(its test folder, or the files of it that call the module: see MODULES) against each. A mutant the tests catch is *killed*; one that makes the tests hang is *timed out* (caught
too: the suite noticed); one the tests pass on is a *survivor* — a change to the code that no test can see. The
survivors judged equivalent (no observable change) are listed, with the reason, in bench/mutants-equivalent.md.

How it runs: the repository's tracked files (``git archive HEAD`` of the checkout this script sits in, or the
working tree with ``--working-tree``) are laid out in a scratch folder with ``mimlab/`` at the top (mutmut maps
file paths to module names, and our source folder ``platform/`` is not a package), and mutmut is started with the
editable install's ``platform/`` entry removed from ``sys.path`` so the tests import the mutated copy.

    python bench/mutants.py --children 1          # every module below: 20-70 s each, ~5 min in all, one core
    python bench/mutants.py --module pretrain/loss.py --survivors
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# module (relative to platform/mimlab) -> its own tests (a folder or files). mutmut runs, for each mutant, only the
# tests of the selection that call the mutated function, but it first runs the whole selection (twice) to learn that,
# and a test that reaches a function through the CLI is slow for every mutant of it. So where the module's folder
# holds CLI / Ray tests (tests/metrics: the saliency-eval and study CLIs start Ray; tests/explain: the explain CLI),
# the entry names the test files that exercise the module directly.
MODULES: dict[str, tuple[str, ...]] = {
    "explain/scores.py": ("tests/explain/test_scores.py", "tests/explain/test_maps.py",
                          "tests/explain/test_contract.py"),
    "explain/cam.py": ("tests/explain/test_cam_goldens.py", "tests/explain/test_maps.py",
                       "tests/explain/test_contract.py"),
    "metrics/perturbation.py": ("tests/metrics/test_metric_perturbation.py",
                                "tests/metrics/test_metric_faithfulness.py"),
    "metrics/faithfulness.py": ("tests/metrics/test_metric_faithfulness.py",),
    "evaluation/knn.py": ("tests/evaluation/test_knn.py",),
    "pretrain/loss.py": ("tests/pretrain/test_loss.py",),
    "masking/attention_guided.py": ("tests/masking",),
    "masking/blockwise.py": ("tests/masking",),
}
TARGET = 0.90
STATUSES = ("killed", "timeout", "survived", "no tests", "suspicious", "skipped", "segfault", "not checked")

_MUTMUT = (
    "import sys\n"
    "sys.path[:] = [p for p in sys.path if not p.rstrip('/').endswith('/platform')]\n"
    "sys.argv = ['mutmut', *sys.argv[1:]]\n"
    "from mutmut.__main__ import cli\n"
    "cli()\n"
)


def _lay_out(scratch: Path, working_tree: bool) -> None:
    """Copy the repository into ``scratch`` with the import package at the top (``scratch/mimlab``)."""
    if working_tree:
        files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, check=True,
                               capture_output=True, text=True).stdout.split()
        for f in files:
            if (ROOT / f).is_file():
                (scratch / f).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(ROOT / f, scratch / f)
    else:
        archive = subprocess.run(["git", "archive", "HEAD"], cwd=ROOT, check=True, capture_output=True).stdout
        with tempfile.TemporaryFile() as fh:
            fh.write(archive)
            fh.seek(0)
            with tarfile.open(fileobj=fh) as tar:
                tar.extractall(scratch, filter="data")
    shutil.move(scratch / "platform" / "mimlab", scratch / "mimlab")


def _configure(scratch: Path, module: str, tests: tuple[str, ...]) -> None:
    """Append a [tool.mutmut] table for one module and its tests to the scratch pyproject.toml."""
    text = (scratch / "pyproject.toml").read_text()
    text = text.split("\n[tool.mutmut]")[0]
    text += (
        "\n[tool.mutmut]\n"
        'source_paths = ["mimlab"]\n'
        f'only_mutate = ["mimlab/{module}"]\n'
        f"pytest_add_cli_args_test_selection = {json.dumps(list(tests))}\n"
        'pytest_add_cli_args = ["-p", "no:timeout", "-q"]\n'
    )
    (scratch / "pyproject.toml").write_text(text)


def _mutmut(scratch: Path, *args: str, timeout: float | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", MLFLOW_DISABLE_TELEMETRY="true",
               DO_NOT_TRACK="true", HF_HUB_OFFLINE="1",
               # mutmut forks each mutant's run from a process that has already run the tests once; a forked child
               # that needs a lock or thread pool another thread of the parent held at the fork deadlocks, and
               # mutmut then reports a *timeout* (caught) whatever the tests would have said. Two such: an OpenMP
               # parallel region of torch (gomp barrier; one intra-op thread has no team) and tqdm's progress-bar
               # lock, held by its monitor thread (Score-/Ablation-CAM draw bars; disabled bars start no monitor).
               OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TQDM_DISABLE="1")
    return subprocess.run([sys.executable, "-c", _MUTMUT, *args], cwd=scratch, env=env, capture_output=True,
                          text=True, timeout=timeout)


def run_module(scratch: Path, module: str, tests: tuple[str, ...], children: int,
               timeout: float) -> dict[str, object]:
    """Mutate one module, run its tests against every mutant; return counts per status and the survivors."""
    shutil.rmtree(scratch / "mutants", ignore_errors=True)
    _configure(scratch, module, tests)
    t0 = time.perf_counter()
    run = _mutmut(scratch, "run", "--max-children", str(children), timeout=timeout)
    seconds = time.perf_counter() - t0
    listing = _mutmut(scratch, "results", "--all", "true", timeout=300).stdout
    counts = {s: 0 for s in STATUSES}
    survivors: list[str] = []
    untested: list[str] = []
    for line in listing.splitlines():
        if ":" not in line:
            continue
        name, _, status = line.strip().rpartition(": ")
        if status in counts:
            counts[status] += 1
            if status == "survived":
                survivors.append(name)
            elif status == "no tests":
                untested.append(name)
    total = sum(counts.values())
    if total == 0:
        tail = (run.stdout + run.stderr).replace("\r", "\n").strip().splitlines()[-5:]
        raise SystemExit(f"error: mutmut produced no mutants for {module}: {' | '.join(tail)}")
    return {"module": module, "tests": list(tests), "seconds": round(seconds, 1), "total": total, **counts,
            "survivors": survivors, "untested": untested}


def _diff(scratch: Path, name: str) -> str:
    return _mutmut(scratch, "show", name, timeout=120).stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--module", action="append", help="module under platform/mimlab (default: all of MODULES)")
    ap.add_argument("--children", type=int, default=2, help="parallel mutant runs (default 2)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per module before giving up")
    ap.add_argument("--working-tree", action="store_true", help="mutate the working tree, not HEAD")
    ap.add_argument("--survivors", action="store_true", help="print the diff of every survivor")
    ap.add_argument("--json", type=Path, help="also write the table as JSON")
    args = ap.parse_args()
    modules = args.module or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        raise SystemExit(f"error: --module {unknown[0]!r} is not one of {', '.join(MODULES)}")
    if shutil.which("git") is None:
        raise SystemExit("error: bench/mutants.py needs git to copy the repository")
    try:
        import mutmut  # noqa: F401
    except ImportError:
        raise SystemExit('error: mutmut is not installed: pip install -e ".[dev]"') from None

    rows = []
    with tempfile.TemporaryDirectory(prefix="mimlab-mutants-") as tmp:
        scratch = Path(tmp)
        _lay_out(scratch, args.working_tree)
        for module in modules:
            row = run_module(scratch, module, MODULES[module], args.children, args.timeout)
            rows.append(row)
            caught = row["killed"] + row["timeout"]
            print(f"{module:30s} {row['total']:4d} mutants: killed {row['killed']}, timed out {row['timeout']}, "
                  f"survived {row['survived']}, no tests {row['no tests']} -> caught {caught / row['total']:.1%} "
                  f"({row['seconds']:.0f} s)", flush=True)
            if args.survivors:
                for name in row["survivors"]:
                    print(_diff(scratch, name))
                if row["untested"]:  # no selected test calls these functions
                    print("no tests:", ", ".join(sorted({n.rsplit("__mutmut_", 1)[0] for n in row["untested"]})))
    print()
    print("| module | mutants | killed | timed out | survived | no tests | caught | target |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        caught = (r["killed"] + r["timeout"]) / r["total"]
        print(f"| {r['module']} | {r['total']} | {r['killed']} | {r['timeout']} | {r['survived']} | "
              f"{r['no tests']} | {caught:.1%} | {'met' if caught >= TARGET else 'NOT met'} (>= {TARGET:.0%}) |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
