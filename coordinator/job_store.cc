// job_store: placeholder until written.
