"""k-NN core: equals a dense reference, chunking-invariant, correct on separable clusters, clear errors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mimlab.errors import UserError
from mimlab.evaluation.knn import knn_classify


def dense_reference(train_f, train_y, test_f, test_y, ks, temperature, num_classes):
    """Independent computation: full float64 similarity matrix, full argsort, one-hot vote per k.

    Ties among class scores are broken by lower class index (a float64 stable sort), the documented rule.
    """
    sim = test_f.double() @ train_f.double().T  # [Nte,Ntr]
    order = sim.argsort(dim=1, descending=True, stable=True)  # full sort of the bank per query
    out = {}
    for k in ks:
        idx = order[:, :k]
        w = torch.exp(sim.gather(1, idx) / temperature)  # [Nte,k]
        onehot = F.one_hot(train_y[idx], num_classes).double()  # [Nte,k,C]
        scores = (onehot * w[..., None]).sum(1)  # [Nte,C]
        ranked = scores.argsort(dim=1, descending=True, stable=True)[:, :5]
        correct = ranked.eq(test_y[:, None])
        out[k] = {"top1": 100.0 * correct[:, 0].sum().item() / len(test_y),
                  "top5": 100.0 * correct.any(1).sum().item() / len(test_y)}
    return out


def _random(n_train=600, n_test=150, dim=32, classes=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    tr = F.normalize(torch.randn(n_train, dim, generator=g), dim=1)
    te = F.normalize(torch.randn(n_test, dim, generator=g), dim=1)
    return tr, torch.randint(0, classes, (n_train,), generator=g), te, torch.randint(0, classes, (n_test,), generator=g)


@pytest.mark.parametrize("seed", [0, 1])
def test_equals_dense_reference_on_random_features(seed):
    tr, try_, te, tey = _random(seed=seed)
    ks = (10, 20, 100, 200)
    got = knn_classify(tr, try_, te, tey, ks=ks, temperature=0.07, num_classes=7)
    want = dense_reference(tr, try_, te, tey, ks, 0.07, 7)
    assert got == want
    # random labels: accuracy is around chance, so the comparison is not trivially 100 %
    assert all(v["top1"] < 60 for v in got.values())


def test_chunking_does_not_change_results():
    tr, try_, te, tey = _random(n_train=777, n_test=203, seed=3)
    base = knn_classify(tr, try_, te, tey, chunk_size=10_000, bank_chunk_size=None)
    for chunk, bank_chunk in [(1, 50), (17, 201), (64, 7), (203, 776)]:
        assert knn_classify(tr, try_, te, tey, chunk_size=chunk, bank_chunk_size=bank_chunk) == base


def test_separable_clusters_are_classified_perfectly():
    g = torch.Generator().manual_seed(0)
    centres = F.normalize(torch.randn(5, 64, generator=g), dim=1) * 10
    tr_y = torch.arange(5).repeat_interleave(60)
    te_y = torch.arange(5).repeat_interleave(20)
    tr = F.normalize(centres[tr_y] + torch.randn(300, 64, generator=g), dim=1)
    te = F.normalize(centres[te_y] + torch.randn(100, 64, generator=g), dim=1)
    res = knn_classify(tr, tr_y, te, te_y, ks=(10, 20, 60), chunk_size=16, bank_chunk_size=70)
    assert all(v["top1"] == 100.0 and v["top5"] == 100.0 for v in res.values())
    # k=200 > 60 per class: the 200 neighbours include other classes but the own class still wins
    assert knn_classify(tr, tr_y, te, te_y, ks=(200,))[200]["top1"] == 100.0


def test_weighting_uses_temperature():
    # one query; 2 neighbours of class 1 at sim 0.5, 1 neighbour of class 0 at sim 0.9.
    # weights: T=0.07 -> e^(0.9/.07)=3.9e5 > 2e^(0.5/.07)=2.5e3: class 0; T=10 -> 1.09 < 2*1.05: class 1
    tr = torch.tensor([[0.9, 0.0], [0.5, 0.0], [0.5, 0.0]])
    tr_y = torch.tensor([0, 1, 1])
    q, qy = torch.tensor([[1.0, 0.0]]), torch.tensor([0])
    assert knn_classify(tr, tr_y, q, qy, ks=(3,), temperature=0.07)[3]["top1"] == 100.0
    assert knn_classify(tr, tr_y, q, qy, ks=(3,), temperature=10.0)[3]["top1"] == 0.0
    assert knn_classify(tr, tr_y, q, qy, ks=(3,), temperature=10.0)[3]["top5"] == 100.0


@pytest.mark.parametrize("case, match", [
    ("few", "bank has 30 images but k=200"),
    ("dim", "feature-dimension mismatch"),
    ("nolabels", "needs labels"),
    ("neg", "without a label"),
])
def test_bad_input_is_one_clear_line(case, match):
    tr, try_, te, tey = _random(n_train=30, n_test=5)
    if case == "dim":
        te = te[:, :16]
    if case == "nolabels":
        try_ = None
    if case == "neg":
        tey = tey.clone()
        tey[0] = -1
    with pytest.raises(UserError, match=match) as err:
        knn_classify(tr, try_, te, tey, ks=(10, 200) if case == "few" else (10,))
    assert "\n" not in str(err.value)
