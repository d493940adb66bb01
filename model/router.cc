#include "model/router.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string_view>
#include <vector>

namespace fathom::model {

void check_router_config(const RouterConfig& cfg, std::string_view fn) {
  FATHOM_CHECK(cfg.n_experts >= 1 && cfg.top_k >= 1 && cfg.top_k <= cfg.n_experts)
      << fn << ": need 1 <= top_k <= n_experts, got top_k " << cfg.top_k << ", n_experts "
      << cfg.n_experts;
  FATHOM_CHECK(cfg.n_groups >= 1 && cfg.n_experts % cfg.n_groups == 0)
      << fn << ": n_groups " << cfg.n_groups << " must divide n_experts " << cfg.n_experts;
  FATHOM_CHECK(cfg.n_groups == 1 || cfg.n_experts / cfg.n_groups >= 2)
      << fn << ": with " << cfg.n_groups << " groups each group needs >= 2 experts, got "
      << cfg.n_experts / cfg.n_groups;
  FATHOM_CHECK(cfg.n_limited_groups >= 1 && cfg.n_limited_groups <= cfg.n_groups)
      << fn << ": need 1 <= n_limited_groups <= n_groups, got " << cfg.n_limited_groups << " of "
      << cfg.n_groups;
  FATHOM_CHECK(cfg.top_k <= cfg.n_limited_groups * (cfg.n_experts / cfg.n_groups))
      << fn << ": top_k " << cfg.top_k << " exceeds the experts of " << cfg.n_limited_groups
      << " groups";
  FATHOM_CHECK(cfg.route_scale > 0) << fn << ": route_scale must be > 0, got " << cfg.route_scale;
}

namespace {

void check_logits(const char* fn, const Tensor& logits, const RouterConfig& cfg) {
  check_defined(fn, "logits", logits);
  check_dtype(fn, "logits", logits, DType::kF32);
  FATHOM_CHECK(logits.ndim() == 2 && logits.dim(1) == cfg.n_experts)
      << fn << ": logits must be (T, " << cfg.n_experts << "), got " << logits.str();
}

void check_routing(const char* fn, const Routing& r, const RouterConfig& cfg) {
  check_defined(fn, "routing.scores", r.scores);
  const int64_t t = r.scores.dim(0);
  check_shape(fn, "routing.scores", r.scores, {t, cfg.n_experts});
  check_shape(fn, "routing.topk_idx", r.topk_idx, {t, cfg.top_k});
  check_shape(fn, "routing.topk_weight", r.topk_weight, {t, cfg.top_k});
  check_dtype(fn, "routing.topk_idx", r.topk_idx, DType::kI32);
}

// Affinities of one token: sigmoid per expert, or a stable softmax over the row.
void compute_scores(const float* logits, int64_t e, ScoreFunc f, float* s) {
  if (f == ScoreFunc::kSigmoid) {
    for (int64_t i = 0; i < e; ++i)
      s[i] = static_cast<float>(1.0 / (1.0 + std::exp(-double{logits[i]})));
    return;
  }
  const double mx = *std::max_element(logits, logits + e);
  double z = 0;
  for (int64_t i = 0; i < e; ++i) z += std::exp(double{logits[i]} - mx);
  for (int64_t i = 0; i < e; ++i) s[i] = static_cast<float>(std::exp(double{logits[i]} - mx) / z);
}

// Gate values of one token's selection from its unbiased scores.
void compute_weights(const float* s, const int32_t* idx, const RouterConfig& cfg, float* w) {
  double sum = 1.0;
  if (cfg.score_func == ScoreFunc::kSigmoid) {
    sum = 0;
    for (int64_t k = 0; k < cfg.top_k; ++k) sum += s[idx[k]];
  }
  for (int64_t k = 0; k < cfg.top_k; ++k) {
    w[k] = static_cast<float>(double{s[idx[k]]} / sum * cfg.route_scale);
  }
}

// Sorts `ids` so that higher `key` comes first, ties to the lower id; keeps the first n.
void top_n(std::vector<int32_t>& ids, const std::vector<float>& key, int64_t n) {
  auto better = [&key](int32_t a, int32_t b) {
    return key[a] > key[b] || (key[a] == key[b] && a < b);
  };
  std::partial_sort(ids.begin(), ids.begin() + n, ids.end(), better);
  ids.resize(static_cast<size_t>(n));
}

// d_scores of one token (E doubles) -> d_logits of that token, through sigmoid or softmax.
void scores_backward(const std::vector<double>& ds, const float* s, ScoreFunc f, int64_t e,
                     float* d_logits, bool accumulate) {
  double dot = 0;
  if (f == ScoreFunc::kSoftmax) {
    for (int64_t i = 0; i < e; ++i) dot += ds[i] * s[i];
  }
  for (int64_t i = 0; i < e; ++i) {
    const double si = s[i];
    const double g = f == ScoreFunc::kSigmoid ? ds[i] * si * (1.0 - si) : si * (ds[i] - dot);
    d_logits[i] = static_cast<float>(accumulate ? d_logits[i] + g : g);
  }
}

Routing make_routing(const std::vector<float>& scores, const std::vector<int32_t>& idx,
                     const std::vector<float>& weights, int64_t t, const RouterConfig& cfg,
                     Device device) {
  Routing r;
  r.scores = Tensor::from_vector(scores, {t, cfg.n_experts}, device);
  r.topk_idx = Tensor::from_vector(idx, {t, cfg.top_k}, device);
  r.topk_weight = Tensor::from_vector(weights, {t, cfg.top_k}, device);
  return r;
}

}  // namespace

RouterConfig router_config(const ModelConfig& config) {
  return RouterConfig{.n_experts = config.n_routed_experts,
                      .top_k = config.n_activated_experts,
                      .n_groups = config.n_expert_groups,
                      .n_limited_groups = config.n_limited_groups,
                      .score_func = config.score_func,
                      .route_scale = config.route_scale};
}

Routing route(const Tensor& logits, const Tensor& bias, const RouterConfig& cfg) {
  constexpr const char* kFn = "route";
  check_router_config(cfg, kFn);
  check_logits(kFn, logits, cfg);
  check_shape(kFn, "bias", bias, {cfg.n_experts});
  check_dtype(kFn, "bias", bias, DType::kF32);
  const int64_t t = logits.dim(0);
  const int64_t e = cfg.n_experts;
  const int64_t k = cfg.top_k;
  const int64_t per_group = e / cfg.n_groups;
  const std::vector<float> l = logits.to_vector<float>();
  const std::vector<float> b = bias.to_vector<float>();
  std::vector<float> scores(static_cast<size_t>(t * e));
  std::vector<int32_t> idx(static_cast<size_t>(t * k));
  std::vector<float> weights(static_cast<size_t>(t * k));
  std::vector<float> biased(static_cast<size_t>(e));
  std::vector<float> group_score(static_cast<size_t>(cfg.n_groups));
  std::vector<int32_t> groups;
  std::vector<int32_t> candidates;
  for (int64_t row = 0; row < t; ++row) {
    const float* lr = l.data() + row * e;
    for (int64_t i = 0; i < e; ++i) {
      FATHOM_CHECK(std::isfinite(lr[i]))
          << kFn << ": non-finite logit " << lr[i] << " at token " << row << ", expert " << i;
    }
    float* s = scores.data() + row * e;
    compute_scores(lr, e, cfg.score_func, s);
    for (int64_t i = 0; i < e; ++i) biased[i] = s[i] + b[i];
    candidates.clear();
    if (cfg.n_groups > 1) {
      for (int64_t g = 0; g < cfg.n_groups; ++g) {
        float first = -std::numeric_limits<float>::infinity();
        float second = first;
        for (int64_t i = g * per_group; i < (g + 1) * per_group; ++i) {
          if (biased[i] > first) {
            second = first;
            first = biased[i];
          } else if (biased[i] > second) {
            second = biased[i];
          }
        }
        group_score[g] = first + second;
      }
      groups.resize(static_cast<size_t>(cfg.n_groups));
      std::iota(groups.begin(), groups.end(), 0);
      top_n(groups, group_score, cfg.n_limited_groups);
      std::sort(groups.begin(), groups.end());
      for (int32_t g : groups) {
        for (int64_t i = g * per_group; i < (g + 1) * per_group; ++i) {
          candidates.push_back(static_cast<int32_t>(i));
        }
      }
    } else {
      candidates.resize(static_cast<size_t>(e));
      std::iota(candidates.begin(), candidates.end(), 0);
    }
    top_n(candidates, biased, k);
    std::copy(candidates.begin(), candidates.end(), idx.begin() + row * k);
    compute_weights(s, idx.data() + row * k, cfg, weights.data() + row * k);
  }
  return make_routing(scores, idx, weights, t, cfg, logits.device());
}

Routing route_fixed(const Tensor& logits, const Tensor& topk_idx, const RouterConfig& cfg) {
  constexpr const char* kFn = "route_fixed";
  check_router_config(cfg, kFn);
  check_logits(kFn, logits, cfg);
  const int64_t t = logits.dim(0);
  const int64_t e = cfg.n_experts;
  const int64_t k = cfg.top_k;
  check_shape(kFn, "topk_idx", topk_idx, {t, k});
  check_dtype(kFn, "topk_idx", topk_idx, DType::kI32);
  const std::vector<float> l = logits.to_vector<float>();
  const std::vector<int32_t> idx = topk_idx.to_vector<int32_t>();
  std::vector<float> scores(static_cast<size_t>(t * e));
  std::vector<float> weights(static_cast<size_t>(t * k));
  for (int64_t row = 0; row < t; ++row) {
    const int32_t* ir = idx.data() + row * k;
    for (int64_t j = 0; j < k; ++j) {
      FATHOM_CHECK(ir[j] >= 0 && ir[j] < e) << kFn << ": topk_idx[" << row << ", " << j
                                            << "] = " << ir[j] << " not in [0, " << e << ")";
      FATHOM_CHECK(std::find(ir, ir + j, ir[j]) == ir + j)
          << kFn << ": expert " << ir[j] << " selected twice by token " << row;
    }
    float* s = scores.data() + row * e;
    compute_scores(l.data() + row * e, e, cfg.score_func, s);
    compute_weights(s, ir, cfg, weights.data() + row * k);
  }
  return make_routing(scores, idx, weights, t, cfg, logits.device());
}

void route_backward(const Tensor& d_topk_weight, const Routing& routing, const RouterConfig& cfg,
                    Tensor& d_logits) {
  constexpr const char* kFn = "route_backward";
  check_router_config(cfg, kFn);
  check_routing(kFn, routing, cfg);
  const int64_t t = routing.scores.dim(0);
  const int64_t e = cfg.n_experts;
  const int64_t k = cfg.top_k;
  check_shape(kFn, "d_topk_weight", d_topk_weight, {t, k});
  check_dtype(kFn, "d_topk_weight", d_topk_weight, DType::kF32);
  check_shape(kFn, "d_logits", d_logits, {t, e});
  check_dtype(kFn, "d_logits", d_logits, DType::kF32);
  const std::vector<float> s = routing.scores.to_vector<float>();
  const std::vector<int32_t> idx = routing.topk_idx.to_vector<int32_t>();
  const std::vector<float> dw = d_topk_weight.to_vector<float>();
  std::vector<float> out(static_cast<size_t>(t * e));
  std::vector<double> ds(static_cast<size_t>(e));
  for (int64_t row = 0; row < t; ++row) {
    const float* sr = s.data() + row * e;
    const int32_t* ir = idx.data() + row * k;
    const float* dr = dw.data() + row * k;
    std::fill(ds.begin(), ds.end(), 0.0);
    if (cfg.score_func == ScoreFunc::kSigmoid) {
      // w_j = rs * s_j / S:  dL/ds_j = rs * (dw_j / S - sum_k dw_k s_k / S^2).
      double sum = 0;
      double dot = 0;
      for (int64_t j = 0; j < k; ++j) {
        sum += sr[ir[j]];
        dot += double{dr[j]} * sr[ir[j]];
      }
      for (int64_t j = 0; j < k; ++j) {
        ds[ir[j]] += cfg.route_scale * (dr[j] / sum - dot / (sum * sum));
      }
    } else {
      for (int64_t j = 0; j < k; ++j) ds[ir[j]] += cfg.route_scale * dr[j];
    }
    scores_backward(ds, sr, cfg.score_func, e, out.data() + row * e, /*accumulate=*/false);
  }
  d_logits.copy_from(Tensor::from_vector(out, {t, e}));
}

double balance_loss(const Routing& routing, int64_t seq_len, double alpha,
                    const RouterConfig& cfg) {
  constexpr const char* kFn = "balance_loss";
  check_router_config(cfg, kFn);
  check_routing(kFn, routing, cfg);
  const int64_t t = routing.scores.dim(0);
  FATHOM_CHECK(seq_len >= 1 && t % seq_len == 0)
      << kFn << ": seq_len " << seq_len << " must divide the token count " << t;
  const int64_t e = cfg.n_experts;
  const int64_t k = cfg.top_k;
  const std::vector<float> s = routing.scores.to_vector<float>();
  const std::vector<int32_t> idx = routing.topk_idx.to_vector<int32_t>();
  const int64_t n_seq = t / seq_len;
  std::vector<double> count(static_cast<size_t>(e));
  std::vector<double> p(static_cast<size_t>(e));
  double total = 0;
  for (int64_t b = 0; b < n_seq; ++b) {
    std::fill(count.begin(), count.end(), 0.0);
    std::fill(p.begin(), p.end(), 0.0);
    for (int64_t row = b * seq_len; row < (b + 1) * seq_len; ++row) {
      const float* sr = s.data() + row * e;
      const double z = std::accumulate(sr, sr + e, 0.0);
      for (int64_t i = 0; i < e; ++i) p[i] += sr[i] / z;
      for (int64_t j = 0; j < k; ++j) count[idx[row * k + j]] += 1;
    }
    for (int64_t i = 0; i < e; ++i) {
      const double f = static_cast<double>(e) / static_cast<double>(k * seq_len) * count[i];
      total += f * p[i] / static_cast<double>(seq_len);
    }
  }
  return alpha * total / static_cast<double>(n_seq);
}

void balance_loss_backward(const Routing& routing, int64_t seq_len, double alpha, double grad,
                           const RouterConfig& cfg, Tensor& d_logits) {
  constexpr const char* kFn = "balance_loss_backward";
  check_router_config(cfg, kFn);
  check_routing(kFn, routing, cfg);
  const int64_t t = routing.scores.dim(0);
  const int64_t e = cfg.n_experts;
  const int64_t k = cfg.top_k;
  FATHOM_CHECK(seq_len >= 1 && t % seq_len == 0)
      << kFn << ": seq_len " << seq_len << " must divide the token count " << t;
  check_shape(kFn, "d_logits", d_logits, {t, e});
  check_dtype(kFn, "d_logits", d_logits, DType::kF32);
  const std::vector<float> s = routing.scores.to_vector<float>();
  const std::vector<int32_t> idx = routing.topk_idx.to_vector<int32_t>();
  std::vector<float> out = d_logits.to_vector<float>();
  const int64_t n_seq = t / seq_len;
  // dL/dp_{t,i} = g_i = grad * alpha / B * f_{b,i} / seq_len, with p_{t,i} = s_{t,i} / Z_t.
  std::vector<double> g(static_cast<size_t>(e));
  std::vector<double> ds(static_cast<size_t>(e));
  for (int64_t b = 0; b < n_seq; ++b) {
    std::fill(g.begin(), g.end(), 0.0);
    for (int64_t row = b * seq_len; row < (b + 1) * seq_len; ++row) {
      for (int64_t j = 0; j < k; ++j) g[idx[row * k + j]] += 1;
    }
    const double c = grad * alpha / static_cast<double>(n_seq) * static_cast<double>(e) /
                     static_cast<double>(k * seq_len) / static_cast<double>(seq_len);
    for (double& v : g) v *= c;
    for (int64_t row = b * seq_len; row < (b + 1) * seq_len; ++row) {
      const float* sr = s.data() + row * e;
      const double z = std::accumulate(sr, sr + e, 0.0);
      double dot = 0;
      for (int64_t i = 0; i < e; ++i) dot += g[i] * sr[i] / z;
      for (int64_t i = 0; i < e; ++i) ds[i] = (g[i] - dot) / z;
      scores_backward(ds, sr, cfg.score_func, e, out.data() + row * e, /*accumulate=*/true);
    }
  }
  d_logits.copy_from(Tensor::from_vector(out, {t, e}));
}

}  // namespace fathom::model
