"""One rank of the 2-process test in test_distributed.py, started by torchrun: trains a recipe for a few steps,
then rank 0 writes every rank's per-tensor state hashes to REPORT (a JSON file outside the run directory)."""

import gc
import hashlib
import json
import sys

import torch
import torch.distributed as dist

from lowbit.convert import quantizers_of
from lowbit.distributed import teardown
from lowbit.train import TrainConfig, Trainer

recipe, out, report = sys.argv[1:4]
trainer = Trainer(
    TrainConfig(recipe=recipe, epochs=1, pretrain_epochs=1, train_subset=200, test_subset=50, out=out, progress=False)
)
result = trainer.fit()
state = {
    name: hashlib.sha256(value.detach().cpu().contiguous().numpy().tobytes()).hexdigest()
    for name, value in result.model.state_dict().items()
    if isinstance(value, torch.Tensor)
}
flags = [q._is_initialized for q in quantizers_of(result.model)]
mine = {"state": state, "flags": flags, "wrote": result.out is not None, "metrics": result.metrics["test_accuracy"]}
gathered = [None] * dist.get_world_size()
dist.all_gather_object(gathered, mine)
if dist.get_rank() == 0:
    with open(report, "w") as file:
        json.dump(gathered, file)
del trainer, result
gc.collect()  # the DistributedDataParallel wrapper goes before its process group
teardown()
