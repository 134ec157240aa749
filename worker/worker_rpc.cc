// worker_rpc: placeholder until written.
