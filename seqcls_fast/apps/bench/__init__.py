"""``seqcls-fast bench``: seqcls_fast against what people would use instead.

Every method is a full classifier, LSTM + masked attention pooling (dot-product
scores with a learned query, softmax over the valid steps) + linear head, built
from the same weights and run on the same inputs:

- ``ours``: ``sf.LSTMClassifier`` (``sf.LSTM`` with ``lengths`` + attention
  pooling; in inference on the CPU the top layer pools as it runs);
- ``ours-low``: the same with ``memory="low"`` (training only);
- ``ours-cpu-lengths`` (GPU only): ours given the lengths on the CPU, so the
  length plan is made on the host instead of on the GPU;
- ``packed``: ``nn.LSTM`` on a ``PackedSequence`` (``pack_padded_sequence`` with
  ``enforce_sorted=False``, then ``pad_packed_sequence``:
  :func:`seqcls_fast.reference.packed_lstm`) + the pooling written in plain
  PyTorch (:class:`seqcls_fast.reference.MaskedAttentionPooling`);
- ``padded``: ``nn.LSTM`` on the padded batch + the same PyTorch pooling. It
  ignores the lengths, which is harmless for a unidirectional LSTM (outputs at
  valid steps do not depend on later steps, and the pooling only reads valid
  steps) but wrong for a bidirectional one; it is still timed then, flagged;
- ``flashrnn`` and ``haste``, when those packages are importable;
- ``ort``: ``packed`` exported to ONNX (its LSTM node takes ``sequence_lens``)
  and run by onnxruntime, on the CPU in float32 and in inference only.

Before timing, each method's logits (and, in training, its LSTM weight
gradients) are compared with ours; a method that disagrees is reported as
wrong and not timed. The registry :data:`METHODS` and :func:`build_methods`
are what ``benchmarks/`` and the tests reuse.

The modules, one job each: :mod:`.cases` (shapes, dtypes, input batches),
:mod:`.methods` (the classifiers compared), :mod:`.memory` (peak memory of a
call), :mod:`.measure` (check and time one case), :mod:`.report` (table,
environment, plot, progress), :mod:`.cli` (options and the run). Their names
are re-exported here, so ``bench.X`` works for all of them; :data:`METHODS`
is the one registry object, so adding to it here adds to the run.
"""
from .cases import (CUDA_EXTRA_CASES, DEFAULT_SWEEP, DTYPES, LENGTH_DISTRIBUTIONS, LONG_SWEEP,
                    LONG_SWEEP_MAX_SECONDS, MODES, NUM_CLASSES, SWEEPS, Batch, Case, make_batch,
                    make_lengths)
from .cli import cases_from, main, parse_args, positive_int, too_slow
from .measure import (AUTO_REPEATS, AUTO_SECONDS_PER_CASE, CUDA_WARMUP_ROUNDS,
                      ROTATED_BATCHES, TOLERANCES, auto_repeats, check_and_measure, compare,
                      quartiles, relative_error, run_case, run_step, set_mode, summarize,
                      time_call, time_interleaved)
from .memory import cpu_peak_growth_supported, exact_rss_accounting, measure_peak_memory
from .methods import (FLASHRNN_BACKEND, METHODS, REFERENCE_METHOD, Classifier, FlashRNN,
                      Haste, MethodSpec, OnnxRuntime, Ours, OursHostLengths, OursLowMemory,
                      Packed, Padded, Reference, Unavailable, build_methods, plain_pooling)
from .report import (Progress, cpu_name, environment, format_table, git_commit,
                     write_memory_plot, write_plot)

__all__ = [
    # cases
    "NUM_CLASSES", "LENGTH_DISTRIBUTIONS", "MODES", "DTYPES", "Case", "DEFAULT_SWEEP",
    "LONG_SWEEP", "LONG_SWEEP_MAX_SECONDS", "SWEEPS", "CUDA_EXTRA_CASES", "make_lengths",
    "Batch", "make_batch",
    # methods
    "FLASHRNN_BACKEND", "Reference", "Unavailable", "Classifier", "plain_pooling", "Ours",
    "OursLowMemory", "OursHostLengths", "Packed", "Padded", "FlashRNN", "Haste", "OnnxRuntime",
    "MethodSpec", "METHODS",
    "REFERENCE_METHOD", "build_methods",
    # memory
    "exact_rss_accounting", "cpu_peak_growth_supported", "measure_peak_memory",
    # measure
    "TOLERANCES", "ROTATED_BATCHES", "AUTO_REPEATS", "AUTO_SECONDS_PER_CASE",
    "CUDA_WARMUP_ROUNDS", "set_mode", "run_step", "relative_error", "compare", "time_call",
    "auto_repeats", "quartiles", "run_case", "check_and_measure", "time_interleaved",
    "summarize",
    # report
    "format_table", "git_commit", "cpu_name", "environment", "write_plot",
    "write_memory_plot", "Progress",
    # cli
    "positive_int", "parse_args", "cases_from", "too_slow", "main",
]
