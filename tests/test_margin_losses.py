"""Identities and hand-computed values of the margin and logit-adjusted losses: LDAM(-DRW), MM(-DRW), LA, CDT, VS."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from conftest import C10_LT100, CB_C10_LT100_9999, ROOT, assert_user_error, load_method

ldam = load_method("ldam_drw")
mm = load_method("mm_drw")
la = load_method("logit_adjust")
cdt = load_method("cdt")
vs = load_method("vs_loss")
sam = load_method("sam")

SMALL = [100, 40, 10, 5]


def batch(n=12, c=4, seed=0, cosine=False):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, c, generator=g)
    if cosine:
        z = torch.tanh(z)
    return z, torch.randint(0, c, (n,), generator=g)


# ---------------------------------------------------------------- LDAM and DRW

def test_ldam_margins_follow_n_to_the_minus_quarter_with_max_exactly_max_m():
    m = ldam.ldam_margins(SMALL, 0.7)
    assert m.max().item() == pytest.approx(0.7, abs=1e-7)
    assert int(m.argmax()) == 3  # the rarest class
    n = torch.tensor(SMALL, dtype=torch.float64)
    assert torch.allclose(m.double() * n ** 0.25, (m.double() * n ** 0.25)[0].expand(4), rtol=1e-6)
    # kaidic/LDAM-DRW losses.py: the C10 LT-100 margins
    expected = [0.158, 0.180, 0.204, 0.232, 0.264, 0.300, 0.341, 0.387, 0.441, 0.500]
    assert ldam.ldam_margins(C10_LT100, 0.5).tolist() == pytest.approx(expected, abs=6e-4)
    assert torch.equal(ldam.ldam_margins(C10_LT100, 0.5), mm.ldam_margins(C10_LT100, 0.5))


def test_ldam_with_zero_margin_is_ce_on_scaled_cosines():
    z, y = batch(cosine=True)
    margins = ldam.ldam_margins(SMALL, 0.0)
    assert torch.all(margins == 0)
    w = torch.tensor([0.2, 0.5, 1.3, 2.0])
    for s in (1.0, 30.0):
        assert torch.allclose(ldam.ldam_loss(z, y, margins, s), F.cross_entropy(s * z, y), atol=1e-6)
        assert torch.allclose(ldam.ldam_loss(z, y, margins, s, weight=w), F.cross_entropy(s * z, y, weight=w),
                              atol=1e-6)


def test_ldam_subtracts_the_margin_from_the_target_logit_only():
    z = torch.tensor([[0.3, -0.1, 0.2, 0.0]])
    margins = torch.tensor([0.1, 0.2, 0.3, 0.4])
    s = 30.0
    loss = ldam.ldam_loss(z, torch.tensor([2]), margins, s).item()
    t = [s * v for v in (0.3, -0.1, 0.2 - 0.3, 0.0)]
    assert loss == pytest.approx(-t[2] + math.log(sum(math.exp(v) for v in t)), rel=1e-5)


def test_drw_weights_are_ones_before_the_switch_and_class_balanced_after():
    beta, switch = 0.9999, 160
    for epoch in (0, 159):
        assert torch.equal(ldam.drw_weights(C10_LT100, beta, epoch, switch), torch.ones(10))
    assert torch.equal(ldam.drw_weights(C10_LT100, beta, 199, None), torch.ones(10))  # --no-drw
    w = ldam.drw_weights(C10_LT100, beta, 160, switch)
    assert w.sum().item() == pytest.approx(10, rel=1e-6)
    assert w.tolist() == pytest.approx(CB_C10_LT100_9999, abs=6e-4)  # Cui et al., effective number
    assert torch.equal(ldam.drw_weights(C10_LT100, beta, 199, switch), w)
    for epoch in (0, 160):  # the copy in mm_drw.py agrees
        assert torch.equal(mm.drw_weights(C10_LT100, beta, epoch, switch), ldam.drw_weights(C10_LT100, beta, epoch, switch))


def test_normed_linear_gives_cosines():
    torch.manual_seed(0)
    for module in (ldam, mm, sam):  # (sam's LDAM pieces, margins and weights: equal to ldam_drw's, below)
        head = module.NormedLinear(64, 10)
        assert tuple(head.weight.shape) == (64, 10) and len(list(head.parameters())) == 1  # (in, out), no bias
        assert torch.allclose(head.weight.norm(dim=0), torch.ones(10), atol=1e-5)  # unit columns at init
        x = 5 * torch.randn(32, 64)
        out = head(x)
        assert out.abs().max().item() <= 1 + 1e-6
        expected = F.cosine_similarity(x[:, :, None], head.weight[None, :, :], dim=1)
        assert torch.allclose(out, expected, atol=1e-5)
        assert torch.allclose(head(x[:1]), head(x[:1] * 7), atol=1e-6)  # the input is normalized too
        with torch.autocast("cpu", dtype=torch.bfloat16):  # the cosine stays fp32 under autocast
            assert head(x).dtype == torch.float32


def test_variant_names_and_drw_switch():
    base = ["--dataset", "synthetic", "--device", "cpu"]
    names = {(): "ldam_drw", ("--no-drw",): "ldam", ("--loss", "ce"): "erm_drw", ("--loss", "ce", "--no-drw"): "ce"}
    for flags, name in names.items():
        assert ldam.parse_args(base + list(flags)).method == name
    assert ldam.parse_args(base).drw_epoch == 160 and ldam.parse_args(base + ["--no-drw"]).drw_epoch is None
    names = {(): "mm_drw", ("--ldam",): "mm_ldam_drw", ("--no-drw",): "mm", ("--ldam", "--no-drw"): "mm_ldam"}
    for flags, name in names.items():
        assert mm.parse_args(base + list(flags)).method == name
    assert la.parse_args(base).method == "logit_adjust"
    assert cdt.parse_args(base).method == "cdt"
    assert vs.parse_args(base).method == "vs"


PROTOCOL = ["--dataset", "synthetic", "--device", "cpu", "--epochs", "200"]


def test_margin_and_logit_adjustment_defaults_are_the_published_ones():
    """Each default as the file's --help cites it: a default changed in one file (or in two alike) is caught here."""
    a = ldam.parse_args(PROTOCOL)  # LDAM-DRW cifar_train.py / losses.py: max_m 0.5, s 30, beta 0.9999, DRW at 160
    assert (a.loss, a.max_m, a.scale, a.beta, a.drw_epoch, a.drw) == ("ldam", 0.5, 30.0, 0.9999, 160, True)
    a = mm.parse_args(PROTOCOL)  # Maximum-Margin-LDAM: s 30, LDAM's max_m with --ldam, the same DRW
    assert (a.scale, a.max_m, a.beta, a.drw_epoch, a.drw, a.ldam) == (30.0, 0.5, 0.9999, 160, True, False)
    assert la.parse_args(PROTOCOL).tau == 1.0  # Menon et al.
    a = cdt.parse_args(PROTOCOL)  # VS-Loss train.py's CDT gamma; Ye et al.'s normalization
    assert (a.gamma, a.normalize) == (0.3, "head")
    a = vs.parse_args(PROTOCOL)  # VS-Loss README, CIFAR-10 LT-100
    assert (a.gamma, a.tau) == (0.2, 1.2)


def test_mm_tuned_pairs_are_the_slides_lowest_error_ones():
    """MM_TUNED, the whole table, against the slides' ablation (Kang et al., ICIP 2021, Table 2: CIFAR-10, Table 3:
    CIFAR-100): (top-1 error %, beta, delta-) of each setting's three runs, written out from the slides."""
    slides = {(10, "exp", 100): [(22.24, 1.4, 0.6), (21.98, 1.5, 0.6), (22.43, 1.6, 0.6)],
              (10, "step", 100): [(22.92, 1.2, 0.6), (22.83, 1.3, 0.6), (23.29, 1.4, 0.6)],
              (10, "exp", 10): [(11.66, 1.1, 0.7), (11.44, 1.2, 0.7), (11.86, 1.3, 0.7)],
              (10, "step", 10): [(11.48, 1.0, 2.1), (11.64, 1.1, 2.1), (11.78, 1.2, 2.1)],
              (100, "exp", 100): [(58.02, 1.2, 1.2), (57.14, 1.3, 1.2), (57.24, 1.4, 1.2)],
              (100, "step", 100): [(54.65, 1.7, 1.8), (54.57, 1.8, 1.8), (54.76, 1.9, 1.8)],
              (100, "exp", 10): [(40.97, 1.3, 1.5), (40.63, 1.4, 1.5), (40.95, 1.5, 1.5)],
              (100, "step", 10): [(40.42, 1.0, 2.4), (40.28, 1.1, 2.4), (40.48, 1.2, 2.4)]}
    assert mm.MM_TUNED == {key: min(runs)[1:] for key, runs in slides.items()}


def test_mm_defaults_are_the_slides_tuned_pair_of_the_setting():
    def pick(*flags):
        a = mm.parse_args(["--dataset", "synthetic", "--device", "cpu", *flags])
        return a.mm_beta, a.delta_minus
    assert pick("--imbalance-ratio", "100") == (1.5, 0.6)  # slides Table 2, CIFAR-10-LT R=100 (21.98% error)
    assert pick("--imbalance-type", "step", "--imbalance-ratio", "10") == (1.0, 2.1)  # Table 2 (11.48%)
    assert pick("--dataset", "cifar100", "--imbalance-ratio", "100") == (1.3, 1.2)  # Table 3 (57.14%)
    assert pick("--imbalance-ratio", "50") == (1.5, 0.6)  # not tuned by the slides: CIFAR-10-LT R=100's
    assert pick("--imbalance-ratio", "100", "--mm-beta", "2") == (2.0, 0.6)  # a flag given wins
    # --beta is DRW's class-balanced beta, as in every other method file
    assert mm.parse_args(["--dataset", "synthetic", "--device", "cpu", "--beta", "0.999"]).beta == 0.999


# ---------------------------------------------------------------- MM

def test_mm_margin_in_range_and_plus_for_correct_minus_for_wrong():
    z, y = batch(n=64, c=5, seed=1, cosine=True)
    beta, dm = 1.5, 0.6
    d = mm.mm_margins(z, y, beta, dm)
    assert torch.all(d > 0) and torch.all(d <= math.exp(-dm) + 1e-7)
    correct = z.argmax(1) == y
    assert 0 < correct.sum() < len(y)  # both kinds present
    assert torch.all(d[correct] <= math.exp(-beta * dm) + 1e-7)
    other = torch.stack([torch.cat([z[i, :y[i]], z[i, y[i] + 1:]]).max() for i in range(len(y))])
    gap = z[torch.arange(len(y)), y] - other
    plus = torch.exp(-gap.clamp(min=0) - beta * dm)
    minus = torch.exp(-(-gap).clamp(min=0) - dm)
    assert torch.allclose(d, torch.where(correct, plus, minus), atol=1e-6)
    assert not mm.mm_margins(z.requires_grad_(), y, beta, dm).requires_grad  # detached


def test_mm_max_over_other_classes_excludes_the_target():
    # All cosines negative: max_{j!=y} z_j = -0.5, gap 0.3, correct. The official zero-masked max would give
    # a "max other logit" of 0, i.e. gap -0.2 and the wrong-sample margin exp(-0.2 - 0.6).
    z, y = torch.tensor([[-0.2, -0.5, -0.9]]), torch.tensor([0])
    assert mm.mm_margins(z, y, 1.5, 0.6).item() == pytest.approx(math.exp(-0.3 - 0.9), rel=1e-6)


def test_mm_a_tie_counts_as_correct_only_where_the_argmax_is_the_label():
    # "correct" is argmax = y, as the slides' rule: a target tied with another class (gap 0; e.g. a zero feature,
    # all cosines 0) is correct where argmax picks the target (the first of the tied classes) and wrong elsewhere
    z, y = torch.zeros(2, 3), torch.tensor([0, 1])
    d = mm.mm_margins(z, y, 1.5, 0.6)
    assert d.tolist() == pytest.approx([math.exp(-1.5 * 0.6), math.exp(-0.6)], rel=1e-6)


def test_mm_uses_each_samples_own_label():
    z, y = batch(n=16, c=4, seed=2, cosine=True)
    y[0], y[1] = 0, 3  # at least two different labels
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    for weight in (None, w):
        whole = mm.mm_loss(z, y, 1.5, 0.6, 30.0, weight)
        per = torch.stack([mm.mm_loss(z[i:i + 1], y[i:i + 1], 1.5, 0.6, 30.0, weight) for i in range(16)])
        wy = torch.ones(16) if weight is None else weight[y]
        assert torch.allclose(whole, (wy * per).sum() / wy.sum(), atol=1e-5)
    # the official labels[0] shortcut gives a different margin vector on this batch
    first = mm.mm_margins(z, torch.full_like(y, int(y[0])), 1.5, 0.6)
    assert not torch.allclose(first, mm.mm_margins(z, y, 1.5, 0.6))


def test_mm_loss_equals_a_hand_computed_value():
    z = torch.tensor([[0.5, 0.2, -0.1], [0.1, 0.4, 0.3]])
    y = torch.tensor([0, 2])
    beta, dm, s = 1.5, 0.6, 2.0
    # sample 0: correct, gap 0.3, Delta+ = exp(-0.3 - 0.9); sample 1: wrong, gap 0.3 - 0.4 = -0.1, Delta- = exp(-0.1 - 0.6)
    d0, d1 = math.exp(-1.2), math.exp(-0.7)
    r0 = [s * (0.5 - d0), s * 0.2, s * -0.1]
    r1 = [s * 0.1, s * 0.4, s * (0.3 - d1)]
    l0 = -r0[0] + math.log(sum(math.exp(v) for v in r0))
    l1 = -r1[2] + math.log(sum(math.exp(v) for v in r1))
    assert mm.mm_loss(z, y, beta, dm, s).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)
    # DRW weights: the weighted mean sum w_y l / sum w_y
    w = torch.tensor([3.0, 1.0, 0.5])
    assert mm.mm_loss(z, y, beta, dm, s, weight=w).item() == pytest.approx((3 * l0 + 0.5 * l1) / 3.5, rel=1e-5)
    # MM-LDAM: delta- of each sample lowered by its class's LDAM margin
    m = torch.tensor([0.1, 0.2, 0.4])
    e0, e1 = math.exp(-0.3 - 1.5 * (0.6 - 0.1)), math.exp(-0.1 - (0.6 - 0.4))
    r0 = [s * (0.5 - e0), s * 0.2, s * -0.1]
    r1 = [s * 0.1, s * 0.4, s * (0.3 - e1)]
    l0 = -r0[0] + math.log(sum(math.exp(v) for v in r0))
    l1 = -r1[2] + math.log(sum(math.exp(v) for v in r1))
    assert mm.mm_loss(z, y, beta, dm, s, class_margins=m).item() == pytest.approx((l0 + l1) / 2, rel=1e-5)


def test_mm_gradient_treats_the_margin_as_a_constant():
    z, y = batch(n=8, c=4, seed=3, cosine=True)
    z1 = z.clone().requires_grad_()
    mm.mm_loss(z1, y, 1.5, 0.6, 30.0).backward()
    d = mm.mm_margins(z, y, 1.5, 0.6)
    z2 = z.clone().requires_grad_()
    F.cross_entropy(30.0 * (z2 - F.one_hot(y, 4) * d[:, None]), y).backward()
    assert torch.allclose(z1.grad, z2.grad, atol=1e-6)


# ---------------------------------------------------------------- LA, CDT, VS

def test_zero_adjustment_is_cross_entropy():
    z, y = batch(n=20, c=4, seed=4)
    ce = F.cross_entropy(z, y)
    assert torch.allclose(la.logit_adjusted_loss(z, y, la.log_prior(SMALL), 0.0), ce, atol=1e-6)
    assert torch.allclose(cdt.cdt_loss(z, y, SMALL, 0.0), ce, atol=1e-6)
    assert torch.allclose(vs.vs_loss(z, y, SMALL, 0.0, 0.0), ce, atol=1e-6)
    assert not torch.allclose(vs.vs_loss(z, y, SMALL, 0.2, 1.2), ce, atol=1e-3)


def test_log_prior_is_the_log_of_the_training_class_frequencies():
    # LA's adjustment is shift-invariant inside the CE, but log_prior is the documented log(n_c / n): a prior
    assert la.log_prior(SMALL).exp().tolist() == pytest.approx([n / sum(SMALL) for n in SMALL], rel=1e-6)


def test_vs_contains_la_and_cdt():
    z, y = batch(n=20, c=4, seed=5)
    for tau in (0.5, 1.0, 1.2):
        assert torch.allclose(vs.vs_loss(z, y, SMALL, 0.0, tau),
                              la.logit_adjusted_loss(z, y, la.log_prior(SMALL), tau), atol=1e-6)
    for gamma in (0.1, 0.3, 1.0):
        assert torch.allclose(vs.vs_loss(z, y, SMALL, gamma, 0.0), cdt.cdt_loss(z, y, SMALL, gamma), atol=1e-6)


def test_la_cdt_vs_match_the_official_forms():
    z, y = batch(n=20, c=4, seed=6)
    n = torch.tensor(SMALL, dtype=torch.float64)
    prior = n / n.sum()
    # google-research logit_adjustment: logits + log(prior^tau + 1e-12)
    assert torch.allclose(la.logit_adjusted_loss(z, y, la.log_prior(SMALL), 1.0),
                          F.cross_entropy(z.double() + torch.log(prior + 1e-12), y).float(), atol=1e-5)
    # VS-Loss VSLoss: x / ((1/n)^gamma / min (1/n)^gamma) + tau * log prior; CDT = tau 0 (temperature n_max/n_c)
    temp = (1 / n) ** 0.2 / ((1 / n) ** 0.2).min()
    assert torch.allclose(vs.vs_loss(z, y, SMALL, 0.2, 1.2),
                          F.cross_entropy(z.double() / temp + 1.2 * torch.log(prior), y).float(), atol=1e-5)
    for gamma in (0.3, -0.5):  # a negative gamma too: VS-Loss's largest multiplier is then the rarest class's, 1
        temp = (1 / n) ** gamma / ((1 / n) ** gamma).min()
        assert torch.allclose(cdt.cdt_loss(z, y, SMALL, gamma), F.cross_entropy(z.double() / temp, y).float(), atol=1e-5)
    assert torch.allclose(cdt.cdt_loss(z, y, SMALL, 0.3),
                          F.cross_entropy(z.double() / (n.max() / n) ** 0.3, y).float(), atol=1e-5)
    # Behnia et al.'s CDTLoss on step data (R = 10): majority R^gamma, minority 1, normalized to sum to K
    step, g = [500, 500, 50, 50], 0.5
    behnia = torch.tensor([10 ** g, 10 ** g, 1, 1], dtype=torch.float64)
    behnia = behnia * len(behnia) / behnia.sum()
    z4, y4 = batch(n=20, c=4, seed=8)
    assert torch.allclose(cdt.cdt_loss(z4, y4, step, g, normalize="sum"),
                          F.cross_entropy(z4.double() * behnia, y4).float(), atol=1e-5)
    assert not torch.allclose(cdt.cdt_loss(z4, y4, step, g), cdt.cdt_loss(z4, y4, step, g, normalize="sum"))
    assert cdt.parse_args(["--dataset", "synthetic", "--device", "cpu", "--normalize", "sum"]).method == "cdt_sum"
    # Kini et al. (VS loss) on C10 LT-100 with gamma 0.2 and tau 0: the logits divided by these divisors (hand
    # values of (n_max / n_c)^0.2, to 3 decimals; gamma 0.25 would be off by 0.16 in the loss)
    divisors = torch.tensor([1, 1.108, 1.227, 1.359, 1.506, 1.668, 1.848, 2.047, 2.270, 2.512])
    z10, y10 = batch(n=40, c=10, seed=9)
    assert torch.allclose(vs.vs_loss(z10, y10, C10_LT100, 0.2, 0.0), F.cross_entropy(z10 / divisors, y10), atol=1e-3)


def test_scaled_heads_give_s_times_the_cosine_in_fp32():
    # the evaluation view of each cosine model (its softmax and ECE are those the loss trains)
    torch.manual_seed(1)
    x = torch.randn(6, 8)
    for module in (ldam, mm, sam):
        head = module.NormedLinear(8, 10)
        torch.testing.assert_close(module.Scaled(head, 30.0)(x), 30.0 * head(x), rtol=1e-6, atol=1e-6)
        bf16 = torch.nn.Sequential(head, torch.nn.Identity())
        bf16.register_forward_hook(lambda m, i, out: out.bfloat16())  # a model whose output is bf16
        assert module.Scaled(bf16, 16.0)(x).dtype == torch.float32


def test_class_order_does_not_matter():
    # classes need not come largest first (--imbalance-type none keeps a folder's order): permuting the counts,
    # the logits' columns and the labels together permutes the margins and weights and leaves every loss as it was
    perm = torch.tensor([3, 7, 0, 9, 1, 5, 2, 8, 6, 4])
    inv = perm.argsort()
    counts = C10_LT100
    pc = [counts[i] for i in perm]
    z, y = batch(n=40, c=10, seed=4)
    zp, yp = z[:, perm], inv[y]
    for module in (ldam, mm, sam):
        torch.testing.assert_close(module.ldam_margins(pc, 0.5), module.ldam_margins(counts, 0.5)[perm])
        torch.testing.assert_close(module.drw_weights(pc, 0.9999, 160, 160),
                                   module.drw_weights(counts, 0.9999, 160, 160)[perm])
    m, w = ldam.ldam_margins(counts, 0.5), ldam.drw_weights(counts, 0.9999, 160, 160)
    torch.testing.assert_close(ldam.ldam_loss(torch.tanh(zp), yp, m[perm], 30.0, w[perm]),
                               ldam.ldam_loss(torch.tanh(z), y, m, 30.0, w))
    torch.testing.assert_close(vs.vs_loss(zp, yp, pc, 0.2, 1.2), vs.vs_loss(z, y, counts, 0.2, 1.2))
    for normalize in ("head", "sum"):
        torch.testing.assert_close(cdt.cdt_loss(zp, yp, pc, 0.3, normalize=normalize),
                                   cdt.cdt_loss(z, y, counts, 0.3, normalize=normalize))
    torch.testing.assert_close(la.logit_adjusted_loss(zp, yp, la.log_prior(pc), 1.0),
                               la.logit_adjusted_loss(z, y, la.log_prior(counts), 1.0))


def test_losses_run_in_fp32_from_bf16_logits():
    z, y = batch(n=8, c=4, seed=7)
    zb = z.bfloat16()
    assert ldam.ldam_loss(torch.tanh(zb), y, ldam.ldam_margins(SMALL, 0.5), 30.0).dtype == torch.float32
    assert mm.mm_loss(torch.tanh(zb), y, 1.5, 0.6, 30.0).dtype == torch.float32
    assert la.logit_adjusted_loss(zb, y, la.log_prior(SMALL), 1.0).dtype == torch.float32
    assert cdt.cdt_loss(zb, y, SMALL, 0.3).dtype == torch.float32
    assert vs.vs_loss(zb, y, SMALL, 0.2, 1.2).dtype == torch.float32


# ---------------------------------------------------------------- bad input

BAD = [(ldam, ["--beta", "1"], "--beta"), (ldam, ["--beta", "-0.1"], "--beta"), (ldam, ["--max-m", "-0.1"], "--max-m"),
       (ldam, ["--scale", "0"], "--scale"), (ldam, ["--scale", "inf"], "--scale must be a finite number"),
       (ldam, ["--max-m", "inf"], "--max-m must be a finite number"), (mm, ["--scale", "inf"], "--scale"),
       (ldam, ["--loss", "focal"], "--loss"),
       (ldam, ["--drw-epoch", "-1"], "--drw-epoch"),
       (mm, ["--beta", "1"], "--beta"), (mm, ["--mm-beta", "-1"], "--mm-beta"),
       (mm, ["--delta-minus", "-0.5"], "--delta-minus"), (mm, ["--max-m", "-0.1"], "--max-m"),
       (la, ["--tau", "-1"], "--tau"), (la, ["--tau", "inf"], "--tau"), (cdt, ["--gamma", "nan"], "--gamma"),
       (cdt, ["--normalize", "max"], "--normalize"),
       (vs, ["--gamma", "-0.1"], "--gamma"), (vs, ["--tau", "-1"], "--tau"), (vs, ["--tau", "inf"], "--tau")]


@pytest.mark.parametrize("module,flags,word", BAD, ids=[f"{m.__name__}{' '.join(f)}" for m, f, _ in BAD])
def test_bad_input_gives_a_one_line_error(module, flags, word):
    assert_user_error(module.parse_args, ["--dataset", "synthetic", "--device", "cpu", *flags], word)


def test_the_copies_of_the_ldam_pieces_in_sam_py_compute_what_ldam_drw_py_does():
    """sam.py carries a copy of ldam_drw.py's LDAM-DRW pieces, word for word (`diff` shows them equal, so a reader
    of sam.py meets nothing new there): the same margins, weights, head and loss, so that SAM on LDAM-DRW changes
    the optimizer only."""
    source = {f: open(os.path.join(ROOT, "methods", f)).read() for f in ("ldam_drw.py", "sam.py")}
    ld = source["ldam_drw.py"]
    assert ld[ld.index("# METHOD: the cosine classifier"):ld.index('if __name__ == "__main__":')].rstrip() \
        in source["sam.py"]
    sam = load_method("sam")
    torch.testing.assert_close(sam.ldam_margins(C10_LT100, 0.5), ldam.ldam_margins(C10_LT100, 0.5), rtol=1e-6, atol=0)
    for epoch in (0, 159, 160, 199):
        torch.testing.assert_close(sam.drw_weights(C10_LT100, 0.9999, epoch, 160),
                                   ldam.drw_weights(C10_LT100, 0.9999, epoch, 160), rtol=1e-6, atol=0)
    heads = []
    for module in (sam, ldam):
        torch.manual_seed(3)
        heads.append(module.NormedLinear(8, 10))
    torch.testing.assert_close(heads[0].weight, heads[1].weight, rtol=0, atol=0)  # the official init, draw for draw
    g = torch.Generator().manual_seed(0)
    z, y = torch.tanh(torch.randn(16, 10, generator=g)), torch.randint(0, 10, (16,), generator=g)
    m, w = ldam.ldam_margins(C10_LT100, 0.5), ldam.drw_weights(C10_LT100, 0.9999, 160, 160)
    torch.testing.assert_close(sam.ldam_loss(z, y, m, 30.0, w), ldam.ldam_loss(z, y, m, 30.0, w), rtol=1e-6, atol=0)
    x = torch.randn(4, 8, generator=g)
    torch.testing.assert_close(sam.Scaled(heads[0], 30.0)(x), ldam.Scaled(heads[1], 30.0)(x), rtol=0, atol=0)
