// worker_core: placeholder until written.
