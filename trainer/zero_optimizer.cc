#include "trainer/zero_optimizer.h"

#include <algorithm>
#include <cmath>
#include <utility>

#include "kernels/ops/elementwise.h"
#include "kernels/ops/optim.h"
#include "kernels/ops/reduce.h"

namespace fathom::trainer {
namespace {

Tensor flat_view(const Tensor& t) { return t.view({t.numel()}); }

}  // namespace

ZeroAdamW::ZeroAdamW(model::ParameterList params, const AdamWOptions& options,
                     parallel::Communicator& dp, parallel::Communicator& edp)
    : params_(std::move(params)), options_(options), dp_(dp) {
  FATHOM_CHECK(options.moments == DType::kF32 || options.moments == DType::kBF16)
      << "ZeroAdamW: moments must be f32 or bf16";
  std::vector<model::Parameter*> dense, expert;
  for (model::Parameter* p : params_) (p->is_expert ? expert : dense).push_back(p);
  build_group(dense_, dp, std::move(dense));
  build_group(expert_, edp, std::move(expert));
}

void ZeroAdamW::build_group(Group& g, parallel::Communicator& comm,
                            std::vector<model::Parameter*> params) {
  g.comm = &comm;
  g.params = std::move(params);
  const int64_t size = comm.size();
  Device device = Device::cpu();
  for (model::Parameter* p : g.params) {
    const int64_t shard = (p->value.numel() + size - 1) / size;
    g.shard.push_back(shard);
    g.offset.push_back(g.chunk);
    g.chunk += shard;
    device = p->value.device();
  }
  g.flat = Tensor::zeros({size * g.chunk}, DType::kF32, device);
  g.grad_shard = Tensor::zeros({g.chunk}, DType::kF32, device);
  g.param_shard = Tensor::zeros({g.chunk}, DType::kF32, device);
  g.m = Tensor::zeros({g.chunk}, options_.moments, device);
  g.v = Tensor::zeros({g.chunk}, options_.moments, device);
}

int64_t ZeroAdamW::shard_length(const Group& g, size_t i, int q) {
  const int64_t n = g.params[i]->value.numel();
  return std::clamp<int64_t>(n - q * g.shard[i], 0, g.shard[i]);
}

StepResult ZeroAdamW::step(double lr) {
  Group* groups[] = {&dense_, &expert_};
  // 1. Pack every gradient rank-major and post one reduce-scatter per group.
  std::vector<parallel::WorkHandle> pending;
  for (Group* g : groups) {
    if (g->params.empty()) continue;
    for (size_t i = 0; i < g->params.size(); ++i) {
      const Tensor grad = flat_view(g->params[i]->grad);
      for (int q = 0; q < g->comm->size(); ++q) {
        const int64_t len = shard_length(*g, i, q);
        if (len == 0) continue;
        g->flat.narrow(q * g->chunk + g->offset[i], len)
            .copy_from(grad.narrow(q * g->shard[i], len));
      }
    }
    pending.push_back(g->comm->reduce_scatter(g->flat, g->grad_shard, parallel::ReduceOp::kSum));
  }
  for (auto& w : pending) w->wait();

  // 2-3. Mean over the data-parallel ranks, then the global norm over every rank's shards.
  StepResult result;
  Tensor norm_sq = Tensor::zeros({1}, DType::kF32);
  double local_sq = 0;
  for (Group* g : groups) {
    if (g->params.empty()) continue;
    scale(g->grad_shard, 1.0f / static_cast<float>(dp_.size()));
    local_sq += reduce_all(g->grad_shard, Reduce::kSumSquares);
  }
  // Summed in f32 across ranks: the norm only sets the clipping factor.
  norm_sq.data<float>()[0] = static_cast<float>(local_sq);
  if (dp_.size() > 1) parallel::all_reduce_sync(dp_, norm_sq);
  result.grad_norm = std::sqrt(static_cast<double>(norm_sq.data<float>()[0]));
  if (!std::isfinite(result.grad_norm)) {
    result.skipped = true;
    return result;
  }
  const double clip = options_.grad_clip > 0
                          ? std::min(1.0, options_.grad_clip / (result.grad_norm + 1e-6))
                          : 1.0;
  ++steps_;

  // 4. AdamW on this rank's shard of every parameter; 5. all-gather the shards.
  pending.clear();
  for (Group* g : groups) {
    if (g->params.empty()) continue;
    if (clip < 1.0) scale(g->grad_shard, static_cast<float>(clip));
    const int rank = g->comm->rank();
    for (size_t i = 0; i < g->params.size(); ++i) {
      const int64_t len = shard_length(*g, i, rank);
      if (len == 0) continue;
      const Tensor value = flat_view(g->params[i]->value);
      Tensor param = g->param_shard.narrow(g->offset[i], len);
      param.copy_from(value.narrow(rank * g->shard[i], len));
      Tensor grad = g->grad_shard.narrow(g->offset[i], len);
      Tensor m = g->m.narrow(g->offset[i], len);
      Tensor v = g->v.narrow(g->offset[i], len);
      AdamWConfig config;
      config.lr = static_cast<float>(lr);
      config.beta1 = static_cast<float>(options_.beta1);
      config.beta2 = static_cast<float>(options_.beta2);
      config.eps = static_cast<float>(options_.eps);
      config.weight_decay =
          g->params[i]->weight_decay ? static_cast<float>(options_.weight_decay) : 0.0f;
      config.step = steps_;
      adamw_update(param, grad, m, v, config);
    }
    pending.push_back(g->comm->all_gather(g->param_shard, g->flat));
  }
  for (auto& w : pending) w->wait();
  for (Group* g : groups) {
    for (size_t i = 0; i < g->params.size(); ++i) {
      Tensor value = flat_view(g->params[i]->value);
      for (int q = 0; q < g->comm->size(); ++q) {
        const int64_t len = shard_length(*g, i, q);
        if (len == 0) continue;
        value.narrow(q * g->shard[i], len)
            .copy_from(g->flat.narrow(q * g->chunk + g->offset[i], len));
      }
      ++g->params[i]->version;
    }
  }
  return result;
}

void ZeroAdamW::zero_grad() {
  for (model::Parameter* p : params_) fill(p->grad, 0.0f);
}

std::vector<TensorShard> ZeroAdamW::moment_shards() {
  std::vector<TensorShard> out;
  for (Group* g : {&dense_, &expert_}) {
    const int rank = g->comm->rank();
    for (size_t i = 0; i < g->params.size(); ++i) {
      const model::Parameter& p = *g->params[i];
      const int64_t len = shard_length(*g, i, rank);
      int64_t global_numel = 1;
      for (int64_t d : p.global()) global_numel *= d;
      // The local parameter is a row range of the global tensor, so its flattened elements are a
      // contiguous range of the global flattened tensor.
      const int64_t row_elements = p.value.dim(0) > 0 ? p.value.numel() / p.value.dim(0) : 0;
      const int64_t start = p.row_offset * row_elements + rank * g->shard[i];
      out.push_back({"optim.m." + p.name, g->m.narrow(g->offset[i], len), {global_numel}, start});
      out.push_back({"optim.v." + p.name, g->v.narrow(g->offset[i], len), {global_numel}, start});
    }
  }
  return out;
}

}  // namespace fathom::trainer
