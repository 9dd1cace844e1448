"""Malformed text — YAML that does not parse, non-UTF-8 files, malformed URLs — and Click usage errors: one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from error_inputs import TINY_RECIPE

TUNE_EXPERIMENTS = Path(__file__).parents[1] / "tune" / "experiments"
BAD_YAML = "model: [unclosed\n  optim: {\n"
LATIN1 = "name: caf\xe9\n".encode("latin-1") + TINY_RECIPE.encode()  # \xe9 alone is not UTF-8
STUDY = "name: tiny\ndata: {data}\nlimit: 4\nparams: {{m: raw}}\nmodels:\n  - {{model: {ckpt}, label: t}}\n" \
        "methods: ['${{m}}']\nmetrics: [ad]\n"

# (id, file content to write as {file} (or None), argv, substrings of the error line)
CASES = [
    ("pretrain-yaml-does-not-parse", BAD_YAML, ["pretrain", "{file}"], ["{file}", "not valid YAML"]),
    ("pretrain-not-utf8", LATIN1, ["pretrain", "{file}"], ["{file}", "not UTF-8"]),
    ("pretrain-set-value-does-not-parse", None, ["pretrain", "{recipe}", "--set", "optim.lr=[0.1"],
     ["optim.lr=[0.1", "not valid YAML"]),
    ("pretrain-set-without-equals", None, ["pretrain", "{recipe}", "--set", "optim.lr"], ["optim.lr", "key=value"]),
    ("tune-yaml-does-not-parse", BAD_YAML, ["tune", "{file}"], ["{file}", "not valid YAML"]),
    ("tune-not-utf8", b"name: \xff\xfe\nsweep: {}\n", ["tune", "{file}"], ["{file}", "not UTF-8"]),
    ("study-yaml-does-not-parse", BAD_YAML, ["evaluate", "study", "{file}"], ["{file}", "not valid YAML"]),
    ("study-not-utf8", b"name: \xe9t\xe9\n", ["evaluate", "study", "{file}"], ["{file}", "not UTF-8"]),
    ("study-param-does-not-parse", None, ["evaluate", "study", "{study}", "-p", "m=[raw"], ["m=[raw", "YAML"]),
    ("study-param-without-equals", None, ["evaluate", "study", "{study}", "-p", "m"], ["KEY=VALUE", "'m'"]),
    ("knn-tracking-uri-malformed", None, ["eval", "knn", "{ckpt}", "--tracking-uri", "htp:/nowhere"],
     ["htp:/nowhere", "tracking URI"]),
    ("saliency-tracking-uri-malformed", None, ["evaluate", "saliency", "--model", "{ckpt}", "--tracking-uri",
                                               "sqlite//x.db", "--out", "{tmp}/o"], ["sqlite//x.db", "tracking URI"]),
    ("pretrain-tracking-uri-malformed", None, ["pretrain", "{recipe}", "--tracking-uri", "mysql:/x"],
     ["mysql:/x", "tracking URI"]),
    ("tune-tracking-uri-malformed", None, ["tune", "tiny-sweep", "--tracking-uri", "http//127.0.0.1:5000"],
     ["http//127.0.0.1:5000", "tracking URI"]),
    ("runs-tracking-uri-malformed", None, ["runs", "compare", "x", "--tracking-uri", "://"], ["'://'", "tracking URI"]),
    ("tune-ray-address-malformed", None, ["tune", "tiny-sweep", "--address", "ray:/head:10001"],
     ["ray:/head:10001", "Ray address"]),
    ("tune-ray-address-bad-port", None, ["tune", "tiny-sweep", "--address", "head:port"],
     ["head:port", "Ray address"]),
    ("knn-data-url-unknown-scheme", None, ["eval", "knn", "{ckpt}", "--train", "foo://bucket/x", "--no-mlflow"],
     ["foo://", "s3://"]),
    ("saliency-data-url-malformed", None, ["evaluate", "saliency", "--model", "{ckpt}", "--data", "s3:/bucket/x",
                                           "--out", "{tmp}/o"], ["s3:/bucket/x", "URL"]),
    ("synth-out-url-malformed", None, ["data", "synth", "gs:bucket"], ["gs:bucket", "URL"]),
    ("info-classes-json-not-utf8", None, ["data", "info", "{badclasses}"], ["classes.json"]),
    ("backbone-json-not-utf8", None, ["explain", "{img}", "-m", "{badckpt}", "--out", "{tmp}/o"],
     ["backbone.json"]),
    # Click/Typer usage errors: one `error:` line too, not a Rich box
    ("usage-unknown-option", None, ["eval", "knn", "{ckpt}", "--kk", "5"], ["--kk"]),
    ("usage-bad-int", None, ["evaluate", "saliency", "--model", "{ckpt}", "--limit", "ten"], ["--limit", "ten"]),
    ("usage-missing-argument", None, ["pretrain"], ["experiment", "Missing"]),
    ("usage-unknown-command", None, ["data", "shrad"], ["shrad"]),
]


@pytest.mark.parametrize("content,argv,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_malformed_text_is_one_error_line(content, argv, expected, cli_error, ckpt, shards, image_file, recipe,
                                          tmp_path, monkeypatch):
    import shutil

    monkeypatch.setenv("MIMLAB_EXPERIMENTS_DIR", str(TUNE_EXPERIMENTS))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    file = tmp_path / "input.yaml"
    if content is not None:
        file.write_bytes(content if isinstance(content, bytes) else content.encode())
    study = tmp_path / "study.yaml"
    study.write_text(STUDY.format(data=shards / "val", ckpt=ckpt))
    badclasses = tmp_path / "badclasses"
    shutil.copytree(shards / "val", badclasses)
    (badclasses / "classes.json").write_bytes(b'["caf\xe9"]')
    badckpt = tmp_path / "badckpt"
    shutil.copytree(ckpt, badckpt)
    (badckpt / "backbone.json").write_bytes(b'{"timm_name": "vit\xff"}')
    subs = dict(file=file, recipe=recipe, study=study, ckpt=ckpt, img=image_file, tmp=tmp_path,
                badclasses=badclasses, badckpt=badckpt)
    args = [a.format(**subs) for a in argv]
    cli_error(args, *[e.format(**subs) for e in expected],
              protect=[p for p in (file, recipe, study, ckpt, shards, image_file, badclasses, badckpt) if p.exists()])


def test_usage_error_in_a_real_shell_is_one_line_exit_2(cli_error):
    """The console script itself (not only CliRunner) prints one `error:` line for a Click usage error."""
    cli_error(["data", "synth", "/tmp/x", "--num-images", "many"], "--num-images", "many", subprocess=True)


# Malformed URLs in environment variables: the commands that read them name the variable and what was expected.
ENV_CASES = [
    ("pretrain-mlflow-uri-two-slashes", {"MLFLOW_TRACKING_URI": "sqlite:/x.db"}, ["pretrain", "{recipe}"],
     ["MLFLOW_TRACKING_URI", "sqlite:/x.db", "sqlite:///"]),
    ("knn-mlflow-uri-no-colon", {"MLFLOW_TRACKING_URI": "http//host"}, ["eval", "knn", "{ckpt}"],
     ["MLFLOW_TRACKING_URI", "http//host", "http(s)://host:port"]),
    ("saliency-mlflow-uri-unknown-scheme", {"MLFLOW_TRACKING_URI": "htp://host"},
     ["evaluate", "saliency", "--model", "{ckpt}", "--out", "{tmp}/o"], ["MLFLOW_TRACKING_URI", "htp://", "scheme"]),
    ("tune-mlflow-uri-no-host", {"MLFLOW_TRACKING_URI": "http://:5000"}, ["tune", "tiny-sweep"],
     ["MLFLOW_TRACKING_URI", "http://:5000", "host[:port]"]),
    ("runs-mlflow-uri-two-slashes", {"MLFLOW_TRACKING_URI": "sqlite:/x.db"}, ["runs", "compare", "x"],
     ["MLFLOW_TRACKING_URI", "sqlite:/x.db"]),
    ("tune-ray-address-one-slash", {"RAY_ADDRESS": "ray:/:1"}, ["tune", "tiny-sweep"],
     ["RAY_ADDRESS", "ray:/:1", "host:port"]),
    ("pretrain-ray-address-no-colon", {"RAY_ADDRESS": "http//host"},
     ["pretrain", "{recipe}", "--workers", "0", "--storage-path", "{tmp}/runs"], ["RAY_ADDRESS", "http//host",
                                                                                  "host:port"]),
    ("knn-ray-address-bad-port", {"RAY_ADDRESS": "head:99999"}, ["eval", "knn", "{ckpt}", "--no-mlflow"],
     ["RAY_ADDRESS", "head:99999", "host:port"]),
]


@pytest.mark.parametrize("env,argv,expected", [c[1:] for c in ENV_CASES], ids=[c[0] for c in ENV_CASES])
def test_malformed_url_in_an_environment_variable_is_one_error_line(env, argv, expected, cli_error, ckpt, recipe,
                                                                     tmp_path, monkeypatch):
    monkeypatch.setenv("MIMLAB_EXPERIMENTS_DIR", str(TUNE_EXPERIMENTS))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    subs = dict(recipe=recipe, ckpt=ckpt, tmp=tmp_path)
    cli_error([a.format(**subs) for a in argv], *expected, protect=[recipe, ckpt], env=env)


def test_databricks_is_a_valid_tracking_uri_in_the_variable_and_the_option(monkeypatch):
    from mimlab.urls import check_tracking_uri

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "databricks")
    check_tracking_uri(None)
    check_tracking_uri("databricks")
