"""The linear probe on Ray (the CLI default: ``--workers 1``), cached and augmented, against the in-process path."""

from __future__ import annotations

import numpy as np
import torch

from mimlab.evaluation import api
from mimlab.evaluation.feeds import FeatureModel, ModelRef, features_local, features_ray, load_split

LIMIT = 48


def _sorted_rows(feats: dict[str, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    """Rows in a canonical order (Ray does not keep row order): lexicographic on the feature vector."""
    x = feats["linear"].numpy()
    order = np.lexsort(x.T[::-1])
    return x[order], feats["label"].numpy()[order]


def test_cached_features_on_ray_equal_the_in_process_features_for_1_and_2_workers(tiny_checkpoint, ray_local):
    ref = ModelRef(str(tiny_checkpoint), None, False)
    model = FeatureModel(ref, n_last_blocks=2)
    split = load_split(None, "val", LIMIT)
    local = features_local(model, split.images, model.loaded.img_size, 16)  # independent: one process, no Ray
    local["label"] = torch.from_numpy(split.labels)
    want_x, want_y = _sorted_rows(local)
    for workers in (1, 2):
        got, skipped = features_ray(ref, None, "val", size=model.loaded.img_size, n_last_blocks=2, batch_size=16,
                                    workers=workers, limit=LIMIT)
        assert skipped == 0
        got_x, got_y = _sorted_rows(got)
        assert got_x.shape == want_x.shape
        np.testing.assert_allclose(got_x, want_x, rtol=1e-5, atol=1e-5)
        np.testing.assert_array_equal(got_y, want_y)


def test_augmented_probe_on_ray_re_extracts_fresh_crops_every_epoch(tiny_checkpoint, ray_local, monkeypatch):
    calls: list[dict] = []
    real = api.features_ray

    def counting(*args, **kwargs):
        out, skipped = real(*args, **kwargs)
        calls.append({"augment": kwargs.get("augment", False), "seed": kwargs.get("seed"), "rows": len(out["label"]),
                      "linear": _sorted_rows(out)[0]})
        return out, skipped

    monkeypatch.setattr(api, "features_ray", counting)
    epochs = 2
    result = api.run_linear(str(tiny_checkpoint), epochs=epochs, limit=LIMIT, batch_size=16, workers=1,
                            log_mlflow=False, n_last_blocks=2)
    train_calls = [c for c in calls if c["augment"]]
    # one val extraction (eval transform) + one augmented pass through the backbone per epoch, every image each time
    assert len(calls) == 1 + epochs and len(train_calls) == epochs
    assert [c["rows"] for c in train_calls] == [LIMIT] * epochs and result["n_train"] == LIMIT
    assert len({c["seed"] for c in train_calls}) == epochs
    # different crops -> different features in every epoch pair
    for a in range(epochs):
        for b in range(a + 1, epochs):
            assert not np.allclose(train_calls[a]["linear"], train_calls[b]["linear"], atol=1e-4)
    assert len(result["curve"]) == epochs and result["best_top1"] == max(result["curve"])
    assert result["mode"].startswith("augmented")
