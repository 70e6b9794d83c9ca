"""Property-based fuzzing of every public constructor (the classes in ``kseq.__all__``) and of ``pack``/``inspect``.

The oracle, for any input: the call succeeds, or raises a ``KseqError`` subclass (or a builtin ``TypeError`` /
``IndexError`` that kseq documents for indices and types) whose message says what was expected or received (a
``SourceError``, about a missing or corrupt file, names the file instead); never a raw numpy, h5py or pickle
error, never a hang (each call runs under a 20 s alarm). Each constructor starts from a valid call and has one
or two of its arguments replaced by junk.
"""

import contextlib
import inspect
import re
import signal
import tempfile
import warnings
from pathlib import Path

import h5py
import keras
import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import kseq
from kseq.cli import inspect as inspect_file
from kseq.errors import KseqError, SourceError

EXAMPLES = 12  # per constructor: about 20 constructors and pack/inspect stay well under a minute together
HANG_S = 20
SETTINGS = settings(max_examples=EXAMPLES, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
WORDY = re.compile(r"expected|received", re.IGNORECASE)

_JUNK_VALUES = [
    None, True, False, 0, -1, 1, 7, 2**63, -(2**31), 0.5, -0.0, float("nan"), float("inf"), "", "x", "block",
    "label", b"\x00\xff", [], [0], [1, 2, 3], ["x", "y"], (), (0, 1), {}, {"x": 1}, {"x": "y"}, {0: 1.0},
    {"x": np.zeros(3)}, object(), np.int64(3), np.float32(2.5), np.bool_(True),
    np.zeros(0), np.zeros((0, 3)), np.zeros((3, 0)), np.arange(5), np.ones((4, 2), "float32"),
    np.array(["a", "b"]), np.array([None, 1], dtype=object), np.array(3.0), np.full(4, np.nan),
    pd.DataFrame({"x": [1, 2]}), pd.DataFrame(), lambda: None, print, Ellipsis,
]
JUNK = st.one_of(
    st.sampled_from(_JUNK_VALUES),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
    st.lists(st.integers(-5, 5), max_size=5),
    st.dictionaries(st.text(max_size=3), st.integers(-3, 3), max_size=3),
)


def _hang(signum, frame):
    raise TimeoutError(f"a call took longer than {HANG_S} s: a hang")


class Refused(Exception):
    """The call refused its arguments the way the oracle asks; ``refusal`` is kseq's error."""

    def __init__(self, refusal):
        super().__init__(str(refusal))
        self.refusal = refusal


def check_call(fn, *args, **kwargs):
    """Run ``fn`` under the oracle (module docstring); the result, or None when it refused."""
    try:
        return call_or_refuse(fn, *args, **kwargs)
    except Refused:
        return None


def call_or_refuse(fn, *args, **kwargs):
    """Run ``fn`` under the oracle: the result if it accepted, ``Refused`` if it refused well, else AssertionError."""
    previous = signal.signal(signal.SIGALRM, _hang)
    signal.alarm(HANG_S)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = fn(*args, **kwargs)
    except SourceError as e:  # a file that is missing or corrupt: its message names the file, there is no "expected"
        raise Refused(e) from e
    except (KseqError, TypeError, IndexError) as e:
        if not WORDY.search(str(e)):
            raise AssertionError(f"{type(e).__name__} without expected/received: {e}") from e
        raise Refused(e) from e
    except TimeoutError:
        raise
    except Exception as e:
        raise AssertionError(f"raw {type(e).__module__}.{type(e).__name__} escaped: {e}") from e
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    with contextlib.suppress(Exception):
        result.close()
    return result


# -- valid starting points ---------------------------------------------------------------------------------

WORK = Path(tempfile.mkdtemp(prefix="kseq-fuzz-"))


def _rows(n=12):
    rng = np.random.default_rng(0)
    return {"x": rng.normal(size=(n, 3)).astype("float32"), "label": np.arange(n) % 3, "t": np.arange(n) % 2}


def _npy_files():
    paths = []
    for i in range(3):
        path = WORK / f"row{i}.npy"
        if not path.exists():
            np.save(path, np.full((2, 2), i, "float32"))
        paths.append(str(path))
    return paths


def _h5():
    path = WORK / "base.h5"
    if not path.exists():
        with h5py.File(path, "w") as f:
            for name, array in _rows().items():
                f.create_dataset(name, data=array)
    return str(path)


def _model():
    inputs = keras.Input((3,), name="x")
    return keras.Model(inputs, keras.layers.Dense(1, name="t")(inputs))


def _dataset():
    return kseq.MultiInputDataset(_rows(), inputs="x", targets="t", batch_size=4, seed=0)


def _generator():
    def batches():
        while True:
            yield np.zeros((2, 3), "float32"), np.zeros((2, 1), "float32")

    return batches()


def _structure():
    return kseq.ModelStructure.of(_model())


def _class_index():
    from kseq.samplers import ClassIndex

    return ClassIndex(np.arange(12) % 3)


def _profile_args():
    return {"name": "p", "mode": "inline", "workers": 1, "batches": 2, "passes": 1, "batch_bytes": 8,
            "first_batch_s": 0.1, "delivered_s": (0.1, 0.1)}


# name -> () -> (positional args, keyword args) of one valid call
BASELINES = {
    "ArraySource": lambda: ((_rows(),), {}),
    "BackupAndRestore": lambda: ((str(WORK / "backup"), _dataset()), {}),
    "BlockShuffleSampler": lambda: ((100,), {"batch_size": 8, "block_size": 10, "seed": 0}),
    "CaptionDataset": lambda: (
        (np.zeros((3, 4), "float32"), [[[1, 2, 3]], [[1, 2]], [[4, 5, 6, 7]]]), {"batch_size": 2, "seed": 0}
    ),
    "CheckReport": lambda: ((_structure(),), {}),
    "DataFrameSource": lambda: ((pd.DataFrame({"a": [1, 2, 3], "b": [0.5, 1.5, 2.5]}),), {}),
    "Dataset": lambda: ((_rows(),), {"batch_size": 4, "seed": 0}),
    "FileSource": lambda: ((_npy_files(),), {"load": "npy"}),
    "GeneratorDataset": lambda: ((_generator(), 3), {}),
    "HDF5Source": lambda: ((_h5(),), {}),
    "ModelStructure": lambda: ((), {"input_kind": "dict", "inputs": (), "output_kind": "single", "outputs": ()}),
    "ModelView": lambda: ((_dataset(), _model()), {}),
    "MultiInputDataset": lambda: ((_rows(),), {"inputs": "x", "targets": "t", "batch_size": 4, "seed": 0}),
    "PKSampler": lambda: ((_class_index(),), {"batch_size": 6, "classes_per_batch": 3, "seed": 0}),
    "Profile": lambda: ((), _profile_args()),
    "ResetStates": lambda: ((), {}),
    "SequentialSampler": lambda: ((10,), {"batch_size": 3}),
    "ShuffleSampler": lambda: ((10,), {"batch_size": 3, "seed": 0}),
    "SiamesePairDataset": lambda: ((_rows(),), {"label": "label", "fields": "x", "batch_size": 4, "seed": 0}),
    "StatefulSequenceDataset": lambda: ((np.arange(40.0),), {"batch_size": 2, "timesteps": 4}),
    "TripletDataset": lambda: ((_rows(),), {"label": "label", "fields": "x", "batch_size": 3, "seed": 0}),
    "Vocabulary": lambda: ((["a", "b", "c"],), {}),
}
NOT_CONSTRUCTED = {"Source"}  # a Protocol: nothing to construct

# Raw errors this fuzzing found in constructors whose files the fuzz's author does not own (reported in issue 14's
# closing note). Marked xfail, not strict: the first fix turns them into passes; then remove the entry.
KNOWN: dict[str, str] = {}  # constructors known to let a raw error out: none left


def public_classes():
    names = []
    for name in kseq.__all__:
        value = getattr(kseq, name)
        if inspect.isclass(value) and not issubclass(value, BaseException) and name not in NOT_CONSTRUCTED:
            names.append(name)
    return names


def _parameters(cls, args, kwargs):
    """Names of the constructor's arguments: positional ones as indices, the rest by keyword."""
    signature = inspect.signature(cls)
    names = list(range(len(args)))
    for name, parameter in signature.parameters.items():
        if parameter.kind in (parameter.KEYWORD_ONLY, parameter.POSITIONAL_OR_KEYWORD) and name not in (
            list(signature.parameters)[: len(args)]
        ):
            names.append(name)
    return names


def test_every_public_class_has_a_fuzz_baseline():
    """A class added to kseq.__all__ joins the fuzzing here: give it a valid call in BASELINES."""
    assert sorted(set(public_classes()) - set(BASELINES)) == []


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_the_baseline_call_is_valid(name):
    args, kwargs = BASELINES[name]()
    assert check_call(getattr(kseq, name), *args, **kwargs) is not None or name in ("ResetStates",)


def _fuzzed(name):
    if name in KNOWN:
        return pytest.param(name, marks=pytest.mark.xfail(reason=f"known, not yet fixed: {KNOWN[name]}", strict=False))
    return name


@pytest.mark.parametrize("name", [_fuzzed(name) for name in sorted(BASELINES)])
@SETTINGS
@given(data=st.data())
def test_constructors_refuse_junk_with_a_kseq_error(name, data):
    cls = getattr(kseq, name)
    args, kwargs = BASELINES[name]()
    targets = _parameters(cls, args, kwargs)
    if name == "BackupAndRestore":  # a junk string is a directory it would create: keep its path
        targets = [t for t in targets if t != 0]
    chosen = data.draw(st.lists(st.sampled_from(targets), min_size=1, max_size=2, unique=True), label="replaced")
    args = list(args)
    for target in chosen:
        junk = data.draw(JUNK, label=str(target))
        if isinstance(target, int):
            args[target] = junk
        else:
            kwargs[target] = junk
    check_call(cls, *args, **kwargs)


# -- pack and inspect ----------------------------------------------------------------------------------------

PACK_OPTIONS = ["chunks", "compression", "compression_opts", "length", "dtypes", "overwrite", "progress"]


@SETTINGS
@given(data=st.data())
def test_pack_refuses_junk_with_a_kseq_error(data):
    fields = data.draw(st.one_of(JUNK, st.just(_rows()), st.builds(lambda j: {"x": j}, JUNK)), label="fields")
    options = {"overwrite": True, "progress": False}
    for option in data.draw(st.lists(st.sampled_from(PACK_OPTIONS), max_size=2, unique=True), label="options"):
        options[option] = data.draw(JUNK, label=option)
    check_call(kseq.pack, WORK / "packed.h5", fields, **options)


@SETTINGS
@given(content=st.one_of(st.binary(max_size=64), st.sampled_from([b"\x89HDF\r\n\x1a\n" + bytes(64), b""])))
def test_inspect_refuses_junk_files_with_a_kseq_error(content):
    path = WORK / "junk.h5"
    path.write_bytes(content)
    check_call(inspect_file, path)


def test_inspect_of_a_missing_file_is_a_kseq_error():
    """A missing file is a SourceError that names the file (not a raw OSError, not a report of nothing)."""
    with pytest.raises(Refused) as refused:
        call_or_refuse(inspect_file, WORK / "missing.h5")
    assert isinstance(refused.value.refusal, SourceError)
    assert "missing.h5" in str(refused.value.refusal)


# -- refusal outside each documented domain -------------------------------------------------------------------


def _int(value) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _real(value) -> bool:
    return (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
            and bool(np.isfinite(value)))


def _int_at_least(low, optional=False):
    return lambda v: (optional and v is None) or (_int(v) and v >= low)


def _class_weights(v) -> bool:
    """{class id: finite weight >= 0}, non-empty (README: class_weight), for the baseline's one target."""
    return (isinstance(v, dict) and bool(v) and all(_int(k) and k >= 0 for k in v)
            and all(_real(w) and w >= 0 for w in v.values()))


# argument -> what its docstring / the README promise to accept; anything else must be refused at construction.
DOMAINS = {
    "batch_size": _int_at_least(1),
    "seed": _int_at_least(0, optional=True),
    "workers": _int_at_least(0),
    "max_queue_size": _int_at_least(1),
    "timesteps": _int_at_least(1),
    "block_size": _int_at_least(1),
    "window": _int_at_least(1),
    "n": _int_at_least(0),
    "pairs_per_epoch": _int_at_least(1, optional=True),
    "triplets_per_epoch": _int_at_least(1, optional=True),
    "pad_to_multiple": _int_at_least(1),
    "bucket_window": _int_at_least(1),
    "max_length": _int_at_least(2, optional=True),
    "target_offset": _int_at_least(0),
    "timeout": lambda v: v is None or (_real(v) and v > 0),
    "positive_fraction": lambda v: _real(v) and 0 <= v <= 1,
    "captions_per_image": lambda v: v in ("one", "all") if isinstance(v, str) else False,
    "weighting": lambda v: v is None or (v in ("mean", "mask") if isinstance(v, str) else False),
    # {} is no class weights, as None is
    "class_weight": lambda v: v is None or (isinstance(v, dict) and not v) or _class_weights(v),
}
DOMAIN_CASES = [
    ("BlockShuffleSampler", "batch_size"), ("BlockShuffleSampler", "block_size"), ("BlockShuffleSampler", "window"),
    ("BlockShuffleSampler", "seed"), ("ShuffleSampler", "n"), ("ShuffleSampler", "seed"),
    ("SequentialSampler", "batch_size"),
    ("Dataset", "batch_size"), ("Dataset", "seed"), ("Dataset", "workers"), ("Dataset", "max_queue_size"),
    ("Dataset", "timeout"),
    ("MultiInputDataset", "batch_size"), ("MultiInputDataset", "class_weight"),
    ("CaptionDataset", "captions_per_image"), ("CaptionDataset", "weighting"), ("CaptionDataset", "max_length"),
    ("CaptionDataset", "pad_to_multiple"), ("CaptionDataset", "bucket_window"),
    ("SiamesePairDataset", "positive_fraction"), ("SiamesePairDataset", "pairs_per_epoch"),
    ("TripletDataset", "triplets_per_epoch"),
    ("StatefulSequenceDataset", "timesteps"), ("StatefulSequenceDataset", "target_offset"),
]
_BAD_NUMBERS = st.sampled_from([0, -1, 1.5, 2.0, float("nan"), float("inf"), -float("inf"), True, np.bool_(False),
                                "1", None, np.float64(1.0), -(2**40)])
# class weights whose keys are the baseline's classes {0, 1} and whose values are anything: nan, negatives, inf ...
_CLASS_WEIGHTS = st.dictionaries(st.sampled_from([0, 1]), st.one_of(
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([float("nan"), -1.0, -0.5, float("inf"), "1",
                                                                     None, True])), min_size=2)
DOMAIN_SETTINGS = settings(max_examples=40, deadline=None, derandomize=True,
                           suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])


@pytest.mark.parametrize(("name", "argument"), DOMAIN_CASES)
@DOMAIN_SETTINGS
@given(data=st.data())
def test_arguments_outside_their_domain_are_refused_at_construction(name, argument, data):
    """A value outside the documented domain of an argument is refused with expected/received, never kept."""
    in_domain = DOMAINS[argument]
    junk = st.one_of(_BAD_NUMBERS, JUNK, _CLASS_WEIGHTS if argument == "class_weight" else st.nothing())
    value = data.draw(junk.filter(lambda v: not in_domain(v)), label=argument)
    cls = getattr(kseq, name)
    args, kwargs = BASELINES[name]()
    positional = list(inspect.signature(cls).parameters)[: len(args)]
    if argument in positional:
        args = (*args[: positional.index(argument)], value, *args[positional.index(argument) + 1 :])
    else:
        kwargs[argument] = value
    with pytest.raises(Refused) as refused:
        call_or_refuse(cls, *args, **kwargs)  # an accepted call returns (and is closed) here: the test fails
    assert isinstance(refused.value.refusal, (KseqError, TypeError)), refused.value.refusal


@pytest.mark.parametrize("weight", [float("nan"), -1.0, float("inf")])
def test_a_class_weight_that_is_not_a_finite_number_at_least_0_is_refused_with_the_fix(weight):
    """Found by the fuzz above: class_weight={0: nan, ...} and {0: -1.0, ...} were kept, silently."""
    args, kwargs = BASELINES["MultiInputDataset"]()
    refusal = (r"class_weight\['t'\]\[0\] must be a finite number >= 0\. "
               r"Received class_weight\['t'\]\[0\]=(nan|-1\.0|inf)\. ")
    with pytest.raises(kseq.StructureError, match=refusal + "A class weight multiplies the loss"):
        kseq.MultiInputDataset(*args, **kwargs, class_weight={0: weight, 1: 1.0})
