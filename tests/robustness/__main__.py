"""Totals of the ONNX node-test suite through onnxopt: `python -m tests.robustness [--jobs 2] [--only NAME...] [--details]`.

Prints how many models onnxruntime runs (and why not for the rest), then per exact pass and for
the ort-fp32 recipe how many came through unchanged, were refused, changed or crashed, and lists
every model that did not come through unchanged with the reason.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor
from functools import partial

from tests.robustness.node_suite import OUTCOMES, case_names, run_case_safely, totals


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.robustness")
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--only", nargs="*", help="substrings of model names to run")
    parser.add_argument("--details", action="store_true", help="list every model that did not come through unchanged")
    parser.add_argument("--json", help="write the per-model records here")
    parser.add_argument("--recipe-only", action="store_true", help="only the ort-fp32 recipe, not each exact pass alone")
    args = parser.parse_args(argv)
    names = case_names()
    if args.only:
        names = [n for n in names if any(s in n for s in args.only)]
    start = time.time()
    # Not a multiprocessing.Pool: its workers are daemonic, and a compile in a daemonic process skips
    # symbolic shape inference (it cannot start its time-bounded worker), unlike a user's.
    run = partial(run_case_safely, passes=not args.recipe_only)
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(args.jobs, mp_context=context) as pool:  # (max_tasks_per_child hangs on Python 3.11)
        records = []
        for record in pool.map(run, names, chunksize=2):
            records.append(record)
            if len(records) % 50 == 0:
                print(f"{len(records)}/{len(names)} models, {time.time() - start:.0f} s", file=sys.stderr, flush=True)
        records.sort(key=lambda r: r["name"])
    table = totals(records)
    ort = table.pop("onnxruntime", Counter())
    print(f"{len(records)} node-test models of onnx; onnxruntime: " + ", ".join(f"{k} {v}" for k, v in ort.most_common()))
    old = sum(1 for r in records if r["ort"] == "ok" and (r["opset"] or 99) < 7)
    print(f"runnable in onnxruntime: {ort.get('ok', 0)} (of them below opset 7: {old})")
    print(f"{'':28}" + "".join(f"{o:>11}" for o in OUTCOMES))
    for target, counts in table.items():
        print(f"{target:28}" + "".join(f"{counts.get(o, 0):>11}" for o in OUTCOMES))
    recipe = table.get("ort-fp32", Counter())
    runnable = sum(recipe.values())
    if runnable:
        print(f"ort-fp32 unchanged: {recipe.get('unchanged', 0)}/{runnable} = {100 * recipe.get('unchanged', 0) / runnable:.1f}%")
    print(f"({time.time() - start:.0f} s)")
    if args.details:
        for r in records:
            if r["ort"] not in ("ok",):
                print(f"ORT {r['ort']:16} {r['name']}: {r['ort_why'][:200]}")
        for r in records:
            for target, outcome in r["results"].items():
                if outcome.outcome != "unchanged":
                    print(f"{outcome.outcome:9} {target:22} {r['name']} (opset {r['opset']}): {outcome.why[:400]}")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump([{**r, "results": {k: vars(v) for k, v in r["results"].items()}} for r in records], handle, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
