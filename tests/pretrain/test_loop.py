import json
from pathlib import Path

import pytest
import torch

from mimlab.errors import UserError
from mimlab.pretrain.loop import pretrain_local

from .helpers import micro_cfg

LOOP = ("data.limit=40", "eval.knn_every=1", "eval.knn_train_limit=40", "eval.knn_val_limit=16", "eval.knn_k=5")


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from mimlab.data.synth import write_synthetic

    root = tmp_path_factory.mktemp("tiny-shards")
    write_synthetic(str(root), num_images=60, size=16, classes=4, seed=1, split_val=0.3)
    return str(root)


def test_local_run_writes_the_checkpoint_format_and_reports_each_epoch(tiny_data, tmp_path):
    from safetensors.torch import load_file

    from mimlab.models.vit import create_backbone

    seen = []
    result = pretrain_local(micro_cfg(*LOOP), data=tiny_data, out_dir=tmp_path,
                            on_epoch=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [0, 1]
    folder = Path(result.checkpoint_dir)
    assert folder.name == "checkpoint-0001"
    meta = json.loads((folder / "backbone.json").read_text())
    assert meta["timm_name"] == "vit_tiny_patch16_224" and meta["epoch"] == 1 and meta["img_size"] == 16
    model = create_backbone(meta["timm_name"], **meta["kwargs"])
    model.load_state_dict(load_file(folder / "teacher_backbone.safetensors"))
    model.load_state_dict(load_file(folder / "student_backbone.safetensors"))
    state = torch.load(folder / "state.pt", weights_only=False)
    assert {"student", "teacher", "teacher_head", "optimizer", "loss", "epoch", "config"} <= set(state)
    assert state["loss"]["center"].abs().sum() > 0  # centres travel with the checkpoint
    for key in ("knn_top1", "knn_top1_init", "loss_cls", "loss_patch", "lr", "wd", "momentum", "teacher_temp",
                "masked_fraction", "images_per_s"):
        assert key in result.metrics, key
    assert 0.0 <= result.metrics["knn_top1"] <= 100.0


def test_rerun_resumes_from_the_last_checkpoint(tiny_data, tmp_path):
    pretrain_local(micro_cfg(*LOOP, "optim.epochs=1"), data=tiny_data, out_dir=tmp_path)
    seen = []
    result = pretrain_local(micro_cfg(*LOOP, "optim.epochs=2"), data=tiny_data, out_dir=tmp_path,
                            on_epoch=lambda e, m: seen.append(e))
    assert seen == [1] and result.checkpoint_dir.endswith("checkpoint-0001")
    state = torch.load(Path(result.checkpoint_dir) / "state.pt", weights_only=False)
    assert state["epoch"] == 1


def test_resume_refuses_another_architecture(tiny_data, tmp_path):
    pretrain_local(micro_cfg("data.limit=40", "optim.epochs=1"), data=tiny_data, out_dir=tmp_path)
    with pytest.raises(UserError, match=r"different architecture \(model.kwargs.depth: 2 in the checkpoint vs 3"):
        pretrain_local(micro_cfg("data.limit=40", depth=3), data=tiny_data, out_dir=tmp_path)


def test_nan_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_data, tmp_path, monkeypatch):
    from mimlab.pretrain import loss as loss_mod

    poison = {"on": False}
    original = loss_mod.IBOTLoss.forward

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if poison["on"]:
            out["loss"] = out["loss"] * float("nan")
        return out

    monkeypatch.setattr(loss_mod.IBOTLoss, "forward", forward)
    with pytest.raises(UserError, match="diverged.*last good checkpoint: .*checkpoint-0000"):
        pretrain_local(micro_cfg("data.limit=40", "optim.epochs=3"), data=tiny_data, out_dir=tmp_path,
                       on_epoch=lambda e, m: poison.update(on=True))
    assert (tmp_path / "latest").read_text() == "checkpoint-0000"
    state = torch.load(tmp_path / "checkpoint-0000" / "state.pt", weights_only=False)
    assert all(torch.isfinite(v).all() for v in state["student"].values())


def test_knn_is_logged_only_where_measured_but_carried_in_the_result(tiny_data, tmp_path):
    """knn_every=2 over 4 epochs measures at epochs 1 and 3. The sink gets k-NN points only there (plus the
    untrained model at -1); the per-epoch metrics (result, checkpoint) carry the last value into epoch 2."""

    class Sink:
        def __init__(self):
            self.epochs = []

        def log_step(self, step, metrics):
            pass

        def log_epoch(self, epoch, metrics):
            self.epochs.append((epoch, dict(metrics)))

        def log_image(self, *args):
            pass

    sink, seen = Sink(), []
    pretrain_local(micro_cfg(*LOOP[:1], *LOOP[2:], "eval.knn_every=2", "optim.epochs=4", "eval.probe_images=0"),
                   data=tiny_data, out_dir=tmp_path, sink=sink, on_epoch=lambda e, m: seen.append((e, m)))
    logged = {e: m for e, m in sink.epochs}
    assert sorted(logged) == [-1, 0, 1, 2, 3]
    assert set(logged[-1]) == {"knn_top1"}
    assert [e for e in range(4) if "knn_top1" in logged[e]] == [1, 3]
    assert all("knn_top1_init" not in logged[e] for e in range(4))
    per_epoch = dict(seen)
    assert "knn_top1" not in per_epoch[0]  # nothing measured yet
    assert per_epoch[2]["knn_top1"] == logged[1]["knn_top1"]  # carried from epoch 1
    assert all("knn_top1_init" in m and m["knn_top1_init"] == logged[-1]["knn_top1"] for _, m in seen)
