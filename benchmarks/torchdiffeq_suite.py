"""torchdiffeq's own test suite run against mali-func's drop-in ``odeint_adjoint`` and ``odeint``.

Runs each test file of a torchdiffeq checkout (its ``tests/`` folder; nothing of it is shipped
here) with pytest, three times, each in a fresh process with the tests folder as working directory:

* ``torchdiffeq``: the installed torchdiffeq, untouched (the baseline);
* ``odeint_adjoint``: ``torchdiffeq.odeint`` and ``torchdiffeq.odeint_adjoint`` both replaced by
  ``mali_func.odeint_adjoint`` (and ``odeint_event`` by mali-func's, where it has one);
* ``odeint``: both replaced by ``mali_func.odeint``.

The replacement is a shim package first on ``PYTHONPATH``: a ``torchdiffeq/__init__.py`` whose
``__path__`` also holds the real package (``torchdiffeq._impl`` stays the real one) and which
re-exports the real names before overriding the two entry points, next to a copy of ``mali_func``
made at the start (edits made while it runs don't mix in). A pytest plugin names failed
``subTest``s in the JUnit XML and counts passed ones. Units are subtests and tests without any,
each with a time limit ``--timeout`` (torchdiffeq's test functions loop over hundreds of
subtests); a file has ``--file-timeout``. Failures whose failing test line or message reads
torchdiffeq internals (``grad_fn`` attributes such as ``adjoint_options``, ``torchdiffeq._impl``)
or the adjoint method's own evaluation times (the backward pass calling the field at the final
time, where the adjoint ODE starts) are counted as "internals".

    OMP_NUM_THREADS=1 python benchmarks/torchdiffeq_suite.py --tests PATH/torchdiffeq/tests
    python benchmarks/torchdiffeq_suite.py --tests PATH --files api_tests norm_tests --quick

``--quick`` leaves out the slow odeint_tests; prints one line; the Markdown report goes to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib.metadata import version
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT_NAME = "torchdiffeq_suite.md"
MODES = ("torchdiffeq", "odeint_adjoint", "odeint")
SLOW_FILES = ("odeint_tests",)
INTERNALS = re.compile(
    r"\.grad_fn\b|next_functions|torchdiffeq\._impl|has no attribute '(adjoint_options|_impl)'"
    # test_odeint_perturb asserts that the backward pass calls the field at t = 1, where the
    # adjoint ODE starts; the exact gradient of euler/midpoint/heun3 steps has no stage there.
    r"|self\.assertIn\(1\., ts\)"
)
SUBTEST = re.compile(r"^-+ subtest -+\n(.*)$", re.MULTILINE)
NUMBER = re.compile(r"(?<![\w.])-?\d+(\.\d*)?(e[-+]?\d+)?(?![\w.])")

SHIM = '''"""torchdiffeq with odeint/odeint_adjoint taken from mali_func (torchdiffeq_suite.py)."""
import os as _os
__path__.append({real!r})
_init = _os.path.join({real!r}, "__init__.py")
with open(_init) as _file:
    exec(compile(_file.read(), _init, "exec"))
import mali_func as _mali
odeint = odeint_adjoint = getattr(_mali, _os.environ["TDQ_SUITE_MODE"])
odeint_event = getattr(_mali, "odeint_event", odeint_event)
'''

PLUGIN = '''"""torchdiffeq_suite.py's pytest plugin: subtest names and counts, a time limit."""
import os
import signal
import pytest

LIMIT = float(os.environ.get("TDQ_SUITE_TIMEOUT", "0"))
PASSED = {}

def _expire(signum, frame):
    raise TimeoutError(f"per-unit time limit of {LIMIT:g} s")

def _arm():
    if LIMIT > 0:
        signal.setitimer(signal.ITIMER_REAL, LIMIT)

@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item):
    signal.signal(signal.SIGALRM, _expire)
    _arm()
    try:
        return (yield)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_logreport(report):
    if getattr(report, "context", None) is None or report.when != "call":
        return
    _arm()
    if report.passed:
        PASSED[report.nodeid] = PASSED.get(report.nodeid, 0) + 1
    elif report.failed and hasattr(report.longrepr, "addsection"):
        report.longrepr.addsection("subtest", report._sub_test_description())

@pytest.hookimpl(tryfirst=True)
def pytest_runtest_teardown(item):
    item.user_properties.append(("subtests_passed", PASSED.pop(item.nodeid, 0)))
'''


@dataclass
class Failure:
    test: str
    reason: str
    internals: bool


@dataclass
class Result:
    passed: int = 0
    skipped: int = 0
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0
    note: str = ""

    @property
    def total(self) -> int:
        return self.passed + self.skipped + len(self.failures)


def reason_of(kind: str, message: str, text: str) -> str:
    """``Type: first line of the message``, numbers and addresses blanked, ~160 characters."""
    if not message or message == "collection failure" or message.startswith("failed on"):
        crash = [line[1:].strip() for line in text.splitlines() if line.startswith("E ")]
        message = next(iter(crash), message or kind)
    first = message.strip().splitlines()[0] if message.strip() else kind
    if not re.match(r"^[A-Za-z_][\w.]*(:|$)", first):
        first = f"{'Error' if kind == 'error' else 'AssertionError'}: {first}"
    first = NUMBER.sub("#", re.sub(r"0x[0-9a-fA-F]+", "0x…", first))
    return first if len(first) <= 160 else first[:159] + "…"


def parse_junit(path: Path, seconds: float = 0.0) -> Result:
    """Count passed, skipped and failed units of one JUnit XML; note each failure's reason."""
    result = Result(seconds=seconds)
    for case in ET.parse(path).getroot().iter("testcase"):
        cls, name = case.get("classname") or "", case.get("name")  # cls "": a collection error
        test = f"{cls.replace('.', '.py::', 1)}::{name}" if cls else f"{name}.py"
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        subtests_passed = int(props.get("subtests_passed") or 0)
        result.passed += subtests_passed
        had_subtests, own_outcome = subtests_passed > 0, False
        for child in case:
            if child.tag == "skipped":
                result.skipped, own_outcome = result.skipped + 1, True
            if child.tag not in ("failure", "error"):
                continue
            text, message = child.text or "", child.get("message") or ""
            sub = SUBTEST.search(text)
            had_subtests |= sub is not None
            own_outcome |= sub is None
            failing = next((ln for ln in text.splitlines() if ln.startswith(">")), "")
            result.failures.append(
                Failure(
                    test=f"{test} {sub.group(1)}" if sub else test,
                    reason=reason_of(child.tag, message, text),
                    internals=bool(INTERNALS.search(f"{message}\n{failing}")),
                )
            )
        result.passed += not had_subtests and not own_outcome
    return result


def write_helpers(tmp: Path) -> None:
    """``tmp/plugin``: pytest plugin, empty ini; ``tmp/shim``: torchdiffeq shim, mali_func copy."""
    spec = importlib.util.find_spec("torchdiffeq")
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("torchdiffeq is not installed: it is the baseline")
    real = next(iter(spec.submodule_search_locations))
    (tmp / "plugin").mkdir()
    (tmp / "plugin" / "tdq_suite_plugin.py").write_text(PLUGIN)
    (tmp / "plugin" / "pytest.ini").write_text("[pytest]\n")
    (tmp / "shim" / "torchdiffeq").mkdir(parents=True)
    (tmp / "shim" / "torchdiffeq" / "__init__.py").write_text(SHIM.format(real=real))
    ignore = shutil.ignore_patterns("__pycache__")  # a snapshot: later edits don't mix in
    shutil.copytree(ROOT / "mali_func", tmp / "shim" / "mali_func", ignore=ignore)


def run_file(tests: Path, name: str, mode: str, tmp: Path, args: argparse.Namespace) -> Result:
    """One test file in one mode, in a fresh pytest process."""
    plugin, shim = tmp / "plugin", tmp / "shim"
    xml, log = tmp / f"{name}.{mode}.xml", tmp / f"{name}.{mode}.log"
    paths = ([str(shim)] if mode != "torchdiffeq" else []) + [str(plugin), str(ROOT)]
    env = dict(os.environ, TDQ_SUITE_MODE=mode, TDQ_SUITE_TIMEOUT=str(args.timeout))
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.setdefault("OMP_NUM_THREADS", "1")
    command = [sys.executable, "-m", "pytest", f"{name}.py", "-q", "-p", "no:cacheprovider", "-p"]
    command += ["tdq_suite_plugin", f"--junitxml={xml}", "-c", str(plugin / "pytest.ini")]
    command += [f"--rootdir={tests}"]
    limit = args.file_timeout
    start = time.perf_counter()
    with log.open("w") as out:
        try:
            subprocess.run(command, cwd=tests, env=env, stdout=out, stderr=out, timeout=limit)
        except subprocess.TimeoutExpired:
            return Result(seconds=time.perf_counter() - start, note=f"killed after {limit} s")
    seconds = time.perf_counter() - start
    if not xml.exists():
        last = (log.read_text().strip().splitlines() or ["no output"])[-1]
        return Result(seconds=seconds, note=f"no JUnit XML: {last[:120]}")
    return parse_junit(xml, seconds)


def cell(result: Result) -> str:
    text = f"{result.passed}/{result.total} ({result.seconds:.0f} s)"
    return f"{text}, {result.note}" if result.note else text


def summed(results: dict[str, Result]) -> Result:
    total = Result()
    for r in results.values():
        total.passed, total.skipped = total.passed + r.passed, total.skipped + r.skipped
        total.failures += r.failures
        total.seconds += r.seconds
    return total


def reasons_section(mode: str, results: dict[str, Result]) -> list[str]:
    """Failure reasons of one mode, grouped, most frequent first."""
    groups: dict[str, list[Failure]] = defaultdict(list)
    for failure in summed(results).failures:
        groups[failure.reason].append(failure)
    if not groups:
        return []
    lines = [f"\n### Failures, `{mode}`\n", "| count | reason | internals | example tests |"]
    lines.append("|---:|---|:-:|---|")
    for reason, items in sorted(groups.items(), key=lambda kv: (-len(kv[1]), kv[0])):
        tests = list(dict.fromkeys(f.test for f in items))[:2]  # distinct ids
        examples = "<br>".join(f"`{test}`" for test in tests)
        internals = "yes" if any(f.internals for f in items) else ""
        cells = [str(len(items)), reason.replace("|", "\\|"), internals, examples]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def render(results: dict[str, dict[str, Result]], args: argparse.Namespace) -> str:
    """The Markdown report."""
    files = list(results[MODES[0]])
    threads = os.environ.get("OMP_NUM_THREADS", "1")  # the children's default is 1
    command = f"OMP_NUM_THREADS={threads} python " + " ".join(sys.argv)
    lines = ["# torchdiffeq's test suite against mali-func's drop-in\n", f"`{command}`\n"]
    lines.append(
        f"torch {version('torch')}, torchdiffeq {version('torchdiffeq')}, mali-func "
        f"{version('mali-func')}, tests {args.tests}, "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. Cells: passed/total units "
        "(subtests, tests without any, and failures outside a subtest), wall time; per-unit "
        f"limit {args.timeout} s; mali_func copied at the start.\n"
    )
    lines += ["| file | torchdiffeq | drop-in `odeint_adjoint` | drop-in `odeint` |"]
    lines += ["|---|---|---|---|"]
    for name in files:
        lines.append(f"| {name} | " + " | ".join(cell(results[m][name]) for m in MODES) + " |")
    totals = {m: summed(results[m]) for m in MODES}
    lines.append("| **total** | " + " | ".join(f"**{cell(totals[m])}**" for m in MODES) + " |")
    kept = [(t.passed, t.total - sum(f.internals for f in t.failures)) for t in totals.values()]
    rates = [f"{p}/{k} ({100 * p / max(k, 1):.1f} %)" for p, k in kept]
    lines.append("| excluding internals | " + " | ".join(rates) + " |")
    for m in MODES:
        lines += reasons_section(m, results[m])
    return "\n".join(lines) + "\n"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tests", type=Path, required=True, help="torchdiffeq's tests/ folder")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks/results" / OUT_NAME)
    parser.add_argument("--files", nargs="+", help="test files without .py (default: all)")
    parser.add_argument("--quick", action="store_true", help=f"leave out {', '.join(SLOW_FILES)}")
    parser.add_argument("--timeout", type=int, default=120, help="seconds per unit")
    parser.add_argument("--file-timeout", type=int, default=3600, help="seconds per file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    args.tests = args.tests.resolve()
    files = args.files or sorted(p.stem for p in args.tests.glob("*_tests.py"))
    if args.quick and not args.files:
        files = [name for name in files if name not in SLOW_FILES]
    results: dict[str, dict[str, Result]] = {m: {} for m in MODES}
    with tempfile.TemporaryDirectory(prefix="tdq_suite_") as tmp:
        write_helpers(Path(tmp))
        for name in files:
            for mode in MODES:
                results[mode][name] = run_file(args.tests, name, mode, Path(tmp), args)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, args))
    totals = {m: summed(results[m]) for m in MODES}
    summary = ", ".join(f"{m} {t.passed}/{t.total}" for m, t in totals.items())
    print(f"{args.out}: {summary}")


if __name__ == "__main__":
    main()
