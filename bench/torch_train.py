#!/usr/bin/python3
"""PyTorch eager baseline for Fathom's training benchmark: the same DeepSeek-V3 model in float32.

  torch_train.py --config MODEL_YAML --batch B --seq S --steps N --threads T [--dense]
                 [--warmup W] [--seed SEED]

Builds the model of MODEL_YAML with the module classes of tests/reference/deepseek_v3_reference.py
(MLA, MoE as a plain per-expert loop, MTP, sequence-wise balance loss), random init
(Normal(0, init_std) matrices, norms 1, router bias 0), and times full training steps on random
tokens (B, S + mtp_depth + 1): forward, backward, grad-norm clip 1.0, AdamW (betas 0.9 / 0.95,
weight decay 0.1 on matrices), and the auxiliary-loss-free router bias update. --dense makes every
block dense (n_dense_layers = n_layers, the MTP block too) with inter_dim as configured.

After W warm-up steps it runs N timed steps and prints one line:
  torch tokens_per_s=<B*S / median step time> step_ms=<median step time in ms>
Diagnostics (threads, OPENBLAS_CORETYPE, parameter count, loss) go to stderr.
Run with Debian's interpreter, /usr/bin/python3 (python3-torch).
"""

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

_REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "reference",
                          "deepseek_v3_reference.py")


def _load_reference():
    spec = importlib.util.spec_from_file_location("deepseek_v3_reference", _REFERENCE)
    if spec is None or spec.loader is None:
        raise SystemExit(f"torch_train.py: cannot load {_REFERENCE}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got '{text}'")
    return value


def _non_negative(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got '{text}'")
    return value


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="model YAML (a `model:` section)")
    parser.add_argument("--batch", type=_positive, required=True, help="sequences per step")
    parser.add_argument("--seq", type=_positive, required=True, help="tokens per sequence")
    parser.add_argument("--steps", type=_positive, required=True, help="timed steps")
    parser.add_argument("--threads", type=_positive, required=True, help="torch threads")
    parser.add_argument("--dense", action="store_true", help="every block dense")
    parser.add_argument("--warmup", type=_non_negative, default=2, help="untimed steps first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    ref = _load_reference()
    try:
        cfg = ref.load_config(args.config)
    except ref.ReferenceError as e:
        print(f"torch_train.py: error: {e}", file=sys.stderr)
        return 1
    if args.dense:
        cfg.n_dense_layers = cfg.n_layers
    if args.seq > cfg.max_seq_len:
        print(f"torch_train.py: error: --seq {args.seq} exceeds max_seq_len {cfg.max_seq_len} of "
              f"{args.config}", file=sys.stderr)
        return 1

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    coretype = os.environ.get("OPENBLAS_CORETYPE")
    if coretype:
        print(f"torch_train.py: note: OPENBLAS_CORETYPE={coretype} is set; it may slow BLAS",
              file=sys.stderr)

    generator = torch.Generator().manual_seed(args.seed)
    model = ref.DeepSeekV3(cfg)
    model.init_weights(generator)
    model.train()
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        (no_decay if name.endswith("norm.weight") else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=2.2e-4, betas=(0.9, 0.95), eps=1e-8)
    moe_layers = model.moe_layers()
    width = args.seq + cfg.mtp_depth + 1

    def step():
        tokens = torch.randint(0, cfg.vocab_size, (args.batch, width), generator=generator)
        optimizer.zero_grad(set_to_none=True)
        out = model(tokens)
        out["total"].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        with torch.no_grad():  # b_i += gamma * sign(mean load - load_i)
            for moe in moe_layers:
                load = moe.last_load.to(torch.float32)
                moe.gate.bias.add_(cfg.bias_update_speed * torch.sign(load.mean() - load))
        return out["total"].item()

    for _ in range(args.warmup):
        step()
    times = []
    loss = float("nan")
    for _ in range(args.steps):
        start = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - start)
    median = statistics.median(times)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"torch_train.py: threads={args.threads} params={n_params} dense={args.dense} "
          f"batch={args.batch} seq={args.seq} last_loss={loss:.4f}", file=sys.stderr)
    print(f"torch tokens_per_s={args.batch * args.seq / median:.1f} step_ms={median * 1e3:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
