"""The applications built on the seqcls_fast core, run as ``python -m
seqcls_fast {bench,train,stream,predict}`` (or the ``seqcls-fast`` script):

- ``bench/``: seqcls_fast against nn.LSTM (+ packing) and other RNN libraries;
- ``train/``: training and evaluating a classifier on a UEA set or your data;
- ``stream_cli.py``: a checkpoint's accuracy on growing prefixes (early
  classification);
- ``predict_cli.py``: a checkpoint's predictions for new data, as CSV.

They import the core; the core never imports them, so ``import seqcls_fast``
needs torch alone (tests/test_package.py). They also need numpy and the
package's extras (aeon, scikit-learn, tqdm, matplotlib, onnxruntime).
"""
