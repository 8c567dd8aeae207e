// The online-pooling merge, written once (flash attention's softmax merge):
// the CPU and CUDA pool-step kernels call it with scalars. A running state
// (max m, denominator l, weighted sum acc) takes one more score s and value h:
//   m' = max(m, s), keep = exp(m - m'), w = exp(s - m'),
//   l' = l keep + w, acc' = acc keep + w h.
// An empty state is m = -inf, l = 0, acc = 0 (keep is then 0).
#pragma once

#include "cell.h"

namespace seqcls_fast {

// Updates (max, denom) with `score`; returns keep and weight for acc.
template <typename T>
SEQCLS_HOST_DEVICE void online_softmax_merge(T score, T& max, T& denom, T& keep, T& weight) {
  const T merged = score > max ? score : max;
  keep = CellMath<T>::exp(max - merged);
  weight = CellMath<T>::exp(score - merged);
  denom = denom * keep + weight;
  max = merged;
}

}  // namespace seqcls_fast
