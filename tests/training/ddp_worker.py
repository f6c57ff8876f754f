"""Data-parallel worker for test_distributed.py, launched as
`python -m torch.distributed.run --nproc-per-node 2 ddp_worker.py OUT_DIR` (gloo, CPU).

Trains twice and saves each rank's final weights to OUT_DIR:
1. the tiny batch-norm-free two-exit MLP on 16 samples, batch 8 per rank, 3 epochs, so each
   epoch is one step on the whole set and must equal a single-process step with batch 16;
2. `small_cnn` (with batch-norm) on sklearn digits, built by the Trainer from its config;
3. every dynamic model of `DYNAMIC_MODELS` for 3 steps on digits: DDP runs without
   `find_unused_parameters`, so a parameter left without a gradient (a gate path not
   taken) would fail the second step.
"""
import os
import sys

import torch
import torch.distributed as dist
from tiny import DYNAMIC_MODELS, tiny_bundle, tiny_model

from dynamicnets.training import TrainConfig, Trainer, cleanup, init_distributed



def main(out_dir: str) -> None:
    torch.set_num_threads(1)
    rank = int(os.environ["RANK"])

    # 1. The Trainer joins the process group itself (as under `torchrun -m dynamicnets train`).
    tiny = TrainConfig(name="tiny", model="tiny", data="synthetic", epochs=3, batch_size=8, lr=0.1,
                       device="cpu", out_dir=out_dir, progress=False, augment=False)
    trainer = Trainer(tiny, model=tiny_model(seed=0), bundle=tiny_bundle(n_train=16, n_val=8))
    assert trainer.world_size == 2 and trainer.rank == rank
    result = trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "result": result}, f"{out_dir}/tiny_rank{rank}.pt")
    # 2. A second Trainer in the same process reuses the group (it cannot be created twice).
    assert dist.is_initialized() and init_distributed(backend="gloo") == (rank, 2, rank)
    cnn = TrainConfig(name="cnn", model="small_cnn", model_args={"width": 4}, data="digits", epochs=2,
                      batch_size=32, max_steps_per_epoch=3, device="cpu", out_dir=out_dir, progress=False)
    trainer = Trainer(cnn)
    result = trainer.fit()
    torch.save({"model": trainer.model.state_dict(), "result": result}, f"{out_dir}/cnn_rank{rank}.pt")

    # 3. Dynamic models: gates, routers and halting units all get gradients in training mode.
    for name, args in DYNAMIC_MODELS.items():
        config = TrainConfig(name=name, model=name, model_args=args, data="digits", epochs=1, batch_size=16,
                             max_steps_per_epoch=3, lr=0.05, device="cpu", out_dir=out_dir, progress=False)
        trainer = Trainer(config)
        result = trainer.fit()
        torch.save({"model": trainer.model.state_dict(), "result": result}, f"{out_dir}/{name}_rank{rank}.pt")

    cleanup()
    assert not dist.is_initialized()


if __name__ == "__main__":
    main(sys.argv[1])
