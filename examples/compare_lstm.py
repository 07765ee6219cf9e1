"""fastrnn against torch.nn.LSTM on an embedded default shape: agreement and timing.

Runs on the GPU when there is one (Triton kernels), else on the CPU.
"""
import argparse
import time

import torch

import fastrnn
from fastrnn import functional


def timed(fn, repeats):
    fn()  # warm-up
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seq", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    lstm = torch.nn.LSTM(args.hidden, args.hidden, device=device)
    x = torch.randn(args.seq, args.batch, args.hidden, device=device)
    weights = [getattr(lstm, n) for n in ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")]

    def ours():
        return functional.lstm_layer(x, None, None, *weights)

    def theirs():
        out, (h, c) = lstm(x)
        return out, h[0], c[0]

    with torch.no_grad():
        diffs = [(a - b).abs().max().item() for a, b in zip(ours(), theirs())]
    print(f"fastrnn {fastrnn.__version__} on {device}; T={args.seq} B={args.batch} H={args.hidden} fp32")
    print(f"max |fastrnn - nn.LSTM|: output {diffs[0]:.2e}, h_T {diffs[1]:.2e}, c_T {diffs[2]:.2e}")
    with torch.no_grad():
        t_ours, t_theirs = timed(ours, args.repeats), timed(theirs, args.repeats)
    print(f"forward: fastrnn {t_ours * 1e3:.2f} ms, nn.LSTM {t_theirs * 1e3:.2f} ms "
          f"(fastrnn takes {t_ours / t_theirs:.2f}x nn.LSTM's time)")


if __name__ == "__main__":
    main()
