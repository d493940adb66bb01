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
                     parallel::Communicator& dp, parallel::Communicator& edp,
                     int64_t bucket_bytes)
    : params_(std::move(params)), options_(options), dp_(dp) {
  FATHOM_CHECK(options.moments == DType::kF32 || options.moments == DType::kBF16)
      << "ZeroAdamW: moments must be f32 or bf16";
  FATHOM_CHECK(bucket_bytes > 0) << "ZeroAdamW: bucket_bytes must be positive";
  // Reverse order: backward finishes the last parameters first.
  std::vector<model::Parameter*> dense, expert;
  for (auto it = params_.rbegin(); it != params_.rend(); ++it) {
    ((*it)->is_expert ? expert : dense).push_back(*it);
  }
  build_buckets(dp, dense, bucket_bytes);
  build_buckets(edp, expert, bucket_bytes);
}

void ZeroAdamW::build_buckets(parallel::Communicator& comm,
                              const std::vector<model::Parameter*>& params,
                              int64_t bucket_bytes) {
  const int64_t size = comm.size();
  size_t i = 0;
  while (i < params.size()) {
    Bucket b;
    b.comm = &comm;
    Device device = params[i]->value.device();
    // At least one parameter per bucket, then more while the bucket stays under bucket_bytes.
    do {
      model::Parameter* p = params[i++];
      const int64_t shard = (p->value.numel() + size - 1) / size;
      b.params.push_back(p);
      b.shard.push_back(shard);
      b.offset.push_back(b.chunk);
      b.chunk += shard;
      where_.push_back({p, {buckets_.size(), b.params.size() - 1}});
    } while (i < params.size() &&
             (b.chunk + (params[i]->value.numel() + size - 1) / size) * size * 4 <= bucket_bytes);
    b.flat = Tensor::zeros({size * b.chunk}, DType::kF32, device);
    b.grad_shard = Tensor::zeros({b.chunk}, DType::kF32, device);
    b.param_shard = Tensor::zeros({b.chunk}, DType::kF32, device);
    b.m = Tensor::zeros({b.chunk}, options_.moments, device);
    b.v = Tensor::zeros({b.chunk}, options_.moments, device);
    buckets_.push_back(std::move(b));
  }
}

int64_t ZeroAdamW::shard_length(const Bucket& b, size_t i, int q) {
  const int64_t n = b.params[i]->value.numel();
  return std::clamp<int64_t>(n - q * b.shard[i], 0, b.shard[i]);
}

void ZeroAdamW::post(Bucket& b) {
  for (size_t i = 0; i < b.params.size(); ++i) {
    const Tensor grad = flat_view(b.params[i]->grad);
    for (int q = 0; q < b.comm->size(); ++q) {
      const int64_t len = shard_length(b, i, q);
      if (len == 0) continue;
      b.flat.narrow(q * b.chunk + b.offset[i], len).copy_from(grad.narrow(q * b.shard[i], len));
    }
  }
  b.reduce = b.comm->reduce_scatter(b.flat, b.grad_shard, parallel::ReduceOp::kSum);
}

void ZeroAdamW::gradients_ready(const model::ParameterList& params) {
  for (const model::Parameter* p : params) {
    const auto it = std::find_if(where_.begin(), where_.end(),
                                 [p](const auto& entry) { return entry.first == p; });
    if (it == where_.end()) continue;
    Bucket& b = buckets_[it->second.first];
    if (++b.ready == static_cast<int64_t>(b.params.size())) post(b);
  }
}

void ZeroAdamW::set_pipeline_norm(parallel::Communicator* pp,
                                  std::function<double(const model::Parameter&)> norm_weight) {
  pp_ = pp;
  norm_weight_ = std::move(norm_weight);
}

StepResult ZeroAdamW::step(double lr) {
  // 1. Post what backward has not, then wait for every bucket.
  for (Bucket& b : buckets_) {
    if (b.reduce == nullptr) post(b);
  }
  for (Bucket& b : buckets_) {
    b.reduce->wait();
    b.reduce.reset();
    b.ready = 0;
  }

  // 2-3. Mean over the data-parallel ranks, then the global norm over every rank's shards.
  StepResult result;
  double local_sq = 0;
  for (Bucket& b : buckets_) {
    scale(b.grad_shard, 1.0f / static_cast<float>(dp_.size()));
    if (!norm_weight_) {
      local_sq += reduce_all(b.grad_shard, Reduce::kSumSquares);
      continue;
    }
    for (size_t i = 0; i < b.params.size(); ++i) {
      const int64_t len = shard_length(b, i, b.comm->rank());
      if (len == 0) continue;
      local_sq += norm_weight_(*b.params[i]) *
                  reduce_all(b.grad_shard.narrow(b.offset[i], len), Reduce::kSumSquares);
    }
  }
  double norm_sq = local_sq;
  // Summed in f32 across ranks: the norm only sets the clipping factor.
  for (parallel::Communicator* group : {&dp_, pp_}) {
    if (group == nullptr || group->size() == 1) continue;
    Tensor partial = Tensor::from_floats({static_cast<float>(norm_sq)}, {1});
    parallel::all_reduce_sync(*group, partial);
    norm_sq = partial.to_floats()[0];
  }
  result.grad_norm = std::sqrt(norm_sq);
  if (!std::isfinite(result.grad_norm)) {
    result.skipped = true;
    return result;
  }
  const double clip = options_.grad_clip > 0
                          ? std::min(1.0, options_.grad_clip / (result.grad_norm + 1e-6))
                          : 1.0;
  ++steps_;

  // 4. AdamW on this rank's shard of every parameter; 5. all-gather the shards.
  std::vector<parallel::WorkHandle> gathers;
  for (Bucket& b : buckets_) {
    if (clip < 1.0) scale(b.grad_shard, static_cast<float>(clip));
    const int rank = b.comm->rank();
    for (size_t i = 0; i < b.params.size(); ++i) {
      const int64_t len = shard_length(b, i, rank);
      if (len == 0) continue;
      const Tensor value = flat_view(b.params[i]->value);
      Tensor param = b.param_shard.narrow(b.offset[i], len);
      param.copy_from(value.narrow(rank * b.shard[i], len));
      Tensor grad = b.grad_shard.narrow(b.offset[i], len);
      Tensor m = b.m.narrow(b.offset[i], len);
      Tensor v = b.v.narrow(b.offset[i], len);
      AdamWConfig config;
      config.lr = static_cast<float>(lr);
      config.beta1 = static_cast<float>(options_.beta1);
      config.beta2 = static_cast<float>(options_.beta2);
      config.eps = static_cast<float>(options_.eps);
      config.weight_decay =
          b.params[i]->weight_decay ? static_cast<float>(options_.weight_decay) : 0.0f;
      config.step = steps_;
      adamw_update(param, grad, m, v, config);
    }
    gathers.push_back(b.comm->all_gather(b.param_shard, b.flat));
  }
  for (auto& w : gathers) w->wait();
  for (Bucket& b : buckets_) {
    for (size_t i = 0; i < b.params.size(); ++i) {
      Tensor value = flat_view(b.params[i]->value);
      for (int q = 0; q < b.comm->size(); ++q) {
        const int64_t len = shard_length(b, i, q);
        if (len == 0) continue;
        value.narrow(q * b.shard[i], len).copy_from(b.flat.narrow(q * b.chunk + b.offset[i], len));
      }
      ++b.params[i]->version;
    }
  }
  return result;
}

void ZeroAdamW::zero_grad() {
  for (model::Parameter* p : params_) fill(p->grad, 0.0f);
}

std::vector<TensorShard> ZeroAdamW::moment_shards() {
  std::vector<TensorShard> out;
  for (Bucket& b : buckets_) {
    const int rank = b.comm->rank();
    for (size_t i = 0; i < b.params.size(); ++i) {
      const model::Parameter& p = *b.params[i];
      const int64_t len = shard_length(b, i, rank);
      int64_t global_numel = 1;
      for (int64_t d : p.global()) global_numel *= d;
      // The local parameter is a row range of the global tensor, so its flattened elements are a
      // contiguous range of the global flattened tensor.
      const int64_t row_elements = p.value.dim(0) > 0 ? p.value.numel() / p.value.dim(0) : 0;
      const int64_t start = p.row_offset * row_elements + rank * b.shard[i];
      out.push_back({"optim.m." + p.name, b.m.narrow(b.offset[i], len), {global_numel}, start});
      out.push_back({"optim.v." + p.name, b.v.narrow(b.offset[i], len), {global_numel}, start});
    }
  }
  return out;
}

}  // namespace fathom::trainer
