"""A TensorFlow process exits after kseq raised inside ``fit`` (issue 28; NOTE [ tf.data iterators at exit ]).

Each pattern is a small script run in a fresh TensorFlow process, 10 times, a few at once, beside a busy-loop
process that keeps a core loaded (the hangs came with other work running). A script catches kseq's error, prints
its last line, and must then exit within EXIT_BOUND seconds; a run that never reaches its last line fails too.
"""

import os
import subprocess
import sys
import textwrap
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

RUNS = 10
AT_ONCE = 3
EXIT_BOUND = 60.0  # seconds from the last line to the process's exit; a clean exit takes a few
RUN_BOUND = 600.0  # seconds to reach the last line (a TensorFlow import on a loaded machine is slow)

PRELUDE = """\
import os
os.environ["KERAS_BACKEND"] = "tensorflow"
import time
import numpy as np
import keras
import kseq

def small_model():
    x = keras.Input((4,), name="x")
    model = keras.Model(x, keras.layers.Dense(1)(x))
    model.compile("sgd", "mse")
    return model

class Failing(kseq.Dataset):
    \"\"\"Batches from row 24 on raise in build_batch (so in a worker, with workers=).\"\"\"

    def build_batch(self, rows):
        if rows["x"][0] >= 24:
            raise ValueError("a bad row")
        return np.repeat(rows["x"][:, None], 4, axis=1).astype("float32"), rows["x"][:, None].astype("float32")

class Slow(Failing):
    \"\"\"Batch 3 (rows 24-31) takes 120 s, far over the dataset's timeout.\"\"\"

    def build_batch(self, rows):
        if rows["x"][0] == 24:
            time.sleep(120)
        return super().build_batch({"x": rows["x"] * 0})

def caught(error):
    print("CAUGHT", type(error).__name__, flush=True)

def fit_expecting(ds, message):
    \"\"\"One epoch of a small model on ds, which must raise an error naming message.\"\"\"
    try:
        small_model().fit(ds, epochs=1, shuffle=False, verbose=0)
    except Exception as e:
        assert message in str(e), e
        caught(e)
"""

PATTERNS = {
    # fit_generator trains, then meets a generator that ends early: kseq raises "generator ended" inside fit.
    "fit_generator_short": """
        from kseq.legacy import fit_generator

        def batches(n):
            for _ in range(n):
                yield np.ones((8, 4), "float32"), np.ones((8, 1), "float32")

        model = small_model()
        fit_generator(model, batches(10), steps_per_epoch=5, epochs=2, verbose=0)
        try:
            fit_generator(model, batches(7), steps_per_epoch=5, epochs=2, verbose=0)
        except kseq.StructureError as e:
            assert "generator ended" in str(e), e
            caught(e)
    """,
    # A stateful LSTM trains, then fit(shuffle=True): the dataset refuses the jump from __getitem__.
    "stateful_shuffle": """
        series = np.sin(np.arange(1200, dtype="float32") / 10)[:, None]
        ds = kseq.StatefulSequenceDataset([series[:600], series[600:]], timesteps=10, batch_size=2)
        inputs = ds.keras_input()
        h = keras.layers.LSTM(4, stateful=True, return_sequences=True)(inputs)
        model = keras.Model(inputs, keras.layers.Dense(1)(h))
        model.compile("sgd", "mse")
        model.fit(ds, epochs=1, shuffle=False, verbose=0, callbacks=[kseq.ResetStates(ds)])
        try:
            model.fit(ds, epochs=1, shuffle=True, verbose=0)
        except Exception as e:
            assert "must be read in order" in str(e), e
            caught(e)
    """,
    "worker_process_error": """
        ds = Failing({"x": np.arange(64.0)}, batch_size=8, shuffle=False, workers=2, use_multiprocessing=True,
                     start_method="fork")
        fit_expecting(ds, "a bad row")
    """,
    "worker_thread_error": """
        ds = Failing({"x": np.arange(64.0)}, batch_size=8, shuffle=False, workers=2)
        fit_expecting(ds, "a bad row")
    """,
    "timeout": """
        ds = Slow({"x": np.arange(64.0)}, batch_size=8, shuffle=False, workers=2, use_multiprocessing=True,
                  start_method="fork", timeout=3)
        fit_expecting(ds, "longer than timeout=3")
    """,
}


def run_once(path, log):
    """Run ``path``; how it ended: "exited", "hung at exit" or "never finished", and its output's tail."""
    env = {**os.environ, "KERAS_BACKEND": "tensorflow", "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(path)], stdout=out, stderr=subprocess.STDOUT, env=env)
    start, last_line = time.monotonic(), None
    try:
        while proc.poll() is None:
            time.sleep(0.5)
            now = time.monotonic()
            if last_line is None and "CAUGHT" in log.read_text(errors="replace"):
                last_line = now
            if last_line is not None and now - last_line > EXIT_BOUND:
                return "hung at exit", log.read_text(errors="replace")[-1500:]
            if last_line is None and now - start > RUN_BOUND:
                return "never finished", log.read_text(errors="replace")[-1500:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = log.read_text(errors="replace")
    if proc.returncode != 0 or "CAUGHT" not in text:
        return f"failed (rc {proc.returncode})", text[-1500:]
    return "exited", ""


@pytest.fixture
def busy_core():
    """A process that keeps one core busy while the patterns run."""
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    yield proc
    proc.kill()
    proc.wait()


@pytest.mark.parametrize("pattern", sorted(PATTERNS))
def test_the_process_exits_after_kseq_raised_inside_fit(pattern, tmp_path, busy_core):
    """Every one of RUNS fresh TensorFlow processes exits within EXIT_BOUND s of catching kseq's error."""
    script = tmp_path / f"{pattern}.py"
    script.write_text(PRELUDE + textwrap.dedent(PATTERNS[pattern]) + '\nprint("LAST", flush=True)\n')
    with ThreadPoolExecutor(AT_ONCE) as pool:
        results = list(pool.map(lambda i: run_once(script, tmp_path / f"run{i}.log"), range(RUNS)))
    assert busy_core.poll() is None
    bad = [(i, how, tail) for i, (how, tail) in enumerate(results) if how != "exited"]
    assert not bad, f"{len(bad)} of {RUNS} runs did not exit cleanly; the first: {bad[0]}"
