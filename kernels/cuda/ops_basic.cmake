# Norms, RoPE, activations, embedding and the matrix products (ops.h), and their tests.
