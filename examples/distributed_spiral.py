"""The spiral of spiral.py, trained on several processes with DistributedDataParallel.

    torchrun --nproc_per_node=2 examples/distributed_spiral.py [--quick] [--out DIR]

torchrun starts one process per rank; to go past one machine, run it on each with
``--nnodes=N --node-rank=i --master-addr=HOST``. Ranks talk through nccl when every rank
has a GPU of its own, else through gloo on CPUs. Each rank draws its own batches and noise
from its own generator, and DDP averages the gradients, so two ranks with batches of 256
train like one with 512.
bridgediff's functions are plain tensor code with an explicit generator: nothing in them
changes. Rank 0 samples and draws the figure.
"""

import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

import bridgediff as bd
from _common import parse_args
from spiral import Denoiser, generate, plot, sample_spiral, train


def main():
    args = parse_args(__doc__.splitlines()[0])
    local_rank, local_world = int(os.environ["LOCAL_RANK"]), int(os.environ["LOCAL_WORLD_SIZE"])
    cuda = torch.cuda.device_count() >= local_world  # nccl needs a GPU of its own per rank
    dist.init_process_group("nccl" if cuda else "gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    dev = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(dev)

    steps, n_samples, n_timesteps = (100, 500, 20) if args.quick else (4000, 4000, 100)
    torch.manual_seed(0)  # the same initial weights on every rank
    model = DistributedDataParallel(Denoiser().to(dev), device_ids=[local_rank] if cuda else None)
    generator = torch.Generator(dev).manual_seed(1000 + rank)  # each rank its own draws

    if rank == 0:
        print(f"training for {steps} steps on {world} ranks ({dist.get_backend()})")
    train(model, steps, 512 // world, generator, verbose=rank == 0)  # DDP averages gradients

    if rank == 0:
        tracker = bd.Tracker()
        samples = generate(model.module, n_samples, n_timesteps, generator, tracker)
        plot(sample_spiral(n_samples, generator, dev), samples, tracker, args.out,
             "distributed_spiral.png")
    dist.barrier()  # every rank waits for rank 0's figure, then all leave together
    del model  # free DDP's reducer while its process group is alive (else exit can hang)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
