"""Check every shell command in the repository's Markdown: ``python tests/doccheck.py FILE.md ...``.

A command is a line (backslash continuations joined) of a fenced ```bash or ```sh block. Each is checked for
what it names, without running it:

- ``make T [VAR=value]``: T is a target of the Makefile; a value that looks like a path exists;
- ``snakemake ...`` (also ``.venv/bin/snakemake``): it plans, in this process, with its own arguments and
  ``-n`` (``--report FILE`` is checked as the plan of the same config);
- ``dfr SUB ...`` and ``python -m dfr.MODULE ...``: the module's ``parser()`` accepts the arguments, and the
  inputs they name (not ``--out``/``--json``) exist or are outputs a repository config plans;
- ``scripts/X``: the script exists and is executable; ``python X.py``: X.py exists;
- a path an argument names: it exists in the repository, or it is under ``results/`` and some complete config
  in ``config/`` plans it (or a folder above it, or the marker of a folder a rule writes whole);
  ``../shared/`` paths are checked where that folder exists.

A command that cannot be checked carries ``# unchecked: <why>``; any other command is an error. Prints one
JSON object: ``{file: {"checked": n, "unchecked": [...], "problems": [...]}}``; exit status 1 when a problem
was found.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "workflow"))

FENCE = re.compile(r"^(\s*)```(\w*)\s*$")
SHELLS = {"bash", "sh", "shell", "console"}
UNCHECKED = re.compile(r"#\s*unchecked:\s*(.+)$")
OUTPUT_FLAGS = {"out", "json"}  # arguments a command writes, not reads
# a rule that writes a whole folder declares a file in it that marks it complete (dfr.planning.layout's "synthetic")
MARKERS = ("synthetic.json",)


def commands(text: str) -> list[tuple[int, str]]:
    """(line number, command) for every command of the fenced shell blocks."""
    out, lang, buf, start = [], None, "", 0
    for n, line in enumerate(text.splitlines(), 1):
        m = FENCE.match(line)
        if m:
            lang = None if lang is not None else (m.group(2) or "")
            continue
        if lang not in SHELLS or (not buf and not line.strip()):
            continue
        if not buf:
            start = n
        if line.rstrip().endswith("\\"):
            buf += line.rstrip()[:-1] + " "
            continue
        out.append((start, (buf + line).strip()))
        buf = ""
    return out


class Checker:
    def __init__(self, root: Path = ROOT):
        self.root = root
        self._planned: dict[tuple, bool] = {}
        self._configs = None

    # ---- the command kinds ----
    def check(self, command: str) -> tuple[str, list[str]]:
        """("checked" | "unchecked: why", problems)."""
        m = UNCHECKED.search(command)
        if m:
            return f"unchecked: {m.group(1).strip()}", []
        try:
            argv = shlex.split(command, comments=True)
        except ValueError as e:
            return "checked", [f"not a shell command ({e})"]
        while argv and re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", argv[0]):  # VAR=value prefixes
            argv = argv[1:]
        if not argv:
            return "checked", []
        prog = argv[0].removeprefix(".venv/bin/")
        if prog == "make":
            return "checked", self.make(argv[1:])
        if prog == "snakemake":
            return "checked", self.snakemake(argv[1:])
        if prog == "dfr":
            from dfr import cli

            return "checked", self.parsed(cli.parser(), argv[1:], "dfr")
        if prog in ("python", "python3") and argv[1:2] == ["-m"]:
            return "checked", self.module(argv[2], argv[3:])
        if prog in ("python", "python3") and argv[1:2] and argv[1].endswith(".py"):
            exists = (self.root / argv[1]).is_file()
            return "checked", [] if exists else [f"{argv[1]}: no such script in the repository"]
        if prog.startswith("scripts/"):
            p = self.root / prog
            if not p.is_file() or not os.access(p, os.X_OK):
                return "checked", [f"{prog}: no such executable script in the repository"]
            return "checked", []
        return "checked", [f"{argv[0]}: no check for this command; mark it '# unchecked: <why>'"]

    def make(self, args: list[str]) -> list[str]:
        text = (self.root / "Makefile").read_text()
        targets = set(re.findall(r"^([A-Za-z0-9_.-]+)\s*:(?!=)", text, re.M))
        problems = []
        for a in args:
            if "=" in a:
                var, value = a.split("=", 1)
                if not re.search(rf"^{re.escape(var)}\s*\?=", text, re.M):
                    problems.append(f"make: {var} is not a variable of the Makefile")
                if "/" in value and not (self.root / value).exists():
                    problems.append(f"make {var}={value}: no such file in the repository")
            elif a.startswith("-"):
                continue
            elif a not in targets:
                problems.append(f"make: no target {a!r} in the Makefile")
        return problems

    def snakemake(self, args: list[str]) -> list[str]:
        args = list(args)
        if "--report" in args:  # a report needs a finished run; its config must plan
            i = args.index("--report")
            del args[i:i + 2]
        args = [a for a in args if a not in ("-n", "--dry-run", "--dryrun")]
        ok, log = self.plan(tuple(args))
        return [] if ok else [f"snakemake {' '.join(args)}: does not plan: {log}"]

    def plan(self, args: tuple[str, ...]) -> tuple[bool, str]:
        """Dry-run Snakemake in this process (as its command line would), from the repository root."""
        if args in self._planned:
            return self._planned[args]
        from snakemake.cli import args_to_api, parse_args

        out, cwd = io.StringIO(), os.getcwd()
        os.chdir(self.root)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
                parser, parsed = parse_args(["-n", *args, "--quiet", "rules"])
                ok = bool(args_to_api(parsed, parser))
        except SystemExit as e:
            ok = e.code in (0, None)
        except Exception as e:  # noqa: BLE001 - a documented command that crashes Snakemake is a finding
            ok, out = False, io.StringIO(f"{type(e).__name__}: {e}")
        finally:
            os.chdir(cwd)
        lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
        res = (ok, " / ".join(lines[-3:])[:400])
        self._planned[args] = res
        return res

    def module(self, name: str, args: list[str]) -> list[str]:
        import importlib

        try:
            mod = importlib.import_module(name)
        except ImportError as e:
            return [f"python -m {name}: no such module ({e})"]
        if not hasattr(mod, "parser"):
            return [f"python -m {name}: it has no parser() to check the arguments against"]
        return self.parsed(mod.parser(), args, f"python -m {name}")

    def parsed(self, parser, args: list[str], what: str) -> list[str]:
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                ns = parser.parse_args(args)
        except SystemExit as e:
            if e.code in (0, None):  # --help
                return []
            return [f"{what} {' '.join(args)}: {err.getvalue().strip().splitlines()[-1]}"]
        problems = []
        for dest, value in vars(ns).items():
            if dest in OUTPUT_FLAGS:
                continue
            for v in value if isinstance(value, list) else [value]:
                if isinstance(v, str) and ("/" in v or v.endswith((".pt", ".yaml", ".json"))):
                    problems += self.path(v, what)
        return problems

    # ---- paths ----
    def path(self, p: str, what: str) -> list[str]:
        if p.startswith("../shared/") and not (self.root.parent / "shared").is_dir():
            return []  # the shared data are not on this machine: nothing to check against
        # results/ is checked against the plan even where a local run made it: a fresh clone has none
        if (self.root / p).exists() and not p.startswith("results/"):
            return []
        if p.startswith("results/"):
            for cfg in self.configs(p):
                parts = Path(p).parts
                for k in range(len(parts), 1, -1):  # the path, or a folder above it, planned
                    for target in (Path(*parts[:k]), *(Path(*parts[:k], m) for m in MARKERS)):
                        if self.plan((str(target), "--configfile", cfg))[0]:  # targets before --configfile
                            return []
            return [f"{what}: {p} is neither in the repository nor planned by any config in config/"]
        return [f"{what}: {p}: no such file or folder"]

    def configs(self, p: str) -> list[str]:
        """The complete configs that could plan a path under results/: for an experiment's folder, those of
        that experiment (or study); for a folder the experiments share (datasets, features, models...), those
        that hold the data set it names. Any other config plans none of it, so it is not tried (a path that
        nothing plans was tried against every config at every level: 120 plans)."""
        import yaml

        from dfr.planning import layout

        if self._configs is None:
            self._configs = []
            for f in sorted((self.root / "config").glob("*.yaml")):
                cfg = yaml.safe_load(f.read_text()) or {}
                if "datasets" in cfg:
                    self._configs.append((str(f.relative_to(self.root)), cfg.get("experiment") or "dfr",
                                          set(cfg["datasets"])))
            self._shared = {Path(v).parts[1] for v in layout.patterns("results").values()} - {"{experiment}"}
        parts = Path(p).parts + ("", "")
        if parts[1] in self._shared | {"logs", "benchmarks"}:
            return [c for c, _, ds in self._configs if not parts[2] or parts[2] in ds]
        return [c for c, experiment, _ in self._configs if experiment == parts[1]]

    def file(self, md: Path) -> dict:
        got = {"checked": 0, "unchecked": [], "problems": []}
        for n, cmd in commands(md.read_text()):
            status, problems = self.check(cmd)
            if status == "checked":
                got["checked"] += 1
            else:
                got["unchecked"].append(f"line {n}: {cmd} ({status})")
            got["problems"] += [f"{md.name} line {n}: {p}" for p in problems]
        return got


def main(argv: list[str]) -> int:
    checker = Checker()
    report = {f: checker.file(Path(f)) for f in argv}
    print(json.dumps(report, indent=1))
    return 1 if any(r["problems"] for r in report.values()) else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
