"""One process of the 2-process torch.distributed test in tests/test_distributed.py (run as a script).

argv: rank, port, output .npz path. gloo on 127.0.0.1; the dataset takes shard="auto" after
init_process_group, and every step all-reduces a counter, as a training step's gradients would be:
a process with more steps than the other would wait forever (the test bounds it in time).
"""

import os
import sys
from datetime import timedelta

os.environ["KERAS_BACKEND"] = "torch"

import numpy as np
import torch
import torch.distributed as dist

import kseq

rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2,
                        timeout=timedelta(seconds=60))
try:
    rows = 1001  # 15 full global batches of 64 and one of 41: the last does not split evenly
    data = {"id": np.arange(rows, dtype="float32"), "y": np.ones(rows, "float32")}
    ds = kseq.MultiInputDataset(data, inputs="id", targets="y", batch_size=64, seed=3, shard="auto")
    served, steps, lengths = {}, [], []
    for epoch in range(2):
        step = torch.zeros(1)
        for i in range(len(ds)):
            x, _y, *w = ds[i]  # one process (shard None) has no padding weights
            real = x["id"][w[0] > 0] if w else x["id"]
            served.setdefault(epoch, []).extend(real.astype(int).tolist())
            one = torch.ones(1)
            dist.all_reduce(one)  # both processes take this step together
            step += one / 2
        steps.append(int(step.item()))
        lengths.append(len(ds))
        ds.on_epoch_end()
    np.savez(out, shard=np.array([ds.shard.index, ds.shard.count]), steps=np.array(steps),
             lengths=np.array(lengths), **{f"served_{e}": np.array(sorted(v)) for e, v in served.items()})
finally:
    dist.destroy_process_group()
