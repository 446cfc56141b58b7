"""Settling: which schedule each kernel's record is, decided by re-measuring, not by the search.

The search's measurement only ranks candidates. What decides a kernel's record is a re-measurement after the
search (``settle_records``): its untuned schedule and the search's best three, side by side, measured as the
whole model is compared; the untuned schedule stays unless a candidate is faster beyond the noise
(``timing.choose_schedule``). ``settled.json`` (``SettledFile``) remembers what each kernel's last settling
compared and kept, so that a resumed run re-measures only what changed.
"""

from __future__ import annotations

import json
import os
import statistics
import warnings
from pathlib import Path

import tvm
import tvm_ffi
from tvm import s_tir
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms

from ..tuning_database import (
    AtomicJSONDatabase,
    SearchHistoryView,
    mean_seconds,
    plain_json,
    search_twin,
    write_atomically,
)
from .runners import remove_candidate
from .spaces import untuned_schedule
from .timing import choose_schedule, format_us, valid_seconds

TOP_CANDIDATES = 3  # the search's best this many, by its own measurement
SETTLED_FILE = "settled.json"


def schedule_key(mod: tvm.IRModule) -> str:
    """A schedule's (or workload's) identity: the structural hash of its module."""
    return f"{tvm_ffi.structural_hash(mod):x}"


def replay(trace, mod: tvm.IRModule) -> s_tir.Schedule | None:
    """``trace`` applied to ``mod`` (postprocessing included, as compile applies a record), or None if it fails."""
    sch = s_tir.Schedule(mod)
    try:
        trace.apply_to_schedule(sch, remove_postproc=False)
    except (tvm.TVMError, s_tir.ScheduleError):
        return None
    return sch


class SettledFile:
    """``settled.json`` in the log folder: per workload (``schedule_key``), what its last settling compared and kept.

    ``candidates``: the schedules it measured; ``default``, ``winner``: the untuned schedule's and the kept
    one's; ``default_secs``, ``best_secs``: their medians. A resumed run does not measure a workload again
    whose candidates are the same and whose record is still the winner. Written atomically after the database:
    a run killed between the two settles that workload again.
    """

    def __init__(self, log_dir: Path):
        self.path = log_dir / SETTLED_FILE
        self.entries: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.entries = json.loads(self.path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                warnings.warn(f"{self.path} is not valid JSON; every kernel will be re-measured", RuntimeWarning,
                              stacklevel=2)

    def save(self) -> None:
        write_atomically(self.path, [json.dumps(self.entries, indent=1, sort_keys=True)])


@derived_object
class KeepBest(ms.measure_callback.PyMeasureCallback):
    """MetaSchedule's ``RemoveBuildArtifact``, except for the ``keep`` fastest validly measured candidates of each
    task, which the re-measurement loads instead of building them again. ``tasks``: the run's task of each
    scheduler task id."""

    def __init__(self, tasks: list[int], keep: int):
        self.tasks, self.keep = tasks, keep
        self.kept: dict[int, list[tuple[float, str, str]]] = {}  # task: [(seconds, schedule key, artifact)]

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results):
        best = self.kept.setdefault(self.tasks[task_id], [])
        for candidate, built, ran in zip(measure_candidates, builder_results, runner_results, strict=True):
            if built.error_msg is not None or not built.artifact_path:
                continue
            seconds = mean_seconds(ran.run_secs) if ran.error_msg is None and ran.run_secs else None
            if seconds is not None and valid_seconds(seconds):
                best.append((seconds, schedule_key(candidate.sch.mod), built.artifact_path))
            else:
                remove_candidate(built.artifact_path)
        best.sort(key=lambda entry: entry[0])
        for _, _, path in best[self.keep:]:
            remove_candidate(path)
        del best[self.keep:]

    def artifact(self, task: int, key: str) -> str | None:
        return next((path for _, known, path in self.kept.get(task, []) if known == key and os.path.exists(path)),
                    None)

    def discard(self) -> None:
        for entries in self.kept.values():
            for _, _, path in entries:
                remove_candidate(path)
        self.kept.clear()


def settle_records(contexts, binary: list[bool], builder, measurer, database: AtomicJSONDatabase,
                   search: SearchHistoryView, keeper: KeepBest | None, state: SettledFile, say) -> list[dict]:
    """Decide each task's record by measuring, the same way and side by side, its untuned schedule and the
    search's ``TOP_CANDIDATES`` best (with the record an earlier run kept, when resumed): ``choose_schedule``'s
    rule.

    The records compile applies are appended, all tasks' in one atomic write: on a task's first settling its
    untuned schedule and the winner if that is another, at their re-measured times (the winner's mean, which
    compile ranks by, is then the least: each of its rounds was faster); later, if the verdict differs from the
    record there, the same, unless the record of the earlier run is still the least (then it stands, and nothing
    is appended). The file only grows, and a run killed at any instant leaves the records of the last settling.
    A task whose untuned schedule could not be measured gets no record (compile uses the untuned schedule).
    Search measurements that are not valid (``valid_seconds``) are never candidates. A task measured before with
    the same candidates, whose record is still the one it kept, is not measured again. Returns per task
    ``{"default", "best"}`` (medians this run, seconds, or None), ``"kept"``: whether its record is the untuned
    schedule, and ``"earlier"``: whether an earlier run's record stands against this run's verdict.
    """
    plans, figures, current_winner = [], [None] * len(contexts), []
    for i, context in enumerate(contexts):
        real = database.commit_workload(context.mod)
        default = untuned_schedule(context.mod, context.target, binary[i], context.space_generator)
        schedules, keys = [default], [schedule_key(default.mod)]
        history = sorted((mean_seconds(r.run_secs), n, r) for n, r in enumerate(search.records_of(context.mod))
                         if r.run_secs and valid_seconds(mean_seconds(r.run_secs)))

        def add(record) -> str | None:
            sch = replay(record.trace, context.mod)
            if sch is None:
                return None
            if schedule_key(sch.mod) not in keys:
                schedules.append(sch)
                keys.append(schedule_key(sch.mod))
            return schedule_key(sch.mod)

        for _, _, record in history:
            if len(schedules) > TOP_CANDIDATES:
                break
            add(record)
        # The record an earlier run kept competes again, so that a resumed run replaces it only by a winner.
        current = database.get_top_k(real, 1)
        winner = add(current[0]) if current else None
        entry = state.entries.get(schedule_key(context.mod))
        if entry and entry.get("candidates") == sorted(keys) and entry.get("winner") == winner:
            figures[i] = {"default": entry.get("default_secs"), "best": entry.get("best_secs"),
                          "kept": entry.get("winner") in (None, entry.get("default")), "unchanged": True}
            continue
        plans.append((i, real, schedules, keys))
        current_winner.append(winner)
    if not plans:
        return figures

    missing = [(p, n) for p, (i, _, schedules, keys) in enumerate(plans) for n in range(len(schedules))
               if keeper is None or keeper.artifact(i, keys[n]) is None]
    built = builder.build([ms.builder.BuilderInput(plans[p][2][n].mod, contexts[plans[p][0]].target)
                           for p, n in missing]) if missing else []
    artifacts = {(p, n): result.artifact_path if result.error_msg is None else None
                 for (p, n), result in zip(missing, built, strict=True)}
    say(f"re-measuring {sum(len(s) for _, _, s, _ in plans)} schedules of {len(plans)} kernels side by side "
        f"({len(missing)} built again), {measurer.rounds} round(s)")
    groups, paths = [], {}
    for p, (i, _, schedules, keys) in enumerate(plans):
        paths[p] = [artifacts.get((p, n)) or (keeper.artifact(i, keys[n]) if keeper else None)
                    for n in range(len(schedules))]
        args = [info.as_json() for info in ms.arg_info.ArgInfo.from_prim_func(contexts[i].mod["main"])]
        groups.append((plain_json(args), [path for path in paths[p] if path is not None]))
    try:
        measured = measurer.measure(groups) if any(g[1] for g in groups) else [[] for _ in groups]
    finally:
        for path in artifacts.values():
            if path is not None:
                remove_candidate(path)

    appended = []
    for p, (i, real, schedules, keys) in enumerate(plans):
        results = iter(measured[p])
        rounds = [next(results) if path is not None else {"error": "it did not build"} for path in paths[p]]
        context = contexts[i]
        args_info = ms.arg_info.ArgInfo.from_prim_func(context.mod["main"])
        for n, result in enumerate(rounds[1:], start=1):
            if "error" in result:
                say(f"[{context.task_name}] candidate {n} rejected: {result['error'][:300]}")
        default_rounds = rounds[0].get("rounds")
        choice = choose_schedule(default_rounds, [r.get("rounds") for r in rounds[1:]], measurer.resolution)
        winner = None if choice is None else choice + 1

        def record(n):
            return ms.database.TuningRecord(schedules[n].trace, real, rounds[n]["rounds"], context.target, args_info)

        recorded = [r for r in database.records_of(real.mod) if r.run_secs and valid_seconds(mean_seconds(r.run_secs))]
        verdict = keys[winner or 0]
        before = len(appended)
        if not (default_rounds and all(valid_seconds(s, measurer.resolution) for s in default_rounds)):
            verdict = None
            say(f"[{context.task_name}] its untuned schedule could not be measured ({rounds[0].get('error')}): "
                f"nothing recorded" + ("" if recorded else ", compile keeps the untuned schedule"))
        elif not recorded or verdict != current_winner[p]:
            # The database only grows: this run's verdict is appended (a winner beside the untuned schedule's rounds
            # it beat), and compile applies the least mean. On a first settling that is the verdict; later, a record
            # of an earlier run may still be less (another run, another load on the machine): then it stands.
            appended += [record(0)] + ([record(winner)] if winner else [])
        kept = _best_key(database, real, appended, context.mod)
        if verdict is not None and kept != verdict:
            del appended[before:]  # nothing this run measured changes the record: keep the file as it is
            say(f"[{context.task_name}] this run's verdict differs from the record an earlier run kept, which is "
                f"faster by that run's measurement: that stands")
        median = {n: statistics.median(r["rounds"]) for n, r in enumerate(rounds) if r.get("rounds")}
        best = median.get(keys.index(kept)) if kept in keys else None
        figures[i] = {"default": median.get(0), "best": best, "kept": kept in (None, keys[0]),
                      "earlier": verdict is not None and kept != verdict}
        state.entries[schedule_key(context.mod)] = {
            "name": context.task_name, "candidates": sorted(keys), "default": keys[0], "winner": kept,
            "default_secs": median.get(0), "best_secs": best}
    database.commit_tuning_records(appended)
    state.save()  # after the database: killed in between, the next run settles these again
    return figures


def _best_key(database: AtomicJSONDatabase, real, appended: list, mod: tvm.IRModule) -> str | None:
    """The schedule key of the record compile will apply to ``real``'s workload once ``appended`` is committed."""
    records = [r for r in database.records_of(real.mod) + [r for r in appended if r.workload.same_as(real)]
               if r.run_secs and valid_seconds(mean_seconds(r.run_secs))]
    if not records:
        return None
    sch = replay(min(records, key=lambda r: mean_seconds(r.run_secs)).trace, mod)
    return schedule_key(sch.mod) if sch is not None else None


def adopt_unsettled(database: AtomicJSONDatabase, contexts, state: SettledFile, say) -> None:
    """Records of a task's workload that no settling wrote (a folder an older bnn-tvm tuned, or ``tune`` killed
    between writing the database and ``settled.json``) become search history, in one atomic rewrite: they were
    ranked by the search's measurement only, and may be the 0.0 this module now rejects."""
    replacements = {}
    for context in contexts:
        if schedule_key(context.mod) in state.entries:
            continue
        records = database.records_of(context.mod)
        if records:
            twin = database.commit_workload(search_twin(context.mod))
            replacements[context.mod] = []
            replacements[twin.mod] = database.records_of(twin.mod) + [
                ms.database.TuningRecord(r.trace, twin, r.run_secs, r.target, r.args_info) for r in records]
    if replacements:
        database.replace_records(replacements)
        say(f"{len(replacements) // 2} kernels had records no re-measurement settled: they now seed the search "
            f"and are re-measured against the untuned schedules")


def summary_table(names: list[str], figures: list[dict | None]) -> list[str]:
    """A line per kernel: its untuned and its kept schedule's re-measured time and the speedup, marked where the
    untuned schedule was kept, or where a record of an earlier run stands against this run's verdict."""
    width = max(len(name) for name in names)
    lines = [f"{'kernel':<{width}}  {'default us':>10}  {'best us':>10}  speedup"]
    for name, figure in zip(names, figures, strict=True):
        figure = figure or {}
        default, best = figure.get("default"), figure.get("best")
        gain = f"{default / best:6.2f}x" if default and best else "      -"
        note = "  (default kept)" if figure.get("kept") else "  (earlier record kept)" if figure.get("earlier") else ""
        shown_default, shown_best = format_us(default) if default else "-", format_us(best) if best else "none"
        lines.append(f"{name:<{width}}  {shown_default:>10}  {shown_best:>10}  {gain}{note}")
    return lines
