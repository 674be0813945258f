"""studies/gradient_noise.py: the bias and noise of each method's mini-batch gradient at given parameters, from the
classes' mean gradients and mean squared norms, against brute force on small cases; its pages from its JSON."""
import json
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from conftest import ROOT, load_script, readme_block, run_script_forked

N = load_script("studies/gradient_noise.py", "gradient_noise")


def moments(per_image, labels, C):
    """mu (C, P) and m (C,) of explicit per-image gradient vectors, as class_moments returns them."""
    g, y = torch.as_tensor(per_image, dtype=torch.float64), torch.as_tensor(labels)
    return (torch.stack([g[y == c].mean(0) for c in range(C)]),
            torch.stack([(g[y == c] ** 2).sum(1).mean() for c in range(C)]))


def brute_force(per_image, labels, counts, name, B, batches, rng):
    """The estimator's noise and expected coefficients by drawing real batches of images: E||g - E g||^2 / ||G||^2
    and the minority's share of E g (binary here: class 1 the minority)."""
    q, w, by_weight_sum = N.estimator(name, counts)
    idx = [np.flatnonzero(labels == c) for c in range(len(counts))]
    gs = []
    for _ in range(batches):
        k = rng.multinomial(B, q)
        rows = np.concatenate([rng.choice(idx[c], k[c]) for c in range(len(counts))])  # with replacement: i.i.d.
        weights = w[labels[rows]]
        gs.append((weights[:, None] * per_image[rows]).sum(0) / (weights.sum() if by_weight_sum else B))
    gs = np.array(gs)
    G = np.mean([per_image[labels == c].mean(0) for c in range(len(counts))], 0)
    return ((gs - gs.mean(0)) ** 2).sum(1).mean() / (G @ G)


@pytest.mark.parametrize("name", N.ESTIMATORS)
def test_the_noise_from_class_moments_is_the_noise_of_real_batches(name):
    """Random per-image gradients of a 1:9 binary set (classes of different means and spreads): the noise that
    estimator_rows computes from mu and m equals the spread of batches drawn image by image, PyTorch's normalization
    by the batch's weight sum included."""
    rng = np.random.default_rng(0)
    counts, P, B = [45, 5], 6, 8
    labels = np.repeat([0, 1], counts)
    per_image = rng.normal(size=(sum(counts), P)) + np.where(labels[:, None] == 1, 2.0, -0.5) * np.arange(1, P + 1)
    mu, m = moments(per_image, labels, 2)
    rows = N.estimator_rows(mu, m, counts, B, 200_000, np.random.default_rng(1))
    want = brute_force(per_image, labels, counts, name, B, 40_000, np.random.default_rng(2))
    assert rows[name]["noise"] == pytest.approx(want, rel=0.03)


def test_the_unbiased_estimators_have_the_closed_form_noise_and_no_bias():
    """oversampling and class_weights_u estimate the class-balanced gradient G without bias, with
    B x noise = sum_c q_c w_c^2 m_c - ||G||^2 (i.i.d. draws, the noise not divided by ||G||^2); PyTorch's weighted mean and ERM are biased
    towards the majority. At 1:99 class_weights_u's minority term q w^2 = 0.0099 x 50^2 is 50 times oversampling's
    1/2, so where the per-image gradients are as large in both classes and much larger than their means (here:
    orthogonal unit class means, a within-class spread of 100), its noise is about 25 times oversampling's."""
    counts, B = [99, 1], 16
    mu = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
    m = (mu * mu).sum(1) + 100.0  # m_c = ||mu_c||^2 + the spread of the class's per-image gradients
    rows = N.estimator_rows(mu, m, counts, B, 400_000, np.random.default_rng(0))
    G2 = 0.5
    for name in ("oversampling", "class_weights_u"):
        q, w, _ = N.estimator(name, counts)
        closed = ((q * w * w * m.numpy()).sum() - G2) / B / G2  # (B x noise = sum_c q_c w_c^2 m_c - ||G||^2)
        assert rows[name]["noise"] == pytest.approx(closed, rel=0.02), name
        assert rows[name]["bias"] < 0.02 and rows[name]["minority_share"] == pytest.approx(0.5, abs=0.01)
    ratio = rows["class_weights_u"]["noise"] / rows["oversampling"]["noise"]
    assert 24 < ratio < 27
    assert rows["class_weights"]["minority_share"] < 0.2 and rows["erm"]["minority_share"] == pytest.approx(0.01, abs=0.002)
    assert rows["erm"]["bias"] > 0.9


def test_class_moments_are_the_per_image_gradients_means():
    """class_moments (one vmap'ed gradient per image) against a loop of ordinary backward passes."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.GroupNorm(2, 4), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                          nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.randn(7, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1, 0, 2])
    mu, m = N.class_moments(model, x, y, 3, chunk=3)
    grads = []
    for xi, yi in zip(x, y):
        model.zero_grad()
        F.cross_entropy(model(xi[None]), yi[None]).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in model.parameters()]).double())
    want_mu, want_m = moments(torch.stack(grads), y, 3)
    torch.testing.assert_close(mu, want_mu, rtol=1e-5, atol=1e-8)
    torch.testing.assert_close(m, want_m, rtol=1e-5, atol=1e-8)


def test_the_script_runs_on_synthetic_data_and_readme_holds_the_committed_table(tmp_path):
    run_script_forked("studies/gradient_noise.py", "--dataset", "synthetic", "--seeds", "1", "--steps", "5",
                      "--count-draws", "2000", "--out", str(tmp_path))
    res = json.loads((tmp_path / "noise.json").read_text())
    assert [(p["trained_by"], p["steps"]) for p in res["settings"]["binary"]["points"]] == [
        ("start", 0), ("oversampling", 5), ("class_weights_u", 5)]
    assert "| initial weights |" in (tmp_path / "NOISE.md").read_text()
    # studies/README.md's block is what --readme writes from the committed JSON, its links from that page
    with open(os.path.join(ROOT, "results", "gradient-noise", "noise.json")) as f:
        committed = json.load(f)
    assert readme_block("noise", "studies/README.md").strip() == "\n".join(
        N.readme_lines(committed, "../results/gradient-noise")).strip()
    assert "noise:start" not in open(os.path.join(ROOT, "README.md")).read()
    with open(os.path.join(ROOT, "studies", "README.md")) as f:  # ... and the command that made it is listed
        assert f"`python {committed['command']}`" in f.read()
