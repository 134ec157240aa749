// exp(x) as a vector polynomial, shared by the attention and activation kernels (each
// compiled per ISA). Included inside the including file's namespace after it defines
// V (float vector), VI (int32 vector of the same lanes) and Splat(float); the caller
// handles the range: x must already lie in [-87.3, 88.3], where the result is a normal
// float (attention clamps below and maps -inf to 0; the activations also map large
// arguments to +inf). Cephes' expf: range reduction by ln 2 in two parts, degree-6
// polynomial, ~2 ulp; 2^n is built in the exponent bits. No #includes (see
// attention_cpu-inl.h on ISA-flagged files).
inline __attribute__((always_inline)) V ExpInRange(V x) {
  const V magic = Splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const V fx = x * 1.44269504088896341f + magic;
  const V n = fx - magic;
  V r = x - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  V y = Splat(1.9875691500e-4f);
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * (r * r) + r + 1.0f;
  const VI bits = (__builtin_convertvector(n, VI) + 127) << 23;
  V scale;
  __builtin_memcpy(&scale, &bits, sizeof(scale));
  return y * scale;
}
