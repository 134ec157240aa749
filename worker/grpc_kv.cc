// grpc_kv: placeholder until written.
