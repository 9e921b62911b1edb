"""Bytes saved for backward by triton_rnn.RNN and by torch.nn.RNN (and by triton_rnn.LSTM and GRU
and nn.LSTM and nn.GRU), per layer, on this device.

    python perf/memory.py [--device cuda|cpu]

Counts the distinct storages autograd keeps for one training forward (through
saved_tensors_hooks), parameters excluded. On a GPU, nn.RNN is cuDNN and its reserve buffer is
among what it saves; on the CPU, nn.RNN is PyTorch's native per-step implementation. Sizes,
not timings: valid on any device.
"""
import argparse
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton_rnn is imported

import triton_rnn  # noqa: E402

SHAPES = [(128, 16, 256, 1, 1), (128, 16, 256, 2, 2)]  # T, N, H (= I), layers, directions
GPU_SHAPES = SHAPES + [(512, 64, 512, 1, 1), (1024, 64, 1024, 2, 2)]  # too slow interpreted
# LSTM layers: the resident variant (H <= 64); on a GPU the split (256) and streaming (2048) too
LSTM_SHAPES = [(128, 16, 64, 1, 1), (128, 16, 64, 2, 2)]
LSTM_GPU_SHAPES = LSTM_SHAPES + [(512, 64, 256, 1, 1), (256, 16, 2048, 1, 1)]
# GRU layers: the resident variant (H <= 64); on a GPU streaming (1024) too
GRU_SHAPES = LSTM_SHAPES
GRU_GPU_SHAPES = GRU_SHAPES + [(256, 16, 1024, 1, 1)]


def saved_bytes(model, x) -> int:
    """Bytes of the distinct non-parameter storages saved for backward by one forward."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    storages = {}

    def pack(t):
        s = t.untyped_storage()
        if s.data_ptr() not in params:
            storages[s.data_ptr()] = s.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(x)
    return sum(storages.values())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)
    backend = "cuDNN" if args.device == "cuda" else "native CPU"
    for cls, shapes in (("RNN", GPU_SHAPES if args.device == "cuda" else SHAPES),
                        ("LSTM", LSTM_GPU_SHAPES if args.device == "cuda" else LSTM_SHAPES),
                        ("GRU", GRU_GPU_SHAPES if args.device == "cuda" else GRU_SHAPES)):
        print(f"Saved for backward per layer, fp32, device {args.device} (nn.{cls}: {backend})")
        print(f"| T | N | H (= I) | layers | directions | triton_rnn.{cls} | nn.{cls} | ratio |")
        print("|---|---|---|---|---|---|---|---|")
        for T, N, H, L, D in shapes:
            kwargs = dict(input_size=H, hidden_size=H, num_layers=L, bidirectional=D == 2)
            ours = getattr(triton_rnn, cls)(**kwargs).to(args.device)
            ref = getattr(torch.nn, cls)(**kwargs).to(args.device)
            x = torch.randn(T, N, H, device=args.device, requires_grad=True)
            with triton_rnn.backend("kernels"):  # our kernels' memory, whatever routing picks
                a = saved_bytes(ours, x) / L
            b = saved_bytes(ref, x) / L
            print(f"| {T} | {N} | {H} | {L} | {D} | {a / 2**20:.1f} MiB | {b / 2**20:.1f} MiB "
                  f"| {b / a:.2f}x |")
        print()


if __name__ == "__main__":
    main()
