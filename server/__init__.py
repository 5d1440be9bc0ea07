"""Tariff server."""

import os

# Before grpc is imported anywhere in the process. Tariff forks only to exec (subprocess: the bench's servers, the
# tests' servers, the clients' code generators), and gRPC's fork support, on by default, runs handlers around
# every fork that deadlock when one races gRPC's asynchronous shutdown of a closed channel: a `tariff bench`
# hung in fork() that way, its prefork handler waiting on the grpc_shutdown thread (grpc/grpc issues #13998,
# #14056: GRPC_ENABLE_FORK_SUPPORT=false is the fork/exec setting). An explicit setting is left as it is.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")
