"""The training loop and what it runs on: the processes (``torchrun`` sets
WORLD_SIZE/RANK/LOCAL_RANK; gloo on CPU, nccl on GPU), the device, the model
of each implementation (``seqcls_fast`` or the ``native`` baseline), the
optimizer, the schedule (:func:`lr_factor`: warmup, then cosine) and the
budget (:func:`epoch_count`: optimizer steps, not epochs), and
:func:`train_model` (DistributedDataParallel when there is more than one
process; the epoch chosen on a validation split when one is given).
"""
import math
import os
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from seqcls_fast.classifier import LSTMClassifier
from seqcls_fast.data import LengthBucketSampler, collate
from seqcls_fast.reference import NativeLSTMClassifier

from .augment import AugmentingCollate
from .selection import EpochSelector, validation_scores
from .sources import DataError


def build_model(impl, config):
    """The classifier of ``impl`` ("native": the --baseline, else seqcls_fast's)
    from its options. The native one (seqcls_fast.reference) is sf.LSTMClassifier
    on nn.LSTM with packing and plain-PyTorch pooling: same parameter names and
    init order, so the same seed gives the same weights and checkpoints load
    into either."""
    cls = NativeLSTMClassifier if impl == "native" else LSTMClassifier
    return cls(**config)


def choose_device(spec, local_rank, distributed):
    if spec == "auto":
        spec = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(spec)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DataError(f"--device {spec}: CUDA is not available")
        if distributed and device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def make_optimizer(args, params):
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    cls = torch.optim.AdamW if args.optimizer == "adamw" else torch.optim.Adam
    return cls(params, lr=args.lr, weight_decay=args.weight_decay)


def setup_processes(args):
    """Device, threads and (under torchrun) the process group of this process:
    -> (device, world size, rank)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = choose_device(args.device, local_rank, world > 1)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif world > 1 and device.type == "cpu":
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group(backend)
    return device, world, rank


def lr_factor(step, total, warmup, schedule):
    """Learning-rate multiplier at optimizer step ``step`` of ``total``: a
    linear warmup over the first ``warmup`` steps, then ``schedule``
    ("cosine": down to 0 at ``total``; "constant": 1)."""
    if step < warmup:
        return (step + 1) / warmup
    if schedule == "constant":
        return 1.0
    progress = min(step - warmup, total - warmup) / max(1, total - warmup)
    return 0.5 * (1 + math.cos(math.pi * progress))


def epoch_count(args, steps_per_epoch):
    """Epochs to run: ``--epochs`` when given, else enough to reach the
    ``--steps`` budget of optimizer steps (so a set of 40 sequences trains as
    many steps as one of 4000)."""
    if args.epochs is not None:
        return args.epochs
    return max(1, math.ceil(args.steps / steps_per_epoch))


def train_model(impl, args, config, train_set, device, dist_info, log, val_set=None, seed=None):
    """Train one model with seed ``seed`` (default ``args.seed``); when
    ``val_set`` is given, score it after every epoch and end with the weights
    of the best epoch (:class:`.selection.EpochSelector`). Returns (model
    (unwrapped), history dict)."""
    world, rank = dist_info
    seed = args.seed if seed is None else seed
    torch.manual_seed(seed)  # same initial weights on every rank and for both impls
    model = build_model(impl, config).to(device)
    net = model
    if world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    sampler = LengthBucketSampler(train_set.lengths, args.batch_size, shuffle=True,
                                  seed=seed, num_replicas=world, rank=rank)
    # each rank its own augmentation draws (seed * prime + rank: distinct across seeds too)
    augment = (AugmentingCollate(args.stretch, args.scale, seed=seed * 1009 + rank)
               if args.stretch > 0 or args.scale > 0 else collate)
    loader = torch.utils.data.DataLoader(train_set, batch_sampler=sampler, collate_fn=augment)
    optimizer = make_optimizer(args, model.parameters())
    epochs = epoch_count(args, len(sampler))
    total_steps = epochs * len(sampler)
    warmup = int(round(args.warmup * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step, total_steps, warmup, args.schedule))
    progress = None
    if not args.no_progress and rank == 0:
        try:
            from tqdm.auto import tqdm as progress
        except ImportError:
            progress = None
    selector = (EpochSelector(window=max(1, int(round(args.select_window * epochs))))
                if val_set is not None and len(val_set) else None)
    epoch_times, epoch_losses, val_acc, val_loss = [], [], [], []
    for epoch in range(epochs):
        sampler.set_epoch(epoch)
        net.train()
        bar = (progress(total=len(sampler), desc=f"{impl} epoch {epoch + 1}/{epochs}",
                        leave=False, disable=None, dynamic_ncols=True) if progress else None)
        # (summed loss, sequences) on the device: no host sync per step, and
        # what all_reduce takes on nccl too.
        loss_sum = torch.zeros(2, dtype=torch.float64, device=device)
        start = time.perf_counter()
        for x, lengths, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            if args.noise > 0:  # padding stays 0: the model never reads it anyway
                x = x + args.noise * torch.randn_like(x)
            logits = net(x, lengths.to(device))
            loss = F.cross_entropy(logits, y, label_smoothing=args.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if args.clip_grad > 0:
                nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad)
            optimizer.step()
            scheduler.step()
            loss_sum[0] += loss.detach().double() * len(y)
            loss_sum[1] += len(y)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        seconds = time.perf_counter() - start
        if bar is not None:
            bar.close()
        if world > 1:
            torch.distributed.all_reduce(loss_sum)
        mean_loss = float(loss_sum[0] / loss_sum[1])
        epoch_times.append(seconds)
        epoch_losses.append(mean_loss)
        scored = ""
        if selector is not None:  # every rank scores the whole split: same choice everywhere
            accuracy, v_loss = validation_scores(model, val_set, device)
            selector.update(epoch, accuracy, v_loss, model)
            val_acc.append(accuracy)
            val_loss.append(v_loss)
            scored = f"  val acc {accuracy:.4f}  val loss {v_loss:.4f}"
        if epochs <= 50 or (epoch + 1) % math.ceil(epochs / 50) == 0 or epoch + 1 == epochs:
            log(f"{impl:12s} epoch {epoch + 1:4d}/{epochs}  loss {mean_loss:.4f}{scored}  "
                f"{seconds:6.2f} s")
    history = {"epoch_seconds": epoch_times, "epoch_loss": epoch_losses,
               "train_seconds": float(sum(epoch_times)),
               "mean_epoch_seconds": float(np.mean(epoch_times)),
               "steps_per_epoch": len(sampler), "epochs": epochs, "steps": total_steps,
               "warmup_steps": warmup, "seed": seed}
    if selector is not None:
        selector.restore(model)
        history.update(val_accuracy=val_acc, val_loss=val_loss, chosen_epoch=selector.epoch + 1,
                       chosen_val_accuracy=selector.accuracy, chosen_val_loss=selector.loss,
                       chosen_val_score=selector.score, select_window=selector.window)
    else:
        history["chosen_epoch"] = epochs  # no validation split: the last epoch
    return model, history
