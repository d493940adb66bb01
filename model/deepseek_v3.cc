#include "model/deepseek_v3.h"

#include <algorithm>
#include <string>
#include <utility>

#include "kernels/ops/elementwise.h"
#include "kernels/ops/index.h"

namespace fathom::model {
namespace {

Tensor empty_like(const Tensor& x) { return Tensor::empty(x.shape(), DType::kF32, x.device()); }

// The ids and targets of one prediction depth, built on the host.
struct DepthTokens {
  Tensor ids;          // (T) i32
  Tensor targets;      // (T) i32, OutputHead::kIgnoreIndex where not scored
  int64_t scored = 0;  // targets that are scored
};

}  // namespace

struct DeepSeekV3::Pass {
  TokenLayout layout;
  std::vector<DepthTokens> depths;  // 0: the main model; k: MTP depth k
  std::vector<Block::Saved> blocks;
  Tensor h_last;  // the last block's output
  RmsNorm::Saved norm;
  OutputHead::Saved head;
  struct Mtp {
    RmsNorm::Saved enorm;
    RmsNorm::Saved hnorm;
    Tensor proj_in;  // (T, 2 dim) [enorm(e) ; hnorm(h)]
    Block::Saved block;
    RmsNorm::Saved norm;
    OutputHead::Saved head;
  };
  std::vector<Mtp> mtp;
};

LayerRange stage_layers(int64_t n_layers, int64_t mtp_depth, int stage, int stages) {
  FATHOM_CHECK(stages >= 1 && stage >= 0 && stage < stages && stages <= n_layers && mtp_depth >= 0)
      << "stage_layers: stage " << stage << " of " << stages << " for " << n_layers
      << " blocks (need 1 <= stages <= n_layers)";
  const int64_t units = n_layers + mtp_depth;
  const auto begin = [&](int64_t s) {
    return std::min(n_layers, (s * units + stages - 1) / stages);
  };
  return {begin(stage), stage + 1 == stages ? n_layers : begin(stage + 1)};
}

DeepSeekV3::StagePass::StagePass() : pass_(std::make_unique<Pass>()) {}
DeepSeekV3::StagePass::~StagePass() = default;
DeepSeekV3::StagePass::StagePass(StagePass&&) noexcept = default;
DeepSeekV3::StagePass& DeepSeekV3::StagePass::operator=(StagePass&&) noexcept = default;

DeepSeekV3::DeepSeekV3(const ModelConfig& config, TrainingPrecision precision, Device device,
                       const ModelOptions& options)
    : config_(config),
      precision_(precision),
      device_(device),
      stage_(options.stage),
      stages_(options.stages),
      rope_(make_rope_table(rope_config(config), config.max_seq_len, device)) {
  FATHOM_CHECK(validate(config).ok()) << "DeepSeekV3: invalid config: " << validate(config);
  const LayerRange range = stage_layers(config.n_layers, config.mtp_depth, stage_, stages_);
  const float eps = static_cast<float>(config.norm_eps);
  if (first_stage() || (last_stage() && config.mtp_depth > 0)) {
    embed_ = std::make_unique<Embedding>("embed.weight", config.vocab_size, config.dim, device);
  }
  for (int64_t i = range.begin; i < range.end; ++i) {
    BlockOptions block;
    block.moe = config.is_moe_layer(i);
    block.recompute = options.recompute;
    block.dispatcher = options.dispatcher;
    layers_.push_back(std::make_unique<Block>("layers." + std::to_string(i), config, precision,
                                              device, block));
  }
  if (!last_stage()) return;
  norm_ = std::make_unique<RmsNorm>("norm.weight", config.dim, eps, device);
  head_ = std::make_unique<OutputHead>(config.vocab_size, config.dim, device);
  for (int64_t k = 0; k < config.mtp_depth; ++k) {
    const std::string prefix = "mtp." + std::to_string(k);
    BlockOptions block;
    // Like main-model layer n_layers + k: MoE unless the whole model is dense (V3's layer 61).
    block.moe = config.n_moe_layers() > 0;
    block.recompute = options.recompute;
    block.dispatcher = options.dispatcher;
    mtp_.push_back(std::unique_ptr<MtpModule>(new MtpModule{
        RmsNorm(prefix + ".enorm.weight", config.dim, eps, device),
        RmsNorm(prefix + ".hnorm.weight", config.dim, eps, device),
        Linear(prefix + ".eh_proj.weight", config.dim, 2 * config.dim, precision, device),
        Block(prefix + ".block", config, precision, device, block),
        RmsNorm(prefix + ".norm.weight", config.dim, eps, device)}));
  }
}

void DeepSeekV3::check_whole(const char* what) const {
  FATHOM_CHECK(stages_ == 1) << "DeepSeekV3::" << what << " needs the whole model; this object "
                             << "holds pipeline stage " << stage_ << " of " << stages_;
}

void DeepSeekV3::init(uint64_t seed) {
  const double std = config_.init_std;
  if (embed_) init_normal(embed_->weight, seed, std);
  if (head_) init_normal(head_->weight, seed, std);
  for (auto& layer : layers_) layer->init(seed, std);
  for (auto& m : mtp_) {
    init_normal(m->eh_proj.weight, seed, std);
    m->block.init(seed, std);
  }
}

ParameterList DeepSeekV3::parameters() {
  ParameterList out;
  if (embed_) embed_->append_parameters(out);
  for (auto& layer : layers_) layer->append_parameters(out);
  if (norm_) norm_->append_parameters(out);
  if (head_) head_->append_parameters(out);
  for (auto& m : mtp_) {
    m->enorm.append_parameters(out);
    m->hnorm.append_parameters(out);
    m->eh_proj.append_parameters(out);
    m->block.append_parameters(out);
    m->norm.append_parameters(out);
  }
  return out;
}

BufferList DeepSeekV3::buffers() {
  BufferList out;
  for (auto& layer : layers_) layer->append_buffers(out);
  for (auto& m : mtp_) m->block.append_buffers(out);
  return out;
}

std::vector<Moe*> DeepSeekV3::moe_layers() {
  std::vector<Moe*> out;
  for (auto& layer : layers_) {
    if (layer->is_moe()) out.push_back(layer->moe());
  }
  for (auto& m : mtp_) {
    if (m->block.is_moe()) out.push_back(m->block.moe());
  }
  return out;
}

Losses DeepSeekV3::forward(const Tensor& tokens, const Tensor& input, bool training, Pass& pass,
                           Tensor* output) {
  const int64_t depth = config_.mtp_depth;
  FATHOM_CHECK(tokens.ndim() == 2 && tokens.dtype() == DType::kI32)
      << "DeepSeekV3: tokens must be (B, S + mtp_depth + 1) i32, got " << tokens.str();
  const int64_t batch = tokens.dim(0);
  const int64_t seq = tokens.dim(1) - depth - 1;
  FATHOM_CHECK(batch > 0 && seq > 0)
      << "DeepSeekV3: tokens " << tokens.str() << " hold no prediction (need S + mtp_depth + 1 = "
      << "S + " << depth + 1 << " columns with S >= 1)";
  FATHOM_CHECK(seq <= config_.max_seq_len)
      << "DeepSeekV3: sequence length " << seq << " exceeds max_seq_len " << config_.max_seq_len;
  const int64_t t = batch * seq;
  const int64_t width = tokens.dim(1);

  // Slice ids / targets per depth on the host. An id of -1 (padding) reads embedding row 0 and,
  // as a target, is not scored.
  const std::vector<int32_t> host = tokens.to_vector<int32_t>();
  for (size_t i = 0; i < host.size(); ++i) {
    FATHOM_CHECK(host[i] >= -1 && host[i] < config_.vocab_size)
        << "DeepSeekV3: token id " << host[i] << " at (" << i / width << ", " << i % width
        << ") outside [0, " << config_.vocab_size << ")";
  }
  pass.depths.resize(depth + 1);
  std::vector<int32_t> positions(t);
  for (int64_t k = 0; k <= depth; ++k) {
    std::vector<int32_t> ids(t), targets(t);
    int64_t scored = 0;
    for (int64_t b = 0; b < batch; ++b) {
      for (int64_t s = 0; s < seq; ++s) {
        const int32_t id = host[b * width + s + k];
        const int32_t target = host[b * width + s + k + 1];
        ids[b * seq + s] = id < 0 ? 0 : id;
        targets[b * seq + s] = target < 0 ? OutputHead::kIgnoreIndex : target;
        scored += target >= 0;
        positions[b * seq + s] = static_cast<int32_t>(s);
      }
    }
    pass.depths[k].ids = Tensor::from_vector(ids, {t}, device_);
    pass.depths[k].targets = Tensor::from_vector(targets, {t}, device_);
    pass.depths[k].scored = scored;
  }
  pass.layout.batch = batch;
  pass.layout.seq_len = seq;
  pass.layout.positions = Tensor::from_vector(positions, {t}, device_);
  pass.layout.rope = &rope_;

  // Expert load counts training micro-batches only.
  std::vector<std::vector<int64_t>> load_before;
  if (!training) {
    for (Moe* moe : moe_layers()) load_before.push_back(moe->expert_load());
  }
  const auto restore_load = [&] {
    if (training) return;
    std::vector<Moe*> moes = moe_layers();
    for (size_t i = 0; i < moes.size(); ++i) moes[i]->set_expert_load(load_before[i]);
  };

  Losses losses;
  const auto mean_loss = [](const Tensor& per_token, int64_t scored) {
    const std::vector<float> v = per_token.to_floats();
    double sum = 0;
    for (float x : v) sum += x;
    return scored > 0 ? sum / static_cast<double>(scored) : 0.0;
  };

  Tensor h;
  if (first_stage()) {
    h = Tensor::empty({t, config_.dim}, DType::kF32, device_);
    embed_->forward(pass.depths[0].ids, h);
  } else {
    check_shape("DeepSeekV3::forward_stage", "input", input, {t, config_.dim});
    h = input;
  }
  pass.blocks.resize(layers_.size());
  for (size_t i = 0; i < layers_.size(); ++i) {
    Tensor out = empty_like(h);
    layers_[i]->forward(h, pass.layout, out, pass.blocks[i]);
    losses.balance += layers_[i]->balance_loss(pass.blocks[i]);
    h = out;
  }
  if (!last_stage()) {
    *output = h;
    losses.total = losses.balance;
    restore_load();
    return losses;
  }
  pass.h_last = h;
  Tensor normed = empty_like(h);
  norm_->forward(h, normed, pass.norm);
  losses.lm = mean_loss(head_->forward(normed, pass.depths[0].targets, pass.head),
                        pass.depths[0].scored);
  losses.tokens = pass.depths[0].scored;

  pass.mtp.resize(depth);
  Tensor prev = h;
  for (int64_t k = 0; k < depth; ++k) {
    MtpModule& m = *mtp_[k];
    Pass::Mtp& saved = pass.mtp[k];
    Tensor e = empty_like(h);
    embed_->forward(pass.depths[k + 1].ids, e);
    Tensor e_normed = empty_like(h);
    m.enorm.forward(e, e_normed, saved.enorm);
    Tensor h_normed = empty_like(h);
    m.hnorm.forward(prev, h_normed, saved.hnorm);
    saved.proj_in = Tensor::empty({t, 2 * config_.dim}, DType::kF32, device_);
    copy_columns(e_normed, 0, saved.proj_in, 0, config_.dim);
    copy_columns(h_normed, 0, saved.proj_in, config_.dim, config_.dim);
    Tensor x = empty_like(h);
    m.eh_proj.forward(saved.proj_in, x);
    Tensor out = empty_like(h);
    m.block.forward(x, pass.layout, out, saved.block);
    losses.balance += m.block.balance_loss(saved.block);
    Tensor out_normed = empty_like(h);
    m.norm.forward(out, out_normed, saved.norm);
    losses.mtp += mean_loss(head_->forward(out_normed, pass.depths[k + 1].targets, saved.head),
                            pass.depths[k + 1].scored);
    prev = out;
  }
  if (depth > 0) losses.mtp /= static_cast<double>(depth);
  losses.total = losses.lm + config_.mtp_lambda * losses.mtp + losses.balance;
  restore_load();
  return losses;
}

void DeepSeekV3::backward(double loss_scale, const Tensor& grad_output, Pass& pass,
                          WeightGradStore* store, Tensor* grad_input) {
  // With deferred weight gradients nothing is final until the store runs.
  const bool report = gradients_ready_ != nullptr && store == nullptr;
  const int64_t t = pass.layout.batch * pass.layout.seq_len;
  const int64_t dim = config_.dim;
  Tensor dh;
  if (last_stage()) {
    dh = backward_head(loss_scale, pass, store, report);
  } else {
    check_shape("DeepSeekV3::backward_stage", "grad_output", grad_output, {t, dim});
    dh = grad_output;
  }
  for (int64_t i = static_cast<int64_t>(layers_.size()) - 1; i >= 0; --i) {
    Tensor dx = Tensor::empty({t, dim}, DType::kF32, device_);
    layers_[i]->backward(dh, loss_scale, pass.blocks[i], dx, store);
    dh = dx;
    if (report) {
      ParameterList ready;
      layers_[i]->append_parameters(ready);
      gradients_ready_(ready);
    }
  }
  if (!first_stage()) {
    *grad_input = dh;
    return;
  }
  embed_->backward_weight_or_defer(pass.depths[0].ids, dh, store);
  if (report) {
    ParameterList ready;
    embed_->append_parameters(ready);
    gradients_ready_(ready);
  }
}

Tensor DeepSeekV3::backward_head(double loss_scale, Pass& pass, WeightGradStore* store,
                                 bool report) {
  const int64_t depth = config_.mtp_depth;
  const int64_t t = pass.layout.batch * pass.layout.seq_len;
  const int64_t dim = config_.dim;
  const auto dloss_of = [&](double weight, int64_t scored) {
    Tensor d = Tensor::empty({t}, DType::kF32, device_);
    fill(d, scored > 0 ? static_cast<float>(weight / static_cast<double>(scored)) : 0.0f);
    return d;
  };
  // MTP modules, deepest first: each passes a gradient back to the hidden state it read.
  Tensor dprev;  // d loss / d (block output of module k), from module k + 1's hnorm
  for (int64_t k = depth - 1; k >= 0; --k) {
    MtpModule& m = *mtp_[k];
    Pass::Mtp& saved = pass.mtp[k];
    const double weight = loss_scale * config_.mtp_lambda / static_cast<double>(depth);
    Tensor dout_normed = Tensor::empty({t, dim}, DType::kF32, device_);
    head_->backward(dloss_of(weight, pass.depths[k + 1].scored), saved.head, dout_normed);
    Tensor dout = Tensor::empty({t, dim}, DType::kF32, device_);
    m.norm.backward(dout_normed, saved.norm, dout);
    if (dprev.defined()) axpy(1.0f, dprev, dout);
    Tensor dx = Tensor::empty({t, dim}, DType::kF32, device_);
    m.block.backward(dout, loss_scale, saved.block, dx, store);
    Tensor dproj_in = Tensor::empty({t, 2 * dim}, DType::kF32, device_);
    m.eh_proj.backward_input(dx, dproj_in);
    m.eh_proj.backward_weight_or_defer(dx, saved.proj_in, store);
    Tensor de_normed = Tensor::empty({t, dim}, DType::kF32, device_);
    Tensor dh_normed = Tensor::empty({t, dim}, DType::kF32, device_);
    copy_columns(dproj_in, 0, de_normed, 0, dim);
    copy_columns(dproj_in, dim, dh_normed, 0, dim);
    Tensor de = Tensor::empty({t, dim}, DType::kF32, device_);
    m.enorm.backward(de_normed, saved.enorm, de);
    embed_->backward_weight_or_defer(pass.depths[k + 1].ids, de, store);
    dprev = Tensor::empty({t, dim}, DType::kF32, device_);
    m.hnorm.backward(dh_normed, saved.hnorm, dprev);
    if (report) {
      ParameterList ready;
      m.enorm.append_parameters(ready);
      m.hnorm.append_parameters(ready);
      m.eh_proj.append_parameters(ready);
      m.block.append_parameters(ready);
      m.norm.append_parameters(ready);
      gradients_ready_(ready);
    }
  }

  Tensor dnormed = Tensor::empty({t, dim}, DType::kF32, device_);
  head_->backward(dloss_of(loss_scale, pass.depths[0].scored), pass.head, dnormed);
  Tensor dh = Tensor::empty({t, dim}, DType::kF32, device_);
  norm_->backward(dnormed, pass.norm, dh);
  if (dprev.defined()) axpy(1.0f, dprev, dh);
  if (report) {
    ParameterList ready;
    head_->append_parameters(ready);
    norm_->append_parameters(ready);
    gradients_ready_(ready);
  }
  return dh;
}

Losses DeepSeekV3::forward_backward(const Tensor& tokens, double loss_scale,
                                    WeightGradStore* store) {
  check_whole("forward_backward");
  Pass pass;
  const Losses losses = forward(tokens, Tensor(), /*training=*/true, pass, nullptr);
  backward(loss_scale, Tensor(), pass, store, nullptr);
  return losses;
}

Losses DeepSeekV3::evaluate(const Tensor& tokens) {
  check_whole("evaluate");
  Pass pass;
  return forward(tokens, Tensor(), /*training=*/false, pass, nullptr);
}

Tensor DeepSeekV3::logits(const Tensor& tokens, Losses* losses) {
  check_whole("logits");
  Pass pass;
  const Losses result = forward(tokens, Tensor(), /*training=*/false, pass, nullptr);
  if (losses != nullptr) *losses = result;
  return head_->logits(pass.head.h);
}

Tensor DeepSeekV3::forward_stage(const Tensor& tokens, const Tensor& input, StagePass& pass,
                                 Losses* losses, bool training) {
  Tensor output;
  const Losses l = forward(tokens, input, training, *pass.pass_, &output);
  if (losses != nullptr) *losses = l;
  return output;
}

Tensor DeepSeekV3::stage_logits(const StagePass& pass) {
  FATHOM_CHECK(last_stage()) << "DeepSeekV3::stage_logits: stage " << stage_ << " of " << stages_
                             << " has no head";
  return head_->logits(pass.pass_->head.h);
}

Tensor DeepSeekV3::backward_stage(double loss_scale, const Tensor& grad_output, StagePass& pass,
                                  WeightGradStore* store) {
  Tensor grad_input;
  backward(loss_scale, grad_output, *pass.pass_, store, &grad_input);
  pass.pass_ = std::make_unique<Pass>();  // the activations are no longer needed
  return grad_input;
}

}  // namespace fathom::model
