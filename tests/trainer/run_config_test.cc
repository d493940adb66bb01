#include "trainer/run_config.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "tests/model/presets.h"

namespace fathom::trainer {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

std::string temp_dir() {
  const std::string dir = ::testing::TempDir() + "/fathom_run_config_test";
  std::filesystem::create_directories(dir + "/models");
  return dir;
}

// Writes `text` to temp_dir()/name and returns the path.
std::string write_file(const std::string& name, const std::string& text) {
  const std::string path = temp_dir() + "/" + name;
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  return path;
}

std::string tiny_path() { return model::testing::preset_path("tiny"); }

std::string run_preset(const std::string& name) {
  const std::string root = model::testing::source_root();
  EXPECT_FALSE(root.empty()) << "configs/ not found; set FATHOM_SOURCE_DIR to the repo root";
  return root + "/configs/runs/" + name + ".yaml";
}

RunConfig load_ok(const std::string& path, const std::vector<std::string>& sets = {}) {
  absl::StatusOr<RunConfig> c = load_run_config(path, sets);
  EXPECT_TRUE(c.ok()) << path << ": " << c.status();
  return c.ok() ? *c : RunConfig{};
}

absl::Status load_error(const std::string& path, const std::vector<std::string>& sets = {}) {
  absl::StatusOr<RunConfig> c = load_run_config(path, sets);
  EXPECT_FALSE(c.ok()) << path << " loaded although it should not";
  return c.status();
}

TEST(RunConfig, PresetsLoadWithTheirModels) {
  const RunConfig tiny = load_ok(run_preset("pretrain-tiny"));
  absl::StatusOr<model::ModelConfig> tiny_model = model::load_model_config(tiny_path());
  ASSERT_TRUE(tiny_model.ok()) << tiny_model.status();
  EXPECT_EQ(tiny.model, *tiny_model);
  EXPECT_EQ(tiny.precision, model::TrainingPrecision::kFp32);
  EXPECT_GE(tiny.train.seq_len, 64);
  EXPECT_LE(tiny.train.seq_len, tiny.model.max_seq_len);
  EXPECT_EQ(tiny.train.micro_batch_size, 8);
  EXPECT_EQ(tiny.optimizer.schedule.type, ScheduleType::kWcc);
  EXPECT_DOUBLE_EQ(tiny.optimizer.schedule.lr, 1e-2);
  EXPECT_EQ(tiny.optimizer.moments, DType::kF32);
  EXPECT_EQ(tiny.data.task, "arithmetic");
  EXPECT_EQ(tiny.data.options.arithmetic.ops, "+-");
  EXPECT_EQ(tiny.data.options.arithmetic.max_digits, 2);
  EXPECT_EQ(tiny.data.seed, tiny.seed);

  const RunConfig small = load_ok(run_preset("pretrain-small"));
  EXPECT_EQ(small.model.dim, 256);
  EXPECT_EQ(small.data.task, "mix");
  EXPECT_DOUBLE_EQ(small.data.arithmetic_weight, 3.0);
  EXPECT_DOUBLE_EQ(small.data.countdown_weight, 1.0);
  EXPECT_EQ(small.data.options.arithmetic.ops, "+-*");
}

TEST(RunConfig, DefaultsResolveFromOtherFields) {
  const std::string path = write_file("defaults.yaml", "model: " + tiny_path() +
                                                           "\n"
                                                           "seed: 5\n"
                                                           "train:\n"
                                                           "  steps: 200\n");
  const RunConfig c = load_ok(path);
  EXPECT_EQ(c.optimizer.schedule.warmup_steps, 20);  // steps / 10
  EXPECT_EQ(c.optimizer.schedule.decay_steps, 40);   // steps / 5
  EXPECT_EQ(c.optimizer.schedule.decay_start, 160);  // the decay ends with the run
  EXPECT_DOUBLE_EQ(learning_rate(c.optimizer.schedule, 200), c.optimizer.schedule.min_lr);
  EXPECT_EQ(c.optimizer.moments, DType::kF32);
  EXPECT_DOUBLE_EQ(c.mtp.lambda, c.model.mtp_lambda);
  EXPECT_DOUBLE_EQ(c.mtp.lambda_after, c.mtp.lambda);
  EXPECT_EQ(c.mtp.switch_step, 200);
  EXPECT_EQ(c.data.seed, 5);
  EXPECT_DOUBLE_EQ(c.optimizer.beta2, 0.95);

  // fp8 keeps the AdamW moments in bf16, as V3 did, unless the run says otherwise.
  EXPECT_EQ(load_ok(path, {"precision=fp8"}).optimizer.moments, DType::kBF16);
  EXPECT_EQ(load_ok(path, {"precision=fp8", "optimizer.moments=fp32"}).optimizer.moments,
            DType::kF32);
  // cosine decays over everything after the warmup.
  const RunConfig cosine = load_ok(path, {"optimizer.schedule.type=cosine"});
  EXPECT_EQ(cosine.optimizer.schedule.decay_start, 20);
  EXPECT_EQ(cosine.optimizer.schedule.decay_steps, 180);
}

TEST(RunConfig, InlineModelAndModelPathRelativeToTheRunFile) {
  std::filesystem::copy_file(tiny_path(), temp_dir() + "/models/m.yaml",
                             std::filesystem::copy_options::overwrite_existing);
  const RunConfig by_path = load_ok(write_file("relative.yaml", "model: models/m.yaml\n"));
  EXPECT_EQ(by_path.model.dim, 64);

  const RunConfig inline_model = load_ok(
      write_file("inline.yaml", "model:\n  vocab_size: 300\n  dim: 32\n  max_seq_len: 128\n"));
  EXPECT_EQ(inline_model.model.dim, 32);
  EXPECT_EQ(inline_model.model.vocab_size, 300);

  const absl::Status missing = load_error(write_file("missing.yaml", "model: models/nope.yaml\n"));
  EXPECT_THAT(missing.message(), HasSubstr("missing.yaml:1: model: model file "
                                           "'models/nope.yaml' not found"));
  // Errors inside the model file name that file and line.
  write_file("models/bad.yaml", "model:\n  dim: 64\n  n_heads: abc\n");
  const absl::Status bad = load_error(write_file("bad_model.yaml", "model: models/bad.yaml\n"));
  EXPECT_THAT(bad.message(), HasSubstr("models/bad.yaml:3: model.n_heads: expected an integer"));
}

// `base:` starts from another run YAML: mappings merge key by key, the base's model path keeps
// meaning what it meant next to the base file, and a chain of bases works.
TEST(RunConfig, BaseFileIsMergedUnderTheRunFile) {
  std::filesystem::copy_file(tiny_path(), temp_dir() + "/models/m.yaml",
                             std::filesystem::copy_options::overwrite_existing);
  write_file("base.yaml",
             "model: models/m.yaml\nseed: 5\ntrain:\n  steps: 40\n  seq_len: 64\n"
             "optimizer:\n  lr: 0.002\n");
  std::filesystem::create_directories(temp_dir() + "/child");
  const RunConfig c = load_ok(write_file(
      "child/run.yaml",
      "base: ../base.yaml\ntrain:\n  seq_len: 32\nparallel:\n  schedule: dualpipev\n"));
  EXPECT_EQ(c.model.dim, 64);          // the base's model, found relative to the base
  EXPECT_EQ(c.seed, 5);                // from the base
  EXPECT_EQ(c.train.steps, 40);        // merged: the base's key next to ...
  EXPECT_EQ(c.train.seq_len, 32);      // ... the run file's override
  EXPECT_EQ(c.optimizer.schedule.lr, 0.002);
  EXPECT_EQ(c.parallel.schedule, parallel::pipeline::ScheduleKind::kDualPipeV);
  // A chain, with --set on top of everything.
  const RunConfig chained =
      load_ok(write_file("chain.yaml", "base: child/run.yaml\nseed: 9\n"), {"train.steps=7"});
  EXPECT_EQ(chained.seed, 9);
  EXPECT_EQ(chained.train.seq_len, 32);
  EXPECT_EQ(chained.train.steps, 7);

  EXPECT_THAT(load_error(write_file("no_base.yaml", "base: nope.yaml\n")).message(),
              HasSubstr("nope.yaml"));
  write_file("loop_a.yaml", "base: loop_b.yaml\n");
  EXPECT_THAT(load_error(write_file("loop_b.yaml", "base: loop_a.yaml\n")).message(),
              HasSubstr("a cycle?"));
  // The presets that use it load.
  const RunConfig four = load_ok(run_preset("pretrain-tiny-4ranks"));
  EXPECT_EQ(four.parallel.pp, 2);
  EXPECT_EQ(four.parallel.schedule, parallel::pipeline::ScheduleKind::kDualPipe);
  EXPECT_EQ(four.model, load_ok(run_preset("pretrain-tiny")).model);
}

// With pp > 1 the micro-batches per step are the schedule's N, checked when the config loads.
TEST(RunConfig, PipelineScheduleConditionsNameTheirKeys) {
  const std::string path = write_file("pipeline.yaml", "model: " + tiny_path() +
                                                           "\ntrain:\n  grad_accum: 3\n"
                                                           "parallel:\n  pp: 2\n  dp: 1\n"
                                                           "  schedule: dualpipe\n");
  EXPECT_THAT(load_error(path).message(),
              HasSubstr("train.grad_accum: micro-batches per step for the pipeline schedule: "
                        "dualpipe schedule needs"));
  EXPECT_THAT(load_error(path, {"parallel.schedule=dualpipe2"}).message(),
              HasSubstr("parallel.schedule"));
  EXPECT_THAT(load_error(path, {"parallel.pp=2", "parallel.schedule=dualpipev"}).message(),
              HasSubstr("2 pipeline ranks make 4 stages, but the model has only 3 layers"));
  load_ok(path, {"train.grad_accum=4"});
}

TEST(RunConfig, UnknownKeysAndTypeErrorsAllAtOnceWithLines) {
  const std::string path = write_file("typos.yaml", "model: " + tiny_path() +
                                                        "\n"                     // 1
                                                        "train:\n"               // 2
                                                        "  stepz: 100\n"         // 3
                                                        "  seq_len: abc\n"       // 4
                                                        "optimizer:\n"           // 5
                                                        "  lr: fast\n"           // 6
                                                        "  schedule:\n"          // 7
                                                        "    type: cosin\n"      // 8
                                                        "    warmup_step: 10\n"  // 9
                                                        "precision: fp16\n"      // 10
                                                        "dta:\n"                 // 11
                                                        "  task: mix\n");        // 12
  const std::string m(load_error(path).message());
  EXPECT_THAT(m, HasSubstr("typos.yaml:3: train.stepz: unknown key (did you mean 'steps'?)"));
  EXPECT_THAT(m, HasSubstr("typos.yaml:4: train.seq_len: expected an integer, got 'abc'"));
  EXPECT_THAT(m, HasSubstr("typos.yaml:6: optimizer.lr: expected a finite number, got 'fast'"));
  EXPECT_THAT(m, HasSubstr("typos.yaml:8: optimizer.schedule.type: expected one of 'wcc', "
                           "'wsd', 'cosine', got 'cosin' (did you mean 'cosine'?)"));
  EXPECT_THAT(m,
              HasSubstr("typos.yaml:9: optimizer.schedule.warmup_step: unknown key (did you mean "
                        "'warmup_steps'?)"));
  EXPECT_THAT(m, HasSubstr("typos.yaml:10: precision: expected one of 'fp32', 'bf16', 'fp8'"));
  EXPECT_THAT(m, HasSubstr("typos.yaml:11: dta: unknown key (did you mean 'data'?)"));
}

TEST(RunConfig, ValidationErrorsAllAtOnceWithLines) {
  const std::string path = write_file("invalid.yaml", "model: " + tiny_path() +
                                                          "\n"                       // 1
                                                          "train:\n"                 // 2
                                                          "  steps: 100\n"           // 3
                                                          "  seq_len: 512\n"         // 4
                                                          "  micro_batch_size: 0\n"  // 5
                                                          "  eval_every: -1\n"       // 6
                                                          "optimizer:\n"             // 7
                                                          "  lr: 1.0e-3\n"           // 8
                                                          "  min_lr: 1.0e-2\n"       // 9
                                                          "  beta2: 1.0\n"           // 10
                                                          "  schedule:\n"            // 11
                                                          "    warmup_steps: 150\n"  // 12
                                                          "mtp:\n"                   // 13
                                                          "  lambda: -0.5\n"         // 14
                                                          "data:\n"                  // 15
                                                          "  weights:\n"             // 16
                                                          "    countdown: 2\n"       // 17
                                                          "  arithmetic:\n"          // 18
                                                          "    max_digits: 12\n");   // 19
  const std::string m(load_error(path).message());
  EXPECT_THAT(m, HasSubstr("invalid.yaml:4: train.seq_len: must be at most model.max_seq_len "
                           "(256), got 512"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:5: train.micro_batch_size: must be positive, got 0"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:6: train.eval_every: must be zero or positive, got -1"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:9: optimizer.min_lr: must be between 0 and lr"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:10: optimizer.beta2: must be in [0, 1), got 1"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:12: optimizer.schedule.warmup_steps: must be in "
                           "[0, 100]"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:14: mtp.lambda: must be zero or positive, got -0.5"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:16: data.weights: used only with task 'mix', not "
                           "'arithmetic'"));
  EXPECT_THAT(m, HasSubstr("invalid.yaml:19: data.arithmetic.max_digits: must be in"));
}

TEST(RunConfig, KeysTheScheduleTypeDoesNotUseAreErrors) {
  const std::string path = write_file("schedule.yaml", "model: " + tiny_path() +
                                                           "\n"
                                                           "optimizer:\n"
                                                           "  schedule:\n"
                                                           "    type: cosine\n"
                                                           "    decay_steps: 50\n"
                                                           "    decay_shape: 1-sqrt\n");
  const std::string m(load_error(path).message());
  EXPECT_THAT(m, HasSubstr("schedule.yaml:5: optimizer.schedule.decay_steps: not used by "
                           "schedule type 'cosine'"));
  EXPECT_THAT(m, HasSubstr("schedule.yaml:6: optimizer.schedule.decay_shape: used only by "
                           "schedule type 'wsd', not 'cosine'"));
  // The same keys are fine with wsd.
  const RunConfig wsd = load_ok(path, {"optimizer.schedule.type=wsd"});
  EXPECT_EQ(wsd.optimizer.schedule.decay_shape, DecayShape::kOneMinusSqrt);
  EXPECT_EQ(wsd.optimizer.schedule.decay_steps, 50);
  EXPECT_EQ(wsd.optimizer.schedule.decay_start, 250);  // 300 - 50

  // A derived decay_start before the end of the warmup says where it came from.
  const absl::Status derived =
      load_error(path, {"optimizer.schedule.type=wcc", "optimizer.schedule.decay_shape=linear",
                        "optimizer.schedule.warmup_steps=280"});
  EXPECT_THAT(derived.message(), HasSubstr("decay_shape"));
  const absl::Status short_decay = load_error(
      write_file("short.yaml",
                 "model: " + tiny_path() + "\noptimizer:\n  schedule:\n    warmup_steps: 280\n"));
  EXPECT_THAT(short_decay.message(),
              HasSubstr("optimizer.schedule.decay_start: must be at least warmup_steps (280), "
                        "got 240 (default train.steps - decay_steps"));
}

TEST(RunConfig, ModelVocabularyMustCoverTheTokenizer) {
  const std::string m(load_error(write_file("vocab.yaml",
                                            "model:\n  dim: 64\n"
                                            "  vocab_size: 100\n"
                                            "  max_seq_len: 128\n"))
                          .message());
  EXPECT_THAT(m, HasSubstr("vocab.yaml:3: model.vocab_size: must be at least 263"));
}

TEST(ApplyOverrides, SetsValuesCreatesSectionsAndParsesYamlScalars) {
  YAML::Node root = YAML::Load("train:\n  steps: 10\n");
  ASSERT_TRUE(apply_overrides(root, {"train.steps=20", "optimizer.schedule.type=wsd",
                                     "optimizer.lr=3e-4", "train.recompute=true",
                                     "data.arithmetic.ops=*", "data.arithmetic.max_digits=3"})
                  .ok());
  EXPECT_EQ(root["train"]["steps"].Scalar(), "20");
  EXPECT_EQ(root["optimizer"]["schedule"]["type"].Scalar(), "wsd");
  EXPECT_EQ(root["optimizer"]["lr"].Scalar(), "3e-4");
  EXPECT_EQ(root["train"]["recompute"].Scalar(), "true");
  EXPECT_EQ(root["data"]["arithmetic"]["ops"].Scalar(), "*");  // not valid YAML: a plain string
  // A later override wins.
  ASSERT_TRUE(apply_overrides(root, {"train.steps=30", "train.steps=40"}).ok());
  EXPECT_EQ(root["train"]["steps"].Scalar(), "40");

  YAML::Node empty;
  ASSERT_TRUE(apply_overrides(empty, {"seed=3"}).ok());
  EXPECT_EQ(empty["seed"].Scalar(), "3");
}

TEST(ApplyOverrides, BadSyntaxAndPathsThroughValuesAreErrors) {
  YAML::Node root = YAML::Load("train:\n  steps: 10\nmodel: tiny.yaml\n");
  const absl::Status syntax =
      apply_overrides(root, {"train.steps", "=3", "train..steps=1", "train.st eps=1"});
  EXPECT_EQ(syntax.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(syntax.message(), HasSubstr("--set 'train.steps': expected key.path=value"));
  EXPECT_THAT(syntax.message(), HasSubstr("--set '=3': the key path ''"));
  EXPECT_THAT(syntax.message(), HasSubstr("--set 'train..steps=1'"));
  EXPECT_THAT(syntax.message(), HasSubstr("--set 'train.st eps=1'"));

  const absl::Status through = apply_overrides(root, {"train.seed=4", "train.steps.x=1"});
  EXPECT_THAT(through.message(), HasSubstr("--set train.steps.x=1: train.steps is '10', not a "
                                           "mapping"));
  // Nothing was applied, not even the good override.
  EXPECT_FALSE(root["train"]["seed"].IsDefined());
  EXPECT_EQ(root["train"]["steps"].Scalar(), "10");
}

TEST(LoadRunConfig, OverridesAreParsedLikeTheFile) {
  const std::string path = run_preset("pretrain-tiny");
  const RunConfig c =
      load_ok(path, {"train.steps=50", "optimizer.schedule.warmup_steps=5",
                     "optimizer.schedule.decay_start=20", "optimizer.schedule.decay_steps=10",
                     "mtp.switch_step=25", "data.task=mix", "data.weights.countdown=0.5",
                     "model.max_seq_len=128", "model.dim=32"});
  EXPECT_EQ(c.train.steps, 50);
  EXPECT_EQ(c.data.task, "mix");
  EXPECT_DOUBLE_EQ(c.data.countdown_weight, 0.5);
  EXPECT_DOUBLE_EQ(c.data.arithmetic_weight, 1.0);
  // model.* overrides go into the model file of the preset.
  EXPECT_EQ(c.model.dim, 32);
  EXPECT_EQ(c.model.max_seq_len, 128);

  // An unknown key given with --set gets a suggestion; a bad model override names the model file.
  const std::string typo(load_error(path, {"train.step=10"}).message());
  EXPECT_THAT(typo, HasSubstr("train.step: unknown key (did you mean 'steps'?)"));
  const std::string model_error(load_error(path, {"model.max_seq_len=32"}).message());
  EXPECT_THAT(model_error, HasSubstr("train.seq_len: must be at most model.max_seq_len (32)"));
  const std::string model_typo(load_error(path, {"model.n_head=2"}).message());
  EXPECT_THAT(model_typo, HasSubstr("tiny.yaml: model.n_head: unknown key (did you mean "
                                    "'n_heads'?)"));
  // An overridden key keeps its line in messages.
  std::ifstream in(path);
  int steps_line = 0;
  std::string text;
  for (int line = 1; std::getline(in, text); ++line) {
    if (text.rfind("  steps:", 0) == 0) steps_line = line;
  }
  ASSERT_GT(steps_line, 0);
  EXPECT_THAT(std::string(load_error(path, {"train.steps=abc"}).message()),
              HasSubstr(absl::StrCat("pretrain-tiny.yaml:", steps_line,
                                     ": train.steps: expected an integer, got 'abc'")));
  EXPECT_EQ(load_run_config("/nonexistent/run.yaml").status().code(), absl::StatusCode::kNotFound);
}

TEST(RunConfigToYaml, ReloadingGivesAnEqualConfig) {
  const std::string preset = run_preset("pretrain-tiny");
  const std::string minimal = write_file("minimal.yaml", "model: " + tiny_path() + "\n");
  struct Variant {
    std::string path;
    std::vector<std::string> sets;
  };
  const std::vector<Variant> variants = {
      {preset, {}},
      {preset,
       {"precision=fp8", "optimizer.lr=3.3e-4", "optimizer.min_lr=1.1e-5", "optimizer.eps=1e-10"}},
      {preset, {"optimizer.schedule.type=wsd", "optimizer.schedule.decay_shape=1-sqrt"}},
      {minimal, {"optimizer.schedule.type=cosine", "train.steps=77"}},
      {preset,
       {"data.task=mix", "data.weights.arithmetic=0.7", "data.weights.countdown=0.3",
        "data.seed=99", "data.train_problems=500", "data.arithmetic.ops=*-",
        "data.countdown.max_numbers=5", "train.recompute=true", "mtp.lambda_after=0.05"}},
  };
  for (const Variant& v : variants) {
    const RunConfig c = load_ok(v.path, v.sets);
    const std::string yaml = run_config_to_yaml(c);
    absl::StatusOr<RunConfig> again = parse_run_config(YAML::Load(yaml), "saved.yaml");
    ASSERT_TRUE(again.ok()) << again.status() << "\n" << yaml;
    EXPECT_EQ(*again, c) << yaml;
    EXPECT_EQ(run_config_to_yaml(*again), yaml);
  }
  // The variants really differ from the preset where they say so.
  const RunConfig mix = load_ok(preset, variants[4].sets);
  EXPECT_EQ(mix.data.options.arithmetic.ops, "*-");
  EXPECT_DOUBLE_EQ(mix.data.arithmetic_weight, 0.7);
  EXPECT_EQ(load_ok(minimal, variants[3].sets).optimizer.schedule.type, ScheduleType::kCosine);
}

TEST(LoaderOptions, FollowTheDataSectionAndTheModel) {
  const RunConfig small = load_ok(run_preset("pretrain-small"));
  const data::LoaderOptions o = loader_options(small, 1, 4);
  ASSERT_EQ(o.sources.size(), 2u);
  EXPECT_EQ(o.sources[0].kind, data::TaskKind::kArithmetic);
  EXPECT_DOUBLE_EQ(o.sources[0].weight, 3.0);
  EXPECT_EQ(o.sources[1].kind, data::TaskKind::kCountdown);
  EXPECT_DOUBLE_EQ(o.sources[1].weight, 1.0);
  EXPECT_EQ(o.seq_len, 128);
  EXPECT_EQ(o.extra, small.model.mtp_depth + 1);
  EXPECT_EQ(o.rank, 1);
  EXPECT_EQ(o.world, 4);
  EXPECT_EQ(o.task_options.arithmetic.ops, "+-*");
  EXPECT_TRUE(data::validate(o).ok()) << data::validate(o);

  const RunConfig tiny = load_ok(run_preset("pretrain-tiny"));
  absl::StatusOr<data::TokenLoader> loader = data::TokenLoader::create(loader_options(tiny));
  ASSERT_TRUE(loader.ok()) << loader.status();
  const Tensor batch = loader->next_batch(tiny.train.micro_batch_size);
  EXPECT_EQ(batch.dim(0), 8);
  EXPECT_EQ(batch.dim(1), tiny.train.seq_len + tiny.model.mtp_depth + 1);
}

}  // namespace
}  // namespace fathom::trainer
