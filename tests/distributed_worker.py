"""One process of the 2-process JAX test in tests/test_distributed.py (run as a script).

argv: process id (-1: a single process, no jax.distributed), coordinator port, output .npz path, and
optionally "keras-shards": keep Keras's default auto_shard_dataset=True and record the error that refuses it.
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # after the environment: the backend is chosen first

process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
keras_shards = sys.argv[4:] == ["keras-shards"]
if process_id >= 0:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2, process_id=process_id)

import keras  # noqa: E402
import numpy as np  # noqa: E402

import kseq  # noqa: E402

ROWS, BATCH, EPOCHS = 1001, 64, 2  # 1001 = 15 * 64 + 41: the last global batch does not split evenly


class Recorded(kseq.MultiInputDataset):
    """Records the ids of the real rows it serves, per epoch."""

    def __getitem__(self, index):
        batch = super().__getitem__(index)
        x, _, *w = batch
        real = x["id"][w[0] > 0] if w else x["id"]
        self.served.setdefault(self.epoch, []).append(real.ravel().tolist())
        return batch


keras.utils.set_random_seed(0)
if process_id >= 0:
    distribution = keras.distribution.DataParallel()
    if not keras_shards:
        distribution.auto_shard_dataset = False  # kseq shards: each process feeds its rows of every global batch
    keras.distribution.set_distribution(distribution)

rng = np.random.default_rng(0)
features = rng.normal(size=(ROWS, 4)).astype("float32")
data = {"x": features, "id": np.arange(ROWS, dtype="float32")[:, None],
        "y": (features @ np.array([1.0, -2.0, 0.5, 3.0], "float32"))[:, None]}
ds = Recorded(data, inputs=["x", "id"], targets="y", batch_size=BATCH, seed=3,
              shard="auto" if process_id >= 0 else None)
ds.served = {}

x_in, id_in = keras.Input((4,), name="x"), keras.Input((1,), name="id")
model = keras.Model({"x": x_in, "id": id_in}, keras.layers.Dense(1)(x_in))
model.compile(keras.optimizers.SGD(0.05), "mse")
steps = []
counter = keras.callbacks.LambdaCallback(on_epoch_end=lambda epoch, logs: steps.append(len(ds)))
if keras_shards:  # Keras 3.16 would shard kseq's shard again (NOTE [ Keras shards a PyDataset itself from 3.16 ])
    try:
        model.fit(ds, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[counter])
    except (ValueError, kseq.KseqError) as e:
        np.savez(out, error=np.array(f"{type(e).__name__}: {e}"), steps=np.array(steps), version=keras.__version__)
        sys.exit(0)
    np.savez(out, error=np.array(""), steps=np.array(steps), version=keras.__version__)
    sys.exit(0)
history = model.fit(ds, epochs=EPOCHS, shuffle=False, verbose=0, callbacks=[counter])
trained = [e for e in sorted(ds.served) if len(ds.served[e]) > 1]  # the epochs fit trained on, not its peek
np.savez(out, kernel=model.get_weights()[0], bias=model.get_weights()[1], steps=np.array(steps),
         shard=np.array([ds.shard.index, ds.shard.count]), loss=np.array(history.history["loss"]),
         **{f"served_{i}": np.array(sorted(np.concatenate(ds.served[e]))) for i, e in enumerate(trained)})
