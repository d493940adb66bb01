// Layout-independent, atomic checkpoints in HDF5 (DESIGN.md decision 7).
//
// A checkpoint is a directory, e.g. runs/x/checkpoints/step-000100, holding the shard files
// shard-00000-of-00002.h5, shard-00001-of-00002.h5, ... written by different ranks. Every tensor
// (parameter, optimizer state, buffer) is stored under its global name with its global shape and
// the rows [row_offset, row_offset + rows) of dim 0 that the shard holds. A rank may own part of a
// tensor (ZeRO, expert parallelism), and a checkpoint saved under one layout loads under another:
// the reader assembles any row range from whichever shards hold those rows.
//
// Atomicity: each shard file is written under a temporary name in the directory, fsynced, renamed
// and the directory fsynced, so a shard file is either complete or absent. A checkpoint is
// complete when all of its shard files exist; latest_checkpoint() skips incomplete ones. With a
// single shard the whole directory appears at once (written as "<dir>.tmp-<pid>", then renamed).
//
// Inside a shard file (readable with h5dump / h5py):
//   /                 attributes fathom_checkpoint (format version), shard_index, shard_count;
//                     shard 0 also has step (int64)
//   /tensors/<key>    one dataset per tensor holding the local rows, chunked with a Fletcher-32
//                     checksum; attributes name (the real name), dtype ("f32", "bf16", ...),
//                     global_shape (int64[ndim]) and row_offset (int64). bf16 is stored as
//                     uint16 and fp8 as uint8 (the raw bits).
//   /meta/u64/<key>   (shard 0) uint64 arrays; attribute name
//   /meta/text/<key>  (shard 0) fixed-length UTF-8 strings; attributes name and bytes
// <key> is the name with '%', '/', a leading '.' and non-printable bytes percent-escaped; readers
// go by the name attribute, so any non-empty string is a valid name.
//
// Errors are absl::Status naming the checkpoint file and tensor: NotFound (missing directory,
// shard file or tensor), DataLoss (a file that is not HDF5, truncated or corrupted; shards that
// disagree; rows no shard holds), InvalidArgument (global shape or dtype differs from the one
// requested), AlreadyExists, and errno-derived codes for failed file-system calls. Misuse of the
// API (a shard index out of range, rows outside the global shape, duplicate or empty names)
// throws fathom::Error via FATHOM_CHECK.
//
// HDF5's own error printing is silenced during these calls. The serial HDF5 library is not
// thread-safe: call these functions from one thread at a time.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "kernels/tensor.h"

namespace fathom::trainer {

// One tensor, or some rows of one, as written or read by this process.
struct TensorShard {
  std::string name;  // global name, e.g. "layers.1.attn.wq_a.weight"; any non-empty string
  // The local rows: shape (rows, global_shape[1:]...), any dtype, on the CPU or CUDA (copied
  // through the host). A 0-d tensor is always whole (row_offset 0).
  Tensor tensor;
  Shape global_shape = {};  // empty: the tensor is whole, global_shape = tensor.shape()
  int64_t row_offset = 0;   // first global row of dim 0 held by `tensor`
};

// Run state stored once per checkpoint, in shard 0.
struct CheckpointMeta {
  int64_t step = 0;
  std::map<std::string, std::vector<uint64_t>> u64;  // e.g. RNG states, data position
  std::map<std::string, std::string> text;           // e.g. the run config as YAML
};

// "<checkpoints_dir>/step-000100": the directory name latest_checkpoint() recognises (at least 6
// digits, more when the step needs them). Throws when step < 0.
std::string checkpoint_dir_for_step(const std::string& checkpoints_dir, int64_t step);

// Writes one shard file, dir/shard-<shard_index>-of-<shard_count>.h5 (indices zero-padded to 5
// digits), holding `shards`; shard 0 also holds `meta` (other shards ignore it). The tensors are
// only read. Every writer of a checkpoint passes the same shard_count; together they should cover
// every row of every tensor (rows written by several writers must agree; the reader takes one).
//
// Atomic: the file is written under a temporary name in `dir`, fsynced, renamed into place and
// `dir` fsynced; on failure the temporary is removed. With shard_count == 1 the directory itself
// is created atomically from "<dir>.tmp-<pid>" and must not exist yet (AlreadyExists). With
// shard_count > 1, `dir` and its parents are created when missing (several ranks may race to do
// so) and an existing shard file of the same name is replaced.
//
// Throws fathom::Error when shard_index is not in [0, shard_count), a tensor or metadata name is
// empty or repeated, a tensor is undefined, or its rows do not fit its global shape.
absl::Status write_checkpoint_shard(const std::string& dir, int shard_index, int shard_count,
                                    absl::Span<const TensorShard> shards,
                                    const CheckpointMeta& meta);

// Fills each `into[i].tensor` (allocated by the caller, written in place) with rows
// [row_offset, row_offset + rows) of the stored global tensor `into[i].name`, assembled from
// whichever shard files hold them (any layout). The stored dtype must equal the tensor's and the
// stored global shape the requested one. The tensors may live on CUDA. When meta is not null it is
// replaced by the checkpoint's metadata.
//
// Everything is validated (all shard files present and readable, every tensor found with the
// right dtype and shape, every row covered) before any tensor is written; only an error in the
// data itself (a checksum failure) can leave `into` partly overwritten. Throws fathom::Error when
// an `into` entry is malformed as for write_checkpoint_shard().
absl::Status read_checkpoint(const std::string& dir, absl::Span<TensorShard> into,
                             CheckpointMeta* meta);

// The global names of all tensors in the checkpoint at `dir`, sorted. Checks that the shard set
// is complete and readable, like read_checkpoint().
absl::StatusOr<std::vector<std::string>> list_checkpoint_tensors(const std::string& dir);

// The newest complete checkpoint directory "step-N" (N decimal digits) directly under
// checkpoints_dir: the highest N whose shard files are all present. Temporary directories and
// incomplete checkpoints are skipped. NotFound when checkpoints_dir does not exist or holds none.
absl::StatusOr<std::string> latest_checkpoint(const std::string& checkpoints_dir);

}  // namespace fathom::trainer
