"""common.py against the official algorithms and hand-computed cases."""
import argparse
import os
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import common
from conftest import C10_LT100, ROOT, SMOKE_ARGS, read_results, run_script_forked


# ---- long-tailed subsets --------------------------------------------------------------------------

def test_cifar10_counts_match_the_protocol():
    assert common.long_tail_counts(5000, 10, "exp", 100) == C10_LT100
    assert common.long_tail_counts(5000, 10, "exp", 10) == [5000, 3871, 2997, 2320, 1796, 1391, 1077, 834, 645, 500]
    assert common.long_tail_counts(5000, 10, "step", 100) == [5000] * 5 + [50] * 5
    assert common.long_tail_counts(500, 5, "step", 10) == [500] * 2 + [50] * 3  # odd C: C // 2 head classes
    assert sum(common.long_tail_counts(500, 100, "exp", 100)) == 10847
    assert sum(common.long_tail_counts(500, 100, "exp", 10)) == 19573
    assert common.long_tail_counts(5000, 10, "exp", 1) == [5000] * 10


def official_selection(targets, counts, seed):
    """kaidic/LDAM-DRW imbalance_cifar.gen_imbalanced_data, written out: global numpy seed, then per class."""
    np.random.seed(seed)
    targets = np.array(targets, dtype=np.int64)
    keep = []
    for c, n in zip(np.unique(targets), counts):
        idx = np.where(targets == c)[0]
        np.random.shuffle(idx)
        keep.append(idx[:n])
    return np.concatenate(keep)


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_selected_indices_match_the_official_algorithm(seed):
    rng = np.random.RandomState(123)
    labels = rng.permutation(np.repeat(np.arange(10), 500))  # interleaved, as in the CIFAR batch files
    counts = common.long_tail_counts(500, 10, "exp", 100)
    ours = common.long_tail_indices(labels, counts, seed)
    assert np.array_equal(ours, official_selection(labels, counts, seed))
    assert np.array_equal(np.bincount(labels[ours], minlength=10), counts)
    # ... and what the training set is built from, in that order (class by class: batches and the subset hash
    # follow it)
    keep, kept_counts = common.make_long_tailed(labels, 10, "exp", 100, data_seed=seed)
    assert np.array_equal(keep, official_selection(labels, counts, seed)) and kept_counts == counts


def test_data_seed_changes_the_subset_and_ratio_too_high_is_refused():
    labels = np.repeat(np.arange(10), 100)
    a, counts = common.make_long_tailed(labels, 10, "exp", 10, data_seed=0)
    b, _ = common.make_long_tailed(labels, 10, "exp", 10, data_seed=1)
    assert counts == [100, 77, 59, 46, 35, 27, 21, 16, 12, 10]
    assert not np.array_equal(a, b) and np.array_equal(np.sort(labels[a]), np.sort(labels[b]))
    with pytest.raises(common.UserError, match="0 images"):
        common.make_long_tailed(labels, 10, "exp", 1000, data_seed=0)
    # the ratio the message suggests works, also where float rounding empties the last class at n_max itself
    for n_max, most in ((100, 100), (49, 48), (98, 97)):
        labels = np.repeat(np.arange(10), n_max)
        for kind in ("exp", "step"):
            with pytest.raises(common.UserError, match=f"use a ratio of at most {most}$"):
                common.make_long_tailed(labels, 10, kind, most + 1, data_seed=0)
            assert min(common.make_long_tailed(labels, 10, kind, most, data_seed=0)[1]) == 1


def test_an_unbalanced_training_set_is_kept_as_it_is_with_imbalance_type_none(capsys):
    labels = np.array([2] * 2 + [0] * 20 + [1] * 8)  # a folder that is already long-tailed
    keep, counts = common.make_long_tailed(labels, 3, "none", 100, data_seed=0)  # (the ratio is unused)
    assert counts == [20, 8, 2] and sorted(keep.tolist()) == list(range(30))
    assert labels[keep].tolist() == [0] * 20 + [1] * 8 + [2] * 2  # class by class, as the other types
    _, counts = common.make_long_tailed(labels, 3, "exp", 1, data_seed=0)  # a subset of it: from the smallest class
    assert counts == [2, 2, 2] and "n_max = 2, the smallest class" in capsys.readouterr().err
    with pytest.raises(common.UserError, match="n_max = 2, the smallest class"):
        common.make_long_tailed(labels, 3, "exp", 10, data_seed=0)
    with pytest.raises(common.UserError, match="needs at least 2"):  # one class: a message, not a ZeroDivisionError
        common.make_long_tailed(np.zeros(5, dtype=np.int64), 1, "exp", 10, data_seed=0)
    args = argparse.Namespace(dataset="imagefolder", data_dir="/x/mydata/", imbalance_type="none", imbalance_ratio=1.0)
    assert common.setting_name(args) == "mydata-asis" and common.paper_top1("mydata-asis", "erm") is None
    # the settings with published numbers (the report explains them only where there are some)
    assert common.paper_setting("cifar10-jpeg-exp-r100") == ("cifar10", "exp", 100.0)
    assert common.paper_setting("cifar100-exp-r100") == ("cifar100", "exp", 100.0)
    assert [common.paper_setting(s) for s in ("synthetic-exp-r10", "cifar10-exp-r50", "cifar10-asis")] == [None] * 3
    # a ratio given with it is not silently dropped: a note says it is unused (none for the default)
    parse = lambda *more: common.finish_args(common.make_parser("").parse_args(  # noqa: E731
        ["--dataset", "synthetic", "--device", "cpu", "--imbalance-type", "none", *more]), method="erm")
    parse("--imbalance-ratio", "50")
    assert "note: --imbalance-ratio 50 is not used with --imbalance-type none" in capsys.readouterr().err
    parse()
    assert "imbalance-ratio" not in capsys.readouterr().err


# ---- model ----------------------------------------------------------------------------------------

def test_resnet32_shape_and_parameter_count():
    model = common.resnet32(10)
    assert sum(p.numel() for p in model.parameters()) == 464154  # kaidic/LDAM-DRW resnet32, 10 classes
    assert sum(isinstance(m, torch.nn.Conv2d) for m in model.modules()) == 31  # 1 + 3 stages x 5 blocks x 2
    out = model(torch.randn(4, 3, 32, 32))
    assert out.shape == (4, 10) and model.features(torch.randn(2, 3, 32, 32)).shape == (2, 64)
    assert common.resnet32(100)(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def official_forward(model, x):
    """kaidic/LDAM-DRW models/resnet_cifar.py resnet32's forward, written out over our model's own layers: stem
    relu(bn(conv)), each block relu(bn2(conv2(relu(bn1(conv1(x))))) + option-A shortcut), global average pool,
    linear."""
    out = F.relu(model.bn1(model.conv1(x)))
    for block in model.layers:
        short = out
        if block.conv1.stride[0] != 1 or block.conv1.in_channels != block.conv2.out_channels:
            pad = block.conv2.out_channels // 4
            short = F.pad(out[:, :, ::2, ::2], (0, 0, 0, 0, pad, pad))
        y = F.relu(block.bn1(block.conv1(out)))
        out = F.relu(block.bn2(block.conv2(y)) + short)
    out = F.avg_pool2d(out, out.size()[3]).view(out.size(0), -1)
    return model.linear(out)


def test_resnet32_computes_the_official_forward_pass():
    """Every BatchNorm given random statistics and affine parameters (so that no layer is the identity), eval
    mode: our forward is the official one to rounding; and BatchNorm keeps PyTorch's defaults (momentum 0.1, eps
    1e-5) as the official code does."""
    torch.manual_seed(0)
    model = common.resnet32(10)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            assert (m.momentum, m.eps, m.affine, m.track_running_stats) == (0.1, 1e-5, True, True)
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5), m.bias.uniform_(-0.5, 0.5)
                m.running_mean.uniform_(-0.5, 0.5), m.running_var.uniform_(0.5, 2.0)
    model.eval()
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(model(x), official_forward(model, x), atol=1e-5)


def test_resnet32_starts_from_the_official_kaiming_normal_init():
    """kaidic/LDAM-DRW _weights_init: kaiming_normal_ on every Conv2d and Linear weight, std sqrt(2 / fan_in);
    PyTorch's default (kaiming_uniform_ with a = sqrt(5)) would give sqrt(1 / (3 fan_in)), 2.4x smaller."""
    torch.manual_seed(0)
    model = common.resnet32(10)
    for name, m in model.named_modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
            fan_in = m.weight[0].numel()
            assert m.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.15), name
    # the head's bias keeps PyTorch's default, uniform in +-1/sqrt(fan_in) (the official code does not touch it)
    bias = model.linear.bias
    assert bias.abs().max() <= 64 ** -0.5 and bias.std() > 0.02


def test_option_a_shortcut_pads_channels_with_zeros():
    block = common.BasicBlock(16, 32, stride=2)
    x = torch.randn(2, 16, 8, 8)
    s = block.shortcut(x)
    assert s.shape == (2, 32, 4, 4)
    assert torch.equal(s[:, 8:24], x[:, :, ::2, ::2]) and not s[:, :8].any() and not s[:, 24:].any()


# ---- schedule -------------------------------------------------------------------------------------

def test_learning_rate_schedule_is_the_official_one():
    args = common.make_parser("").parse_args([])  # the defaults (test_the_parser_defaults_are_the_protocol)
    lrs = [common.lr_at(e, args) for e in range(200)]
    assert lrs[:6] == pytest.approx([0.02, 0.04, 0.06, 0.08, 0.1, 0.1])
    assert lrs[159] == pytest.approx(0.1) and lrs[160] == pytest.approx(1e-3)
    assert lrs[179] == pytest.approx(1e-3) and lrs[180] == pytest.approx(1e-5) and lrs[199] == pytest.approx(1e-5)
    # set_lr writes it into every parameter group of the optimizer (the group lr is what SGD reads)
    opt = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)]},
                           {"params": [torch.zeros(1, requires_grad=True)], "lr": 7.0}], lr=0.5)
    assert common.set_lr(opt, 160, args) == pytest.approx(1e-3)
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([1e-3, 1e-3])


def test_the_parser_defaults_are_the_protocol():
    """run_all.sh passes none of these flags: every number of the table rests on the defaults (the schedule they
    give: test_learning_rate_schedule_is_the_official_one)."""
    a = common.make_parser("").parse_args([])
    assert (a.epochs, a.batch_size, a.lr, a.momentum, a.weight_decay) == (200, 128, 0.1, 0.9, 2e-4)
    assert (a.warmup_epochs, a.lr_decay_epochs, a.lr_decay) == (5, [160, 180], 0.01)
    assert (a.imbalance_type, a.imbalance_ratio, a.data_seed, a.seed) == ("exp", "100", 0, 0)


def test_results_go_to_results_and_synthetic_runs_to_the_ignored_scratch_folder():
    """A synthetic run without --out must not land in the committed tables (python common.py report covers
    results/); results/scratch/ is in .gitignore, wherever it is (a relative --out results/scratch from methods/)."""
    out = lambda *flags: common.finish_args(common.make_parser("").parse_args(list(flags)), method="m").out  # noqa
    assert out("--device", "cpu") == os.path.join(ROOT, "results")
    assert out("--dataset", "synthetic", "--device", "cpu") == os.path.join(ROOT, "results", "scratch")
    assert out("--dataset", "synthetic", "--device", "cpu", "--out", "elsewhere") == "elsewhere"
    assert "**/results/scratch/" in open(os.path.join(ROOT, ".gitignore")).read().split()


# ---- batch pipeline -------------------------------------------------------------------------------

def make_data(ratio="10", batch_size=64, seed=0):
    args = common.make_parser("").parse_args(SMOKE_ARGS + ["--imbalance-ratio", ratio, "--batch-size", str(batch_size)])
    args = common.finish_args(args, method="test")
    torch.manual_seed(seed)
    return common.Data(args, "cpu")


def how_augmented(x, out):
    """For each image of `out`, the (row offset, column offset, flipped) of every zero-padded crop of x that it is."""
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    h = x.shape[-1]
    return [[(i, j, f) for i in range(9) for j in range(9) for f in (0, 1)
             if torch.equal(out[k], padded[k, :, i:i + h, j:j + h].flip(2) if f else padded[k, :, i:i + h, j:j + h])]
            for k in range(len(x))]


def test_augment_is_a_zero_padded_crop_or_its_flip_per_image():
    data = make_data()
    x = data.train_x[:64]
    kinds = set()
    for k, match in enumerate(how_augmented(x, data.augment(x, torch.Generator().manual_seed(0)))):
        assert match, f"image {k} is not a crop of its padded self"
        kinds.update(match)
    assert len({m[:2] for m in kinds}) > 10 and {m[2] for m in kinds} == {0, 1}  # offsets and flips vary per image
    # every one of the 9 offsets of RandomCrop(32, padding=4) in each direction is drawn, the last one included
    assert {m[0] for m in kinds} == set(range(9)) and {m[1] for m in kinds} == set(range(9))
    # RandomHorizontalFlip's p = 0.5: of 512 images, 256 +- 3 s.d. (34) are flipped (an image that is a crop both
    # ways, e.g. a symmetric one, counts as unflipped)
    x = data.train_x[torch.arange(512) % len(data)]
    out = data.augment(x, torch.Generator().manual_seed(1))
    flipped = sum(all(m[2] for m in match) for match in how_augmented(x, out))
    assert 222 <= flipped <= 290, flipped


def test_a_batch_is_its_images_augmented_then_normalized():
    data = make_data()
    idx = torch.tensor([5, 0, 77, 3, 200, 9, 41, 8])
    x, y = data.batch(idx, torch.Generator().manual_seed(3))
    assert torch.equal(y, data.train_y[idx])
    assert torch.equal(x, data.normalize(data.augment(data.train_x[idx], torch.Generator().manual_seed(3))))
    assert not torch.equal(x, data.normalize(data.train_x[idx]))  # (8 identity crops without a flip: p = 2^-8 / 81^8)


def test_normalize_uses_the_ldam_constants():
    data = make_data()
    # kaidic/LDAM-DRW cifar_train.py: Normalize((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)), written out
    # here (not read from common.MEAN / STD); black pins the mean, white then the std
    mean, std = [0.4914, 0.4822, 0.4465], [0.2023, 0.1994, 0.2010]
    for level in (0, 255):
        img = torch.full((1, 3, 2, 2), level, dtype=torch.uint8)
        expected = [(level / 255 - m) / s for m, s in zip(mean, std)]
        assert data.normalize(img)[0, :, 0, 0].tolist() == pytest.approx(expected, rel=1e-5)


def test_batches_are_full_and_cover_every_image():
    data = make_data(batch_size=64)
    g = torch.Generator().manual_seed(0)
    order = data.shuffled(g)
    seen = torch.cat([y for _, y in data.batches(order, g)])
    assert len(data) == 403 and data.steps_per_epoch == 7 and len(seen) == 7 * 64
    assert np.array_equal(np.bincount(seen.numpy(), minlength=10) >= np.array(data.train_counts), [True] * 10)
    short = list(data.batches(order[:5], g))  # an order shorter than a batch still gives one full batch
    assert len(short) == 1 and short[0][0].shape == (64,) + data.train_x.shape[1:]
    # the short last batch is filled from the epoch's own order (an oversampler's epoch keeps its class mix), without
    # replacement: here the order is the 86 images of classes 5-9, 42 of them fill up 2 x 64
    tail = torch.nonzero(data.train_y >= 5).flatten()
    tail = tail[torch.randperm(len(tail), generator=torch.Generator().manual_seed(1))]
    data.batch = lambda idx, generator: idx  # each step's indices instead of its images
    idx = torch.cat(list(data.batches(tail, g)))
    assert len(idx) == 128 and torch.equal(idx[:86], tail)
    fill = idx[86:].tolist()
    assert set(fill) <= set(tail.tolist()) and len(set(fill)) == len(fill)
    # an order shorter than a batch (undersampling's epoch of C x n_min images, say) fills it by cycling through the
    # order: each of its images as often as any other, give or take one
    counts = np.bincount(torch.cat(list(data.batches(tail[:5], g))).numpy())
    assert counts.sum() == 64 and counts[counts > 0].max() - counts[counts > 0].min() <= 1 and (counts > 0).sum() == 5


def test_each_epoch_draws_a_new_order_and_new_augmentations_from_the_runs_generator():
    data = make_data()
    g = torch.Generator().manual_seed(0)
    first, second = data.shuffled(g), data.shuffled(g)
    assert sorted(first.tolist()) == list(range(len(data))) and not torch.equal(first, second)
    assert torch.equal(data.shuffled(torch.Generator().manual_seed(0)), first)      # from the generator given
    assert not torch.equal(data.shuffled(torch.Generator().manual_seed(1)), first)  # another seed, another order
    x = data.train_x[:64]
    assert not torch.equal(data.augment(x, g), data.augment(x, g))
    assert not torch.equal(data.augment(x, torch.Generator().manual_seed(0)),
                           data.augment(x, torch.Generator().manual_seed(1)))
    # the crops and the flips each: two draws in a row from one generator place them differently (a generator of
    # its own for either part would repeat it); an image that is a crop in more than one way is left out
    both = [(a[0], b[0]) for a, b in zip(how_augmented(x, data.augment(x, g)), how_augmented(x, data.augment(x, g)))
            if len(a) == len(b) == 1]
    assert len(both) > 48
    assert any(a[:2] != b[:2] for a, b in both) and any(a[2] != b[2] for a, b in both)


# ---- evaluation -----------------------------------------------------------------------------------

def test_metrics_on_a_hand_computed_case():
    # 3 classes with train counts 500 (many), 50 (medium), 5 (few); 2 test images per class.
    probs = torch.tensor([[0.9, 0.05, 0.05], [0.6, 0.3, 0.1],     # class 0: both right
                          [0.7, 0.2, 0.1], [0.2, 0.7, 0.1],       # class 1: one right
                          [0.5, 0.4, 0.1], [0.4, 0.5, 0.1]])      # class 2: both wrong
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    m = common.metrics(probs, labels, [500, 50, 5])
    assert m["top1"] == pytest.approx(50.0)
    assert m["per_class_acc"] == pytest.approx([100.0, 50.0, 0.0])
    assert (m["many"], m["medium"], m["few"]) == pytest.approx((100.0, 50.0, 0.0))
    # ECE, 15 bins of width 1/15: confidences 0.9 (bin 13, right), 0.6 (bin 8, right), 0.7 (bin 10, wrong),
    # 0.7 (bin 10, right), 0.5 (bin 7, wrong), 0.5 (bin 7, wrong)
    ece = (abs(1 - 0.9) + abs(1 - 0.6) + 2 * abs(0.5 - 0.7) + 2 * abs(0 - 0.5)) / 6
    assert m["ece"] == pytest.approx(100 * ece, rel=1e-5)


def test_group_thresholds_and_ece_bins_at_their_edges():
    # 100 and 20 training images are both medium (many: > 100, few: < 20): each class in exactly one group
    pred = torch.tensor([0, 0, 2, 0])                      # classes 0 and 2 right, 1 and 3 wrong
    m = common.metrics(torch.eye(4)[pred], torch.arange(4), [101, 100, 20, 19])
    assert (m["many"], m["medium"], m["few"]) == pytest.approx((100.0, 50.0, 0.0))
    # CIFAR-100-LT R=100: 35 many (classes 0-34), 35 medium (35-69), 30 few (70-99); one class of each right
    pred = torch.tensor([c if c in (0, 35, 70) else (c + 1) % 100 for c in range(100)])
    m = common.metrics(torch.eye(100)[pred], torch.arange(100), common.long_tail_counts(500, 100, "exp", 100))
    assert (m["many"], m["medium"], m["few"]) == pytest.approx((100 / 35, 100 / 35, 100 / 30))
    # ECE bins are (b/15, (b+1)/15]: confidence 0.06 (right) and 0.10 (wrong) fall in bins 0 and 1 and do not
    # cancel; 1.0 (right) is in the last bin, with no gap
    probs = torch.zeros(3, 20)
    probs[0] = 0.94 / 19
    probs[0, 0] = 0.06                               # argmax 0, label 0: right, confidence 0.06
    probs[1] = 0.90 / 19
    probs[1, 1] = 0.10                               # argmax 1, label 2: wrong, confidence 0.10
    probs[2, 5] = 1.0                                # argmax 5, label 5: right, confidence 1.0
    m = common.metrics(probs, torch.tensor([0, 2, 5]), [10] * 20)
    assert m["ece"] == pytest.approx(100 * (abs(1 - 0.06) + abs(0 - 0.10) + 0) / 3, rel=1e-5)
    # ... and on an edge: 0.2 = 3/15 (right) closes bin 2, 0.21 (wrong) is in bin 3; bins [b/15, (b+1)/15) would
    # put both in bin 3, where they would partly cancel
    probs = torch.zeros(2, 20)
    probs[0] = 0.8 / 19
    probs[0, 0] = 0.2                                # argmax 0, label 0: right, confidence 0.2
    probs[1] = 0.79 / 19
    probs[1, 1] = 0.21                               # argmax 1, label 2: wrong, confidence 0.21
    m = common.metrics(probs, torch.tensor([0, 2]), [10] * 20)
    assert m["ece"] == pytest.approx(100 * (abs(1 - 0.2) + abs(0 - 0.21)) / 2, rel=1e-5)


def test_top1_counts_samples_and_per_class_accuracy_counts_classes():
    # a test set that is not balanced (an image folder may have one): top-1 is 3 of 4 samples, not the class mean
    m = common.metrics(torch.eye(2)[torch.tensor([0, 0, 0, 0])], torch.tensor([0, 0, 0, 1]), [50, 5])
    assert m["top1"] == pytest.approx(75.0) and m["per_class_acc"] == pytest.approx([100.0, 0.0])
    # ... and a group's accuracy is the mean of its classes' accuracies, not of its test images': both classes are
    # "many" here, 100% and 0% give 50, where 3 of the group's 4 test images right would give 75
    m = common.metrics(torch.eye(2)[torch.tensor([0, 0, 0, 0])], torch.tensor([0, 0, 0, 1]), [500, 200])
    assert m["many"] == pytest.approx(50.0) and m["medium"] is None and m["few"] is None


def test_predict_uses_the_running_statistics_and_leaves_the_model_as_it_was():
    data = make_data()
    torch.manual_seed(0)
    model = common.resnet32(data.num_classes)
    with torch.no_grad():  # running statistics away from their initial values, so batch statistics differ
        model(data.normalize(data.train_x[:64]))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    probs = common.predict(model, data)
    assert model.training  # back in training mode
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # no BatchNorm statistic moved
    model.eval()
    with torch.no_grad():
        expected = model(data.normalize(data.test_x)).softmax(1)
    assert torch.allclose(probs, expected, atol=1e-5)
    with torch.no_grad():
        expected = model(data.normalize(data.test_x))
    model.train()
    z = common.predict(model, data, fp32=True, logits=True)  # the logits: the same model's, before the softmax
    assert z.dtype == torch.float32 and torch.allclose(z, expected, atol=1e-4)
    assert torch.allclose(z.softmax(1), probs, atol=1e-5)
    # this untrained net's logits lie far apart: probabilities round to 0 (all tied), the logits do not
    assert (probs == 0).any() and z.isfinite().all()


def test_empty_group_is_absent_not_zero():
    m = common.metrics(torch.eye(2), torch.tensor([0, 1]), [5000, 500])
    assert m["many"] == pytest.approx(100.0) and m["medium"] is None and m["few"] is None
    # a class with no test image (the data loaders refuse such a test set) scores 0, never NaN
    m = common.metrics(torch.eye(3)[:2], torch.tensor([0, 1]), [5000, 500, 50])
    assert m["per_class_acc"] == [100.0, 100.0, 0.0] and m["medium"] == 0.0 and m["top1"] == 100.0


# ---- a run's bookkeeping --------------------------------------------------------------------------

def test_a_run_logs_the_mean_loss_evaluates_every_k_epochs_and_reports_an_fp32_final_evaluation(tmp_path, monkeypatch):
    """Run's bookkeeping without training: --eval-every 2 over 5 epochs evaluates after epochs 2, 4 and 5 (0-based 1, 3,
    4), the curve's in the training precision and the last, the reported one, in fp32; an epoch's train_loss is the
    mean of its steps' losses; the JSON's final metrics are the last evaluation's."""
    args = common.make_parser("").parse_args(SMOKE_ARGS + ["--epochs", "5", "--eval-every", "2", "--out", str(tmp_path)])
    args = common.finish_args(args, method="bookkeeping")
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "methods", "erm.py")])
    calls, tops = [], [50.0, 90.0, 40.0]  # the second evaluation is the best one, the last is not

    def fake_evaluate(model, data, fp32=False):
        calls.append(fp32)
        return {"top1": tops[(len(calls) - 1) % 3], "per_class_acc": [], "many": None, "medium": None, "few": None,
                "ece": 1.0}
    monkeypatch.setattr(common, "evaluate", fake_evaluate)
    run = common.start(args)
    for epoch in range(args.epochs):
        for loss in (1.0, 2.0, 6.0):
            run.log_step(torch.tensor(loss + epoch))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=None)
    run.finish(None)
    assert [e["train_loss"] for e in run.history] == pytest.approx([3.0, 4.0, 5.0, 6.0, 7.0])
    assert [e["epoch"] for e in run.history if e["test_top1"] is not None] == [1, 3, 4]
    assert calls == [False, False, True]  # finish() does not evaluate again: the last epoch did
    (r,) = read_results(tmp_path).values()
    assert [e["test_top1"] for e in run.history if e["test_top1"] is not None] == [50.0, 90.0, 40.0]
    # the final epoch's evaluation, never the best one
    assert r["status"] == "completed" and r["final"]["top1"] == 40.0 and r["history"][-1]["test_top1"] == 40.0
    assert [e["elapsed_s"] for e in r["history"]] == sorted(e["elapsed_s"] for e in r["history"])

    # a loop that stops before its last epoch (a copy with early stopping): finish() evaluates the model it has, in
    # fp32, rather than report the evaluation of an earlier epoch
    calls.clear()
    run = common.start(common.finish_args(args, method="stopped_early"))
    for epoch in range(3):
        run.log_step(torch.tensor(1.0))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=None)
    run.finish(None)
    assert calls == [False, True] and run.last_eval["top1"] == 90.0

    # an infinite loss is a divergence as a NaN is: the run stops at the end of that epoch and records it
    run = common.start(common.finish_args(args, method="infinite_loss"))
    run.log_step(torch.tensor(1.0))
    run.log_step(torch.tensor(float("inf")))
    with pytest.raises(SystemExit, match="diverged"):
        run.end_epoch(0, common.lr_at(0, args), model=None)
    (r,) = [r for r in read_results(tmp_path).values() if r["method"] == "infinite_loss"]
    assert r["status"] == "diverged" and r["diverged_epoch"] == 0 and r["final"] is None

    # a finite training loss but a model whose outputs went to NaN or inf (the real evaluate sees them): diverged too,
    # with its JSON, in the epoch where an evaluation found it, and not a traceback from the metrics
    monkeypatch.undo()  # the real evaluate
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "methods", "erm.py")])
    nan_model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(common.class_count(args)))
    run = common.start(common.finish_args(args, method="nan_outputs"))
    nan_model(run.data.test_x[:1].float())
    with torch.no_grad():
        nan_model[1].weight[0, 0] = float("nan")
    run.log_step(torch.tensor(1.0))
    run.end_epoch(0, common.lr_at(0, args), nan_model)  # (epoch 1 of 5: no evaluation)
    run.log_step(torch.tensor(1.0))
    with pytest.raises(SystemExit, match=r"outputs on the test set became non-finite \(NaN or inf\) in epoch 2"):
        run.end_epoch(1, common.lr_at(1, args), nan_model)
    (r,) = [r for r in read_results(tmp_path).values() if r["method"] == "nan_outputs"]
    assert r["status"] == "diverged" and r["diverged_epoch"] == 1 and r["final"] is None
    with pytest.raises(common.Diverged):
        common.evaluate(nan_model, run.data)


def bookkeeping_run(tmp_path, monkeypatch, method, *flags, top1=1.0):
    """(args, Run) of erm.py's smoke arguments plus `flags`, its evaluations faked at `top1`: Run's bookkeeping alone,
    without training."""
    args = common.make_parser("").parse_args(SMOKE_ARGS + [*flags, "--out", str(tmp_path)])
    args = common.finish_args(args, method=method)
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "methods", "erm.py")])
    monkeypatch.setattr(common, "evaluate", lambda model, data, fp32=False: {
        "top1": top1, "per_class_acc": [], "many": None, "medium": None, "few": None, "ece": 1.0})
    return args, common.start(args)


def test_the_epoch_length_and_the_profiled_window_are_the_methods_own(tmp_path, monkeypatch, capsys):
    """An epoch is as long as the method makes it (undersampling: C x n_min images, not the training set): the first
    epoch's line says how many steps it took, and --profile-steps profiles steps of the second epoch by that length,
    from its 4th (past --fast's 2 eager steps and capture at the epoch's new lr), never past its end (its
    evaluation): 6 steps an epoch here, --profile-steps 5 profiles 3. An epoch of 3 steps is too short."""
    args, run = bookkeeping_run(tmp_path, monkeypatch, "short_epochs", "--epochs", "3", "--profile-steps", "5")
    assert run.data.steps_per_epoch > 6  # a plain epoch is longer
    for epoch in range(args.epochs):
        for _ in range(6):
            run.log_step(torch.tensor(1.0))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=None)
    run.finish(None)
    lines = [line for line in capsys.readouterr().out.splitlines() if " epoch " in line]
    assert lines[0].endswith("(6 steps)") and "steps" not in lines[1] + lines[2]
    (r,) = read_results(tmp_path).values()
    assert r["profile"]["first_step"] == 10 and r["profile"]["steps"] == 3  # steps 10-12: the 2nd epoch's 4th-6th
    args, run = bookkeeping_run(tmp_path, monkeypatch, "shorter_epochs", "--epochs", "2", "--profile-steps", "5")
    for epoch in range(args.epochs):
        for _ in range(3):
            run.log_step(torch.tensor(1.0))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=None)
    run.finish(None)
    (r,) = [r for r in read_results(tmp_path).values() if r["method"] == "shorter_epochs"]
    assert r["profile"] == {"error": "an epoch of 3 steps is too short to profile: the window starts after step 3 "
                                     "of the second epoch"}


def test_a_long_epoch_prints_a_line_every_progress_s(tmp_path, monkeypatch, capsys):
    """An epoch that goes on (a CPU epoch of CIFAR-10-LT: a minute or more) says where it is every PROGRESS_S
    seconds, counted from the last line printed: its step, of the last epoch's steps once one has ended. The clock is
    faked: each step takes 12 s, so with PROGRESS_S 30 a line comes after the 3rd step of an epoch (36 s), and the 6th."""
    args, run = bookkeeping_run(tmp_path, monkeypatch, "long_epochs", "--epochs", "2")
    clock = [run._last_print]
    monkeypatch.setattr(common.time, "time", lambda: clock[0])
    monkeypatch.setattr(common, "PROGRESS_S", 30)
    for epoch in range(args.epochs):
        for _ in range(6):
            clock[0] += 12
            run.log_step(torch.tensor(1.0))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=None)
    lines = [line.split("  elapsed")[0] for line in capsys.readouterr().out.splitlines() if " step " in line]
    assert lines == ["[long_epochs seed0] epoch   1/2  step 3", "[long_epochs seed0] epoch   1/2  step 6",
                     "[long_epochs seed0] epoch   2/2  step 3/6", "[long_epochs seed0] epoch   2/2  step 6/6"], lines


def test_a_checkpoint_is_saved_after_every_kth_epoch_but_the_last(tmp_path, monkeypatch):
    """--checkpoint-every 2 over 5 epochs: saved after epochs 2 and 4 (0-based 1 and 3), not after the last (the JSON
    follows), and dropped once the run is whole."""
    args, run = bookkeeping_run(tmp_path, monkeypatch, "checkpointed", "--epochs", "5", "--checkpoint-every", "2",
                                top1=50.0)
    model = torch.nn.Linear(2, 2)
    assert run.restore(model, torch.optim.SGD(model.parameters(), lr=0.1)) == 0
    path, saved = common.checkpoint_path(args), []
    for epoch in range(args.epochs):
        run.log_step(torch.tensor(1.0))
        run.end_epoch(epoch, common.lr_at(epoch, args), model=model)
        saved.append(torch.load(path, weights_only=False)["epoch"] if os.path.exists(path) else None)
    assert saved == [None, 1, 1, 3, 3]
    run.finish(model)
    assert not os.path.exists(path)


def test_the_training_seed_drives_the_runs_generator():
    """--seed seeds the generator that draws every epoch's order and augmentations, and torch's global one (the
    model's init): two seeds give other batches, the same seed the same."""
    g0, g1, again = (common.seed_everything(s, False, "cpu") for s in (0, 1, 0))
    assert g1.initial_seed() == 1 and g0.initial_seed() == 0
    draws = [torch.randperm(100, generator=g).tolist() for g in (g0, g1, again)]
    assert draws[0] != draws[1] and draws[0] == draws[2]
    common.seed_everything(3, False, "cpu")
    a = torch.rand(3)
    common.seed_everything(3, False, "cpu")
    assert torch.equal(a, torch.rand(3))


def test_a_resumed_runs_clock_goes_on_from_its_checkpoint(tmp_path, monkeypatch, capsys):
    """The wall time of a resumed run counts the time trained before the pause (not the pause, not from 0)."""
    monkeypatch.setattr(sys, "argv", [os.path.join(ROOT, "methods", "erm.py")])
    monkeypatch.setattr(common, "evaluate", lambda model, data, fp32=False: {"top1": 1.0})

    def run_of(*flags):
        args = common.make_parser("").parse_args(SMOKE_ARGS + ["--epochs", "3", "--eval-every", "5", "--out",
                                                               str(tmp_path), "--checkpoint-every", "1", *flags])
        run = common.start(common.finish_args(args, method="clock"))
        model = torch.nn.Linear(2, 2)
        return run, run.restore(model, torch.optim.SGD(model.parameters(), lr=0.1))

    run, start = run_of("--resume")  # no checkpoint yet: it says so, and starts
    assert start == 0
    assert (f"[clock seed0] --resume: no checkpoint at {common.checkpoint_path(run.args)} yet: starting from epoch 1"
            in capsys.readouterr().out)
    run.log_step(torch.tensor(1.0))
    run.end_epoch(0, 0.1, None)  # writes the checkpoint of epoch 0
    ckpt = common.checkpoint_path(run.args)
    ck = torch.load(ckpt, weights_only=False)
    assert ck["elapsed_s"] < 100
    ck["elapsed_s"], ck["history"][0]["elapsed_s"] = 1000.0, 1000.0  # as if epoch 0 had taken 1000 s
    torch.save(ck, ckpt)
    run, start = run_of("--resume")
    assert start == 1 and run.resumed == [1]
    run.log_step(torch.tensor(1.0))
    run.end_epoch(1, 0.1, None)
    assert 1000 <= run.history[-1]["elapsed_s"] < 1100


# ---- data sources ---------------------------------------------------------------------------------

def write_folder(root, classes=("a", "b"), per_class=3, size=32):
    from PIL import Image
    rng = np.random.RandomState(0)
    for split in ("train", "test"):
        for c in classes:
            os.makedirs(os.path.join(root, split, c))
            for i in range(per_class):
                Image.fromarray(rng.randint(0, 255, (size, size, 3), dtype=np.uint8)).save(
                    os.path.join(root, split, c, f"{i:04d}.png"))


def test_imagefolder_is_decoded_once_and_cached(tmp_path):
    write_folder(tmp_path / "imgs")
    cache = tmp_path / "cache"
    a = common.load_imagefolder(str(tmp_path / "imgs"), str(cache))
    assert a[0].shape == (6, 32, 32, 3) and a[1].tolist() == [0, 0, 0, 1, 1, 1] and a[4] == ["a", "b"]
    files = os.listdir(cache)
    assert len(files) == 1 and files[0].endswith(".npz")
    os.utime(cache / files[0], (1, 1))
    b = common.load_imagefolder(str(tmp_path / "imgs"), str(cache))  # from the cache: no new file
    assert os.listdir(cache) == files and all(np.array_equal(x, y) for x, y in zip(a[:4], b[:4]))
    from PIL import Image  # a changed file invalidates the cache
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "imgs" / "train" / "a" / "0000.png")
    c = common.load_imagefolder(str(tmp_path / "imgs"), str(cache))
    assert len(os.listdir(cache)) == 2 and not c[0][0].any()


def test_imagefolder_counts_the_images_in_a_class_folders_subfolders_as_torchvision_does(tmp_path):
    from PIL import Image
    write_folder(tmp_path / "imgs")
    for sub in ("sub", ".hidden"):
        os.makedirs(tmp_path / "imgs" / "train" / "b" / sub)
        Image.fromarray(np.full((32, 32, 3), 7, np.uint8)).save(tmp_path / "imgs" / "train" / "b" / sub / "x.png")
    classes, files = common.list_imagefolder(str(tmp_path / "imgs"))
    paths, labels = files["train"]
    assert labels.tolist() == [0, 0, 0, 1, 1, 1, 1]  # b's image in sub/ counts, the one in .hidden/ does not
    assert paths[-1].endswith(os.path.join("train", "b", "sub", "x.png")) and not any(".hidden" in p for p in paths)


def test_a_cache_that_cannot_be_written_costs_a_note_not_the_run(tmp_path, capsys, monkeypatch):
    write_folder(tmp_path / "imgs")
    expected = common.load_imagefolder(str(tmp_path / "imgs"), str(tmp_path / "cache"))
    open(tmp_path / "a-file", "w").write("where the cache folder should go")
    got = common.load_imagefolder(str(tmp_path / "imgs"), str(tmp_path / "a-file" / "cache"))  # cannot be made
    assert all(np.array_equal(x, y) for x, y in zip(expected[:4], got[:4])) and got[4] == expected[4]
    assert "cannot make the cache folder" in capsys.readouterr().err

    def full_disk(path, **arrays):
        open(path, "wb").write(b"half an archive")
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(common.np, "savez", full_disk)
    got = common.load_imagefolder(str(tmp_path / "imgs"), str(tmp_path / "cache2"))
    assert all(np.array_equal(x, y) for x, y in zip(expected[:4], got[:4]))
    assert "No space left on device" in capsys.readouterr().err and os.listdir(tmp_path / "cache2") == []


def test_synthetic_is_reproducible_and_class_conditional():
    """(the --dataset synthetic set is 16x16, a quarter of the compute of CIFAR's 32x32)"""
    a, b = common.make_synthetic(), common.make_synthetic()
    assert all(np.array_equal(x, y) for x, y in zip(a[:4], b[:4]))
    x, y = a[0].astype(float), a[1]
    means = np.stack([x[y == c].mean(0) for c in range(10)])
    within = np.mean([np.abs(x[y == c] - means[c]).mean() for c in range(10)])
    between = np.abs(means[:, None] - means[None]).mean() * 10 / 9
    assert between > within  # the classes differ more than images within a class


def test_erm_learns_the_synthetic_set():
    """A real check that the whole loop trains: balanced synthetic data, a few epochs, well above chance."""
    import tempfile
    with tempfile.TemporaryDirectory() as out:
        proc = run_script_forked("methods/erm.py", *SMOKE_ARGS, "--imbalance-ratio", "1", "--epochs", "4",
                                 "--warmup-epochs", "0", "--lr", "0.05", "--out", out)
    top1 = float(proc.stdout.split("top-1 ")[1].split("%")[0])
    assert top1 > 60, proc.stdout


def test_step_profiler_measures_its_window_and_never_raises(monkeypatch):
    """--profile-steps: the steps after the start-th tick are profiled (wall time, operator calls, GPU activities);
    a profiler failure is recorded, not raised (a diagnostic must not end a 200-epoch run)."""
    model = torch.nn.Linear(4, 2)
    prof = common.StepProfiler(start=3, steps=2, device="cpu")
    for _ in range(6):
        model(torch.randn(8, 4)).sum().backward()
        prof.tick()
    r = prof.result
    assert r["steps"] == 2 and r["first_step"] == 4 and r["device"] == "cpu"
    assert r["wall_ms_per_step"] > 0 and r["cpu_ops_per_step"] >= 2
    assert r["gpu_activities_per_step"] == 0 and r["gpu_busy_fraction"] == 0 and r["mean_gpu_activity_us"] is None
    assert r["top_gpu_kernels"] == []
    # the GPU time by kernel name, per step, the longest first (here two steps of made-up kernels)
    from types import SimpleNamespace
    ev = lambda name, us: SimpleNamespace(name=name, time_range=SimpleNamespace(elapsed_us=lambda: us))  # noqa: E731
    events = [ev("conv", 30.0), ev("bn", 5.0), ev("conv", 30.0), ev("bn", 5.0), ev("sgd", 30.0)]
    assert common.top_activities(events, steps=2, n=2) == [
        {"name": "conv", "per_step": 1.0, "ms_per_step": 0.03, "share": 0.6},
        {"name": "sgd", "per_step": 0.5, "ms_per_step": 0.015, "share": 0.3}]

    prof = common.StepProfiler(start=3, steps=50, device="cpu")  # the run ends inside the window: close() ends it
    for _ in range(5):
        prof.tick()
    prof.close()
    assert prof.result["steps"] == 2 and prof.result["wall_ms_per_step"] > 0
    prof = common.StepProfiler(start=30, steps=5, device="cpu")  # never reached: said so
    prof.tick()
    prof.close()
    assert prof.result == {"error": "step 31, where profiling starts, was never reached"}
    prof = common.StepProfiler(start=3, steps=5, device="cpu")  # opened after step 3, closed before step 4 ran
    for _ in range(3):
        prof.tick()
    prof.close()
    assert prof.result == {"error": "step 4, where profiling starts, was never reached"}

    def broken(*args, **kwargs):
        raise RuntimeError("no profiler here")

    monkeypatch.setattr(torch.profiler, "profile", broken)
    prof = common.StepProfiler(start=1, steps=2, device="cpu")
    for _ in range(4):
        prof.tick()
    assert prof.result == {"error": "RuntimeError: no profiler here"}


@pytest.mark.parametrize("script, base, ignored, note", [
    ("focal.py", [], ["--beta", "0.99"], "note: --beta changes nothing without --alpha cb"),
    ("class_balanced.py", ["--loss", "softmax"], ["--gamma", "3"], "note: --gamma changes nothing with --loss softmax"),
    ("ldam_drw.py", ["--loss", "ce"], ["--max-m", "0.3", "--scale", "10"],
     "note: --max-m, --scale change nothing with --loss ce"),
    ("mm_drw.py", ["--no-drw"], ["--beta", "0.999"], "note: --beta changes nothing with --no-drw"),
    ("sam.py", ["--base", "ce"], ["--drw-epoch", "5"], "note: --drw-epoch changes nothing with --base ce"),
    ("pcn_sgd.py", [], ["--gn-group-size", "2"], "note: --gn-group-size changes nothing with --norm batch"),
    ("pcn_sgd.py", ["--variant", "sgd_o"], ["--class-grads", "batched", "--eps", "0.1"],
     "note: --class-grads, --eps change nothing with --variant sgd_o, whose plain update needs one joint backward and "
     "normalizes nothing")])
def test_a_flag_the_run_ignores_is_named(script, base, ignored, note, capsys):
    """A method's flag given another value than its default, where the run's other flags make it unused, gets a
    note (its JSON still records it); left at its default, or where it is used, it gets none."""
    parse = common._method_module(script).parse_args
    parse([*base, *ignored, "--dataset", "synthetic", "--device", "cpu"])
    assert note in capsys.readouterr().err.splitlines()
    parse([*base, "--dataset", "synthetic", "--device", "cpu"])
    assert "changes nothing" not in capsys.readouterr().err
    common._method_module("focal.py").parse_args(["--beta", "0.99", "--alpha", "cb", "--dataset", "synthetic"])
    assert "note" not in capsys.readouterr().err
    common._method_module("erm.py").parse_args(["--data-dir", "data/cifar10-jpeg", "--dataset", "synthetic"])
    assert "note: --data-dir is not used with --dataset synthetic" in capsys.readouterr().err


def test_a_short_run_names_the_switches_it_never_reaches():
    def ns(**k):
        return argparse.Namespace(**{"epochs": 200, "lr_decay_epochs": [160, 180], "warmup_epochs": 5, **k})
    assert common.unreached_switches(ns(drw_epoch=160)) == ""
    # a warm-up longer than the run: the lr never reaches --lr (one as long as the run reaches it in its last epoch)
    assert common.unreached_switches(ns(epochs=5, lr_decay_epochs=[], warmup_epochs=5)) == ""
    assert common.unreached_switches(ns(epochs=2, lr_decay_epochs=[], warmup_epochs=50)) == "--warmup-epochs 50"
    assert common.unreached_switches(ns(epochs=170, drw_epoch=160)) == "--lr-decay-epochs 180"
    assert common.unreached_switches(ns(epochs=30, drw_epoch=160, start_epoch=0)) == \
        "--lr-decay-epochs 160 180, --drw-epoch 160"  # (a switch at 0 is no deferred switch)
    assert common.unreached_switches(ns(epochs=30, lr_decay_epochs=[], drw_epoch=None, start_epoch=160)) == \
        "--start-epoch 160"
