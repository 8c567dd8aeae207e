"""``python -m seqcls_fast train``: train and evaluate an LSTM classifier on
variable-length sequences (a UEA set shipped with aeon, or your own data).

    python -m seqcls_fast train --dataset JapaneseVowels
    python -m seqcls_fast train --dataset JapaneseVowels --baseline native
    python -m seqcls_fast train --data my_TRAIN.ts            # my_TEST.ts beside it
    python -m seqcls_fast train --data train.ts test.ts
    python -m seqcls_fast train --data mydata.npz
    python -m seqcls_fast train --dataset JapaneseVowels --checkpoint out/train/JapaneseVowels/model.pt
    torchrun --nproc_per_node 2 -m seqcls_fast train --dataset JapaneseVowels

Needs the ``[data]`` extra (aeon, scikit-learn, tqdm). See NPZ_LAYOUT for the
``.npz`` form. Writes ``model.pt`` (a dict whose ``"state_dict"`` is the
model's state_dict, plus what evaluation needs: classes, standardization,
model options) and ``metrics.json`` into ``--out``.

The modules, one job each: :mod:`.sources` (the data: aeon sets, ``.ts``
pairs, ``.npz``; labels, checks, standardization), :mod:`.selection` (the
validation split and the choice of epoch), :mod:`.loop` (processes, device,
model, optimizer and schedule, the training loop), :mod:`.metrics`
(predictions, scores, the summary over seeds, the printed report),
:mod:`.plots` (training curves and confusion matrix as PNGs),
:mod:`.augment` (time stretch and gain of training sequences),
:mod:`.checkpoint` (``model.pt``), :mod:`.cli` (options and the run). Their
public names are re-exported here, so ``train.X`` works for all of them. The ``--baseline native`` model is
:class:`seqcls_fast.reference.NativeLSTMClassifier`.
"""
from .checkpoint import (CHECKPOINT_FORMAT, load_checkpoint, model_from_checkpoint,
                         prepare_test_split, save_checkpoint)
from .cli import OPTIM_KEYS, main, parse_args
from .loop import (build_model, choose_device, epoch_count, lr_factor, make_optimizer,
                   setup_processes, train_model)
from .metrics import evaluate, format_report, predict, predict_proba, summarize_runs, write_json
from .plots import write_plots
from .selection import EpochSelector, stratified_split, validation_scores
from .sources import (KNOWN_DATASETS, NPZ_LAYOUT, DataError, add_data_arguments, check_split,
                      encode_labels, fit_standardization, load_aeon_dataset, load_checked_data,
                      load_data, standardize)

__all__ = [
    # sources
    "KNOWN_DATASETS", "NPZ_LAYOUT", "DataError", "add_data_arguments", "load_aeon_dataset",
    "load_data",
    "encode_labels", "check_split", "fit_standardization", "standardize", "load_checked_data",
    # selection
    "stratified_split", "validation_scores", "EpochSelector",
    # loop
    "build_model", "choose_device", "epoch_count", "lr_factor", "make_optimizer",
    "setup_processes", "train_model",
    # metrics and plots
    "predict", "predict_proba", "evaluate", "summarize_runs", "format_report", "write_json",
    "write_plots",
    # checkpoint
    "CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "model_from_checkpoint",
    "prepare_test_split",
    # cli
    "OPTIM_KEYS", "parse_args", "main",
]
