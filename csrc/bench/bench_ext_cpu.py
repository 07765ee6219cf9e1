"""Times the extension's CPU LSTM/GRU layer against torch.nn.LSTM / nn.GRU in one run.

    python csrc/bench/bench_ext_cpu.py [--repeats N]

Reports the best (minimum) forward and forward+backward time of each over interleaved
repeats, and their ratio (ext / nn; below 1 is faster). Same threads, same inputs, random
(never zero) data. The minimum and the interleaving keep the comparison fair on a machine
shared with other work, where a median mostly measures the neighbours.
"""
import argparse
import time

import torch

from fastrnn import functional

SHAPES = [(32, 128, 512, 512), (1, 256, 128, 128)]   # (B, T, I, H)


def best_times(fns, repeats):
    """Minimum wall time of each of `fns`, run in turn `repeats` times after a warm-up."""
    for fn in fns:
        fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best


def runners(kind, B, T, I, H):
    module = (torch.nn.LSTM if kind == "lstm" else torch.nn.GRU)(I, H)
    x = torch.randn(T, B, I, requires_grad=True)
    params = [module.weight_ih_l0, module.weight_hh_l0, module.bias_ih_l0, module.bias_hh_l0]

    def ext_forward():
        if kind == "lstm":
            return functional.lstm_layer(x, None, None, *params, backend="ext")[0]
        return functional.gru_layer(x, None, *params, backend="ext")[0]

    def nn_forward():
        return module(x)[0]

    def train(forward):
        def step():
            y = forward()
            y.backward(grad)
        return step

    grad = torch.randn(T, B, H)
    return {"forward": (ext_forward, nn_forward),
            "forward+backward": (train(ext_forward), train(nn_forward))}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for kind in ("lstm", "gru"):
        for B, T, I, H in SHAPES:
            for mode, (ext_fn, nn_fn) in runners(kind, B, T, I, H).items():
                grad_mode = torch.enable_grad() if "backward" in mode else torch.no_grad()
                with grad_mode:
                    t_ext, t_nn = best_times([ext_fn, nn_fn], args.repeats)
                print(f"{kind} B={B} T={T} I={I} H={H} {mode:17s} ext {t_ext * 1e3:8.2f} ms  "
                      f"nn {t_nn * 1e3:8.2f} ms  ratio {t_ext / t_nn:.2f}")


if __name__ == "__main__":
    main()
