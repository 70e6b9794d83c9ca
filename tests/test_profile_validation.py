"""Issue 24, item 9: the system time of a Siamese fit's validation on TensorFlow is page faults that fit
takes on any PyDataset (held batches too), and kseq.profile names them and the fix (tune_malloc).

Where they come from: TensorFlow's step takes its buffers from glibc, which returns them to the kernel after
TensorFlow's first fit, unless TensorFlow's oneDNN ops are on, which pool their own. TensorFlow turns oneDNN on by
default only on CPUs with AVX-512 VNNI, AMX and the like: on such a CPU the held batches here took 3-13 faults a
step, with ``TF_ENABLE_ONEDNN_OPTS=0`` 910, and profile advised nothing there (nothing to fix). The test turns
oneDNN off, so that every CPU runs what the others run by default."""

import sys

import pytest
from conftest import malloc_runs

_SIAMESE_VALIDATION = """
import sys
import numpy as np, keras, kseq

if sys.argv[1] == "tuned":
    kseq.tune_malloc()
rng = np.random.default_rng(0)
data = {"image": rng.random((512, 28, 28, 1), dtype=np.float32), "label": np.arange(512) % 10}
val = kseq.SiamesePairDataset(data, batch_size=16, seed=1, shuffle=False)
tower = keras.Sequential([keras.Input((28, 28, 1)), keras.layers.Conv2D(4, 5), keras.layers.Flatten(),
                          keras.layers.Dense(8)])
left, right = keras.Input((28, 28, 1)), keras.Input((28, 28, 1))   # unnamed, as in the keras.io example
model = keras.Model([left, right], keras.layers.Dense(1, activation="sigmoid")(
    keras.ops.abs(tower(left) - tower(right))))
model.compile("rmsprop", "binary_crossentropy")
p = kseq.profile(val, model=model, batches=16, epochs=2)  # a fresh process: no fit has run before
print(round(p.fit_page_faults), round(p.fit_held_page_faults), any("tune_malloc" in line for line in p.advice))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_profile_counts_the_faults_fit_takes_even_on_held_batches():
    """The faults come with fit on any PyDataset, not with the dataset: profile shows them on the held batches
    and advises tune_malloc, which removes them."""
    seen = {}
    for mode, words in malloc_runs(_SIAMESE_VALIDATION, TF_ENABLE_ONEDNN_OPTS="0").items():
        beyond_held, held, advised = words[-3:]
        seen[mode] = (int(beyond_held), int(held), advised == "True")
    batch_pages = 2 * 16 * 28 * 28 * 4 / 4096  # the pages of one batch's two sides
    assert seen["default"][1] > 2 * batch_pages  # through fit, even on held batches
    assert seen["default"][0] < seen["default"][1] / 4  # the dataset adds little beyond the held batches
    assert seen["default"][2]
    assert seen["tuned"][1] < seen["default"][1] / 10
    assert not seen["tuned"][2]
