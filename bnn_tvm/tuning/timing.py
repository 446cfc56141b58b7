"""Timing candidates side by side, and the rules that judge the times.

The search ranks candidates by one measurement each, in MetaSchedule's runner process (whose TVM thread pool,
left unconfigured, charges every parallel loop a worker's wake-up: some 5 us here, a kernel's whole cost on a
small model). What decides is a re-measurement: the candidates and the untuned schedule timed in rounds, back to
back (``interleaved``), kernels on the same random arguments with their outputs compared (``time_kernels``), and
judged by one rule (``choose_schedule``, ``faster_beyond_noise``), for a kernel as for the whole model.
"""

from __future__ import annotations

import functools
import math
import statistics
import time

import tvm

ROUNDS = 7  # each round times every candidate once, back to back: A, B, C, untuned, A, B, C, untuned, ...
ROUND_SEC = 0.005  # a candidate's share of a round: as many calls as fill it
SHARE_REPEATS = 5  # a share is timed in this many repeats, and the least counts (``interleaved``)
MODEL_ROUND_SEC = 0.02  # the same for a whole model
MIN_ROUND_TICKS = 1000  # a repeat is sized to last this many ticks of the timer, to resolve to 0.1%,
MIN_VALID_TICKS = 100  # and one that lasts fewer than this many (1%) is no measurement (the sizing can be 10x off)
# Here, kernels and models are timed on one thread, as ``compare_with_default`` times the whole model (a board
# runs them as its server is configured, an emulated board counts one thread's cycles).
LOCAL_THREADS = 1
# TVM's CPU timer is std::chrono's clock (CLOCK_REALTIME here); a board's clock is not known here: 1 us assumed.
TIMER_RESOLUTION_SEC = max(time.clock_getres(time.CLOCK_REALTIME), 1e-9)
BOARD_TIMER_RESOLUTION_SEC = 1e-6
FAILED_SECS = 1e9  # MetaSchedule records a run that failed as 1e10 s
# Estimated cycles of the same code, summed in another order, differ in their last digits (14058.48960523426 vs
# 14058.489605234263, measured): as close as this is a tie, which the untuned schedule wins.
TIE_RELATIVE = 1e-9


def valid_seconds(seconds, resolution: float = TIMER_RESOLUTION_SEC) -> bool:
    """Whether ``seconds`` per call can be the measurement of a kernel that ran.

    Parameters
    ----------
    seconds : float
        A time per call (a MetaSchedule record's mean ``run_secs``, or one round of a re-measurement).
    resolution : float
        The least time that counts as measured: a tick of the timer (``TIMER_RESOLUTION_SEC``), a cycle's time
        for estimated cycles.

    Returns
    -------
    bool
        True for a finite time of at least ``resolution`` and below MetaSchedule's mark of a failed run (1e10 s).
        0.0 is what a timer reads around a call that did no work, or around calls too short for its clock
        (``time_evaluator`` gives up re-timing zero-length runs after 100 tries and reports 0); neither says
        anything of the kernel, so neither may rank it.
    """
    try:
        seconds = float(seconds)
    except (TypeError, ValueError):
        return False
    return math.isfinite(seconds) and resolution <= seconds < FAILED_SECS


def faster_beyond_noise(candidate: list[float], baseline: list[float]) -> bool:
    """Whether ``candidate`` was faster than ``baseline`` beyond the noise of either: its slowest round took less
    than the baseline's fastest (rounds of the two timed back to back; one round each for deterministic numbers,
    where this is "strictly less", ties being equal to ``TIE_RELATIVE``)."""
    return bool(candidate) and bool(baseline) and max(candidate) < min(baseline) * (1 - TIE_RELATIVE)


def choose_schedule(default: list[float] | None, candidates: list[list[float] | None],
                    resolution: float = TIMER_RESOLUTION_SEC) -> int | None:
    """Which re-measured candidate replaces the untuned schedule: its index in ``candidates``, or None to keep
    the untuned one.

    The rule: the untuned schedule is kept unless a candidate wins beyond the measured noise
    (``faster_beyond_noise``): every round of the candidate took less time than every round of the untuned
    schedule, the rounds timing all of them back to back (7 rounds each: a candidate exactly as fast passes by
    chance once in 3432). Of the candidates that win, the one of the lowest median. A round that is not a valid
    measurement (``valid_seconds``: 0.0, below ``resolution``, failed) disqualifies its candidate; if the untuned
    schedule's measurement is not valid, nothing is compared and it is kept. With one round of deterministic
    numbers (estimated cycles) this is "strictly fewer": the untuned schedule wins ties.

    Parameters
    ----------
    default : list of float or None
        The untuned schedule's seconds per call, one per round (None: not measured).
    candidates : list of (list of float or None)
        Each candidate's seconds per call in the same rounds (None: not measured).
    resolution : float
        See ``valid_seconds``.

    Returns
    -------
    int or None
    """
    def measured(rounds):
        return bool(rounds) and all(valid_seconds(s, resolution) for s in rounds)

    if not measured(default):
        return None
    winners = [i for i, rounds in enumerate(candidates) if measured(rounds) and faster_beyond_noise(rounds, default)]
    return min(winners, key=lambda i: statistics.median(candidates[i])) if winners else None


def _same_outputs(outputs: list, reference: list) -> bool:
    """Whether a candidate's arguments after one call equal the untuned schedule's (inputs unchanged, outputs
    computed): integers exactly, floats to a reordered sum's rounding."""
    import numpy as np

    for out, ref in zip(outputs, reference, strict=True):
        if out.shape != ref.shape or out.dtype != ref.dtype:
            return False
        if np.issubdtype(ref.dtype, np.floating):
            scale = float(np.nanmax(np.abs(ref))) if ref.size and not np.all(np.isnan(ref)) else 1.0
            if not np.allclose(out, ref, rtol=1e-3, atol=1e-3 * max(scale, 1.0), equal_nan=True):
                return False
        elif not np.array_equal(out, ref):
            return False
    return True


def interleaved(evaluators: list, args: list, rounds: int, round_sec: float, resolution: float) -> list[dict]:
    """Time each of ``evaluators`` on ``args``, ``rounds`` times round-robin.

    ``evaluators``: per candidate, ``make(number, repeat, min_repeat_ms)`` returning a ``time_evaluator`` (or a
    string saying why there is none). A candidate's share of a round is ``SHARE_REPEATS`` repeats of as many calls
    as last ``round_sec / SHARE_REPEATS`` and ``MIN_ROUND_TICKS`` ticks of the timer (a repeat under
    ``MIN_VALID_TICKS`` ticks disqualifies the candidate: the clock cannot resolve it); its time for the round is
    the least of those repeats: another process taking the core only ever adds time, and on a shared machine
    it takes it often (measured here under load: single 5 ms timings of one kernel ranged 0.19-1.4 us). Returns
    per evaluator ``{"rounds": [seconds per call, ...], "number": calls per repeat}`` or ``{"error": why}``.
    """
    floor = max(round_sec / SHARE_REPEATS, MIN_ROUND_TICKS * resolution)
    timers, results = [], []
    for make in evaluators:
        timers.append(None)
        if isinstance(make, str):
            results.append({"error": make})
            continue
        try:  # time_evaluator raises the kernel's error: a run that did not execute is no measurement
            probe = float(make(1, 1, max(1, math.ceil(floor * 1e3)))(*args).mean)
        except Exception as error:  # noqa: BLE001 - any failure of the candidate is its own
            results.append({"error": f"did not run: {error}"})
            continue
        if not probe > 0:
            results.append({"error": "timed at 0 s: it did not run, or the clock did not move"})
            continue
        number = max(1, math.ceil(floor / probe))
        # The first calls can be much slower than the rest (an emulated board translates the code as it first runs
        # it): size the repeat again on calls at that count, until it fills half of its time at least.
        for _ in range(3):
            try:
                per_call = float(make(number, 1, 0)(*args).mean)
            except Exception as error:  # noqa: BLE001
                probe = None
                results.append({"error": f"did not run: {error}"})
                break
            if not per_call > 0 or per_call * number >= floor / 2:
                break
            number = max(number + 1, math.ceil(floor / per_call))
        if probe is None:
            continue
        timers[-1] = make(number, SHARE_REPEATS, 0)
        results.append({"rounds": [], "number": number})
    for _ in range(rounds):
        for timer, result in zip(timers, results, strict=True):
            if timer is None or "error" in result:
                continue
            try:
                repeats = [float(t) for t in timer(*args).results]
            except Exception as error:  # noqa: BLE001
                result.clear()
                result["error"] = f"did not run: {error}"
                continue
            per_call = min(repeats)
            if not per_call * result["number"] >= MIN_VALID_TICKS * resolution:
                result["error"] = (f"{result['number']} calls took {per_call * result['number']:.3g} s, under "
                                   f"{MIN_VALID_TICKS} ticks of the timer ({resolution:g} s)")
                del result["rounds"]
                continue
            result["rounds"].append(per_call)
    return results


def time_kernels(modules: list, args_info: list, device, fill, resolution: float) -> list[dict]:
    """``interleaved`` over the candidate ``modules`` of one kernel (the untuned schedule first), on one set of
    random arguments; then each run once more on fresh copies of them, and a candidate whose results differ from
    the untuned schedule's is rejected: it did not compute the kernel."""
    args = []
    for _, dtype, shape in args_info:
        arg = tvm.runtime.empty(shape, dtype, device)
        fill(arg)
        args.append(arg)
    initial = [arg.numpy() for arg in args]
    evaluators = [m if isinstance(m, str) else functools.partial(
        lambda number, repeat, min_ms, module: module.time_evaluator(
            module.entry_name, device, number=number, repeat=repeat, min_repeat_ms=min_ms), module=m)
        for m in modules]
    results = interleaved(evaluators, args, ROUNDS, ROUND_SEC, resolution)
    reference = None
    for i, (module, result) in enumerate(zip(modules, results, strict=True)):
        if "error" in result:
            continue
        fresh = [tvm.runtime.tensor(value, device) for value in initial]
        module[module.entry_name](*fresh)
        outputs = [arg.numpy() for arg in fresh]
        if i == 0:
            reference = outputs
        elif reference is not None and not _same_outputs(outputs, reference):
            results[i] = {"error": "its results differ from the untuned schedule's: it did not compute the kernel"}
    return results


def format_minutes(seconds: float) -> str:
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def format_us(seconds: float) -> str:
    """Microseconds to three significant digits or so: a kernel of 20 ns must not print as 0.0."""
    us = seconds * 1e6
    return f"{us:.{1 if us >= 10 else 2 if us >= 1 else 3 if us >= 0.1 else 4}f}"

