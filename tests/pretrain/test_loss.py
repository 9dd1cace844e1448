import math

import torch

from mimlab.pretrain.loss import IBOTLoss


def _reference(s_cls, s_patch_all, t_cls, t_patch, masks, tt, tp, center, center2, G, B, st=0.1):
    """Independent computation: explicit Python loops over pairs, images and tokens (methods-spec §4.3)."""
    V = s_cls.shape[0] // B
    total, pairs = 0.0, 0
    for q in range(G):
        for v in range(V):
            if v == q:
                continue
            ce = 0.0
            for b in range(B):
                p = torch.softmax((t_cls[q * B + b] - center[0]) / tt, -1)
                ls = torch.log_softmax(s_cls[v * B + b] / st, -1)
                ce += float(-(p * ls).sum())
            total += ce / B
            pairs += 1
    l_cls = total / pairs
    per_crop = []
    for q in range(G):
        acc = 0.0
        for b in range(B):
            row = q * B + b
            s, n = 0.0, 0
            for i in range(masks.shape[1]):
                if masks[row, i]:
                    p = torch.softmax((t_patch[row, i] - center2[0, 0]) / tp, -1)
                    ls = torch.log_softmax(s_patch_all[row, i] / st, -1)
                    s += float(-(p * ls).sum())
                    n += 1
            acc += s / max(1, n)
        per_crop.append(acc / B)
    return l_cls, sum(per_crop) / G


def _inputs(G=2, L=2, B=3, N=5, K=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    s_cls = torch.randn((G + L) * B, K, generator=g)
    s_patch = torch.randn(G * B, N, K, generator=g)
    t_cls = torch.randn(G * B, K, generator=g)
    t_patch = torch.randn(G * B, N, K, generator=g)
    masks = torch.rand(G * B, N, generator=g) < 0.5
    masks[0] = False  # an image with an all-zero mask
    masks[1, 0] = True
    return s_cls, s_patch, t_cls, t_patch, masks


def test_loss_matches_loop_reference_with_centres():
    G, B = 2, 3
    s_cls, s_patch, t_cls, t_patch, masks = _inputs()
    loss = IBOTLoss(7, G, lambda1=0.5, lambda2=2.0)
    loss.center.normal_()
    loss.center2.normal_()
    out = loss(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
    l_cls, l_patch = _reference(s_cls, s_patch, t_cls, t_patch, masks, 0.05, 0.06, loss.center, loss.center2, G, B)
    assert math.isclose(float(out["loss_cls"]), l_cls, rel_tol=1e-5)
    assert math.isclose(float(out["loss_patch"]), l_patch, rel_tol=1e-5)
    assert math.isclose(float(out["loss"]), 0.5 * l_cls + 2.0 * l_patch, rel_tol=1e-5)
    # the all-patches form (contrastive runs) gives the same loss
    out_all = loss(s_cls, s_patch.reshape(-1, 7), t_cls, t_patch, masks, 0.05, 0.06)
    torch.testing.assert_close(out_all["loss"], out["loss"])


def test_all_zero_mask_image_counts_in_the_batch_mean():
    G, B, N, K = 1, 2, 4, 3
    t_patch = torch.zeros(G * B, N, K)
    s_patch = torch.zeros(G * B, N, K)
    masks = torch.tensor([[True, True, False, False], [False] * 4])
    loss = IBOTLoss(K, G)
    out = loss(torch.zeros(B, K), s_patch[masks], torch.zeros(B, K), t_patch, masks, 0.07, 0.07)
    # uniform teacher and student: CE per masked token = log K; image 0 averages to log K, image 1 contributes 0,
    # and the mean is over both images -> log(K) / 2 (not log K).
    assert math.isclose(float(out["loss_patch"]), math.log(K) / 2, rel_tol=1e-6)
    assert float(out["loss_cls"]) == 0.0  # one global crop, no local crops: no cross-view pair


def test_centre_update_uses_all_patch_tokens_not_only_masked():
    G, B, N, K = 2, 2, 3, 4
    t_cls = torch.arange(G * B * K, dtype=torch.float).view(G * B, K)
    t_patch = torch.randn(G * B, N, K)
    loss = IBOTLoss(K, G, center_momentum=0.9)
    loss.update_center(t_cls, t_patch)
    torch.testing.assert_close(loss.center, 0.1 * t_cls.mean(0, keepdim=True))
    torch.testing.assert_close(loss.center2[0, 0], 0.1 * t_patch.reshape(-1, K).mean(0))
    loss.update_center(t_cls, t_patch)
    torch.testing.assert_close(loss.center, 0.19 * t_cls.mean(0, keepdim=True))


def test_collapse_diagnostics_separate_uniform_one_hot_and_healthy_targets():
    G, B, N, K = 2, 4, 3, 8
    loss = IBOTLoss(K, G)
    masks = torch.zeros(G * B, N, dtype=torch.bool)
    s_cls, t_patch = torch.zeros(G * B, K), torch.zeros(G * B, N, K)

    def diagnostics(t_cls):
        out = loss(s_cls, t_patch[masks], t_cls, t_patch, masks, 0.04, 0.04)
        return float(out["teacher_entropy"]), float(out["teacher_kl_to_mean"])

    # uniform collapse: equal logits -> entropy ln K (independent: max entropy of K outcomes), KL 0
    h, kl = diagnostics(torch.zeros(G * B, K))
    assert math.isclose(h, math.log(K), rel_tol=1e-5) and abs(kl) < 1e-6
    # one-hot collapse: every image puts all mass on prototype 0 -> entropy 0, KL 0
    same = torch.zeros(G * B, K)
    same[:, 0] = 100.0
    h, kl = diagnostics(same)
    assert h < 1e-6 and abs(kl) < 1e-6
    # healthy: image b of each crop one-hot on prototype b -> entropy 0, KL = ln B (the batch mean is uniform
    # over B prototypes, so each one-hot row is ln B away from it)
    spread = torch.zeros(G * B, K)
    spread[torch.arange(G * B), torch.arange(G * B) % B] = 100.0
    h, kl = diagnostics(spread)
    assert h < 1e-6 and math.isclose(kl, math.log(B), rel_tol=1e-5)


def test_default_weights_and_momentum_are_the_ibot_values():
    # independent: iBOT's published defaults (λ1 = λ2 = 1, centre momentum 0.9), passed explicitly
    G, B = 2, 3
    s_cls, s_patch, t_cls, t_patch, masks = _inputs()
    default, explicit = IBOTLoss(7, G), IBOTLoss(7, G, 0.1, 1.0, 1.0, 0.9)
    out = default(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
    assert math.isclose(float(out["loss"]), float(out["loss_cls"] + out["loss_patch"]), rel_tol=1e-6)
    want = explicit(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
    torch.testing.assert_close(out["loss"], want["loss"])
    default.update_center(t_cls, t_patch)
    explicit.update_center(t_cls, t_patch)
    torch.testing.assert_close(default.center, explicit.center)
    torch.testing.assert_close(default.center2, explicit.center2)


def test_centre_buffers_have_the_checkpointed_shapes():
    # the checkpoint stores center [1, K] and center2 [1, 1, K] (iBOT's layout; a resumed run loads them as is)
    state = IBOTLoss(7, 2).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == {"center": (1, 7), "center2": (1, 1, 7)}


def test_one_global_and_one_local_crop_give_the_single_pair_cross_entropy():
    # G = 1, V = 2: exactly one (teacher global, student local) pair, so loss_cls is that pair's CE (loop reference)
    G, B = 1, 3
    s_cls, s_patch, t_cls, t_patch, masks = _inputs(G=1, L=1, B=B)
    loss = IBOTLoss(7, G)
    out = loss(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
    l_cls, l_patch = _reference(s_cls, s_patch, t_cls, t_patch, masks, 0.05, 0.06, loss.center, loss.center2, G, B)
    assert math.isclose(float(out["loss_cls"]), l_cls, rel_tol=1e-5)
    assert math.isclose(float(out["loss_patch"]), l_patch, rel_tol=1e-5)


def test_teacher_patch_given_as_masked_rows_gives_the_same_loss():
    # the [M, K] form (teacher logits of the masked tokens only, masks.nonzero() order) = the [G*B, Np, K] form
    G = 2
    s_cls, s_patch, t_cls, t_patch, masks = _inputs()
    loss = IBOTLoss(7, G)
    loss.center2.normal_()
    full = loss(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
    rows = loss(s_cls, s_patch[masks], t_cls, t_patch[masks], masks, 0.05, 0.06)
    torch.testing.assert_close(rows["loss_patch"], full["loss_patch"])


def test_forward_and_centre_update_emit_no_warning():
    # a training step logs nothing of its own: e.g. no implicit-dimension softmax warning
    import warnings

    G = 2
    s_cls, s_patch, t_cls, t_patch, masks = _inputs()
    loss = IBOTLoss(7, G)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss(s_cls, s_patch[masks], t_cls, t_patch, masks, 0.05, 0.06)
        loss.update_center(t_cls, t_patch)
