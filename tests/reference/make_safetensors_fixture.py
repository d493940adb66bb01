#!/usr/bin/python3
"""Writes safetensors fixtures with numpy only, as an independent writer for the C++ reader tests.

The safetensors format is written by hand here (8-byte little-endian header length, JSON header,
raw little-endian data) without the `safetensors` package, from the format description alone, so
that the C++ reader (data/safetensors.cc) is checked against a second implementation.

  make_safetensors_fixture.py dtypes OUT.safetensors
      one file with F32, F16, BF16, F8_E4M3, I64, I32 and U8 tensors and __metadata__; values
      from dtype_values() below, which the C++ test repeats.
  make_safetensors_fixture.py v3 OUT_DIR
      a small DeepSeek-V3 Hugging Face checkpoint: config.json, two shards and
      model.safetensors.index.json; linear weights in F8_E4M3 with 128x128 weight_scale_inv
      (ragged edge blocks), norms / embedding / head / gate in BF16, router biases in F32, one
      MTP layer with its embed_tokens and shared_head.head copies. Also writes
      OUT_DIR/expected/<name>.npy: the f32 values the import must produce for a few tensors,
      dequantized here as float32(e4m3 value) * float32(scale).
"""

import json
import os
import struct
import sys

import numpy as np


def write_safetensors(path, tensors, metadata=None):
    """tensors: list of (name, dtype name, shape, raw little-endian bytes)."""
    header = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for name, dtype, shape, data in tensors:
        header[name] = {"dtype": dtype, "shape": list(shape),
                        "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    text = json.dumps(header).encode()
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for _, _, _, data in tensors:
            f.write(data)


def bf16_bits(x):
    """float32 array -> bfloat16 bits (uint16), round to nearest even."""
    u = np.asarray(x, dtype=np.float32).view(np.uint32).astype(np.uint64)
    u = (u + 0x7FFF + ((u >> 16) & 1)) >> 16
    return u.astype(np.uint16)


def e4m3_value(b):
    """uint8 array of E4M3 (OCP E4M3FN) codes -> float32 values (no NaN codes expected)."""
    b = np.asarray(b, dtype=np.uint8).astype(np.int64)
    sign = np.where(b >> 7, -1.0, 1.0)
    e = (b >> 3) & 0xF
    m = (b & 0x7).astype(np.float64)
    value = np.where(e == 0, m / 8.0 * 2.0 ** -6, (1.0 + m / 8.0) * 2.0 ** (e - 7))
    return (sign * value).astype(np.float32)


def dtype_values():
    """The values of the dtypes fixture (the C++ test builds the same lists)."""
    f32 = np.array([0.0, -0.0, 1.5, -2.25, 3.4028234663852886e38, 1e-45, float("inf"), 7.0],
                   dtype=np.float32).reshape(2, 4)
    f16 = np.array([0.0, -0.0, 1.5, 65504.0, 2.0 ** -14, 2.0 ** -24, 3 * 2.0 ** -20, -2.5,
                    float("inf"), -1.0], dtype=np.float16).reshape(5, 2)
    bf16 = np.array([1.0, -3.5, 0.15625, 1e30, -0.0, 2.0 ** -126], dtype=np.float32).reshape(3, 2)
    fp8 = np.array([0x00, 0x01, 0x38, 0x7E, 0xFE, 0x80, 0x44, 0x3F], dtype=np.uint8)
    i64 = np.array([-(2 ** 63), -1, 0, 1, 2 ** 62 + 7], dtype=np.int64)
    i32 = np.array([[-(2 ** 31), 5], [2 ** 31 - 1, -7]], dtype=np.int32)
    u8 = np.array([0, 1, 254, 255], dtype=np.uint8)
    return f32, f16, bf16, fp8, i64, i32, u8


def make_dtypes(path):
    f32, f16, bf16, fp8, i64, i32, u8 = dtype_values()
    tensors = [
        ("a.f32", "F32", f32.shape, f32.astype("<f4").tobytes()),
        ("b.f16", "F16", f16.shape, f16.astype("<f2").tobytes()),
        ("c.bf16", "BF16", bf16.shape, bf16_bits(bf16).astype("<u2").tobytes()),
        ("d.fp8", "F8_E4M3", fp8.shape, fp8.tobytes()),
        ("e.i64", "I64", i64.shape, i64.astype("<i8").tobytes()),
        ("f.i32", "I32", i32.shape, i32.astype("<i4").tobytes()),
        ("g.u8", "U8", u8.shape, u8.tobytes()),
        ("h.empty", "F32", (0, 3), b""),
    ]
    write_safetensors(path, tensors, {"format": "pt", "writer": "numpy"})


# A DeepSeek-V3 shape with several 128x128 blocks and ragged edges in its linear weights.
V3_CONFIG = {
    "architectures": ["DeepseekV3ForCausalLM"],
    "model_type": "deepseek_v3",
    "vocab_size": 300,
    "hidden_size": 160,
    "intermediate_size": 200,
    "moe_intermediate_size": 136,
    "num_hidden_layers": 2,
    "first_k_dense_replace": 1,
    "moe_layer_freq": 1,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "n_routed_experts": 4,
    "n_shared_experts": 1,
    "num_experts_per_tok": 2,
    "n_group": 2,
    "topk_group": 1,
    "topk_method": "noaux_tc",
    "scoring_func": "sigmoid",
    "norm_topk_prob": True,
    "routed_scaling_factor": 2.5,
    "q_lora_rank": 144,
    "kv_lora_rank": 136,
    "qk_nope_head_dim": 16,
    "qk_rope_head_dim": 8,
    "v_head_dim": 16,
    "max_position_embeddings": 256,
    "rope_theta": 10000.0,
    "rope_scaling": None,
    "rms_norm_eps": 1e-06,
    "initializer_range": 0.02,
    "num_nextn_predict_layers": 1,
    "hidden_act": "silu",
    "tie_word_embeddings": False,
    "attention_bias": False,
    "quantization_config": {"activation_scheme": "dynamic", "fmt": "e4m3",
                            "quant_method": "fp8", "weight_block_size": [128, 128]},
}


def v3_tensors(c):
    """(name, kind, shape) of every tensor; kind: fp8 (linear), bf16 or f32."""
    d, heads = c["hidden_size"], c["num_attention_heads"]
    qk = c["qk_nope_head_dim"] + c["qk_rope_head_dim"]
    out = [("model.embed_tokens.weight", "bf16", (c["vocab_size"], d))]

    def block(p, moe):
        t = [(p + ".input_layernorm.weight", "bf16", (d,)),
             (p + ".self_attn.q_a_proj.weight", "fp8", (c["q_lora_rank"], d)),
             (p + ".self_attn.q_a_layernorm.weight", "bf16", (c["q_lora_rank"],)),
             (p + ".self_attn.q_b_proj.weight", "fp8", (heads * qk, c["q_lora_rank"])),
             (p + ".self_attn.kv_a_proj_with_mqa.weight", "fp8",
              (c["kv_lora_rank"] + c["qk_rope_head_dim"], d)),
             (p + ".self_attn.kv_a_layernorm.weight", "bf16", (c["kv_lora_rank"],)),
             (p + ".self_attn.kv_b_proj.weight", "fp8",
              (heads * (c["qk_nope_head_dim"] + c["v_head_dim"]), c["kv_lora_rank"])),
             (p + ".self_attn.o_proj.weight", "fp8", (d, heads * c["v_head_dim"])),
             (p + ".post_attention_layernorm.weight", "bf16", (d,))]
        if not moe:
            i = c["intermediate_size"]
            t += [(p + ".mlp.gate_proj.weight", "fp8", (i, d)),
                  (p + ".mlp.up_proj.weight", "fp8", (i, d)),
                  (p + ".mlp.down_proj.weight", "fp8", (d, i))]
            return t
        i, e = c["moe_intermediate_size"], c["n_routed_experts"]
        t += [(p + ".mlp.gate.weight", "bf16", (e, d)),
              (p + ".mlp.gate.e_score_correction_bias", "f32", (e,))]
        for x in range(e):
            t += [(p + f".mlp.experts.{x}.gate_proj.weight", "fp8", (i, d)),
                  (p + f".mlp.experts.{x}.up_proj.weight", "fp8", (i, d)),
                  (p + f".mlp.experts.{x}.down_proj.weight", "fp8", (d, i))]
        s = c["n_shared_experts"] * i
        t += [(p + ".mlp.shared_experts.gate_proj.weight", "fp8", (s, d)),
              (p + ".mlp.shared_experts.up_proj.weight", "fp8", (s, d)),
              (p + ".mlp.shared_experts.down_proj.weight", "fp8", (d, s))]
        return t

    n = c["num_hidden_layers"]
    for layer in range(n):
        out += block(f"model.layers.{layer}", layer >= c["first_k_dense_replace"])
    out += [("model.norm.weight", "bf16", (d,)), ("lm_head.weight", "bf16", (c["vocab_size"], d))]
    p = f"model.layers.{n}"
    out += [(p + ".enorm.weight", "bf16", (d,)), (p + ".hnorm.weight", "bf16", (d,)),
            (p + ".eh_proj.weight", "bf16", (d, 2 * d))]
    out += block(p, True)
    out += [(p + ".shared_head.norm.weight", "bf16", (d,))]
    return out


def make_v3(out_dir):
    os.makedirs(os.path.join(out_dir, "expected"), exist_ok=True)
    rng = np.random.default_rng(1234)
    c = V3_CONFIG
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(c, f, indent=2)
    values = {}  # name -> (dtype name, shape, bytes, expected f32)
    for name, kind, shape in v3_tensors(c):
        if kind == "fp8":
            codes = rng.integers(0, 256, size=shape, dtype=np.uint8)
            codes[(codes & 0x7F) == 0x7F] = 0x42  # no NaN codes
            rows, cols = shape
            scale = (rng.random(((rows + 127) // 128, (cols + 127) // 128)) * 0.01 + 1e-4)
            scale = scale.astype(np.float32)
            full_scale = np.repeat(np.repeat(scale, 128, axis=0), 128, axis=1)[:rows, :cols]
            expected = e4m3_value(codes) * full_scale  # float32 * float32: one rounding
            values[name] = ("F8_E4M3", shape, codes.tobytes(), expected.astype(np.float32))
            values[name + "_scale_inv"] = ("F32", scale.shape, scale.astype("<f4").tobytes(), None)
        elif kind == "bf16":
            x = rng.standard_normal(shape).astype(np.float32)
            bits = bf16_bits(x)
            expected = (bits.astype(np.uint32) << 16).view(np.float32)
            values[name] = ("BF16", shape, bits.astype("<u2").tobytes(), expected)
        else:
            x = (rng.standard_normal(shape) * 0.1).astype(np.float32)
            values[name] = ("F32", shape, x.astype("<f4").tobytes(), x)
    n = c["num_hidden_layers"]
    # The MTP layer's copies of the shared embedding and head.
    values[f"model.layers.{n}.embed_tokens.weight"] = values["model.embed_tokens.weight"]
    values[f"model.layers.{n}.shared_head.head.weight"] = values["lm_head.weight"]

    names = list(values)
    half = len(names) // 2
    shards = {"model-00001-of-00002.safetensors": names[:half],
              "model-00002-of-00002.safetensors": names[half:]}
    weight_map = {}
    total = 0
    for file, members in shards.items():
        tensors = [(m, values[m][0], values[m][1], values[m][2]) for m in members]
        write_safetensors(os.path.join(out_dir, file), tensors, {"format": "pt"})
        for m in members:
            weight_map[m] = file
            total += len(values[m][2])
    with open(os.path.join(out_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)

    for name in ["model.layers.0.self_attn.q_b_proj.weight",
                 "model.layers.0.mlp.down_proj.weight",
                 "model.layers.1.mlp.experts.3.up_proj.weight",
                 "model.layers.2.self_attn.kv_a_proj_with_mqa.weight",
                 "model.embed_tokens.weight",
                 "model.layers.1.mlp.gate.e_score_correction_bias"]:
        np.save(os.path.join(out_dir, "expected", name + ".npy"), values[name][3])


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("dtypes", "v3"):
        sys.exit(__doc__)
    if sys.argv[1] == "dtypes":
        make_dtypes(sys.argv[2])
    else:
        make_v3(sys.argv[2])


if __name__ == "__main__":
    main()
