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


@pytest.mark.parametrize("case, message", [
    ("query_3d", "k-NN features must be 2-D [N, D]; got bank (30, 32) and queries (5, 4, 8)"),
    ("dim", "k-NN feature-dimension mismatch: the bank has 32-d features but the queries have 16-d "
            "(extract both with the same model)"),
    ("train_none", "k-NN needs labels for the train (bank) split; the data has none"),
    ("val_none", "k-NN needs labels for the val (queries) split; the data has none"),
    ("train_short", "k-NN train (bank) labels must be [N] = [30]; got (29,)"),
    ("val_2d", "k-NN val (queries) labels must be [N] = [5]; got (5, 1)"),
    ("val_neg", "k-NN val (queries) split has images without a label (label < 0)"),
    ("no_k", "k-NN needs at least one k (--k 10,20,100,200)"),
    ("k0", "k-NN k must be >= 1; got [0, 10]"),
    ("few", "the k-NN bank has 30 images but k=200 was requested; use --k values <= 30 or a larger train split"),
    ("no_queries", "k-NN has no query images (the val split is empty)"),
])
def test_bad_input_message_names_the_split_and_the_values(case, message):
    # expected lines written by hand from the shapes built below
    tr, try_, te, tey = _random(n_train=30, n_test=5)
    ks = (10,)
    if case == "query_3d":
        te = torch.randn(5, 4, 8)
    elif case == "dim":
        te = te[:, :16]
    elif case == "train_none":
        try_ = None
    elif case == "val_none":
        tey = None
    elif case == "train_short":
        try_ = try_[:29]
    elif case == "val_2d":
        tey = tey[:, None]
    elif case == "val_neg":
        tey = tey.clone()
        tey[0] = -1
    elif case == "no_k":
        ks = ()
    elif case == "k0":
        ks = (10, 0)
    elif case == "few":
        ks = (10, 200)
    elif case == "no_queries":
        te, tey = te[:0], tey[:0]
    with pytest.raises(UserError) as err:
        knn_classify(tr, try_, te, tey, ks=ks)
    assert str(err.value) == message


def test_k_of_one_is_the_nearest_neighbours_label():
    # independent: the dense float64 reference (k = 1 is the smallest valid k)
    tr, try_, te, tey = _random(n_train=50, n_test=20, seed=4)
    assert knn_classify(tr, try_, te, tey, ks=(1,), num_classes=7) == dense_reference(tr, try_, te, tey, (1,), 0.07, 7)


def test_tiny_temperature_ranks_by_the_nearest_neighbour_without_overflow():
    # hand-made: nearest neighbour (sim 0.9) is class 1, two at sim 0.89 are class 0. With T = 1e-3 the weights
    # are 1 vs 2·e^-10 (relative to the nearest), so class 1 wins; exp(sim / T) itself would overflow to inf and
    # tie the two classes (the tie would go to class 0).
    tr = torch.tensor([[0.9, 0.0], [0.89, 0.0], [0.89, 0.0]])
    tr_y = torch.tensor([1, 0, 0])
    q, qy = torch.tensor([[1.0, 0.0]]), torch.tensor([1])
    assert knn_classify(tr, tr_y, q, qy, ks=(3,), temperature=1e-3)[3]["top1"] == 100.0


def test_class_score_ties_rank_the_lower_class_first():
    # hand-made: 20 classes, every neighbour is class 7, so classes != 7 all score 0; the documented tie rule puts
    # classes 0..3 next in the top-5, so a query labelled 3 is a top-5 hit and one labelled 4 is not.
    tr = F.normalize(torch.randn(10, 8, generator=torch.Generator().manual_seed(0)), dim=1)
    tr_y = torch.full((10,), 7)
    q = tr[:2]
    res = knn_classify(tr, tr_y, q, torch.tensor([3, 3]), ks=(5,), num_classes=20)
    assert res[5] == {"top1": 0.0, "top5": 100.0}
    assert knn_classify(tr, tr_y, q, torch.tensor([4, 4]), ks=(5,), num_classes=20)[5]["top5"] == 0.0


def test_float64_features_equal_the_dense_reference():
    tr, try_, te, tey = _random(n_train=120, n_test=30, seed=5)
    got = knn_classify(tr.double(), try_, te.double(), tey, ks=(10, 20), num_classes=7)
    assert got == dense_reference(tr, try_, te, tey, (10, 20), 0.07, 7)


def test_similarity_blocks_never_exceed_the_chunk_sizes():
    # the documented memory bound: every similarity matmul is at most chunk_size x bank_chunk_size (recorded as
    # torch calls, independent of how knn.py slices)
    from torch.overrides import TorchFunctionMode

    shapes = []

    class RecordMatmuls(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if getattr(func, "__name__", "") in ("matmul", "__matmul__", "mm"):
                shapes.append(tuple(out.shape))
            return out

    tr, try_, te, tey = _random(n_train=100, n_test=20, seed=6)
    with RecordMatmuls():
        knn_classify(tr, try_, te, tey, ks=(10,), chunk_size=8, bank_chunk_size=30)
    assert shapes and max(r for r, _ in shapes) == 8 and max(c for _, c in shapes) == 30
    assert sum(c for r, c in shapes if r == 8) == 2 * 100  # the bank is scanned once per full query chunk
