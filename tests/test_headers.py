"""Each method file's header states its measured result; it must equal what the committed JSON says."""
import glob
import os

import pytest

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
