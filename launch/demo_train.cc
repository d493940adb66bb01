#include "launch/demo_train.h"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <random>
#include <string>

#include "absl/strings/numbers.h"
#include "data/tasks.h"
#include "data/tokenizer.h"
#include "kernels/cpu_info.h"
#include "kernels/ops.h"
#include "kernels/threads.h"

namespace fathom::launch {
namespace {

constexpr int64_t kVocab = data::Tokenizer::kBuiltinVocabSize;
constexpr int32_t kIgnore = -1;
constexpr float kNormEps = 1e-6f;
constexpr int64_t kTrainProblems = 20000;

// ---- Data: verifiable arithmetic problems from data/, as one endless token stream ----

// Each problem is "<|bos|>prompt<think>...</think><answer>result</answer><|eos|>"; the answer
// digits are the tokens held-out accuracy is scored on.
class ProblemStream {
 public:
  ProblemStream(data::Split split, uint64_t seed, int64_t count) {
    data::TaskOptions options;
    options.arithmetic.ops = "+-";
    auto tasks = data::generate(data::TaskKind::kArithmetic, split, seed, count, options);
    FATHOM_CHECK(tasks.ok()) << "demo: " << tasks.status().ToString();
    const data::Tokenizer tokenizer;
    for (const data::Task& task : *tasks) {
      tokens_.push_back(data::Tokenizer::kBos);
      const std::vector<int32_t> body = tokenizer.encode(task.prompt + task.target);
      bool in_answer = false;
      answer_.push_back(false);
      for (int32_t id : body) {
        if (id == data::Tokenizer::kAnswerEnd) in_answer = false;
        tokens_.push_back(id);
        answer_.push_back(in_answer);
        if (id == data::Tokenizer::kAnswerBegin) in_answer = true;
      }
      tokens_.push_back(data::Tokenizer::kEos);
      answer_.push_back(false);
    }
  }

  // Next token and whether it is part of an answer.
  int32_t next(bool* is_answer) {
    if (pos_ == tokens_.size()) pos_ = 0;
    *is_answer = answer_[pos_];
    return tokens_[pos_++];
  }

 private:
  std::vector<int32_t> tokens_;
  std::vector<bool> answer_;
  size_t pos_ = 0;
};

struct Batch {
  Tensor ids;      // (B*S) i32
  Tensor targets;  // (B*S) i32, kIgnore where not scored
  int64_t scored = 0;
};

// B sequences of S next-token predictions. answers_only scores only answer tokens.
Batch next_batch(ProblemStream& stream, int64_t batch, int64_t seq_len, bool answers_only) {
  std::vector<int32_t> ids(batch * seq_len), targets(batch * seq_len);
  Batch out;
  for (int64_t b = 0; b < batch; ++b) {
    bool answer = false;
    int32_t prev = stream.next(&answer);
    for (int64_t t = 0; t < seq_len; ++t) {
      const int32_t token = stream.next(&answer);
      ids[b * seq_len + t] = prev;
      const bool scored = !answers_only || answer;
      targets[b * seq_len + t] = scored ? token : kIgnore;
      out.scored += scored;
      prev = token;
    }
  }
  out.ids = Tensor::from_vector(ids, {batch * seq_len});
  out.targets = Tensor::from_vector(targets, {batch * seq_len});
  return out;
}

// ---- Model ----

struct Param {
  Tensor value, grad, m, v;
  bool decay = true;
};

Param make_param(std::initializer_list<int64_t> shape, float std, std::mt19937& rng,
                 bool decay = true) {
  Param p;
  p.value = Tensor::empty(shape, DType::kF32);
  float* w = p.value.data<float>();
  if (std == 0) {
    std::fill_n(w, p.value.numel(), 1.0f);  // norm gains start at 1
  } else {
    std::normal_distribution<float> normal(0.0f, std);
    for (int64_t i = 0; i < p.value.numel(); ++i) w[i] = normal(rng);
  }
  p.grad = Tensor::zeros(shape, DType::kF32);
  p.m = Tensor::zeros(shape, DType::kF32);
  p.v = Tensor::zeros(shape, DType::kF32);
  p.decay = decay;
  return p;
}

// Activations one layer keeps for its backward.
struct LayerCache {
  Tensor x, h1, rstd1, q, k, v, o, lse, x1, h2, rstd2, gate, up, act;
};

struct Layer {
  Param attn_norm, wq, wk, wv, wo, ffn_norm, w1, w3, w2;
  LayerCache cache;
  std::vector<Param*> params() {
    return {&attn_norm, &wq, &wk, &wv, &wo, &ffn_norm, &w1, &w3, &w2};
  }
};

GemmOptions linear() { return {.trans_b = true}; }                      // y = x W^T
GemmOptions weight_grad() { return {.trans_a = true, .accumulate = true}; }  // dW += dy^T x

class TinyTransformer {
 public:
  explicit TinyTransformer(const DemoConfig& c) : c_(c) {
    std::mt19937 rng(c.seed);
    const float std = 0.02f;
    const float out_std = std / std::sqrt(2.0f * c.n_layers);
    embedding_ = make_param({kVocab, c.dim}, std, rng, /*decay=*/false);
    for (int64_t l = 0; l < c.n_layers; ++l) {
      Layer layer{.attn_norm = make_param({c.dim}, 0, rng, false),
                  .wq = make_param({c.dim, c.dim}, std, rng),
                  .wk = make_param({c.dim, c.dim}, std, rng),
                  .wv = make_param({c.dim, c.dim}, std, rng),
                  .wo = make_param({c.dim, c.dim}, out_std, rng),
                  .ffn_norm = make_param({c.dim}, 0, rng, false),
                  .w1 = make_param({c.ffn_dim, c.dim}, std, rng),
                  .w3 = make_param({c.ffn_dim, c.dim}, std, rng),
                  .w2 = make_param({c.dim, c.ffn_dim}, out_std, rng),
                  .cache = {}};
      layers_.push_back(std::move(layer));
    }
    final_norm_ = make_param({c.dim}, 0, rng, false);
    head_ = make_param({kVocab, c.dim}, std, rng);
    rope_ = make_rope_table({.dim = head_dim(), .base = 10000.0f, .style = RopeStyle::kHalf},
                            c.seq_len);
    std::vector<int32_t> pos(c.batch * c.seq_len);
    for (size_t i = 0; i < pos.size(); ++i) pos[i] = static_cast<int32_t>(i % c.seq_len);
    positions_ = Tensor::from_vector(pos, {c.batch * c.seq_len});
  }

  int64_t head_dim() const { return c_.dim / c_.n_heads; }

  std::vector<Param*> params() {
    std::vector<Param*> all = {&embedding_, &final_norm_, &head_};
    for (Layer& l : layers_) {
      for (Param* p : l.params()) all.push_back(p);
    }
    return all;
  }

  // Forward to the final normed hidden state (T, dim).
  Tensor forward(const Tensor& ids) {
    const int64_t T = ids.numel(), D = c_.dim, H = c_.n_heads, Dh = head_dim();
    Tensor x = Tensor::empty({T, D}, DType::kF32);
    embedding_forward(ids, embedding_.value, x);
    for (Layer& layer : layers_) {
      LayerCache& s = layer.cache;
      s.x = x;
      s.h1 = Tensor::empty({T, D}, DType::kF32);
      s.rstd1 = Tensor::empty({T}, DType::kF32);
      rmsnorm_forward(x, layer.attn_norm.value, kNormEps, s.h1, s.rstd1);
      s.q = Tensor::empty({T, D}, DType::kF32);
      s.k = Tensor::empty({T, D}, DType::kF32);
      s.v = Tensor::empty({T, D}, DType::kF32);
      gemm(s.h1, layer.wq.value, s.q, linear());
      gemm(s.h1, layer.wk.value, s.k, linear());
      gemm(s.h1, layer.wv.value, s.v, linear());
      Tensor q3 = s.q.view({T, H, Dh}), k3 = s.k.view({T, H, Dh});
      rope_apply(q3, positions_, rope_);
      rope_apply(k3, positions_, rope_);
      s.o = Tensor::empty({T, D}, DType::kF32);
      s.lse = Tensor::empty({c_.batch, H, c_.seq_len}, DType::kF32);
      Tensor o4 = s.o.view(attention_shape());
      attention_forward(s.q.view(attention_shape()), s.k.view(attention_shape()),
                        s.v.view(attention_shape()), {}, o4, s.lse);
      s.x1 = x.clone();
      gemm(s.o, layer.wo.value, s.x1, {.trans_b = true, .accumulate = true});  // x + o Wo^T
      s.h2 = Tensor::empty({T, D}, DType::kF32);
      s.rstd2 = Tensor::empty({T}, DType::kF32);
      rmsnorm_forward(s.x1, layer.ffn_norm.value, kNormEps, s.h2, s.rstd2);
      s.gate = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      s.up = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      s.act = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      gemm(s.h2, layer.w1.value, s.gate, linear());
      gemm(s.h2, layer.w3.value, s.up, linear());
      swiglu_forward(s.gate, s.up, s.act);
      x = s.x1.clone();
      gemm(s.act, layer.w2.value, x, {.trans_b = true, .accumulate = true});  // x1 + act W2^T
    }
    x_final_ = x;
    hidden_ = Tensor::empty({T, D}, DType::kF32);
    final_rstd_ = Tensor::empty({T}, DType::kF32);
    rmsnorm_forward(x, final_norm_.value, kNormEps, hidden_, final_rstd_);
    return hidden_;
  }

  // Mean cross-entropy over scored tokens; keeps what backward() needs.
  double loss(const Batch& batch) {
    forward(batch.ids);
    const int64_t T = batch.ids.numel();
    token_loss_ = Tensor::empty({T}, DType::kF32);
    lse_ = Tensor::empty({T}, DType::kF32);
    fused_linear_cross_entropy_forward(hidden_, head_.value, batch.targets, token_loss_, lse_,
                                       {.chunk_size = 64, .ignore_index = kIgnore});
    return reduce_all(token_loss_, Reduce::kSum) / std::max<int64_t>(batch.scored, 1);
  }

  // Parameter gradients (+=) of the last loss().
  void backward(const Batch& batch) {
    const int64_t T = batch.ids.numel(), D = c_.dim;
    Tensor dloss = Tensor::empty({T}, DType::kF32);
    fill(dloss, 1.0f / std::max<int64_t>(batch.scored, 1));
    Tensor dhidden = Tensor::empty({T, D}, DType::kF32);
    fused_linear_cross_entropy_backward(hidden_, head_.value, batch.targets, lse_, dloss, dhidden,
                                        head_.grad, {.chunk_size = 64, .ignore_index = kIgnore});
    Tensor dx = Tensor::empty({T, D}, DType::kF32);
    rmsnorm_backward(dhidden, x_final_, final_norm_.value, final_rstd_, dx, final_norm_.grad);
    Tensor scratch_d = Tensor::empty({T, D}, DType::kF32);
    for (auto it = layers_.rbegin(); it != layers_.rend(); ++it) {
      Layer& layer = *it;
      LayerCache& s = layer.cache;
      // FFN: x2 = x1 + act W2^T
      Tensor dact = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      gemm(dx, layer.w2.value, dact);
      gemm(dx, s.act, layer.w2.grad, weight_grad());
      Tensor dgate = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      Tensor dup = Tensor::empty({T, c_.ffn_dim}, DType::kF32);
      swiglu_backward(dact, s.gate, s.up, dgate, dup);
      Tensor dh2 = Tensor::empty({T, D}, DType::kF32);
      gemm(dgate, layer.w1.value, dh2);
      gemm(dup, layer.w3.value, dh2, {.accumulate = true});
      gemm(dgate, s.h2, layer.w1.grad, weight_grad());
      gemm(dup, s.h2, layer.w3.grad, weight_grad());
      rmsnorm_backward(dh2, s.x1, layer.ffn_norm.value, s.rstd2, scratch_d, layer.ffn_norm.grad);
      axpy(1.0f, scratch_d, dx);  // dx1 = dx2 + through the norm
      // Attention: x1 = x + o Wo^T
      Tensor d_o = Tensor::empty({T, D}, DType::kF32);
      gemm(dx, layer.wo.value, d_o);
      gemm(dx, s.o, layer.wo.grad, weight_grad());
      Tensor dq = Tensor::empty({T, D}, DType::kF32);
      Tensor dk = Tensor::empty({T, D}, DType::kF32);
      Tensor dv = Tensor::empty({T, D}, DType::kF32);
      Tensor dq4 = dq.view(attention_shape()), dk4 = dk.view(attention_shape()),
             dv4 = dv.view(attention_shape());
      attention_backward(s.q.view(attention_shape()), s.k.view(attention_shape()),
                         s.v.view(attention_shape()), s.o.view(attention_shape()), s.lse,
                         d_o.view(attention_shape()), {}, dq4, dk4, dv4);
      Tensor dq3 = dq.view({T, c_.n_heads, head_dim()}), dk3 = dk.view({T, c_.n_heads, head_dim()});
      rope_apply(dq3, positions_, rope_, /*inverse=*/true);
      rope_apply(dk3, positions_, rope_, /*inverse=*/true);
      Tensor dh1 = Tensor::empty({T, D}, DType::kF32);
      gemm(dq, layer.wq.value, dh1);
      gemm(dk, layer.wk.value, dh1, {.accumulate = true});
      gemm(dv, layer.wv.value, dh1, {.accumulate = true});
      gemm(dq, s.h1, layer.wq.grad, weight_grad());
      gemm(dk, s.h1, layer.wk.grad, weight_grad());
      gemm(dv, s.h1, layer.wv.grad, weight_grad());
      rmsnorm_backward(dh1, s.x, layer.attn_norm.value, s.rstd1, scratch_d, layer.attn_norm.grad);
      axpy(1.0f, scratch_d, dx);
    }
    embedding_backward(batch.ids, dx, embedding_.grad);
  }

  // Teacher-forced argmax accuracy over scored tokens, from explicit logits.
  double accuracy(const Batch& batch) {
    Tensor hidden = forward(batch.ids);
    Tensor logits = Tensor::empty({batch.ids.numel(), kVocab}, DType::kF32);
    gemm(hidden, head_.value, logits, linear());
    const float* l = logits.data<float>();
    const int32_t* target = batch.targets.data<int32_t>();
    int64_t correct = 0;
    for (int64_t t = 0; t < batch.ids.numel(); ++t) {
      if (target[t] == kIgnore) continue;
      const float* row = l + t * kVocab;
      correct += std::max_element(row, row + kVocab) - row == target[t];
    }
    return static_cast<double>(correct) / std::max<int64_t>(batch.scored, 1);
  }

 private:
  Shape attention_shape() const { return {c_.batch, c_.seq_len, c_.n_heads, head_dim()}; }

  DemoConfig c_;
  Param embedding_, final_norm_, head_;
  std::vector<Layer> layers_;
  RopeTable rope_;
  Tensor positions_, x_final_, hidden_, final_rstd_, token_loss_, lse_;
};

// Linear warmup over the first 10% of steps, then cosine decay to 10% of the peak.
double learning_rate(const DemoConfig& c, int64_t step) {
  const int64_t warmup = std::max<int64_t>(1, c.steps / 10);
  if (step < warmup) return c.lr * (step + 1) / warmup;
  const double progress = static_cast<double>(step - warmup) / std::max<int64_t>(1, c.steps - warmup);
  return c.lr * (0.1 + 0.9 * 0.5 * (1 + std::cos(M_PI * progress)));
}

struct HeldOut {
  double loss = 0, accuracy = 0;
};

HeldOut evaluate(TinyTransformer& model, const DemoConfig& c) {
  ProblemStream stream(data::Split::kHeldOut, c.seed, c.eval_problems);
  HeldOut r;
  int64_t batches = 0;
  // A problem with its worked reasoning is about 100 tokens.
  const int64_t n = std::max<int64_t>(1, c.eval_problems * 100 / (c.batch * c.seq_len));
  for (int64_t i = 0; i < n; ++i, ++batches) {
    Batch b = next_batch(stream, c.batch, c.seq_len, /*answers_only=*/true);
    r.loss += model.loss(b);
    r.accuracy += model.accuracy(b);
  }
  r.loss /= batches;
  r.accuracy /= batches;
  return r;
}

}  // namespace

DemoResult run_demo(const DemoConfig& c, const std::function<void(const DemoStep&)>& on_step) {
  FATHOM_CHECK(c.dim % c.n_heads == 0 && (c.dim / c.n_heads) % 2 == 0)
      << "demo: dim " << c.dim << " must split into an even head dim over " << c.n_heads << " heads";
  TinyTransformer model(c);
  DemoResult result;
  const HeldOut before = evaluate(model, c);
  result.loss_before = before.loss;
  result.accuracy_before = before.accuracy;

  ProblemStream train(data::Split::kTrain, c.seed, kTrainProblems);
  std::vector<Param*> params = model.params();
  std::vector<Tensor*> grads;
  for (Param* p : params) grads.push_back(&p->grad);
  for (int64_t step = 0; step < c.steps; ++step) {
    const auto start = std::chrono::steady_clock::now();
    Batch batch = next_batch(train, c.batch, c.seq_len, /*answers_only=*/false);
    for (Param* p : params) fill(p->grad, 0.0f);
    const double loss = model.loss(batch);
    model.backward(batch);
    const double grad_norm = clip_grad_norm(grads, c.clip);
    const double lr = learning_rate(c, step);
    for (Param* p : params) {
      adamw_update(p->value, p->grad, p->m, p->v,
                   {.lr = static_cast<float>(lr), .beta1 = 0.9f, .beta2 = 0.95f, .eps = 1e-8f,
                    .weight_decay = p->decay ? c.weight_decay : 0.0f, .step = step + 1});
    }
    const double seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    DemoStep s{step + 1, loss, grad_norm, lr, batch.ids.numel() / seconds, seconds};
    result.steps.push_back(s);
    if (on_step) on_step(s);
  }
  const HeldOut after = evaluate(model, c);
  result.loss_after = after.loss;
  result.accuracy_after = after.accuracy;
  return result;
}

int demo_main(const std::vector<std::string>& args) {
  DemoConfig c;
  int threads = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& flag = args[i];
    if (flag == "--help") {
      std::printf(
          "usage: fathom demo [--steps N] [--seed S] [--threads T]\n"
          "Trains a tiny transformer on generated arithmetic problems with the kernels' ops and\n"
          "reports the loss, throughput and held-out answer accuracy.\n");
      return 0;
    }
    int64_t value = 0;
    if (i + 1 >= args.size() || !absl::SimpleAtoi(args[i + 1], &value) || value <= 0) {
      std::fprintf(stderr, "fathom demo: %s needs a positive integer\n", flag.c_str());
      return 2;
    }
    ++i;
    if (flag == "--steps") {
      c.steps = value;
    } else if (flag == "--seed") {
      c.seed = static_cast<uint32_t>(value);
    } else if (flag == "--threads") {
      threads = static_cast<int>(value);
    } else {
      std::fprintf(stderr, "fathom demo: unknown flag '%s' (see --help)\n", flag.c_str());
      return 2;
    }
  }
  if (threads > 0) set_cpu_threads(threads);
  if (const std::string warning = blas_core_warning(); !warning.empty()) {
    std::printf("warning: %s\n", warning.c_str());
  }
  std::printf("demo: %lld-layer transformer, dim %lld, %lld heads, %lld x %lld tokens per step, "
              "%lld steps, %d CPU threads\n",
              static_cast<long long>(c.n_layers), static_cast<long long>(c.dim),
              static_cast<long long>(c.n_heads), static_cast<long long>(c.batch),
              static_cast<long long>(c.seq_len), static_cast<long long>(c.steps), cpu_threads());
  double train_seconds = 0;
  DemoResult r = run_demo(c, [&](const DemoStep& s) {
    train_seconds += s.seconds;
    if (s.step % c.log_every != 0 && s.step != 1) return;
    const double eta = train_seconds / s.step * (c.steps - s.step);
    std::printf("step %5lld/%lld  loss %.4f  grad_norm %.3f  lr %.2e  %.0f tok/s  eta %.0fs\n",
                static_cast<long long>(s.step), static_cast<long long>(c.steps), s.loss,
                s.grad_norm, s.lr, s.tokens_per_s, eta);
    std::fflush(stdout);
  });
  const double tokens_per_s = static_cast<double>(c.batch * c.seq_len * c.steps) / train_seconds;
  std::printf("held-out answer tokens: loss %.3f -> %.3f, accuracy %.1f%% -> %.1f%%\n",
              r.loss_before, r.loss_after, 100 * r.accuracy_before, 100 * r.accuracy_after);
  std::printf("training: %.0f tokens/s, first loss %.3f, last loss %.3f\n", tokens_per_s,
              r.steps.front().loss, r.steps.back().loss);
  return r.loss_after < r.loss_before ? 0 : 1;
}

}  // namespace fathom::launch
