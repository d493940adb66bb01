// `fathom convert`: Hugging Face checkpoint directories <-> fathom HDF5 checkpoints
// (trainer/hf_convert.h; docs/checkpoints.md).
//   fathom convert --from hf --to fathom HF_DIR CHECKPOINT_DIR [--dequantize | --keep-fp8]
//                  [--shard-size SIZE]
//   fathom convert --from fathom --to hf CHECKPOINT_DIR HF_DIR [--dtype f32|bf16] [--fp8]
//                  [--dequantize] [--shard-size SIZE]
#pragma once

#include <string>
#include <vector>

namespace fathom::launch {

// Exit codes: 0 success, 1 a failed conversion (the message names the file, tensor or key),
// 2 a usage error.
int convert_main(const std::vector<std::string>& args);

}  // namespace fathom::launch
