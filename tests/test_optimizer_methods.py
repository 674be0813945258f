"""Identities of the optimizer-side methods: SAM (methods/sam.py) and per-class normalized SGD (methods/pcn_sgd.py).
Tiny models only: PCN does one backward per class, SAM two passes per step."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import SMOKE_ARGS, assert_user_error, load_method

sam = load_method("sam")
pcn = load_method("pcn_sgd")

C = 3


def tiny_bn_model(seed=0, bn=True):
    torch.manual_seed(seed)
    layers = [nn.Linear(5, 8)] + ([nn.BatchNorm1d(8)] if bn else []) + [nn.Tanh(), nn.Linear(8, C)]
    return nn.Sequential(*layers)


def batch(seed=1, n=12, labels=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g)
    y = torch.tensor(labels) if labels is not None else torch.arange(n) % C
    return x, y


def flat(tensors):
    return torch.cat([t.reshape(-1) for t in tensors])


# ------------------------------------------------------------------------------------------------
# SAM
# ------------------------------------------------------------------------------------------------

def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)


def test_sam_with_rho_zero_takes_the_base_sgd_step():
    a, b = tiny_bn_model(), tiny_bn_model()
    opt_a, opt_b = sgd(a), sgd(b)
    for seed in (1, 2, 3):  # several steps, so the momentum buffer matters too
        x, y = batch(seed)
        sam.sam_step(a, lambda: F.cross_entropy(a(x), y), opt_a, rho=0.0)
        opt_b.zero_grad()
        F.cross_entropy(b(x), y).backward()
        opt_b.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=0, atol=1e-7)
    assert not torch.equal(flat(a.parameters()), flat(tiny_bn_model().parameters()))  # it did move


@pytest.mark.parametrize("freeze_bn", [False, True])
def test_sam_bn_running_stats_follow_both_passes_unless_frozen(freeze_bn):
    rho = 0.5
    model, ref = tiny_bn_model(), tiny_bn_model()
    x, y = batch()
    sam.sam_step(model, lambda: F.cross_entropy(model(x), y), sgd(model), rho=rho, freeze_bn=freeze_bn)
    # by hand: one train-mode forward at w; unless frozen (the official code), one more at w + rho g / ||g||
    probe = copy.deepcopy(ref)
    g = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
    ref(x)
    if not freeze_bn:
        with torch.no_grad():
            for p, gi in zip(ref.parameters(), g):
                p.add_(rho * gi / flat(g).norm())
        ref(x)
    bn, bn_ref = model[1], ref[1]
    torch.testing.assert_close(bn.running_mean, bn_ref.running_mean, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-6, atol=1e-7)
    assert bn.num_batches_tracked.item() == bn_ref.num_batches_tracked.item() == (1 if freeze_bn else 2)
    assert bn.track_running_stats  # restored afterwards


def test_bn_frozen_context_still_normalizes_with_batch_stats():
    model, ref = tiny_bn_model(), tiny_bn_model()
    x, _ = batch()
    with sam.bn_running_stats_frozen(model):
        out = model(x)
    torch.testing.assert_close(out, ref(x))
    assert torch.equal(model[1].running_mean, torch.zeros(8))


@pytest.mark.parametrize("bn", [False, True])
def test_sam_gradient_is_taken_at_the_ascent_point(bn):
    rho, lr, wd = 0.3, 0.1, 1e-2
    model = tiny_bn_model(bn=bn)
    w0 = [p.detach().clone() for p in model.parameters()]
    x, y = batch()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=wd)
    loss = sam.sam_step(model, lambda: F.cross_entropy(model(x), y), opt, rho=rho)
    # what the run logs as its training loss: the loss at w0, not at the ascent point
    torch.testing.assert_close(loss, F.cross_entropy(tiny_bn_model(bn=bn)(x), y), rtol=0, atol=0)

    # by hand: g at w0, e = rho g/||g||, g' at w0 + e, first SGD step w0 - lr (g' + wd w0) (momentum buffer = g')
    probe = tiny_bn_model(bn=bn)
    g = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
    e = [rho * t / flat(g).norm() for t in g]
    with torch.no_grad():
        for p, w, ei in zip(probe.parameters(), w0, e):
            p.copy_(w + ei)
    g_adv = torch.autograd.grad(F.cross_entropy(probe(x), y), list(probe.parameters()))
    expected = [w - lr * (ga + wd * w) for w, ga in zip(w0, g_adv)]
    for p, want in zip(model.parameters(), expected):
        torch.testing.assert_close(p.detach(), want, rtol=1e-5, atol=1e-6)
    plain = [w - lr * (gi + wd * w) for w, gi in zip(w0, g)]
    assert (flat(plain) - flat(model.parameters())).abs().max() > 1e-4  # differs from plain SGD


def test_sam_perturbs_and_steps_every_parameter_group():
    """An optimizer of several parameter groups (a copier's, e.g. weight decay kept off some layers): the ascent is
    over every group's parameters, as with one group, so the step is the same."""
    one, two = tiny_bn_model(), tiny_bn_model()
    params = list(two.parameters())  # first Linear | BatchNorm and last Linear
    opts = (sgd(one), torch.optim.SGD([{"params": params[:2]}, {"params": params[2:]}], lr=0.1, momentum=0.9,
                                      weight_decay=1e-2))
    x, y = batch()
    for model, opt in zip((one, two), opts):
        sam.sam_step(model, lambda: F.cross_entropy(model(x), y), opt, rho=0.5)  # noqa: B023  (called at once)
    for a, b in zip(one.parameters(), two.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# PCN
# ------------------------------------------------------------------------------------------------

def hand_class_grads(model_fn, x, y, num_classes):
    """Per-class gradients by separate forward + backward passes (the loss of class l: its CE sum / B)."""
    out = []
    for c in range(num_classes):
        if not (y == c).any():
            out.append(None)
            continue
        m = model_fn()
        loss = F.cross_entropy(m(x), y, reduction="none")[y == c].sum() / len(y)
        out.append(list(torch.autograd.grad(loss, list(m.parameters()))))
    return out


def test_pcn_direction_equals_sum_of_unit_class_gradients():
    x, y = batch(labels=[0] * 7 + [1] * 3 + [2] * 2)
    hand = hand_class_grads(tiny_bn_model, x, y, C)
    want = sum(flat(g) / flat(g).norm() for g in hand)
    model = tiny_bn_model()
    pcn.update_direction(model, x, y, C, normalize=True, eps=1e-6)
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), want, rtol=1e-4, atol=1e-6)
    # the importable core on the hand gradients gives the same
    torch.testing.assert_close(flat(pcn.pcn_direction(hand, eps=1e-6)), want, rtol=1e-4, atol=1e-6)
    # and it is not the plain gradient direction
    plain = sum(flat(g) for g in hand)
    assert (want / want.norm() - plain / plain.norm()).abs().max() > 1e-3
    # the norms the run records per epoch: of the direction, and of the plain gradient (= the batch-mean CE's)
    stats = {}
    pcn.update_direction(tiny_bn_model(), x, y, C, eps=1e-6, stats=stats)
    assert stats["direction_norm"].item() == pytest.approx(want.norm().item(), rel=1e-4)
    assert stats["plain_norm"].item() == pytest.approx(plain.norm().item(), rel=1e-4)
    ref = tiny_bn_model()
    F.cross_entropy(ref(x), y).backward()
    assert stats["plain_norm"].item() == pytest.approx(flat(p.grad for p in ref.parameters()).norm().item(), rel=1e-4)
    plain_stats = {}  # sgd_o: the direction is the plain gradient
    pcn.update_direction(tiny_bn_model(), x, y, C, normalize=False, stats=plain_stats)
    assert plain_stats["direction_norm"] == plain_stats["plain_norm"]
    assert plain_stats["plain_norm"].item() == pytest.approx(plain.norm().item(), rel=1e-4)


def test_pcn_grads_keep_the_channels_last_layout_of_their_parameters():
    """On CUDA the model is channels_last: each .grad PCN writes has its parameter's strides (torch.optim's
    multi-tensor kernels need them) and the direction's values, whatever the layout."""
    def conv_model():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                             nn.Linear(4, C)).to(memory_format=torch.channels_last)

    g = torch.Generator().manual_seed(3)
    x = torch.randn(9, 3, 6, 6, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([0] * 5 + [1] * 3 + [2])
    hand = hand_class_grads(conv_model, x, y, C)
    model = conv_model()
    assert model[0].weight.stride() != model[0].weight.contiguous().stride()  # really channels_last
    pcn.update_direction(model, x, y, C, eps=1e-6)
    assert all(p.grad.stride() == p.stride() for p in model.parameters())
    want = sum(flat(g) / flat(g).norm() for g in hand)
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), want, rtol=1e-4, atol=1e-6)


def test_pcn_eps_is_on_the_scale_of_the_official_class_sums():
    # official: g_l of CrossEntropyLoss(reduction='sum') over the class's samples, g_l / (||g_l|| + eps)
    x, y = batch(labels=[0] * 7 + [1] * 3 + [2] * 2)
    eps = 0.5  # large enough to matter
    sums = [[t * len(y) for t in g] for g in hand_class_grads(tiny_bn_model, x, y, C)]
    want = sum(flat(g) / (flat(g).norm() + eps) for g in sums)
    model = tiny_bn_model()
    pcn.update_direction(model, x, y, C, normalize=True, eps=eps)
    torch.testing.assert_close(flat(p.grad for p in model.parameters()), want, rtol=1e-4, atol=1e-6)


def test_each_class_contributes_unit_norm():
    x, y = batch(labels=[0] * 9 + [1] * 2 + [2] * 1)
    model = tiny_bn_model()
    grads, _ = pcn.per_class_grads(model, model(x), y, C)
    norms = [flat(g).norm().item() for g in grads]
    assert max(norms) / min(norms) > 2  # the raw class gradients differ a lot
    for g in grads:
        assert flat(pcn.pcn_direction([g], eps=1e-6)).norm().item() == pytest.approx(1.0, abs=1e-5)
    assert flat(pcn.pcn_direction([None, [torch.zeros(3)]], eps=1e-6)).abs().max() == 0  # zero grad: no NaN


def test_absent_class_is_skipped_without_nan():
    x, y = batch(labels=[0] * 8 + [1] * 4)  # class 2 absent
    model = tiny_bn_model()
    grads, losses = pcn.per_class_grads(model, model(x), y, C)
    # an absent class has an all-zero gradient (no host sync to find it), and contributes exactly nothing
    assert flat(grads[2]).abs().max() == 0 and flat(grads[0]).abs().max() > 0 and torch.isfinite(losses).all()
    torch.testing.assert_close(flat(pcn.pcn_direction(grads)), flat(pcn.pcn_direction(grads[:2])), rtol=0, atol=0)
    model = tiny_bn_model()
    pcn.update_direction(model, x, y, C)
    d = flat(p.grad for p in model.parameters())
    assert torch.isfinite(d).all()
    hand = hand_class_grads(tiny_bn_model, x, y, C)
    torch.testing.assert_close(d, sum(flat(g) / flat(g).norm() for g in hand if g is not None), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError):
        pcn.pcn_direction([None, None])


def test_sgd_o_direction_is_the_plain_summed_gradient():
    x, y = batch(labels=[0, 1, 2] * 4)
    model = tiny_bn_model()
    pcn.update_direction(model, x, y, C, normalize=False)
    d = flat(p.grad for p in model.parameters())
    ref = tiny_bn_model()
    F.cross_entropy(ref(x), y).backward()
    torch.testing.assert_close(d, flat(p.grad for p in ref.parameters()), rtol=1e-5, atol=1e-7)
    hand = hand_class_grads(tiny_bn_model, x, y, C)
    torch.testing.assert_close(d, sum(flat(g) for g in hand), rtol=1e-5, atol=1e-7)


def test_batch_composition_proportional_and_balanced():
    counts = [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    labels = torch.repeat_interleave(torch.arange(10), torch.tensor(counts))
    prop = pcn.class_batch_sizes(counts, 64, "pcnsgd")
    assert all(abs(b - 64 * n / sum(counts)) <= 0.5 or b == 1 for b, n in zip(prop, counts))
    assert prop[0] > prop[-1] and min(prop) >= 1
    assert pcn.class_batch_sizes([1000, 1], 16, "pcnsgd")[1] == 1  # the at-least-one floor
    bal = pcn.class_batch_sizes(counts, 64, "pcnsgd_o")
    assert bal == [6] * 10 and pcn.class_batch_sizes(counts, 64, "sgd_o") == bal
    assert pcn.class_batch_sizes(counts, 128, "pcnsgd_o") == [13] * 10  # the protocol's batch: round(12.8), not 12
    with pytest.raises(ValueError):
        pcn.class_batch_sizes(counts, 64, "pcngd")
    g = torch.Generator().manual_seed(0)
    for sizes in (prop, bal):
        streams = [pcn.ClassStream((labels == c).nonzero().squeeze(1), g) for c in range(10)]
        steps = 5
        m = pcn.epoch_index_matrix(streams, sizes, steps)
        assert m.shape == (steps, sum(sizes))
        for row in m:
            assert torch.bincount(labels[row], minlength=10).tolist() == sizes
    # oversampling: class 9 (10 images) drawn 6 per step over 5 steps = every image exactly 3 times, and no image
    # twice in one batch, also in the batches that span two passes (6 = 4 left over + 2 of the next pass)
    drawn = m[:, -6:]
    assert torch.bincount(drawn.reshape(-1) - drawn.min(), minlength=10).tolist() == [3] * 10
    assert all(len(torch.unique(row)) == 6 for row in drawn)
    stream = pcn.ClassStream(torch.arange(7), torch.Generator().manual_seed(3))
    batches = [stream.take(5) for _ in range(70)]
    assert all(len(torch.unique(b)) == 5 for b in batches)
    assert all(torch.bincount(torch.cat(batches[7 * i:7 * i + 7])).tolist() == [5] * 7 for i in range(10))


def test_groupnorm_swap_and_split_forward_match_joint():
    torch.manual_seed(0)
    conv = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, C))
    pcn.batchnorm_to_groupnorm(conv, 4)
    assert isinstance(conv[1], nn.GroupNorm) and conv[1].num_groups == 2
    assert not any(isinstance(m, nn.BatchNorm2d) for m in conv.modules())
    x = torch.randn(9, 3, 6, 6)
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 0, 1])
    for eps in (1e-6, 0.5):  # a large eps: g_l's own scale (sum over the class / B) must agree too, not only its direction
        joint, split = copy.deepcopy(conv), copy.deepcopy(conv)
        pcn.update_direction(joint, x, y, C, split=False, eps=eps)
        pcn.update_direction(split, x, y, C, split=True, eps=eps)
        torch.testing.assert_close(flat(p.grad for p in split.parameters()), flat(p.grad for p in joint.parameters()),
                                   rtol=1e-4, atol=1e-6)
    resnet = pcn.common.resnet32(10)
    pcn.batchnorm_to_groupnorm(resnet, 4)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in resnet.modules())


# ------------------------------------------------------------------------------------------------
# Bad input: a one-line "error: ..." (common.UserError, a SystemExit with exit status 1), before any data is loaded
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("module,flags,needle", [
    (sam, ["--rho", "-0.1"], "--rho"),
    (sam, ["--base", "focal_drw"], "--base"),
    (pcn, ["--variant", "pcngd"], "--variant"),
    (pcn, ["--norm", "layer"], "--norm"),
    (pcn, ["--norm", "group", "--class-grads", "batched"], "--class-grads"),
    (sam, ["--bn-second-pass", "skip"], "--bn-second-pass"),
    (sam, ["--scale", "inf"], "--scale"),
    (pcn, ["--eps", "inf"], "--eps"),
])
def test_bad_input_gives_one_line_error(module, flags, needle, tmp_path):
    assert_user_error(module.parse_args, [*SMOKE_ARGS, "--out", tmp_path, *flags], needle)


def test_default_names_and_rho():
    assert pcn.parse_args(SMOKE_ARGS).method == "pcnsgd"
    assert pcn.parse_args([*SMOKE_ARGS, "--variant", "sgd_o", "--norm", "group"]).method == "sgd_o_gn"
    a = sam.parse_args([*SMOKE_ARGS, "--base", "ce_drw"])
    assert a.method == "sam_ce_drw" and a.rho == 0.5
    a = sam.parse_args(SMOKE_ARGS)
    assert a.method == "sam_ldam_drw" and a.rho == 0.8 and a.bn_second_pass == "update"
    assert sam.parse_args([*SMOKE_ARGS, "--base", "ce_drw", "--dataset", "cifar100"]).rho == 0.8  # by class count
    assert sam.parse_args([*SMOKE_ARGS, "--base", "ce_drw", "--rho", "0"]).rho == 0.0
    # CE+SAM: no DRW switch (plain CE weights in every epoch) and run.sh's CE rho, 0.1 / 0.2
    a = sam.parse_args([*SMOKE_ARGS, "--base", "ce"])
    assert a.method == "sam_ce" and a.rho == 0.1 and a.drw_epoch is None
    assert torch.equal(sam.drw_weights([100, 10, 1], 0.9999, 10**6, a.drw_epoch), torch.ones(3))
    assert sam.parse_args([*SMOKE_ARGS, "--base", "ce", "--dataset", "cifar100"]).rho == 0.2
    # the base losses' defaults as LDAM-DRW's (DRW at epoch 160 of 200, beta 0.9999, max_m 0.5, s 30)
    a = sam.parse_args(["--dataset", "synthetic", "--device", "cpu", "--epochs", "200"])
    assert (a.drw_epoch, a.beta, a.max_m, a.scale) == (160, 0.9999, 0.5, 30.0)
    # PCNGD-Algorithms: eps 1e-6, GroupNorm groups of 4 channels (GF=4); the per-class gradients one at a time
    a = pcn.parse_args(SMOKE_ARGS)
    assert (a.eps, a.gn_group_size, a.norm, a.class_grads, a.variant) == (1e-6, 4, "batch", "loop", "pcnsgd")


@pytest.mark.parametrize("labels", [[0] * 9 + [1] * 2 + [2] * 1, [0] * 8 + [1] * 4])  # the second: class 2 absent
def test_batched_class_grads_equal_the_loop(labels):
    """--class-grads batched: the C per-class gradients from one batched backward are the loop's numbers."""
    x, y = batch(labels=labels)
    model = tiny_bn_model()
    loop, losses = pcn.per_class_grads(model, model(x), y, C)
    batched, losses_b = pcn.per_class_grads_batched(model, model(x), y, C)
    for a, b in zip(loop, batched):
        torch.testing.assert_close(flat(b), flat(a), rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(losses_b, losses)
    first, second = tiny_bn_model(), tiny_bn_model()
    pcn.update_direction(first, x, y, C)
    pcn.update_direction(second, x, y, C, batched=True)
    torch.testing.assert_close(flat(p.grad for p in second.parameters()), flat(p.grad for p in first.parameters()),
                               rtol=1e-5, atol=1e-7)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_batched_class_grads_equal_the_loop_on_gpu():
    """On CUDA (the table's PCNSGD rows take the batched backward only where this and its --fast test pass,
    .ci/gpu): each class's g_l and the update direction of the batched backward agree with the loop's. As pcn_sgd.py
    trains them, the loop on ResNet-32 in channels_last and the batched backward on a contiguous copy, in float64:
    at initialization g_l is so sensitive to rounding that the two formats' fp32 kernels alone change it by ~0.3%
    on the CPU, and cuDNN's choice of kernel more. Under bf16 autocast (the table's precision; vmap has failed with
    bf16 autocast elsewhere) on two copies of the contiguous model, so that only the backward differs: 10% allowed
    (1-2% measured on the CPU; another batch's g_l differ by ~60%)."""
    import contextlib
    import common
    dev = torch.device("cuda")
    torch.manual_seed(0)
    channels_last = common.resnet32(10, dev)
    contiguous = copy.deepcopy(channels_last).to(memory_format=torch.contiguous_format)
    twin = copy.deepcopy(contiguous)  # the loop's model in bf16: its own .grad, beside the batched one's
    g = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(128, 3, 32, 32, device=dev, generator=g).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (128,), device=dev, generator=g)

    def close(a, b, tol):
        a, b = flat(a).double(), flat(b).double()
        return bool(torch.isfinite(b).all()) and ((a - b).norm() / a.norm()).item() < tol
    bf16 = lambda: torch.autocast("cuda", torch.bfloat16)  # noqa: E731
    cases = [(channels_last.double(), copy.deepcopy(contiguous).double(), x.double(), contextlib.nullcontext, 1e-6),
             (twin, contiguous, x.contiguous(), bf16, 0.1)]
    for loop_model, batched_model, loop_x, autocast, tol in cases:
        with autocast():  # (the forward only, as update_direction)
            logits_loop, logits_batched = loop_model(loop_x), batched_model(loop_x.contiguous())
        loop, _ = pcn.per_class_grads(loop_model, logits_loop, y, 10)
        batched, _ = pcn.per_class_grads_batched(batched_model, logits_batched, y, 10)
        for c, (a, b) in enumerate(zip(loop, batched)):
            assert close(a, b, tol), f"class {c}, {'float64' if autocast is contextlib.nullcontext else 'bf16'}"
        for model, batch_grads in ((loop_model, False), (batched_model, True)):
            model.zero_grad(set_to_none=True)
            pcn.update_direction(model, loop_x, y, 10, batched=batch_grads, autocast=autocast)
        assert close([p.grad for p in loop_model.parameters()], [p.grad for p in batched_model.parameters()], tol)
