#!/usr/bin/python3
"""Independent PyTorch implementation of Fathom's DeepSeek-V3 model (SPEC.md section 1).

Written from the specification (DeepSeek's inference/model.py semantics plus the V3 training
losses), not from Fathom's C++ code, so that tests/model/golden_test.cc can compare the two.

Usage: deepseek_v3_reference.py IN_DIR OUT_DIR

  IN_DIR/config.yaml        a model YAML ("model:" then "  key: value" lines)
  IN_DIR/<name>.npy         every parameter and buffer of the model, float32
  IN_DIR/tokens.npy         (B, S + mtp_depth + 1) int32

Computes in float64 and writes
  OUT_DIR/logits.npy        (B * S, vocab_size) f64, main-model logits
  OUT_DIR/losses.npy        [total, lm, mtp, balance] f64
  OUT_DIR/grad.<name>.npy   d total / d parameter, f64, for every parameter

Exits non-zero with a message on stderr on any problem (missing, extra or misshapen arrays, bad
config, out-of-range tokens).

The module classes (DeepSeekV3 and its parts) are reused by bench/torch_train.py in float32.
Run with Debian's interpreter, /usr/bin/python3, which sees python3-torch and python3-numpy.
"""

import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F


class ReferenceError(Exception):
    """A problem with the inputs; reported as one line on stderr."""


# ------------------------------------------------------------------------------------------------
# Config: DeepSeek's ModelArgs defaults, plus the V3 training hyper-parameters.

_INT_FIELDS = {
    "vocab_size": 102400, "dim": 2048, "inter_dim": 10944, "moe_inter_dim": 1408,
    "n_layers": 27, "n_dense_layers": 1, "n_heads": 16, "n_routed_experts": 64,
    "n_shared_experts": 2, "n_activated_experts": 6, "n_expert_groups": 1,
    "n_limited_groups": 1, "q_lora_rank": 0, "kv_lora_rank": 512, "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64, "v_head_dim": 128, "max_seq_len": 16384,
    "original_seq_len": 4096, "mtp_depth": 0,
}
_FLOAT_FIELDS = {
    "route_scale": 1.0, "rope_theta": 10000.0, "rope_factor": 40.0, "beta_fast": 32.0,
    "beta_slow": 1.0, "mscale": 1.0, "mtp_lambda": 0.3, "norm_eps": 1e-6, "init_std": 0.006,
    "bias_update_speed": 0.001, "balance_loss_alpha": 1e-4,
}
_STR_FIELDS = {"score_func": "softmax"}


class Config:
    """Model hyper-parameters; attribute names are the YAML keys."""

    def __init__(self, **values):
        for table in (_INT_FIELDS, _FLOAT_FIELDS, _STR_FIELDS):
            for key, default in table.items():
                setattr(self, key, default)
        for key, value in values.items():
            if not hasattr(self, key):
                raise ReferenceError(f"unknown config key '{key}'")
            setattr(self, key, value)

    @property
    def qk_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def uses_yarn(self):
        return self.max_seq_len > self.original_seq_len

    def softmax_scale(self):
        scale = self.qk_head_dim ** -0.5
        if self.uses_yarn:
            m = 0.1 * self.mscale * math.log(self.rope_factor) + 1.0
            scale *= m * m
        return scale

    def block_is_moe(self, index):
        """Block `index` of the main model (0-based); index >= n_layers are the MTP blocks, which
        are MoE iff the main model has any MoE block."""
        if index >= self.n_layers:
            return self.n_layers > self.n_dense_layers
        return index >= self.n_dense_layers

    def check(self):
        problems = []
        if self.score_func not in ("sigmoid", "softmax"):
            problems.append(f"score_func must be sigmoid or softmax, got '{self.score_func}'")
        if self.qk_rope_head_dim % 2:
            problems.append("qk_rope_head_dim must be even")
        if self.n_routed_experts % self.n_expert_groups:
            problems.append("n_expert_groups must divide n_routed_experts")
        elif self.n_expert_groups > 1 and self.n_routed_experts // self.n_expert_groups < 2:
            problems.append("each expert group needs at least 2 experts")
        if not 1 <= self.n_limited_groups <= self.n_expert_groups:
            problems.append("n_limited_groups must be in [1, n_expert_groups]")
        if self.n_activated_experts > (self.n_limited_groups * self.n_routed_experts //
                                       self.n_expert_groups):
            problems.append("n_activated_experts exceeds the experts a token can reach")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            problems.append("n_dense_layers must be in [0, n_layers]")
        if problems:
            raise ReferenceError("invalid config: " + "; ".join(problems))


def _parse_value(key, text, where):
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        text = text[1:-1]
    try:
        if key in _INT_FIELDS:
            return int(text)
        if key in _FLOAT_FIELDS:
            return float(text)
    except ValueError:
        raise ReferenceError(f"{where}: model.{key}: cannot parse '{text}'") from None
    return text


def load_config(path):
    """Reads the `model:` section of a simple YAML file: a top-level `model:` line followed by
    indented `key: value` lines. Comments and blank lines are skipped; missing keys keep their
    defaults; unknown keys are errors."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise ReferenceError(f"cannot read config {path}: {e.strerror}") from None
    values = {}
    in_model = False
    found = False
    for number, raw in enumerate(lines, 1):
        where = f"{path}:{number}"
        line = raw.split(" #", 1)[0].rstrip() if not raw.lstrip().startswith("#") else ""
        if not line.strip():
            continue
        if not line[0].isspace():
            in_model = line.strip() == "model:"
            found = found or in_model
            continue
        if not in_model:
            continue
        key, sep, value = line.strip().partition(":")
        key = key.strip()
        if not sep or not value.strip():
            raise ReferenceError(f"{where}: expected 'key: value', got '{line.strip()}'")
        if key not in _INT_FIELDS and key not in _FLOAT_FIELDS and key not in _STR_FIELDS:
            raise ReferenceError(f"{where}: unknown key 'model.{key}'")
        if key in values:
            raise ReferenceError(f"{where}: duplicate key 'model.{key}'")
        values[key] = _parse_value(key, value, where)
    if not found:
        raise ReferenceError(f"{path}: no top-level 'model:' section")
    config = Config(**values)
    config.check()
    return config


# ------------------------------------------------------------------------------------------------
# Layers.


class RMSNorm(nn.Module):
    def __init__(self, dim, eps):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rope_frequencies(cfg):
    """(d/2,) float64 angular frequencies of the rotary pairs: theta^(-2i/d), blended with YaRN
    when max_seq_len > original_seq_len (DeepSeek's precompute_freqs_cis)."""
    d = cfg.qk_rope_head_dim
    base = cfg.rope_theta
    freqs = 1.0 / base ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    if cfg.uses_yarn:
        def correction_dim(rotations):
            return d * math.log(cfg.original_seq_len / (rotations * 2 * math.pi)) / (
                2 * math.log(base))

        low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
        high = min(math.ceil(correction_dim(cfg.beta_slow)), d - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
        smooth = 1 - ramp
        freqs = freqs / cfg.rope_factor * (1 - smooth) + freqs * smooth
    return freqs


def rope_tables(cfg, seq_len, dtype):
    """cos, sin: (S, d/2) for positions 0..S-1."""
    if seq_len > cfg.max_seq_len:
        raise ReferenceError(f"sequence length {seq_len} exceeds max_seq_len {cfg.max_seq_len}")
    angles = torch.outer(torch.arange(seq_len, dtype=torch.float64), rope_frequencies(cfg))
    return torch.cos(angles).to(dtype), torch.sin(angles).to(dtype)


def apply_rope(x, cos, sin):
    """x: (B, S, ..., d); rotates interleaved pairs (x[2i], x[2i+1]) by the angle of its position.
    cos, sin: (S, d/2)."""
    shape = x.shape
    pairs = x.reshape(*shape[:-1], shape[-1] // 2, 2)
    x0, x1 = pairs[..., 0], pairs[..., 1]
    extra = x0.dim() - 3  # dims between S and d/2 (heads)
    c = cos.view(1, cos.shape[0], *([1] * extra), cos.shape[1])
    s = sin.view(1, sin.shape[0], *([1] * extra), sin.shape[1])
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).reshape(shape)


def _linear(in_features, out_features):
    return nn.Linear(in_features, out_features, bias=False)


class MLA(nn.Module):
    """Multi-head latent attention, causal, over positions 0..S-1."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        h = cfg.n_heads
        if cfg.q_lora_rank == 0:
            self.wq = _linear(cfg.dim, h * cfg.qk_head_dim)
        else:
            self.wq_a = _linear(cfg.dim, cfg.q_lora_rank)
            self.q_norm = RMSNorm(cfg.q_lora_rank, cfg.norm_eps)
            self.wq_b = _linear(cfg.q_lora_rank, h * cfg.qk_head_dim)
        self.wkv_a = _linear(cfg.dim, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        self.kv_norm = RMSNorm(cfg.kv_lora_rank, cfg.norm_eps)
        self.wkv_b = _linear(cfg.kv_lora_rank, h * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        self.wo = _linear(h * cfg.v_head_dim, cfg.dim)

    def forward(self, x, cos, sin):
        cfg = self.cfg
        b, s, _ = x.shape
        h = cfg.n_heads
        q = self.wq(x) if cfg.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(b, s, h, cfg.qk_head_dim)
        q_nope, q_pe = torch.split(q, [cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
        q_pe = apply_rope(q_pe, cos, sin)

        kv = self.wkv_a(x)
        c_kv, k_pe = torch.split(kv, [cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
        k_pe = apply_rope(k_pe, cos, sin)  # (B, S, rope): one key shared by every head
        kv = self.wkv_b(self.kv_norm(c_kv)).view(b, s, h, cfg.qk_nope_head_dim + cfg.v_head_dim)
        k_nope, v = torch.split(kv, [cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)

        scores = (torch.einsum("bshd,bthd->bhst", q_nope, k_nope) +
                  torch.einsum("bshr,btr->bhst", q_pe, k_pe)) * cfg.softmax_scale()
        causal = torch.ones(s, s, dtype=torch.bool, device=x.device).triu(1)
        scores = scores.masked_fill(causal, float("-inf"))
        probs = scores.softmax(dim=-1)
        out = torch.einsum("bhst,bthd->bshd", probs, v)
        return self.wo(out.reshape(b, s, h * cfg.v_head_dim))


class SwiGLU(nn.Module):
    """w2(silu(w1 x) * w3 x)."""

    def __init__(self, dim, inter_dim):
        super().__init__()
        self.w1 = _linear(dim, inter_dim)
        self.w2 = _linear(inter_dim, dim)
        self.w3 = _linear(dim, inter_dim)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class _Stacked(nn.Module):
    """One stacked expert weight, named "<prefix>.weight", shape (E, out, in)."""

    def __init__(self, n, out_features, in_features):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, out_features, in_features))


class Experts(nn.Module):
    """The routed experts, weights stacked: w1, w3 (E, moe_inter, dim), w2 (E, dim, moe_inter)."""

    def __init__(self, cfg):
        super().__init__()
        e = cfg.n_routed_experts
        self.w1 = _Stacked(e, cfg.moe_inter_dim, cfg.dim)
        self.w2 = _Stacked(e, cfg.dim, cfg.moe_inter_dim)
        self.w3 = _Stacked(e, cfg.moe_inter_dim, cfg.dim)

    def expert(self, i, x):
        return F.linear(F.silu(F.linear(x, self.w1.weight[i])) * F.linear(x, self.w3.weight[i]),
                        self.w2.weight[i])


class Gate(nn.Module):
    """Router: weight (E, dim) trained by gradients; bias (E) a buffer used only for selection."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts))

    def forward(self, x):
        """x: (T, dim). Returns scores (T, E) (differentiable), weights (T, K) (differentiable
        through the scores) and indices (T, K) (not differentiated)."""
        cfg = self.cfg
        logits = F.linear(x, self.weight)
        scores = logits.sigmoid() if cfg.score_func == "sigmoid" else logits.softmax(dim=-1)
        with torch.no_grad():
            biased = scores + self.bias
            if cfg.n_expert_groups > 1:
                t = biased.shape[0]
                grouped = biased.view(t, cfg.n_expert_groups, -1)
                group_scores = grouped.topk(2, dim=-1).values.sum(dim=-1)
                keep = group_scores.topk(cfg.n_limited_groups, dim=-1).indices
                drop = torch.ones_like(group_scores, dtype=torch.bool).scatter_(1, keep, False)
                biased = grouped.masked_fill(drop.unsqueeze(-1), float("-inf")).view(t, -1)
            indices = biased.topk(cfg.n_activated_experts, dim=-1).indices
        weights = scores.gather(1, indices)
        if cfg.score_func == "sigmoid":
            weights = weights / weights.sum(dim=-1, keepdim=True)
        return scores, weights * cfg.route_scale, indices


class MoE(nn.Module):
    """DeepSeekMoE: shared experts plus the weighted top-k routed experts (a per-expert loop).
    forward returns (y, sequence-wise balance loss of this layer)."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = Experts(cfg)
        if cfg.n_shared_experts > 0:
            self.shared_experts = SwiGLU(cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim)
        self.last_load = None  # (E,) tokens routed to each expert in the last forward

    def forward(self, x):
        cfg = self.cfg
        b, s, dim = x.shape
        e, k = cfg.n_routed_experts, cfg.n_activated_experts
        flat = x.reshape(b * s, dim)
        scores, weights, indices = self.gate(flat)

        routed = torch.zeros_like(flat)
        expert_of = indices.reshape(-1)
        order = torch.argsort(expert_of, stable=True)
        counts = torch.bincount(expert_of, minlength=e)
        self.last_load = counts.detach()
        token_of = order // k
        flat_weights = weights.reshape(-1)
        start = 0
        for i, n in enumerate(counts.tolist()):
            if n == 0:
                continue
            slots = order[start:start + n]
            rows = token_of[start:start + n]
            out = self.experts.expert(i, flat[rows]) * flat_weights[slots].unsqueeze(-1)
            routed.index_add_(0, rows, out)
            start += n
        y = self.shared_experts(flat) + routed if cfg.n_shared_experts > 0 else routed

        # Sequence-wise balance loss: f_i counts selections (no gradient), P_i the mean of the
        # normalised scores.
        per_seq = torch.zeros(b, e, dtype=x.dtype, device=x.device)
        per_seq.scatter_add_(1, indices.view(b, s * k),
                             torch.ones(b, s * k, dtype=x.dtype, device=x.device))
        f = per_seq * (e / (k * s))
        p = (scores / scores.sum(dim=-1, keepdim=True)).view(b, s, e).mean(dim=1)
        balance = cfg.balance_loss_alpha * (f * p).sum(dim=-1).mean()
        return y.view(b, s, dim), balance


class Block(nn.Module):
    def __init__(self, cfg, moe):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.ffn = MoE(cfg) if moe else SwiGLU(cfg.dim, cfg.inter_dim)

    def forward(self, h, cos, sin):
        """Returns (h, balance loss of this block: a 0-dim tensor, 0 for a dense block)."""
        h = h + self.attn(self.attn_norm(h), cos, sin)
        if isinstance(self.ffn, MoE):
            y, balance = self.ffn(self.ffn_norm(h))
        else:
            y, balance = self.ffn(self.ffn_norm(h)), h.new_zeros(())
        return h + y, balance


class MTPModule(nn.Module):
    def __init__(self, cfg, moe):
        super().__init__()
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.eh_proj = _linear(2 * cfg.dim, cfg.dim)
        self.block = Block(cfg, moe)
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)


class DeepSeekV3(nn.Module):
    """Main model plus mtp_depth MTP modules sharing the embedding and the output head."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, cfg.block_is_moe(i)) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = _linear(cfg.dim, cfg.vocab_size)
        self.mtp = nn.ModuleList(MTPModule(cfg, cfg.block_is_moe(cfg.n_layers + k))
                                 for k in range(cfg.mtp_depth))

    def moe_layers(self):
        return [m for m in self.modules() if isinstance(m, MoE)]

    def init_weights(self, generator=None):
        """Matrices ~ Normal(0, init_std); norm weights 1; router bias 0."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.normal_(0.0, self.cfg.init_std, generator=generator)
            for _, buf in self.named_buffers():
                buf.zero_()

    def forward(self, tokens):
        """tokens: (B, S + mtp_depth + 1) int64. Returns a dict with logits (B*S, V) and the
        0-dim losses total, lm, mtp, balance."""
        cfg = self.cfg
        d = cfg.mtp_depth
        b, width = tokens.shape
        s = width - d - 1
        if s < 1:
            raise ReferenceError(f"tokens width {width} leaves no sequence for mtp_depth {d}")
        cos, sin = rope_tables(cfg, s, self.head.weight.dtype)
        cos, sin = cos.to(tokens.device), sin.to(tokens.device)

        h = self.embed(tokens[:, :s])
        balance = h.new_zeros(())
        for layer in self.layers:
            h, bal = layer(h, cos, sin)
            balance = balance + bal
        logits = self.head(self.norm(h)).reshape(b * s, cfg.vocab_size)
        lm = F.cross_entropy(logits, tokens[:, 1:s + 1].reshape(-1))

        mtp = h.new_zeros(())
        h_prev = h
        for k, module in enumerate(self.mtp, 1):
            e = self.embed(tokens[:, k:s + k])
            x = module.eh_proj(torch.cat([module.enorm(e), module.hnorm(h_prev)], dim=-1))
            x, bal = module.block(x, cos, sin)
            balance = balance + bal
            h_prev = x
            logits_k = self.head(module.norm(x)).reshape(b * s, cfg.vocab_size)
            mtp = mtp + F.cross_entropy(logits_k, tokens[:, k + 1:s + k + 1].reshape(-1))
        if d > 0:
            mtp = mtp / d
        total = lm + cfg.mtp_lambda * mtp + balance
        return {"logits": logits, "total": total, "lm": lm, "mtp": mtp, "balance": balance}


# ------------------------------------------------------------------------------------------------
# Golden-file driver.


def _load_array(path, dtype):
    try:
        a = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise ReferenceError(f"missing input {path}") from None
    except (OSError, ValueError) as e:
        raise ReferenceError(f"cannot read {path}: {e}") from None
    if a.dtype != np.dtype(dtype):
        raise ReferenceError(f"{path}: expected dtype {np.dtype(dtype)}, got {a.dtype}")
    return a


def run(in_dir, out_dir):
    torch.set_grad_enabled(True)
    torch.set_num_threads(1)  # tiny shapes; tests may run side by side
    cfg = load_config(os.path.join(in_dir, "config.yaml"))
    model = DeepSeekV3(cfg).double()

    expected = set()
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            expected.add(name)
            a = _load_array(os.path.join(in_dir, name + ".npy"), np.float32)
            if tuple(a.shape) != tuple(tensor.shape):
                raise ReferenceError(f"{name}: expected shape {tuple(tensor.shape)}, "
                                     f"got {tuple(a.shape)}")
            tensor.copy_(torch.from_numpy(a.astype(np.float64)))
    extra = sorted(f[:-4] for f in os.listdir(in_dir)
                   if f.endswith(".npy") and f != "tokens.npy" and f[:-4] not in expected)
    if extra:
        raise ReferenceError("inputs that are not parameters or buffers of the reference model: "
                             + ", ".join(extra))

    tokens = _load_array(os.path.join(in_dir, "tokens.npy"), np.int32)
    if tokens.ndim != 2:
        raise ReferenceError(f"tokens.npy: expected 2 dims (B, S + mtp_depth + 1), "
                             f"got shape {tokens.shape}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise ReferenceError(f"tokens.npy: ids must be in [0, {cfg.vocab_size}), got "
                             f"[{tokens.min()}, {tokens.max()}]")
    out = model(torch.from_numpy(tokens.astype(np.int64)))
    out["total"].backward()

    os.makedirs(out_dir, exist_ok=True)
    np.save(os.path.join(out_dir, "logits.npy"), out["logits"].detach().numpy())
    losses = np.array([out[k].item() for k in ("total", "lm", "mtp", "balance")], np.float64)
    np.save(os.path.join(out_dir, "losses.npy"), losses)
    for name, p in model.named_parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        np.save(os.path.join(out_dir, f"grad.{name}.npy"), grad.detach().numpy())


def main(argv):
    if len(argv) != 3:
        print(f"usage: {argv[0]} IN_DIR OUT_DIR", file=sys.stderr)
        return 2
    try:
        run(argv[1], argv[2])
    except ReferenceError as e:
        print(f"{os.path.basename(argv[0])}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
