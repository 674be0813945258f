"""studies/oversampling_vs_weights.py: its measurement helpers on cases with known answers, the per-class
assembly of each method's gradient, and one tiny end-to-end run of the quick mode on synthetic data."""
import argparse
import gzip
import json
import math
import os
import re
import signal
import shutil
import subprocess
import sys
import time

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import C10_LT100, ROOT, load_method, load_script, readme_block, run_script_forked

STUDY = "studies/oversampling_vs_weights.py"


S = load_script(STUDY, "study_ovw")


# ---- measurement helpers -------------------------------------------------------------------------

def test_batches_without_a_minority_sample_are_counted():
    labels = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [1, 1, 0, 1], [0, 0, 0, 0]])
    present = S.presence(labels, 2)
    assert present.tolist() == [[True, False], [True, True], [True, False], [True, True], [True, False]]
    assert S.no_group_fraction(present, [1]) == pytest.approx(3 / 5)
    assert S.no_group_fraction(present, [0]) == 0.0
    # A group of several classes: a batch counts as "without" only if none of them is there.
    three = torch.tensor([[0, 0], [2, 0], [1, 0]])
    assert S.no_group_fraction(S.presence(three, 3), [1, 2]) == pytest.approx(1 / 3)
    # The post's setting: 1:99, batch 16, i.i.d. draws -> (99/100)^16 = 85.1% of batches hold no minority image.
    assert S.expected_no_group_fraction([0.99, 0.01], [1], 16) == pytest.approx(0.99 ** 16)
    assert 0.85 < S.expected_no_group_fraction([0.99, 0.01], [1], 16) < 0.86


def test_cosine_of_identical_opposite_and_orthogonal_gradients():
    g = [torch.tensor([1.0, -2.0]), torch.tensor([[3.0, 0.5]])]
    assert S.cosine(g, [t.clone() for t in g]) == pytest.approx(1.0)
    assert S.cosine(g, [2.5 * t for t in g]) == pytest.approx(1.0)  # scale does not matter
    assert S.cosine(g, [-t for t in g]) == pytest.approx(-1.0)
    assert S.cosine([torch.tensor([1.0, 0.0])], [torch.tensor([0.0, 3.0])]) == pytest.approx(0.0)
    assert S.cosine(g, None) is None and S.cosine(None, g) is None  # a class absent from the batch
    assert S.cosine(g, [torch.zeros(2), torch.zeros(1, 2)]) is None  # zero gradient: undefined, not 0
    assert S.grad_norm(g) == pytest.approx(math.sqrt(1 + 4 + 9 + 0.25))


def test_measure_rows_of_a_step_with_known_gradients():
    """The per-step record of the training loop: class 0's mini-batch gradient equals its full gradient (no
    directional noise: cos 1), class 1 is absent from the batch, and the step points against class 1's gradient."""
    params = [torch.zeros(2), torch.zeros(1, 2)]
    g = [torch.tensor([3.0, 0.0]), torch.tensor([[0.0, 4.0]])]   # ||g|| = 5
    h = [torch.tensor([0.0, 1.0]), torch.tensor([[0.0, 0.0]])]   # ||h|| = 1, orthogonal to g
    rows = S.measure_rows([g, None], [g, h], [-t for t in h], [torch.tensor(2.0), None], params)
    assert rows["batch_grad_norm"] == [pytest.approx(5.0), None]
    assert rows["probe_grad_norm"] == [pytest.approx(5.0), pytest.approx(1.0)]
    assert rows["cos_batch_full"] == [pytest.approx(1.0), None]
    assert rows["descent_alignment"] == [pytest.approx(0.0, abs=1e-7), pytest.approx(-1.0)]
    assert rows["term_norm"] == [pytest.approx(2.0), None]
    assert rows["direction_norm"] == pytest.approx(1.0)


def test_update_norm_of_a_known_sgd_step():
    model = nn.Linear(3, 2)
    before = S.flat_params(model)
    model.weight.grad = torch.ones(2, 3)
    model.bias.grad = torch.tensor([3.0, 4.0])
    torch.optim.SGD(model.parameters(), lr=0.5).step()
    # theta' - theta = -lr * g, so ||update|| = 0.5 * sqrt(6 * 1 + 9 + 16).
    assert float(S.update_norm(before, model)) == pytest.approx(0.5 * math.sqrt(31), rel=1e-6)
    assert float(S.update_norm(S.flat_params(model), model)) == 0.0


def test_steps_to_target_and_initial_rise():
    steps = [0, 10, 20, 30, 40]
    acc = [60, 40, 55, 70, 65]
    assert S.steps_to_target(steps, acc, 50) == 20            # reached at 0 by luck, for good from 20
    assert S.steps_to_target(steps, acc, 50, stay=False) == 0
    assert S.steps_to_target(steps, acc, 66) is None          # 70 at step 30, but 65 after it
    assert S.steps_to_target(steps, acc, 66, stay=False) == 30
    rise = S.initial_rise([0, 5, 10, 15], [1.0, 1.5, 1.2, 0.9])
    assert rise["rise"] == pytest.approx(0.5) and rise["back_at_step"] == 15
    assert S.initial_rise([0, 5], [1.0, 0.7]) == {"rise": pytest.approx(0.0), "back_at_step": 0}
    assert S.initial_rise([0, 5, 10], [1.0, 2.0, 1.5])["back_at_step"] is None
    assert S.initial_rise([0, 5, 10], [1.0, 1.5, 1.0])["back_at_step"] == 10  # back AT its initial value counts


def test_class_aucs_count_the_pairs_ranked_right_and_ignore_the_threshold():
    labels = torch.tensor([0, 0, 1, 1, 1])
    scores = torch.tensor([[0.0, -1.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0], [0.0, 0.5]])
    # class 1 against class 0 on scores[:, 1]: of the 3 x 2 pairs, only (0.5, 1.0) is ranked wrong
    assert S.class_aucs(scores, labels, 2)[1] == pytest.approx(5 / 6)
    # class 0's scores are all tied: every pair counts one half
    assert S.class_aucs(scores, labels, 2)[0] == pytest.approx(0.5)
    # a threshold shift (a constant added to one class's scores) and a monotone map leave it as it was
    assert S.class_aucs(scores + torch.tensor([0.0, 7.0]), labels, 2) == S.class_aucs(scores, labels, 2)
    assert S.class_aucs(scores.exp(), labels, 2) == pytest.approx(S.class_aucs(scores, labels, 2))
    assert S.class_aucs(-scores, labels, 2)[1] == pytest.approx(1 / 6)  # reversed ranking
    assert S.class_aucs(torch.cat([scores, scores[:, :1]], 1), labels, 3)[2] is None  # a class without test images
    # ties among many images: the Mann-Whitney count over every pair, done by hand
    g = torch.Generator().manual_seed(0)
    labels, scores = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 4, (300, 3), generator=g).float()
    for c, auc in enumerate(S.class_aucs(scores, labels, 3)):
        pos, neg = scores[labels == c, c], scores[labels != c, c]
        pairs = (pos[:, None] > neg[None]).double() + 0.5 * (pos[:, None] == neg[None]).double()
        assert auc == pytest.approx(pairs.mean().item(), abs=1e-12)


def test_log_odds_rank_as_the_probabilities_do_without_their_ties():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(200, 4, generator=g, dtype=torch.float64)
    p = z.softmax(1)
    assert torch.allclose(S.log_odds(z), (p / (1 - p)).log(), atol=1e-10)
    # confident images, as a collapsed model's: log p of the likely class rounds to 0 in fp32 and ties; the
    # log-odds stay apart, so each class's AUC is the exact one, and the two of a binary model are equal
    labels = torch.randint(0, 2, (400,), generator=g)
    z = torch.stack([torch.zeros(400), 20 + 10 * torch.rand(400, generator=g) + 2 * labels], 1)
    assert (z.log_softmax(1)[:, 1] == 0).sum() > 100
    tied, exact = S.class_aucs(z.log_softmax(1), labels, 2), S.class_aucs(S.log_odds(z), labels, 2)
    pos, neg = z[labels == 1, 1].double(), z[labels == 0, 1].double()
    assert exact[1] == exact[0] == pytest.approx((pos[:, None] > neg[None]).double().mean().item(), abs=1e-12)
    assert tied[1] < exact[1] - 0.1  # what the rounded log-probabilities would have reported


def test_minority_and_majority_groups():
    assert S.group_classes([5000, 50], "minority") == [1] and S.group_classes([5000, 50], "majority") == [0]
    lt = C10_LT100
    assert S.group_classes(lt, "minority") == [7, 8, 9] and S.group_classes(lt, "majority") == [0, 1, 2]
    # ties (a step imbalance): of equal counts, the later class counts as the smaller
    step = [100, 10, 10, 10, 100, 100]
    assert S.group_classes(step, "minority") == [2, 3] and S.group_classes(step, "majority") == [0, 4]


# ---- each method's gradient, assembled from per-class gradients -----------------------------------

@pytest.mark.parametrize("method", ["erm", "oversampling", "drs", "class_weights", "class_weights_n",
                                    "class_weights_u"])
def test_per_class_assembly_equals_the_method_loss_gradient(method):
    """On measured steps the study builds the step from per-class gradients: sum_c s_c g_c must be exactly the
    gradient of the method's loss (PyTorch's weighted CE for class_weights, sum w l / B for class_weights_n)."""
    pcn = load_method("pcn_sgd")
    cw = load_method("class_weights")
    torch.manual_seed(0)
    model = S.SmallCNN(3, width=4)
    x = torch.randn(10, 3, 8, 8)
    y = torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 2, 0])
    weights = S.loss_weights(method, [600, 30, 10], S.cores())
    params = list(model.parameters())
    logits = model(x)
    per_sample = F.cross_entropy(logits, y, reduction="none")
    direct = torch.autograd.grad(S.method_loss(method, per_sample, y, weights), params, retain_graph=True)
    class_grads, _ = pcn.per_class_grads(model, logits, y, 3)
    assembled = S.combine(class_grads, S.class_coefficients(method, y, weights, 3))
    for a, b in zip(direct, assembled):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-4)
    if method == "class_weights":  # the study's formula is PyTorch's weight= normalization
        ref = F.cross_entropy(logits, y, weight=weights)
        ours = float(S.method_loss(method, per_sample, y, weights).detach())
        assert ours == pytest.approx(float(ref.detach()), rel=1e-6)
    if method == "class_weights_n":  # a batch of head images only gets its loss scaled by w_0 (0.02 at 1:99)
        w2 = cw.inverse_frequency_weights([99, 1])
        assert w2.tolist() == pytest.approx([0.02, 1.98])
        only_head = torch.zeros(16, dtype=torch.long)
        l = torch.rand(16)
        assert float(S.method_loss(method, l, only_head, w2)) == pytest.approx(0.02 * float(l.mean()), rel=1e-5)
        assert float(S.method_loss("class_weights", l, only_head, w2)) == pytest.approx(float(l.mean()), rel=1e-5)


def test_unbiased_class_weights_have_the_expected_step_of_oversampling():
    """class_weights_u: w_c = N / (C n_c), so over a uniformly drawn image sum_i w_yi l_i / B has the balanced loss
    as its expectation (oversampling's batch mean); class_weights_n's expectation is sum_c p_c w_c = 0.0396 times it
    at 1:99 (the post's weights), a 25x shorter expected step."""
    k = S.cores()
    counts = [4950, 50]
    assert S.loss_weights("class_weights", counts, k).tolist() == pytest.approx([0.02, 1.98])
    assert S.loss_weights("class_weights_n", counts, k).tolist() == pytest.approx([0.02, 1.98])
    assert S.loss_weights("class_weights_u", counts, k).tolist() == pytest.approx([5000 / 9900, 50.0])
    p = torch.tensor(counts, dtype=torch.float64) / sum(counts)
    class_loss = torch.tensor([0.3, 2.0], dtype=torch.float64)  # L_c, the mean loss of each class
    balanced = float(class_loss.mean())
    for method, scale in (("class_weights_u", 1.0), ("class_weights_n", 0.0396)):
        w = S.loss_weights(method, counts, k).double()
        assert float((p * w * class_loss).sum()) == pytest.approx(scale * balanced, rel=1e-6)
    lt = C10_LT100
    w = S.loss_weights("class_weights_u", lt, k).double()
    assert float((torch.tensor(lt, dtype=torch.float64) * w).sum() / sum(lt)) == pytest.approx(1.0)  # mean weight 1


def test_loss_share_of_known_batches():
    """loss_share: the mean over steps of the weight a method's loss puts on each class's images."""
    plan = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0]])
    w = torch.tensor([0.02, 1.98])
    assert S.loss_share("erm", plan, w, 2) == pytest.approx([(0.75 + 1) / 2, 0.25 / 2])
    assert S.loss_share("oversampling", plan, w, 2) == pytest.approx([(0.75 + 1) / 2, 0.25 / 2])
    # PyTorch's weighted mean: the batch with a minority image puts 1.98 / 2.04 of its weight on it; every step sums to 1.
    assert S.loss_share("class_weights", plan, w, 2) == pytest.approx([(0.06 / 2.04 + 1) / 2, 1.98 / 2.04 / 2])
    # Divided by B: the weights themselves, so the shares sum to less than 1 when the weights are small.
    assert S.loss_share("class_weights_n", plan, w, 2) == pytest.approx([(0.06 / 4 + 0.08 / 4) / 2, 1.98 / 4 / 2])
    assert S.loss_share("pcnsgd", plan, w, 2) is None and S.loss_share("pcnsgd_o", plan, w, 2) is None
    # the mean over the steps, not the median (three steps: (0.75 + 1 + 1) / 3, not 1)
    plan3 = torch.tensor([[0, 0, 0, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    assert S.loss_share("erm", plan3, w, 2) == pytest.approx([(0.75 + 1 + 1) / 3, 0.25 / 3])


def test_batch_plans():
    k = S.cores()
    labels = torch.tensor([0] * 99 + [1] * 1)
    g = torch.Generator().manual_seed(0)
    erm, sizes = S.batch_plan("erm", labels, [99, 1], 25, 16, g, k)
    assert sizes is None and erm.shape == (25, 16)
    assert sorted(erm.flatten()[:100].tolist()) == list(range(100))  # each epoch is a permutation
    assert sorted(erm.flatten()[100:200].tolist()) == list(range(100))  # ... a new one
    assert erm.flatten()[100:200].tolist() != erm.flatten()[:100].tolist()
    pc, sizes = S.batch_plan("pcnsgd_o", labels, [99, 1], 30, 16, g, k)
    assert sizes == [8, 8] and pc.shape == (30, 16)
    assert S.no_group_fraction(S.presence(labels[pc], 2), [1]) == 0.0
    pc, sizes = S.batch_plan("pcnsgd", labels, [99, 1], 30, 16, g, k)
    assert sizes[1] == 1 and (labels[pc] == 1).sum(1).tolist() == [1] * 30
    os_, _ = S.batch_plan("oversampling", labels, [99, 1], 200, 16, g, k)
    share = float((labels[os_] == 1).float().mean())
    assert 0.45 < share < 0.55  # class-balanced draws: the one minority image is half of every batch on average
    # the per-draw class probabilities behind the i.i.d. expectation of batches without a minority image
    assert S.sampler_class_probs("oversampling", [99, 1], None) == pytest.approx([0.5, 0.5])
    assert S.sampler_class_probs("erm", [99, 1], None) == pytest.approx([0.99, 0.01])
    assert S.sampler_class_probs("pcnsgd", [99, 1], [16, 1]) is None  # every class in every batch
    with pytest.raises(ValueError, match="drs draws as erm, then as oversampling"):  # a mix: build_result's own
        S.sampler_class_probs("drs", [99, 1], None)
    # drs: erm's plan (the same draws of the same generator) until the switch, class-balanced draws from there on
    erm, _ = S.batch_plan("erm", labels, [99, 1], 400, 16, torch.Generator().manual_seed(1), k)
    drs, _ = S.batch_plan("drs", labels, [99, 1], 400, 16, torch.Generator().manual_seed(1), k, switch=300)
    assert torch.equal(drs[:300], erm[:300]) and not torch.equal(drs[300:], erm[300:])
    assert 0.45 < float((labels[drs[300:]] == 1).float().mean()) < 0.55
    late, _ = S.batch_plan("drs", labels, [99, 1], 400, 16, torch.Generator().manual_seed(1), k, switch=400)
    assert torch.equal(late, erm)  # a switch at the end: erm throughout
    assert S.lr_drop_step(argparse.Namespace(lr_drop_at=0.75), 20000) == 15000  # the switch: the lr drop's step


def test_lr_drop_and_target_levels():
    args = argparse.Namespace(lr_drop=0.1, lr_drop_at=0.5)
    assert [S.lr_at_step(t, 10, 0.2, args) for t in (0, 4, 5, 9)] == pytest.approx([0.2, 0.2, 0.02, 0.02])
    args.lr_drop_at = 1.0  # no drop
    assert S.lr_at_step(9, 10, 0.2, args) == pytest.approx(0.2)
    runs = {"a": [{"final": {"minority_acc": 40.0, "balanced_acc": 70.0}},
                  {"final": {"minority_acc": 60.0, "balanced_acc": 80.0}}],
            "b": [{"final": {"minority_acc": 10.0, "balanced_acc": 90.0}}]}
    # minority: frac x the best mean (50); balanced: chance (50 of 2 classes) + frac x (best mean 90 - chance)
    assert S.target_levels(runs, 2, [0.5, 1.0]) == {"minority": [(0.5, 25.0), (1.0, 50.0)],
                                                    "balanced": [(0.5, 70.0), (1.0, 90.0)]}
    assert S.target_levels(runs, 2, [0.5], target_acc=33.0) == {"minority": [(1, 33.0)], "balanced": [(1, 33.0)]}


def test_a_measured_steps_direction_and_measurements_against_autograd():
    """A measured step: PCN's direction is methods/pcn_sgd.py update_direction's (eps on the scale of the class sums,
    here large enough to matter); batch_grad_norm is the norm of each class's class-mean-loss gradient; term_norm is
    a class's share of the step, ||g_c|| / (||g_c|| + eps / B) for PCN and |s_c| ||g_c|| for a loss method; a class
    absent from the batch has none of them."""
    k, pcn, eps = S.cores(), load_method("pcn_sgd"), 0.5
    torch.manual_seed(0)
    model = S.SmallCNN(3, width=4)
    params = list(model.parameters())
    x, y = torch.randn(10, 3, 8, 8), torch.tensor([0, 0, 0, 0, 0, 0, 1, 1, 0, 0])  # class 2 absent
    weights = torch.tensor([0.1, 0.9, 2.0])
    pcn.update_direction(model, x, y, 3, eps=eps)
    expected = [p.grad.clone() for p in params]
    logits = model(x)
    class_grads, _ = pcn.per_class_grads(model, logits, y, 3)
    direction, coefs = S.step_direction("pcnsgd", class_grads, y, weights, eps, k)
    assert coefs is None and all(torch.allclose(a, b, atol=1e-6) for a, b in zip(direction, expected))
    per_sample = F.cross_entropy(model(x), y, reduction="none")
    class_mean = [float(S.flat(torch.autograd.grad(per_sample[y == c].mean(), params, retain_graph=True)).norm())
                  for c in (0, 1)]
    norms = [float(S.flat(g).norm()) for g in class_grads[:2]]
    rows = S.step_measurements(class_grads, y, None, direction, class_grads, params, eps)
    assert rows["batch_grad_norm"][:2] == pytest.approx(class_mean, rel=1e-4) and rows["batch_grad_norm"][2] is None
    assert rows["term_norm"][:2] == pytest.approx([n / (n + eps / 10) for n in norms], rel=1e-4)
    assert rows["term_norm"][2] is None
    direction, coefs = S.step_direction("class_weights", class_grads, y, weights, eps, k)
    # s_c = w_c B / sum_i w_yi = w_c 10 / (8 x 0.1 + 2 x 0.9), and the direction is weighted CE's gradient
    assert coefs == pytest.approx([0.1 * 10 / 2.6, 0.9 * 10 / 2.6, 2.0 * 10 / 2.6])
    weighted = torch.autograd.grad(F.cross_entropy(model(x), y, weight=weights), params)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(direction, weighted))
    rows = S.step_measurements(class_grads, y, coefs, direction, class_grads, params, eps)
    assert rows["term_norm"][:2] == pytest.approx([abs(coefs[c]) * norms[c] for c in (0, 1)], rel=1e-4)


@pytest.mark.parametrize("method", ["pcnsgd", "class_weights"])
def test_a_steps_pull_on_a_class_splits_into_its_own_term_and_the_others(method):
    """pull_split, from a step's record alone: along class c's unit full gradient U_c, the step's own term
    t_c cos(g_c, G_c) and the others' sum_{k != c} t_k cos(g_k, G_c), against the same sums taken from the class
    gradients directly (t_k: the length of class k's term in the step); a class not in the batch pulls 0 and the
    others' push is then the whole step's projection."""
    k, eps = S.cores(), 0.5
    params = [torch.zeros(5), torch.zeros(2, 3)]
    g = torch.Generator().manual_seed(3)
    rand = lambda: [torch.randn(5, generator=g), torch.randn(2, 3, generator=g)]
    class_grads, full = [rand(), rand(), rand(), None], [rand(), rand(), rand(), rand()]
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2])  # class 3 not in the batch
    weights = torch.tensor([0.2, 0.7, 1.5, 3.0])
    direction, coefs = S.step_direction(method, class_grads, y, weights, eps, k)
    rows = S.step_measurements(class_grads, y, coefs, direction, full, params, eps)
    measure = {key: [rows[key]] for key in rows}
    d, unit = S.flat(direction), [S.flat(f) / S.flat(f).norm() for f in full]
    # each class's term in the step: s_c g_c for a loss method, g_c / (||g_c|| + eps / B) for PCN
    terms = [None if cg is None else (S.flat(cg) * coefs[c] if coefs else
                                      S.flat(cg) / (S.flat(cg).norm() + eps / len(y)))
             for c, cg in enumerate(class_grads)]
    assert torch.allclose(sum(t for t in terms if t is not None), d, atol=1e-5)
    for c in range(4):
        own, others = S.pull_split(measure, 0, c)
        want_own = 0.0 if terms[c] is None else float(terms[c] @ unit[c])
        want_others = sum(float(t @ unit[c]) for j, t in enumerate(terms) if j != c and t is not None)
        assert own == pytest.approx(want_own, abs=1e-4) and others == pytest.approx(want_others, abs=1e-4)
        assert own + others == pytest.approx(float(d @ unit[c]), abs=1e-4)
        # the push record: class k's term along class c's full gradient, for each k (None: k not in the batch)
        for j in range(4):
            want = None if terms[j] is None else pytest.approx(float(terms[j] @ unit[c]), abs=1e-4)
            assert rows["push"][j][c] == want
    assert S.pull_split(measure, 0, 3)[0] == 0.0
    assert S.pull_split({k: v for k, v in measure.items() if k != "term_norm"}, 0, 0) is None  # an older record


def test_early_pull_averages_the_first_tenth_of_each_seed_then_over_seeds():
    """Measurements at steps < 10 of a 100-step run, minority classes 1 and 2 (class 2 once absent: it pulls 0);
    per seed the mean over those, then mean and std over seeds."""
    def run(rows):  # rows: (step, own of class 1, own of class 2 or None, others' push on both)
        return {"measure": {"step": [r[0] for r in rows], "direction_norm": [1.0] * len(rows),
                            "term_norm": [[1.0, 1.0, None if r[2] is None else 1.0] for r in rows],
                            "cos_batch_full": [[0.9, r[1], r[2]] for r in rows],
                            "descent_alignment": [[0.0, r[1] + r[3], (r[2] or 0.0) + r[3]] for r in rows]}}
    st = {"steps": 100, "minority": [1, 2], "runs": {"m": [
        run([(0, 0.8, 0.6, -0.5), (9, 0.6, None, -0.3), (10, -5.0, -5.0, 9.0)]),   # step 10: past the first tenth
        run([(0, 0.4, 0.4, -0.2), (50, 9.0, 9.0, 9.0)])]}}
    p = S.early_pull(st, "m")
    assert p["until_step"] == 10 and p["measured"] == 6
    own, others = [(0.8 + 0.6 + 0.6 + 0.0) / 4, 0.4], [-0.4, -0.2]
    assert p["own"]["mean"] == pytest.approx(sum(own) / 2) and p["others"]["mean"] == pytest.approx(sum(others) / 2)
    assert p["own"]["std"] == pytest.approx(abs(own[0] - own[1]) / math.sqrt(2))
    assert S._pull_cell(st, "m") == f"{sum(own) / 2:.2f} / {sum(others) / 2:.2f}"
    assert S.early_push_by_class(st, "m") is None  # records without push
    # with push records: 3 classes, minority 1 and 2; by the class k that pushes, the sum of push[k][c] over the
    # minority classes c != k, divided by the number of (measurement, c) pairs; summed over k, early_pull's push
    def from_push(steps, pushes):  # term 1 and direction norm 1: the diagonal is the cosine, a column sums to <d, U_c>
        return {"step": steps, "direction_norm": [1.0] * len(steps), "push": pushes,
                "term_norm": [[None if p[k][k] is None else 1.0 for k in range(3)] for p in pushes],
                "cos_batch_full": [[p[k][k] for k in range(3)] for p in pushes],
                "descent_alignment": [[sum(p[k][c] or 0.0 for k in range(3)) for c in range(3)] for p in pushes]}
    st = {"steps": 100, "minority": [1, 2], "runs": {"m": [{"measure": from_push([0, 9, 10], [
        [[0.9, -0.3, -0.2], [0.0, 0.8, 0.1], [0.0, -0.2, 0.6]],        # step 0: row k, column c
        [[0.9, -0.1, -0.3], [0.0, 0.6, 0.0], [None, None, None]],       # step 9: class 2 not in the batch
        [[0.9, -9.0, -9.0], [0.0, 9.0, 9.0], [0.0, 9.0, 9.0]]])}]}}     # step 10: past the first tenth
    by = S.early_push_by_class(st, "m")
    assert by == pytest.approx([(-0.3 - 0.2 - 0.1 - 0.3) / 4, (0.1 + 0.0) / 4, (-0.2 + 0.0) / 4])
    assert sum(by) == pytest.approx(S.early_pull(st, "m")["others"]["mean"])
    older = run([(0, 0.8, 0.6, -0.5)])
    del older["measure"]["term_norm"]
    st["runs"]["m"] = [older]
    assert S.early_pull(st, "m") is None and S._pull_cell(st, "m") == "n/a"


class _Pool:
    """What the probe functions read of a setting's image pool."""
    def __init__(self, n=12, classes=4):
        g = torch.Generator().manual_seed(1)
        self.train_x = torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8, generator=g)
        self.train_y = torch.tensor([0, 0, 0, 0, 0, 1, 1, 2, 0, 1, 2, 0])[:n] % classes
        self.device = torch.device("cpu")

    def normalize(self, x):
        return x.float() / 255 - 0.5


def test_probe_losses_and_gradients_are_class_means_in_their_mode_and_leave_the_model_as_it_was():
    """probe_losses: each class's mean CE in eval mode (BatchNorm's running statistics); probe_class_grads: each
    class's class-mean-loss gradient in train mode, with the running statistics put back; a class without a probe
    image (class 3) has no gradient."""
    k, pool, C = S.cores(), _Pool(), 4
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                          nn.Linear(4, C))
    probe = torch.arange(10)
    x, y = pool.normalize(pool.train_x[probe]), pool.train_y[probe]
    with torch.no_grad():
        model(pool.normalize(pool.train_x))  # running statistics away from their initial values
    buffers = [b.clone() for b in model.buffers()]
    losses = S.probe_losses(model, pool, probe, C)
    assert model.training
    model.eval()
    with torch.no_grad():
        per = F.cross_entropy(model(x), y, reduction="none")
    model.train()
    assert losses[:3] == pytest.approx([float(per[y == c].mean()) for c in range(3)], rel=1e-5) and losses[3] == 0
    full = S.probe_class_grads(model, pool, probe, C, k)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers()))  # BatchNorm statistics put back
    assert full[3] is None
    per = F.cross_entropy(model(x), y, reduction="none")
    for c in range(3):
        ref = torch.autograd.grad(per[y == c].mean(), list(model.parameters()), retain_graph=True)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(full[c], ref))


def _record(curve, final_minority, update_norms, present, share=None):
    """A binary run's record as aggregate_method reads it: `curve` the minority accuracy at the evaluations of
    steps 0, 3, 6 and 9 (the majority at 100 - it); `share` its loss weight per class."""
    return {"eval": {"step": [0, 3, 6, 9], "per_class_acc": [[100.0 - m, m] for m in curve]},
            "final": {"minority_acc": final_minority, "majority_acc": 50.0, "balanced_acc": 50.0, "top1": 50.0,
                      "probe_loss": [0.4, 0.8]},
            "no_minority_frac": 0.5, "update_norm": update_norms, "minority_present": present, "loss_share": share,
            "measure": {"step": [0], "cos_batch_full": [[0.9, 0.5]], "descent_alignment": [[0.5, -0.5]],
                        "probe_loss": [[0.5, 1.0]]},
            "wall_time_s": 1.0}


def test_aggregation_comparison_and_verdict_on_hand_made_runs():
    meta = {"minority": [1], "majority": [0], "steps": 9, "lr_drop_step": 6}
    targets = {"minority": [(1, 50.0)], "balanced": [(1, 50.0)]}  # (every run's balanced accuracy is 50: at step 0)
    present = [True, False] * 4 + [True]
    fast = [_record([0, 50, 60, 70], 70.0, [1.0] * 6 + [100.0] * 3, present, [0.9, 0.1]),  # at 50 from step 3 on
            _record([0, 20, 60, 40], 0.0, [3.0] * 6 + [100.0] * 3, present, [0.7, 0.3])]   # 60 at step 6, 40 after
    agg = S.aggregate_method(fast, meta, targets)
    assert agg["final_minority_acc"]["std"] == pytest.approx(math.sqrt(2) * 35)   # std over seeds, n - 1
    assert agg["final_minority_zero_seeds"] == 1
    s2t = agg["steps_to_target"]["minority@1"]
    assert s2t["per_seed"] == [3, None] and s2t["median"] is None and s2t["median_reached"] == 3
    # the late jitter: the std of the minority accuracy over the evaluations of the last third (steps 6 and 9)
    assert agg["minority_acc_late_jitter"]["mean"] == pytest.approx((math.sqrt(50) + math.sqrt(200)) / 2)
    # update norms before the lr drop (step 6) only; with and without a minority image in the batch
    un = agg["update_norm"]
    assert un["steps_counted"] == 12 and un["mean"] == pytest.approx(2.0)
    assert un["with_minority_mean"] == pytest.approx(2.0) and un["without_minority_mean"] == pytest.approx(2.0)
    # the loss weight per step: the seeds' mean, summed over the group's classes; the minority accuracy's AUC: the mean
    # over the evaluations (45 and 30), averaged over seeds
    assert agg["loss_share"] == pytest.approx({"minority": 0.2, "majority": 0.8, "all": 1.0})
    assert agg["minority_acc_auc"]["mean"] == pytest.approx((45.0 + 30.0) / 2)
    # the final minority AUC: from runs that ranked by the log-odds; a study that did not record it, or ranked by
    # log-probabilities (which tie), shows none
    assert agg["final_minority_auc"] is None
    for r, a in zip(fast, (0.75, 0.65)):
        r["final"].update(minority_auc=a, mean_auc=a, auc_scores="log_odds")
    assert S.aggregate_method(fast, meta, targets)["final_minority_auc"]["mean"] == pytest.approx(0.7)
    fast[1]["final"]["auc_scores"] = "log_probs"
    assert S.aggregate_method(fast, meta, targets)["final_minority_auc"] is None
    # the same for a study.json read back: a summary written from tied scores loses its AUC
    res = {"settings": {"binary": {"runs": {"a": fast, "b": fast[:1]},
                                   "summary": {"a": {"final_minority_auc": 1, "final_mean_auc": 1},
                                               "b": {"final_minority_auc": 1, "final_mean_auc": 1}}}}}
    assert S.drop_tied_aucs(res)["settings"]["binary"]["summary"] == {
        "a": {"final_minority_auc": None, "final_mean_auc": None}, "b": {"final_minority_auc": 1, "final_mean_auc": 1}}
    # norm 1 in the batches with a minority image (steps 0, 2, 4), 3 in those without; then a skewed run: mean 2,
    # median 1, CV = std / mean (population std)
    un = S.aggregate_method([_record([0, 50, 60, 70], 70.0, [1.0, 3.0] * 3 + [100.0] * 3, present)], meta,
                            targets)["update_norm"]
    assert un["with_minority_mean"] == pytest.approx(1.0) and un["without_minority_mean"] == pytest.approx(3.0)
    un = S.aggregate_method([_record([0, 50, 60, 70], 70.0, [1.0] * 5 + [7.0] + [100.0] * 3, present)], meta,
                            targets)["update_norm"]
    assert un["median"] == pytest.approx(1.0) and un["cv"] == pytest.approx(math.sqrt(5) / 2, rel=1e-4)
    assert un["std"] == pytest.approx(math.sqrt(5), rel=1e-4)  # population std (ddof 1 would give 2.449)
    # a difference in standard errors of the difference, each side with its own seeds: sqrt(1/4 + 4/1) = 2.06
    assert S._in_se({"mean": 0.0, "std": 1.0, "n": 4}, {"mean": 1.0, "std": 2.0, "n": 1}) == (1.0, "0.5 s.e.")
    # the steps raising the minority loss: a negative cosine of the step with its full gradient; an orthogonal step
    # (cosine 0) raises nothing
    flat_step = _record([0, 50, 60, 70], 70.0, [1.0] * 9, present)
    flat_step["measure"]["descent_alignment"] = [[0.5, 0.0]]
    assert agg["descent_alignment_minority"]["frac_negative"] == 1.0
    assert S.aggregate_method([flat_step], meta, targets)["descent_alignment_minority"]["frac_negative"] == 0.0
    slow = [_record([0, 0, 60, 70], 70.0, [1.0, 5.0] * 3 + [1.0] * 3, present),
            _record([0, 0, 0, 50], 60.0, [1.0, 5.0] * 3 + [1.0] * 3, present)]
    # steps to the target: medians (3 + 6) / 2 = 4.5 and (6 + 9) / 2
    both = [fast[0], _record([0, 0, 60, 70], 65.0, [1.0, 3.0] * 3 + [1.0] * 3, present)]
    summary = {"a": S.aggregate_method(both, meta, targets), "b": S.aggregate_method(slow, meta, targets)}
    assert summary["a"]["steps_to_target"]["minority@1"]["median"] == pytest.approx(4.5)
    c = S.compare(summary, "a", "b")
    assert c["steps_to_target"]["minority@1"]["b_over_a"] == pytest.approx(7.5 / 4.5, rel=1e-4)
    # every comparison is b against a: the difference of the means, the ratios of the spreads and of the noise
    a, b = summary["a"], summary["b"]
    assert c["final_minority_acc"]["b_minus_a_mean"] == pytest.approx(65.0 - 67.5)
    assert c["final_minority_acc"]["b_std_over_a_std"] == pytest.approx(2.0, rel=1e-4)  # std 7.07 vs 3.54
    assert c["late_jitter"]["b_over_a"] == pytest.approx(
        b["minority_acc_late_jitter"]["mean"] / a["minority_acc_late_jitter"]["mean"], rel=1e-4)
    assert c["late_jitter"]["b_over_a"] > 1
    assert c["update_norm_cv"]["b_over_a"] == pytest.approx(b["update_norm"]["cv"] / a["update_norm"]["cv"], rel=1e-3)
    assert c["update_norm_cv"]["b_over_a"] > 1  # norms 1 and 5 (CV 0.67) against 1 and 3 beside 1s (CV 0.58)
    (speed,) = [line for line in S.verdict(c, summary) if "speed:" in line]
    assert "b 1.67x slower" in speed, speed
    # which one varies more over seeds (final balanced accuracy): the headline names it
    summary["a"]["final_balanced_acc"]["std"], summary["b"]["final_balanced_acc"]["std"] = 3.0, 1.0
    text = S.headline(S.compare(summary, "a", "b"), summary)
    assert "a varied more across seeds: std of the final balanced accuracy 3.00 vs 1.00 points (3.00x)" in text, text
    assert "a reached minority accuracy >= 50.0% (and stayed) faster" in text, text


# ---- the quick mode end to end ---------------------------------------------------------------------

# Both settings, all seven methods, 2 seeds, on 8x8 synthetic images: the whole pipeline in a few CPU seconds.
TINY = ["--quick", "--settings", "binary", "lt10", "--dataset", "synthetic", "--synthetic-train-per-class", "40",
        "--synthetic-test-per-class", "5", "--synthetic-size", "8", "--binary-ratio", "8", "--lt-ratio", "10",
        "--steps-binary", "12", "--steps-lt", "4", "--seeds", "2", "--width", "4", "--evals", "3", "--measures", "3",
        "--probe-per-class", "3", "--device", "cpu"]


def test_each_run_trains_with_the_studys_optimizer_and_records_its_true_update_norms(monkeypatch):
    """train_one's SGD gets --lr (--pcn-lr for the PCN methods), --momentum and --weight-decay, its lr drops by
    --lr-drop from --lr-drop-at, and update_norm records the norm of each step's real change of the parameters."""
    args = S.parse_args(TINY[:TINY.index("--steps-binary")] + [
        "--steps-binary", "4", "--settings", "binary", "--evals", "2", "--measures", "2", "--probe-per-class", "3",
        "--device", "cpu", "--lr", "0.1", "--pcn-lr", "0.05", "--momentum", "0.9", "--weight-decay", "0.01",
        "--lr-drop-at", "0.5", "--lr-drop", "0.1"])
    setting = S.build_setting(args, "binary", "cpu")
    made, lrs, norms = [], [], []
    real = torch.optim.SGD

    class Recorded(real):
        def __init__(self, params, **kw):
            made.append(kw)
            super().__init__(params, **kw)

        def step(self, *a, **k):
            lrs.append(self.param_groups[0]["lr"])
            before = [p.detach().clone() for g in self.param_groups for p in g["params"]]
            out = super().step(*a, **k)
            after = [p.detach() for g in self.param_groups for p in g["params"]]
            norms.append(torch.cat([(q - p).flatten() for p, q in zip(before, after)]).norm().item())
            return out
    monkeypatch.setattr(torch.optim, "SGD", Recorded)
    for method, lr in (("erm", 0.1), ("drs", 0.1), ("class_weights_u", 0.1), ("pcnsgd", 0.05)):
        made.clear(), lrs.clear(), norms.clear()
        r = S.train_one(args, setting, method, 0, log=lambda *a, **k: None)
        assert made == [{"lr": lr, "momentum": 0.9, "weight_decay": 0.01}] and r["lr"] == lr, method
        assert lrs == pytest.approx([lr, lr, lr / 10, lr / 10]), method
        assert r["update_norm"] == pytest.approx(norms, rel=1e-4) and min(norms) > 1e-4, method  # (5 digits)


def test_drs_trains_on_erms_images_until_the_lr_drop_then_on_oversamplings(tmp_path):
    """A study of erm and drs: drs's batches hold a minority image exactly where erm's do until the lr drop, one in
    nearly every batch after it, and the expected share of batches without one is erm's and oversampling's, weighted
    by their steps."""
    small = TINY[:TINY.index("--settings")] + ["--settings", "binary"] + TINY[TINY.index("--dataset"):]
    small[small.index("--steps-binary") + 1] = "40"
    run_script_forked(STUDY, *small, "--methods", "erm", "drs", "--lr-drop-at", "0.5", "--out", tmp_path, timeout=300)
    st = S.read_study(str(tmp_path / "study.json.gz"))["settings"]["binary"]
    assert st["lr_drop_step"] == 20
    for erm, drs in zip(st["runs"]["erm"], st["runs"]["drs"]):
        assert drs["minority_present"][:20] == erm["minority_present"][:20]
        assert sum(drs["minority_present"][20:]) == 20  # 16 class-balanced draws: none minority at 2^-16
    minority = S.sampler_class_probs("erm", st["train_counts"], None)[1]
    assert st["expected_no_minority_frac_iid"]["drs"] == pytest.approx(
        ((1 - minority) ** 16 + 0.5 ** 16) / 2, abs=1e-5)


def test_an_invocation_cut_short_keeps_its_finished_runs(tmp_path):
    """Each finished run is kept at once; the same command again trains only the missing ones and gives the same
    study.json; a run kept under other arguments is not reused."""
    out = tmp_path / "study"
    small = TINY[:TINY.index("--settings")] + ["--settings", "binary"] + TINY[TINY.index("--dataset"):]
    small[small.index("--seeds") + 1] = "1"
    first = run_script_forked(STUDY, *small, "--methods", "erm", "--out", out, timeout=300)
    assert "[1/1] binary erm seed0" in first.stdout and not (out / "runs").exists()  # done: study.json holds it
    (out / "runs").mkdir()
    erm = S.read_study(str(out / "study.json.gz"))["settings"]["binary"]["runs"]["erm"][0]
    # as if an invocation of erm + pcnsgd had been cut after erm: its record is there, pcnsgd's is not
    key = S.run_key(S.parse_args(small + ["--methods", "erm", "pcnsgd", "--out", str(out)]))
    (out / "runs" / "binary_erm_seed0.json").write_text(json.dumps({"key": key, "record": erm}))
    # a finished study (its study.json) is not replaced without --overwrite, and nothing trains
    refused = run_script_forked(STUDY, *small, "--methods", "erm", "pcnsgd", "--out", out, timeout=300, check=False)
    assert refused.returncode == 1 and "study.json.gz exists (a finished study): pass --overwrite" in refused.stderr
    assert "binary erm" not in refused.stdout and S.read_study(str(out / "study.json.gz"))["settings"][
        "binary"]["runs"]["erm"][0] == erm
    again = run_script_forked(STUDY, *small, "--methods", "erm", "pcnsgd", "--out", out, "--overwrite", timeout=300)
    assert "1 of the 2 runs kept from an earlier invocation" in again.stdout
    assert "[2/2] binary pcnsgd seed0" in again.stdout and "binary erm seed0:" not in again.stdout
    res = S.read_study(str(out / "study.json.gz"))
    assert res["settings"]["binary"]["runs"]["erm"][0] == erm and res["args"]["runs_kept"] == 1
    assert "1 run kept from earlier ones" in (out / "SUMMARY.md").read_text()
    (out / "runs").mkdir()  # kept under another learning rate: trained again
    (out / "runs" / "binary_erm_seed0.json").write_text(json.dumps({"key": key, "record": erm}))
    other = run_script_forked(STUDY, *small, "--methods", "erm", "--lr", "0.05", "--out", out, "--overwrite",
                              timeout=300)
    assert "kept from an earlier invocation" not in other.stdout and "[1/1] binary erm seed0" in other.stdout


def _state_and_parent(pid):
    """(state letter, parent pid) of a process from /proc (Linux); None once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state, ppid = f.read().rsplit(")", 1)[1].split()[:2]
        return state, int(ppid)
    except (OSError, ValueError):
        return None


def _cmdline(pid):
    """The command line of a process ('' once it is gone): a pool worker's runs multiprocessing's spawn_main, the
    resource tracker, also a child, does not."""
    try:
        with open(f"/proc/{pid}/cmdline") as f:
            return f.read().replace("\0", " ")
    except OSError:
        return ""


def _alive(pid):
    """pid is a live process: not gone, not a zombie."""
    return (_state_and_parent(pid) or ("Z",))[0] != "Z"


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="reads the process tree from /proc")
def test_workers_end_when_the_study_is_killed(tmp_path):
    """--workers 2, then SIGKILL to the study's own process alone (as `kill -9 <pid>`): its two workers, busy with
    a run, end within seconds instead of training on as orphans."""
    args = TINY[:TINY.index("--steps-binary")] + ["--steps-binary", "100000", "--settings", "binary",
                                                   "--methods", "erm", "oversampling", "--seeds", "1"]
    proc = subprocess.Popen([sys.executable, os.path.join(ROOT, STUDY), *args, "--workers", "2", "--threads", "1",
                             "--out", str(tmp_path / "study")], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    workers = []
    try:
        deadline = time.time() + 120
        while len(workers) < 2:
            assert proc.poll() is None and time.time() < deadline, "the study ended or started no 2 workers"
            time.sleep(0.2)
            workers = [int(d) for d in os.listdir("/proc") if d.isdigit() and _alive(int(d))
                       and _state_and_parent(int(d))[1] == proc.pid and "spawn_main" in _cmdline(int(d))]
        time.sleep(5)  # the workers are training now (torch imported, setting built)
        assert all(_alive(w) for w in workers)
        proc.kill()
        proc.wait()
        deadline = time.time() + 20
        while any(_alive(w) for w in workers) and time.time() < deadline:
            time.sleep(0.2)
        assert not [w for w in workers if _alive(w)], "workers outlived the study"
    finally:
        proc.kill()
        for w in workers:
            if _alive(w):
                os.kill(w, signal.SIGKILL)


def test_quick_mode_end_to_end(tmp_path):
    out = tmp_path / "study"
    proc = run_script_forked(STUDY, *TINY, "--out", out, timeout=300)
    assert "[28/28]" in proc.stdout  # 2 settings x 7 methods (every one but drs) x 2 seeds, with progress lines
    files = sorted(os.listdir(out))
    for setting in ("binary", "lt10"):
        for plot in ("per_class", "update_norms", "directional_noise", "final_spread"):
            assert f"{setting}_{plot}.png" in files
            assert os.path.getsize(out / f"{setting}_{plot}.png") > 5000
    with gzip.open(out / "study.json.gz", "rt") as f:
        text = f.read()
    assert "\n" not in text  # compact and gzipped: per-step records are most of a study's size
    res = json.loads(text)
    assert S.read_study(str(out / "study.json.gz")) == res
    for k in (1, 2):  # the same study, the same bytes (no file name or time in the gzip header)
        S.write_study(str(tmp_path / f"again{k}.json.gz"), res)
    assert (tmp_path / "again1.json.gz").read_bytes() == (tmp_path / "again2.json.gz").read_bytes() == \
        (out / "study.json.gz").read_bytes()
    b = res["settings"]["binary"]
    assert b["train_counts"] == [40, 5] and b["minority"] == [1] and b["steps"] == 12
    inv = [1 / 40, 1 / 5]  # inverse frequency, normalized to sum to C = 2
    assert b["class_weights"] == pytest.approx([2 * v / sum(inv) for v in inv], rel=1e-4)
    assert b["class_weights_u"] == pytest.approx([45 / (2 * 40), 45 / (2 * 5)], rel=1e-4)
    methods = res["args"]["methods"]  # the default: every method but drs (test_drs_trains_...)
    assert methods == [m for m in S.METHODS if m != "drs"]
    for m in methods:
        runs = b["runs"][m]
        assert [r["seed"] for r in runs] == [0, 1]
        for r in runs:
            assert len(r["update_norm"]) == 12 and all(u > 0 for u in r["update_norm"])
            assert r["eval"]["step"][0] == 0 and r["eval"]["step"][-1] == 12
            assert len(r["measure"]["cos_batch_full"]) == len(r["measure"]["step"]) >= 3
            assert sum(r["sampled_class_counts"]) == 12 * r["images_per_step"]
            assert 0 <= r["no_minority_frac"] <= 1
            # recount the batches without a minority image from the per-step record, written as 0 / 1 (not
            # true / false: 2 bytes a step in the JSON, which counts in runs of 20000 steps)
            assert r["no_minority_frac"] == pytest.approx(1 - sum(r["minority_present"]) / 12)
            assert all(type(p) is int and p in (0, 1) for p in r["minority_present"])
            for row in r["measure"]["cos_batch_full"]:
                assert all(c is None or -1.0001 <= c <= 1.0001 for c in row)
        for r in runs:  # the loss weight per class: a batch mean's is the class's share of the batches
            if m in ("erm", "oversampling"):
                total = sum(r["sampled_class_counts"])
                assert r["loss_share"] == pytest.approx([n / total for n in r["sampled_class_counts"]], rel=1e-4)
            if m in ("erm", "oversampling", "class_weights"):
                assert sum(r["loss_share"]) == pytest.approx(1.0, rel=1e-4)
            if m.startswith("pcnsgd"):
                assert r["loss_share"] is None
        if m.startswith("pcnsgd"):
            assert all(r["no_minority_frac"] == 0 for r in runs)  # every class in every batch
        s = b["summary"][m]
        assert s["final_minority_acc"]["values"] == [r["final"]["minority_acc"] for r in runs]
        # the ranking view: per class in [0, 1]; the binary minority's and majority's are one number (a
        # model's two log-odds rank the images in opposite orders)
        for r in runs:
            auc = r["final"]["auc"]
            assert all(0 <= a <= 1 for a in auc) and auc[1] == auc[0]  # the log-odds z1 - z0 and z0 - z1
            assert r["final"]["auc_scores"] == "log_odds"
            assert r["final"]["minority_auc"] == auc[1] and r["final"]["mean_auc"] == pytest.approx(sum(auc) / 2)
        assert s["final_minority_auc"]["values"] == [r["final"]["minority_auc"] for r in runs]
    # Paired design: erm and both class-weight variants see the same batches for a seed.
    for m in ("class_weights", "class_weights_n", "class_weights_u"):
        for r, e in zip(b["runs"][m], b["runs"]["erm"]):
            assert r["minority_present"] == e["minority_present"]
            assert r["sampled_class_counts"] == e["sampled_class_counts"]
    # Same seed, same initial weights: the step-0 probe loss is identical for every method.
    first = {m: b["runs"][m][0]["measure"]["probe_loss"][0] for m in methods}
    assert all(v == pytest.approx(first["erm"]) for v in first.values())
    # The summary's numbers come from the JSON: every method's final minority mean +- std appears as written.
    md = (out / "SUMMARY.md").read_text()
    assert "Mode **quick**, model **smallcnn**" in md and "device **cpu**" in md and "synthetic" in md
    for name, st in res["settings"].items():
        for m, s in st["summary"].items():
            f, a = s["final_minority_acc"], s["final_minority_auc"]
            assert f"| {m} | {f['mean']:.1f} ± {f['std']:.2f} |" in md
            assert f" | {a['mean']:.3f} ± {a['std']:.3f} | " in md
            # ... and the last column, the minority's pull and the others' push at the start, from the runs' records
            assert S.early_pull(st, m) is not None
            assert any(x.startswith(f"| {m} | ") and x.endswith(f" | {S._pull_cell(st, m)} |") for x in md.splitlines())
        for c in st["comparisons"]:
            fb = c["final_balanced_acc"]
            assert f"{fb['a_mean']:.1f} ± {fb['a_std']:.2f} vs {fb['b_mean']:.1f} ± {fb['b_std']:.2f}" in md
    # in both settings (lt10: 3 minority and 3 majority classes of 10), each final accuracy from the per-class ones,
    # and the batches without a minority image from the per-step record
    for name, st in res["settings"].items():
        for m in methods:
            for r in st["runs"][m]:
                f, acc = r["final"], r["final"]["per_class_acc"]
                assert f["balanced_acc"] == pytest.approx(sum(acc) / len(acc), rel=1e-4), (name, m)  # (5 digits)
                for group in ("minority", "majority"):
                    want = sum(acc[c] for c in st[group]) / len(st[group])
                    assert f[f"{group}_acc"] == pytest.approx(want, rel=1e-4), (name, m, group)
                assert r["no_minority_frac"] == pytest.approx(1 - sum(r["minority_present"]) / st["steps"])
    assert len(res["settings"]["lt10"]["minority"]) == 3
    # --from-json rebuilds the same summary from the JSON alone (with --no-plots, only it: the plots are made below)
    (out / "SUMMARY.md").unlink()
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"}
    run_script_forked(STUDY, "--from-json", out / "study.json.gz", "--no-plots", timeout=120)
    again = (out / "SUMMARY.md").read_text()
    assert again == md and {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.suffix == ".png"} == before
    # ... into --out when given, with its plots (the study's own folder untouched), not over another study without
    # --overwrite
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    run_script_forked(STUDY, "--from-json", out / "study.json.gz", "--out", tmp_path / "copy", timeout=120)
    assert (tmp_path / "copy" / "SUMMARY.md").read_text() == md and (tmp_path / "copy" / "study.json.gz").exists()
    assert sorted(p.name for p in (tmp_path / "copy").glob("*.png")) == sorted(f for f in files if f.endswith(".png"))
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    (tmp_path / "copy" / "SUMMARY.md").unlink()
    shutil.copy(out / "study.json.gz", tmp_path / "mine.json.gz")
    refused = run_script_forked(STUDY, "--from-json", tmp_path / "mine.json.gz", "--out", tmp_path / "copy",
                                timeout=120, check=False)
    assert refused.returncode == 1 and "copy/study.json.gz exists (another study): pass --overwrite" in refused.stderr
    assert not (tmp_path / "copy" / "SUMMARY.md").exists()
    # an older study's plain study.json: read as well, and replaced by its study.json.gz when written again
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "study.json").write_text(json.dumps(res, separators=(",", ":")))
    run_script_forked(STUDY, "--from-json", tmp_path / "old" / "study.json", "--no-plots", timeout=120)
    assert (tmp_path / "old" / "SUMMARY.md").read_text() == md and not (tmp_path / "old" / "study.json").exists()
    assert S.read_study(str(tmp_path / "old" / "study.json.gz")) == res
    # --readme's page (results/STUDY.md): a study's numbers (not --quick) as its summary states them; a --quick one
    # is left out.
    results = tmp_path / "results"
    for folder, mode in (("full", "full"), ("quick", "quick")):
        (results / folder).mkdir(parents=True)
        (results / folder / "study.json").write_text(json.dumps({**res, "mode": mode}))
    text = "\n".join(S.study_pages(str(results))[0])
    assert "full/SUMMARY.md" in text and "quick/" not in text and "full/binary_per_class.png" in text
    for name, st in res["settings"].items():
        o = st["summary"]["oversampling"]
        assert (f"final balanced accuracy {o['final_balanced_acc']['mean']:.1f} ± {o['final_balanced_acc']['std']:.2f}, "
                f"minority accuracy {o['final_minority_acc']['mean']:.1f} ± {o['final_minority_acc']['std']:.2f}, "
                f"minority AUC {o['final_minority_auc']['mean']:.3f} ± {o['final_minority_auc']['std']:.3f}.") in text
        for m in ("class_weights", "class_weights_n", "class_weights_u"):
            f = st["summary"][m]["final_balanced_acc"]
            assert f"  - {m} (" in text and f"final balanced accuracy {f['mean']:.1f} ± {f['std']:.2f} (" in text
        sh = st["summary"]["class_weights_n"]["loss_share"]
        assert f"{sh['minority']:.3f} / {sh['majority']:.3f}, an expected step {sh['all']:.3f} x a batch mean's" in text
    # ... and the PCNSGD table: one row per method, the per-class batch of the binary setting (synthetic 40:5 at
    # batch 16: pcnsgd round(16 x 40/45) = 14 + 2, pcnsgd_o 8 + 8), with the same cells as the summary's
    b = res["settings"]["binary"]
    for m, sizes in (("pcnsgd", "14 + 2"), ("pcnsgd_o", "8 + 8")):
        assert b["runs"][m][0]["per_class_batch"] == [int(k) for k in sizes.split(" + ")]
        f, mn = b["summary"][m]["final_balanced_acc"], b["summary"][m]["final_minority_acc"]
        a = b["summary"][m]["final_minority_auc"]
        assert (f"| {sizes} | {m} | smallcnn | 16 | {f['n']} x {b['steps']} | {f['mean']:.1f} ± {f['std']:.2f} | "
                f"{mn['mean']:.1f} ± {mn['std']:.2f} | {a['mean']:.3f} ± {a['std']:.3f} |") in text
    # ... and the lt10 one, by the length of the run (a second study, the same runs filed with 3x the
    # steps, in a folder whose name sorts first): one row per method and study, pcnsgd's rows first, then by steps,
    # the per-class batch written out largest class first
    lt = res["settings"]["lt10"]
    (results / "a-longer").mkdir()
    (results / "a-longer" / "study.json").write_text(json.dumps({**res, "mode": "full", "settings": {
        "lt10": {**lt, "steps": 3 * lt["steps"]}}}))
    lines, short = S.study_pages(str(results))
    at = lines.index(next(x for x in lines if x.startswith("PCNSGD in the lt10 setting")))
    rows = [x for x in lines[at:] if x.startswith("| ") and "| smallcnn |" in x]
    want = []
    for m in ("pcnsgd", "pcnsgd_o"):
        sizes = lt["runs"][m][0]["per_class_batch"]
        assert len(sizes) == len(lt["train_counts"]) and sizes == sorted(sizes, reverse=True)
        f, mn = lt["summary"][m]["final_balanced_acc"], lt["summary"][m]["final_minority_acc"]
        a = lt["summary"][m]["final_minority_auc"]
        for steps, folder in ((lt["steps"], "full"), (3 * lt["steps"], "a-longer")):
            want.append(f"| {' '.join(map(str, sizes))} | {m} | smallcnn | {lt['batch_size']} | {f['n']} x {steps} | "
                        f"{f['mean']:.1f} ± {f['std']:.2f} | {mn['mean']:.1f} ± {mn['std']:.2f} | "
                        f"{a['mean']:.3f} ± {a['std']:.3f} | {lt['summary'][m]['final_minority_zero_seeds']}/{f['n']} | "
                        f"{S._pull_cell({**lt, 'steps': steps}, m)} | [{folder}]({folder}/SUMMARY.md) |")
    assert rows == want
    # ... and below it, the others' push by the class that pushes, one line per lt10 study and method, in the
    # table's order
    want = []
    for m in ("pcnsgd", "pcnsgd_o"):
        for steps, folder in ((lt["steps"], "full"), (3 * lt["steps"], "a-longer")):
            by = S.early_push_by_class({**lt, "steps": steps}, m)
            assert len(by) == len(lt["classes"]) and abs(sum(by) - S.early_pull({**lt, "steps": steps}, m)["others"][
                "mean"]) < 1e-3
            want.append(f"- {m}, [{folder}]({folder}/SUMMARY.md) ({steps} steps): " +
                        ", ".join(f"{c} {x:.2f}" for c, x in zip(lt["classes"], by)))
    assert [x for x in lines[at:] if x.startswith("- pcnsgd")] == want
    # README's block, the page's short form: the answer so far, its links from the repository's root; no study's
    # answer of its own, and the PCNSGD tables on the page only; each setting's learning curves from its longest
    # study that ran oversampling (lt10: a-longer)
    rel = os.path.relpath(str(results), ROOT)
    verdict = S.verdict_lines([(f"{rel}/{d}", r) for d, r in S.full_studies(str(results))], {},
                              f"[{rel}/STUDY.md]({rel}/STUDY.md)")
    assert verdict and short[1:3 + len(verdict)] == ["", *verdict, ""]
    assert not any(x.startswith("PCNSGD in the") or (x.startswith("| ") and "| pcnsgd" in x) for x in short)
    assert not any(x.startswith("- **") for x in short) and f"[{rel}/STUDY.md]({rel}/STUDY.md)" in short[0]
    assert [x for x in short if x.startswith("![")] == [
        f"![{rel}/full: binary per-class learning curves, smallcnn, {b['steps']} steps]"
        f"({rel}/full/binary_per_class.png)",
        f"![{rel}/a-longer: lt10 per-class learning curves, smallcnn, {3 * lt['steps']} steps]"
        f"({rel}/a-longer/lt10_per_class.png)"]
    for none in S.study_pages(str(tmp_path / "none")):
        assert "No study without --quick" in "\n".join(none)


def test_the_answer_so_far_compares_the_best_class_weight_form_and_pytorchs_with_oversampling():
    acc = lambda **means: {m: {"final_balanced_acc": {"mean": v, "std": 1.0, "n": 5}}  # noqa: E731
                           for m, v in means.items()}
    setting = lambda model, steps, counts, batch=16, **means: {  # noqa: E731
        "model": model, "batch_size": batch, "steps": steps, "train_counts": counts, "summary": acc(**means)}
    plain = {"lr": 0.1, "momentum": 0.0, "weight_decay": 0.0}
    studies = [("a", {"device_name": "cpu", "args": plain, "settings": {
                   "binary": setting("smallcnn", 1500, [99, 1], oversampling=70.0, class_weights=50.0,
                                     class_weights_n=65.5, class_weights_u=55.0),
                   "lt10": setting("smallcnn", 300, [100, 10, 1], 128, oversampling=30.0, class_weights_u=31.25)}}),
               ("pcn-only", {"device_name": "cpu", "args": plain, "settings": {
                   "binary": setting("smallcnn", 9000, [99, 1], pcnsgd=60.0)}})]
    lead, blank, head, rule, *rows = S.verdict_lines(studies)
    assert ("over the studies in the table below (in each case every method trains at the case's one lr, not tuned per "
            "method, with plain SGD (no momentum, no weight decay); runs of 300 to 1500 steps") in lead
    assert ("than every class-weight form in 1 of the 2 cases measured (by the length of the run: 0 of 1 at 300 steps, "
            "1 of 1 at 1500).") in lead
    assert blank == "" and head.count("|") == rule.count("|") == 9 and rule == "|---" * 8 + "|"
    # one row per case; the s.e. of a difference of two 5-seed means with std 1 is sqrt(2 / 5) = 0.632;
    # w_n / w_u = C^2 / (N sum_c 1 / n_c) = 4 / (100 x 100/99) = 0.0396 for every class at 99 : 1; lt10 ran no
    # class_weights and no study recorded the AUC
    assert rows == [
        "| binary, smallcnn, cpu | 0.1 | 5 x 1500 | 70.0 ± 1.00 | class_weights_n (class_weights_u at 0.040x the lr) "
        "| -4.5 (7.1 s.e.) | -20.0 (31.6 s.e.) | n/a |",
        "| lt10, smallcnn, cpu | 0.1 | 5 x 300 | 30.0 ± 1.00 | class_weights_u | +1.2 (2.0 s.e.) | — | n/a |"]
    # with momentum the two forms are not one another at another lr, and the row does not say so
    momentum = [(d, {**res, "args": {**plain, "momentum": 0.9}}) for d, res in studies]
    assert "which is class_weights_u" not in "\n".join(S.verdict_lines(momentum))
    # ... and a case with another optimizer says so: in the lead and in its row
    lead, _, _, _, *rows = S.verdict_lines(studies[:1] + [("m", {**studies[0][1], "args": {
        **plain, "lr": 0.01, "momentum": 0.9, "weight_decay": 2e-4}})])
    assert ("not tuned per method, with plain SGD (no momentum, no weight decay) unless the case names its optimizer; "
            "runs of 300 to 1500 steps") in lead
    assert "in 2 of the 4 cases measured" in lead
    assert [r.split(" | ")[0] for r in rows] == [  # by setting, model, optimizer and length, not by study
        "| binary, smallcnn, cpu", "| binary, smallcnn, cpu, momentum 0.9, weight decay 0.0002", "| lt10, smallcnn, cpu",
        "| lt10, smallcnn, cpu, momentum 0.9, weight decay 0.0002"]
    assert ("| binary, smallcnn, cpu, momentum 0.9, weight decay 0.0002 | 0.01 | 5 x 1500 | 70.0 ± 1.00 | "
            "class_weights_n | -4.5 (7.1 s.e.) | -20.0 (31.6 s.e.) | n/a |") in rows
    # run_all.sh's table, where class_weights and oversampling both have runs: their top-1 and which is ahead
    row = lambda top1, n: {"top1": (top1, None), "n": n}  # noqa: E731
    table = {"x-exp-r100": {"oversampling": row(65.16, 1), "class_weights": row(69.8, 3)},
             "x-exp-r10": {"oversampling": row(80.0, 2), "class_weights": row(79.0, 2)}, "y": {"erm": row(1.0, 1)}}
    assert not any("run_all.sh's table" in x for x in S.verdict_lines(studies))  # no table given
    assert S.verdict_lines(studies, table)[-1] == (
        "In run_all.sh's table (the protocol's 200 epochs, momentum 0.9): class_weights 79.00 (2 seeds) against "
        "oversampling 80.00 (2 seeds) on x-exp-r10, the same order; class_weights 69.80 (3 seeds) against "
        "oversampling 65.16 (1 seed) on x-exp-r100, the other way round.")
    assert S.verdict_lines(studies[1:], table) == []
    # where the runs recorded the minority AUC: oversampling's against the highest form's
    auc = lambda **means: {m: {"mean": v, "std": 0.01, "n": 5} for m, v in means.items()}  # noqa: E731
    for m, a in auc(oversampling=0.9, class_weights=0.85, class_weights_u=0.875).items():
        studies[0][1]["settings"]["binary"]["summary"][m]["final_minority_auc"] = a
    assert S.verdict_lines(studies)[4].endswith(" | 0.900 vs 0.875 |")
    # a study of the case's PyTorch weighted mean alone (same setting, model, optimizer, length and seeds) joins its
    # row, the folder named; one of another length does not
    lt = studies[0][1]["settings"]["lt10"]
    cw = ("cw", {"device_name": "cpu", "args": plain, "settings": {
        "lt10": setting("smallcnn", 300, lt["train_counts"], 128, class_weights=20.0),
        "binary": setting("smallcnn", 20000, [99, 1], class_weights=40.0)}})
    lt10 = [r for r in S.verdict_lines(studies + [cw]) if r.startswith("| lt10")]
    assert lt10 == ["| lt10, smallcnn, cpu | 0.1 | 5 x 300 | 30.0 ± 1.00 | class_weights_u | +1.2 (2.0 s.e.) | "
                    "-10.0 (15.8 s.e.) (from [cw](cw/SUMMARY.md)) | n/a |"], lt10
    assert sum(r.startswith("| binary") for r in S.verdict_lines(studies + [cw])) == 1  # (no row of its own either)


def study(lr, momentum=0.0, steps=1500, weight_decay=0.0, seeds=5, model="smallcnn", batch=16, **means):
    """A binary-setting study.json with what the README tables read: per method (means: its final balanced accuracy)
    that accuracy over 5 seeds (std 1), an update-norm CV of accuracy / 100, a minority accuracy of half of it, and two
    runs whose final minority probe loss is accuracy / 1000 and 0.002 more; `seeds` is only the recorded argument."""
    args = {"lr": lr, "methods": list(means), "momentum": momentum, "weight_decay": weight_decay, "seeds": seeds}
    return {"device_name": "cpu", "args": args, "settings": {"binary": {
        "model": model, "batch_size": batch, "steps": steps, "train_counts": [99, 1], "minority": [1],
        "runs": {m: [{"final": {"probe_loss": [0.5, v / 1000 + d]}} for d in (0.0, 0.002)] for m, v in means.items()},
        "summary": {
            m: {"final_balanced_acc": {"mean": v, "std": 1.0, "n": 5}, "update_norm": {"cv": v / 100},
                "final_minority_acc": {"mean": v / 2, "std": 2.0, "n": 5}}
            for m, v in means.items()}}}}


def test_an_lr_sweep_is_a_table_of_every_lr_and_its_extra_studies_no_answer_of_their_own():
    base = study(0.1, oversampling=70.0, class_weights=50.0, class_weights_u=55.0, erm=50.0)
    studies = [("base", base), ("lr0.3", study(0.3, oversampling=60.0, class_weights_u=62.0)),
               ("lr0.01", study(0.01, oversampling=65.0, class_weights=51.0, class_weights_u=60.0)),
               ("longer", study(0.3, steps=3000, oversampling=1.0, class_weights_u=2.0))]  # another setting: alone
    ((key, runs),) = S.lr_sweeps(studies).items()
    assert key[:4] == ("binary", "smallcnn", 16, 1500) and [(lr, d) for lr, d, _ in runs] == [
        (0.01, "lr0.01"), (0.1, "base"), (0.3, "lr0.3")]
    assert S.sweep_extras(studies) == {"lr0.01", "lr0.3"}  # base ran the most methods
    momentum = studies + [("m", study(0.03, 0.9, oversampling=1.0))]
    assert len(S.lr_sweeps(momentum)[key]) == 3  # a study with other training arguments is not in the sweep
    # a sweep with momentum 0.9: its base is the lr nearest 0.1 as an effective lr / (1 - momentum), here 0.01;
    # its table and the answer's sentence name the momentum
    momentum = [(f"m{lr}", study(lr, 0.9, oversampling=70.0 - lr, class_weights=50.0, class_weights_u=55.0 + 1000 * lr))
                for lr in (0.003, 0.01, 0.03)]
    assert S.sweep_extras(momentum) == {"m0.003", "m0.03"}
    lines = S.lr_sweep_lines(momentum)
    assert lines[0].startswith("Learning-rate sweep, binary, smallcnn, cpu, momentum 0.9, batch 16, 5 seeds x 1500 "
                               "steps:")
    assert ("With momentum 0.9, a steady gradient moves the weights lr / (1 - 0.9) = 10 x lr per step: lr 0.003, "
            "0.01, 0.03 take the steps of plain SGD at lr 0.03, 0.1, 0.3.") in lines
    assert not any(x.startswith("With momentum") for x in S.lr_sweep_lines(studies))
    line = S.verdict_lines(momentum)[-1]
    assert ("In the lr sweep of binary, smallcnn, momentum 0.9 (lr 0.003 to 0.03, the table below) oversampling ends "
            "above class_weights at 3 of 3 and above class_weights_u at 2 of 3 lrs") in line
    lines = S.lr_sweep_lines(studies)
    assert lines[0].startswith("Learning-rate sweep, binary, smallcnn, cpu, batch 16, 5 seeds x 1500 steps:")
    assert lines[2:] == ["| method | lr 0.01 | lr 0.1 | lr 0.3 |", "|---|---|---|---|",
                         "| oversampling | 65.0 ± 1.00 | 70.0 ± 1.00 | 60.0 ± 1.00 |",
                         "| class_weights | 51.0 ± 1.00 | 50.0 ± 1.00 | — |",
                         "| class_weights_u | 60.0 ± 1.00 | 55.0 ± 1.00 | 62.0 ± 1.00 |", ""]
    with_n = [("base", study(0.1, oversampling=70.0, class_weights_n=58.0)), *studies[1:]]
    lines = S.lr_sweep_lines(with_n)
    assert "| class_weights_n | — | 58.0 ± 1.00 | — |" in lines
    assert "With plain SGD, class_weights_n at lr 0.1 is class_weights_u at lr 0.00396." in lines  # 4 / (100 x 100/99)
    assert not any("minority AUC" in x for x in lines)  # no study recorded it
    # the same runs' minority AUC, in a table of its own: an lr whose study did not record it shows a dash
    for d, res in with_n[:2]:
        for m, sm in res["settings"]["binary"]["summary"].items():
            sm["final_minority_auc"] = {"mean": 0.5 + sm["final_balanced_acc"]["mean"] / 1000, "std": 0.02, "n": 5}
    lines = S.lr_sweep_lines(with_n)
    at = lines.index("The same runs' final minority AUC (a ranking, see SUMMARY.md; —: not run, or not recorded):")
    assert lines[at + 2:at + 8] == ["| method | lr 0.01 | lr 0.1 | lr 0.3 |", "|---|---|---|---|",
                                    "| oversampling | — | 0.570 ± 0.020 | 0.560 ± 0.020 |",
                                    "| class_weights_n | — | 0.558 ± 0.020 | — |",
                                    "| class_weights_u | — | — | 0.562 ± 0.020 |", ""]
    lines = S.verdict_lines(studies)
    assert "in 1 of the 2 cases measured" in lines[0]  # base and longer: the extras are no cases
    assert len(lines) == 4 + 2 + 2
    line = lines[-1]
    assert ("In the lr sweep of binary, smallcnn (lr 0.01 to 0.3, the table below) oversampling ends above "
            "class_weights at 2 of 2 and above class_weights_u at 2 of 3 lrs") in line


def test_momentum_against_plain_sgd_pairs_the_studies_at_the_same_step():
    studies = [("p0.1", study(0.1, 0.0, oversampling=70.0, class_weights=50.0, erm=40.0)),
               ("p0.3", study(0.3, 0.0, oversampling=60.0)),
               ("m0.01", study(0.01, 0.9, oversampling=66.0, class_weights=52.0, class_weights_u=55.0, erm=41.0)),
               ("m0.003", study(0.003, 0.9, oversampling=1.0)),  # the step of plain lr 0.03, which did not run
               ("m0.03-longer", study(0.03, 0.9, steps=3000, oversampling=1.0))]  # plain lr 0.3's step, other length
    ((name, model, device, plain, heavy),) = S.momentum_pairs(studies)
    assert (name, model, device, plain[:2], heavy[:2]) == ("binary", "smallcnn", "cpu", (0.1, "p0.1"), (0.01, "m0.01"))
    pair = "| binary, smallcnn, cpu | 0.1 / 0.01 (momentum 0.9) |"
    assert S.momentum_lines(studies)[2:] == [  # the methods both ran, erm aside
        "| setting, model, device | lr plain / with momentum | method | update-norm CV | final balanced accuracy | "
        "studies |", "|---|---|---|---|---|---|",
        f"{pair} oversampling | 0.70 → 0.66 | 70.0 ± 1.00 → 66.0 ± 1.00 | [p0.1](p0.1/SUMMARY.md), [m0.01](m0.01/SUMMARY.md) |",
        f"{pair} class_weights | 0.50 → 0.52 | 50.0 ± 1.00 → 52.0 ± 1.00 | [p0.1](p0.1/SUMMARY.md), [m0.01](m0.01/SUMMARY.md) |",
        ""]
    assert S.momentum_lines(studies[1:]) == []  # no plain study at a momentum study's step: no table


def test_longer_runs_pair_with_the_shortest_alike_but_for_the_steps_the_weight_decay_and_the_seeds():
    studies = [("s", study(0.01, 0.9, oversampling=66.0, class_weights=50.0, class_weights_u=55.0)),
               ("s-lr0.03", study(0.03, 0.9, oversampling=1.0)),  # another lr: no longer run of its own
               ("long-wd", study(0.01, 0.9, steps=20000, weight_decay=2e-4, oversampling=58.0, class_weights=56.0)),
               # fewer seeds than the short study (a long run is costly): still its pair, the seeds shown
               ("long", study(0.01, 0.9, steps=20000, seeds=2, oversampling=59.0, class_weights_u=57.0)),
               ("plain-long", study(0.01, 0.0, steps=20000, oversampling=1.0)),  # no plain short run at lr 0.01
               ("b8-long", study(0.01, 0.9, steps=20000, batch=8, oversampling=1.0)),  # another batch: no pair
               ("s-wd", study(0.01, 0.9, weight_decay=2e-4, oversampling=1.0))]  # as short as s: no pair
    assert [(p[:3], p[3][0], p[4][0]) for p in S.length_pairs(studies)] == [
        (("binary", "smallcnn", "cpu"), "s", "long"), (("binary", "smallcnn", "cpu"), "s", "long-wd")]
    case = "| binary, smallcnn, cpu, lr 0.01, momentum 0.9 | 5 x 1500 → 2 x 20000"
    case_wd = "| binary, smallcnn, cpu, lr 0.01, momentum 0.9 | 5 x 1500 → 5 x 20000"
    links = "[s](s/SUMMARY.md), [long](long/SUMMARY.md) |"
    assert S.length_lines(studies)[2:] == [  # the methods both ran
        "| setting, model, device, optimizer | seeds x steps | method | final balanced accuracy | final minority "
        "accuracy | final minority AUC | final minority training loss (probe) | studies |",
        "|---|---|---|---|---|---|---|---|",
        f"{case} | oversampling | 66.0 ± 1.00 → 59.0 ± 1.00 | 33.0 ± 2.00 → 29.5 ± 2.00 | n/a → n/a | "
        f"0.067 ± 0.001 → 0.060 ± 0.001 | {links}",  # (0.066 and 0.068: std 0.0014)
        f"{case} | class_weights_u | 55.0 ± 1.00 → 57.0 ± 1.00 | 27.5 ± 2.00 → 28.5 ± 2.00 | n/a → n/a | "
        f"0.056 ± 0.001 → 0.058 ± 0.001 | {links}",
        f"{case_wd} (weight decay 0.0002) | oversampling | 66.0 ± 1.00 → 58.0 ± 1.00 | 33.0 ± 2.00 → 29.0 ± 2.00 | "
        "n/a → n/a | 0.067 ± 0.001 → 0.059 ± 0.001 | [s](s/SUMMARY.md), [long-wd](long-wd/SUMMARY.md) |",
        f"{case_wd} (weight decay 0.0002) | class_weights | 50.0 ± 1.00 → 56.0 ± 1.00 | 25.0 ± 2.00 → 28.0 ± 2.00 | "
        "n/a → n/a | 0.051 ± 0.001 → 0.057 ± 0.001 | [s](s/SUMMARY.md), [long-wd](long-wd/SUMMARY.md) |", ""]
    assert S.length_lines(studies[1:]) == []  # no short run without weight decay at lr 0.01: no table
    assert S.momentum_pairs(studies) == []  # the plain long run's step is lr 0.01, no momentum run's
    # a second long study of the same case with a method of its own (a class-weight form run later): its row goes
    # among the case's rows in the order of the methods, not after them
    cw = [("long-cw", study(0.01, 0.9, steps=20000, seeds=2, class_weights=51.0))]
    rows = [r.split(" | ")[2] + " " + r.split("[")[-1].split("]")[0]  # method and long study
            for r in S.length_lines(studies + cw)[4:-1]]
    assert rows == ["oversampling long", "class_weights long-cw", "class_weights_u long", "oversampling long-wd",
                    "class_weights long-wd"]


def test_larger_batches_pair_with_smaller_ones_at_the_same_steps_or_the_same_images():
    studies = [("b16", study(0.1, oversampling=70.0, class_weights=50.0, class_weights_u=55.0)),
               ("b16-6000", study(0.1, steps=6000, oversampling=66.0, class_weights_u=64.0)),
               ("b64", study(0.1, batch=64, seeds=3, oversampling=72.0, class_weights_u=70.0)),  # fewer seeds: pairs
               ("b64-lr0.3", study(0.3, batch=64, oversampling=1.0)),  # another lr: no pair
               ("b32-2000", study(0.1, batch=32, steps=2000, oversampling=1.0)),  # neither the steps nor the images
               ("b64-m0.9", study(0.1, 0.9, batch=64, oversampling=1.0))]  # another optimizer: no pair
    assert [(p[:3], p[3][0], p[4][0], p[5]) for p in S.batch_pairs(studies)] == [
        (("binary", "smallcnn", "cpu"), "b16", "b64", "steps"),
        (("binary", "smallcnn", "cpu"), "b16-6000", "b64", "images")]
    lines = S.batch_lines(studies)
    assert lines[2:4] == [
        "| setting, model, device, lr, optimizer | batch x steps (seeds) | alike in | method | final balanced accuracy | "
        "difference from oversampling | final minority accuracy | final minority AUC | final minority training loss "
        "(probe) | update-norm CV | studies |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    links = "[b16](b16/SUMMARY.md), [b64](b64/SUMMARY.md) |"
    steps = "| binary, smallcnn, cpu, lr 0.1 | 16 x 1500 (5 seeds) → 64 x 1500 (3 seeds) | steps |"
    images = "| binary, smallcnn, cpu, lr 0.1 | 16 x 6000 (5 seeds) → 64 x 1500 (3 seeds) | images |"
    # the s.e. of a difference of two 5-seed means with std 1: sqrt(2 / 5) = 0.632; the minority probe loss of two
    # runs, accuracy / 1000 and 0.002 more: mean accuracy / 1000 + 0.001, std 0.0014
    assert lines[4:7] == [
        f"{steps} oversampling | 70.0 ± 1.00 → 72.0 ± 1.00 | — | 35.0 ± 2.00 → 36.0 ± 2.00 | n/a → n/a | "
        f"0.071 ± 0.001 → 0.073 ± 0.001 | 0.70 → 0.72 | {links}",
        f"{steps} class_weights_u | 55.0 ± 1.00 → 70.0 ± 1.00 | -15.0 (23.7 s.e.) → -2.0 (3.2 s.e.) | "
        f"27.5 ± 2.00 → 35.0 ± 2.00 | n/a → n/a | 0.056 ± 0.001 → 0.071 ± 0.001 | 0.55 → 0.70 | {links}",
        f"{images} oversampling | 66.0 ± 1.00 → 72.0 ± 1.00 | — | 33.0 ± 2.00 → 36.0 ± 2.00 | n/a → n/a | "
        "0.067 ± 0.001 → 0.073 ± 0.001 | 0.66 → 0.72 | [b16-6000](b16-6000/SUMMARY.md), [b64](b64/SUMMARY.md) |"]
    assert len(lines) == 9 and lines[-1] == ""  # and class_weights_u of the images pair; class_weights: b64 lacks it
    assert S.batch_lines(studies[2:]) == []  # no smaller batch alike
    # the answer's table names a batch that is not the setting's default; the default's rows stay as they were
    rows = [r for r in S.verdict_lines(studies) if r.startswith("| binary")]
    assert [r.split(" | ")[0] for r in rows] == ["| binary, smallcnn, cpu", "| binary, smallcnn, cpu, batch 64",
                                                 "| binary, smallcnn, cpu"]  # by length, then batch


def test_deferred_resampling_joins_oversampling_and_the_class_weights_of_its_case():
    """drs_lines: per case with a drs run, oversampling's row, drs's and every class-weight form's, each from the
    study of the case that ran it (a study of drs alone joins the case's earlier study), with its difference from
    oversampling; a case without oversampling, or a study that ran no drs, makes no row."""
    def with_drop(res):
        res["settings"]["binary"]["lr_drop_step"] = 15000
        return res
    long = with_drop(study(0.01, 0.9, steps=20000, oversampling=58.0, class_weights=57.0, class_weights_u=69.0))
    drs = with_drop(study(0.01, 0.9, steps=20000, drs=66.0))
    other = with_drop(study(0.01, 0.9, steps=20000, seeds=3, drs=1.0))  # other seeds: another case, no oversampling
    assert S.drs_lines([("long", long)]) == [] and S.drs_lines([("drs", drs), ("other", other)]) == []
    lines = S.drs_lines([("long", long), ("drs", drs), ("other", other)])
    case = "| binary, smallcnn, cpu, momentum 0.9 | 0.01 | 5 x 20000 | 15000 |"
    # the s.e. of a difference of two 5-seed means with std 1: sqrt(2 / 5) = 0.632; the probe loss as in study()
    assert lines[2:] == [
        "| case: setting, model, device, optimizer | lr | seeds x steps | drs: oversampling from step | method | final "
        "balanced accuracy | difference from oversampling | final minority accuracy | final minority AUC | final "
        "minority training loss (probe) | study |", "|---" * 11 + "|",
        f"{case} oversampling | 58.0 ± 1.00 | — | 29.0 ± 2.00 | n/a | 0.059 ± 0.001 | [long](long/SUMMARY.md) |",
        f"{case} drs | 66.0 ± 1.00 | +8.0 (12.6 s.e.) | 33.0 ± 2.00 | n/a | 0.067 ± 0.001 | [drs](drs/SUMMARY.md) |",
        f"{case} class_weights | 57.0 ± 1.00 | -1.0 (1.6 s.e.) | 28.5 ± 2.00 | n/a | 0.058 ± 0.001 | "
        "[long](long/SUMMARY.md) |",
        f"{case} class_weights_u | 69.0 ± 1.00 | +11.0 (17.4 s.e.) | 34.5 ± 2.00 | n/a | 0.070 ± 0.001 | "
        "[long](long/SUMMARY.md) |", ""]
    drop = with_drop(study(0.01, 0.9, steps=20000, drs=1.0))  # another lr drop: another case, no oversampling
    drop["args"]["lr_drop_at"] = 0.8
    assert S.drs_lines([("long", long), ("drop", drop)]) == []
    # ... whose rows name their lr drop, where it is not the default's (x0.1 from 0.75 of the steps)
    protocol = with_drop(study(0.01, 0.9, steps=20000, oversampling=50.0, drs=55.0))
    protocol["args"].update(lr_drop_at=0.8, lr_drop=0.01)
    assert [line.split(" | oversampling |")[0] for line in S.drs_lines([("p", protocol)])[4:5]] == [
        "| binary, smallcnn, cpu, momentum 0.9, lr x0.01 from 0.8 of the steps | 0.01 | 5 x 20000 | 15000"]


def test_readme_curves_come_from_the_longest_study_then_one_with_weight_decay_then_one_of_the_resnet32():
    studies = [("z-short", study(0.01, 0.9, steps=1500, weight_decay=2e-4, model="resnet32", oversampling=1.0)),
               ("y-long", study(0.01, 0.9, steps=20000, oversampling=1.0)),
               ("x-long-wd", study(0.01, 0.9, steps=20000, weight_decay=2e-4, oversampling=1.0)),
               ("w-long-wd-resnet", study(0.01, 0.9, steps=20000, weight_decay=2e-4, model="resnet32",
                                          oversampling=1.0)),
               ("z-longest-no-oversampling", study(0.01, 0.9, steps=30000, pcnsgd=1.0))]
    assert {k: d for k, (d, _) in S.longest_runs(studies).items()} == {"binary": "w-long-wd-resnet"}
    assert {k: d for k, (d, _) in S.longest_runs(studies[:3]).items()} == {"binary": "x-long-wd"}
    assert {k: d for k, (d, _) in S.longest_runs(studies[:2]).items()} == {"binary": "y-long"}
    # ... and of those, one that ran a class-weight form beside oversampling
    alike = [("a-weights", study(0.01, 0.9, steps=20000, oversampling=1.0, class_weights=1.0)),
             ("b-drs", study(0.01, 0.9, steps=20000, oversampling=1.0, drs=1.0))]
    assert {k: d for k, (d, _) in S.longest_runs(alike).items()} == {"binary": "a-weights"}


def test_the_study_page_lists_each_study_in_the_order_of_the_answers_table_named_by_its_lr_and_steps():
    def described(res):
        st = res["settings"]["binary"]
        st["description"] = "a vs b, 1:99"
        for m in st["summary"]:
            st["summary"][m]["final_minority_zero_seeds"] = 0
        return res
    studies = [("a-long", described(study(0.1, steps=20000, oversampling=60.0, class_weights=55.0))),
               ("b-momentum", described(study(0.01, 0.9, oversampling=66.0, class_weights=50.0))),
               ("c-short", described(study(0.1, oversampling=70.0, class_weights=50.0)))]
    heads = [x.split(": ")[0] for x in S.study_page_lines(studies, {}) if x.startswith("- **")]
    assert heads == ["- **binary, smallcnn, cpu, lr 0.1, 1500 steps**",  # as the table's rows
                     "- **binary, smallcnn, cpu, lr 0.1, 20000 steps**",
                     "- **binary, smallcnn, cpu, momentum 0.9, lr 0.01, 1500 steps**"]


def test_readme_states_the_committed_studies():
    """README's study block and results/STUDY.md are what --readme writes from the committed study.json files: no
    number typed by hand."""
    block = readme_block("study")
    stale = "stale: run `python studies/oversampling_vs_weights.py --readme`"
    results = os.path.join(ROOT, "results")
    page, short = S.study_pages(results)
    assert block.strip() == "\n".join(short).strip(), "README's study block is " + stale
    with open(os.path.join(results, "STUDY.md")) as f:
        assert f.read() == "\n".join(page).strip() + "\n", "results/STUDY.md is " + stale


def test_bad_input_gives_a_one_line_error(tmp_path):
    proc = run_script_forked(STUDY, "--quick", "--data-dir", tmp_path / "nope", "--out", tmp_path, check=False)
    assert proc.returncode == 1
    assert re.fullmatch(r"error: data folder .*nope does not exist: .*\n", proc.stderr)
    proc = run_script_forked(STUDY, "--quick", "--dataset", "synthetic", "--methods", "erm", "magic", "--out", tmp_path,
                             check=False)
    assert proc.returncode == 1 and proc.stderr.strip() == "error: unknown method(s) magic: use " + " ".join(S.METHODS)
    for flag in ("--lr", "--binary-ratio", "--target-fracs"):  # argparse's float() takes them
        with pytest.raises(S.common.UserError, match=f"^error: {flag} must be a finite number, got inf$"):
            S.parse_args(["--quick", "--dataset", "synthetic", flag, "inf"])
    # a class the image folder does not have: refused from its folder names, before any image is decoded
    for split in ("train", "test"):
        for c in ("automobile", "truck"):
            (tmp_path / "imgs" / split / c).mkdir(parents=True)
    with pytest.raises(S.common.UserError, match=r"class\(es\) car not in .*imgs/train \(classes: automobile, truck\)"):
        S.parse_args(["--quick", "--data-dir", str(tmp_path / "imgs"), "--binary-classes", "car", "truck"])
    # out-of-range numbers, and an --out that is a file, are refused before anything trains (a traceback after the
    # first run did before); a batch larger than the setting's training set is refused once the set is built
    (tmp_path / "a_file").write_text("")
    for more, message in ((["--data-seed", "-1"], r"--data-seed must be in \[0, 2\^32 - 1\), got -1"),
                          (["--seed0", "-1"], "--seed0 must be >= 0, got -1"),
                          (["--target-acc", "500"], r"--target-acc must be in \(0, 100\] \(%\), got 500.0"),
                          (["--out", str(tmp_path / "a_file")], "is a file, not a folder")):
        with pytest.raises(S.common.UserError, match=message):
            S.parse_args(["--quick", "--dataset", "synthetic", *more])
    for drop in ("0", "1"):  # drs switches at the lr drop: a run without one would be erm's
        with pytest.raises(S.common.UserError, match=r"--methods drs switches to oversampling at the lr drop: "
                                                     r"--lr-drop-at must be in \(0, 1\)"):
            S.parse_args(["--quick", "--dataset", "synthetic", "--methods", "drs", "--lr-drop-at", drop])
    proc = run_script_forked(STUDY, "--quick", "--dataset", "synthetic", "--batch-binary", "100000", "--out",
                             tmp_path / "b", check=False)
    assert proc.returncode == 1 and proc.stderr == ("error: --batch-binary 100000 is larger than the binary training "
                                                    "set (500 images)\n") and not (tmp_path / "b").exists()
    for more, message in ((["--from-json", str(tmp_path)], "is a folder: pass its study.json.gz"),
                          (["--from-json", os.path.join(ROOT, "results", "study-cpu", "study.json.gz"), "--out",
                            str(tmp_path / "a_file")], "is a file, not a folder")):
        with pytest.raises(S.common.UserError, match=message):
            S.main(more)
