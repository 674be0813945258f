"""Each method file's header states its measured result; it must equal what the committed JSON says."""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch

import common
from conftest import ROOT

SCRIPTS = sorted(os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "methods", "*.py")))


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_result_matches_the_committed_json(script):
    stated = common.read_header_result(os.path.join(ROOT, "methods", script))
    expected = common.header_result(script)
    assert stated == expected, (f"methods/{script} says 'Result: {stated}' but results/ says '{expected}': "
                                "run `python common.py report` to regenerate the headers")


@pytest.mark.parametrize("script", SCRIPTS)
def test_header_has_the_fields_of_the_template(script):
    doc = open(os.path.join(ROOT, "methods", script)).read().split('"""')[1]
    for field in ("Paper:", "Code:", "vs ERM:", "Result:", "Run:"):
        assert f"\n{field}" in doc, f"methods/{script} header lacks '{field}'"


def test_report_writes_the_header_from_the_json(tmp_path):
    """A fake committed result of erm.py in the main setting: the generated header states it, to the digit."""
    import shutil
    setting = common.HEADER_SETTING
    data_dir = str(tmp_path / "cifar10-jpeg")
    args = {"dataset": "imagefolder", "data_dir": data_dir, "imbalance_type": "exp", "imbalance_ratio": 100.0,
            "method": "erm", "seed": 0}
    for seed, top1 in ((0, 70.0), (1, 72.0)):
        r = {"method": "erm", "status": "completed", "setting": setting, "args": {**args, "seed": seed},
             "command": "methods/erm.py --seed 1", "train_class_counts": [5000, 50], "final": {
                 "top1": top1, "per_class_acc": [top1, top1], "many": top1, "medium": None, "few": None, "ece": 1.0},
             "history": [], "wall_time_s": 40.0, "device_name": "NVIDIA H100", "torch_version": "2.11.0"}
        common.write_json(str(tmp_path / "results" / setting / "erm" / f"seed{seed}.json"), r)
    methods = tmp_path / "methods"
    methods.mkdir()
    shutil.copy(os.path.join(ROOT, "methods", "erm.py"), methods / "erm.py")
    expected = common.header_result("erm.py", str(tmp_path / "results"))
    assert expected.startswith("erm 71.00 ± 1.41 (n=2) top-1 %") and "NVIDIA H100, torch 2.11.0" in expected
    common.write_headers(str(tmp_path / "results"), str(methods))
    assert common.read_header_result(str(methods / "erm.py")) == expected
    text = (methods / "erm.py").read_text()
    assert text.count("Result:") == 1 and "\nRun:" in text and "not measured yet" not in text
    assert text.replace(text.split("Result:")[1].split("\nRun:")[0], "") == \
        open(os.path.join(ROOT, "methods", "erm.py")).read().replace(
            open(os.path.join(ROOT, "methods", "erm.py")).read().split("Result:")[1].split("\nRun:")[0], "")


def test_report_lists_methods_against_the_published_direction():
    """ERM 70 / 72 (paper 70.36): LDAM-DRW above it (paper +6.67), oversampling below it (paper +0.19: no direction),
    class weights below it by more than the noise (paper +2.01: opposite), focal within noise."""
    def row(method, tops):
        m, s = common.mean_std(tops)
        return {"n": len(tops), "top1": (m, s), "paper": common.paper_top1("cifar10-jpeg-exp-r100", method)}
    rows = {"erm": row("erm", [70.0, 72.0]), "ldam_drw": row("ldam_drw", [75.0, 76.0]),
            "oversampling": row("oversampling", [60.0, 61.0]), "class_weights": row("class_weights", [66.0, 67.0]),
            "focal": row("focal", [70.5, 72.5]), "vs": row("vs", [80.0])}
    rows["focal"]["paper"] = 75.0  # pretend a clear published gain, to see "within seed noise"
    lines = common.direction_lines(rows)
    table = {l.split(" | ")[0][2:]: l for l in lines if l.startswith("| ") and "---" not in l and "method" not in l}
    assert "reproduced" in table["ldam_drw"] and "+6.67" in table["ldam_drw"]
    assert "no difference" in table["oversampling"]
    assert "**opposite**" in table["class_weights"] and "within seed noise" in table["focal"]
    assert "vs" not in table  # no published number for VS in this setting
    assert lines[-1] == "Opposite to the published direction: class_weights."
    assert common.direction_lines({"ldam_drw": rows["ldam_drw"]}) == []  # no ERM row: nothing to compare
    # one seed has no std and no standard error: no "± 0.00", and the verdict says it rests on 1 seed
    assert common.mean_std([66.37]) == (66.37, None) and common._cell(common.mean_std([66.37])) == "66.37"
    # a value a run lacks (e.g. 'few' of a setting without such classes) is left out, not the whole cell
    assert common.mean_std([1.0, None, 3.0]) == (2.0, math.sqrt(2)) and common.mean_std([None]) == (None, None)
    rows["drs"], rows["class_weights"] = row("drs", [75.0]), row("class_weights", [60.0])
    table = {l.split(" | ")[0][2:]: l for l in common.direction_lines(rows) if l.startswith("| ")}
    assert "(1 seed) | same sign (1 seed: no error bar yet)" in table["drs"]
    assert "**opposite** (1 seed" in table["class_weights"]
    assert common.direction_lines(rows)[-1] == "Opposite to the published direction: class_weights (1 seed)."
    # the standard error of the difference of two means, each over its own seeds: ERM 70 / 72 (std sqrt 2, n 2) and
    # 72 / 73.5 / 75 (std 1.5, n 3) differ by 2.50 < 2 s.e. = 2 sqrt(2/2 + 2.25/3) = 2.65, inside 2 s.e. but not 1
    rows["drs"] = row("drs", [72.0, 73.5, 75.0])
    table = {l.split(" | ")[0][2:]: l for l in common.direction_lines(rows) if l.startswith("| ")}
    assert "| +2.50 (2.65) | within seed noise |" in table["drs"], table["drs"]
    # the one helper every comparison of two sets of seeds goes through (this table, benchmark --accuracy, the study)
    assert common.se_of_difference(2 ** 0.5, 2, 1.5, 3) == pytest.approx(1.75 ** 0.5)
    assert common.se_of_difference(None, 1, 1.5, 3) is None and common.se_of_difference(1.0, 2, None, 1) is None
    # the 0.5-point rule at its edge: a published +0.6 has a direction (CIFAR-10 R=10 LDAM: +0.57), +0.4 has none
    rows["drs"] = row("drs", [75.0, 76.0])
    for published, verdict in ((0.6, "reproduced"), (0.4, "the paper shows no difference")):
        rows["drs"]["paper"] = rows["erm"]["paper"] + published
        (line,) = [l for l in common.direction_lines(rows) if l.startswith("| drs |")]
        assert line.endswith(f"| {verdict} |"), line
    # both rules exactly at their edges ("under 0.5", "under 2 s.e."): a published +0.50 has a direction, and a
    # difference of exactly 2 s.e. is out of the noise (std 2 over 8 seeds on each side: s.e. exactly 1)
    edge = {"erm": {"n": 8, "top1": (70.0, 2.0), "paper": 70.0}, "drs": {"n": 8, "top1": (72.0, 2.0), "paper": 70.5}}
    assert common.se_of_difference(2.0, 8, 2.0, 8) == 1.0
    (line,) = [l for l in common.direction_lines(edge) if l.startswith("| drs |")]
    assert line == "| drs | +0.50 | +2.00 (2.00) | reproduced |", line
    # a row (or ERM) whose every seed diverged has no mean: it is left out, not compared as None
    rows["drs"] = {"n": 0, "top1": (None, None), "paper": 74.5}
    assert not any(l.startswith("| drs |") for l in common.direction_lines(rows))
    assert common.direction_lines({**rows, "erm": {"n": 0, "top1": (None, None), "paper": 70.36}}) == []


def test_paper_numbers_are_found_by_dataset_type_and_ratio():
    assert common.paper_top1("cifar10-exp-r100", "erm") == 70.36  # the original pixels' setting, and the JPEG one
    assert common.paper_top1("cifar10-jpeg-exp-r100", "ldam_drw") == 77.03
    assert common.paper_top1("cifar100-exp-r100", "erm") == 38.32  # not CIFAR-10's, though "cifar10" is in the name
    assert common.paper_top1("cifar10-step-r100", "drs") == 72.03
    assert common.paper_top1("cifar10-exp-r10", "ldam") == 86.96
    assert common.paper_top1("cifar10-exp-r50", "erm") is None and common.paper_top1("mydata-exp-r100", "erm") is None


def test_report_says_which_training_path_and_precision_made_the_numbers():
    def run(seed, fast_path, fp32=False, device="NVIDIA H100"):
        return {"method": "erm", "status": "completed", "setting": "cifar10-jpeg-exp-r100",
                "args": {"seed": seed, "fp32": fp32},
                "final": {"top1": 70.0, "many": 70.0, "medium": None, "few": None, "ece": 1.0}, "wall_time_s": 60.0,
                "device_name": device, "torch_version": "2.11.0", "fast_path": fast_path}
    graphed = {"eager_steps": 18, "graph_captures": 9, "graph_replays": 19382}
    rows = common.summarize([run(0, graphed), run(1, graphed)])["cifar10-jpeg-exp-r100"]
    assert rows["erm"]["paths"] == ["--fast bf16"]
    rows = common.summarize([run(0, graphed), run(1, None)])["cifar10-jpeg-exp-r100"]
    assert rows["erm"]["paths"] == ["--fast bf16", "eager bf16"]
    # --fp32 on CUDA, and every CPU run, trained in fp32 (a CPU run's args may say nothing of --fp32)
    rows = common.summarize([run(0, None, fp32=True), run(1, None, device="cpu")])["cifar10-jpeg-exp-r100"]
    assert rows["erm"]["paths"] == ["eager fp32"]
    # a row whose seeds ran with different numbers of runs beside them states the most (its slowest conditions)
    runs = [run(0, graphed), run(1, graphed)]
    runs[0]["runs_at_once"] = 4
    assert common.summarize(runs)["cifar10-jpeg-exp-r100"]["erm"]["at_once"] == 4


def test_the_report_table_from_fake_runs(tmp_path):
    """A results folder made up to pin each cell of the table: the rows best first, many / medium / few in their
    columns, n = the completed seeds only (a diverged seed is named, and where and by which code it ran does not
    count), a method with more seeds than ERM compared, a tie with ERM on one seed called no difference, no
    comparison where nothing was published, and "Made by" / "Reproduce" from the invocations that trained."""
    setting, results = common.HEADER_SETTING, tmp_path / "results"
    data_dir = str(tmp_path / "cifar10-jpeg")

    def put(method, seed, top1, status="completed", device="NVIDIA H100", code="a" * 64, at_once=2,
            script=None, where=setting, many=None, medium=None, few=None):
        args = ({"dataset": "imagefolder", "data_dir": data_dir, "imbalance_type": "exp", "imbalance_ratio": 100.0}
                if where == setting else {"dataset": "synthetic", "imbalance_type": "exp", "imbalance_ratio": 10.0})
        r = {"method": method, "status": status, "setting": where, "args": {**args, "method": method, "seed": seed},
             "command": f"methods/{script or method + '.py'} --seed {seed}", "train_class_counts": [5000, 500, 50, 5],
             "final": {"top1": top1, "per_class_acc": [top1] * 4, "many": top1 + 10 if many is None else many,
                       "medium": top1 - 10 if medium is None else medium, "few": top1 - 20 if few is None else few,
                       "ece": 5.0 + seed},
             "history": [], "wall_time_s": 100.0 + seed, "device_name": device, "torch_version": "2.11.0",
             "code_sha256": code, "runs_at_once": at_once, "mps": False}
        if status == "diverged":
            r["diverged_epoch"] = 3
        common.write_json(str(results / where / method / f"seed{seed}.json"), r)

    put("erm", 0, 70.0)
    put("ldam_drw", 0, 75.0)
    put("ldam_drw", 1, 77.0, many=90.0, medium=61.0, few=40.0)
    put("ldam_drw", 2, 10.0, status="diverged", device="cpu", code="b" * 64, at_once=8)  # none of it counts
    put("class_weights", 0, 70.0)  # exactly ERM's, one seed each
    put("erm_drw", 0, 72.0, script="ldam_drw.py", device="NVIDIA H200")  # a second row of ldam_drw.py
    put("erm", 0, 50.0, where="synthetic-exp-r10")
    put("ldam_drw", 0, 60.0, where="synthetic-exp-r10")
    sessions = [{"date_utc": "2026-12-01T10:00:00Z", "wall_s": 600, "runs_finished": 4, "failed": 0, "jobs": 4,
                 "fast": True, "mps": True, "settings": "exp:100", "seeds": "0 1 2"},
                {"date_utc": "2026-12-02T10:00:00Z", "wall_s": 5, "runs_finished": 0, "failed": 0, "jobs": 1,
                 "fast": False, "mps": False, "settings": "exp:10", "seeds": "0"}]  # trained nothing: not named
    (results / "run_all.jsonl").write_text("".join(json.dumps(s) + "\n" for s in sessions))
    text = open(common.report(str(results))).read()
    section = text.split(f"## {setting}")[1].split("## ")[0]
    rows = [l for l in section.splitlines() if l.startswith("| ") and not l.startswith(("| method", "|---"))]
    table = [l for l in rows if l.count(" | ") == 8]
    assert [l.split(" | ")[0] for l in table] == ["| ldam_drw", "| erm_drw", "| class_weights", "| erm"]  # best first
    assert table[0] == ("| ldam_drw | 76.00 ± 1.41 (2) seed 2: diverged in epoch 4 | 87.50 ± 3.54 | 63.00 ± 2.83 | "
                        "47.50 ± 10.61 | 5.50 ± 0.71 | 77.03 | 100 s (2 at once) | NVIDIA H100 (torch 2.11.0; "
                        "eager bf16) |"), table[0]
    assert table[3] == "| erm | 70.00 (1) | 80.00 | 60.00 | 50.00 | 5.00 | 70.36 | 100 s (2 at once) | NVIDIA H100 " \
                       "(torch 2.11.0; eager bf16) |", table[3]
    assert "Seeds trained by different versions" not in section  # the diverged seed's code is not the row's
    direction = {l.split(" | ")[0][2:]: l for l in rows if l.count(" | ") == 3}
    assert direction["ldam_drw"] == "| ldam_drw | +6.67 | +6.00 (1 seed) | same sign (1 seed: no error bar yet) |"
    assert direction["class_weights"].endswith("| +0.00 (1 seed) | no difference (1 seed: no error bar yet) |")
    assert "Opposite to the published direction: none." in section
    assert "Against ERM (synthetic-exp-r10)" not in text  # nothing published there: no comparison at all
    assert "Made by 1 invocation of run_all.sh that trained (4 runs completed, 0 failed, 0:10:00 of wall time in all; " \
           "JOBS=4, FAST=1, MPS=1), 2026-12-01 to 2026-12-02" in text
    assert "Reproduce: `FAST=1 MPS=1 JOBS=4 bash run_all.sh` with" in text
    header = common.header_result("ldam_drw.py", str(results))
    assert header.startswith("ldam_drw 76.00 ± 1.41 (n=2); erm_drw 72.00 (n=1) top-1 %"), header  # its rows, best first
    assert "; NVIDIA H100, NVIDIA H200, torch 2.11.0 (" in header and header.endswith(" Not measured yet: ldam."), header


def core_source(path):
    """A method file's core as a reader copies it: its imports but `common` (and the sys.path line before it), and
    every top-level statement between parse_args() and `if __name__ == "__main__":`."""
    import ast
    text = open(path).read()
    tree = ast.parse(text)
    names = [getattr(n, "name", None) for n in tree.body]
    start = names.index("parse_args") + 1
    end = next(i for i, n in enumerate(tree.body) if isinstance(n, ast.If) and "__main__" in ast.unparse(n.test))
    imports = [n for n in tree.body[:start] if isinstance(n, (ast.Import, ast.ImportFrom))
               and "common" not in [a.name for a in n.names]]
    return "\n\n".join(ast.get_source_segment(text, n) for n in imports + tree.body[start:end])


@pytest.mark.parametrize("script", SCRIPTS)
def test_the_core_copies_into_another_project_alone(script):
    """What a method file's core uses is the core's own, an import of the file's, or a builtin: nothing of common.py
    and nothing defined only for the command line (found on the symbol tables, so a free name anywhere counts)."""
    import builtins
    import symtable
    source = core_source(os.path.join(ROOT, "methods", script))
    top = symtable.symtable(source, script, "exec")
    defined = {s.get_name() for s in top.get_symbols() if s.is_assigned() or s.is_imported()}
    free, tables = set(), [top]
    while tables:
        table = tables.pop()
        tables += table.get_children()
        free |= {s.get_name() for s in table.get_symbols() if s.is_referenced() and (s.is_global() or table is top)}
    missing = sorted(free - defined - set(dir(builtins)))
    assert not missing, f"methods/{script}: the core uses {missing}, which it does not define or import"
    exec(compile(source, script, "exec"), {"__name__": "copied"})  # and it runs alone: its definitions only


def test_a_copied_method_imports_the_common_py_beside_it(tmp_path):
    """A copy of a method file and common.py in one folder of a project: the common.py beside it is imported, not
    another one the folder above holds (nor the working directory's)."""
    project = tmp_path / "project"
    project.mkdir()
    for path in ("common.py", "methods/focal.py"):
        shutil.copy(os.path.join(ROOT, path), project)
    (tmp_path / "common.py").write_text("raise ImportError('the wrong common.py')\n")
    code = "import sys; sys.path.insert(0, 'project'); import focal, common; print(common.__file__)"
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stdout.strip() == str(project / "common.py"), proc.stdout + proc.stderr


def _losses_with_cpu_tensors():
    """Every method core's loss, called with the CPU weights / margins / counts its own helpers return."""
    load = lambda name: common._method_module(f"{name}.py")  # noqa: E731
    cw, ldam, mm, sam, focal, cb = (load(n) for n in ("class_weights", "ldam_drw", "mm_drw", "sam", "focal",
                                                      "class_balanced"))
    la, cdt, vs = load("logit_adjust"), load("cdt"), load("vs_loss")
    counts = [50, 20, 5]
    w, m = cw.inverse_frequency_weights(counts), ldam.ldam_margins(counts, 0.5)
    return {
        "class_weights": lambda z, y: cw.weighted_cross_entropy(z, y, w),
        "ldam_drw": lambda z, y: ldam.ldam_loss(z, y, m, 30.0, ldam.drw_weights(counts, 0.9999, 1, 0)),
        "mm_drw": lambda z, y: mm.mm_loss(z, y, 1.5, 0.6, 30.0, w, class_margins=mm.ldam_margins(counts, 0.5)),
        "sam ldam": lambda z, y: sam.ldam_loss(z, y, sam.ldam_margins(counts, 0.5), 30.0,
                                               sam.drw_weights(counts, 0.9999, 1, 0)),
        "sam ce": lambda z, y: sam.ce_loss(z, y, w),
        "focal": lambda z, y: focal.focal_loss(z, y, 1.0, alpha=w),
        "class_balanced": lambda z, y: sum(cb.cb_loss(k, z, y, cb.class_balanced_weights(counts, 0.9999), 1.0)
                                           for k in ("softmax", "sigmoid", "focal")),
        "logit_adjust": lambda z, y: la.logit_adjusted_loss(z, y, la.log_prior(counts), 1.0),
        "cdt": lambda z, y: cdt.cdt_loss(z, y, counts, 0.3),
        "vs_loss": lambda z, y: vs.vs_loss(z, y, counts, 0.2, 1.0),
    }


@pytest.mark.parametrize("name", list(_losses_with_cpu_tensors()))
def test_a_copied_loss_takes_its_helpers_cpu_tensors_with_logits_on_another_device(name):
    """The weights, margins and counts a core's helpers return live on the CPU; its loss moves them to the logits'
    device, so a copier need not (the meta device stands in for a GPU: a CPU tensor there is an error)."""
    z, y = torch.randn(4, 3, device="meta"), torch.zeros(4, dtype=torch.long, device="meta")
    assert _losses_with_cpu_tensors()[name](z, y).device.type == "meta"
