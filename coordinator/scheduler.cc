// scheduler: placeholder until written.
