// The MPI environment of a process: initialisation, finalisation, the world communicator, and the
// check macro every MPI call in Fathom goes through.
//
// init_mpi() starts MPI with MPI_THREAD_MULTIPLE (communication threads post operations while
// the main thread computes) unless someone already started it, and then finalises it at exit.
// It also works when the binary is launched without mpirun: Open MPI then makes a world of one
// rank (a "singleton"). Errors on the world communicator are returned instead of aborting
// (MPI_ERRORS_RETURN), so FATHOM_MPI_CHECK can throw fathom::Error with the call and the rank.
//
// MPI_Finalize waits for every rank. A rank that fails must therefore not simply return from
// main while others still run: it aborts the job (MPI_Abort, or the fault handler in
// parallel/fault.h), which ends every rank.
#pragma once

#include <mpi.h>

namespace fathom::parallel {

class Communicator;

// Initialises MPI with MPI_THREAD_MULTIPLE if it is not initialised yet, sets MPI_ERRORS_RETURN on
// MPI_COMM_WORLD, and registers MPI_Finalize to run at exit (only when this call initialised
// MPI). argc/argv may be null. Idempotent and thread-safe. Throws fathom::Error when MPI was
// already finalised, or provides less than MPI_THREAD_MULTIPLE.
void init_mpi(int* argc = nullptr, char*** argv = nullptr);

// Finalises MPI now, if init_mpi() initialised it and it is not finalised yet; otherwise does
// nothing. Collective: every rank must call it (or exit). Later MPI use is an error.
void finalize_mpi();

// Rank and size of MPI_COMM_WORLD; initialise MPI first when needed.
int world_rank();
int world_size();

// The world as a Communicator (an MpiCommunicator over MPI_COMM_WORLD, which it does not free).
// Initialises MPI when needed. The object lives until the process exits; thread-safe.
Communicator& world_communicator();

namespace detail {
// Throws fathom::Error "<file>:<line>: MPI call failed: <call>: <MPI error string> (world rank N)".
[[noreturn]] void raise_mpi_error(int code, const char* call, const char* file, int line);
}  // namespace detail

}  // namespace fathom::parallel

// FATHOM_MPI_CHECK(MPI_Barrier(comm));  throws fathom::Error naming the call, file:line and rank
// when the call does not return MPI_SUCCESS (needs MPI_ERRORS_RETURN on the communicator).
#define FATHOM_MPI_CHECK(call)                                                                  \
  do {                                                                                          \
    const int fathom_mpi_code_ = (call);                                                        \
    if (fathom_mpi_code_ != MPI_SUCCESS) {                                                      \
      ::fathom::parallel::detail::raise_mpi_error(fathom_mpi_code_, #call, __FILE__, __LINE__); \
    }                                                                                           \
  } while (0)
