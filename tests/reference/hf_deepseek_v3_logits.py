#!/usr/bin/python3
"""Main-model logits of a Hugging Face DeepSeek-V3 checkpoint directory, computed the way a
Hugging Face loader computes them.

Written from Hugging Face's modeling_deepseek.py (deepseek-ai/DeepSeek-V3 on the Hub:
DeepseekV3Attention, DeepseekV3YarnRotaryEmbedding, apply_rotary_pos_emb, MoEGate, DeepseekV3MoE,
DeepseekV3DecoderLayer) and DeepSeek's inference/model.py and inference/convert.py, not from
Fathom's C++ code, so that tests/trainer/hf_reference_test.cc can check that an exported directory
means the same model to such a loader as to Fathom. Everything here (the safetensors reader, the
FP8 decoder, the config.json mapping, the tensor names and the maths) is independent of Fathom and
of tests/reference/deepseek_v3_reference.py.

Usage: hf_deepseek_v3_logits.py HF_DIR TOKENS_NPY OUT_NPY

  HF_DIR       config.json plus model.safetensors, or shards listed in
               model.safetensors.index.json. Tensors F32, BF16, F16, or F8_E4M3 with a
               `<name>_scale_inv` F32 block-scale tensor (DeepSeek's FP8 release, dequantized as
               w = e4m3 * scale_inv per weight_block_size block).
  TOKENS_NPY   (B, S) int32 token ids.
  OUT_NPY      written: (B * S, vocab_size) float64 logits of the main model.

Computes in float64. The multi-token-prediction layers (model.layers.{num_hidden_layers + k}) are
read and shape-checked but, as in Hugging Face's DeepseekV3ForCausalLM, do not affect the logits.

Exits 1 with one line on stderr on any problem: unreadable files, unknown or missing tensors,
shape or dtype mismatches, config.json values this loader would not accept, tokens out of range.
Needs torch and numpy only (no transformers, no safetensors package): run it with Debian's
/usr/bin/python3.
"""

import json
import math
import os
import struct
import sys

import numpy as np
import torch
import torch.nn.functional as F


class LoadError(Exception):
    """A problem with the inputs; reported as one line on stderr."""


# ------------------------------------------------------------------------------------------------
# safetensors, by hand: u64 little-endian header length N, N bytes of JSON
# {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data;
# offsets are relative to the first byte after the header.

_ITEM_SIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "F8_E4M3": 1}


def _e4m3_table():
    """float64 value of each of the 256 E4M3 (\"fn\": no infinities) bit patterns: 1 sign bit,
    4 exponent bits (bias 7), 3 mantissa bits; S.1111.111 is NaN."""
    table = np.empty(256, np.float64)
    for bits in range(256):
        sign = -1.0 if bits & 0x80 else 1.0
        exponent = (bits >> 3) & 0xF
        mantissa = bits & 0x7
        if exponent == 0xF and mantissa == 0x7:
            table[bits] = np.nan
        elif exponent == 0:
            table[bits] = sign * (mantissa / 8.0) * 2.0 ** -6
        else:
            table[bits] = sign * (1.0 + mantissa / 8.0) * 2.0 ** (exponent - 7)
    return table


_E4M3 = _e4m3_table()


class SafetensorsFile:
    """One .safetensors file: its header, and tensors decoded on demand."""

    def __init__(self, path):
        self.path = path
        try:
            with open(path, "rb") as f:
                self.data = f.read()
        except OSError as e:
            raise LoadError(f"cannot read {path}: {e.strerror}") from None
        if len(self.data) < 8:
            raise LoadError(f"{path}: {len(self.data)} bytes, too short for a safetensors header")
        (n,) = struct.unpack("<Q", self.data[:8])
        if 8 + n > len(self.data):
            raise LoadError(f"{path}: header length {n} exceeds the file ({len(self.data)} bytes)")
        try:
            header = json.loads(self.data[8:8 + n].decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise LoadError(f"{path}: header is not JSON: {e}") from None
        if not isinstance(header, dict):
            raise LoadError(f"{path}: header is not a JSON object")
        header.pop("__metadata__", None)
        self.base = 8 + n
        self.entries = {}
        for name, entry in header.items():
            where = f"{path}: tensor '{name}'"
            if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
                raise LoadError(f"{where}: expected exactly dtype, shape, data_offsets")
            dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
            if dtype not in _ITEM_SIZE:
                raise LoadError(f"{where}: dtype {dtype} is not one of {sorted(_ITEM_SIZE)}")
            if (not isinstance(shape, list) or
                    not all(isinstance(d, int) and d >= 0 for d in shape)):
                raise LoadError(f"{where}: bad shape {shape}")
            if (not isinstance(offsets, list) or len(offsets) != 2 or
                    not all(isinstance(o, int) for o in offsets)):
                raise LoadError(f"{where}: bad data_offsets {offsets}")
            begin, end = offsets
            size = int(np.prod(shape, dtype=np.int64)) * _ITEM_SIZE[dtype]
            if not 0 <= begin <= end or end - begin != size:
                raise LoadError(f"{where}: data_offsets {offsets} do not hold {shape} x {dtype} "
                                f"({size} bytes)")
            if self.base + end > len(self.data):
                raise LoadError(f"{where}: data_offsets {offsets} reach past the end of the file")
            self.entries[name] = (dtype, tuple(shape), begin, end)

    def dtype(self, name):
        return self.entries[name][0]

    def shape(self, name):
        return self.entries[name][1]

    def read(self, name):
        """The tensor as float64 numpy (F8_E4M3: the plain E4M3 values, scale not applied)."""
        dtype, shape, begin, end = self.entries[name]
        raw = self.data[self.base + begin:self.base + end]
        if dtype == "F64":
            values = np.frombuffer(raw, "<f8")
        elif dtype == "F32":
            values = np.frombuffer(raw, "<f4")
        elif dtype == "F16":
            values = np.frombuffer(raw, "<f2")
        elif dtype == "BF16":  # the high half of an f32
            values = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:  # F8_E4M3
            values = _E4M3[np.frombuffer(raw, np.uint8)]
        return values.astype(np.float64).reshape(shape)


class Checkpoint:
    """Every tensor of an HF directory: model.safetensors, or the shards of
    model.safetensors.index.json (whose weight_map must match the files exactly)."""

    def __init__(self, hf_dir):
        index_path = os.path.join(hf_dir, "model.safetensors.index.json")
        self.file_of = {}
        if os.path.exists(index_path):
            try:
                with open(index_path, encoding="utf-8") as f:
                    weight_map = json.load(f)["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise LoadError(f"{index_path}: cannot read its weight_map: {e}") from None
            files = {}
            for name, file_name in weight_map.items():
                if file_name not in files:
                    files[file_name] = SafetensorsFile(os.path.join(hf_dir, file_name))
                st = files[file_name]
                if name not in st.entries:
                    raise LoadError(f"{index_path}: '{name}' is mapped to {file_name}, which does "
                                    f"not hold it")
                self.file_of[name] = st
            for file_name, st in files.items():
                for name in st.entries:
                    if weight_map.get(name) != file_name:
                        raise LoadError(f"{st.path}: tensor '{name}' is not mapped to this file "
                                        f"in {index_path}")
        else:
            st = SafetensorsFile(os.path.join(hf_dir, "model.safetensors"))
            self.file_of = {name: st for name in st.entries}

    def names(self):
        return set(self.file_of)


# ------------------------------------------------------------------------------------------------
# config.json, as DeepseekV3Config and the modeling code read it.


class HfConfig:
    """The hyper-parameters of a deepseek_v3 config.json, under their HF names."""

    def __init__(self, path):
        try:
            with open(path, encoding="utf-8") as f:
                c = json.load(f)
        except OSError as e:
            raise LoadError(f"cannot read {path}: {e.strerror}") from None
        except ValueError as e:
            raise LoadError(f"{path}: not JSON: {e}") from None
        self.path = path

        def get(key, kind, default=None, required=True):
            if key not in c or c[key] is None:
                if required and default is None:
                    raise LoadError(f"{path}: '{key}' is missing")
                return default
            value = c[key]
            if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
                raise LoadError(f"{path}: '{key}' must be an integer, got {value!r}")
            if kind is float and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise LoadError(f"{path}: '{key}' must be a number, got {value!r}")
            if kind in (str, bool) and not isinstance(value, kind):
                raise LoadError(f"{path}: '{key}' must be a {kind.__name__}, got {value!r}")
            return kind(value)

        model_type = get("model_type", str)
        if model_type != "deepseek_v3":
            raise LoadError(f"{path}: model_type is '{model_type}', this loader reads deepseek_v3")
        self.vocab_size = get("vocab_size", int)
        self.hidden_size = get("hidden_size", int)
        self.intermediate_size = get("intermediate_size", int)
        self.moe_intermediate_size = get("moe_intermediate_size", int)
        self.num_hidden_layers = get("num_hidden_layers", int)
        self.num_nextn_predict_layers = get("num_nextn_predict_layers", int, 0)
        self.num_attention_heads = get("num_attention_heads", int)
        self.num_key_value_heads = get("num_key_value_heads", int, self.num_attention_heads)
        self.n_shared_experts = get("n_shared_experts", int, 0, required=False)
        self.n_routed_experts = get("n_routed_experts", int)
        self.routed_scaling_factor = get("routed_scaling_factor", float, 1.0)
        self.kv_lora_rank = get("kv_lora_rank", int)
        # null means no query compression (q_proj): the modeling code tests `is None`.
        self.q_lora_rank = get("q_lora_rank", int, required=False)
        self.qk_rope_head_dim = get("qk_rope_head_dim", int)
        self.qk_nope_head_dim = get("qk_nope_head_dim", int)
        self.v_head_dim = get("v_head_dim", int)
        self.topk_method = get("topk_method", str, "greedy")
        self.n_group = get("n_group", int, 1)
        self.topk_group = get("topk_group", int, 1)
        self.num_experts_per_tok = get("num_experts_per_tok", int)
        self.moe_layer_freq = get("moe_layer_freq", int, 1)
        self.first_k_dense_replace = get("first_k_dense_replace", int, 0)
        self.norm_topk_prob = get("norm_topk_prob", bool, False, required=False)
        self.scoring_func = get("scoring_func", str, "sigmoid")
        self.hidden_act = get("hidden_act", str, "silu")
        self.rope_theta = get("rope_theta", float, 10000.0)
        self.rms_norm_eps = get("rms_norm_eps", float, 1e-6)
        self.attention_bias = get("attention_bias", bool, False, required=False)
        self.tie_word_embeddings = get("tie_word_embeddings", bool, False, required=False)
        # transformers' DeepseekV3 reads rotary dims as interleaved pairs unless told otherwise.
        self.rope_interleave = get("rope_interleave", bool, True)
        self.rope_scaling = c.get("rope_scaling")
        self.quantization_config = c.get("quantization_config")

        problems = []
        if self.q_lora_rank is not None and self.q_lora_rank <= 0:
            problems.append(f"q_lora_rank {self.q_lora_rank}: a model without query compression "
                            "writes null (the modeling code builds q_proj only when it is None)")
        if self.num_key_value_heads != self.num_attention_heads:
            problems.append("num_key_value_heads must equal num_attention_heads for MLA")
        if self.hidden_act != "silu":
            problems.append(f"hidden_act '{self.hidden_act}' is not silu")
        if self.attention_bias:
            problems.append("attention_bias true is not supported by this loader")
        if self.tie_word_embeddings:
            problems.append("tie_word_embeddings true is not supported by this loader")
        if self.scoring_func != "sigmoid":
            problems.append(f"scoring_func '{self.scoring_func}': Hugging Face's DeepSeek-V3 "
                            "MoEGate implements sigmoid only")
        if self.topk_method not in ("noaux_tc", "greedy"):
            problems.append(f"topk_method '{self.topk_method}' is not noaux_tc or greedy")
        if self.n_routed_experts % self.n_group:
            problems.append("n_group must divide n_routed_experts")
        if self.topk_method == "noaux_tc" and self.n_routed_experts // self.n_group < 2:
            problems.append("noaux_tc needs at least 2 experts per group")
        if not 1 <= self.topk_group <= self.n_group:
            problems.append("topk_group must be in [1, n_group]")
        if self.qk_rope_head_dim % 2:
            problems.append("qk_rope_head_dim must be even")
        if self.moe_layer_freq < 1:
            problems.append("moe_layer_freq must be >= 1")
        if self.rope_scaling is not None:
            rs = self.rope_scaling
            kind = rs.get("type", rs.get("rope_type")) if isinstance(rs, dict) else None
            if kind != "yarn":
                problems.append(f"rope_scaling {rs!r}: only yarn is supported")
            elif "factor" not in rs:
                problems.append("rope_scaling has no factor")
        if self.quantization_config is not None:
            q = self.quantization_config
            if (not isinstance(q, dict) or q.get("quant_method") != "fp8" or
                    q.get("fmt", "e4m3") != "e4m3" or len(q.get("weight_block_size", [])) != 2):
                problems.append(f"quantization_config {q!r}: expected fp8, e4m3, weight_block_size "
                                "[rows, cols]")
        if problems:
            raise LoadError(f"{path}: " + "; ".join(problems))

    @property
    def q_head_dim(self):
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    def is_moe(self, layer):
        """DeepseekV3DecoderLayer's rule, also for the MTP layers after the last block."""
        return layer >= self.first_k_dense_replace and layer % self.moe_layer_freq == 0

    def block_size(self):
        if self.quantization_config is None:
            return None
        return tuple(int(b) for b in self.quantization_config["weight_block_size"])


# ------------------------------------------------------------------------------------------------
# The tensor table, from the HF names (modeling_deepseek.py's module tree).


def expected_tensors(cfg):
    """name -> shape of every tensor the directory must hold (weight_scale_inv aside)."""
    d, v = cfg.hidden_size, cfg.vocab_size
    h = cfg.num_attention_heads
    t = {"model.embed_tokens.weight": (v, d), "model.norm.weight": (d,), "lm_head.weight": (v, d)}
    for i in range(cfg.num_hidden_layers + cfg.num_nextn_predict_layers):
        p = f"model.layers.{i}."
        t[p + "input_layernorm.weight"] = (d,)
        t[p + "post_attention_layernorm.weight"] = (d,)
        a = p + "self_attn."
        if cfg.q_lora_rank is None:
            t[a + "q_proj.weight"] = (h * cfg.q_head_dim, d)
        else:
            t[a + "q_a_proj.weight"] = (cfg.q_lora_rank, d)
            t[a + "q_a_layernorm.weight"] = (cfg.q_lora_rank,)
            t[a + "q_b_proj.weight"] = (h * cfg.q_head_dim, cfg.q_lora_rank)
        t[a + "kv_a_proj_with_mqa.weight"] = (cfg.kv_lora_rank + cfg.qk_rope_head_dim, d)
        t[a + "kv_a_layernorm.weight"] = (cfg.kv_lora_rank,)
        t[a + "kv_b_proj.weight"] = (h * (cfg.qk_nope_head_dim + cfg.v_head_dim),
                                     cfg.kv_lora_rank)
        t[a + "o_proj.weight"] = (d, h * cfg.v_head_dim)
        m = p + "mlp."

        def mlp(prefix, inter):
            t[prefix + "gate_proj.weight"] = (inter, d)
            t[prefix + "up_proj.weight"] = (inter, d)
            t[prefix + "down_proj.weight"] = (d, inter)

        if cfg.is_moe(i):
            t[m + "gate.weight"] = (cfg.n_routed_experts, d)
            if cfg.topk_method == "noaux_tc":
                t[m + "gate.e_score_correction_bias"] = (cfg.n_routed_experts,)
            for e in range(cfg.n_routed_experts):
                mlp(f"{m}experts.{e}.", cfg.moe_intermediate_size)
            if cfg.n_shared_experts:
                mlp(m + "shared_experts.", cfg.moe_intermediate_size * cfg.n_shared_experts)
        else:
            mlp(m, cfg.intermediate_size)
        if i >= cfg.num_hidden_layers:  # MTP module (DeepSeek's release, layer 61)
            t[p + "enorm.weight"] = (d,)
            t[p + "hnorm.weight"] = (d,)
            t[p + "eh_proj.weight"] = (d, 2 * d)
            t[p + "embed_tokens.weight"] = (v, d)
            t[p + "shared_head.norm.weight"] = (d,)
            t[p + "shared_head.head.weight"] = (v, d)
    return t


def load_weights(hf_dir, cfg):
    """Reads, checks and dequantizes every tensor: name -> float64 torch tensor."""
    ckpt = Checkpoint(hf_dir)
    table = expected_tensors(cfg)
    present = ckpt.names()
    scales = {n for n in present if n.endswith("_scale_inv")}
    missing = sorted(set(table) - present)
    unexpected = sorted(present - set(table) - scales)
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): " + ", ".join(missing[:8]))
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected tensor(s): " + ", ".join(unexpected[:8]))
    if problems:
        raise LoadError(f"{hf_dir}: " + "; ".join(problems))
    block = cfg.block_size()
    weights = {}
    for name, shape in table.items():
        st = ckpt.file_of[name]
        if st.shape(name) != shape:
            raise LoadError(f"{name}: shape {list(st.shape(name))}, expected {list(shape)}")
        w = st.read(name)
        scale_name = name + "_scale_inv"
        if st.dtype(name) == "F8_E4M3":
            if block is None:
                raise LoadError(f"{name} is F8_E4M3 but config.json has no quantization_config")
            if len(shape) != 2 or scale_name not in present:
                raise LoadError(f"{name} is F8_E4M3 without a 2-D weight and {scale_name}")
            sst = ckpt.file_of[scale_name]
            want = (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
            if sst.dtype(scale_name) != "F32" or sst.shape(scale_name) != want:
                raise LoadError(f"{scale_name}: {sst.dtype(scale_name)} "
                                f"{list(sst.shape(scale_name))}, expected F32 {list(want)}")
            s = sst.read(scale_name)
            full = np.repeat(np.repeat(s, block[0], axis=0), block[1], axis=1)
            w = w * full[:shape[0], :shape[1]]
            scales.discard(scale_name)
        elif scale_name in present:
            raise LoadError(f"{scale_name} scales {name}, which is {st.dtype(name)}, not F8_E4M3")
        if not np.all(np.isfinite(w)):
            raise LoadError(f"{name}: holds NaN or infinite values")
        weights[name] = torch.from_numpy(np.ascontiguousarray(w))
    if scales:
        raise LoadError(f"{hf_dir}: scale tensor(s) without a weight: " + ", ".join(sorted(scales)))
    return weights


# ------------------------------------------------------------------------------------------------
# The forward pass of DeepseekV3ForCausalLM (no cache, positions 0..S-1, causal mask).


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def yarn_get_mscale(scale, mscale):
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def rotary_tables(cfg, seq_len):
    """cos, sin (S, rope_dim) as DeepseekV3RotaryEmbedding / DeepseekV3YarnRotaryEmbedding build
    them: the d/2 frequencies repeated twice (rotate_half layout), times YaRN's _mscale."""
    dim, base = cfg.qk_rope_head_dim, cfg.rope_theta
    exponents = torch.arange(0, dim, 2, dtype=torch.float64) / dim
    inv_freq = 1.0 / base ** exponents
    mscale = 1.0
    rs = cfg.rope_scaling
    if rs is not None:
        factor = float(rs["factor"])
        original = float(rs.get("original_max_position_embeddings", 4096))
        beta_fast = float(rs.get("beta_fast", 32))
        beta_slow = float(rs.get("beta_slow", 1))

        def correction_dim(rotations):
            return dim * math.log(original / (rotations * 2 * math.pi)) / (2 * math.log(base))

        low = max(math.floor(correction_dim(beta_fast)), 0)
        high = min(math.ceil(correction_dim(beta_slow)), dim - 1)
        if low == high:
            high += 0.001
        ramp = torch.clamp((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low), 0, 1)
        extra_mask = 1.0 - ramp
        freq_extra = inv_freq
        freq_inter = 1.0 / (factor * base ** exponents)
        inv_freq = freq_inter * (1 - extra_mask) + freq_extra * extra_mask
        mscale = (yarn_get_mscale(factor, float(rs.get("mscale", 1))) /
                  yarn_get_mscale(factor, float(rs.get("mscale_all_dim", 0))))
    freqs = torch.outer(torch.arange(seq_len, dtype=torch.float64), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos() * mscale, emb.sin() * mscale


def rotate_half(x):
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def apply_rotary(x, cos, sin, interleave):
    """x: (B, H, S, d). With interleaved storage, pairs (x[2i], x[2i+1]) are first gathered into
    halves (apply_rotary_pos_emb's view / transpose), then rotated in the rotate_half layout."""
    if interleave:
        b, h, s, d = x.shape
        x = x.view(b, h, s, d // 2, 2).transpose(4, 3).reshape(b, h, s, d)
    return x * cos + rotate_half(x) * sin


def softmax_scale(cfg):
    scale = cfg.q_head_dim ** -0.5
    rs = cfg.rope_scaling
    if rs is not None and rs.get("mscale_all_dim", 0):
        m = yarn_get_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale = scale * m * m
    return scale


def attention(cfg, w, p, x, cos, sin):
    b, s, _ = x.shape
    h = cfg.num_attention_heads
    if cfg.q_lora_rank is None:
        q = x @ w[p + "q_proj.weight"].T
    else:
        # q_a_layernorm and kv_a_layernorm are DeepseekV3RMSNorm(rank): its default eps 1e-6,
        # not rms_norm_eps (so is DeepSeek's inference/model.py RMSNorm).
        q = rms_norm(x @ w[p + "q_a_proj.weight"].T, w[p + "q_a_layernorm.weight"], 1e-6)
        q = q @ w[p + "q_b_proj.weight"].T
    q = q.view(b, s, h, cfg.q_head_dim).transpose(1, 2)
    q_nope, q_pe = torch.split(q, [cfg.qk_nope_head_dim, cfg.qk_rope_head_dim], dim=-1)
    compressed = x @ w[p + "kv_a_proj_with_mqa.weight"].T
    compressed, k_pe = torch.split(compressed, [cfg.kv_lora_rank, cfg.qk_rope_head_dim], dim=-1)
    k_pe = k_pe.view(b, s, 1, cfg.qk_rope_head_dim).transpose(1, 2)
    kv = rms_norm(compressed, w[p + "kv_a_layernorm.weight"], 1e-6) @ w[p + "kv_b_proj.weight"].T
    kv = kv.view(b, s, h, cfg.qk_nope_head_dim + cfg.v_head_dim).transpose(1, 2)
    k_nope, value = torch.split(kv, [cfg.qk_nope_head_dim, cfg.v_head_dim], dim=-1)
    q_pe = apply_rotary(q_pe, cos, sin, cfg.rope_interleave)
    k_pe = apply_rotary(k_pe, cos, sin, cfg.rope_interleave)
    query = torch.cat([q_nope, q_pe], dim=-1)
    key = torch.cat([k_nope, k_pe.expand(b, h, s, cfg.qk_rope_head_dim)], dim=-1)
    scores = query @ key.transpose(2, 3) * softmax_scale(cfg)
    causal = torch.ones(s, s, dtype=torch.bool).triu(1)
    probs = scores.masked_fill(causal, float("-inf")).softmax(dim=-1)
    out = (probs @ value).transpose(1, 2).reshape(b, s, h * cfg.v_head_dim)
    return out @ w[p + "o_proj.weight"].T


def mlp(w, p, x):
    return (F.silu(x @ w[p + "gate_proj.weight"].T) * (x @ w[p + "up_proj.weight"].T)) @ \
        w[p + "down_proj.weight"].T


def route(cfg, w, p, x):
    """MoEGate: x (T, D) -> expert indices (T, K), weights (T, K)."""
    scores = (x @ w[p + "gate.weight"].T).sigmoid()
    t = x.shape[0]
    if cfg.topk_method == "noaux_tc":
        # The correction bias steers the choice only; the weights are the plain scores.
        choice = scores + w[p + "gate.e_score_correction_bias"]
        groups = choice.view(t, cfg.n_group, -1)
        group_scores = groups.topk(2, dim=-1).values.sum(dim=-1)
        keep = group_scores.topk(cfg.topk_group, dim=-1).indices
        group_mask = torch.zeros_like(group_scores).scatter_(1, keep, 1.0).bool()
        # Experts of dropped groups can never be chosen (DeepSeek's inference/model.py; HF fills
        # them with 0.0, the same unless a biased score of a kept expert is below 0).
        choice = groups.masked_fill(~group_mask.unsqueeze(-1), float("-inf")).view(t, -1)
        indices = choice.topk(cfg.num_experts_per_tok, dim=-1).indices
        weights = scores.gather(1, indices)
    else:  # greedy
        weights, indices = scores.topk(cfg.num_experts_per_tok, dim=-1)
    if cfg.num_experts_per_tok > 1 and cfg.norm_topk_prob:
        weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
    return indices, weights * cfg.routed_scaling_factor


def moe(cfg, w, p, x):
    shape = x.shape
    flat = x.reshape(-1, shape[-1])
    indices, weights = route(cfg, w, p, flat)
    y = torch.zeros_like(flat)
    for e in range(cfg.n_routed_experts):
        token, slot = (indices == e).nonzero(as_tuple=True)
        if token.numel():
            out = mlp(w, f"{p}experts.{e}.", flat[token]) * weights[token, slot].unsqueeze(-1)
            y.index_add_(0, token, out)
    if cfg.n_shared_experts:
        y = y + mlp(w, p + "shared_experts.", flat)
    return y.view(shape)


def logits(cfg, w, tokens):
    """tokens: (B, S) int64 -> (B * S, vocab) float64."""
    b, s = tokens.shape
    cos, sin = rotary_tables(cfg, s)
    eps = cfg.rms_norm_eps
    h = w["model.embed_tokens.weight"][tokens]
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        h = h + attention(cfg, w, p + "self_attn.", rms_norm(h, w[p + "input_layernorm.weight"],
                                                              eps), cos, sin)
        x = rms_norm(h, w[p + "post_attention_layernorm.weight"], eps)
        h = h + (moe(cfg, w, p + "mlp.", x) if cfg.is_moe(i) else mlp(w, p + "mlp.", x))
    h = rms_norm(h, w["model.norm.weight"], eps)
    return (h @ w["lm_head.weight"].T).reshape(b * s, cfg.vocab_size)


# ------------------------------------------------------------------------------------------------


def run(hf_dir, tokens_path, out_path):
    torch.set_num_threads(1)  # tiny shapes; tests may run side by side
    cfg = HfConfig(os.path.join(hf_dir, "config.json"))
    weights = load_weights(hf_dir, cfg)
    try:
        tokens = np.load(tokens_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise LoadError(f"cannot read {tokens_path}: {e}") from None
    if tokens.dtype != np.int32 or tokens.ndim != 2:
        raise LoadError(f"{tokens_path}: expected (B, S) int32, got {tokens.shape} {tokens.dtype}")
    if tokens.size and (tokens.min() < 0 or tokens.max() >= cfg.vocab_size):
        raise LoadError(f"{tokens_path}: ids must be in [0, {cfg.vocab_size}), got "
                        f"[{tokens.min()}, {tokens.max()}]")
    with torch.no_grad():
        out = logits(cfg, weights, torch.from_numpy(tokens.astype(np.int64)))
    np.save(out_path, out.numpy())


def main(argv):
    if len(argv) != 4:
        print(f"usage: {argv[0]} HF_DIR TOKENS_NPY OUT_NPY", file=sys.stderr)
        return 2
    try:
        run(argv[1], argv[2], argv[3])
    except LoadError as e:
        print(f"{os.path.basename(argv[0])}: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
