#include "parallel/mpi_env.h"

#include <cstdio>
#include <cstdlib>
#include <mutex>
#include <sstream>
#include <string>

#include "kernels/check.h"
#include "parallel/mpi_communicator.h"

namespace fathom::parallel {
namespace {

std::mutex& env_mutex() {
  static std::mutex* m = new std::mutex();
  return *m;
}
bool initialized_by_us = false;

bool mpi_is_initialized() {
  int flag = 0;
  MPI_Initialized(&flag);
  return flag != 0;
}

bool mpi_is_finalized() {
  int flag = 0;
  MPI_Finalized(&flag);
  return flag != 0;
}

void finalize_at_exit() { finalize_mpi(); }

}  // namespace

void init_mpi(int* argc, char*** argv) {
  std::lock_guard<std::mutex> lock(env_mutex());
  FATHOM_CHECK(!mpi_is_finalized()) << "init_mpi: MPI was already finalised";
  if (!mpi_is_initialized()) {
    int provided = 0;
    const int code = MPI_Init_thread(argc, argv, MPI_THREAD_MULTIPLE, &provided);
    if (code != MPI_SUCCESS) detail::raise_mpi_error(code, "MPI_Init_thread", __FILE__, __LINE__);
    initialized_by_us = true;
    std::atexit(finalize_at_exit);
  }
  int provided = 0;
  FATHOM_MPI_CHECK(MPI_Query_thread(&provided));
  FATHOM_CHECK(provided >= MPI_THREAD_MULTIPLE)
      << "init_mpi: MPI provides thread level " << provided << ", Fathom needs "
      << "MPI_THREAD_MULTIPLE (" << MPI_THREAD_MULTIPLE << ") to post operations from several "
      << "threads";
  FATHOM_MPI_CHECK(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));
}

void finalize_mpi() {
  std::lock_guard<std::mutex> lock(env_mutex());
  if (initialized_by_us && mpi_is_initialized() && !mpi_is_finalized()) MPI_Finalize();
}

int world_rank() {
  init_mpi();
  int rank = 0;
  FATHOM_MPI_CHECK(MPI_Comm_rank(MPI_COMM_WORLD, &rank));
  return rank;
}

int world_size() {
  init_mpi();
  int size = 0;
  FATHOM_MPI_CHECK(MPI_Comm_size(MPI_COMM_WORLD, &size));
  return size;
}

Communicator& world_communicator() {
  static MpiCommunicator* world = [] {
    init_mpi();
    return new MpiCommunicator(MPI_COMM_WORLD, /*owned=*/false);
  }();
  return *world;
}

namespace detail {

void raise_mpi_error(int code, const char* call, const char* file, int line) {
  char text[MPI_MAX_ERROR_STRING] = {};
  int length = 0;
  if (MPI_Error_string(code, text, &length) != MPI_SUCCESS) {
    std::snprintf(text, sizeof text, "MPI error code %d", code);
  }
  std::ostringstream message;
  if (!error_context().empty()) message << "[" << error_context() << "] ";
  message << file << ":" << line << ": MPI call failed: " << call << ": " << text;
  if (mpi_is_initialized() && !mpi_is_finalized()) {
    int rank = -1;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    message << " (world rank " << rank << ")";
  }
  throw Error(message.str());
}

}  // namespace detail
}  // namespace fathom::parallel
