#include "model/block.h"

#include "kernels/ops/elementwise.h"

namespace fathom::model {
namespace {

Tensor like(const Tensor& x) { return Tensor::empty(x.shape(), DType::kF32, x.device()); }

// a + b into a new tensor.
Tensor sum_of(const Tensor& a, const Tensor& b) {
  Tensor out = a.clone();
  axpy(1.0f, b, out);
  return out;
}

}  // namespace

Block::Block(const std::string& prefix, const ModelConfig& config, TrainingPrecision precision,
             Device device, const BlockOptions& options)
    : recompute_(options.recompute),
      attn_norm_(prefix + ".attn_norm.weight", config.dim, static_cast<float>(config.norm_eps),
                 device),
      attn_(prefix + ".attn", config, precision, device, options.recompute),
      ffn_norm_(prefix + ".ffn_norm.weight", config.dim, static_cast<float>(config.norm_eps),
                device) {
  if (options.moe) {
    moe_ = std::make_unique<Moe>(prefix + ".ffn", config, precision, device, options.dispatcher);
  } else {
    mlp_ = std::make_unique<Mlp>(prefix + ".ffn", config.dim, config.inter_dim, precision, device);
  }
}

void Block::forward(const Tensor& x, const TokenLayout& layout, Tensor& y, Saved& saved) {
  Tensor attn_in = like(x);
  attn_norm_.forward(x, attn_in, saved.attn_norm);
  Tensor attn_out = like(x);
  attn_.forward(attn_in, layout.batch, layout.positions, *layout.rope, attn_out, saved.attn);
  const Tensor h = sum_of(x, attn_out);

  Tensor ffn_in = like(x);
  ffn_norm_.forward(h, ffn_in, saved.ffn_norm);
  Tensor ffn_out = like(x);
  if (moe_ != nullptr) {
    moe_->forward(ffn_in, layout.seq_len, ffn_out, saved.moe);
  } else {
    mlp_->forward(ffn_in, ffn_out, saved.mlp);
  }
  y.copy_from(h);
  axpy(1.0f, ffn_out, y);
  if (recompute_) {
    // Keep only the norms' inputs and rstd; backward rebuilds their outputs.
    saved.attn.x = Tensor();
    saved.mlp.x = Tensor();
    saved.moe.x = Tensor();
    saved.moe.shared.x = Tensor();
  }
}

void Block::backward(const Tensor& dy, double balance_loss_grad, Saved& saved, Tensor& dx,
                     WeightGradStore* store) {
  if (recompute_) {
    Tensor ffn_in = like(dy);
    ffn_norm_.recompute(saved.ffn_norm, ffn_in);
    if (moe_ != nullptr) {
      saved.moe.x = ffn_in;
      if (moe_->shared_experts.has_value()) saved.moe.shared.x = ffn_in;
    } else {
      saved.mlp.x = ffn_in;
    }
  }
  Tensor dffn_in = like(dy);
  if (moe_ != nullptr) {
    moe_->backward(dy, balance_loss_grad, saved.moe, dffn_in, store);
  } else {
    mlp_->backward(dy, saved.mlp, dffn_in, store);
  }
  Tensor dh = like(dy);
  ffn_norm_.backward(dffn_in, saved.ffn_norm, dh);
  axpy(1.0f, dy, dh);

  if (recompute_) {
    saved.attn.x = like(dy);
    attn_norm_.recompute(saved.attn_norm, saved.attn.x);
  }
  Tensor dattn_in = like(dy);
  attn_.backward(dh, saved.attn, dattn_in, store);
  attn_norm_.backward(dattn_in, saved.attn_norm, dx);
  axpy(1.0f, dh, dx);
}

double Block::balance_loss(const Saved& saved) const {
  return moe_ != nullptr ? saved.moe.balance_loss : 0.0;
}

void Block::append_parameters(ParameterList& out) {
  attn_norm_.append_parameters(out);
  attn_.append_parameters(out);
  ffn_norm_.append_parameters(out);
  if (moe_ != nullptr) {
    moe_->append_parameters(out);
  } else {
    mlp_->append_parameters(out);
  }
}

void Block::append_buffers(BufferList& out) {
  if (moe_ != nullptr) moe_->append_buffers(out);
}

void Block::init(uint64_t seed, double std) {
  attn_.init(seed, std);
  if (moe_ != nullptr) {
    moe_->init(seed, std);
  } else {
    mlp_->init(seed, std);
  }
}

}  // namespace fathom::model
