#include "launch/convert_command.h"

#include <cstdio>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "trainer/hf_convert.h"

namespace fathom::launch {
namespace {

constexpr char kUsage[] =
    "usage: fathom convert --from hf --to fathom HF_DIR CHECKPOINT_DIR [--dequantize | "
    "--keep-fp8]\n"
    "                      [--shard-size SIZE]\n"
    "       fathom convert --from fathom --to hf CHECKPOINT_DIR HF_DIR [--dtype f32|bf16]\n"
    "                      [--fp8] [--dequantize] [--shard-size SIZE]\n"
    "Converts a Hugging Face checkpoint directory (config.json + model.safetensors or shards with\n"
    "model.safetensors.index.json; DeepSeek-V3, Llama or Qwen2) to a fathom HDF5 checkpoint, or\n"
    "back. The output directory must not exist; it appears complete or not at all.\n"
    "  --dequantize   import: FP8 weights become f32 (w = e4m3 * weight_scale_inv per 128x128\n"
    "                 block; the default). export: write FP8 tensors of a --keep-fp8 checkpoint\n"
    "                 as --dtype\n"
    "  --keep-fp8     import: store FP8 weights and their scales as they are\n"
    "  --fp8          export: quantize attention / FFN / expert weights to E4M3 with 128x128\n"
    "                 weight_scale_inv, as DeepSeek's release (DeepSeek-V3 only)\n"
    "  --dtype D      export: f32 (default, lossless) or bf16 for the other tensors\n"
    "  --shard-size S largest data file, e.g. 5GB, 500MB, 2GiB or bytes (default: 5GB for HF,\n"
    "                 4GiB for fathom)\n"
    "See docs/checkpoints.md for the name mappings.\n";

int usage_error(const std::string& message) {
  std::fprintf(stderr, "fathom convert: %s\n%s", message.c_str(), kUsage);
  return 2;
}

// "5GB" (10^9), "2GiB" (2^30), "500MB", "64KiB", "1024" (bytes). False when malformed or zero.
bool parse_size(const std::string& text, uint64_t* out) {
  struct Suffix {
    const char* text;
    uint64_t scale;
  };
  static const Suffix kSuffixes[] = {
      {"kib", uint64_t{1} << 10},
      {"mib", uint64_t{1} << 20},
      {"gib", uint64_t{1} << 30},
      {"tib", uint64_t{1} << 40},
      {"kb", 1000},
      {"mb", 1000000},
      {"gb", 1000000000},
      {"tb", 1000000000000},
      {"b", 1},
  };
  const std::string lower = absl::AsciiStrToLower(text);
  uint64_t scale = 1;
  std::string number = lower;
  for (const Suffix& s : kSuffixes) {
    const std::string suffix = s.text;
    if (lower.size() > suffix.size() &&
        lower.compare(lower.size() - suffix.size(), suffix.size(), suffix) == 0) {
      scale = s.scale;
      number = lower.substr(0, lower.size() - suffix.size());
      break;
    }
  }
  double value = 0;
  if (!absl::SimpleAtod(number, &value) || !(value > 0) || value * scale > 1.8e19) return false;
  *out = static_cast<uint64_t>(value * static_cast<double>(scale));
  return *out > 0;
}

}  // namespace

int convert_main(const std::vector<std::string>& args) {
  std::string from, to, dtype = "f32";
  std::vector<std::string> paths;
  bool dequantize = false, keep_fp8 = false, fp8 = false;
  uint64_t shard_size = 0;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const bool has_value = i + 1 < args.size();
    if (a == "--help" || a == "-h") {
      std::printf("%s", kUsage);
      return 0;
    } else if (a == "--from" || a == "--to" || a == "--dtype") {
      if (!has_value) return usage_error(a + " needs a value");
      (a == "--from" ? from : a == "--to" ? to : dtype) = args[++i];
    } else if (a == "--shard-size") {
      if (!has_value || !parse_size(args[i + 1], &shard_size)) {
        return usage_error("--shard-size needs a positive size such as 5GB, 500MB or 2GiB");
      }
      ++i;
    } else if (a == "--dequantize") {
      dequantize = true;
    } else if (a == "--keep-fp8") {
      keep_fp8 = true;
    } else if (a == "--fp8") {
      fp8 = true;
    } else if (a.rfind("--", 0) == 0) {
      return usage_error("unknown option '" + a + "'");
    } else {
      paths.push_back(a);
    }
  }
  const bool import = from == "hf" && to == "fathom";
  const bool export_ = from == "fathom" && to == "hf";
  if (!import && !export_) {
    return usage_error("expected --from hf --to fathom or --from fathom --to hf");
  }
  if (paths.size() != 2) {
    return usage_error(absl::StrCat("expected an input and an output directory, got ", paths.size(),
                                    " path", paths.size() == 1 ? "" : "s"));
  }
  if (dequantize && keep_fp8) return usage_error("--dequantize and --keep-fp8 exclude each other");

  absl::StatusOr<trainer::ConvertReport> report;
  if (import) {
    if (fp8) return usage_error("--fp8 applies to --to hf");
    if (dtype != "f32") return usage_error("--dtype applies to --to hf");
    trainer::HfImportOptions options;
    options.fp8 = keep_fp8 ? trainer::Fp8Import::kKeep : trainer::Fp8Import::kDequantize;
    if (shard_size > 0) options.max_shard_bytes = shard_size;
    report = trainer::convert_hf_to_fathom(paths[0], paths[1], options);
  } else {
    if (keep_fp8) return usage_error("--keep-fp8 applies to --to fathom");
    if (dtype != "f32" && dtype != "bf16") {
      return usage_error("--dtype must be f32 or bf16, got '" + dtype + "'");
    }
    if (fp8 && dequantize) return usage_error("--fp8 and --dequantize exclude each other");
    trainer::HfExportOptions options;
    options.dtype = dtype == "bf16" ? DType::kBF16 : DType::kF32;
    options.fp8 = fp8;
    options.dequantize = dequantize;
    if (shard_size > 0) options.max_shard_bytes = shard_size;
    report = trainer::convert_fathom_to_hf(paths[0], paths[1], options);
  }
  if (!report.ok()) {
    std::fprintf(stderr, "fathom convert: %s\n", std::string(report.status().message()).c_str());
    return 1;
  }
  std::printf("converted %s checkpoint %s -> %s: %lld tensors (%lld FP8), %lld file%s, %.1f MB\n",
              report->kind.c_str(), paths[0].c_str(), paths[1].c_str(),
              static_cast<long long>(report->tensors), static_cast<long long>(report->fp8_tensors),
              static_cast<long long>(report->files), report->files == 1 ? "" : "s",
              static_cast<double>(report->bytes) / 1e6);
  return 0;
}

}  // namespace fathom::launch
