// coordinator_core: placeholder until written.
