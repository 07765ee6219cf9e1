// Every gate-math loop of the CPU recurrences, instantiated for float, so that
// tests/test_vectorized.py can ask the compiler (-fopt-info-vec-optimized) which of them it
// vectorised. Compiled only, never run.
#include "fastrnn/gru_cpu.h"
#include "fastrnn/lstm_cpu.h"
#include "fastrnn/rnn_cpu.h"

namespace fastrnn {
using F = float;
using I = int64_t;
template void lstm_forward_row<F>(const F*, F*, F*, F*, I, I, I);
template void lstm_backward_row<F>(const F*, const F*, const F*, const F*, F*, F*, I, I, I);
template void lstm_forward_panel<true, F>(I, const F*, const F*, I, F*, F*, F*, const F*, F*,
                                          const I*, I, I, I, I);
template void lstm_forward_panel<false, F>(I, const F*, const F*, I, F*, F*, F*, const F*, F*,
                                           const I*, I, I, I, I);
template void gru_forward_row<F>(const F*, const F*, F*, F*, F*, I, I, I);
template void gru_backward_row<F>(const F*, const F*, const F*, const F*, F*, F*, F*, I, I, I);
template void gru_forward_panel<F>(I, const F*, const F*, const F*, F*, F*, const F*, F*, const I*,
                                   I, I, I);
template void gru_dh_from_next<F>(I, I, const F*, const F*, F*, const I*, I, I, I);
template void gru_backward_panel<F>(I, I, const F*, const F*, const F*, const F*, F*, F*, F*,
                                    const I*, I, I, I);
template void rnn_forward_panel<false, F>(I, I, const F*, const F*, F*, F*, const F*, F*,
                                          const I*, I, I, I);
template void rnn_forward_panel<true, F>(I, I, const F*, const F*, F*, F*, const F*, F*,
                                         const I*, I, I, I);
template void rnn_backward_panel<false, F>(I, I, const F*, const F*, const F*, F*, const I*, I, I,
                                           I);
template void rnn_backward_panel<true, F>(I, I, const F*, const F*, const F*, F*, const I*, I, I,
                                          I);
}  // namespace fastrnn
