#include "trainer/run_config.h"

#include <algorithm>
#include <charconv>
#include <climits>
#include <filesystem>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "kernels/check.h"
#include "model/yaml_util.h"
#include "parallel/pipeline/schedule.h"

namespace fathom::trainer {
namespace {

using model::ConfigErrors;
using model::MapReader;

const std::vector<std::string> kPrecisions = {"fp32", "bf16", "fp8"};
const std::vector<std::string> kMoments = {"fp32", "bf16"};
const std::vector<std::string> kScheduleTypes = {"wcc", "wsd", "cosine"};
const std::vector<std::string> kDecayShapes = {"linear", "1-sqrt"};
const std::vector<std::string> kDataTasks = {"arithmetic", "countdown", "mix"};

// Shortest text that reads back as the same double.
std::string format_real(double v) {
  char buf[64];
  const auto result = std::to_chars(buf, buf + sizeof(buf), v);
  FATHOM_CHECK(result.ec == std::errc()) << "formatting " << v;
  return std::string(buf, result.ptr);
}

// A double-quoted YAML string (ops such as "*" or "-" are not plain scalars).
std::string yaml_quoted(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out + "\"";
}

bool valid_name(std::string_view name) {
  return !name.empty() && std::all_of(name.begin(), name.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
  });
}

// The value of an override: YAML if it parses, else the text as a string.
YAML::Node override_value(const std::string& text) {
  try {
    return YAML::Load(text);
  } catch (const YAML::Exception&) {
    return YAML::Node(text);
  }
}

// A sub-mapping of `parent`, or nullopt when absent or null (an empty section keeps defaults).
std::optional<MapReader> open_section(MapReader& parent, std::string_view key, std::string path,
                                      ConfigErrors* errors) {
  const YAML::Node node = parent.node(key);
  if (!node.IsDefined() || node.IsNull()) return std::nullopt;
  return MapReader(node, std::move(path), errors);
}

int line_in(const std::optional<MapReader>& section, std::string_view key) {
  return section.has_value() ? section->line(key) : 0;
}

// Reads an int field of the task options through int64, refusing values outside int's range.
void read_int(MapReader& reader, const std::string& path, std::string_view key, int* out,
              ConfigErrors* errors) {
  int64_t v = *out;
  reader.read(key, &v);
  if (v < INT_MIN || v > INT_MAX) {
    errors->add(model::key_path(path, key), absl::StrCat("out of range, got ", v),
                reader.line(key));
    return;
  }
  *out = static_cast<int>(v);
}

absl::StatusOr<model::ModelConfig> load_model_file(const std::string& path,
                                                   const std::vector<std::string>& sets) {
  if (sets.empty()) return model::load_model_config(path);
  FATHOM_ASSIGN_OR_RETURN(YAML::Node root, model::load_yaml_file(path));
  // A file without a model section: load_model_config() says so with a suggestion.
  if (!root.IsMap() || !static_cast<const YAML::Node&>(root)["model"].IsDefined()) {
    return model::load_model_config(path);
  }
  FATHOM_RETURN_IF_ERROR(apply_overrides(root, sets));
  return model::parse_model_config(static_cast<const YAML::Node&>(root)["model"], "model", path);
}

// The line of `key` inside a model mapping, else `fallback`.
int model_key_line(const YAML::Node& model_node, std::string_view key, int fallback) {
  if (!model_node.IsMap()) return fallback;
  for (const auto& entry : model_node) {
    if (entry.first.IsScalar() && entry.first.Scalar() == key) return model::line_of(entry.first);
  }
  return fallback;
}

absl::StatusOr<RunConfig> parse_impl(const YAML::Node& root, std::string_view source,
                                     const std::string& base_dir,
                                     const std::vector<std::string>& model_sets) {
  ConfigErrors errors{std::string(source)};
  RunConfig c;
  MapReader top(root, "", &errors);

  // ---- model ----
  std::string model_block;  // errors reported by the model parser, already formatted
  bool model_ok = false;
  const YAML::Node model_node = top.node("model");
  const int model_line = top.line("model");
  if (!model_node.IsDefined() || model_node.IsNull()) {
    errors.add("model",
               "missing: give the path of a model YAML (e.g. ../models/tiny.yaml) or the model's "
               "mapping",
               model_line);
  } else if (model_node.IsScalar()) {
    std::filesystem::path path(model_node.Scalar());
    if (path.is_relative()) path = std::filesystem::path(base_dir) / path;
    path = path.lexically_normal();
    absl::StatusOr<model::ModelConfig> m = load_model_file(path.string(), model_sets);
    if (m.ok()) {
      c.model = *m;
      model_ok = true;
    } else if (m.status().code() == absl::StatusCode::kNotFound) {
      errors.add("model",
                 absl::StrCat("model file '", model_node.Scalar(), "' not found (looked for ",
                              path.string(), ")"),
                 model_line);
    } else {
      model_block = std::string(m.status().message());
    }
  } else {
    absl::StatusOr<model::ModelConfig> m = model::parse_model_config(model_node, "model", source);
    if (m.ok()) {
      c.model = *m;
      model_ok = true;
    } else {
      model_block = std::string(m.status().message());
    }
  }

  // ---- top-level scalars ----
  std::string precision(model::precision_name(c.precision));
  top.read_choice("precision", kPrecisions, &precision);
  c.precision = *model::parse_precision(precision);
  top.read("seed", &c.seed);

  // ---- train ----
  std::optional<MapReader> train = open_section(top, "train", "train", &errors);
  if (train) {
    train->read("steps", &c.train.steps);
    train->read("micro_batch_size", &c.train.micro_batch_size);
    train->read("grad_accum", &c.train.grad_accum);
    train->read("seq_len", &c.train.seq_len);
    train->read("recompute", &c.train.recompute);
    train->read("log_every", &c.train.log_every);
    train->read("eval_every", &c.train.eval_every);
    train->read("eval_samples", &c.train.eval_samples);
    train->read("checkpoint_every", &c.train.checkpoint_every);
    train->read("threads", &c.train.threads);
    train->read("init_from", &c.train.init_from);
    train->finish();
  }

  // ---- optimizer ----
  LrSchedule& schedule = c.optimizer.schedule;
  bool has_moments = false;
  std::string moments = "fp32";
  std::optional<MapReader> optimizer = open_section(top, "optimizer", "optimizer", &errors);
  std::optional<MapReader> sched;
  std::string type(schedule_type_name(schedule.type));
  std::string shape(decay_shape_name(schedule.decay_shape));
  if (optimizer) {
    optimizer->read("lr", &schedule.lr);
    optimizer->read("min_lr", &schedule.min_lr);
    optimizer->read("beta1", &c.optimizer.beta1);
    optimizer->read("beta2", &c.optimizer.beta2);
    optimizer->read("eps", &c.optimizer.eps);
    optimizer->read("weight_decay", &c.optimizer.weight_decay);
    optimizer->read("grad_clip", &c.optimizer.grad_clip);
    has_moments = optimizer->has("moments");
    optimizer->read_choice("moments", kMoments, &moments);
    sched = open_section(*optimizer, "schedule", "optimizer.schedule", &errors);
    if (sched) {
      sched->read_choice("type", kScheduleTypes, &type);
      sched->read("warmup_steps", &schedule.warmup_steps);
      sched->read("decay_start", &schedule.decay_start);
      sched->read("decay_steps", &schedule.decay_steps);
      sched->read_choice("decay_shape", kDecayShapes, &shape);
      sched->finish();
    }
    optimizer->finish();
  }

  // ---- mtp ----
  std::optional<MapReader> mtp = open_section(top, "mtp", "mtp", &errors);
  if (mtp) {
    mtp->read("lambda", &c.mtp.lambda);
    mtp->read("lambda_after", &c.mtp.lambda_after);
    mtp->read("switch_step", &c.mtp.switch_step);
    mtp->finish();
  }

  // ---- parallel ----
  parallel::read_parallel_config(top.node("parallel"), "parallel", model_ok ? &c.model : nullptr,
                                 &errors, &c.parallel);

  // ---- data ----
  DataConfig& d = c.data;
  std::optional<MapReader> data = open_section(top, "data", "data", &errors);
  std::optional<MapReader> weights, arithmetic, countdown;
  if (data) {
    data->read_choice("task", kDataTasks, &d.task);
    weights = open_section(*data, "weights", "data.weights", &errors);
    if (weights) {
      weights->read("arithmetic", &d.arithmetic_weight);
      weights->read("countdown", &d.countdown_weight);
      weights->finish();
    }
    data->read("seed", &d.seed);
    data->read("train_problems", &d.train_problems);
    arithmetic = open_section(*data, "arithmetic", "data.arithmetic", &errors);
    if (arithmetic) {
      data::ArithmeticOptions& a = d.options.arithmetic;
      read_int(*arithmetic, "data.arithmetic", "min_digits", &a.min_digits, &errors);
      read_int(*arithmetic, "data.arithmetic", "max_digits", &a.max_digits, &errors);
      arithmetic->read("ops", &a.ops);
      arithmetic->read("allow_negative", &a.allow_negative);
      arithmetic->finish();
    }
    countdown = open_section(*data, "countdown", "data.countdown", &errors);
    if (countdown) {
      data::CountdownOptions& o = d.options.countdown;
      read_int(*countdown, "data.countdown", "min_numbers", &o.min_numbers, &errors);
      read_int(*countdown, "data.countdown", "max_numbers", &o.max_numbers, &errors);
      countdown->read("max_value", &o.max_value);
      countdown->read("max_target", &o.max_target);
      countdown->finish();
    }
    data->finish();
  }
  top.finish();

  auto combined = [&]() {
    std::vector<std::string> parts;
    if (!model_block.empty()) parts.push_back(model_block);
    if (!errors.empty()) parts.emplace_back(errors.to_status().message());
    return absl::InvalidArgumentError(absl::StrJoin(parts, "\n"));
  };
  if (!errors.empty() || !model_block.empty()) return combined();

  // ---- defaults that depend on other fields ----
  const int64_t steps = c.train.steps;
  auto given = [](const std::optional<MapReader>& r, std::string_view key) {
    return r.has_value() && r->has(key);
  };
  c.optimizer.moments =
      has_moments ? (moments == "bf16" ? DType::kBF16 : DType::kF32)
                  : (c.precision == model::TrainingPrecision::kFp8 ? DType::kBF16 : DType::kF32);
  schedule.type = *parse_schedule_type(type);
  schedule.decay_shape = *parse_decay_shape(shape);
  if (!given(sched, "warmup_steps")) schedule.warmup_steps = steps / 10;
  const std::string sp = "optimizer.schedule";
  if (schedule.type == ScheduleType::kCosine) {
    for (const char* key : {"decay_start", "decay_steps"}) {
      if (given(sched, key)) {
        errors.add(model::key_path(sp, key),
                   "not used by schedule type 'cosine', which decays from warmup_steps to "
                   "train.steps (use wcc or wsd to place the decay)",
                   line_in(sched, key));
      }
    }
    schedule = make_cosine(schedule.lr, schedule.min_lr, schedule.warmup_steps, steps);
  } else {
    if (!given(sched, "decay_steps")) schedule.decay_steps = std::max<int64_t>(1, steps / 5);
    if (!given(sched, "decay_start")) schedule.decay_start = steps - schedule.decay_steps;
  }
  if (schedule.type != ScheduleType::kWsd && given(sched, "decay_shape")) {
    errors.add(model::key_path(sp, "decay_shape"),
               absl::StrCat("used only by schedule type 'wsd', not '", type, "'"),
               line_in(sched, "decay_shape"));
  }
  if (!given(mtp, "lambda")) c.mtp.lambda = c.model.mtp_lambda;
  if (!given(mtp, "lambda_after")) c.mtp.lambda_after = c.mtp.lambda;
  if (!given(mtp, "switch_step")) c.mtp.switch_step = steps;
  if (!given(data, "seed")) d.seed = c.seed;
  if (weights.has_value() && d.task != "mix") {
    errors.add("data.weights", absl::StrCat("used only with task 'mix', not '", d.task, "'"),
               line_in(data, "weights"));
  }

  // ---- checks ----
  auto fail = [&](const std::optional<MapReader>& r, const std::string& path, std::string_view key,
                  std::string message) {
    errors.add(model::key_path(path, key), std::move(message), line_in(r, key));
  };
  auto positive = [&](const std::optional<MapReader>& r, const std::string& path,
                      std::string_view key, int64_t v) {
    if (v < 1) fail(r, path, key, absl::StrCat("must be positive, got ", v));
  };
  auto non_negative = [&](const std::optional<MapReader>& r, const std::string& path,
                          std::string_view key, int64_t v) {
    if (v < 0) fail(r, path, key, absl::StrCat("must be zero or positive, got ", v));
  };
  if (c.seed < 0) {
    errors.add("seed", absl::StrCat("must be zero or positive, got ", c.seed), top.line("seed"));
  }
  if (model_ok && c.model.vocab_size < data::Tokenizer::kBuiltinVocabSize) {
    errors.add("model.vocab_size",
               absl::StrCat("must be at least ", data::Tokenizer::kBuiltinVocabSize,
                            " (the vocabulary of the data tokenizer), got ", c.model.vocab_size),
               model_key_line(model_node, "vocab_size", model_line));
  }

  const TrainConfig& t = c.train;
  positive(train, "train", "steps", t.steps);
  positive(train, "train", "micro_batch_size", t.micro_batch_size);
  positive(train, "train", "grad_accum", t.grad_accum);
  positive(train, "train", "seq_len", t.seq_len);
  if (model_ok && t.seq_len > c.model.max_seq_len) {
    fail(train, "train", "seq_len",
         absl::StrCat("must be at most model.max_seq_len (", c.model.max_seq_len, "), got ",
                      t.seq_len));
  }
  positive(train, "train", "log_every", t.log_every);
  non_negative(train, "train", "eval_every", t.eval_every);
  non_negative(train, "train", "eval_samples", t.eval_samples);
  non_negative(train, "train", "checkpoint_every", t.checkpoint_every);
  non_negative(train, "train", "threads", t.threads);
  // With pipeline parallelism the micro-batches of a step are the schedule's N.
  if (c.parallel.pp > 1 && t.grad_accum > 0) {
    const absl::StatusOr<parallel::pipeline::Schedule> pipeline = parallel::pipeline::make_schedule(
        c.parallel.schedule, static_cast<int>(c.parallel.pp), static_cast<int>(t.grad_accum));
    if (!pipeline.ok()) {
      fail(train, "train", "grad_accum",
           absl::StrCat("micro-batches per step for the pipeline schedule: ",
                        pipeline.status().message()));
    }
  }

  const OptimizerConfig& o = c.optimizer;
  const std::string op = "optimizer";
  if (!(schedule.lr > 0))
    fail(optimizer, op, "lr", absl::StrCat("must be positive, got ", schedule.lr));
  if (!(schedule.min_lr >= 0 && schedule.min_lr <= schedule.lr)) {
    fail(optimizer, op, "min_lr",
         absl::StrCat("must be between 0 and lr (", schedule.lr, "), got ", schedule.min_lr));
  }
  if (!(o.beta1 >= 0 && o.beta1 < 1)) {
    fail(optimizer, op, "beta1", absl::StrCat("must be in [0, 1), got ", o.beta1));
  }
  if (!(o.beta2 >= 0 && o.beta2 < 1)) {
    fail(optimizer, op, "beta2", absl::StrCat("must be in [0, 1), got ", o.beta2));
  }
  if (!(o.eps > 0)) fail(optimizer, op, "eps", absl::StrCat("must be positive, got ", o.eps));
  if (!(o.weight_decay >= 0)) {
    fail(optimizer, op, "weight_decay",
         absl::StrCat("must be zero or positive, got ", o.weight_decay));
  }
  if (!(o.grad_clip >= 0)) {
    fail(optimizer, op, "grad_clip",
         absl::StrCat("must be zero (no clipping) or positive, got ", o.grad_clip));
  }
  // Cosine needs at least one decay step after the warmup.
  const int64_t max_warmup = schedule.type == ScheduleType::kCosine ? steps - 1 : steps;
  if (schedule.warmup_steps < 0 || schedule.warmup_steps > max_warmup) {
    fail(sched, sp, "warmup_steps",
         absl::StrCat("must be in [0, ", max_warmup,
                      schedule.type == ScheduleType::kCosine ? "] (train.steps - 1 for cosine)"
                                                             : "] (train.steps)",
                      ", got ", schedule.warmup_steps,
                      given(sched, "warmup_steps") ? "" : " (default train.steps / 10)"));
  } else if (schedule.type != ScheduleType::kCosine) {
    if (schedule.decay_steps < 1) {
      fail(sched, sp, "decay_steps", absl::StrCat("must be positive, got ", schedule.decay_steps));
    } else if (schedule.decay_start < schedule.warmup_steps) {
      fail(sched, sp, "decay_start",
           absl::StrCat("must be at least warmup_steps (", schedule.warmup_steps, "), got ",
                        schedule.decay_start,
                        given(sched, "decay_start")
                            ? ""
                            : " (default train.steps - decay_steps; shorten the decay or the "
                              "warmup)"));
    }
  }

  const std::string mp = "mtp";
  if (!(c.mtp.lambda >= 0)) {
    fail(mtp, mp, "lambda", absl::StrCat("must be zero or positive, got ", c.mtp.lambda));
  }
  if (!(c.mtp.lambda_after >= 0)) {
    fail(mtp, mp, "lambda_after",
         absl::StrCat("must be zero or positive, got ", c.mtp.lambda_after));
  }
  non_negative(mtp, mp, "switch_step", c.mtp.switch_step);

  non_negative(data, "data", "seed", d.seed);
  non_negative(data, "data", "train_problems", d.train_problems);
  if (d.task == "mix") {
    if (!(d.arithmetic_weight >= 0)) {
      fail(weights, "data.weights", "arithmetic",
           absl::StrCat("must be zero or positive, got ", d.arithmetic_weight));
    }
    if (!(d.countdown_weight >= 0)) {
      fail(weights, "data.weights", "countdown",
           absl::StrCat("must be zero or positive, got ", d.countdown_weight));
    }
    if (d.arithmetic_weight == 0 && d.countdown_weight == 0) {
      errors.add("data.weights", "must not both be 0", line_in(data, "weights"));
    }
  }
  if (absl::Status s = data::validate(d.options); !s.ok()) {
    // One "<kind>.<key>: message" per problem, joined with "; ".
    for (absl::string_view item : absl::StrSplit(s.message(), "; ")) {
      const size_t colon = item.find(": ");
      const std::string key(item.substr(0, colon));
      const std::vector<std::string> parts = absl::StrSplit(key, '.');
      int line = 0;
      if (parts.size() == 2) {
        line =
            parts[0] == "arithmetic" ? line_in(arithmetic, parts[1]) : line_in(countdown, parts[1]);
      }
      errors.add(absl::StrCat("data.", key),
                 colon == absl::string_view::npos ? std::string(item)
                                                  : std::string(item.substr(colon + 2)),
                 line);
    }
  }
  if (!errors.empty()) return combined();
  return c;
}

}  // namespace

bool DataConfig::operator==(const DataConfig& other) const {
  const data::ArithmeticOptions &a = options.arithmetic, &b = other.options.arithmetic;
  const data::CountdownOptions &x = options.countdown, &y = other.options.countdown;
  return task == other.task && arithmetic_weight == other.arithmetic_weight &&
         countdown_weight == other.countdown_weight && seed == other.seed &&
         train_problems == other.train_problems && a.min_digits == b.min_digits &&
         a.max_digits == b.max_digits && a.ops == b.ops && a.allow_negative == b.allow_negative &&
         x.min_numbers == y.min_numbers && x.max_numbers == y.max_numbers &&
         x.max_value == y.max_value && x.max_target == y.max_target;
}

absl::Status apply_overrides(YAML::Node& root, const std::vector<std::string>& sets) {
  std::vector<std::string> problems;
  struct Parsed {
    std::string text;
    std::vector<std::string> path;
    std::string value;
  };
  std::vector<Parsed> parsed;
  for (const std::string& set : sets) {
    const size_t eq = set.find('=');
    if (eq == std::string::npos) {
      problems.push_back(absl::StrCat("--set '", set, "': expected key.path=value"));
      continue;
    }
    const std::string key = set.substr(0, eq);
    std::vector<std::string> path = absl::StrSplit(key, '.');
    if (key.empty() || !std::all_of(path.begin(), path.end(), valid_name)) {
      problems.push_back(absl::StrCat(
          "--set '", set, "': the key path '", key,
          "' must be names of letters, digits, '_' and '-' joined by dots, e.g. train.steps"));
      continue;
    }
    parsed.push_back(Parsed{set, std::move(path), set.substr(eq + 1)});
  }
  if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  if (parsed.empty()) return absl::OkStatus();

  if (root.IsDefined() && !root.IsNull() && !root.IsMap()) {
    return absl::InvalidArgumentError(
        "--set: the config is not a mapping of sections, so no key can be set in it");
  }
  // Applies every override to `target`, recording paths that go through a value.
  auto apply_all = [&](YAML::Node target) {
    for (const Parsed& p : parsed) {
      YAML::Node current = target;
      bool ok = true;
      for (size_t i = 0; i + 1 < p.path.size(); ++i) {
        YAML::Node child = current[p.path[i]];
        if (!child.IsDefined() || child.IsNull()) {
          current[p.path[i]] = YAML::Node(YAML::NodeType::Map);
          child.reset(current[p.path[i]]);
        } else if (!child.IsMap()) {
          const std::string where = absl::StrJoin(p.path.begin(), p.path.begin() + i + 1, ".");
          problems.push_back(absl::StrCat(
              "--set ", p.text, ": ", where, " is ",
              child.IsScalar() ? absl::StrCat("'", child.Scalar(), "'") : std::string("a list"),
              ", not a mapping"));
          ok = false;
          break;
        }
        current.reset(child);
      }
      if (ok) current[p.path.back()] = override_value(p.value);
    }
  };
  // A dry run on a copy finds the bad paths; the real run then edits `root` itself, which keeps
  // the line numbers of its nodes for error messages (a copy loses them).
  apply_all(root.IsMap() ? YAML::Clone(root) : YAML::Node(YAML::NodeType::Map));
  if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "\n"));
  if (!root.IsMap()) root = YAML::Node(YAML::NodeType::Map);
  apply_all(root);
  return absl::OkStatus();
}

absl::StatusOr<RunConfig> parse_run_config(const YAML::Node& root, std::string_view source,
                                           const std::string& base_dir) {
  return parse_impl(root, source, base_dir, {});
}

namespace {

// `over` on top of `base`: mappings merge key by key, anything else replaces. Returns a new tree.
YAML::Node merged(const YAML::Node& base, const YAML::Node& over) {
  if (!base.IsMap() || !over.IsMap()) return YAML::Clone(over);
  YAML::Node out = YAML::Clone(base);
  for (const auto& entry : over) {
    const std::string key = entry.first.as<std::string>();
    const YAML::Node& from_base = static_cast<const YAML::Node&>(out)[key];
    out[key] = from_base.IsDefined() ? merged(from_base, entry.second) : YAML::Clone(entry.second);
  }
  return out;
}

// `file`, and when it names `base: OTHER.yaml` (relative to its directory), the base's settings
// (itself possibly based on another) with this file's on top. A model path the base gives keeps
// pointing where the base meant it.
absl::StatusOr<YAML::Node> load_with_base(const std::string& file, int depth) {
  FATHOM_ASSIGN_OR_RETURN(YAML::Node root, model::load_yaml_file(file));
  if (!root.IsMap()) return root;
  const YAML::Node base_name = static_cast<const YAML::Node&>(root)["base"];
  if (!base_name.IsDefined()) return root;
  if (!base_name.IsScalar()) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ":", base_name.Mark().line + 1, ": base: must be a run YAML path"));
  }
  if (depth >= 8) {
    return absl::InvalidArgumentError(
        absl::StrCat(file, ": base: more than 8 levels of base files (a cycle?)"));
  }
  const std::filesystem::path dir = std::filesystem::path(file).parent_path();
  const std::string base_file = (dir / base_name.as<std::string>()).string();
  FATHOM_ASSIGN_OR_RETURN(YAML::Node base, load_with_base(base_file, depth + 1));
  if (base.IsMap()) {
    YAML::Node base_model = base["model"];
    if (base_model.IsScalar()) {
      const std::filesystem::path model_path = base_model.as<std::string>();
      if (model_path.is_relative()) {
        base["model"] = std::filesystem::relative(
                            std::filesystem::path(base_file).parent_path() / model_path,
                            dir.empty() ? "." : dir)
                            .string();
      }
    }
  }
  root.remove("base");
  return merged(base, root);
}

}  // namespace

absl::StatusOr<RunConfig> load_run_config(const std::string& file,
                                          const std::vector<std::string>& sets) {
  FATHOM_ASSIGN_OR_RETURN(YAML::Node root, load_with_base(file, 0));
  const bool model_is_path =
      root.IsMap() && static_cast<const YAML::Node&>(root)["model"].IsScalar();
  std::vector<std::string> run_sets, model_sets;
  for (const std::string& set : sets) {
    if (model_is_path && set.rfind("model.", 0) == 0) {
      model_sets.push_back(set);
    } else {
      run_sets.push_back(set);
    }
  }
  FATHOM_RETURN_IF_ERROR(apply_overrides(root, run_sets));
  std::string base_dir = std::filesystem::path(file).parent_path().string();
  if (base_dir.empty()) base_dir = ".";
  return parse_impl(root, file, base_dir, model_sets);
}

std::string run_config_to_yaml(const RunConfig& c) {
  std::string out = model::model_config_to_yaml(c.model);
  absl::StrAppend(&out, "precision: ", std::string(model::precision_name(c.precision)), "\n");
  absl::StrAppend(&out, "seed: ", c.seed, "\n");
  const TrainConfig& t = c.train;
  absl::StrAppend(
      &out, "train:\n", "  steps: ", t.steps, "\n", "  micro_batch_size: ", t.micro_batch_size,
      "\n", "  grad_accum: ", t.grad_accum, "\n", "  seq_len: ", t.seq_len, "\n",
      "  recompute: ", t.recompute ? "true" : "false", "\n", "  log_every: ", t.log_every, "\n",
      "  eval_every: ", t.eval_every, "\n", "  eval_samples: ", t.eval_samples, "\n",
      "  checkpoint_every: ", t.checkpoint_every, "\n", "  threads: ", t.threads, "\n");
  if (!t.init_from.empty()) absl::StrAppend(&out, "  init_from: \"", t.init_from, "\"\n");
  const OptimizerConfig& o = c.optimizer;
  const LrSchedule& s = o.schedule;
  absl::StrAppend(&out, "optimizer:\n", "  lr: ", format_real(s.lr), "\n",
                  "  min_lr: ", format_real(s.min_lr), "\n", "  beta1: ", format_real(o.beta1),
                  "\n", "  beta2: ", format_real(o.beta2), "\n", "  eps: ", format_real(o.eps),
                  "\n", "  weight_decay: ", format_real(o.weight_decay), "\n",
                  "  grad_clip: ", format_real(o.grad_clip), "\n",
                  "  moments: ", o.moments == DType::kBF16 ? "bf16" : "fp32", "\n");
  absl::StrAppend(&out, "  schedule:\n", "    type: ", std::string(schedule_type_name(s.type)),
                  "\n", "    warmup_steps: ", s.warmup_steps, "\n");
  if (s.type != ScheduleType::kCosine) {
    absl::StrAppend(&out, "    decay_start: ", s.decay_start, "\n",
                    "    decay_steps: ", s.decay_steps, "\n");
  }
  if (s.type == ScheduleType::kWsd) {
    absl::StrAppend(&out, "    decay_shape: ", std::string(decay_shape_name(s.decay_shape)), "\n");
  }
  absl::StrAppend(&out, "mtp:\n", "  lambda: ", format_real(c.mtp.lambda), "\n",
                  "  lambda_after: ", format_real(c.mtp.lambda_after), "\n",
                  "  switch_step: ", c.mtp.switch_step, "\n");
  absl::StrAppend(&out, "parallel:\n", "  pp: ", c.parallel.pp, "\n", "  dp: ", c.parallel.dp,
                  "\n", "  ep: ", c.parallel.ep, "\n",
                  "  fp8_dispatch: ", c.parallel.fp8_dispatch ? "true" : "false", "\n",
                  "  schedule: ", std::string(parallel::pipeline::schedule_kind_name(c.parallel.schedule)),
                  "\n", "  fb_overlap: ", c.parallel.fb_overlap ? "true" : "false", "\n");
  const DataConfig& d = c.data;
  absl::StrAppend(&out, "data:\n", "  task: ", d.task, "\n");
  if (d.task == "mix") {
    absl::StrAppend(&out, "  weights:\n", "    arithmetic: ", format_real(d.arithmetic_weight),
                    "\n", "    countdown: ", format_real(d.countdown_weight), "\n");
  }
  const data::ArithmeticOptions& a = d.options.arithmetic;
  const data::CountdownOptions& n = d.options.countdown;
  absl::StrAppend(&out, "  seed: ", d.seed, "\n", "  train_problems: ", d.train_problems, "\n",
                  "  arithmetic:\n", "    min_digits: ", a.min_digits, "\n",
                  "    max_digits: ", a.max_digits, "\n", "    ops: ", yaml_quoted(a.ops), "\n",
                  "    allow_negative: ", a.allow_negative ? "true" : "false", "\n",
                  "  countdown:\n", "    min_numbers: ", n.min_numbers, "\n",
                  "    max_numbers: ", n.max_numbers, "\n", "    max_value: ", n.max_value, "\n",
                  "    max_target: ", n.max_target, "\n");
  return out;
}

data::LoaderOptions loader_options(const RunConfig& config, int64_t rank, int64_t world) {
  data::LoaderOptions o;
  const DataConfig& d = config.data;
  if (d.task == "arithmetic") {
    o.sources = {{data::TaskKind::kArithmetic, 1.0}};
  } else if (d.task == "countdown") {
    o.sources = {{data::TaskKind::kCountdown, 1.0}};
  } else {
    o.sources = {{data::TaskKind::kArithmetic, d.arithmetic_weight},
                 {data::TaskKind::kCountdown, d.countdown_weight}};
  }
  o.task_options = d.options;
  o.seed = static_cast<uint64_t>(d.seed);
  o.train_problems = d.train_problems;
  o.seq_len = config.train.seq_len;
  o.extra = config.model.mtp_depth + 1;
  o.rank = rank;
  o.world = world;
  return o;
}

}  // namespace fathom::trainer
