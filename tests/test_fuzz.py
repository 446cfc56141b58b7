"""A short fuzz run (issue 13, item 7): a hundred mutated models through `bnn-tvm compile`, each in its own
process with a time limit; `make fuzz` runs thousands. See tests/fuzzing.py for the mutators and outcomes."""

import os

from tests import fuzzing

# ~1 s per rejected .tflite mutant, 5-10 s per compiled one (compile, run, LCE), 1-30 s per Keras case: 80 + 12
# cases take 4 to 10 minutes on 2 cores, depending on what else runs.
TFLITE_CASES, KERAS_CASES, SEED = 80, 12, 13
TIMEOUT = 120  # seconds per case; a corrupt .h5 can take 30 s to refuse on a loaded machine


def test_short_fuzz_run_has_no_crash_hang_silent_acceptance_or_vague_error(tmp_path, monkeypatch):
    cases = fuzzing.make_cases(TFLITE_CASES, SEED, tmp_path, ("bytes", "flatbuffer"))
    keras = tmp_path / "keras"
    keras.mkdir()
    cases += fuzzing.make_cases(KERAS_CASES, SEED, keras, ("keras",))
    monkeypatch.setenv("FUZZ_TMP", str(tmp_path))  # the cases' work folders, removed with tmp_path
    results = fuzzing.run_cases(cases, jobs=os.cpu_count() or 1, timeout=TIMEOUT)
    report = fuzzing.table(results)
    assert len(results) == len(cases), report
    failures = [r for r in results if r["outcome"] in fuzzing.FAILURES]
    assert not failures, report
    rejected = [r for r in results if r["outcome"] in ("clear", "partial")]
    clear = sum(r["outcome"] == "clear" for r in rejected)
    assert clear >= 0.95 * len(rejected), report  # the goal: 95% name what is wrong and where
