// bench_comm: time, algbw and busbw of all_reduce, reduce_scatter, all_gather and all_to_all over
// a sweep of sizes, reported as nccl-tests reports them (CONVENTIONS.md 11, nccl-tests
// doc/PERFORMANCE.md). MPI on host tensors; with --gpu also NCCL on device tensors (one GPU per
// rank: device = local rank % GPUs).
//
// size is the bytes of the largest buffer of one rank (all_reduce: the tensor; reduce_scatter: the
// input; all_gather: the output; all_to_all: the input), count its elements. time is the median,
// over repeats after a warm-up, of the slowest rank's time for one operation (post + wait; for
// NCCL also the stream synchronisation), each repeat starting after a barrier.
// algbw = size / time; busbw = algbw x 2(n-1)/n for all_reduce and x (n-1)/n for the others.
// Rank 0 prints.
//
// usage: mpirun -np N bench_comm [--gpu] [--quick] [--min-bytes B] [--max-bytes B]
//                                [--dtype f32|bf16]      (B: bytes, or with a K, M or G suffix)
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "kernels/cuda/runtime.h"
#include "kernels/device.h"
#include "kernels/tensor.h"
#include "parallel/communicator.h"
#include "parallel/mpi_env.h"
#include "parallel/nccl_communicator.h"

namespace fathom::bench {
namespace {

using parallel::Communicator;
using parallel::ReduceOp;
using parallel::WorkHandle;

struct Args {
  bool gpu = false;
  bool quick = false;
  int64_t min_bytes = 1 << 10;
  int64_t max_bytes = -1;  // default: 64 MiB, 16 MiB with --quick
  DType dtype = DType::kF32;
};

bool parse_bytes(const char* text, int64_t* out) {
  char* end = nullptr;
  const double v = std::strtod(text, &end);
  if (end == text || v <= 0) return false;
  double scale = 1;
  switch (*end) {
    case 'K':
    case 'k':
      scale = 1024.0;
      break;
    case 'M':
    case 'm':
      scale = 1024.0 * 1024;
      break;
    case 'G':
    case 'g':
      scale = 1024.0 * 1024 * 1024;
      break;
    default:
      break;
  }
  if (scale != 1) ++end;
  if (*end != '\0') return false;
  *out = static_cast<int64_t>(v * scale);
  return true;
}

// Same arguments on every rank, so every rank either runs or exits 2 here.
Args parse_args(int argc, char** argv, int rank) {
  Args a;
  bool ok = true;
  for (int i = 1; i < argc && ok; ++i) {
    const std::string arg = argv[i];
    const bool has_value = i + 1 < argc;
    if (arg == "--gpu") {
      a.gpu = true;
    } else if (arg == "--quick") {
      a.quick = true;
    } else if (arg == "--min-bytes" && has_value) {
      ok = parse_bytes(argv[++i], &a.min_bytes);
    } else if (arg == "--max-bytes" && has_value) {
      ok = parse_bytes(argv[++i], &a.max_bytes);
    } else if (arg == "--dtype" && has_value) {
      const std::string d = argv[++i];
      ok = d == "f32" || d == "bf16";
      a.dtype = d == "bf16" ? DType::kBF16 : DType::kF32;
    } else {
      ok = false;
    }
  }
  if (a.max_bytes < 0) a.max_bytes = a.quick ? (16 << 20) : (64 << 20);
  if (!ok || a.min_bytes > a.max_bytes) {
    if (rank == 0) {
      std::fprintf(stderr,
                   "usage: mpirun -np N bench_comm [--gpu] [--quick] [--min-bytes B] "
                   "[--max-bytes B] [--dtype f32|bf16]   (B: bytes, or with a K, M or G "
                   "suffix)\n");
    }
    parallel::finalize_mpi();
    std::exit(2);
  }
  return a;
}

// Times `op` (post and wait, then `sync`): the median over repeats of the slowest rank's time.
// Every rank runs the same number of repeats, chosen from the slowest rank's first timing.
double time_op(Communicator& world, const std::function<WorkHandle()>& op,
               const std::function<void()>& sync, double budget_s) {
  auto once = [&] {
    world.barrier();
    const auto start = std::chrono::steady_clock::now();
    op()->wait();
    sync();
    return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  };
  // Warm-up (connections, buffers, caches), then a first estimate agreed on by all ranks.
  once();
  Tensor first = Tensor::from_vector<int64_t>({static_cast<int64_t>(once() * 1e9)}, {1});
  parallel::all_reduce_sync(world, first, ReduceOp::kMax);
  const double estimate = std::max(first.data<int64_t>()[0] * 1e-9, 1e-7);
  const int repeats = std::clamp(static_cast<int>(budget_s / estimate), 5, 50);
  std::vector<int64_t> ns(repeats);
  for (int i = 0; i < repeats; ++i) ns[i] = static_cast<int64_t>(once() * 1e9);
  Tensor all = Tensor::from_vector<int64_t>(ns, {repeats});
  parallel::all_reduce_sync(world, all, ReduceOp::kMax);  // slowest rank, per repeat
  std::vector<int64_t> slowest = all.to_vector<int64_t>();
  std::nth_element(slowest.begin(), slowest.begin() + repeats / 2, slowest.end());
  return slowest[repeats / 2] * 1e-9;
}

// One section of the report: every operation over every size on `comm` (host or device tensors).
void run_section(Communicator& world, Communicator& comm, Device device, const Args& args,
                 const std::function<void()>& sync) {
  const int n = comm.size();
  const int64_t elem = static_cast<int64_t>(dtype_size(args.dtype));
  const double budget_s = args.quick ? 0.05 : 0.3;
  const int64_t step = args.quick ? 4 : 2;
  const char* ops[] = {"all_reduce", "reduce_scatter", "all_gather", "all_to_all"};
  for (const char* op : ops) {
    const std::string name = op;
    const double bus_factor = name == "all_reduce" ? 2.0 * (n - 1) / n : double(n - 1) / n;
    if (world.rank() == 0) {
      std::printf("\n# %s (%s, %d ranks, %s)\n", op, comm.backend().c_str(), n,
                  std::string(dtype_name(args.dtype)).c_str());
      std::printf("%12s %12s %10s %11s %11s\n", "size(B)", "count", "time(us)", "algbw(GB/s)",
                  "busbw(GB/s)");
    }
    for (int64_t bytes = args.min_bytes; bytes <= args.max_bytes; bytes *= step) {
      // Element counts divisible by the world size, so that every rank's share is equal.
      int64_t count = bytes / elem;
      if (name != "all_reduce") count -= count % n;
      if (count == 0) continue;
      const int64_t share = count / n;
      std::function<WorkHandle()> run;
      Tensor a, b;
      std::vector<int64_t> rows(n, share);
      if (name == "all_reduce") {
        a = Tensor::zeros({count}, args.dtype, device);
        run = [&] { return comm.all_reduce(a, ReduceOp::kSum); };
      } else if (name == "reduce_scatter") {
        a = Tensor::zeros({count}, args.dtype, device);
        b = Tensor::zeros({share}, args.dtype, device);
        run = [&] { return comm.reduce_scatter(a, b, ReduceOp::kSum); };
      } else if (name == "all_gather") {
        a = Tensor::zeros({share}, args.dtype, device);
        b = Tensor::zeros({count}, args.dtype, device);
        run = [&] { return comm.all_gather(a, b); };
      } else {
        a = Tensor::zeros({count}, args.dtype, device);
        b = Tensor::zeros({count}, args.dtype, device);
        run = [&] { return comm.all_to_all_v(a, rows, b, rows); };
      }
      const double t = time_op(world, run, sync, budget_s);
      const double size = static_cast<double>(count * elem);
      const double algbw = size / t / 1e9;
      if (world.rank() == 0) {
        std::printf("%12lld %12lld %10.1f %11.3f %11.3f\n", static_cast<long long>(count * elem),
                    static_cast<long long>(count), t * 1e6, algbw, algbw * bus_factor);
        std::fflush(stdout);
      }
    }
  }
}

int run(int argc, char** argv) {
  parallel::init_mpi(&argc, &argv);
  Communicator& world = parallel::world_communicator();
  const Args args = parse_args(argc, argv, world.rank());
  if (world.rank() == 0) {
    std::printf("# bench_comm: %d ranks, dtype %s, sizes %lld..%lld B (x%d)\n", world.size(),
                std::string(dtype_name(args.dtype)).c_str(), static_cast<long long>(args.min_bytes),
                static_cast<long long>(args.max_bytes), args.quick ? 4 : 2);
    std::printf(
        "# time: median over repeats of the slowest rank, after a barrier; "
        "algbw = size / time; busbw = algbw x 2(n-1)/n (all_reduce), x (n-1)/n (others)\n");
    const char* copy = std::getenv("OMPI_MCA_btl_vader_single_copy_mechanism");
    std::printf("# MPI: OMPI_MCA_btl_vader_single_copy_mechanism=%s\n", copy ? copy : "(unset)");
  }
  run_section(world, world, Device::cpu(), args, [] {});

  if (args.gpu) {
    const int gpus = cuda_device_count();
    if (gpus == 0) {
      if (world.rank() == 0) std::printf("\n# --gpu: no CUDA device here; NCCL section skipped\n");
      return 0;
    }
    const char* local = std::getenv("OMPI_COMM_WORLD_LOCAL_RANK");
    const int device = (local ? std::atoi(local) : world.rank()) % gpus;
    absl::StatusOr<std::unique_ptr<Communicator>> nccl =
        parallel::make_nccl_communicator(world, device);
    if (!nccl.ok()) {
      if (world.rank() == 0) {
        std::fprintf(stderr, "bench_comm: %s\n", nccl.status().ToString().c_str());
      }
      return 1;  // every rank gets the same status
    }
    if (world.rank() == 0) {
      std::printf("\n# NCCL on %s (%d GPUs visible per rank)\n", cuda::device_name(device).c_str(),
                  gpus);
    }
    run_section(world, **nccl, Device::cuda(device), args, [device] { cuda::synchronize(device); });
  }
  return 0;
}

}  // namespace
}  // namespace fathom::bench

int main(int argc, char** argv) { return fathom::bench::run(argc, argv); }
