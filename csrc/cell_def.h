// What the shared driver (recurrent_driver.cpp) knows of a recurrent cell:
// one definition per cell. Its pointwise math lives in cell.h; a backend
// supplies that math's step kernels for the cells it runs. A new cell is one
// more definition here, its math in cell.h and its kernels, and no change to
// the step loops. Plain data, no functions: every compiler and ISA build
// includes it.
#pragma once

#include <cstdint>

namespace seqcls_fast {

// Which cell a step runs (StepRows::cell_kind): backends pick their kernel by it.
enum class CellKind : int32_t { kLstm = 0, kGru = 1, kRnnTanh = 2, kRnnRelu = 3 };

struct CellDef {
  CellKind kind;
  const char* name;     // in messages
  int64_t gates;        // gate rows per hidden unit: W_ih [gates * H, I], W_hh [gates * H, H],
                        //   the projections [., gates * H]
  bool has_cell_state;  // a second state c beside h (state dtype): carried from step to step
                        //   and kept per checkpoint ([C * B, H]) in low memory
  bool recurrent_apart; // part of h W_hh^T + b_hh is used inside the cell (the GRU's
                        //   W_hn h + b_hn, multiplied by r), so the driver keeps the
                        //   recurrent product in its own buffer instead of adding it to
                        //   x W_ih^T + b_ih before the cell runs
  bool keeps_value;     // the forward keeps one value per unit and step beside the gates
                        //   for the backward (ForwardStep::cell: the LSTM's c_s, the GRU's
                        //   h W_hn^T + b_hn); else the op's `cell` output has 0 rows
};

// The LSTM: gates i, f, g, o; states h and c; the whole recurrent product
// adds to the input projection, whose bias is b_ih + b_hh.
inline constexpr CellDef kLstmCell{CellKind::kLstm, "LSTM", 4, true, false, true};

// The GRU (nn.GRU's): gates r, z, n; state h only; the recurrent product
// h W_hh^T + b_hh stays apart, since the new gate uses r * (W_hn h + b_hn).
inline constexpr CellDef kGruCell{CellKind::kGru, "GRU", 3, false, true, true};

// The Elman RNN (nn.RNN's, nonlinearity tanh or relu): one gate, h' =
// act(x W_ih^T + b_ih + h W_hh^T + b_hh), whose activated value is h' itself,
// all the backward needs; the recurrent product joins the projection.
inline constexpr CellDef kRnnTanhCell{CellKind::kRnnTanh, "RNN_TANH", 1, false, false, false};
inline constexpr CellDef kRnnReluCell{CellKind::kRnnRelu, "RNN_RELU", 1, false, false, false};

// The definition of a step's cell (StepRows::cell_kind).
inline constexpr const CellDef& cell_def_of(CellKind kind) {
  switch (kind) {
    case CellKind::kLstm: return kLstmCell;
    case CellKind::kGru: return kGruCell;
    case CellKind::kRnnTanh: return kRnnTanhCell;
    default: return kRnnReluCell;
  }
}

}  // namespace seqcls_fast
