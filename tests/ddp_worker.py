"""Run by tests/test_ddp.py under torchrun: a few DDP training steps, then dump this rank's state."""

import sys
from pathlib import Path

import torch
import torch.distributed as dist

from maskrt.training.trainer import Trainer, TrainOptions


def main() -> None:
    data, out, dump = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
    trainer = Trainer(TrainOptions(data=data, out=out, iters=3, batch_size=2, eval_every=1000, progress=False))
    result = trainer.train()
    rank = dist.get_rank()
    torch.save({"state_dict": trainer.model.state_dict(), "seen": result.seen_indices,
                "world": dist.get_world_size(), "step": result.step,
                "backend": dist.get_backend(), "device": str(next(trainer.model.parameters()).device)},
               dump / f"rank{rank}.pt")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
