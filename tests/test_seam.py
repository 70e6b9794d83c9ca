"""The seam between kseq and Keras (NOTE [ a Keras class only where Keras is fed ], NOTE [ epochs are passes ]).

What a user sees of it: fit's epochs are the dataset's with or without kseq.BackupAndRestore, a run
built without a seed resumes, and worker processes of every dataset kind hold no framework.
"""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from test_resume import Interrupt, small_model

import kseq
from kseq import KseqError
from kseq.resume import BackupAndRestore

ROOT = Path(__file__).resolve().parent.parent


def data(rows=40):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(rows, 3)).astype("float32"), "y": rng.normal(size=rows).astype("float32")}


model_from = small_model  # test_resume's: a two-layer regression model, optionally with given weights


@pytest.mark.portable
def test_attaching_backup_and_restore_changes_nothing_an_uninterrupted_run_trains(tmp_path):
    """kseq 0.1: without the callback fit's epoch 0 trained the dataset's epoch 1 (Keras's peek), with it epoch 0."""
    initial = model_from().get_weights()
    plain, backed = model_from(initial), model_from(initial)
    ds = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=1)
    plain.fit(ds, epochs=3, shuffle=False, verbose=0)
    assert ds.epoch == 3
    ds2 = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=1)
    backed.fit(ds2, epochs=3, shuffle=False, verbose=0, callbacks=[BackupAndRestore(tmp_path, ds2)])
    for a, b in zip(plain.get_weights(), backed.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.portable
def test_a_run_built_without_a_seed_resumes_on_the_seed_of_its_backup(tmp_path):
    """Preemption is when nobody thought of a seed: the rerun's drawn seed gives way to the backup's."""
    initial = model_from().get_weights()
    first = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8)
    assert first.seed_drawn
    model = model_from(initial)
    with pytest.raises(RuntimeError, match="interrupted"):
        model.fit(first, epochs=3, shuffle=False, verbose=0,
                  callbacks=[BackupAndRestore(tmp_path, first, save_freq=2), Interrupt(1, 2)])
    rerun = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8)
    assert rerun.seed != first.seed  # drawn again
    backup = BackupAndRestore(tmp_path, rerun, save_freq=2)
    model.fit(rerun, epochs=3, shuffle=False, verbose=0, callbacks=[backup])
    assert backup.restored["epoch"] == 1
    assert rerun.seed == first.seed
    assert not rerun.seed_drawn
    reference = model_from(initial)
    reference.fit(kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=first.seed),
                  epochs=3, shuffle=False, verbose=0)
    for a, b in zip(model.get_weights(), reference.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


@pytest.mark.portable
def test_a_chosen_seed_is_never_replaced_and_the_error_names_the_saved_one():
    saved = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=1).get_state()
    chosen = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=2)
    with pytest.raises(KseqError, match=r"seed: 1 in the state, 2 here.*pass seed=1"):
        chosen.set_state(saved)
    assert chosen.seed == 2


@pytest.mark.portable
def test_a_drawn_seed_is_kept_when_the_state_differs_in_more_than_the_seed():
    saved = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=8, seed=1).get_state()
    drawn = kseq.MultiInputDataset(data(), inputs="x", targets="y", batch_size=10)
    before = drawn.seed
    with pytest.raises(KseqError, match="batch_size: 8 in the state, 10 here"):
        drawn.set_state(saved)
    assert drawn.seed == before
    assert drawn.seed_drawn


# -- worker processes hold no framework -----------------------------------------------------------

KINDS = """
import numpy as np
import kseq

def kinds(**kw):
    rng = np.random.default_rng(0)
    n = 64
    data = {"a": rng.normal(size=(n, 4)).astype("float32"), "label": rng.integers(0, 4, n)}
    captions = [[[1, 2, 3, 4], [2, 3]] for _ in range(n)]
    return {
        "Dataset": kseq.Dataset(data, batch_size=8, **kw),
        "MultiInputDataset": kseq.MultiInputDataset(data, inputs="a", targets="label", batch_size=8, **kw),
        "SiamesePairDataset": kseq.SiamesePairDataset(data, fields="a", batch_size=8, **kw),
        "TripletDataset": kseq.TripletDataset(data, fields="a", batch_size=8, **kw),
        "CaptionDataset": kseq.CaptionDataset(data["a"], captions, batch_size=8, **kw),
        "StatefulSequenceDataset": kseq.StatefulSequenceDataset(np.arange(200.0), batch_size=2, timesteps=5, **kw),
    }

class Mine(kseq.MultiInputDataset):  # a user's subclass, defined in the script that trains
    def build_batch(self, rows):
        x, y = super().build_batch(rows)
        return {"a": x["a"] * 2}, y
"""

PROBE = """
import sys
from pathlib import Path

def worker_report(ds):
    '''Peak RSS (MB) and the framework libraries mapped, of each worker process of ds.'''
    with ds:
        for i in range(min(3, len(ds))):
            ds[i]
        out = []
        for pid in ds._loader.pids():
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            peak = int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 1024
            maps = Path(f"/proc/{pid}/maps").read_text()
            out.append((peak, [lib for lib in ("tensorflow", "jaxlib", "torch") if lib in maps]))
        return out

if __name__ == "__main__":
    import keras  # the training script's own Keras, imported where it trains
    method = sys.argv[1]
    kw = dict(workers=2, use_multiprocessing=True, start_method=method, seed=0)
    found = {name: worker_report(ds) for name, ds in kinds(**kw).items()}
    rng = __import__("numpy").random.default_rng(0)
    found["Mine (defined in __main__)"] = worker_report(
        Mine({"a": rng.normal(size=(32, 4)), "y": rng.normal(size=32)}, inputs="a", targets="y", batch_size=8, **kw))
    print(repr(found))
"""


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_workers_of_every_dataset_kind_and_of_a_main_subclass_hold_no_framework(tmp_path, method):
    """A spawn/forkserver worker receives the dataset's plan with no Keras class in it: no Keras, no backend
    library, under 200 MB, for every kind and for a subclass defined in the training script itself."""
    script = tmp_path / "train.py"
    script.write_text(textwrap.dedent(KINDS) + textwrap.dedent(PROBE))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    done = subprocess.run([sys.executable, str(script), method], env=env, capture_output=True, text=True,
                          timeout=400, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    found = eval(done.stdout.strip().splitlines()[-1])
    assert len(found) == 7
    for name, workers in found.items():
        assert len(workers) == 2, name
        for peak, libraries in workers:
            assert libraries == [], (name, libraries)
            assert peak < 200, (name, peak)
    print({name: round(max(p for p, _ in w)) for name, w in found.items()})
