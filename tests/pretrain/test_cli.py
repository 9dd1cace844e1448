import ast
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from mimlab.cli import app

DEMO = Path(__file__).resolve().parents[2] / "experiments" / "pretrain-demo.yaml"


# A micro recipe (dim 32, 2 blocks, 16 px globals): a few seconds of training per epoch on 2 CPU cores.
MICRO = """\
model: {timm_name: vit_tiny_patch16_224, kwargs: {img_size: 16, patch_size: 4, embed_dim: 32, depth: 2, num_heads: 2},
        drop_path: 0.0}
head: {out_dim: 64, hidden_dim: 48, bottleneck_dim: 16}
crops: {global_crops: 2, global_size: 16, local_crops: 2, local_size: 8}
masking: {strategy: block}
loss: {warmup_teacher_temp_epochs: 0}
optim: {epochs: 5, batch_size_per_worker: 8, warmup_epochs: 0}
train: {num_workers: 2, steps_per_epoch: 2, log_every: 1}
eval: {knn_every: 0, probe_images: 0}
data: {limit: 64}
"""


def test_pretrain_workers_0_leaves_its_checkpoints_and_a_finished_mlflow_run(tmp_path, mlflow_uri, synthetic_shards):
    from mlflow.tracking import MlflowClient

    recipe = tmp_path / "micro.yaml"
    recipe.write_text(MICRO)
    storage = tmp_path / "ckpts"
    res = CliRunner().invoke(app, ["pretrain", str(recipe), "--workers", "0", "--epochs", "2",
                                   "--set", "optim.lr=0.01", "--data", synthetic_shards, "--name", "n1",
                                   "--storage-path", str(storage), "--tracking-uri", mlflow_uri])
    assert res.exit_code == 0, res.output
    # the checkpoint folder of the last epoch (0-based epoch 1), named on the first line, loadable for evaluation
    latest = storage / "n1" / "checkpoint-0001"
    assert f"checkpoint: {latest}" in res.output
    assert {"backbone.json", "teacher_backbone.safetensors", "student_backbone.safetensors",
            "state.pt"} <= {p.name for p in latest.iterdir()}
    assert (storage / "n1" / "latest").read_text().strip() == latest.name
    # the MLflow run: the CLI's overrides in its params, one loss per epoch, the printed loss = the logged one
    client = MlflowClient(tracking_uri=mlflow_uri)
    (run,) = client.search_runs([client.get_experiment_by_name("pretrain").experiment_id])
    assert run.info.run_name == "n1" and run.info.status == "FINISHED"
    assert (run.data.params["optim.lr"], run.data.params["optim.epochs"]) == ("0.01", "2")
    assert run.data.params["train.num_workers"] == "0"
    history = sorted(client.get_metric_history(run.info.run_id, "loss"), key=lambda m: m.step)
    assert [m.step for m in history] == [0, 1] and all(math.isfinite(m.value) for m in history)
    shown = ast.literal_eval(next(line for line in res.output.splitlines() if line.startswith("metrics: "))[9:])
    assert shown["epoch"] == 1 and shown["loss"] == round(history[-1].value, 4)
    assert [m.step for m in client.get_metric_history(run.info.run_id, "step/loss")] == [0, 1, 2, 3]


@pytest.mark.parametrize(("args", "expected"), [
    (["--set", "optim.lrr=1"], ["unknown key 'optim.lrr'"]),
    (["--set", "masking.strategy=[attmask-high]"], ["one spec per global crop"]),
])
def test_bad_override_is_one_error_line_and_exit_2(args, expected, cli_error):
    cli_error(["pretrain", str(DEMO), *args], *expected, protect=[DEMO])


def test_missing_recipe_is_one_error_line_and_exit_2(tmp_path, cli_error):
    cli_error(["pretrain", str(tmp_path / "nope.yaml")], "nope.yaml", "does not exist")
