"""README's commands, checked against the code instead of trusted: the quick start runs and CI calls its test
command, every `python <script>` command parses with that script's own parser, every variable set before
`bash run_all.sh` is one run_all.sh reads, and the study commands are the ones that made the committed studies."""
import glob
import os
import re
import shlex
import shutil

import torch

from conftest import ROOT, load_script, read_results, readme_block, run_forked

STUDY = "studies/oversampling_vs_weights.py"


def readme_commands(readme="README.md"):
    """The commands of a README's bash blocks (README.md unless named), one list of command lines per block in the
    order of the file: comments dropped, lines continued with a backslash joined, and a one-line
    `for v in a b; do cmd; done` loop written out as one command per value."""
    with open(os.path.join(ROOT, readme)) as f:
        text = f.read()
    blocks = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("#")[0].strip()
            loop = re.fullmatch(r"for (\w+) in ([^;]*); do (.*); done", line)
            if loop:
                commands += [loop.group(3).replace("$" + loop.group(1), v) for v in loop.group(2).split()]
            elif line:
                commands.append(line)
        blocks.append(commands)
    return blocks


def all_commands(readme="README.md"):
    """Every simple command of a README's bash blocks (a line split at its '&&'), as a list of words."""
    return [shlex.split(part) for block in readme_commands(readme) for line in block for part in line.split("&&")]


def python_commands(script=None, readmes=("README.md", "studies/README.md")):
    """(script, arguments) of every `python <file>.py ...` command of README.md and studies/README.md (only those of
    `script` if given)."""
    return [(w[1], w[2:]) for readme in readmes for w in all_commands(readme)
            if len(w) > 1 and w[0] == "python" and w[1].endswith(".py") and script in (None, w[1])]


def parse(module, script, args, data_dir):
    """module.parse_args(args) for README's command of `script`; the study's parser checks that its data folder
    exists, so it gets one that does (the data is not under test, and a clean checkout has none)."""
    return module.parse_args(args + (["--data-dir", str(data_dir)] if script == STUDY else []))


def quick_start_commands():
    """README's quick start (its first bash block), each command split into (install, run) at its '&&'."""
    return [[part.strip() for part in line.split("&&")] for line in readme_commands()[0]]


def test_readme_quick_start_is_two_commands_and_ci_runs_the_second():
    (install1, train), (install2, test) = quick_start_commands()
    assert install1 == install2 == "pip install -r requirements.txt"
    assert train.startswith("python methods/") and "--dataset synthetic" in train and "--device cpu" in train
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        ci = [line.strip() for line in f if not line.lstrip().startswith("#")]
    assert any(line.endswith("&& " + test) for line in ci), (test, ci)


def test_readme_quick_start_trains(tmp_path):
    """README's first command as written, but 2 epochs (not 30) and the results folder in tmp_path: its flags
    still exist and it ends with a result."""
    (_, train), _ = quick_start_commands()
    python, script, *args = shlex.split(train)
    assert python == "python" and args[args.index("--epochs") + 1] == "30" and "--out" in args
    args[args.index("--epochs") + 1] = "2"
    args[args.index("--out") + 1] = str(tmp_path)
    code, out, err = run_forked(script, *args)
    assert code == 0, err[-2000:]
    assert "final (epoch 2)" in out
    (r,) = read_results(tmp_path).values()
    assert r["status"] == "completed" and r["args"]["dataset"] == "synthetic" and r["args"]["imbalance_ratio"] == 10


def test_every_python_command_of_readme_parses(monkeypatch, tmp_path):
    """Each `python <script> <flags>` of README is accepted by that script's parse_args (a renamed or removed flag
    fails here). The GPU commands ask for CUDA, which parse_args checks: this machine is made to answer that it
    has one, since only the flags are under test."""
    commands = python_commands()
    modules = {s: load_script(s, "readme_" + re.sub(r"\W", "_", s)) for s, _ in commands}
    assert set(modules) >= {"methods/erm.py", STUDY, "studies/benchmark.py"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for script, args in commands:
        parse(modules[script], script, args, tmp_path)  # a SystemExit names the flag at fault


def test_every_variable_set_for_run_all_is_read_by_it():
    """`NAME=value ... bash run_all.sh` in README: run_all.sh reads each NAME (a misspelt one would be ignored)."""
    with open(os.path.join(ROOT, "run_all.sh")) as f:
        script = f.read()
    names = set()
    for words in all_commands():
        if words[-2:] == ["bash", "run_all.sh"]:
            names |= {w.split("=")[0] for w in words[:-2]}
    assert {"JOBS", "FAST", "MPS", "DEADLINE", "SETTINGS", "DATA_FLAGS", "ONLY"} <= names, names
    for name in names:
        assert re.search(r"\$\{?" + name + r"\b", script), f"run_all.sh never reads {name}"


def test_readme_commands_made_the_committed_studies(tmp_path):
    """Each `python studies/oversampling_vs_weights.py ... [--out results/X]` command of README.md and
    studies/README.md (no --out: results/study), read by the script's own parser, gives the arguments
    results/X/study.json.gz records (aside from the paths and the machine's own choices): the listed commands are the
    ones that made the numbers. And every committed study has its command."""
    study = load_script(STUDY, "readme_study")
    listed = {}
    for _, args in python_commands(STUDY):
        parsed = vars(parse(study, STUDY, args, tmp_path))
        if parsed["out"]:  # not --readme
            # where it ran, not what it measured: compared only where the command sets it (unset, the parser picks
            # what this machine has: --device auto is cpu here, cuda on a GPU, and --workers follows)
            skip = {"data_dir", "cache_dir", "out", "overwrite"} | {k for k in ("device", "workers", "threads")
                                                         if "--" + k not in args}
            listed[os.path.relpath(os.path.join(ROOT, parsed["out"]), ROOT)] = {
                k: v for k, v in parsed.items() if k not in skip}
    assert os.path.join("results", "study") in listed  # the full study, the default folder
    committed = sorted(os.path.relpath(os.path.dirname(p), ROOT)
                       for p in glob.glob(os.path.join(ROOT, "results", "*", "study.json.gz")))
    assert committed
    for d in committed:
        assert d in listed, f"neither README.md nor studies/README.md lists a command for {d}"
        recorded = study.read_study(os.path.join(ROOT, d, "study.json.gz"))["args"]
        differ = {k: (v, recorded.get(k)) for k, v in listed[d].items() if recorded.get(k) != v}
        assert not differ, f"README's command for {d} differs from what made it (README, recorded): {differ}"


def test_the_committed_tables_are_what_the_report_writes_from_the_committed_json(tmp_path, monkeypatch):
    """results/RESULTS.md, every other committed results page (results/<folder>/RESULTS.md) and README's results
    block are what `python common.py report` writes from the JSON files committed beside them: no number in them is
    typed or edited by hand, and none is left behind by a JSON changed since."""
    import common
    monkeypatch.chdir(ROOT)  # the runs' data folders are relative: as where README's commands run
    main = os.path.join(ROOT, "results")
    pages = sorted(glob.glob(os.path.join(main, "RESULTS.md")) + glob.glob(os.path.join(main, "*", "RESULTS.md")))
    assert os.path.join(main, "RESULTS.md") in pages and len(pages) >= 2
    for k, page in enumerate(pages):
        src, copy = os.path.dirname(page), tmp_path / str(k)
        read = glob.glob(os.path.join(src, "*", "*", "seed*.json")) + glob.glob(os.path.join(src, "run_all.jsonl"))
        for path in read:  # what the report reads
            (copy / os.path.relpath(path, src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, copy / os.path.relpath(path, src))
        common.report(str(copy))
        with open(page) as f:
            assert (copy / "RESULTS.md").read_text() == f.read(), f"{page} is not the report of its JSON files"
    # README's block: the main page's lines as update_readme puts them there
    blocks = []
    monkeypatch.setattr(common, "write_readme_block", lambda name, lines: blocks.append((name, lines)))
    made = tmp_path / str(pages.index(os.path.join(main, "RESULTS.md"))) / "RESULTS.md"
    common.update_readme(made.read_text().split("\n")[3:], main)
    (name, lines), = blocks
    assert name == "results" and readme_block("results") == "\n".join(lines).strip(), \
        "README's results block is not the report of results/"


def heading_anchors(path):
    """The anchors GitHub gives the headings of a Markdown page: of the heading's text as shown (a link's text, no
    emphasis marks, no closing #s) lowercased, every character but letters, digits, '-', '_' and spaces dropped,
    spaces as '-', a repeated one numbered (-1, -2, ...); not in fenced code."""
    found, seen, fenced = set(), {}, False
    with open(path) as f:
        for line in f:
            fenced ^= line.startswith("```")
            heading = None if fenced else re.match(r"#{1,6} (.*?)(\s+#+)?\s*$", line)
            if heading:
                text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading.group(1))  # a link: its text
                text = re.sub(r"(\*+|(?<!\w)_+|_+(?!\w))", "", text)  # emphasis marks (not snake_case)
                slug = re.sub(r"[^\w\- ]", "", text.lower()).replace(" ", "-")
                found.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
                seen[slug] = seen.get(slug, 0) + 1
    return found


def page_links(path):
    """(line number, target) of every link and image of a Markdown page outside fenced code, but web addresses."""
    links, fenced = [], False
    with open(path) as f:
        for n, line in enumerate(f, 1):
            fenced ^= line.startswith("```")
            if not fenced:
                links += [(n, t) for t in re.findall(r"\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)", line)
                          if not re.match(r"\w+:", t)]  # (not a web or mail address)
    return links


def test_heading_anchors_and_links_are_githubs(tmp_path):
    page = tmp_path / "page.md"
    page.write_text("## Speed: `--fast`\n## Oversampling or class weights in mini-batch SGD?\n"
                    "### _Emphasis_ and [a link](x.md) ##\n## class_weights_u\n## A\n## A\n"
                    "```bash\n# not a heading\n```\n"
                    "[t](x.md#a-1) [w](https://x.org/y) [m](mailto:a@b.c) [titled](y.md \"a title\") ![i](p.png)\n")
    assert heading_anchors(page) == {"speed---fast", "oversampling-or-class-weights-in-mini-batch-sgd",
                                     "emphasis-and-a-link", "class_weights_u", "a", "a-1"}
    assert page_links(page) == [(3, "x.md"), (10, "x.md#a-1"), (10, "y.md"), (10, "p.png")]


def test_every_link_of_the_committed_pages_leads_somewhere():
    """Each relative link and image of README.md, studies/README.md and every page in results/ (most of them
    generated, with links across pages) names a file that exists, and each #anchor a heading of its page."""
    pages = [os.path.join(ROOT, p) for p in ("README.md", os.path.join("studies", "README.md"))] + \
        glob.glob(os.path.join(ROOT, "results", "**", "*.md"), recursive=True)
    broken, checked = [], 0
    for page in pages:
        for n, target in page_links(page):
            path, _, anchor = target.partition("#")
            path = os.path.normpath(os.path.join(os.path.dirname(page), path)) if path else page
            checked += 1
            if not os.path.exists(path) or anchor and (not path.endswith(".md") or anchor not in heading_anchors(path)):
                broken.append(f"{os.path.relpath(page, ROOT)}:{n}: {target}")
    assert checked > 100 and not broken, broken
