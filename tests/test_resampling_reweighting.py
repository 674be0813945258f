"""Identities and hand-computed values of the re-sampling and re-weighting methods: oversampling (RS, square-root,
DRS), undersampling, class weights (RW, DRW), focal loss and the class-balanced loss. CPU, a few seconds, plus
one tiny DRS run that checks the class histograms written to its JSON."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import C10_LT100, CB_C10_LT100_9999, SMOKE_ARGS, assert_user_error, load_method, read_results, run_script_forked

over = load_method("oversampling")
under = load_method("undersampling")
cw = load_method("class_weights")
focal = load_method("focal")
cb = load_method("class_balanced")
sam = load_method("sam")
erm = load_method("erm")

NAME_ARGS = ["--dataset", "synthetic", "--epochs", "200", "--device", "cpu"]


def long_tail_labels(counts, seed=0):
    labels = torch.cat([torch.full((n,), c, dtype=torch.long) for c, n in enumerate(counts)])
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))]


def chi_square(observed, expected_probs):
    """Pearson's statistic of a class histogram against expected class probabilities."""
    observed = torch.as_tensor(observed, dtype=torch.float64)
    expected = torch.as_tensor(expected_probs, dtype=torch.float64) * observed.sum()
    return ((observed - expected) ** 2 / expected).sum().item()


# 9 degrees of freedom (10 classes): P(chi2 > 40) ~ 7e-6. Draws are seeded, so this never flakes.
CHI2_BOUND = 40.0


# ------------------------------------------------------------------------------------------------
# Oversampling
# ------------------------------------------------------------------------------------------------

def test_sampling_weights_are_per_sample_powers_of_class_counts():
    labels = torch.tensor([0, 1, 1, 2, 0])
    counts = [4, 9, 16]
    assert torch.allclose(over.sampling_weights(labels, counts, 1.0), torch.tensor([1 / 4, 1 / 9, 1 / 9, 1 / 16, 1 / 4]))
    assert torch.allclose(over.sampling_weights(labels, counts, 0.5), torch.tensor([1 / 2, 1 / 3, 1 / 3, 1 / 4, 1 / 2]))
    assert torch.equal(over.sampling_weights(labels, counts, 0.0), torch.ones(5))


def test_oversampler_histogram_is_balanced_and_the_plain_shuffle_is_not():
    labels = long_tail_labels(C10_LT100)
    n, uniform = len(labels), [0.1] * 10
    gen = torch.Generator().manual_seed(0)
    order = over.oversample_order(labels, C10_LT100, n, gen, power=1.0)
    assert order.shape == (n,) and order.dtype == torch.long and 0 <= order.min() and order.max() < n
    balanced = torch.bincount(labels[order], minlength=10)
    assert chi_square(balanced, uniform) < CHI2_BOUND, balanced.tolist()
    # The plain shuffle (what the official Resample option really trains on, issue #7) fails the same bound.
    natural = torch.bincount(labels[torch.randperm(n, generator=gen)], minlength=10)
    assert natural.tolist() == C10_LT100
    assert chi_square(natural, uniform) > 100 * CHI2_BOUND
    # With replacement: the 50 tail images are each drawn ~25 times in one epoch.
    tail_draws = order[labels[order] == 9]
    assert len(tail_draws) > 1000 and len(torch.unique(tail_draws)) == 50


def test_cb_sampler_draws_with_the_official_effective_number_weights():
    labels = long_tail_labels(C10_LT100)
    counts = torch.tensor(C10_LT100, dtype=torch.float64)
    w = over.sampling_weights(labels, C10_LT100, beta=0.9999)
    want = ((1 - 0.9999) / (1 - 0.9999 ** counts))[labels]  # utils.ImbalancedDatasetSampler, per sample
    assert torch.allclose(w.double(), want, rtol=1e-6)
    probs = counts * (1 - 0.9999) / (1 - 0.9999 ** counts)
    probs = probs / probs.sum()
    assert probs[0] == pytest.approx(0.119, abs=5e-4) and probs[9] == pytest.approx(0.094, abs=5e-4)  # header
    order = over.oversample_order(labels, C10_LT100, len(labels), torch.Generator().manual_seed(2), beta=0.9999)
    hist = torch.bincount(labels[order], minlength=10)
    assert chi_square(hist, probs) < CHI2_BOUND and chi_square(hist, [0.1] * 10) > CHI2_BOUND
    assert over.parse_args([*NAME_ARGS, "--beta", "0.9999"]).method == "oversampling_cb"
    assert over.parse_args([*NAME_ARGS, "--beta", "0.9999", "--start-epoch", "160"]).method == "drs_cb"


def test_sqrt_sampling_lands_between_natural_and_balanced():
    labels = long_tail_labels(C10_LT100)
    order = over.oversample_order(labels, C10_LT100, len(labels), torch.Generator().manual_seed(1), power=0.5)
    hist = torch.bincount(labels[order], minlength=10).double()
    counts = torch.tensor(C10_LT100, dtype=torch.float64)
    sqrt_probs = counts.sqrt() / counts.sqrt().sum()
    natural_probs = counts / counts.sum()
    assert chi_square(hist, sqrt_probs) < CHI2_BOUND
    assert chi_square(hist, [0.1] * 10) > 10 * CHI2_BOUND
    assert chi_square(hist, natural_probs) > 10 * CHI2_BOUND
    frac = hist / hist.sum()
    assert 0.1 < frac[0] < natural_probs[0]          # head: less than natural, more than balanced
    assert natural_probs[9] < frac[9] < 0.1          # tail: more than natural, less than balanced


@pytest.mark.parametrize("sampler", ["oversample", "undersample"])
def test_the_samplers_follow_their_generator(sampler):
    """Every draw comes from the generator given (the run's, saved in checkpoints), none from torch's global one."""
    labels = long_tail_labels([30, 10, 3])
    order = (lambda g: over.oversample_order(labels, [30, 10, 3], 100, g)) if sampler == "oversample" else \
        (lambda g: under.undersample_order(labels, [30, 10, 3], g))
    a = order(torch.Generator().manual_seed(5))
    b = order(torch.Generator().manual_seed(5))
    gen = torch.Generator().manual_seed(5)
    c1, c2 = order(gen), order(gen)
    assert torch.equal(a, b) and not torch.equal(c1, c2) and len(a) == (100 if sampler == "oversample" else 9)


def test_drs_json_histogram_is_natural_before_the_switch_and_balanced_after(tmp_path):
    run_script_forked("methods/oversampling.py", *SMOKE_ARGS, "--start-epoch", "1", "--eval-every", "2", "--out",
                      tmp_path)
    (path, r), = read_results(tmp_path).items()
    assert path.split(os.sep)[1] == "drs" and r["method"] == "drs"
    counts = r["train_class_counts"]
    hist = r["extra"]["sampled_class_counts"]
    assert len(hist) == 2
    assert hist[0] == counts                             # epoch 0: the plain shuffle, every image once
    assert sum(hist[1]) == sum(counts) == r["args"]["num_samples"]
    uniform = [1 / len(counts)] * len(counts)
    assert chi_square(hist[1], uniform) < 30             # epoch 1: class-balanced draws
    assert chi_square(hist[0], uniform) > 150            # ... which the natural epoch is not
    assert hist[1][-1] > 2 * counts[-1]                  # the 10 tail images are repeated


# ------------------------------------------------------------------------------------------------
# Undersampling
# ------------------------------------------------------------------------------------------------

def test_undersampler_takes_n_min_per_class_without_replacement_and_redraws():
    counts = [50, 20, 7, 3]
    labels = long_tail_labels(counts)
    gen = torch.Generator().manual_seed(0)
    epochs = [under.undersample_order(labels, counts, gen) for _ in range(3)]
    for order in epochs:
        assert torch.bincount(labels[order], minlength=4).tolist() == [3, 3, 3, 3]
        assert under.class_histogram(labels, order, 4) == [3, 3, 3, 3]  # what the JSON records
        assert len(torch.unique(order)) == len(order) == 12
    assert under.class_histogram(torch.tensor([0, 0, 1, 3, 4]), torch.tensor([0, 1, 3, 1]), 5) == [3, 0, 0, 1, 0]
    head = [set(o[labels[o] == 0].tolist()) for o in epochs]
    assert head[0] != head[1] or head[1] != head[2]      # a new draw each epoch
    assert not torch.equal(epochs[0], epochs[1])
    # The order is shuffled, not class by class.
    assert labels[epochs[0]].tolist() != sorted(labels[epochs[0]].tolist())


# ------------------------------------------------------------------------------------------------
# Class weights
# ------------------------------------------------------------------------------------------------

def test_inverse_frequency_weights_of_the_1_to_99_question():
    w = cw.inverse_frequency_weights([99, 1])
    assert torch.allclose(w, torch.tensor([0.02, 1.98]), atol=1e-6)


def test_inverse_frequency_weights_cifar10_lt100():
    w = cw.inverse_frequency_weights(C10_LT100)
    # 1/n_c of the CIFAR-10-LT R=100 counts, normalized to sum to C = 10
    expected = [0.040, 0.067, 0.112, 0.187, 0.312, 0.520, 0.867, 1.447, 2.424, 4.024]
    assert [round(x, 3) for x in w.tolist()] == expected
    assert math.isclose(w.sum().item(), 10, rel_tol=1e-6)


def test_weighted_ce_divides_by_the_batch_weight_sum():
    logits = torch.tensor([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    labels = torch.tensor([0, 1, 1])
    w = torch.tensor([0.02, 1.98])
    l0, l1, l2 = math.log(1 + math.exp(-2)), math.log(1 + math.exp(-1)), math.log(2)   # -log p_y by hand
    numerator = 0.02 * l0 + 1.98 * l1 + 1.98 * l2
    expected = numerator / (0.02 + 1.98 + 1.98)          # PyTorch: / sum of the batch's weights = 3.98
    got = cw.weighted_cross_entropy(logits, labels, w).item()
    assert math.isclose(got, expected, rel_tol=1e-6)
    assert not math.isclose(got, numerator / 3, rel_tol=1e-2)   # not / batch size
    assert math.isclose(cw.weighted_cross_entropy(logits, labels).item(), (l0 + l1 + l2) / 3, rel_tol=1e-6)
    # Scaling all weights changes nothing.
    assert math.isclose(cw.weighted_cross_entropy(logits, labels, 7 * w).item(), expected, rel_tol=1e-6)


def test_the_weighted_losses_run_in_fp32_from_bf16_logits():
    # under autocast the model's logits are bf16; every loss casts them first, so its value is the fp32 loss of
    # the bf16 logits (in bf16 it would round to 8 bits of mantissa)
    g = torch.Generator().manual_seed(5)
    logits, labels = torch.randn(32, 10, generator=g) * 3, torch.randint(0, 10, (32,), generator=g)
    zb, w = logits.bfloat16(), torch.rand(10, generator=g) + 0.5
    for name, loss, extra in [("focal", focal.focal_loss, (2.0,)), ("focal alpha", focal.focal_loss, (1.0, w)),
                              ("class weights", cw.weighted_cross_entropy, (w,)),
                              ("cb softmax", cb.cb_softmax_loss, (w,)), ("cb sigmoid", cb.cb_sigmoid_loss, (w,)),
                              ("cb focal", cb.cb_focal_loss, (w, 1.0)), ("sam ce", sam.ce_loss, (w,))]:
        out = loss(zb, labels, *extra)
        assert out.dtype == torch.float32, name
        assert out.item() == pytest.approx(loss(zb.float(), labels, *extra).item(), rel=1e-6), name


# ------------------------------------------------------------------------------------------------
# Focal loss (softmax)
# ------------------------------------------------------------------------------------------------

def test_the_plain_losses_are_the_mean_cross_entropy_computed_in_fp32():
    # ERM's loss and the copies the samplers' files train with: mean_i -log softmax(z_i)[y_i], no smoothing or
    # weights, in fp32 from bf16 logits (under autocast the model's logits are bf16)
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(32, 10, generator=g) * 3, torch.randint(0, 10, (32,), generator=g)
    expected = -logits.double().log_softmax(1).gather(1, labels[:, None]).mean()
    for loss in (erm.erm_loss, over.erm_loss, under.erm_loss):
        assert loss(logits, labels).item() == pytest.approx(expected.item(), rel=1e-6)
        out = loss(logits.bfloat16(), labels)
        assert out.dtype == torch.float32
        assert out.item() == pytest.approx(F.cross_entropy(logits.bfloat16().float(), labels).item(), rel=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(32, 10, generator=g) * 3, torch.randint(0, 10, (32,), generator=g)
    assert torch.allclose(focal.focal_loss(logits, labels, 0.0), F.cross_entropy(logits, labels), atol=1e-6)


def test_focal_matches_softmax_probabilities_and_p_t_is_unweighted():
    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(16, 5, generator=g) * 2, torch.randint(0, 5, (16,), generator=g)
    p_t = logits.softmax(1).gather(1, labels[:, None]).squeeze(1)
    for gamma in (0.5, 1.0, 2.0):
        expected = ((1 - p_t) ** gamma * -p_t.log()).mean()
        assert torch.allclose(focal.focal_loss(logits, labels, gamma), expected, atol=1e-6)
    alpha = torch.tensor([0.1, 0.4, 1.0, 1.5, 2.0])
    expected = (alpha[labels] * (1 - p_t) * -p_t.log()).mean()
    got = focal.focal_loss(logits, labels, 1.0, alpha)
    assert torch.allclose(got, expected, atol=1e-6)
    # The official LDAM form takes p from the weighted CE, exp(-w * CE): a different number.
    wce = alpha[labels] * -p_t.log()
    official = ((1 - torch.exp(-wce)) * wce).mean()
    assert not torch.allclose(got, official, atol=1e-3)


def test_focal_gradient_flows_through_the_modulating_factor():
    """(1 - p_t)^gamma is part of the loss, not a constant weight: detaching it keeps every loss value but drops
    the gradient term gamma (1 - p_t)^(gamma - 1) CE dp_t. By hand, logits [0, 0], label 0, gamma 1: p_t = 1/2 and
    dL/dz_0 = -(1 + log 2) / 4 = -0.4233 (-0.25 with the factor detached)."""
    z = torch.zeros(1, 2, requires_grad=True)
    focal.focal_loss(z, torch.tensor([0]), 1.0).backward()
    want = -(1 + math.log(2)) / 4
    assert torch.allclose(z.grad, torch.tensor([[want, -want]]), atol=1e-6)
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(16, 5, generator=g) * 2, torch.randint(0, 5, (16,), generator=g)
    alpha = torch.tensor([0.1, 0.4, 1.0, 1.5, 2.0])
    for gamma, a in ((0.5, None), (1.0, alpha), (2.0, None)):
        z = logits.clone().requires_grad_()
        focal.focal_loss(z, labels, gamma, a).backward()
        ref = logits.clone().requires_grad_()
        p_t = ref.softmax(1).gather(1, labels[:, None]).squeeze(1)
        ((1 if a is None else a[labels]) * (1 - p_t) ** gamma * -p_t.log()).mean().backward()
        assert torch.allclose(z.grad, ref.grad, atol=1e-6), gamma


def test_focal_gradient_is_finite_when_p_t_rounds_to_one():
    logits = torch.tensor([[60.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    loss = focal.focal_loss(logits, torch.tensor([0, 2]), 0.5)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all()


# ------------------------------------------------------------------------------------------------
# Class-balanced loss (Cui et al.)
# ------------------------------------------------------------------------------------------------

def test_cb_weights_beta_zero_uniform_sum_to_c_and_tend_to_inverse_frequency():
    assert torch.equal(cb.class_balanced_weights(C10_LT100, 0.0), torch.ones(10))
    for beta in (0.0, 0.9, 0.99, 0.999, 0.9999, 0.999999):
        assert math.isclose(cb.class_balanced_weights(C10_LT100, beta).sum().item(), 10, rel_tol=1e-6)
    inv = cw.inverse_frequency_weights(C10_LT100)
    gaps = [(cb.class_balanced_weights(C10_LT100, b) - inv).abs().max().item() for b in (0.99, 0.9999, 1 - 1e-8)]
    assert gaps[0] > gaps[1] > gaps[2] and gaps[2] < 1e-3
    # beta=0.9999 on CIFAR-10-LT R=100 (Cui et al., effective number): the head weight is ~25% above 1/n.
    assert [round(x, 3) for x in cb.class_balanced_weights(C10_LT100, 0.9999).tolist()] == CB_C10_LT100_9999


def test_weight_copies_agree_across_files():
    for beta in (0.0, 0.9, 0.9999):
        assert torch.equal(focal.class_balanced_weights(C10_LT100, beta), cb.class_balanced_weights(C10_LT100, beta))
    assert torch.equal(focal.inverse_frequency_weights(C10_LT100), cw.inverse_frequency_weights(C10_LT100))
    assert focal.focal_alpha("none", C10_LT100, 0.9999) is None
    # each --alpha kind is its own weights (swapping inverse and cb would train --alpha inverse with CB weights)
    assert torch.equal(focal.focal_alpha("inverse", C10_LT100, 0.9999), cw.inverse_frequency_weights(C10_LT100))
    assert torch.equal(focal.focal_alpha("cb", C10_LT100, 0.9999), cb.class_balanced_weights(C10_LT100, 0.9999))
    with pytest.raises(ValueError, match="unknown alpha 'uniform'"):  # not a silent None
        focal.focal_alpha("uniform", C10_LT100, 0.9999)


def test_cb_losses_match_cui_definitions():
    g = torch.Generator().manual_seed(2)
    logits, labels = torch.randn(8, 4, generator=g) * 2, torch.tensor([0, 0, 0, 0, 0, 1, 2, 3])
    w = torch.tensor([0.1, 0.5, 1.2, 2.2])
    n = len(labels)
    # softmax: sum w_y CE / N, not PyTorch's / sum w_y
    ce = F.cross_entropy(logits, labels, reduction="none")
    got = cb.cb_softmax_loss(logits, labels, w)
    assert torch.allclose(got, (w[labels] * ce).sum() / n, atol=1e-6)
    assert not torch.allclose(got, F.cross_entropy(logits, labels, weight=w), atol=1e-2)
    assert torch.allclose(cb.cb_softmax_loss(logits, labels, torch.ones(4)), ce.mean(), atol=1e-6)
    # sigmoid: one-vs-all BCE over all C outputs, summed over classes, weighted by w_y, / N
    p = logits.sigmoid()
    y = F.one_hot(labels, 4).float()
    bce = -(y * p.log() + (1 - y) * (1 - p).log())
    assert torch.allclose(cb.cb_sigmoid_loss(logits, labels, w), (w[labels] * bce.sum(1)).sum() / n, atol=1e-5)
    # focal: (1 - p_t)^gamma on every output, p_t = p for the true class and 1 - p for the others
    p_t = torch.where(y == 1, p, 1 - p)
    for gamma in (0.0, 0.5, 1.0, 2.0):  # gamma 0: the sigmoid loss above
        expected = (w[labels] * ((1 - p_t) ** gamma * bce).sum(1)).sum() / n
        assert torch.allclose(cb.cb_focal_loss(logits, labels, w, gamma), expected, atol=1e-5)
    # ... and its gradient, the modulator's included (Cui's TF code has no stop_gradient on it): by hand, one
    # output at 0, label 1, gamma 1: p_t = 1/2, dL/dz = -(1 + log 2) / 4 = -0.4233 (-0.25 were it detached)
    z = torch.zeros(1, 1, requires_grad=True)
    cb.cb_focal_loss(z, torch.tensor([0]), torch.ones(1), 1.0).backward()
    assert z.grad.item() == pytest.approx(-(1 + math.log(2)) / 4, abs=1e-6)
    for gamma in (0.5, 2.0):
        z, ref = logits.clone().requires_grad_(), logits.clone().requires_grad_()
        cb.cb_focal_loss(z, labels, w, gamma).backward()
        q = ref.sigmoid()
        q_t = torch.where(y == 1, q, 1 - q)
        (w[labels] * ((1 - q_t) ** gamma * -q_t.log()).sum(1)).sum().div(n).backward()
        assert torch.allclose(z.grad, ref.grad, atol=1e-5), gamma
    # cb_loss, what the training loop calls, picks each of the three by name
    for kind, value in (("softmax", (w[labels] * ce).sum() / n), ("sigmoid", (w[labels] * bce.sum(1)).sum() / n),
                        ("focal", (w[labels] * ((1 - p_t) ** 2.0 * bce).sum(1)).sum() / n)):
        assert torch.allclose(cb.cb_loss(kind, logits, labels, w, 2.0), value, atol=1e-5), kind


def test_cb_focal_is_stable_for_large_logits():
    # label 0: outputs 0 and 1 confidently right, where (1 - p_t)^gamma = 0 and its naive gradient, for gamma < 1,
    # is 0 * inf = nan; label 1: both confidently wrong
    for label in (0, 1):
        for gamma in (0.5, 0.9, 2.0):
            logits = torch.tensor([[200.0, -200.0, 0.0]], requires_grad=True)
            loss = cb.cb_focal_loss(logits, torch.tensor([label]), torch.ones(3), gamma)
            loss.backward()
            assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), (label, gamma)
            if label == 0:  # the confident outputs contribute nothing: their loss and modulator are 0
                assert logits.grad[0, :2].abs().max() == 0


def test_prior_bias_gives_probability_one_over_c():
    linear = torch.nn.Linear(64, 10)
    cb.init_prior_bias(linear, 10)
    assert torch.allclose(linear.bias, torch.full((10,), -math.log(9)))
    assert torch.allclose(linear.bias.sigmoid(), torch.full((10,), 0.1))


# ------------------------------------------------------------------------------------------------
# Arguments: results-folder names and bad input
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module,flags,name", [
    (over, [], "oversampling"), (over, ["--start-epoch", "160"], "drs"),
    (over, ["--sampling-power", "0.5"], "oversampling_q0.5"),
    (over, ["--start-epoch", "160", "--sampling-power", "0.5"], "drs_q0.5"),
    (under, [], "undersampling"),
    (cw, [], "class_weights"), (cw, ["--drw-epoch", "160"], "class_weights_drw"),
    (focal, [], "focal"), (focal, ["--alpha", "inverse"], "focal_inverse"), (focal, ["--alpha", "cb"], "focal_cb"),
    (cb, [], "cb_focal"), (cb, ["--loss", "softmax"], "cb_softmax"), (cb, ["--loss", "sigmoid"], "cb_sigmoid"),
    (cb, ["--loss", "focal", "--drw-epoch", "160"], "cb_focal_drw"),
])
def test_results_folder_names(module, flags, name):
    assert module.parse_args(NAME_ARGS + flags).method == name


def test_defaults_are_the_published_ones():
    a = cb.parse_args(NAME_ARGS)
    assert (a.beta, a.loss, a.gamma, a.drw_epoch) == (0.9999, "focal", 1.0, 0)
    a = focal.parse_args(NAME_ARGS)  # LDAM-DRW's FocalLoss gamma 1; --alpha cb's beta Cui's 0.9999
    assert (a.gamma, a.alpha, a.beta) == (1.0, "none", 0.9999)
    assert cw.parse_args(NAME_ARGS).drw_epoch == 0  # RW: the weights from the first epoch
    o = over.parse_args(NAME_ARGS)
    assert (o.sampling_power, o.num_samples, o.start_epoch) == (1.0, None, 0)


@pytest.mark.parametrize("module,flags,needle", [
    (cb, ["--beta", "1"], "--beta"), (cb, ["--beta", "-0.1"], "--beta"), (cb, ["--beta", "nan"], "--beta"),
    (cb, ["--gamma", "-0.5"], "--gamma"), (cb, ["--loss", "hinge"], "--loss"), (cb, ["--drw-epoch", "-1"], "--drw-epoch"),
    (focal, ["--gamma", "-1"], "--gamma"), (focal, ["--alpha", "cb", "--beta", "1.5"], "--beta"),
    (focal, ["--alpha", "sqrt"], "--alpha"), (over, ["--sampling-power", "1.5"], "--sampling-power"),
    (over, ["--sampling-power", "-0.1"], "--sampling-power"), (over, ["--num-samples", "0"], "--num-samples"),
    (over, ["--beta", "1"], "--beta"), (over, ["--beta", "0.9999", "--sampling-power", "0.5"], "--sampling-power"),
    (over, ["--start-epoch", "-1"], "--start-epoch"), (cw, ["--drw-epoch", "-3"], "--drw-epoch"),
])
def test_bad_arguments_raise_a_one_line_error(module, flags, needle):
    assert_user_error(module.parse_args, NAME_ARGS + flags, needle)
