"""``--seeds N``: one command, N whole runs (seeds --seed, --seed + 1, ...), and the tables over them.

A difference between two rows is an effect only when it exceeds the seed-to-seed spread, so the README's comparisons
come from several seeds. Each seed is a complete run of the script in ``<run folder>/seed-<s>/`` (started as a
subprocess with ``--seed s --out <run folder>/seed-<s>``, so a seed's folder is exactly what a one-seed run writes);
``seeds.json`` records the command and the finished seeds, and ``--resume <run folder>`` continues the seeds. Then:

- ``results_over_seeds.csv`` / ``.md``: every results.csv row (experiment, model) as mean and sample standard
  deviation over the seeds, its difference to its experiment's baseline row, and whether that difference is an
  effect: larger than the two rows' standard deviations added (the +-1 std bars do not overlap);
- ``checks_over_seeds.csv`` / ``.md``: every mechanism check (common/checks.py) per seed, and whether it passed in all.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable, Sequence

from common.checks import read_checks, spread
from common.errors import UserError
from common.runs import RunDir, atomic_write_text

STATE_FILE = "seeds.json"
Baseline = Callable[[str, Sequence[str]], "str | None"]   # (experiment, its models in order) -> the baseline model


def first_student(experiment: str, models: Sequence[str]) -> str | None:
    """The default baseline of an experiment: its row labelled "alone" or "no teacher", else its first row that is not
    a teacher (the student trained without distillation)."""
    alone = [m for m in models if "alone" in m.lower() or "no teacher" in m.lower()]
    return alone[0] if alone else next((m for m in models if "teacher" not in m.lower()), None)


def seeds_request(argv: Sequence[str]) -> argparse.Namespace | None:
    """The --seeds/--seed/--out/--resume words of a command line when it asks for several seeds (or resumes a
    folder of seeds); None for a plain run, which the script handles itself."""
    if "-h" in argv or "--help" in argv:
        return None
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    for flag in ("--seeds", "--seed"):
        parser.add_argument(flag, type=int)
    parser.add_argument("--out")
    parser.add_argument("--resume")
    try:
        request, rest = parser.parse_known_args(list(argv))
    except SystemExit:   # a malformed --seeds/--seed value: the script's own parser says what is wrong
        return None
    request.rest = rest
    resuming_seeds = request.resume is not None and (Path(request.resume) / STATE_FILE).is_file()
    if request.seeds is not None and request.seeds < 1:
        raise UserError(f"--seeds {request.seeds}: give at least 1 (the number of seeds to run).")
    return request if resuming_seeds or (request.seeds or 1) > 1 else None


def run_seeds(script: Path, request: argparse.Namespace, baseline: Baseline = first_student) -> None:
    """Run ``script`` once per seed as a subprocess (see the module docstring), then write the tables over seeds."""
    folder, state = _resume_state(request) if request.resume else _new_state(script, request)
    print(f"run folder: {folder} (seeds {', '.join(map(str, state['seeds']))}, one sub-folder each)", flush=True)
    for seed in state["seeds"]:
        if seed in state["finished"]:
            continue
        sub = folder / f"seed-{seed}"
        resume_words = ["--no-progress"] if "--no-progress" in state["argv"] else []
        words = (["--resume", str(sub), *resume_words] if (sub / "config.json").is_file()
                 else [*state["argv"], "--seed", str(seed), "--out", str(sub)])
        print(f"\n=== seed {seed}: {Path(script).name} {' '.join(words)}", flush=True)
        code = subprocess.call([sys.executable, str(script), *words])
        if code != 0:
            _stop(folder, state, code)
        state["finished"].append(seed)
        atomic_write_text(folder / STATE_FILE, json.dumps(state, indent=2))
    text = summarize_seeds(folder, state["seeds"], baseline)
    print("\n" + text, flush=True)
    print(f"done; results over {len(state['seeds'])} seeds in {folder} (results_over_seeds.md, checks_over_seeds.md, "
          f"seed-*/)", flush=True)


def _new_state(script: Path, request: argparse.Namespace) -> tuple[Path, dict]:
    run = RunDir.create(Path(script).stem, request.out)
    for empty in (run.checkpoints, run.figures):   # the seeds' own folders hold those
        empty.rmdir()
    first = request.seed if request.seed is not None else 0
    state = {"argv": request.rest, "seeds": list(range(first, first + request.seeds)), "finished": []}
    atomic_write_text(run.path / STATE_FILE, json.dumps(state, indent=2))
    return run.path, state


def _resume_state(request: argparse.Namespace) -> tuple[Path, dict]:
    extra = [w for w in request.rest if w != "--no-progress"]
    if extra or request.seeds is not None or request.seed is not None or request.out is not None:
        raise UserError("--resume continues a run of several seeds with its saved command; drop the other settings "
                        "or start a new run.")
    folder = Path(request.resume)
    return folder, json.loads((folder / STATE_FILE).read_text())


def _stop(folder: Path, state: dict, code: int) -> None:
    """A seed's run failed (its own message said why). Nothing finished and nothing saved: no folder is left."""
    saved = any((folder / f"seed-{s}").exists() for s in state["seeds"])
    if not state["finished"] and not saved:
        shutil.rmtree(folder, ignore_errors=True)
    elif code != 2:
        print(f"continue these seeds with --resume {folder}", file=sys.stderr)
    raise SystemExit(code)


# ------------------------------------------------------------------------------------------------ the tables
def summarize_seeds(folder: Path, seeds: Sequence[int], baseline: Baseline = first_student) -> str:
    """Write results_over_seeds.{csv,md} and checks_over_seeds.{csv,md} from ``folder/seed-<s>/``; return the
    Markdown of both. A check that failed in any seed heads the results table too."""
    runs = [Path(folder) / f"seed-{s}" for s in seeds]
    checks = _checks_over_seeds(runs, seeds)
    failed = [f"CHECK FAILED in some seed: {c['check']} ({c['values']}; required {c['required']}): the rows it "
              f"undermines cannot show the paper's effect" for c in checks if c["passed"] != "yes"]
    results = _write(Path(folder) / "results_over_seeds", _results_over_seeds(runs, baseline),
                     f"Results over seeds {', '.join(map(str, seeds))}", failed,
                     ["mean ± sample standard deviation over the seeds; `effect`: the difference to the baseline row "
                      "exceeds the two rows' standard deviations added (else it lies within the seed-to-seed spread)"])
    return results + "\n" + _write(Path(folder) / "checks_over_seeds", checks, "Mechanism checks over the seeds",
                                    [], [])


def _results_over_seeds(runs: list[Path], baseline: Baseline) -> list[dict]:
    values: dict[tuple[str, str], dict[str, list[float]]] = {}
    for run in runs:
        with open(run / "results.csv") as f:
            for row in csv.DictReader(f):
                cell = values.setdefault((row["experiment"], row["model"]), {"iou": [], "loss": []})
                for column in ("iou", "loss"):
                    if row[column] not in ("", None):
                        cell[column].append(float(row[column]))
    stats = {key: {c: spread(v) if v else (math.nan, math.nan) for c, v in cols.items()}
             for key, cols in values.items()}
    rows = []
    for (experiment, model), s in stats.items():
        models = [m for e, m in stats if e == experiment]
        base = baseline(experiment, models)
        row = {"experiment": experiment, "model": model, "seeds": len(values[(experiment, model)]["iou"]),
               "iou": _pm(*s["iou"]), "loss": _pm(*s["loss"]), "baseline": base or "", "iou - baseline": "",
               "effect": ""}
        if base and base != model and (experiment, base) in stats:
            (m, sd), (bm, bsd) = s["iou"], stats[(experiment, base)]["iou"]
            row["iou - baseline"] = f"{m - bm:+.4f}"
            row["effect"] = ("yes" if abs(m - bm) > sd + bsd else "no (within the spread)") \
                if not (math.isnan(sd) or math.isnan(bsd)) else "- (one seed)"
        rows.append(row)
    return rows


def _checks_over_seeds(runs: list[Path], seeds: Sequence[int]) -> list[dict]:
    table: dict[str, dict] = {}
    for seed, run in zip(seeds, runs):
        for check in read_checks(run):
            row = table.setdefault(check["check"], {"check": check["check"], "required": check["required"],
                                                    "values": [], "passed": 0})
            row["values"].append(f"{check['value']} (seed {seed})")
            row["passed"] += check["passed"] == "yes"
    return [{"check": r["check"], "required": r["required"], "values": "; ".join(r["values"]),
             "passed": "yes" if r["passed"] == len(r["values"]) == len(runs)
             else f"NO ({r['passed']} of {len(runs)} seeds)"} for r in table.values()]


def _pm(mean: float, std: float) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.4f}" if math.isnan(std) else f"{mean:.4f} ± {std:.4f}"


def _write(stem: Path, rows: list[dict], title: str, warnings: list[str], notes: list[str]) -> str:
    """``stem``.csv and ``stem``.md; returns the Markdown."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    atomic_write_text(stem.with_suffix(".csv"), buf.getvalue())
    lines = [f"### {title}", ""] + [f"**{w}**" for w in warnings] + ([""] if warnings else [])
    if rows:
        header = list(rows[0])
        lines += ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
        lines += ["| " + " | ".join(str(r[h]) for h in header) + " |" for r in rows]
    else:
        lines.append("(none)")
    text = "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else [])) + "\n"
    atomic_write_text(stem.with_suffix(".md"), text)
    return text
