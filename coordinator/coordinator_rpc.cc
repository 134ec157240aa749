// coordinator_rpc: placeholder until written.
