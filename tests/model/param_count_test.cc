#include "model/param_count.h"

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cmath>
#include <string>

#include "kernels/check.h"
#include "tests/model/presets.h"

namespace fathom::model {
namespace {

using ::testing::HasSubstr;

ModelConfig load_preset(const std::string& name) {
  const std::string path = testing::preset_path(name);
  EXPECT_FALSE(path.empty()) << "configs/models not found; set FATHOM_SOURCE_DIR to the repo root";
  absl::StatusOr<ModelConfig> config = load_model_config(path);
  EXPECT_TRUE(config.ok()) << path << ": " << config.status();
  return config.ok() ? *config : ModelConfig{};
}

double relative_error(double value, double reference) {
  return std::abs(value - reference) / reference;
}

// Every count of the tiny preset, worked out by hand from its YAML: dim 64, vocab 263, 3 layers (1
// dense), 4 heads, q_lora 32, kv_lora 32, nope 16, rope 8, v 16, inter 128, moe_inter 32, 8 routed
// + 1 shared experts, top-2, mtp_depth 1.
TEST(ParamCount, TinyMatchesHandCount) {
  const ModelConfig c = load_preset("tiny");
  const ParamCount p = count_parameters(c);

  // MLA: wq_a 32*64 + q_norm 32 + wq_b (4*24)*32 + wkv_a (32+8)*64 + kv_norm 32
  //      + wkv_b (4*32)*32 + wo 64*(4*16)
  const int64_t mla = 2048 + 32 + 3072 + 2560 + 32 + 4096 + 4096;
  EXPECT_EQ(mla, 15936);
  EXPECT_EQ(mla_parameters(c), mla);
  const int64_t dense_ffn = 3 * 64 * 128;  // 24576
  EXPECT_EQ(dense_ffn_parameters(c), dense_ffn);
  const int64_t expert = 3 * 64 * 32;  // 6144
  EXPECT_EQ(expert_parameters(c), expert);
  EXPECT_EQ(shared_expert_parameters(c), expert);
  EXPECT_EQ(gate_parameters(c), 8 * 64);
  const int64_t dense_block = 2 * 64 + mla + dense_ffn;                   // 40640
  const int64_t moe_block = 2 * 64 + mla + 8 * 64 + 8 * expert + expert;  // 71872
  EXPECT_EQ(block_parameters(c, false), dense_block);
  EXPECT_EQ(block_parameters(c, true), moe_block);

  EXPECT_EQ(p.embedding, 263 * 64);
  EXPECT_EQ(p.head, 263 * 64);
  EXPECT_EQ(p.attention, 3 * mla);
  EXPECT_EQ(p.dense_ffn, dense_ffn);
  EXPECT_EQ(p.gates, 2 * 512);
  EXPECT_EQ(p.routed_experts, 2 * 8 * expert);
  EXPECT_EQ(p.shared_experts, 2 * expert);
  EXPECT_EQ(p.norms, 3 * 128 + 64);
  EXPECT_EQ(p.total, 218112);  // 40640 + 2*71872 + 2*16832 + 64
  // Minus the embedding and the 6 unused experts of each of the 2 MoE blocks.
  EXPECT_EQ(p.activated, 218112 - 16832 - 2 * 6 * 6144);  // 127552
  // enorm + hnorm + eh_proj (64 x 128) + MoE block + norm before the head.
  EXPECT_EQ(mtp_module_parameters(c), 64 + 64 + 8192 + moe_block + 64);
  EXPECT_EQ(p.mtp, 80256);
  EXPECT_EQ(p.mtp_activated, 80256 - 6 * 6144);
  EXPECT_EQ(p.router_bias, 3 * 8);  // 2 MoE blocks + the MTP block
  EXPECT_EQ(p.trained(), 218112 + 80256);

  // FP8 linears: MLA 2048+3072+2560+4096+4096 = 15872, dense 24576, MoE 9*6144 = 55296, eh_proj
  // 8192. Every matrix is at most 128x128 here: one block scale each.
  EXPECT_EQ(p.fp8_linear, (15872 + 24576) + 2 * (15872 + 55296) + (15872 + 55296 + 8192));
  EXPECT_EQ(p.fp8_block_scales, (5 + 3) + 2 * (5 + 27) + (5 + 27 + 1));
}

TEST(ParamCount, TrainingStateBytesFollowTheFormulas) {
  const ParamCount p = count_parameters(load_preset("tiny"));
  const int64_t trained = 298368, bias = 24, fp8 = 262144, scales = 105;
  ASSERT_EQ(p.trained(), trained);
  ASSERT_EQ(p.fp8_linear, fp8);
  ASSERT_EQ(p.fp8_block_scales, scales);
  EXPECT_EQ(training_state_bytes(p, TrainingPrecision::kFp32), 16 * trained + 4 * bias);
  EXPECT_EQ(training_state_bytes(p, TrainingPrecision::kBf16), 18 * trained + 4 * bias);
  // master 4 + grad 4 + BF16 m, v 4; FP8 copy 1 B + 4 B per block scale; BF16 copy 2 B.
  EXPECT_EQ(training_state_bytes(p, TrainingPrecision::kFp8),
            12 * trained + 1 * fp8 + 4 * scales + 2 * (trained - fp8) + 4 * bias);
  EXPECT_DOUBLE_EQ(bytes_per_parameter(p, TrainingPrecision::kFp32),
                   (16.0 * trained + 4 * bias) / trained);
  EXPECT_EQ(precision_name(TrainingPrecision::kFp32), "fp32");
  EXPECT_EQ(precision_name(TrainingPrecision::kBf16), "bf16");
  EXPECT_EQ(precision_name(TrainingPrecision::kFp8), "fp8");
}

// DeepSeek-V3: 671B main model with 37B activated; the MTP module adds 11.5B unique parameters, and
// the Hugging Face checkpoint, which stores the MTP module's embedding and head again, holds 685B
// (DeepSeek-V3 README_WEIGHTS.md).
TEST(ParamCount, DeepSeekV3MatchesPublishedFigures) {
  const ModelConfig c = load_preset("deepseek-v3-671b");
  const ParamCount p = count_parameters(c);
  EXPECT_LT(relative_error(p.total, 671e9), 0.005) << p.total;
  EXPECT_LT(relative_error(p.activated, 37e9), 0.03) << p.activated;
  EXPECT_LT(relative_error(p.mtp, 11.5e9), 0.015) << p.mtp;
  EXPECT_LT(relative_error(p.total + p.mtp + p.embedding + p.head, 685e9), 0.005);
  EXPECT_EQ(p.embedding, 926679040);

  // Exact, from the closed forms: MLA 187,107,328 per block; dense FFN 396,361,728; MoE FFN
  // 11,320,164,352 (gate 1,835,008 + 257 experts of 44,040,192).
  const int64_t mla = 11010048 + 1536 + 37748736 + 4128768 + 512 + 16777216 + 117440512;
  EXPECT_EQ(mla_parameters(c), mla);
  const int64_t dense_block = 14336 + mla + 396361728;
  const int64_t moe_block = 14336 + mla + 1835008 + 257 * int64_t{44040192};
  EXPECT_EQ(p.total, 3 * dense_block + 58 * moe_block + 2 * int64_t{926679040} + 7168);
  EXPECT_EQ(p.total, int64_t{671026404352});
  EXPECT_EQ(p.activated, p.total - 926679040 - 58 * 248 * int64_t{44040192});
  EXPECT_EQ(p.mtp, 3 * 7168 + 2 * 7168 * 7168 + moe_block);
  EXPECT_EQ(p.router_bias, 59 * 256);

  // FP8 mode: almost every parameter is in an FP8 linear, so about 13 B per parameter.
  const double fp8 = bytes_per_parameter(p, TrainingPrecision::kFp8);
  EXPECT_GT(fp8, 13.0);
  EXPECT_LT(fp8, 13.01);
  EXPECT_GT(p.fp8_linear, p.trained() - 2 * p.embedding - 60 * 256 * 7168);
}

// DeepSeek-V2-Lite: 15.7B total, 2.4B activated (DeepSeek-V2 paper / model card).
TEST(ParamCount, DeepSeekV2LiteMatchesPublishedFigures) {
  const ModelConfig c = load_preset("deepseek-v2-lite-16b");
  const ParamCount p = count_parameters(c);
  EXPECT_LT(relative_error(p.total, 15.7e9), 0.005) << p.total;
  EXPECT_LT(relative_error(p.activated, 2.4e9), 0.03) << p.activated;
  EXPECT_EQ(p.mtp, 0);
  // No query compression: wq is dim x n_heads*192.
  EXPECT_EQ(mla_parameters(c), 2048 * 3072 + 2048 * 576 + 512 + 512 * 4096 + 2048 * 2048);
  EXPECT_EQ(p.total, int64_t{15706484224});
}

// The DeepSeek-V2 shape (config_236B.json) checks the activated-parameter convention once more:
// 236B total, 21B activated.
TEST(ParamCount, DeepSeekV2MatchesPublishedFigures) {
  ModelConfig c;
  c.dim = 5120;
  c.inter_dim = 12288;
  c.moe_inter_dim = 1536;
  c.n_layers = 60;
  c.n_heads = 128;
  c.n_routed_experts = 160;
  c.n_expert_groups = 8;
  c.n_limited_groups = 3;
  c.route_scale = 16.0;
  c.q_lora_rank = 1536;
  const ParamCount p = count_parameters(c);
  EXPECT_LT(relative_error(p.total, 236e9), 0.005) << p.total;
  EXPECT_LT(relative_error(p.activated, 21e9), 0.03) << p.activated;
}

TEST(ParamCount, QueryCompressionChangesOnlyTheQueryPath) {
  ModelConfig with = load_preset("tiny");
  ModelConfig without = with;
  without.q_lora_rank = 0;
  const int64_t q_out = with.n_heads * with.qk_head_dim();
  // wq_a + q_norm + wq_b replaced by wq.
  EXPECT_EQ(
      mla_parameters(with) - mla_parameters(without),
      with.q_lora_rank * with.dim + with.q_lora_rank + q_out * with.q_lora_rank - q_out * with.dim);
}

TEST(ParamCount, DenseModelHasNoRoutingAndADenseMtpBlock) {
  ModelConfig c = load_preset("tiny");
  c.n_dense_layers = c.n_layers;
  const ParamCount p = count_parameters(c);
  EXPECT_EQ(p.routed_experts, 0);
  EXPECT_EQ(p.gates, 0);
  EXPECT_EQ(p.router_bias, 0);
  EXPECT_EQ(p.activated, p.total - p.embedding);
  EXPECT_EQ(p.mtp, c.mtp_depth * (3 * c.dim + 2 * c.dim * c.dim + block_parameters(c, false)));
  EXPECT_EQ(p.mtp_activated, p.mtp);

  c.n_shared_experts = 0;
  c.n_dense_layers = 1;
  c.mtp_depth = 2;
  const ParamCount q = count_parameters(c);
  EXPECT_EQ(q.shared_experts, 0);
  EXPECT_EQ(q.mtp, 2 * mtp_module_parameters(c));
  EXPECT_EQ(q.router_bias, (2 + 2) * c.n_routed_experts);
}

TEST(ParamCount, InvalidConfigIsAProgrammerError) {
  ModelConfig c;
  c.dim = 0;
  EXPECT_THROW(count_parameters(c), Error);
}

TEST(DescribeParameters, ShowsCountsAndMemoryPerPrecision) {
  const std::string text = describe_parameters(load_preset("deepseek-v3-671b"));
  EXPECT_THAT(text, HasSubstr("61 layers (3 dense, 58 MoE) + 1 MTP module"));
  EXPECT_THAT(text, HasSubstr("671,026,404,352"));
  EXPECT_THAT(text, HasSubstr("671.03B"));
  EXPECT_THAT(text, HasSubstr("36,625,603,584"));
  EXPECT_THAT(text, HasSubstr("926,679,040"));
  EXPECT_THAT(text, HasSubstr("11,610,067,968"));
  EXPECT_THAT(text, HasSubstr("682,636,472,320"));
  EXPECT_THAT(text, HasSubstr("activated per token"));
  EXPECT_THAT(text, HasSubstr("output head"));
  EXPECT_THAT(text, HasSubstr("embedding"));
  // 682.6B x 16 B = 10172.1 GiB (plus 15,104 x 4 B of router bias).
  EXPECT_THAT(text, HasSubstr("fp32             16.00          10172.1"));
  EXPECT_THAT(text, HasSubstr("bf16             18.00          11443.6"));
  EXPECT_THAT(text, HasSubstr("fp8              13.00"));

  const std::string tiny = describe_parameters(load_preset("tiny"));
  EXPECT_THAT(tiny, HasSubstr("218,112"));
  EXPECT_THAT(tiny, HasSubstr("127,552"));
  EXPECT_THAT(tiny, HasSubstr("80,256"));
}

}  // namespace
}  // namespace fathom::model
