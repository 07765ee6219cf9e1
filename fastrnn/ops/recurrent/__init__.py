"""The persistent recurrence shared by the LSTM and GRU Triton kernels: one mechanism,
two cells. common.py holds the grid barrier and launch planning; forward.py and
backward.py hold the kernels, with the cell math selected by a constexpr."""
