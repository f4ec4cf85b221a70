"""Run upstream test suites against kernel-connect and jupyter_client, and compare.

Three parts (see upstream/README.md), each run both ways in one invocation:

provisioner  jupyter_client's whole suite, without and with
             JUPYTER_DEFAULT_PROVISIONER_NAME=kernel-connect-provisioner.
nbclient     nbclient's suite on jupyter_client, then with every NotebookClient
             driving kernel-connect's AsyncKernelManager (plugins/kc_nbclient_shim.py).
imports      jupyter_client's tests of connect, session, localinterfaces, ssh,
             kernelmanager, multikernelmanager, client and restarter: as shipped,
             then with their ``jupyter_client`` imports rewritten to ``kernel_connect``.

The sdists come from PyPI (pip download) into upstream/.cache; the suites' test
requirements are installed into the running interpreter's environment (.venv).
A test that fails, errors or takes the interpreter down on either side is run
once more on both sides (libzmq occasionally aborts in nbclient's parallel
tests, with jupyter_client too); the second outcome counts. The exit status is 1
when kernel-connect's side does not do what jupyter_client's side does for a
test that passes there (unless upstream/exclusions.toml lists it, with a
reason), when a side collects no tests or cannot run, or when a part cannot run
(nbclient without kernel-connect's async manager is skipped locally and fails
under CI=true).

Usage: .venv/bin/python upstream/run.py [--part NAME ...] [--no-install]
"""

from __future__ import annotations

import argparse
import ast
import collections
import contextlib
import dataclasses
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import textwrap
import time
import tokenize
from collections.abc import Iterable
from importlib import metadata
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CACHE = HERE / ".cache"
SDISTS = CACHE / "sdists"
WORK = CACHE / "work"
LOGS = CACHE / "logs"
RESULTS = CACHE / "results"
EXCLUSIONS = HERE / "exclusions.toml"
PLUGINS = HERE / "plugins"

# The releases under test. nbclient 0.11.0 is the release that runs against
# jupyter_client 8 (shared/NOTES.md).
JUPYTER_CLIENT = "jupyter_client==8.10.*"
NBCLIENT = "nbclient==0.11.0"

# Test extras that do not take part in running the tests, left out on purpose.
NOT_NEEDED = {
    "coverage": "coverage measurement; the commands here do not measure coverage",
    "pytest-cov": "coverage measurement; the commands here do not measure coverage",
    "pre-commit": "git hooks for upstream's linters, not a test dependency",
}

# jupyter_client's tests run again with their imports rewritten (the imports part).
IMPORT_MODULES = [
    "connect",
    "session",
    "localinterfaces",
    "ssh",
    "kernelmanager",
    "multikernelmanager",
    "client",
    "restarter",
]

GOOD = {"passed", "xfailed"}  # outcomes kernel-connect must match when jupyter_client has them
BAD = {"failed", "error", "crashed"}  # outcomes that earn a second run
MAX_RESTARTS = 10  # pytest processes restarted after a crash, per side and run
SIDE_TIMEOUT = 45 * 60  # seconds for one pytest process, a guard against hangs


# --------------------------------------------------------------------- output


def say(text: str = "") -> None:
    print(text, flush=True)


def banner(text: str) -> None:
    say()
    say("=" * 78)
    say(text)
    say("=" * 78)


# ------------------------------------------------------------ sdists, install


def pip(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", *args], check=True)


def sdist_for(spec: str) -> Path:
    """The cached sdist for a requirement like ``name==1.2.*``, downloaded if missing."""
    name, _, version = spec.partition("==")
    pattern = re.compile(
        re.escape(name).replace("_", "[-_]")
        + r"-"
        + re.escape(version).replace(r"\*", r"[^-]*")
        + r"\.tar\.gz$",
        re.IGNORECASE,
    )

    def cached() -> list[Path]:
        found = [p for p in SDISTS.glob("*.tar.gz") if pattern.match(p.name)]
        return sorted(found, key=lambda p: p.stat().st_mtime)

    if not cached():
        SDISTS.mkdir(parents=True, exist_ok=True)
        say(f"downloading the sdist of {spec}")
        pip("download", "-q", "--no-deps", "--no-binary", ":all:", spec, "-d", str(SDISTS))
    found = cached()
    if not found:
        raise SystemExit(f"pip download left no sdist matching {spec} in {SDISTS}")
    return found[-1]


def extract(sdist: Path) -> Path:
    """A pristine copy of the sdist under .cache/work/src."""
    dest = WORK / "src"
    top = dest / sdist.name.removesuffix(".tar.gz")
    shutil.rmtree(top, ignore_errors=True)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdist) as archive:
        if hasattr(tarfile, "data_filter"):
            archive.extractall(dest, filter="data")
        else:  # pragma: no cover - Pythons without extraction filters
            archive.extractall(dest)  # noqa: S202 - an sdist pip downloaded
    if not top.is_dir():
        raise SystemExit(f"{sdist.name} did not unpack to {top.name}/")
    return top


def project(src: Path) -> dict[str, Any]:
    with open(src / "pyproject.toml", "rb") as f:
        data: dict[str, Any] = tomllib.load(f)
    return data


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_name(req: str) -> str:
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    return canonical(match.group(1)) if match else ""


def installed_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def install(sdists: dict[str, Path], sources: dict[str, Path], versions: dict[str, str]) -> None:
    """Installs the packages under test at their sdists' versions, and their test extras.

    Everything already installed is held at its version (a constraints file from
    ``pip freeze``), so the shared .venv only gains packages: the project's own
    test environment does not move under anyone.
    """
    banner("installing the upstream suites' test requirements into " + sys.prefix)
    nbclient_version = versions["nbclient"]
    if installed_version("nbclient") != nbclient_version:
        pip(
            "install", "-q", "--no-deps", str(sdists["nbclient"])
        )  # the code under test, from its sdist

    wanted = [f"jupyter_client=={versions['jupyter_client']}", f"nbclient=={nbclient_version}"]
    for name, src in sources.items():
        extras = project(src)["project"]["optional-dependencies"]["test"]
        for req in extras:
            reason = NOT_NEEDED.get(requirement_name(req))
            if reason:
                say(f"  not installed: {req} ({name}'s test extra) - {reason}")
            else:
                wanted.append(req)
    pinned = {requirement_name(req) for req in wanted if "==" in req}
    freeze = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "--disable-pip-version-check",
            "freeze",
            "--exclude-editable",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    constraints = [
        line
        for line in freeze.splitlines()
        if "==" in line and not line.startswith("#") and requirement_name(line) not in pinned
    ]
    CACHE.mkdir(parents=True, exist_ok=True)
    constraints_file = CACHE / "constraints.txt"
    constraints_file.write_text("\n".join(constraints) + "\n")
    say("  requirements: " + ", ".join(wanted))
    pip("install", "-q", "-c", str(constraints_file), *wanted)


def check_versions(versions: dict[str, str]) -> None:
    for name, version in versions.items():
        have = installed_version(name)
        if have != version:
            raise SystemExit(
                f"{name} {have} is installed, but the sdist is {version}: run without --no-install"
            )


# ------------------------------------------------------ test trees to run


def copy_tests(src: Path, dest: Path, modules: Iterable[str] | None = None) -> None:
    """pyproject.toml (pytest's configuration) and tests/, without the package itself.

    Leaving the package's source out makes ``import jupyter_client`` / ``import
    nbclient`` load the installed release (whose entry points the provisioner
    factory reads), not the unpacked tree that pytest would put on sys.path.
    """
    shutil.rmtree(dest, ignore_errors=True)
    (dest / "tests").mkdir(parents=True)
    shutil.copy2(src / "pyproject.toml", dest / "pyproject.toml")
    keep = None if modules is None else {f"test_{m}.py" for m in modules}
    for path in (src / "tests").iterdir():
        if path.is_dir():
            shutil.copytree(path, dest / "tests" / path.name)
        elif keep is None or not path.name.startswith("test_") or path.name in keep:
            shutil.copy2(path, dest / "tests" / path.name)


def rewrite_imports(source: str) -> tuple[str, list[str]]:
    """Every ``jupyter_client`` name token becomes ``kernel_connect``; strings stay.

    ``from jupyter_client.x import y``, ``import jupyter_client.x`` and any later
    ``jupyter_client.x`` attribute use all change alike; text inside strings
    (pytest plugin names, docstrings) does not. One exception: a name with a
    leading underscore is jupyter_client's private internal, which kernel_connect
    need not have, so its import stays on jupyter_client (split from the public
    names of the same statement). Rewritten, it would fail the whole module at
    collection and hide every other test in it; kept, only the tests that use it
    can fail, and those are the ones exclusions.toml may name.

    Returns the new source and the private imports kept.
    """
    lines = source.splitlines(keepends=True)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    hits = [t.start for t in tokens if t.type == tokenize.NAME and t.string == "jupyter_client"]
    for row, col in reversed(hits):
        line = lines[row - 1]
        lines[row - 1] = line[:col] + "kernel_connect" + line[col + len("jupyter_client") :]
    kept = []
    statements = [
        node
        for node in ast.walk(ast.parse("".join(lines)))
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("kernel_connect")
    ]
    for node in sorted(statements, key=lambda n: n.lineno, reverse=True):
        private = [a for a in node.names if a.name.startswith("_") and not a.name.startswith("__")]
        if not private:
            continue
        public = [a for a in node.names if a not in private]
        original = (node.module or "").replace("kernel_connect", "jupyter_client", 1)
        indent = lines[node.lineno - 1][: node.col_offset]
        split = [ast.ImportFrom(module=original, names=private, level=0)]
        if public:
            split.append(ast.ImportFrom(module=node.module, names=public, level=0))
        text = "".join(f"{indent}{ast.unparse(stmt)}\n" for stmt in split)
        end = node.end_lineno or node.lineno
        lines[node.lineno - 1 : end] = [text]
        kept += [f"{original}.{a.name}" for a in private]
    return "".join(lines), kept


def rewrite_tree(tests: Path) -> tuple[list[str], list[str]]:
    """Rewrites every .py file under tests; returns the files changed and private imports kept."""
    changed, kept = [], []
    for path in sorted(tests.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        new, private = rewrite_imports(text)
        if new != text:
            path.write_text(new, encoding="utf-8")
            changed.append(str(path.relative_to(tests.parent)))
        kept += [f"{path.relative_to(tests.parent)}: {name}" for name in private]
    return changed, kept


def kernel_connect_imports(tests: Path) -> list[tuple[str, str | None]]:
    """(module, name) for each ``kernel_connect`` import in a rewritten tree."""
    found: set[tuple[str, str | None]] = set()
    for path in sorted(tests.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith(
                "kernel_connect"
            ):
                found.update((node.module or "", alias.name) for alias in node.names)
            elif isinstance(node, ast.Import):
                found.update(
                    (alias.name, None)
                    for alias in node.names
                    if alias.name.startswith("kernel_connect")
                )
    return sorted(found, key=lambda item: (item[0], item[1] or ""))


_PROBE = textwrap.dedent(
    """
    import importlib, json, sys
    missing = []
    for module, name in json.load(sys.stdin):
        try:
            mod = importlib.import_module(module)
        except ImportError as exc:
            missing.append([module, name, f"{type(exc).__name__}: {exc}"])
            continue
        if name is not None and not hasattr(mod, name):
            try:
                importlib.import_module(f"{module}.{name}")
            except ImportError:
                missing.append([module, name, "no such name"])
    json.dump(missing, sys.stdout)
    """
)


def probe(names: list[tuple[str, str | None]]) -> list[tuple[str, str | None, str]]:
    """Which of these imports kernel_connect cannot satisfy (asked in a fresh interpreter)."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE],
        input=json.dumps(names),
        capture_output=True,
        text=True,
        check=True,
        cwd=CACHE,
    ).stdout
    return [tuple(item) for item in json.loads(out)]  # type: ignore[misc]


# --------------------------------------------------------------- running pytest


@dataclasses.dataclass
class Outcome:
    outcome: str
    message: str = ""
    first: str | None = None  # the first run's outcome when the test was run again
    first_message: str = ""
    launches: int = 0


@dataclasses.dataclass
class Side:
    name: str
    cwd: Path
    targets: list[str]
    env: dict[str, str]
    collected: list[str] = dataclasses.field(default_factory=list)
    collect_errors: dict[str, str] = dataclasses.field(default_factory=dict)
    outcomes: dict[str, Outcome] = dataclasses.field(default_factory=dict)
    problems: list[str] = dataclasses.field(default_factory=list)
    seconds: float = 0.0


def describe_exit(code: int | None) -> str:
    if code is None:
        return f"killed by the harness after {SIDE_TIMEOUT} s"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit status {code}"


def pytest_once(
    side: Side, targets: list[str], extra: list[str], tag: str
) -> tuple[int | None, list[dict[str, Any]]]:
    """One pytest process; returns its exit status (None: killed on timeout) and its events."""
    LOGS.mkdir(parents=True, exist_ok=True)
    events_file = LOGS / f"{tag}.jsonl"
    events_file.unlink(missing_ok=True)
    Path(f"{events_file}.failures.txt").unlink(missing_ok=True)
    args_file = LOGS / f"{tag}.args"
    args_file.write_text("".join(t + "\n" for t in targets))
    # A port table of this run's own: the suites reserve tens of thousands of
    # ports (test_ssh's 4,096 x select_random_ports(10) leases fill a whole table
    # for 120 s), which must not starve other users of the host's shared table.
    table = LOGS / f"{tag}.ports"
    table.unlink(missing_ok=True)
    env = dict(
        side.env, KC_UPSTREAM_OUTCOMES=str(events_file), KERNEL_CONNECT_PORT_TABLE=str(table)
    )
    cmd = [sys.executable, "-m", "pytest", *extra, f"@{args_file}"]
    with open(LOGS / f"{tag}.log", "w") as log:
        log.write("$ " + " ".join(cmd) + f"\n(cwd {side.cwd})\n\n")
        log.flush()
        proc = subprocess.Popen(
            cmd, cwd=side.cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            code: int | None = proc.wait(timeout=SIDE_TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            code = None
    table.unlink(missing_ok=True)
    events = []
    if events_file.exists():
        for line in events_file.read_text().splitlines():
            with contextlib.suppress(json.JSONDecodeError):  # a line cut short by a crash
                events.append(json.loads(line))
    return code, events


def run_pytest(
    side: Side, targets: list[str], extra: list[str], tag: str
) -> tuple[dict[str, Outcome], list[str]]:
    """Runs targets to the end, restarting pytest after a crash with the tests not yet run.

    Returns the outcomes and the node ids collected by the first process.
    """
    outcomes: dict[str, Outcome] = {}
    collected: list[str] = []
    pending = targets
    for attempt in range(MAX_RESTARTS + 1):
        code, events = pytest_once(side, pending, extra, f"{tag}.{attempt}")
        started: list[str] = []
        this_collection: list[str] = []
        for event in events:
            kind = event["event"]
            if kind == "collected":
                this_collection = event["nodeids"]
            elif kind == "collect_error":
                side.collect_errors[event["nodeid"]] = event["message"]
            elif kind == "start":
                started.append(event["nodeid"])
            elif kind == "finish":
                outcomes[event["nodeid"]] = Outcome(
                    event["outcome"],
                    event["message"],
                    launches=event.get("provisioner_launches", 0),
                )
        if attempt == 0:
            collected = this_collection
        unfinished = [n for n in started if n not in outcomes]
        if code == 5:
            side.problems.append(f"{tag}: pytest collected no tests (exit status 5)")
            break
        if not unfinished and code in (0, 1):
            break
        if not unfinished:
            side.problems.append(
                f"{tag}: pytest ended with {describe_exit(code)} (see {tag}.{attempt}.log)"
            )
            break
        for nodeid in unfinished:
            outcomes[nodeid] = Outcome(
                "crashed", f"pytest process ended in this test: {describe_exit(code)}"
            )
        pending = [n for n in this_collection if n not in outcomes]
        if not pending:
            break
        say(
            f"    {side.name}: pytest ended in {unfinished[-1]} ({describe_exit(code)}); "
            f"restarting with the {len(pending)} tests not yet run"
        )
    else:
        side.problems.append(f"{tag}: more than {MAX_RESTARTS} crashes; gave up")
    return outcomes, collected


def counts(outcomes: Iterable[Outcome]) -> str:
    tally = collections.Counter(o.outcome for o in outcomes)
    order = ["passed", "failed", "error", "crashed", "skipped", "xfailed", "xpassed"]
    return ", ".join(f"{tally[k]} {k}" for k in order if tally[k]) or "no tests"


def run_side(side: Side, extra: list[str], tag: str) -> None:
    say(f"  {side.name}: pytest {' '.join(side.targets)}   (cwd {side.cwd.relative_to(ROOT)})")
    start = time.monotonic()
    side.outcomes, side.collected = run_pytest(side, side.targets, extra, tag)
    side.seconds = time.monotonic() - start
    if not side.collected and not side.problems:
        side.problems.append(f"{tag}: no tests collected")
    say(
        f"    {side.name}: {len(side.collected)} collected; {counts(side.outcomes.values())}"
        f"  [{side.seconds:.0f} s]"
    )


def rerun(sides: list[Side], extra: list[str], tag: str) -> float:
    """Runs once more, on both sides, every test that failed, errored or crashed on either."""
    again = sorted({n for s in sides for n, o in s.outcomes.items() if o.outcome in BAD})
    if not again:
        return 0.0
    say(f"  running {len(again)} test(s) that failed on either side once more, on both sides")
    start = time.monotonic()
    for side in sides:
        targets = [n for n in again if n in side.outcomes]
        if not targets:
            continue
        outcomes, _ = run_pytest(side, targets, extra, f"{tag}-{side.name}-rerun")
        for nodeid in targets:
            first = side.outcomes[nodeid]
            second = outcomes.get(
                nodeid, Outcome("error", "not run again: the rerun did not reach it")
            )
            second.first, second.first_message = first.outcome, first.message
            second.launches += first.launches
            side.outcomes[nodeid] = second
    seconds = time.monotonic() - start
    for side in sides:
        say(f"    after the second run, {side.name}: {counts(side.outcomes.values())}")
    return seconds


# -------------------------------------------------------------- comparison


@dataclasses.dataclass
class Row:
    nodeid: str
    jc: str
    kc: str
    verdict: str  # "same" | "REGRESSION" | "excluded" | "differs"
    cause: str = ""  # one line: why kernel-connect's side differs (or the exclusion's reason)


def shown(outcome: Outcome | None) -> str:
    if outcome is None:
        return "not collected"
    if outcome.first and outcome.first != outcome.outcome:
        return f"{outcome.first}, then {outcome.outcome}"
    if outcome.first:
        return f"{outcome.outcome} (twice)"
    return outcome.outcome


def collect_error(side: Side, nodeid: str) -> str:
    """The collection error of the file (or directory) that should have held nodeid."""
    path = nodeid.split("::", 1)[0]
    for where, message in side.collect_errors.items():
        if where == path or path.startswith(where.rstrip("/") + "/"):
            return f"collection error: {message.removeprefix('E ').strip()}"
    return "not collected"


def compare(jc: Side, kc: Side, excluded: dict[str, str]) -> list[Row]:
    order = list(dict.fromkeys([*jc.collected, *jc.outcomes, *kc.collected, *kc.outcomes]))
    rows = []
    for nodeid in order:
        a, b = jc.outcomes.get(nodeid), kc.outcomes.get(nodeid)
        a_out = a.outcome if a else "missing"
        b_out = b.outcome if b else "missing"
        if a_out == b_out:
            verdict = "same"
            cause = "in exclusions.toml, but no longer differs" if nodeid in excluded else ""
        else:
            verdict = "differs"
            if a_out in GOOD:
                verdict = "excluded" if nodeid in excluded else "REGRESSION"
            # the side that did not pass says why
            side, outcome = (kc, b) if b_out != "passed" else (jc, a)
            cause = outcome.message if outcome else collect_error(side, nodeid)
            if nodeid in excluded:
                cause = f"excluded: {excluded[nodeid]} ({cause})"
        rows.append(Row(nodeid, shown(a), shown(b), verdict, cause))
    return rows


def grouped(rows: list[Row]) -> list[str]:
    """One line per differing test; tests lost to one collection error share a line."""
    lines = []
    lost: dict[tuple[str, str, str], int] = collections.Counter()
    for row in rows:
        if row.verdict == "same":
            continue
        if row.kc == "not collected" and row.verdict == "REGRESSION":
            lost[(row.verdict, row.nodeid.split("::", 1)[0], row.cause)] += 1
        else:
            lines.append(f"{row.verdict}: {row.nodeid}: {row.jc} -> {row.kc}: {row.cause}")
    for (verdict, path, cause), n in lost.items():
        lines.append(f"{verdict}: {n} tests of {path}, not collected: {cause}")
    return lines


def table(rows: list[Row], extra: dict[str, str] | None = None) -> str:
    heads = ["test", "jupyter_client", "kernel-connect", "verdict", "cause"]
    if extra is not None:
        heads.append("kernel-connect side drove")
    body = []
    for row in rows:
        cells = [row.nodeid, row.jc, row.kc, row.verdict, row.cause]
        if extra is not None:
            cells.append(extra.get(row.nodeid, ""))
        body.append(cells)
    caps = [110, 30, 30, 10, 120, 90]
    widths = [
        min(caps[i], max(len(h), *(len(r[i]) for r in body)) if body else len(h))
        for i, h in enumerate(heads)
    ]

    def fmt(cells: list[str]) -> str:
        return "  ".join(
            (c if len(c) <= w else c[: w - 1] + "…").ljust(w)
            for c, w in zip(cells, widths, strict=True)
        ).rstrip()

    lines = [fmt(heads), fmt(["-" * w for w in widths])]
    lines += [fmt(cells) for cells in body]
    return "\n".join(lines)


# ------------------------------------------------------------------ the parts


@dataclasses.dataclass
class PartResult:
    name: str
    ok: bool
    summary: list[str]
    seconds: float
    skipped: str = ""


def base_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("JUPYTER_DEFAULT_PROVISIONER_NAME", None)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env["PYTHONPATH"] = str(PLUGINS)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env


def has_pytest_asyncio() -> bool:
    return installed_version("pytest-asyncio") is not None


def common_args() -> list[str]:
    return [
        "-p", "kc_upstream_outcomes",
        "-p", "no:cacheprovider",
        "--color=no",
        "--continue-on-collection-errors",
    ]  # fmt: skip


def finish_part(
    name: str,
    jc: Side,
    kc: Side,
    excluded: dict[str, str],
    started: float,
    rerun_seconds: float,
    drove: dict[str, str] | None = None,
    checks: list[str] | None = None,
) -> PartResult:
    rows = compare(jc, kc, excluded)
    text = table(rows, drove)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.txt").write_text(text + "\n")
    (RESULTS / f"{name}.json").write_text(
        json.dumps([dataclasses.asdict(r) for r in rows], indent=1) + "\n"
    )
    say()
    say(text)
    seconds = time.monotonic() - started
    regressions = [r for r in rows if r.verdict == "REGRESSION"]
    summary = [
        f"jupyter_client side: {len(jc.collected)} collected; {counts(jc.outcomes.values())}"
        f" [{jc.seconds:.0f} s]",
        f"kernel-connect side: {len(kc.collected)} collected; {counts(kc.outcomes.values())}"
        f" [{kc.seconds:.0f} s]",
        f"second runs: {rerun_seconds:.0f} s; part total: {seconds:.0f} s",
    ]
    for side in (jc, kc):
        summary += [
            f"{side.name} collection error in {k}: {v}" for k, v in side.collect_errors.items()
        ]
    summary += grouped(rows)
    # A second run can hide an order-dependent failure (one test's leftovers failing the
    # next): kernel-connect's first-run-only failures are named, though they do not fail.
    summary += [
        f"kernel-connect side failed only on the first run: {n}: {o.first}: {o.first_message}"
        for n, o in kc.outcomes.items()
        if o.first in BAD and o.outcome in GOOD and jc.outcomes.get(n, o).first in GOOD | {None}
    ]
    summary += [f"note: {r.nodeid}: {r.cause}" for r in rows if r.verdict == "same" and r.cause]
    summary += [
        f"note: exclusions.toml names {n}, which jupyter_client's side did not run"
        for n in excluded
        if n not in jc.outcomes
    ]
    summary += checks or []
    problems = jc.problems + kc.problems
    summary += [f"PROBLEM: {p}" for p in problems]
    ok = not regressions and not problems and not any(c.startswith("PROBLEM") for c in checks or [])
    return PartResult(name, ok, summary, seconds)


def part_provisioner(sources: dict[str, Path], excluded: dict[str, str]) -> PartResult:
    banner(
        "provisioner: jupyter_client 8.10's whole suite, without and with "
        "JUPYTER_DEFAULT_PROVISIONER_NAME=kernel-connect-provisioner"
    )
    started = time.monotonic()
    where = WORK / "jupyter_client"
    copy_tests(sources["jupyter_client"], where)
    extra = common_args() + (["-p", "no:asyncio"] if has_pytest_asyncio() else [])
    jc = Side("jupyter_client", where, ["tests"], base_env())
    kc_env = dict(base_env(), JUPYTER_DEFAULT_PROVISIONER_NAME="kernel-connect-provisioner")
    kc_env["KC_UPSTREAM_COUNT_PROVISIONER"] = "1"
    kc = Side("kernel-connect", where, ["tests"], kc_env)
    run_side(jc, extra, "provisioner-jupyter_client")
    run_side(kc, extra, "provisioner-kernel-connect")
    rerun_seconds = rerun([jc, kc], extra, "provisioner")
    launches = sum(o.launches for o in kc.outcomes.values())
    tests = sum(1 for o in kc.outcomes.values() if o.launches)
    checks = [f"kernels launched through kernel-connect-provisioner: {launches}, in {tests} tests"]
    if not launches:
        checks.append("PROBLEM: no kernel was launched through kernel-connect-provisioner")
    return finish_part("provisioner", jc, kc, excluded, started, rerun_seconds, checks=checks)


def async_stack_missing() -> str:
    missing = probe(
        [("kernel_connect", "AsyncKernelManager"), ("kernel_connect", "AsyncKernelClient")]
    )
    return ", ".join(f"{m}.{n}" for m, n, _ in missing)


def part_nbclient(sources: dict[str, Path], excluded: dict[str, str]) -> PartResult:
    banner(
        "nbclient: nbclient 0.11's suite on jupyter_client, then on kernel-connect's "
        "AsyncKernelManager/AsyncKernelClient"
    )
    started = time.monotonic()
    manager = os.environ.get("KC_NBCLIENT_MANAGER")
    missing = "" if manager else async_stack_missing()
    if missing:
        reason = (
            f"SKIPPED: kernel-connect has no {missing} yet, so no NotebookClient can drive "
            "kernel-connect's async stack; this part runs once they exist"
        )
        say(reason)
        return PartResult("nbclient", False, [reason], time.monotonic() - started, skipped=reason)
    where = WORK / "nbclient"
    copy_tests(sources["nbclient"], where)
    extra = [
        *common_args(),
        "-p", "kc_nbclient_shim",
        "-o", "asyncio_default_fixture_loop_scope=function",
        "--timeout=300",
    ]  # fmt: skip
    records = {
        name: LOGS / f"nbclient-{name}.drove.jsonl" for name in ("jupyter_client", "kernel-connect")
    }
    for path in records.values():
        path.unlink(missing_ok=True)
    jc = Side(
        "jupyter_client",
        where,
        ["tests"],
        dict(
            base_env(),
            KC_NBCLIENT_SHIM="observe",
            KC_NBCLIENT_RECORD=str(records["jupyter_client"]),
        ),
    )
    kc = Side(
        "kernel-connect",
        where,
        ["tests"],
        dict(
            base_env(),
            KC_NBCLIENT_SHIM="replace",
            KC_NBCLIENT_RECORD=str(records["kernel-connect"]),
        ),
    )
    run_side(jc, extra, "nbclient-jupyter_client")
    run_side(kc, extra, "nbclient-kernel-connect")
    rerun_seconds = rerun([jc, kc], extra, "nbclient")

    drove: dict[str, set[str]] = collections.defaultdict(set)
    if records["kernel-connect"].exists():
        for line in records["kernel-connect"].read_text().splitlines():
            rec = json.loads(line)
            drove[rec["test"]].add(f"{rec['manager']} / {rec['client']}")
    shown_drove = {k: "; ".join(sorted(v)) for k, v in drove.items()}
    on_kc = sorted(t for t, v in drove.items() if all(d.startswith("kernel_connect.") for d in v))
    on_jc = sorted(
        t for t, v in drove.items() if any(not d.startswith("kernel_connect.") for d in v)
    )
    checks = [f"kernel-connect side: {len(on_kc)} tests ran on kernel-connect's manager and client"]
    checks += [
        f"ran on jupyter_client (the test's own manager): {t}: {shown_drove[t]}" for t in on_jc
    ]
    default = "jupyter_client.manager.AsyncKernelManager /"
    if any(d.startswith(default) for v in drove.values() for d in v):
        checks.append(
            "PROBLEM: the shim let nbclient make jupyter_client's default AsyncKernelManager"
        )
    if not on_kc:
        checks.append("PROBLEM: no notebook ran on kernel-connect's manager")
    return finish_part("nbclient", jc, kc, excluded, started, rerun_seconds, shown_drove, checks)


def part_imports(sources: dict[str, Path], excluded: dict[str, str]) -> PartResult:
    banner(
        "imports: jupyter_client 8.10's tests of "
        + ", ".join(IMPORT_MODULES)
        + ", with jupyter_client imports rewritten to kernel_connect"
    )
    started = time.monotonic()
    files = [f"tests/test_{m}.py" for m in IMPORT_MODULES]
    original = WORK / "jupyter_client"
    copy_tests(sources["jupyter_client"], original)
    rewritten = WORK / "jupyter_client-rewritten"
    copy_tests(sources["jupyter_client"], rewritten, IMPORT_MODULES)
    changed, kept = rewrite_tree(rewritten / "tests")
    say("  rewritten: " + ", ".join(changed))
    for line in kept:
        say(f"  private name, still imported from jupyter_client: {line}")
    missing = probe(kernel_connect_imports(rewritten / "tests"))
    checks = [
        f"import kernel_connect cannot satisfy: {m}{'.' + n if n else ''} ({why})"
        for m, n, why in missing
    ]
    for line in checks:
        say("  " + line)
    extra = common_args() + (["-p", "no:asyncio"] if has_pytest_asyncio() else [])
    jc = Side("jupyter_client", original, files, base_env())
    kc = Side("kernel-connect", rewritten, files, base_env())
    run_side(jc, extra, "imports-jupyter_client")
    run_side(kc, extra, "imports-kernel-connect")
    rerun_seconds = rerun([jc, kc], extra, "imports")
    return finish_part("imports", jc, kc, excluded, started, rerun_seconds, checks=checks)


PARTS = {"provisioner": part_provisioner, "nbclient": part_nbclient, "imports": part_imports}


def load_exclusions() -> dict[str, dict[str, str]]:
    with open(EXCLUSIONS, "rb") as f:
        data = tomllib.load(f)
    for part, entries in data.items():
        if part not in PARTS or not isinstance(entries, dict):
            raise SystemExit(f"{EXCLUSIONS.name}: unknown section [{part}]")
        for nodeid, reason in entries.items():
            if not isinstance(reason, str) or not reason.strip():
                raise SystemExit(f"{EXCLUSIONS.name}: {nodeid} needs a reason")
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", action="append", choices=list(PARTS), help="run only this part (repeatable)"
    )
    parser.add_argument(
        "--no-install", action="store_true", help="do not pip install the test requirements"
    )
    args = parser.parse_args(argv)
    parts = args.part or list(PARTS)
    exclusions = load_exclusions()

    started = time.monotonic()
    sdists = {"jupyter_client": sdist_for(JUPYTER_CLIENT), "nbclient": sdist_for(NBCLIENT)}
    sources = {name: extract(path) for name, path in sdists.items()}
    versions = {name: str(project_version(src)) for name, src in sources.items()}
    say("sdists: " + ", ".join(p.name for p in sdists.values()))
    if not args.no_install:
        install(sdists, sources, versions)
    check_versions(versions)

    results = [PARTS[name](sources, exclusions.get(name, {})) for name in parts]

    banner("summary")
    failed = False
    for result in results:
        in_ci = os.environ.get("CI", "").lower() == "true"
        ok = result.ok or (bool(result.skipped) and not in_ci)
        failed |= not ok
        state = "skipped" if result.skipped else "ok" if ok else "FAILED"
        if result.skipped and in_ci:
            state = "FAILED (skipped, and CI=true)"
        say(f"{result.name}: {state}  [{result.seconds:.0f} s]")
        for line in result.summary:
            say("  " + line)
    say(
        f"total: {time.monotonic() - started:.0f} s; tables in {RESULTS.relative_to(ROOT)}/, "
        f"pytest logs in {LOGS.relative_to(ROOT)}/"
    )
    return 1 if failed else 0


def project_version(src: Path) -> str:
    """The sdist's version, from its PKG-INFO (hatch's dynamic versions are not in pyproject)."""
    for line in (src / "PKG-INFO").read_text(encoding="utf-8").splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    raise SystemExit(f"{src.name}/PKG-INFO names no version")


if __name__ == "__main__":
    sys.exit(main())
