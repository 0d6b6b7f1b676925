"""Reproduce every table of the project's results in one command, and write them into the README.

    python benchmarks/run_all.py                  # every benchmarks/bench_*.py, then README.md
    python benchmarks/run_all.py --only fusion    # just bench_fusion.py (others keep their last tables)
    python benchmarks/run_all.py --quick          # ONNXOPT_BENCH_QUICK=1: fewer runs, a smoke test
    python benchmarks/run_all.py --collect        # run nothing; rebuild the README from results/*.md

The contract for a benchmark script `bench_NAME.py`: it runs from the repository root with no
arguments, measures onnxopt side by side with the peer tools in that one run, writes its tables
as Markdown to `benchmarks/results/NAME.md`, and exits 0. It may read ONNXOPT_BENCH_QUICK.

Each script runs in its own process, one after another (never two at once: they would steal
each other's cores); its output goes to `benchmarks/results/NAME.log`. The README gets the machine
this ran on, a status line per script, and every results file, between the results markers.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
RESULTS = HERE / "results"
README = HERE / "README.md"
BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"


def _results_time(path: Path) -> dt.datetime:
    """When a results file was written: its last commit's time if the file is committed unchanged (a
    fresh clone's files all carry the checkout time), else its modification time."""
    try:
        dirty = subprocess.run(["git", "status", "--porcelain", "--", str(path)], capture_output=True, text=True, cwd=path.parent, check=True).stdout.strip()
        stamp = subprocess.run(["git", "log", "-1", "--format=%ct", "--", str(path)], capture_output=True, text=True, cwd=path.parent, check=True).stdout.strip()
        if not dirty and stamp:
            return dt.datetime.fromtimestamp(int(stamp))
    except (OSError, subprocess.CalledProcessError):
        pass
    return dt.datetime.fromtimestamp(path.stat().st_mtime)


def scripts(only: list[str] | None) -> list[Path]:
    found = sorted(HERE.glob("bench_*.py"))
    if only:
        wanted = {name.removeprefix("bench_").removesuffix(".py") for name in only}
        unknown = wanted - {p.stem.removeprefix("bench_") for p in found}
        if unknown:
            raise SystemExit(f"no benchmark named {', '.join(sorted(unknown))}; have {', '.join(p.stem for p in found)}")
        found = [p for p in found if p.stem.removeprefix("bench_") in wanted]
    return found


def run(script: Path, quick: bool, timeout: float) -> dict:
    name = script.stem.removeprefix("bench_")
    env = dict(os.environ)
    if quick:
        env["ONNXOPT_BENCH_QUICK"] = "1"
    RESULTS.mkdir(parents=True, exist_ok=True)
    log = RESULTS / f"{name}.log"
    result_file = RESULTS / f"{name}.md"
    before = result_file.stat().st_mtime if result_file.exists() else None
    print(f"== {script.name}", flush=True)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as handle:
        try:
            proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, timeout=timeout)
            status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        except subprocess.TimeoutExpired:
            status = f"timed out after {timeout:.0f} s"
    seconds = time.perf_counter() - started
    fresh = result_file.exists() and result_file.stat().st_mtime != before
    if status == "ok" and not fresh:
        status = f"ok, but wrote no results/{name}.md"
    print(f"   {status} in {seconds:.0f} s (log: {log.relative_to(ROOT)})", flush=True)
    return {"name": name, "status": status, "seconds": seconds, "fresh": fresh}


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = []
    for module in ("onnxopt", "onnxruntime", "onnx", "numpy", "onnxsim", "onnxslim"):
        try:
            versions.append(f"{module} {__import__(module).__version__}")
        except Exception:
            continue
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    return (
        f"{dt.datetime.now().strftime('%Y-%m-%d %H:%M')} · {cpu}, {os.cpu_count()} logical cores · "
        f"Python {platform.python_version()} · {', '.join(versions)}" + (f" · commit {commit}" if commit else "")
    )


def collect(statuses: list[dict], quick: bool) -> str:
    """The README's results block: machine, one status line per script, every results file."""
    lines = [BEGIN, "", f"_Last run: {machine()}{' · quick mode' if quick else ''}._", ""]
    by_name = {s["name"]: s for s in statuses}
    if statuses:
        lines += ["| benchmark | status | seconds |", "|---|---|---:|"]
        lines += [f"| bench_{s['name']}.py | {s['status']} | {s['seconds']:.0f} |" for s in statuses]
        lines.append("")
    for path in sorted(RESULTS.glob("*.md")):
        name = path.stem
        note = ""
        if name in by_name and not by_name[name]["fresh"]:
            note = f"_Stale: the last run of bench_{name}.py {by_name[name]['status']}; these are older numbers._\n\n"
        elif name not in by_name:
            stamp = _results_time(path).strftime("%Y-%m-%d %H:%M")
            note = f"_Not rerun this time; results from {stamp}._\n\n"
        body = path.read_text(encoding="utf-8").strip()
        body = re.sub(r"^(#{1,5}) ", lambda m: "#" * max(len(m.group(1)), 3) + " ", body, flags=re.M)  # sit under the README's headings
        lines += [note + body, ""]
    lines.append(END)
    return "\n".join(lines)


def write_readme(block: str) -> None:
    text = README.read_text(encoding="utf-8") if README.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + "\n\n## Latest results\n\n" + block + "\n"
    README.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these (fusion or bench_fusion.py)")
    parser.add_argument("--quick", action="store_true", help="set ONNXOPT_BENCH_QUICK=1 for a fast smoke run")
    parser.add_argument("--collect", action="store_true", help="run nothing, rebuild the README from results/*.md")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per script (default 3600)")
    parser.add_argument("--no-readme", action="store_true", help="do not touch README.md")
    args = parser.parse_args(argv)

    statuses = [] if args.collect else [run(script, args.quick, args.timeout) for script in scripts(args.only)]
    if not args.no_readme:
        write_readme(collect(statuses, args.quick))
        print(f"updated {README.relative_to(ROOT)}")
    return 0 if all(s["status"] == "ok" for s in statuses) else 1


if __name__ == "__main__":
    sys.exit(main())
