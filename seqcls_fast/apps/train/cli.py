"""The ``seqcls-fast train`` command line: its options (:func:`parse_args`)
and the run (:func:`main`): set up the processes, load and check the data,
then either evaluate a ``--checkpoint`` or train each implementation, report,
save ``model.pt`` and write ``metrics.json``.
"""
import argparse
import os
import platform
import sys
import time

import torch

from seqcls_fast.data import SequenceDataset
from .checkpoint import (load_checkpoint, model_from_checkpoint, prepare_test_split,
                         save_checkpoint)
from .loop import setup_processes, train_model
from .metrics import evaluate, format_report, summarize_runs, write_json
from .plots import write_plots
from .selection import stratified_split
from .sources import (KNOWN_DATASETS, NPZ_LAYOUT, DataError, add_data_arguments, encode_labels,
                      fit_standardization, load_checked_data, standardize)

# Run settings recorded in metrics.json under "optim".
OPTIM_KEYS = ("optimizer", "lr", "weight_decay", "schedule", "warmup", "clip_grad", "steps",
              "epochs", "batch_size", "val_fraction", "select_window", "seed", "seeds",
              "label_smoothing", "noise", "stretch", "scale")


def parse_args(argv):
    p = argparse.ArgumentParser(
        prog="seqcls-fast train",
        description="Train an LSTM classifier (seqcls_fast kernels) on variable-length "
                    "sequences and report test accuracy, per-class precision/recall/F1 and the "
                    "confusion matrix. Runs under torchrun --nproc_per_node N with "
                    "DistributedDataParallel.",
        formatter_class=argparse.RawDescriptionHelpFormatter, epilog=NPZ_LAYOUT)
    add_data_arguments(
        p, dataset_help=f"a UEA set through aeon ({', '.join(KNOWN_DATASETS)} ship offline)",
        data_help="your data: X_TRAIN.ts (X_TEST.ts beside it), train.ts test.ts, or a .npz "
                  "(layout below)")
    m = p.add_argument_group("model")
    m.add_argument("--cell", choices=("lstm", "gru"), default="lstm",
                   help="the recurrent cell: sf.LSTM or sf.GRU (nn.GRU with --baseline native)")
    m.add_argument("--hidden-size", type=int, default=128)
    m.add_argument("--num-layers", type=int, default=1)
    m.add_argument("--bidirectional", action=argparse.BooleanOptionalAction, default=True)
    m.add_argument("--dropout", type=float, default=0.5,
                   help="before the head (and between LSTM layers)")
    m.add_argument("--pooling", choices=("attention", "mean", "last"), default="attention")
    m.add_argument("--attn-dim", type=int, default=None,
                   help="additive attention width (default: dot-product attention)")
    o = p.add_argument_group("optimization")
    o.add_argument("--optimizer", choices=("adam", "adamw", "sgd"), default="adamw")
    o.add_argument("--lr", type=float, default=3e-3)
    o.add_argument("--weight-decay", type=float, default=0.05)
    o.add_argument("--schedule", choices=("cosine", "constant"), default="cosine",
                   help="learning-rate schedule after the warmup, to the last step")
    o.add_argument("--warmup", type=float, default=0.05,
                   help="fraction of the steps with a linear learning-rate warmup")
    o.add_argument("--label-smoothing", type=float, default=0.1)
    o.add_argument("--noise", type=float, default=0.0,
                   help="std of Gaussian noise added to the (standardized) training inputs")
    o.add_argument("--stretch", type=float, default=0.3,
                   help="augmentation: each training sequence resampled to exp(u) times its "
                        "length, u uniform in [-stretch, stretch] (0: off)")
    o.add_argument("--scale", type=float, default=0.1,
                   help="augmentation: each training sequence's channels multiplied by "
                        "1 + scale * N(0, 1) (0: off)")
    o.add_argument("--clip-grad", type=float, default=1.0, help="max grad norm (0: off)")
    o.add_argument("--steps", type=int, default=1500,
                   help="optimizer steps to train (rounded up to whole epochs), whatever the "
                        "set's size")
    o.add_argument("--epochs", type=int, default=None,
                   help="train this many epochs instead of a --steps budget")
    o.add_argument("--val-fraction", type=float, default=0.2,
                   help="share of each class held out of the train split (seeded by the run's "
                        "seed) to choose the epoch; the test split is read once, at the end. "
                        "0: no validation, keep the last epoch")
    o.add_argument("--select-window", type=float, default=0.05,
                   help="the epoch is chosen by the mean validation accuracy over a window of "
                        "this fraction of the epochs ending at it (at least 1 epoch)")
    o.add_argument("--batch-size", type=int, default=16,
                   help="per process (the global batch is this times the number of processes)")
    o.add_argument("--seed", type=int, default=0, help="seed of the first run")
    o.add_argument("--seeds", type=int, default=1,
                   help="runs with seeds --seed, --seed+1, ...; metrics.json gives their mean "
                        "and standard deviation")
    r = p.add_argument_group("run")
    r.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:N")
    r.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads per process (default 1: the per-step matrices of a "
                        "sequence classifier are small, and on a busy CPU more OpenMP threads "
                        "can make training many times slower; 0 keeps torch's default)")
    r.add_argument("--baseline", choices=("native",), default=None,
                   help="also run the same recipe with nn.LSTM + pack_padded_sequence")
    r.add_argument("--checkpoint", default=None,
                   help="evaluate this saved model.pt on the test split; no training")
    r.add_argument("--out", default=None, help="output folder (default out/train/<name>)")
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    for name in ("hidden_size", "num_layers", "steps", "epochs", "batch_size", "seeds"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1")
    if not 0.0 <= args.dropout < 1.0:
        p.error("--dropout must be in [0, 1)")
    if args.lr <= 0:
        p.error("--lr must be > 0")
    for name in ("noise", "stretch", "scale", "weight_decay", "label_smoothing"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if not 0.0 <= args.warmup < 1.0:
        p.error("--warmup must be in [0, 1)")
    if not 0.0 <= args.select_window <= 1.0:
        p.error("--select-window must be in [0, 1]")
    if not 0.0 <= args.val_fraction < 1.0:
        p.error("--val-fraction must be in [0, 1)")
    return args


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    threads = torch.get_num_threads()
    try:
        return _run(args, argv)
    except DataError as e:
        print(f"seqcls-fast train: error: {e}", file=sys.stderr)
        return 2
    finally:
        torch.set_num_threads(threads)  # main() may run inside a bigger program
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _run(args, argv):
    started = time.perf_counter()
    device, world, rank = setup_processes(args)
    log = (lambda msg: print(msg, flush=True)) if rank == 0 else (lambda msg: None)
    name, train_split, test_split, classes, channels = load_checked_data(args)
    out_dir = args.out or os.path.join("out", "train", name)
    if args.checkpoint:
        _evaluate_checkpoint(args, argv, name, test_split, channels, out_dir, device, rank,
                             log)
        return 0
    _train_and_evaluate(args, argv, name, train_split, test_split, classes, channels, out_dir,
                        device, (world, rank), log, started)
    if world > 1:
        torch.distributed.barrier()
    return 0


def _evaluate_checkpoint(args, argv, name, test_split, channels, out_dir, device, rank, log):
    """--checkpoint: the saved model on the test split; writes eval_metrics.json."""
    ckpt = load_checkpoint(args.checkpoint)
    classes = ckpt["classes"]
    test_set = SequenceDataset(*prepare_test_split(ckpt, args.checkpoint, test_split, channels))
    model = model_from_checkpoint(ckpt).to(device)
    metrics = evaluate(model, test_set, device, classes)
    log(format_report(name, ckpt["impl"], metrics, classes))
    result = {"command": "python -m seqcls_fast train " + " ".join(argv), "dataset": name,
              "checkpoint": args.checkpoint, "evaluation_only": True, "classes": classes,
              "n_test": len(test_set), "model": ckpt["model"], "impl": ckpt["impl"],
              "test": metrics}
    if rank == 0:
        write_json(out_dir, "eval_metrics.json", result, log)


def _train_and_evaluate(args, argv, name, train_split, test_split, classes, channels, out_dir,
                        device, dist_info, log, started):
    """For each seed and implementation: hold out the seed's validation split,
    train, choose the epoch on validation, then evaluate the test split once
    and save the checkpoint. Then the summary over seeds, the comparison when
    there are two implementations, metrics.json and the plots."""
    world, rank = dist_info
    (tr_x, tr_y), (te_x, te_y) = train_split, test_split
    tr_idx, te_idx, classes = encode_labels(tr_y, te_y, classes)
    mean, std = fit_standardization(tr_x)  # train split only
    train_all = SequenceDataset(standardize(tr_x, mean, std), tr_idx)
    test_set = SequenceDataset(standardize(te_x, mean, std), te_idx)
    config = {"input_size": channels, "hidden_size": args.hidden_size,
              "num_classes": len(classes), "num_layers": args.num_layers,
              "bidirectional": args.bidirectional, "dropout": args.dropout,
              "pooling": args.pooling, "attn_dim": args.attn_dim, "cell": args.cell}
    lens_tr, lens_te = train_all.lengths, test_set.lengths
    log(f"{name}: {len(train_all)} train / {len(test_set)} test sequences, {channels} channels, "
        f"{len(classes)} classes, lengths {int(lens_tr.min())}-{int(lens_tr.max())} (train) "
        f"{int(lens_te.min())}-{int(lens_te.max())} (test); device {device}, "
        f"{world} process(es), {torch.get_num_threads()} thread(s) each")
    result = _run_record(args, argv, name, train_all, test_set, channels, classes, config,
                         device, world)
    impls = ["seqcls_fast"] + (["native"] if args.baseline == "native" else [])
    if rank == 0:
        os.makedirs(out_dir, exist_ok=True)
    for seed in range(args.seed, args.seed + args.seeds):
        fit_idx, val_idx = stratified_split(tr_idx, args.val_fraction, seed)
        fit_set, val_set = train_all.subset(fit_idx), train_all.subset(val_idx)
        log(f"seed {seed}: {len(fit_set)} sequences to fit, {len(val_set)} to validate")
        for impl in impls:
            model, history = train_model(impl, args, config, fit_set, device, dist_info, log,
                                         val_set=val_set, seed=seed)
            metrics = evaluate(model, test_set, device, classes)  # the test split, once
            log(format_report(name, impl, metrics, classes))
            log(f"{impl} seed {seed}: epoch {history['chosen_epoch']}/{history['epochs']} "
                f"chosen, {history['mean_epoch_seconds']:.3f} s/epoch, "
                f"{history['train_seconds']:.1f} s training")
            run = {"seed": seed, "impl": impl, "test_accuracy": metrics["accuracy"],
                   "macro_f1": metrics["macro_f1"], "chosen_epoch": history["chosen_epoch"],
                   "chosen_val_accuracy": history.get("chosen_val_accuracy"),
                   "train_seconds": history["train_seconds"], "n_fit": len(fit_set),
                   "n_val": len(val_set), "train": history, "test": metrics}
            if rank == 0:
                run["checkpoint"] = os.path.join(out_dir, _checkpoint_name(impl, seed, args.seed))
                save_checkpoint(run["checkpoint"], model, impl, config, classes, mean, std, name)
            result["runs"].append(run)
    result["summary"] = {impl: summarize_runs([r for r in result["runs"] if r["impl"] == impl])
                         for impl in impls}
    result.update({k: result["summary"]["seqcls_fast"][k]
                   for k in ("test_accuracy_mean", "test_accuracy_std", "macro_f1_mean",
                             "macro_f1_std")})
    _log_summary(result, impls, log)
    result["elapsed_seconds"] = time.perf_counter() - started  # data loading to here
    if rank == 0:
        write_json(out_dir, "metrics.json", result, log)
        write_plots(out_dir, result, classes, log)


def _checkpoint_name(impl, seed, first_seed):
    """model.pt for the first seed's seqcls_fast run (what predict and stream
    take by default); the others are told apart by suffixes."""
    suffix = ("" if impl == "seqcls_fast" else f"_{impl}") + (
        "" if seed == first_seed else f"_seed{seed}")
    return f"model{suffix}.pt"


def _run_record(args, argv, name, train_set, test_set, channels, classes, config, device,
                world):
    """metrics.json before any run: the command, data, model, recipe and machine."""
    lens_tr, lens_te = train_set.lengths, test_set.lengths
    return {
        "command": "python -m seqcls_fast train " + " ".join(argv)
                   if world == 1 else
                   f"torchrun --nproc_per_node {world} -m seqcls_fast train " + " ".join(argv),
        "dataset": name, "n_train": len(train_set), "n_test": len(test_set),
        "channels": channels, "classes": classes,
        "train_lengths": [int(lens_tr.min()), int(lens_tr.max())],
        "test_lengths": [int(lens_te.min()), int(lens_te.max())],
        "model": config,
        "optim": {k: getattr(args, k) for k in OPTIM_KEYS},
        "standardization": "per-channel mean/std over all train time steps",
        "selection": "per seed, a stratified validation split of the train split (val_fraction "
                     "of each class); the epoch with the best mean validation accuracy over "
                     "the select_window fraction of epochs ending at it (the later one on "
                     "ties); the test split is evaluated once, after training",
        "device": str(device), "world_size": world, "threads": torch.get_num_threads(),
        "torch": torch.__version__, "python": platform.python_version(),
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
        "runs": [],
    }


def _log_summary(result, impls, log):
    """The summary over seeds, and with --baseline the two side by side and
    the training speedup over native (ratio of summed training seconds)."""
    log(f"\n{'':12s} {'runs':>4s} {'test acc':>17s} {'macro F1':>17s} {'train s/run':>11s}")
    for impl in impls:
        r = result["summary"][impl]
        log(f"{impl:12s} {r['runs']:4d} {r['test_accuracy_mean']:8.4f} +- "
            f"{r['test_accuracy_std']:.4f} {r['macro_f1_mean']:8.4f} +- {r['macro_f1_std']:.4f} "
            f"{r['train_seconds_mean']:11.1f}")
    if len(impls) > 1:
        ours, base = (result["summary"][k] for k in ("seqcls_fast", "native"))
        result["speedup_vs_native"] = base["train_seconds_mean"] / ours["train_seconds_mean"]
        log(f"training speedup vs native: {result['speedup_vs_native']:.2f}x")
