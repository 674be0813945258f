"""`SMOKE=1 bash run_all.sh` end to end: every row of the table runs, writes its JSON, and the report covers all."""
import os
import re

from conftest import ROOT, read_results


def table_rows():
    text = open(os.path.join(ROOT, "run_all.sh")).read()
    block = text.split("ROWS=(")[1].split("\n)")[0]
    return [line.split("#")[0].strip().strip('"') for line in block.splitlines() if line.strip().startswith('"')]


def test_smoke_run_all_end_to_end(smoke_table):
    proc, out = smoke_table
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows()
    assert len(rows) >= 20
    results = read_results(out)
    assert len(results) == len(rows), sorted(results)           # one JSON per row (1 seed, 1 setting)
    assert all(r["status"] == "completed" for r in results.values())
    assert len({r["method"] for r in results.values()}) == len(rows)  # every row has its own method name
    assert re.search(rf"\[run_all\] {len(rows)}/{len(rows)} done, 0 failed", proc.stdout)
    assert re.search(r"eta \d+:\d\d:\d\d", proc.stdout)
    report = (out / "RESULTS.md").read_text()
    for r in results.values():
        assert f"| {r['method']} |" in report
    assert (out / "synthetic-exp-r10" / "per_class_acc.png").exists()
    assert (out / "synthetic-exp-r10" / "curves.png").exists()
