// kv_wire: placeholder until written.
