"""python -m benchmarks [--quick] [--device DEVICE] [--dtype float32|float64] [--out DIR]
                       [--suites WORD ...] [--no-quality] [--case-limit SECONDS]
                       [--profile TEXT]

Times every process against the hardware floor and the peers side by side, measures the
quality per model call, prints the tables and writes results.json, quality.json and
quality.png (a full run into benchmarks/ also refreshes the tables in its README.md).
"""

import argparse
import json
import platform
import re
import sys
import traceback
from pathlib import Path

import numpy as np
import torch

from . import quality, speed
from .timing import Record, Timer, format_table, profile, quick_timer

HERE = Path(__file__).resolve().parent
README_MARKERS = ("<!-- results:start -->", "<!-- results:end -->")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats (seconds); writes only with --out")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--out", type=Path, default=None,
                        help="output folder (default: benchmarks/ for a full run)")
    parser.add_argument("--suites", nargs="+", metavar="WORD", default=None,
                        help="run only the speed suites whose label contains one of these words")
    parser.add_argument("--no-quality", action="store_true", help="skip the quality benchmark")
    parser.add_argument("--case-limit", type=float, default=30.0, metavar="SECONDS",
                        help="record a case at the quick size if one call at full size would "
                             "take longer than this (default 30)")
    parser.add_argument("--profile", metavar="TEXT", default=None,
                        help="instead of timing, profile the cases whose name contains TEXT")
    args = parser.parse_args(argv)
    if args.out is None and not args.quick:
        args.out = HERE
    return args


def machine(device: torch.device) -> str:
    """The hardware in words: the CPU model and threads, or the GPU's name."""
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)}, torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        found = re.search(r"model name\s*:\s*(.+)", cpuinfo.read_text())
        cpu = found.group(1).strip() if found else cpu
    return f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def run_speed(sizes, timer: Timer, ctx, words=None, profile_text=None, limit=None):
    """The suites' cases (those matching ``words``), measured, or profiled if their name
    contains ``profile_text``. A process suite's cases are timed one at a time (with
    ``limit``, each first probed at smaller sizes, see ``_measure``); a peer suite's cases
    side by side. A suite whose code is still a placeholder, or whose optional peer is not
    installed, is skipped with a note.

    Returns the records and the failures (a suite that raised: its label and the error).
    """
    records, failures = [], []
    suites = ([(label, suite, False) for label, suite in speed.PROCESS_SUITES]
              + [(label, suite, True) for label, suite in speed.PEER_SUITES])
    for label, suite, side_by_side in suites:
        if words and not any(w.lower() in label.lower() for w in words):
            continue
        try:
            cases = suite(sizes, ctx)
            if profile_text is not None:
                for case in cases:
                    if profile_text.lower() in case.name.lower():
                        print(f"\n{case.name}\n{profile(case)}", flush=True)
                continue
            if side_by_side:
                _report(records, timer.measure(cases))
                continue
            probes = [suite(small, ctx) for small in speed.PROBES] if limit else []
            for case, *smaller in zip(cases, *probes):
                _report(records, [_measure(case, smaller, timer, limit)])
        except NotImplementedError:
            print(f"  skipped {label}: not implemented yet (placeholder module)", flush=True)
        except Exception as error:  # noqa: BLE001 - reported, and the exit status says so
            if isinstance(error, ModuleNotFoundError) and error.name == "diffusers":
                print(f"  skipped {label}: diffusers is not installed (pip install "
                      f"'bridgediff[bench]')", flush=True)
                continue
            failures.append(f"{label}: {type(error).__name__}: {error}")
            print(f"  FAILED {failures[-1]}", flush=True)
            traceback.print_exc()
    return records, failures


def _report(records: list[Record], new: list[Record]) -> None:
    for r in new:
        print(f"  {r.name:<66} {1e3 * r.seconds:9.3f} ms  {r.ratio_to_floor:8.2f}x floor",
              flush=True)
    records += new


def _measure(case, smaller, timer: Timer, limit) -> Record:
    """``case``'s record, unless one call would take longer than ``limit`` seconds.

    ``smaller`` holds the same case at increasing smaller sizes, each timed once while the
    time extrapolated to ``case.n`` exceeds the limit (and the next probe would not); if
    it still does, the last probe's record is kept.
    """
    quick, trials = quick_timer(timer.device, timer.dtype), []
    for probe in smaller:
        if trials and _extrapolate(trials, probe.n) > limit:
            break
        trials += quick.measure([probe])
        if _extrapolate(trials, case.n) <= limit:
            return timer.measure([case])[0]
    if not trials:
        return timer.measure([case])[0]
    print(f"  {case.name}: about {_extrapolate(trials, case.n):.0f} s per call at n = "
          f"{case.n:,}, over the {limit:g} s limit: recorded at n = {trials[-1].n:,}", flush=True)
    return trials[-1]


def _extrapolate(trials: list[Record], n: int) -> float:
    """Seconds per call at ``n``: proportional to n from one trial; from two, a fixed cost
    plus a cost per item."""
    last = trials[-1]
    if len(trials) == 1 or trials[-2].n == last.n:
        return last.seconds * n / last.n
    per_item = max(last.seconds - trials[-2].seconds, 0.0) / (last.n - trials[-2].n)
    return last.seconds + per_item * (n - last.n)


def speed_table(records: list[Record], judge: bool) -> str:
    """The records; with ``judge`` (a full CPU float32 run) each target met or missed."""
    rows = []
    for r in records:
        limit = speed.TARGETS.get(r.name) if judge else None
        verdict = "" if limit is None else (
            f"<= {limit:g}: {'ok' if r.ratio_to_floor <= limit else 'MISSED'}"
            + ("" if r.n == speed.FULL.n else f" (at n = {r.n:,})"))
        rows.append([r.name, r.op, f"{r.n:,}", f"{1e3 * r.seconds:.3f}", f"{r.items_per_s:.3g}",
                     f"{r.ratio_to_floor:.2f}", verdict])
    return format_table(["name", "op", "n", "ms", "items/s", "x floor", "target"], rows)


def comparison_table(records: list[Record], comparisons) -> str:
    """Each pair's speed-up per item (median times, measured side by side)."""
    by_name = {r.name: r for r in records}
    rows = []
    for c in comparisons:
        ours, peer = by_name.get(c.ours), by_name.get(c.peer)
        if ours is None or peer is None:
            continue
        speedup = ours.items_per_s / peer.items_per_s
        target = "" if c.minimum is None else (
            f">= {c.minimum:g}: {'ok' if speedup >= c.minimum else 'MISSED'}")
        per_step = (f"{1e6 * (ours.seconds - peer.seconds) / c.steps:+.1f} us" if c.steps
                    else "")
        rows.append([c.label, f"{1e3 * ours.seconds:.3f}", f"{1e3 * peer.seconds:.3f}",
                     f"{speedup:.3g}", target, per_step])
    return format_table(["comparison", "ours ms", "peer ms", "peer time / ours (per item)",
                         "target", "ours - peer per step"], rows)


def quality_table(results: dict) -> str:
    rows = [[steps] + [f"{results[name][i]:.4f}" for name in quality.SAMPLERS]
            for i, steps in enumerate(results["steps"])]
    for row, value in zip(rows, results[quality.ELBO]):     # nats, not W1
        row.append(f"{value:.4f}")
    table = format_table(["steps"] + list(quality.SAMPLERS) + [quality.ELBO], rows)
    low, mid, high = np.quantile(results["exact iid sample"], [0.05, 0.5, 0.95])
    calls = "; ".join(f"{name}: {k} model calls per step"
                      for name, k in quality.CALLS_PER_STEP.items())
    note = (f"{table}\n\nSteps are grid steps, one model call each except {calls}. "
            f"W1 of {len(results['exact iid sample'])} exact i.i.d. samples "
            f"(n = {results['n']:,}): median {mid:.4f}, 5-95% [{low:.4f}, {high:.4f}].")
    return note + (f" Negative ELBO: `bd.elbo` on {results['n']:,} data draws (standard "
                   f"error at most {max(results[quality.ELBO + ' standard error']):.4f}); the "
                   f"exact -log p(x0) of the same draws is {results['exact -log p(x0)']:.4f} "
                   f"nats.")


def update_readme(path: Path, text: str) -> None:
    """Replace what lies between the README's result markers with ``text``."""
    readme = path.read_text()
    start, end = README_MARKERS
    if start in readme and end in readme:
        head, rest = readme.split(start, 1)
        path.write_text(f"{head}{start}\n{text}\n{end}{rest.split(end, 1)[1]}")


def main(argv=None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    sizes = speed.QUICK if args.quick else speed.FULL
    timer = quick_timer(device, dtype) if args.quick else Timer(device, dtype)
    ctx = speed.Context(device, dtype, torch.Generator(device).manual_seed(0))
    header = f"Machine: {machine(device)}; device {device}, dtype {args.dtype}."
    print(header, "\nSpeed (median seconds; ratio to the floor timed alongside):", flush=True)
    records, failures = run_speed(sizes, timer, ctx, args.suites, args.profile,
                                  None if args.quick else args.case_limit)
    if args.profile is not None:
        return

    judge = (device.type, args.dtype, args.quick) == ("cpu", "float32", False)
    sections = [header, "### Speed", speed_table(records, judge),
                "### Side by side", comparison_table(records, speed.comparisons(sizes))]
    if failures:
        sections += ["### Failed suites", "\n".join(f"* {f}" for f in failures)]
    results = None
    if not args.no_quality:
        print("Quality per model call ...", flush=True)
        results = quality.run_quality(1_000 if args.quick else 30_000,
                                      quality.QUICK_STEPS if args.quick else quality.FULL_STEPS,
                                      device)
        sections += ["### Quality per model call (W1 to the target)", quality_table(results)]
    report = "\n\n".join(sections)
    print("\n" + report)

    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(
            json.dumps([r.as_dict() for r in records], indent=1) + "\n")
        if results is not None:
            (args.out / "quality.json").write_text(json.dumps(results, indent=1) + "\n")
            quality.plot_quality(results, args.out / "quality.png")
        if args.out.resolve() == HERE and not args.quick:
            update_readme(HERE / "README.md", report)
        print(f"\nwrote {args.out / 'results.json'}")
    if failures:
        sys.exit("benchmark suites failed:\n  " + "\n  ".join(failures))


if __name__ == "__main__":
    main()
