# Attention (ops.h: Attention, AttentionScratchBytes) and its tests.
