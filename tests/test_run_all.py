"""`SMOKE=1 bash run_all.sh` end to end: every row of the table runs, writes its JSON, and the report covers all."""
import re

from conftest import load_script, read_results

table_rows = load_script("studies/benchmark.py").table_rows  # the rows of run_all.sh, read from the script


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
    assert "(torch " in report and "; eager) |" in report and "--fast" not in report  # CPU runs: the eager path
    assert (out / "synthetic-exp-r10" / "per_class_acc.png").exists()
    assert (out / "synthetic-exp-r10" / "curves.png").exists()
