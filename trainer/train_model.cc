#include "trainer/train_model.h"

#include <algorithm>
#include <mutex>
#include <utility>

#include "kernels/check.h"
#include "kernels/ops/elementwise.h"
#include "model/moe.h"

namespace fathom::trainer {

namespace pipeline = parallel::pipeline;

namespace {

constexpr char kEmbedding[] = "embed.weight";

// "layers.3" for the MoE layer whose gate weight is "layers.3.ffn.gate.weight".
std::string moe_layer_name(const model::Moe& moe) {
  const std::string& gate = moe.gate.weight.name;
  return gate.substr(0, gate.rfind(".ffn.gate.weight"));
}

void add_scaled(model::Losses& sum, const model::Losses& l, double scale) {
  sum.total += l.total * scale;
  sum.lm += l.lm * scale;
  sum.mtp += l.mtp * scale;
  sum.balance += l.balance * scale;
  sum.tokens += l.tokens;
}

}  // namespace

// One chunk as the pipeline executor drives it: the micro-batches of the step, their saved
// activations between forward and backward, and the chunk's share of the losses.
class TrainModel::ChunkWorker final : public pipeline::StageWorker {
 public:
  explicit ChunkWorker(model::DeepSeekV3& model) : model_(model) {}

  void begin(absl::Span<const Tensor> micro_batches, double scale) {
    micro_batches_ = micro_batches;
    scale_ = scale;
    losses_ = {};
    per_micro_batch_.clear();
  }
  const model::Losses& losses() const { return losses_; }
  // This chunk's unscaled losses of each micro-batch it ran forward.
  const std::map<int, model::Losses>& per_micro_batch() const { return per_micro_batch_; }

  Tensor forward(int micro_batch, const Tensor& input) override {
    FATHOM_CHECK(micro_batch >= 0 && micro_batch < static_cast<int>(micro_batches_.size()))
        << "pipeline: micro-batch " << micro_batch << " of " << micro_batches_.size();
    model::DeepSeekV3::StagePass pass;
    model::Losses l;
    Tensor output = model_.forward_stage(micro_batches_[micro_batch], input, pass, &l);
    // The two halves of an overlapped forward+backward may run on two threads.
    std::lock_guard<std::mutex> lock(mutex_);
    add_scaled(losses_, l, scale_);
    per_micro_batch_[micro_batch] = l;
    passes_.emplace(micro_batch, std::move(pass));
    return output;
  }

  Tensor backward(int micro_batch, const Tensor& grad_output,
                  model::WeightGradStore* store) override {
    model::DeepSeekV3::StagePass pass;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = passes_.find(micro_batch);
      FATHOM_CHECK(it != passes_.end()) << "pipeline: backward of micro-batch " << micro_batch
                                        << " of stage " << model_.stage() << " before its forward";
      pass = std::move(it->second);
      passes_.erase(it);
    }
    return model_.backward_stage(scale_, grad_output, pass, store);
  }

 private:
  model::DeepSeekV3& model_;
  absl::Span<const Tensor> micro_batches_;
  double scale_ = 1;
  std::mutex mutex_;
  std::map<int, model::DeepSeekV3::StagePass> passes_;
  model::Losses losses_;
  std::map<int, model::Losses> per_micro_batch_;
};

// Parameters whose copies live on the same pipeline ranks, and the communicator over those ranks.
struct TrainModel::CopyGroup {
  std::unique_ptr<parallel::Communicator> comm;
  std::vector<model::Parameter*> params;  // sorted by name: the same order on every member
};

TrainModel::TrainModel(const RunConfig& config, Device device, parallel::ProcessGroups& groups)
    : config_(config), groups_(groups), pp_(static_cast<int>(config.parallel.pp)) {
  const int pp_rank = groups.pp->rank();
  std::vector<int> stages = {0};
  int n_stages = 1;
  if (pp_ > 1) {
    absl::StatusOr<pipeline::Schedule> schedule = pipeline::make_schedule(
        config.parallel.schedule, pp_, static_cast<int>(config.train.grad_accum));
    FATHOM_CHECK(schedule.ok()) << schedule.status().message();
    schedule_ = std::make_unique<pipeline::Schedule>(std::move(*schedule));
    stages = schedule_->chunk_stage[pp_rank];
    n_stages = schedule_->stages;
  }

  // Each chunk gets its own expert-parallel communicator: an overlapped forward+backward runs two
  // chunks' all-to-alls at once, and every rank of the EP group (same pipeline rank, same
  // program) then issues them in the same order per communicator.
  if (config.parallel.ep > 1) {
    parallel::ExpertParallelOptions ep_options;
    ep_options.fp8_dispatch = config.parallel.fp8_dispatch;
    for (size_t c = 0; c < stages.size(); ++c) {
      parallel::Communicator* ep = groups.ep.get();
      if (c > 0) {
        ep_copies_.push_back(groups.ep->split(0, groups.ep->rank()));
        ep = ep_copies_.back().get();
      }
      dispatchers_.push_back(std::make_unique<parallel::ExpertParallelDispatcher>(
          *ep, config.model.n_routed_experts, ep_options));
    }
  }
  for (size_t c = 0; c < stages.size(); ++c) {
    model::ModelOptions options;
    options.recompute = config.train.recompute;
    options.dispatcher = dispatchers_.empty() ? nullptr : dispatchers_[c].get();
    options.stage = stages[c];
    options.stages = n_stages;
    chunks_.push_back(
        std::make_unique<model::DeepSeekV3>(config.model, config.precision, device, options));
  }

  // Copies: the first local copy of each name is the primary.
  std::map<std::string, model::Parameter*> first;
  for (size_t c = 0; c < chunks_.size(); ++c) {
    for (model::Parameter* p : chunks_[c]->parameters()) {
      auto [it, fresh] = first.emplace(p->name, p);
      if (!fresh) {
        local_copies_.push_back({p, it->second});
        continue;
      }
      primaries_.push_back(p);
      const std::set<int> holders = holders_of(p->name, stages[c]);
      copy_count_[p] = static_cast<int>(holders.size());
      if (*holders.begin() == pp_rank) stored_.insert(p->name);
    }
    for (model::Buffer* b : chunks_[c]->buffers()) {
      if (*holders_of_stage(stages[c]).begin() == pp_rank) stored_.insert(b->name);
    }
    for (model::Moe* moe : chunks_[c]->moe_layers()) held_moes_[moe_layer_name(*moe)] = moe;
  }
  // Every pipeline rank splits the pp group once per distinct set of copy holders, in the same
  // order; members keep the communicator.
  std::set<std::set<int>> holder_sets;
  for (int s = 0; s < n_stages; ++s) holder_sets.insert(holders_of_stage(s));
  holder_sets.insert(holders_of(kEmbedding, 0));
  for (const std::set<int>& holders : holder_sets) {
    if (holders.size() < 2) continue;
    const bool member = holders.count(pp_rank) > 0;
    auto group = std::make_unique<CopyGroup>();
    group->comm = groups.pp->split(member ? 0 : -1, pp_rank);
    if (!member) continue;
    for (size_t c = 0; c < chunks_.size(); ++c) {
      for (model::Parameter* p : chunks_[c]->parameters()) {
        const bool primary = std::find(primaries_.begin(), primaries_.end(), p) != primaries_.end();
        if (primary && holders_of(p->name, stages[c]) == holders) group->params.push_back(p);
      }
    }
    std::sort(group->params.begin(), group->params.end(),
              [](const model::Parameter* a, const model::Parameter* b) {
                return a->name < b->name;
              });
    copy_groups_.push_back(std::move(group));
  }

  for (int64_t i = 0; i < config.model.n_layers; ++i) {
    if (config.model.is_moe_layer(i)) moe_names_.push_back("layers." + std::to_string(i));
  }
  if (config.model.n_moe_layers() > 0) {
    for (int64_t k = 0; k < config.model.mtp_depth; ++k) {
      moe_names_.push_back("mtp." + std::to_string(k) + ".block");
    }
  }

  if (pp_ > 1) {
    std::vector<pipeline::StageWorker*> workers;
    for (auto& chunk : chunks_) {
      workers_.push_back(std::make_unique<ChunkWorker>(*chunk));
      workers.push_back(workers_.back().get());
    }
    pipeline::ExecutorOptions options;
    options.boundary_shape = {config.train.micro_batch_size * config.train.seq_len,
                              config.model.dim};
    options.device = device;
    // The overlap hides the expert-parallel all-to-all; without one, a second thread only adds
    // contention on the host (on a GPU the halves still share the device on two streams).
    options.overlap = config.parallel.fb_overlap && (config.parallel.ep > 1 || device.is_cuda());
    executor_ = std::make_unique<pipeline::PipelineExecutor>(*schedule_, pp_rank, *groups.pp,
                                                             std::move(workers), options);
  }
}

TrainModel::~TrainModel() = default;

std::set<int> TrainModel::holders_of_stage(int stage) const {
  if (schedule_ == nullptr) return {0};
  std::set<int> out;
  for (int r = 0; r < schedule_->ranks; ++r) {
    for (int s : schedule_->chunk_stage[r]) {
      if (s == stage) out.insert(r);
    }
  }
  return out;
}

std::set<int> TrainModel::holders_of(const std::string& name, int stage) const {
  if (name != kEmbedding) return holders_of_stage(stage);
  // The first stage embeds; the last stage's MTP modules embed too (model/deepseek_v3.h).
  std::set<int> out = holders_of_stage(0);
  if (config_.model.mtp_depth > 0 && schedule_ != nullptr) {
    const std::set<int> last = holders_of_stage(schedule_->stages - 1);
    out.insert(last.begin(), last.end());
  }
  return out;
}

void TrainModel::init(uint64_t seed) {
  for (auto& chunk : chunks_) chunk->init(seed);
}

void TrainModel::set_mtp_lambda(double lambda) {
  for (auto& chunk : chunks_) chunk->set_mtp_lambda(lambda);
}

model::Losses TrainModel::forward_backward(absl::Span<const Tensor> micro_batches,
                                           ZeroAdamW* early_reduce) {
  const double scale = 1.0 / static_cast<double>(micro_batches.size());
  model::Losses sum;
  if (pp_ == 1) {
    model::DeepSeekV3& model = *chunks_[0];
    for (size_t micro = 0; micro < micro_batches.size(); ++micro) {
      // The last micro-batch's backward finishes the gradients: reduce them as it goes.
      if (micro + 1 == micro_batches.size() && early_reduce != nullptr) {
        model.set_gradients_ready_hook(
            [early_reduce](const model::ParameterList& ready) {
              early_reduce->gradients_ready(ready);
            });
      } else {
        model.set_gradients_ready_hook(nullptr);
      }
      add_scaled(sum, model.forward_backward(micro_batches[micro], scale), scale);
    }
    return sum;
  }
  FATHOM_CHECK(static_cast<int>(micro_batches.size()) == schedule_->micro_batches)
      << "TrainModel: " << micro_batches.size() << " micro-batches for a pipeline schedule of "
      << schedule_->micro_batches;
  for (auto& worker : workers_) worker->begin(micro_batches, scale);
  stats_ = executor_->run();
  sum_copies();
  for (auto& worker : workers_) {
    const model::Losses& l = worker->losses();
    sum.total += l.total;
    sum.lm += l.lm;
    sum.mtp += l.mtp;
    sum.balance += l.balance;
    sum.tokens += l.tokens;
  }
  std::vector<float> parts = {static_cast<float>(sum.total), static_cast<float>(sum.lm),
                              static_cast<float>(sum.mtp), static_cast<float>(sum.balance),
                              static_cast<float>(sum.tokens)};
  Tensor t = Tensor::from_floats(parts, {static_cast<int64_t>(parts.size())});
  parallel::all_reduce_sync(*groups_.pp, t);
  parts = t.to_floats();
  return {parts[0], parts[1], parts[2], parts[3], static_cast<int64_t>(parts[4])};
}

std::map<int, model::Losses> TrainModel::last_stage_losses() const {
  std::map<int, model::Losses> out;
  for (size_t c = 0; c < workers_.size(); ++c) {
    if (!chunks_[c]->last_stage()) continue;
    for (const auto& [micro_batch, l] : workers_[c]->per_micro_batch()) out[micro_batch] = l;
  }
  return out;
}

void TrainModel::sum_copies() {
  for (auto& [copy, primary] : local_copies_) {
    axpy(1.0f, copy->grad, primary->grad);
    fill(copy->grad, 0.0f);
  }
  for (auto& group : copy_groups_) {
    int64_t total = 0;
    for (model::Parameter* p : group->params) total += p->grad.numel();
    if (total == 0) continue;
    Tensor flat = Tensor::empty({total}, DType::kF32, group->params[0]->grad.device());
    int64_t offset = 0;
    for (model::Parameter* p : group->params) {
      const int64_t n = p->grad.numel();
      flat.narrow(offset, n).copy_from(p->grad.view({n}));
      offset += n;
    }
    parallel::all_reduce_sync(*group->comm, flat);
    offset = 0;
    for (model::Parameter* p : group->params) {
      const int64_t n = p->grad.numel();
      p->grad.view({n}).copy_from(flat.narrow(offset, n));
      offset += n;
    }
  }
}

void TrainModel::after_step() {
  for (auto& [copy, primary] : local_copies_) {
    copy->value.copy_from(primary->value);
    ++copy->version;
  }
}

model::ParameterList TrainModel::parameters() { return primaries_; }

model::ParameterList TrainModel::all_copies() {
  model::ParameterList out;
  for (auto& chunk : chunks_) {
    for (model::Parameter* p : chunk->parameters()) out.push_back(p);
  }
  return out;
}

model::BufferList TrainModel::buffers() {
  model::BufferList out;
  for (auto& chunk : chunks_) {
    for (model::Buffer* b : chunk->buffers()) out.push_back(b);
  }
  return out;
}

double TrainModel::norm_weight(const model::Parameter& p) const {
  const auto it = copy_count_.find(&p);
  return it == copy_count_.end() ? 1.0 : 1.0 / it->second;
}

std::vector<std::vector<double>> TrainModel::expert_load() {
  const int64_t experts = config_.model.n_routed_experts;
  const int64_t layers = static_cast<int64_t>(moe_names_.size());
  std::vector<std::vector<double>> out(layers);
  if (layers == 0) return out;
  // Each copy adds the tokens it routed (counts stay exact in f32), and a layer held by no
  // copy on this rank adds zeros: one all-reduce over pp both sums copies and gathers the layers.
  std::vector<float> flat(layers * experts, 0.0f);
  for (int64_t i = 0; i < layers; ++i) {
    const auto it = held_moes_.find(moe_names_[i]);
    if (it == held_moes_.end()) continue;
    const std::vector<int64_t>& load = it->second->expert_load();
    for (int64_t e = 0; e < experts; ++e) flat[i * experts + e] = static_cast<float>(load[e]);
  }
  Tensor t = Tensor::from_floats(flat, {layers * experts});
  for (parallel::Communicator* group : {groups_.pp.get(), groups_.dp.get()}) {
    if (group->size() > 1) parallel::all_reduce_sync(*group, t);
  }
  flat = t.to_floats();
  for (int64_t i = 0; i < layers; ++i) {
    out[i].assign(flat.begin() + i * experts, flat.begin() + (i + 1) * experts);
  }
  return out;
}

void TrainModel::update_biases(const std::vector<std::vector<double>>& load, double speed) {
  for (size_t i = 0; i < moe_names_.size(); ++i) {
    const auto it = held_moes_.find(moe_names_[i]);
    if (it == held_moes_.end()) continue;
    it->second->update_bias(load[i], speed);
    it->second->reset_load();
  }
}

EvalResult TrainModel::evaluate(const EvalSet& set, int64_t batch) {
  if (pp_ == 1) return trainer::evaluate(*chunks_[0], set, batch);
  // Forward along micro-batch 0's route: stage s runs on locate(s, 0), blocking hand-overs.
  const int me = groups_.pp->rank();
  const int last = schedule_->stages - 1;
  const int owner = schedule_->locate(last, 0).rank;
  const auto logits = [&](const Tensor& tokens, model::Losses* losses) -> Tensor {
    const int64_t seq = tokens.dim(1) - config_.model.mtp_depth - 1;
    const int64_t rows = tokens.dim(0) * seq;
    Tensor h;
    for (int s = 0; s <= last; ++s) {
      const pipeline::Location at = schedule_->locate(s, 0);
      if (at.rank != me) continue;
      if (s > 0) {
        const int from = schedule_->locate(s - 1, 0).rank;
        if (from != me) {
          h = Tensor::empty({rows, config_.model.dim}, DType::kF32, chunks_[0]->device());
          groups_.pp->recv(h, from, s)->wait();
        }
      }
      model::DeepSeekV3& chunk = *chunks_[at.chunk];
      model::DeepSeekV3::StagePass pass;
      model::Losses l;
      h = chunk.forward_stage(tokens, h, pass, &l, /*training=*/false);
      if (s == last) {
        *losses = l;
        return chunk.stage_logits(pass);
      }
      const int to = schedule_->locate(s + 1, 0).rank;
      if (to != me) groups_.pp->send(h, to, s + 1)->wait();
    }
    // This rank does not hold the last stage: zero logits of the right shape; every rank takes
    // the last stage's result from the broadcast below.
    *losses = {};
    return Tensor::zeros({rows, config_.model.vocab_size}, DType::kF32, chunks_[0]->device());
  };
  EvalResult result =
      trainer::evaluate(logits, config_.model.mtp_depth, config_.model.vocab_size, set, batch);
  std::vector<float> shared = {static_cast<float>(result.loss),
                               static_cast<float>(result.answer_accuracy),
                               static_cast<float>(result.answer_token_accuracy)};
  Tensor t = Tensor::from_floats(shared, {3});
  groups_.pp->broadcast(t, owner)->wait();
  shared = t.to_floats();
  result.loss = shared[0];
  result.answer_accuracy = shared[1];
  result.answer_token_accuracy = shared[2];
  return result;
}

parallel::ExpertParallelMetrics TrainModel::ep_metrics() const {
  parallel::ExpertParallelMetrics sum;
  for (const auto& d : dispatchers_) {
    const parallel::ExpertParallelMetrics& m = d->metrics();
    if (sum.rows_sent.empty()) {
      sum.rows_sent.assign(m.rows_sent.size(), 0);
      sum.rows_received.assign(m.rows_received.size(), 0);
    }
    for (size_t r = 0; r < m.rows_sent.size(); ++r) {
      sum.rows_sent[r] += m.rows_sent[r];
      sum.rows_received[r] += m.rows_received[r];
    }
    sum.bytes_sent += m.bytes_sent;
    sum.n_all_to_all += m.n_all_to_all;
    sum.all_to_all_seconds += m.all_to_all_seconds;
    sum.n_dispatch += m.n_dispatch;
  }
  return sum;
}

void TrainModel::reset_ep_metrics() {
  for (auto& d : dispatchers_) d->reset_metrics();
}

}  // namespace fathom::trainer
