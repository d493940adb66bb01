// Elementwise and row-wise ops: casts, fills, axpy, SwiGLU, sigmoid, softmax.
//
// Activations may be f32 or bf16 (computed in f32, rounded to nearest even on store); all
// tensors of one call must be on one device. "Rows" means the last dim; leading dims are
// flattened. Outputs are written (`=`); input gradients too.
#pragma once

#include "kernels/tensor.h"

namespace fathom {

// dst = src converted to dst's dtype (any float dtypes: f32, bf16, f8e4m3, f8e5m2 with
// saturation; or between i32 and i64). Same shape and device.
void cast(const Tensor& src, Tensor& dst);
// Every element = value (converted to the dtype).
void fill(Tensor& t, float value);
// y += alpha * x   (same shape; x and y f32 or bf16)
void axpy(float alpha, const Tensor& x, Tensor& y);
// t *= alpha
void scale(Tensor& t, float alpha);

// y = silu(gate) * up,  silu(g) = g * sigmoid(g).  gate, up, y: same shape.
void swiglu_forward(const Tensor& gate, const Tensor& up, Tensor& y);
// dgate = dy * up * silu'(gate);  dup = dy * silu(gate).
void swiglu_backward(const Tensor& dy, const Tensor& gate, const Tensor& up, Tensor& dgate,
                     Tensor& dup);

// y = 1 / (1 + exp(-x))
void sigmoid_forward(const Tensor& x, Tensor& y);
// dx = dy * y * (1 - y), from the forward output y.
void sigmoid_backward(const Tensor& dy, const Tensor& y, Tensor& dx);

// Softmax over the last dim (numerically stable).
void softmax_forward(const Tensor& x, Tensor& y);
// dx = y * (dy - sum(dy * y)), row-wise, from the forward output y.
void softmax_backward(const Tensor& dy, const Tensor& y, Tensor& dx);

}  // namespace fathom
