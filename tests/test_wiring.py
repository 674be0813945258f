"""Each method file's training loop is wired to the core that the unit tests check.

The unit tests check a method's loss, weights or sampler alone; these check that the loop under __main__ really
trains with them. At its identity value a method's run IS the ERM run (or, for the margin losses, the run of the
method it reduces to): the same training loss, the mean over an epoch whose later steps measure the weights the
earlier ones trained. Switched on, the run is not. A DRW switch changes the training at its epoch and not before.
The samplers' batches, as the training step receives them, have the class mix that the sampler draws (a loop that
records the sampler's histogram but trains on a plain shuffle fails here). And what the loop hands to run.restore
and run.finish is the model the method needs: the scaled cosine head evaluated, the prior bias without weight decay,
SAM's BatchNorm statistics updated in both passes unless frozen.

Each script runs as __main__ in a forked child of this process (conftest.start_forked: torch is imported once), for
one epoch (the DRW runs two) on the synthetic set, one thread each, two at a time: 67 runs, about 45 s on 2 cores.
"""
import collections
import json
import math
import os

import pytest
import torch

from conftest import SMOKE_ARGS, load_method, read_results, run_forked_pool

import common  # noqa: E402  (the module the forked scripts import: setup() wraps its functions there)

pcn = load_method("pcn_sgd")
torch.optim.SGD([torch.zeros(1, requires_grad=True)])  # the first optimizer imports torch._dynamo (~2 s): once, here

# one epoch of 4 steps of 64 on the 242 images of the synthetic R=100 subset: its mean loss also measures the weights
# the steps trained
ARGS = [*SMOKE_ARGS, "--epochs", "1", "--imbalance-ratio", "100"]


ERM = ("methods/erm.py",)
# (script, flags at the method's identity: the run is the reference's, flags switching the method on, reference)
IDENTITIES = [
    ("methods/focal.py", ("--gamma", "0"), ("--gamma", "2"), ERM),
    # beta 0 makes the class-balanced alpha all ones; inverse-frequency alpha is not
    ("methods/focal.py", ("--gamma", "0", "--alpha", "cb", "--beta", "0"), ("--gamma", "0", "--alpha", "inverse"), ERM),
    ("methods/class_weights.py", ("--drw-epoch", "1"), (), ERM),
    ("methods/class_balanced.py", ("--loss", "softmax", "--beta", "0"), ("--loss", "softmax"), ERM),
    ("methods/ldam_drw.py", ("--loss", "ce", "--no-drw"), ("--loss", "ce", "--drw-epoch", "0"), ERM),
    ("methods/logit_adjust.py", ("--tau", "0"), ("--tau", "1"), ERM),
    ("methods/cdt.py", ("--gamma", "0"), ("--gamma", "0.3"), ERM),
    ("methods/vs_loss.py", ("--gamma", "0", "--tau", "0"), ("--gamma", "0.2", "--tau", "1.2"), ERM),
    # VS contains LA (gamma 0) and CDT (tau 0): each flag reaches its own term (swapping them fails here)
    ("methods/vs_loss.py", ("--gamma", "0", "--tau", "1"), ("--gamma", "0.3", "--tau", "1"),
     ("methods/logit_adjust.py", "--tau", "1")),
    ("methods/vs_loss.py", ("--gamma", "0.3", "--tau", "0"), ("--gamma", "0.3", "--tau", "1"),
     ("methods/cdt.py", "--gamma", "0.3")),
    ("methods/oversampling.py", ("--start-epoch", "1"), (), ERM),
    # the official CB sampler weights at beta 0 are all ones: the natural distribution drawn with replacement, as
    # --sampling-power 0 (a loop that dropped --beta would draw 1/n; beta 0.9: nearly uniform over the images)
    ("methods/oversampling.py", ("--beta", "0"), ("--beta", "0.9"),
     ("methods/oversampling.py", "--sampling-power", "0")),
    # rho 0: the second pass takes its gradient where the first one did. Switched on, the first step's loss (taken
    # at w, before the step) is ERM's, the later ones are not.
    ("methods/sam.py", ("--base", "ce_drw", "--rho", "0", "--drw-epoch", "1"),
     ("--base", "ce_drw", "--rho", "0.5", "--drw-epoch", "1"), ERM),
    # ... and on LDAM-DRW: with rho 0 the LDAM loss and cosine head of ldam_drw.py
    ("methods/sam.py", ("--base", "ldam_drw", "--rho", "0", "--drw-epoch", "1"),
     ("--base", "ldam_drw", "--rho", "0.8", "--drw-epoch", "1"), ("methods/ldam_drw.py", "--no-drw")),
    # ... with the cosine head's --scale passed on (scale 10 is not the default's run)
    ("methods/sam.py", ("--base", "ldam_drw", "--rho", "0", "--drw-epoch", "1", "--scale", "10"),
     ("--base", "ldam_drw", "--rho", "0", "--drw-epoch", "1"), ("methods/ldam_drw.py", "--no-drw", "--scale", "10")),
    # LDAM with its DRW switch never reached, and reached at once, against LDAM without DRW
    ("methods/ldam_drw.py", ("--drw-epoch", "1"), ("--drw-epoch", "0"), ("methods/ldam_drw.py", "--no-drw")),
    # DRW from the start with beta 0 (weights all ones) is no DRW: the loop's weights take --beta (each DRW file)
    ("methods/ldam_drw.py", ("--drw-epoch", "0", "--beta", "0"), ("--drw-epoch", "0"),
     ("methods/ldam_drw.py", "--no-drw")),
    ("methods/mm_drw.py", ("--drw-epoch", "0", "--beta", "0"), ("--drw-epoch", "0"), ("methods/mm_drw.py", "--no-drw")),
    ("methods/sam.py", ("--base", "ce_drw", "--rho", "0", "--drw-epoch", "0", "--beta", "0"),
     ("--base", "ce_drw", "--rho", "0", "--drw-epoch", "0"), ERM),
    # an infinite delta- gives every sample the margin exp(-inf) = 0: MM is then LDAM with zero margins
    ("methods/mm_drw.py", ("--delta-minus", "1e9", "--no-drw"), ("--no-drw",),
     ("methods/ldam_drw.py", "--max-m", "0", "--no-drw")),
    # MM-LDAM with zero LDAM margins is MM; with them (--ldam alone) it is not
    ("methods/mm_drw.py", ("--ldam", "--max-m", "0", "--no-drw"), ("--ldam", "--no-drw"),
     ("methods/mm_drw.py", "--no-drw")),
]
# runs whose batches are recorded: (script, *flags)
OVERSAMPLING = ("methods/oversampling.py",)
DRS = ("methods/oversampling.py", "--start-epoch", "1", "--epochs", "2")
# (on the R=10 subset: 10 images of every class an epoch, not R=100's one)
UNDERSAMPLING = ("methods/undersampling.py", "--imbalance-ratio", "10")
UNDERSAMPLING_2 = ("methods/undersampling.py", "--imbalance-ratio", "10", "--epochs", "2")
# PCNSGD+O: test_optimizer_methods checks the per-class sizes of both variants and the index matrix, this module
# that the loop trains on its rows
PCNSGD_O = ("methods/pcn_sgd.py", "--variant", "pcnsgd_o")
PCNSGD = ("methods/pcn_sgd.py", "--variant", "pcnsgd")
RECORDED = [OVERSAMPLING, DRS, UNDERSAMPLING, UNDERSAMPLING_2, PCNSGD_O, PCNSGD]
# the DRW switch in the middle of a run: two epochs, switched on at epoch 1 or never (--drw-epoch 2). The first epoch
# is the same, the second is not (a loop that sets the weights once, before its first epoch, fails here)
DRW_TWO_EPOCHS = [("methods/class_weights.py",), ("methods/class_balanced.py", "--loss", "softmax"),
                  ("methods/ldam_drw.py",), ("methods/mm_drw.py",),
                  ("methods/sam.py", "--base", "ce_drw", "--rho", "0.5")]
DRW_RUNS = [(*run, "--epochs", "2", "--drw-epoch", k) for run in DRW_TWO_EPOCHS for k in ("1", "2")]
# flags that change what trains though no identity ties them to a reference: the two runs' losses differ
DIFFERENT = [(("methods/cdt.py", "--gamma", "0.3"), ("methods/cdt.py", "--gamma", "0.3", "--normalize", "sum")),
             (("methods/oversampling.py",), ("methods/oversampling.py", "--sampling-power", "0.5"))]
# runs whose model and optimizer are recorded as run.restore and run.finish receive them
SAM, SAM_FROZEN, SAM_LDAM = ("methods/sam.py",), ("methods/sam.py", "--bn-second-pass", "frozen"), \
    ("methods/sam.py", "--base", "ldam_drw")
CB_FOCAL, LDAM, MM = ("methods/class_balanced.py",), ("methods/ldam_drw.py",), ("methods/mm_drw.py",)
INSPECTED = [ERM, SAM, SAM_FROZEN, SAM_LDAM, CB_FOCAL, LDAM, MM]


def record_batches(path):
    """setup() for start_forked: every batch the script draws through common.Data.batch appends its labels to path,
    and its training indices to path + ".idx"."""
    def setup():
        draw = common.Data.batch

        def batch(self, idx, generator):
            x, y = draw(self, idx, generator)
            for file, values in ((path, y), (f"{path}.idx", idx)):
                with open(file, "a") as f:
                    f.write(" ".join(map(str, values.tolist())) + "\n")
            return x, y
        common.Data.batch = batch
    return setup


def inspect_model(path):
    """setup() for start_forked: what run.restore (the model and optimizer as the loop starts) and run.finish (the
    model that is evaluated) receive, written to path as JSON lines."""
    def setup():
        restore, finish = common.Run.restore, common.Run.finish

        def write(**record):
            with open(path, "a") as f:
                f.write(json.dumps(record) + "\n")

        def restored(self, model, optimizer, *more):
            ids = {id(p): n for n, p in model.named_parameters()}
            bias = getattr(model.linear, "bias", None)  # a cosine head (NormedLinear) has none
            write(at="restore", bias=None if bias is None else bias.tolist(),
                  groups=[{"weight_decay": g["weight_decay"], "params": [ids[id(p)] for p in g["params"]]}
                          for g in optimizer.param_groups])
            return restore(self, model, optimizer, *more)

        def finished(self, model):
            write(at="finish", type=type(model).__name__, scale=getattr(model, "scale", None),
                  bn_batches=[m.num_batches_tracked.item() for m in model.modules()
                              if isinstance(m, torch.nn.BatchNorm2d)])
            return finish(self, model)
        common.Run.restore, common.Run.finish = restored, finished
    return setup


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Every run this module needs, two at a time: (script, *flags) -> (returncode, stdout, stderr, its folder)."""
    runs = [run for script, same, other, ref in IDENTITIES for run in ((script, *same), (script, *other), ref)]
    runs += DRW_RUNS + [run for pair in DIFFERENT for run in pair]
    runs = list(dict.fromkeys(runs + RECORDED + INSPECTED))
    root = tmp_path_factory.mktemp("wiring")
    outs = [root / str(i) for i in range(len(runs))]
    for out in outs:
        out.mkdir()
    ended = run_forked_pool([(run[0], (*ARGS, *run[1:], "--out", out),
                              record_batches(out / "batches") if run in RECORDED else
                              inspect_model(out / "inspected") if run in INSPECTED else None)
                             for run, out in zip(runs, outs)])
    return {run: (*result, out) for run, result, out in zip(runs, ended, outs)}


def result(trained, run):
    """The results JSON and the folder of one run of `trained`."""
    rc, stdout, stderr, out = trained[run]
    assert rc == 0, f"{' '.join(run)} exited {rc}\n{stdout[-2000:]}\n{stderr[-2000:]}"
    (found,) = read_results(out).values()
    return found, out


def losses(trained, run):
    return [h["train_loss"] for h in result(trained, run)[0]["history"]]


@pytest.mark.parametrize("script, same, other, ref", IDENTITIES,
                         ids=[f"{os.path.basename(s)}={os.path.basename(r[0])}{''.join(r[1:])}" for s, _, _, r in IDENTITIES])
def test_at_its_identity_a_method_trains_as_its_reference_and_not_otherwise(script, same, other, ref, trained):
    expected = losses(trained, ref)
    assert losses(trained, (script, *same)) == pytest.approx(expected, rel=1e-5)
    assert losses(trained, (script, *other)) != pytest.approx(expected, rel=1e-3), f"{script} {other} trained as {ref}"


@pytest.mark.parametrize("run", DRW_TWO_EPOCHS, ids=[" ".join(os.path.basename(x) for x in r) for r in DRW_TWO_EPOCHS])
def test_the_drw_switch_changes_the_training_at_its_epoch(run, trained):
    on, never = (losses(trained, (*run, "--epochs", "2", "--drw-epoch", k)) for k in ("1", "2"))
    assert on[0] == pytest.approx(never[0], rel=1e-6)
    assert on[1] != pytest.approx(never[1], rel=1e-3), f"{' '.join(run)}: no DRW at epoch 1"


@pytest.mark.parametrize("a, b", DIFFERENT, ids=[" ".join(b[len(a):]) for a, b in DIFFERENT])
def test_a_flag_changes_what_trains(a, b, trained):
    assert losses(trained, b) != pytest.approx(losses(trained, a), rel=1e-3), f"{' '.join(b)} trained as {' '.join(a)}"


def inspected(trained, run):
    """{'restore': ..., 'finish': ...} as inspect_model recorded them for one run, and its results JSON."""
    found, out = result(trained, run)
    return {r["at"]: r for r in map(json.loads, open(out / "inspected"))}, found


def test_the_margin_methods_evaluate_the_scaled_cosine_head(trained):
    """Top-1 would be the same without the scale, the softmax and so the ECE would not: softmax(s * cos) is scored."""
    assert inspected(trained, ERM)[0]["finish"]["type"] != "Scaled"
    for run in (LDAM, MM, SAM_LDAM):
        rec, found = inspected(trained, run)
        assert (rec["finish"]["type"], rec["finish"]["scale"]) == ("Scaled", found["args"]["scale"]), run
        # the cosine head's weight is trained, with weight decay (the optimizer is built after the head swap)
        assert [g["weight_decay"] for g in rec["restore"]["groups"] if "linear.weight" in g["params"]] == \
            [found["args"]["weight_decay"]], run


def test_sam_updates_the_batchnorm_statistics_in_both_passes_unless_frozen(trained):
    steps = inspected(trained, ERM)[0]["finish"]["bn_batches"]  # one forward pass per step
    assert len(set(steps)) == 1 and steps[0] > 0
    assert inspected(trained, SAM)[0]["finish"]["bn_batches"] == [2 * steps[0]] * len(steps)
    assert inspected(trained, SAM_FROZEN)[0]["finish"]["bn_batches"] == steps


def test_the_sigmoid_losses_start_from_the_prior_bias_without_weight_decay_on_it(trained):
    rec, found = inspected(trained, CB_FOCAL)
    C = len(found["train_class_counts"])
    assert found["args"]["loss"] == "focal" and rec["restore"]["bias"] == pytest.approx([-math.log(C - 1)] * C)
    decay = {g["weight_decay"]: g["params"] for g in rec["restore"]["groups"]}
    assert decay[0.0] == ["linear.bias"] and "linear.bias" not in decay[found["args"]["weight_decay"]]
    erm = inspected(trained, ERM)[0]["restore"]
    assert len(erm["groups"]) == 1 and "linear.bias" in erm["groups"][0]["params"]  # ERM: one group, decay on all


def fed(path, steps, epochs):
    """Per epoch, the class histogram of the labels the step received (steps batches an epoch), and per batch."""
    batches = [collections.Counter(map(int, line.split())) for line in open(path)]
    assert len(batches) == epochs * steps
    return [sum(batches[e * steps:(e + 1) * steps], collections.Counter()) for e in range(epochs)], batches


def as_list(counter, num_classes=10):
    return [counter[c] for c in range(num_classes)]


@pytest.mark.parametrize("run", [OVERSAMPLING, DRS], ids=["oversampling", "drs"])
def test_the_oversampler_drives_the_batches(run, trained):
    found, out = result(trained, run)
    epochs = found["args"]["epochs"]
    natural = found["train_class_counts"]
    steps = -(-sum(natural) // 64)
    per_epoch, _ = fed(out / "batches", steps, epochs)
    drawn = found["extra"]["sampled_class_counts"]
    assert epochs == (2 if run == DRS else 1)
    assert (drawn[0] == natural) == (run == DRS)  # DRS: a plain shuffle before its start epoch; RS re-samples
    for e in range(epochs):
        got = as_list(per_epoch[e])
        # what the sampler drew, plus the 14 indices that fill the last batch (242 images, 4 x 64 = 256 draws)
        assert all(g >= d for g, d in zip(got, drawn[e])) and sum(got) - sum(drawn[e]) == steps * 64 - sum(natural), \
            (got, drawn)
    assert as_list(per_epoch[-1])[-1] > 10 * natural[-1]  # the tail class is oversampled: ~24 draws of its 1 image


def test_the_undersampler_drives_the_batches(trained):
    found, out = result(trained, UNDERSAMPLING)
    n_min = min(found["train_class_counts"])
    steps = -(-10 * n_min // 64)  # 100 images an epoch: 2 batches of 64
    per_epoch, _ = fed(out / "batches", steps, 1)
    got = as_list(per_epoch[0])
    assert all(g >= n_min for g in got) and sum(got) == steps * 64, got  # n_min each, + the last batch's fill
    assert found["extra"]["sampled_class_counts"] == [[n_min] * 10]  # the JSON's record of the epoch's draw


def test_the_undersampler_draws_other_images_each_epoch(trained):
    """A new draw of n_min images per class every epoch from the run's generator (a loop that handed the sampler a
    generator of its own, re-seeded, would train on the same images every epoch)."""
    found, out = result(trained, UNDERSAMPLING_2)
    n_min = min(found["train_class_counts"])
    steps = -(-10 * n_min // 64)
    rows = [list(map(int, line.split())) for line in open(out / "batches.idx")]
    assert len(rows) == 2 * steps
    first, second = (sorted(sum(rows[e * steps:(e + 1) * steps], [])[:10 * n_min]) for e in range(2))
    assert first != second


@pytest.mark.parametrize("run", [PCNSGD, PCNSGD_O], ids=["pcnsgd", "pcnsgd_o"])
def test_pcnsgd_batches_have_the_per_class_sizes(run, trained):
    found, out = result(trained, run)
    sizes = found["extra"]["per_class_batch_sizes"]
    _, batches = fed(out / "batches", found["extra"]["steps_per_epoch"], 1)
    assert sizes == pcn.class_batch_sizes(found["train_class_counts"], 64, run[-1])
    assert (sizes == [6] * 10) == (run == PCNSGD_O)  # round(64 / 10) each, or split by the class counts
    assert all(as_list(b) == sizes for b in batches), (sizes, batches[:2])
    # the step is the normalized direction: its norm is not the plain gradient's (it is for --variant sgd_o)
    assert found["extra"]["direction_norm"][0] != pytest.approx(found["extra"]["plain_grad_norm"][0], rel=1e-2)
