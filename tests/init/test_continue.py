"""Continued pretraining starts where the checkpoint is: the first online k-NN equals `eval knn` of the checkpoint."""

from __future__ import annotations

import torch

from mimlab.evaluation.api import run_knn
from mimlab.models.checkpoints import read_checkpoint
from mimlab.pretrain.build import build_parts
from mimlab.pretrain.checkpoint import save_checkpoint
from mimlab.runtime.train import run_pretrain


def _checkpoint(cfg, folder):
    """A `platform pretrain` checkpoint of ``cfg``'s freshly built parts (its seed picks the network)."""
    return save_checkpoint(folder, build_parts(cfg), 0, {})


def _eval_knn(folder, data) -> float:
    # `eval knn` with the monitor's settings: every train image (150) as the bank, every val image (50) as queries
    # (the monitor samples knn_train_limit=150 / knn_val_limit=100 rows: all of them), k=5, T=0.07, 16 px eval view
    res = run_knn(str(folder), train=data, val=data, ks=(5,), log_mlflow=False, workers=0)
    return res["results"]["5"]["top1"]


def test_first_online_knn_of_a_continued_run_equals_eval_knn_of_its_checkpoint(micro_cfg, tmp_path, capsys,
                                                                                synthetic_shards, mlflow_uri):
    src = _checkpoint(micro_cfg("train.seed=3"), tmp_path / "src")
    untrained = _checkpoint(micro_cfg(), tmp_path / "untrained")  # what the same run starts from without init
    cfg = micro_cfg("eval.knn_every=1", "eval.knn_train_limit=150", "train.steps_per_epoch=1", f"model.init={src}")
    cont = run_pretrain(cfg, data=synthetic_shards, name="cont", storage_path=str(tmp_path / "runs"), workers=0)
    assert "init: backbone and iBOT head from the teacher" in capsys.readouterr().err
    evaluated = _eval_knn(src, synthetic_shards)
    assert cont.metrics["knn_top1_init"] == evaluated
    assert _eval_knn(untrained, synthetic_shards) != evaluated


def test_the_continued_student_and_teacher_start_from_the_checkpoint_teacher(micro_cfg, tmp_path):
    src = _checkpoint(micro_cfg("train.seed=3"), tmp_path / "src")
    teacher = read_checkpoint(src).teacher
    parts = build_parts(micro_cfg(f"model.init={src}"))
    for name, value in parts.teacher.state_dict().items():
        assert torch.equal(value, teacher.backbone[name]), name
        assert torch.equal(parts.raw_student.encoder.backbone.state_dict()[name], value), name
    for name, value in parts.teacher_head.state_dict().items():
        assert torch.equal(value, teacher.head[name]), name
